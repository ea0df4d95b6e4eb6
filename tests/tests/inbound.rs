//! Inbound interception in the real kernel: connections from another host
//! (the node namespace, over a veth) to the pod land on the proxy's inbound
//! listener, which learns the dialled pod-IP:port from SO_ORIGINAL_DST;
//! the lists let some through to the app.

use tests::{APP_UID, Node, PROXY_UID, Pod};

#[test]
fn connections_from_elsewhere_reach_the_inbound_listener_with_their_destination() {
    let node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    let pod = Pod::create(&node).unwrap();
    let ip = pod.ip.clone();
    // Not enrolled: straight to the app.
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("app {ip}:8080"));
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:9999")), format!("in {ip}:9999"));
    // The proxy's own ports are left alone.
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:15010")), format!("admin {ip}:15010"));
    // The pod's own processes dialling their pod IP: decided by the outbound table only.
    assert_eq!(pod.dial(&format!("{ip}:8080"), APP_UID), format!("app {ip}:8080"));
    assert_eq!(pod.dial(&format!("{ip}:8080"), PROXY_UID), format!("in {ip}:8080"));
}

#[test]
fn inbound_port_exclusions_from_mesh_and_annotation_go_to_the_app() {
    let node = Node::start("spec:\n  traffic:\n    inboundPortExclusionList: [8080]\n").unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &["flomesh.io/inbound-port-exclusion-list=15003"]).unwrap();
    let ip = &pod.ip;
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("app {ip}:8080"));
    // 15003 itself excluded: the client reaches the inbound listener
    // directly, no redirect; the proxy is told the address it was dialled
    // at, as conntrack tells it (the differential table checks that).
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:15003")), format!("in {ip}:15003"));
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8081")), format!("in {ip}:8081"));
    // Live change: the exclusion goes, interception comes back.
    node.set_mesh_config("kind: MeshConfig\nspec: {}\n");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));
}

