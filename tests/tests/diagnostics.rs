//! diagnose, explain, status counters and metrics: each diagnose check made
//! to fail on purpose and seen to fail with the right message.

use std::time::Duration;

use tests::{APP_UID, Node, PROXY_UID, Pod, eventually};

const MESH: &str = "spec:\n  traffic:\n    outboundPortExclusionList: [6379]\n    outboundIPRangeExclusionList: [10.97.0.0/16]\n";
/// Long enough that the agent doesn't repair what a test breaks on purpose.
const NO_REFRESH: &[&str] = &["--refresh-interval", "3600"];

fn diagnose(node: &Node, pod: &Pod) -> (bool, Vec<serde_json::Value>) {
    let out = node.agent_cmd().args(["diagnose", &pod.name, "--output", "json"]).output().unwrap();
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("diagnose JSON");
    (out.status.success(), checks)
}

fn failed(checks: &[serde_json::Value]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| format!("{}: {}", c["check"].as_str().unwrap(), c["detail"].as_str().unwrap()))
        .collect()
}

#[test]
fn diagnose_passes_on_a_healthy_pod_and_names_a_detached_program() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let (ok, checks) = diagnose(&node, &pod);
    assert!(ok, "{:#?}", failed(&checks));
    assert!(checks.len() >= 6, "{checks:#?}");
    // Detach connect4 behind the agent's back: its pin is its last
    // reference. The kernel frees the link after an RCU grace period and a
    // workqueue run (bpffs frees its inodes in an RCU callback), not when
    // the unlink returns: on a busy machine or under emulation the program
    // still ran a moment after.
    // The agent re-attaches missing programs whenever it reads the pod
    // again, and a late announcement of the pod's network makes it do so:
    // the end of duplicate address detection, or the carrier change that
    // linkwatch sends up to a second after the veth came up. Under
    // emulation one came after the pin went (CI, 6.12), and diagnose rightly
    // saw a pod repaired. So the detach is made again while the agent has
    // put the pin back; with the pin still gone, diagnose must name it.
    pod.wait_network_settled();
    let pin = node.bpffs_dir.join("pods/1/connect4");
    let mut checks = None;
    for _ in 0..5 {
        std::fs::remove_file(&pin).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || pin.exists() || pod.dial("10.96.0.10:80", APP_UID) == "direct 10.96.0.10:80"),
            "connect4 still runs after its last reference went"
        );
        let (ok, seen) = diagnose(&node, &pod);
        if pin.exists() {
            continue;
        }
        assert!(!ok, "diagnose passed with connect4's pin gone: {seen:#?}");
        checks = Some(seen);
        break;
    }
    let checks = checks.expect("the agent re-attached connect4 five times in a row: what reads the pod again?");
    assert_eq!(failed(&checks), ["programs attached: not attached: connect4"]);
    let (ok, out) = node.cli(&["reload"]);
    assert!(ok, "{out}");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert!(diagnose(&node, &pod).0);
}

#[test]
fn diagnose_names_a_process_in_the_pods_netns_outside_its_cgroup() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let mut pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert!(diagnose(&node, &pod).0);
    // As `nsenter --net` or `ip netns exec` would start it: eBPF misses
    // its connections (fsm-init's rules would not).
    pod.spawn_outside_cgroup(&["serve", "9090", "outsider"]).unwrap();
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:9090", pod.ip)).split(' ').next(), Some("in"));
    let (ok, checks) = diagnose(&node, &pod);
    let failed = failed(&checks);
    assert!(!ok);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(failed[0].starts_with("every process of the netns in the pod's cgroup: not intercepted by eBPF"), "{failed:#?}");
    assert!(failed[0].contains("(netprobe)"), "{failed:#?}");
}

#[test]
fn diagnose_names_a_map_entry_removed_by_hand_and_reload_repairs_it() {
    use aya::maps::{HashMap, Map, MapData};
    use redirect_common::maps::{PodConfig, PolicyPort};
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");
    let maps = node.bpffs_dir.join("maps");
    let config: HashMap<_, u32, PodConfig> = Map::HashMap(MapData::from_pin(maps.join("POD_CONFIG")).unwrap()).try_into().unwrap();
    // 6379 comes from the MeshConfig: it lives in the MeshConfig's slot.
    let slot = config.get(&1, 0).unwrap().mesh_policy;
    let mut ports: HashMap<_, PolicyPort, u8> = Map::HashMap(MapData::from_pin(maps.join("EXCLUDED_PORTS")).unwrap()).try_into().unwrap();
    ports.remove(&PolicyPort { policy: slot, port: 6379, direction: 0 }).unwrap();
    // The kernel now redirects 6379, and explain says the kernel disagrees.
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "out 10.96.0.10:6379");
    let e = node.explain(&pod, &["--to", "10.96.0.10:6379", "--uid", "1000"]);
    assert_eq!(e["config"]["verdict"], "direct");
    assert_eq!(e["config"]["rule"], 7);
    assert_eq!(e["matched"], "port 6379 (MeshConfig)");
    assert_eq!(e["kernel"]["verdict"], "redirect-outbound");
    assert_eq!(e["agrees"], false);
    let (ok, checks) = diagnose(&node, &pod);
    assert!(!ok);
    assert_eq!(failed(&checks), ["kernel maps hold the effective lists: EXCLUDED_PORTS lacks outbound port 6379 (MeshConfig)"]);
    let (ok, out) = node.cli(&["reload"]);
    assert!(ok, "{out}");
    assert!(diagnose(&node, &pod).0);
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");
    assert_eq!(node.explain(&pod, &["--to", "10.96.0.10:6379", "--uid", "1000"])["agrees"], true);
}

#[test]
fn diagnose_names_a_proxy_that_does_not_listen() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let mut pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    pod.stop_listeners();
    let (ok, checks) = diagnose(&node, &pod);
    assert!(!ok);
    let f = failed(&checks);
    assert!(f.contains(&"proxy listens on 15001: nothing listens on 15001 in the pod: outbound connections fail".to_owned()), "{f:#?}");
    assert!(f.contains(&"proxy listens on 15003: nothing listens on 15003 in the pod: inbound connections fail".to_owned()), "{f:#?}");
    assert!(f.iter().any(|c| c.starts_with("inbound listener registered: no socket listening on 15003")), "{f:#?}");
}

#[test]
fn diagnose_names_an_outbound_listener_bound_to_127_0_0_1_alone() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let mut pod = Pod::create(&node).unwrap();
    pod.stop_listeners();
    // Enough for iptables REDIRECT (to 127.0.0.1), not for the eBPF path,
    // which sends each connection to an address of its own in 127.0.0.0/8.
    pod.start_proxy("127.0.0.1:15001", "out", PROXY_UID).unwrap();
    pod.start_inbound_proxy(15003, PROXY_UID).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "error: connect: Connection refused (os error 111)");
    let (ok, checks) = diagnose(&node, &pod);
    assert!(!ok);
    let f = failed(&checks);
    assert!(
        f.contains(&"proxy listens on 15001: the outbound listener is bound to one address, not 0.0.0.0: redirected connections arrive at addresses of 127.0.0.0/8 other than 127.0.0.1 and are refused".to_owned()),
        "{f:#?}"
    );
    assert!(!f.iter().any(|c| c.starts_with("proxy listens on 15003")), "{f:#?}");
}

#[test]
fn diagnose_compares_an_iptables_pods_rules() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll_with(&pod, &[], &["--dataplane", "iptables"]).unwrap();
    let (ok, checks) = diagnose(&node, &pod);
    assert!(ok, "{:#?}", failed(&checks));
    let del = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.ns.name, "iptables", "-t", "nat", "-D", "FSM_PROXY_OUTBOUND", "-d", "10.97.0.0/16", "-j", "RETURN"])
        .status()
        .unwrap();
    assert!(del.success());
    let (ok, checks) = diagnose(&node, &pod);
    assert!(!ok);
    assert_eq!(failed(&checks), ["iptables rules match the effective lists: iptables FSM_PROXY_OUTBOUND: 6 of our rules, expected 7"]);
}