#[test]
fn excluded_interfaces_are_not_intercepted_in_either_direction() {
    if !tests::requires(tests::Feature::SkLookupIngressIfindex) {
        return;
    }
    let node = Node::start("spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n").unwrap();
    let pod = Pod::create(&node).unwrap();
    let net1_ip = pod.add_net1(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let ip = &pod.ip;
    assert_eq!(Pod::dial_from(&node.ns, &format!("{net1_ip}:8080")), format!("app {net1_ip}:8080"));
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));
    // Outbound: a destination routed out of net1 is dialled directly; one
    // routed out of eth0 is redirected.
    let peer = pod.net1_peer();
    assert_eq!(pod.dial(&format!("{peer}:80"), APP_UID), format!("direct {peer}:80"));
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    // Routes are followed: send 10.96.0.11 out of net1 too.
    pod.ns.exec(&["route", "add", "10.96.0.11/32", "via", &peer]).unwrap();
    let deadline = std::time::Instant::now() + tests::scaled(std::time::Duration::from_secs(10));
    while pod.dial("10.96.0.11:80", APP_UID) != "direct 10.96.0.11:80" {
        assert!(std::time::Instant::now() < deadline, "the new route via net1 was not followed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

/// A route change in the pod's netns reaches the interface exclusion as
/// the kernel announces it (`netns::events`), not at the next refresh:
/// here there is none for an hour.
#[test]
fn a_route_via_an_excluded_interface_is_followed_as_soon_as_it_is_added() {
    let node = Node::start_with("spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n", &["--refresh-interval", "3600"]).unwrap();
    let pod = Pod::create(&node).unwrap();
    pod.add_net1(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let peer = pod.net1_peer();
    assert_eq!(pod.dial("10.96.0.11:80", APP_UID), "out 10.96.0.11:80");
    pod.ns.exec(&["route", "add", "10.96.0.11/32", "via", &peer]).unwrap();
    let added = std::time::Instant::now();
    let deadline = added + tests::scaled(std::time::Duration::from_secs(10));
    while pod.dial("10.96.0.11:80", APP_UID) != "direct 10.96.0.11:80" {
        assert!(std::time::Instant::now() < deadline, "the new route via net1 was not followed without a refresh");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!("route via net1 followed {} ms after it was added (no refresh)", added.elapsed().as_millis());
    // And its removal: back through the proxy.
    pod.ns.exec(&["route", "del", "10.96.0.11/32"]).unwrap();
    let deadline = std::time::Instant::now() + tests::scaled(std::time::Duration::from_secs(10));
    while pod.dial("10.96.0.11:80", APP_UID) != "out 10.96.0.11:80" {
        assert!(std::time::Instant::now() < deadline, "the removed route was not followed without a refresh");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn pods_on_one_node_go_through_the_receivers_inbound_listener() {
    let node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    let a = Pod::create(&node).unwrap();
    let b = Pod::create(&node).unwrap();
    node.enroll(&a, &[]).unwrap();
    node.enroll(&b, &[]).unwrap();
    // A's proxy (upstream connections are direct) to B: B's proxy receives it.
    assert_eq!(a.dial(&format!("{}:8080", b.ip), PROXY_UID), format!("in {}:8080", b.ip));
    // A's app to B: A's outbound proxy first.
    assert_eq!(a.dial(&format!("{}:8080", b.ip), APP_UID), format!("out {}:8080", b.ip));
}

#[test]
fn a_proxy_that_starts_listening_after_enrolment_is_found_at_once_and_again_after_a_restart() {
    // No periodic refresh during the test (it would find a listener too):
    // what follows is the agent's per-second watch and sockops alone.
    let node = Node::start_with("kind: MeshConfig\nspec: {}\n", &["--refresh-interval", "3600"]).unwrap();
    let mut pod = Pod::create(&node).unwrap();
    pod.stop_listeners();
    node.enroll(&pod, &[]).unwrap();
    let ip = pod.ip.clone();
    // No proxy: refused, and never handed to the app around the proxy.
    let refused = Pod::dial_from(&node.ns, &format!("{ip}:8080"));
    assert_eq!(refused, "error: connect: Connection refused (os error 111)");
    pod.start_inbound_proxy(15003, PROXY_UID).unwrap();
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));
    // Concurrent clients to distinct ports each see their own destination.
    let clients: Vec<_> = (0..40u16)
        .map(|i| {
            let to = format!("{ip}:{}", 20000 + i);
            let mut cmd = std::process::Command::new(tests::netprobe());
            cmd.args(["dial", &to]).stdout(std::process::Stdio::piped());
            redirect_agent::sandbox::enter_netns(&mut cmd, &node.ns.path()).unwrap();
            (to, cmd.spawn().unwrap())
        })
        .collect();
    for (to, child) in clients {
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(out.trim(), format!("in {to}"));
    }
    // Registered: the pod needs sockops no more (it runs on every TCP event
    // of the pod), and the agent takes it off.
    let sockops = || node.status()["pods"][0]["sockops"].as_bool().unwrap();
    wait_for(|| !sockops(), "sockops detached once the listener registered");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));
    // The proxy restarts: its listener goes, sockops comes back, and the new
    // listener is registered the moment it listens.
    pod.stop_listeners();
    wait_for(sockops, "sockops attached again once the listener closed");
    pod.start_inbound_proxy(15003, PROXY_UID).unwrap();
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8081")), format!("in {ip}:8081"));
    // A restart quicker than the agent's tick: the new proxy listens while
    // sockops is still detached; the agent finds it when it attaches
    // sockops again.
    wait_for(|| !sockops(), "sockops detached again");
    pod.stop_listeners();
    pod.start_inbound_proxy(15003, PROXY_UID).unwrap();
    let to = format!("{ip}:8082");
    wait_for(|| Pod::dial_from(&node.ns, &to) == format!("in {to}"), "the quickly restarted proxy registered");
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + tests::scaled(std::time::Duration::from_secs(5));
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// iptables NAT in a pod the programs serve too (fsm-init's rules before
/// the agent steps aside, or any REDIRECT of the pod's own): conntrack's
/// answer to `SO_ORIGINAL_DST` is where the client dialled, and it stands;
/// where it names a hand-over address (connect4 redirected first), the
/// proxy gets the destination that hand-over holds.
#[test]
fn the_kernels_own_original_destination_stands_where_iptables_nat_rewrote_the_connection() {
    let node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll_with(&pod, &[], &["--dataplane", "ebpf"]).unwrap();
    let ip = &pod.ip;
    let nat = |rule: &str| {
        let mut args = vec!["-t", "nat", "-A"];
        args.extend(rule.split(' '));
        let out = std::process::Command::new("ip").args(["netns", "exec", &pod.ns.name, "iptables"]).args(&args).output().unwrap();
        assert!(out.status.success(), "{rule}: {}", String::from_utf8_lossy(&out.stderr));
    };
    nat("PREROUTING -p tcp --dport 8080 -j REDIRECT --to-port 15003");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"), "conntrack's answer, not the proxy's port");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:9999")), format!("in {ip}:9999"), "not NATed: the socket's own address");
    nat("OUTPUT -p tcp -d 127.0.0.0/8 -m owner --uid-owner 1500 -j REDIRECT --to-port 15003");
    assert_eq!(pod.dial(&format!("{ip}:8080"), PROXY_UID), format!("in {ip}:8080"), "a hand-over address in conntrack's answer");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}