#[test]
fn clear_errors_when_the_agent_is_down_or_the_pod_unknown() {
    let mut node = Node::start(MESH).unwrap();
    let pod = Pod::create(&node).unwrap();
    let (ok, out) = node.cli(&["explain", &pod.name, "--to", "10.96.0.10:80"]);
    assert!(!ok && out.contains(&format!("pod {}: not enrolled", pod.name)), "{out}");
    node.kill_agent();
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(!ok);
    assert!(out.contains("FAIL") && out.contains("the agent is not running") && out.contains("fix: start it"), "{out}");
    let (ok, out) = node.cli(&["status"]);
    assert!(!ok && out.contains("the agent is not running"), "{out}");
}

#[test]
fn status_counts_verdicts_and_metrics_serve_them() {
    let listen = tests::metrics_listen();
    let node = Node::start_with(MESH, &["--metrics-listen", &listen]).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    for _ in 0..3 {
        assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    }
    assert_eq!(pod.dial("10.97.0.10:80", APP_UID), "direct 10.97.0.10:80");
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");
    assert_eq!(pod.dial("10.96.0.10:80", PROXY_UID), "direct 10.96.0.10:80");
    let syns_resent = tests::tcp_ext(&node.ns, "TCPSynRetrans");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
    // sk_lookup decides each SYN that finds no connection yet: a SYN the
    // client had to send again (a slow VM) is decided, and counted, again.
    let syns_resent = tests::tcp_ext(&node.ns, "TCPSynRetrans") - syns_resent;
    let status = node.status();
    let c = &status["pods"][0]["counters"];
    assert_eq!(c["outbound_redirected"], 3);
    assert_eq!(c["outbound_direct_excluded_cidr"], 1);
    assert_eq!(c["outbound_direct_excluded_port"], 1);
    assert_eq!(c["outbound_direct_proxy_uid"], 1);
    assert_eq!(c["inbound_redirected"], 1 + syns_resent, "SYNs sent again: {syns_resent}");
    assert_eq!(c["original_dst_answered"], 4);
    assert!(status["maps"].as_array().unwrap().iter().any(|m| m["map"] == "EXCLUDED_CIDRS" && m["entries"] == 1), "{status:#}");
    let body = tests::metrics(&listen);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let line = format!("fsm_redirect_events_total{{pod=\"{}\",event=\"outbound_redirected\"}} 3", pod.name);
    assert!(body.contains(&line), "{body}");
    assert!(body.contains("fsm_redirect_map_capacity{map=\"EXCLUDED_CIDRS\"} 65536"), "{body}");
}

#[test]
fn diagnose_names_a_proxy_without_ipv6_listeners_and_a_removed_hand_over_route_comes_back_at_once() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let mut pod = Pod::wired(&node, true).unwrap();
    // IPv4 listeners only: enough for fsm-init's rules, not for a pod whose
    // IPv6 is intercepted.
    pod.start_proxy("15001", "out", PROXY_UID).unwrap();
    pod.start_inbound_proxy(15003, PROXY_UID).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let ip6 = pod.ip6.clone().unwrap();
    // Refused, never around the proxy.
    assert_eq!(pod.dial("[fd00:96::10]:80", APP_UID), "error: connect: Connection refused (os error 111)");
    assert_eq!(Pod::dial_from(&node.ns, &format!("[{ip6}]:8080")), "error: connect: Connection refused (os error 111)");
    let (ok, checks) = diagnose(&node, &pod);
    assert!(!ok);
    let f = failed(&checks);
    for want in [
        "proxy listens on 15001: the pod's IPv6 is intercepted, but no outbound listener is an IPv6 one: IPv6 connections are refused",
        "proxy listens on 15003: the pod's IPv6 is intercepted, but no inbound listener is an IPv6 one: IPv6 connections are refused",
        "inbound listener registered: no IPv6 socket listening on 15003 is known to the kernel: inbound IPv6 connections are refused",
    ] {
        assert!(f.contains(&want.to_owned()), "{want:?} missing from {f:#?}");
    }
    // A proxy that listens on [::] too: registered at once (sockops was
    // kept attached while the IPv6 listener was missing).
    pod.stop_listeners();
    pod.start_proxy("[::]:15001", "out", PROXY_UID).unwrap();
    pod.start_proxy("[::]:15003", "in", PROXY_UID).unwrap();
    assert_eq!(Pod::dial_from(&node.ns, &format!("[{ip6}]:8080")), format!("in [{ip6}]:8080"));
    assert!(diagnose(&node, &pod).0, "{:#?}", failed(&diagnose(&node, &pod).1));
    // The hand-over route taken away behind the agent's back: the kernel
    // announces it, and the agent puts it back at once (no refresh runs
    // here), before any diagnose could see it missing.
    let prefix = redirect_agent::netns::handover_net().to_string();
    pod.ns.exec(&["-6", "route", "del", "local", &prefix, "dev", "lo", "table", "local"]).unwrap();
    assert!(
        tests::eventually(std::time::Duration::from_secs(5), || {
            redirect_agent::netns::pod_net(&pod.ns.path()).is_ok_and(|net| net.handover_route)
        }),
        "the hand-over route was not restored without a refresh"
    );
    assert!(diagnose(&node, &pod).0, "{:#?}", failed(&diagnose(&node, &pod).1));
    assert_eq!(pod.dial("[fd00:96::10]:80", APP_UID), "out [fd00:96::10]:80");
}

#[test]
fn explain_reads_ipv6_and_ipv4_mapped_destinations() {
    let node = Node::start_with(MESH, NO_REFRESH).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    // An IPv4 pod: its IPv6 is not intercepted.
    let e = node.explain(&pod, &["--to", "[2001:db8::1]:80"]);
    assert_eq!((e["config"]["verdict"].as_str(), e["config"]["rule"].as_u64()), (Some("direct"), Some(0)), "{e:#}");
    assert_eq!(e["agrees"], true);
    let e = node.explain(&pod, &["--to", "[::ffff:10.97.0.1]:80"]);
    assert_eq!((e["config"]["verdict"].as_str(), e["config"]["rule"].as_u64()), (Some("direct"), Some(6)), "{e:#}");
    assert_eq!(e["matched"], "10.97.0.0/16 (MeshConfig)");
    assert_eq!(e["note"], "::ffff:10.97.0.1 is IPv4-mapped: an IPv4 connection to 10.97.0.1:80, decided by the IPv4 rules");
    let e = node.explain(&pod, &["--to", "[::ffff:10.96.0.10]:80"]);
    assert_eq!((e["config"]["verdict"].as_str(), e["kernel"]["rule"].as_u64()), (Some("redirect-outbound"), Some(10)), "{e:#}");
    let (ok, out) = node.cli(&["explain", &pod.name, "--to", "[::ffff:10.96.0.10]:80"]);
    assert!(ok && out.contains("note:    ::ffff:10.96.0.10 is IPv4-mapped"), "{out}");
    // A dual-stack pod, with an IPv6 CIDR excluded by annotation.
    let ds = Pod::dual_stack(&node).unwrap();
    node.enroll(&ds, &["flomesh.io/outbound-ip-range-exclusion-list=2001:db8::/32"]).unwrap();
    let e = node.explain(&ds, &["--to", "[2001:db8::1]:80"]);
    assert_eq!((e["config"]["rule"].as_u64(), e["kernel"]["rule"].as_u64()), (Some(6), Some(6)), "{e:#}");
    assert_eq!(e["matched"], "2001:db8::/32 (pod annotation)");
    let e = node.explain(&ds, &["--to", "[2001:db9::1]:6379"]);
    assert_eq!((e["config"]["rule"].as_u64(), e["agrees"].as_bool()), (Some(7), Some(true)), "{e:#}");
    let e = node.explain(&ds, &["--inbound", "--port", "8080", "--ipv6"]);
    assert_eq!((e["config"]["verdict"].as_str(), e["agrees"].as_bool()), (Some("redirect-inbound"), Some(true)), "{e:#}");
    let e = node.explain(&pod, &["--inbound", "--port", "8080", "--ipv6"]);
    assert_eq!((e["config"]["rule"].as_u64(), e["agrees"].as_bool()), (Some(0), Some(true)), "{e:#}");
}
