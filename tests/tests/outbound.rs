//! Outbound interception in the real kernel: every row of the outbound
//! table of docs/interception-semantics.md, each checked where it matches and
//! where it does not, with an unmodified proxy reading SO_ORIGINAL_DST.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and cgroup v2.

use tests::{APP_UID, Node, PROXY_UID, Pod};

const NO_LISTS: &str = "kind: MeshConfig\nspec: {}\n";

fn both(node_yaml: &str) -> (Node, Pod) {
    let node = Node::start(node_yaml).expect("node");
    let pod = Pod::create(&node).expect("pod");
    (node, pod)
}

#[test]
fn every_outbound_row_matches_and_misses() {
    let mesh =
        "kind: MeshConfig\nspec:\n  traffic:\n    outboundIPRangeExclusionList: [10.97.0.0/16]\n    outboundPortExclusionList: [6379]\n";
    let (node, pod) = both(mesh);
    node.enroll(&pod, &["flomesh.io/outbound-port-exclusion-list=7070"]).unwrap();
    let ip = &pod.ip;
    let cases: Vec<(String, u32, String)> = vec![
        // 1: proxy UID to its own pod IP -> inbound listener, orig = pod IP.
        (format!("{ip}:8080"), PROXY_UID, format!("in {ip}:8080")),
        // 1 missed (127.0.0.1 is not rerouted) -> 3.
        ("127.0.0.1:8080".into(), PROXY_UID, "app 127.0.0.1:8080".into()),
        // 2: an app to its own pod IP and to loopback: direct.
        (format!("{ip}:8080"), APP_UID, format!("app {ip}:8080")),
        ("127.0.0.1:8080".into(), APP_UID, "app 127.0.0.1:8080".into()),
        // 3: the proxy's own upstream connections: direct; 10: an app's: redirected.
        ("10.96.0.10:80".into(), PROXY_UID, "direct 10.96.0.10:80".into()),
        ("10.96.0.10:80".into(), APP_UID, "out 10.96.0.10:80".into()),
        // 6: excluded CIDR (MeshConfig) vs a neighbour outside it.
        ("10.97.0.10:80".into(), APP_UID, "direct 10.97.0.10:80".into()),
        ("10.98.0.10:80".into(), APP_UID, "out 10.98.0.10:80".into()),
        // 7: excluded ports, from the MeshConfig and from the annotation.
        ("10.96.0.10:6379".into(), APP_UID, "direct 10.96.0.10:6379".into()),
        ("10.96.0.10:7070".into(), APP_UID, "direct 10.96.0.10:7070".into()),
        ("10.96.0.10:8080".into(), APP_UID, "out 10.96.0.10:8080".into()),
    ];
    for (to, uid, want) in &cases {
        assert_eq!(&pod.dial(to, *uid), want, "uid {uid} dialling {to}");
    }

    // 8 and 9: an inclusion list, applied live to the running pod.
    node.set_mesh_config("kind: MeshConfig\nspec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/16]\n");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial("10.96.0.11:6379", APP_UID), "out 10.96.0.11:6379", "6379 is no longer excluded");
    assert_eq!(pod.dial("10.98.0.10:80", APP_UID), "direct 10.98.0.10:80");
    assert_eq!(pod.dial("10.97.0.10:80", APP_UID), "direct 10.97.0.10:80");
    // The annotation still applies after the global change.
    assert_eq!(pod.dial("10.96.0.10:7070", APP_UID), "direct 10.96.0.10:7070");
}

#[test]
fn unenrolled_pods_and_processes_outside_the_pod_cgroup_are_untouched() {
    let (node, pod) = both(NO_LISTS);
    let other = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(other.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    // A process in the pod's network namespace but not in its cgroup.
    let mut cmd = std::process::Command::new(tests::netprobe());
    cmd.args(["dial", "10.96.0.10:80"]);
    redirect_agent::sandbox::enter_netns(&mut cmd, &pod.ns.path()).unwrap();
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    assert_eq!(out.trim(), "direct 10.96.0.10:80");
}

#[test]
fn removing_a_pod_stops_interception_and_reenrolling_restores_it() {
    let (node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    let (ok, out) = node.cli(&["remove", &pod.name]);
    assert!(ok, "{out}");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    // Enrolled again under a new id, in the same cgroup: the shared
    // programs read the new id from its storage (the old one's config is
    // gone: read under it, the connection would go direct).
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

#[test]
fn two_pods_dialling_from_the_same_source_port_each_get_their_own_destination() {
    let (node, a) = both(NO_LISTS);
    let b = Pod::create(&node).unwrap();
    node.enroll(&a, &[]).unwrap();
    node.enroll(&b, &[]).unwrap();
    for i in 0..20u16 {
        let port = (41000 + i).to_string();
        // Both start before either finishes: same source port, same moment.
        let ca = a.dial_cmd("10.96.0.10:80", APP_UID, &["--bind", &port]).output();
        let cb = b.dial_cmd("10.96.0.11:80", APP_UID, &["--bind", &port]).output();
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert_eq!(String::from_utf8_lossy(&ca.stdout).trim(), "out 10.96.0.10:80", "pod a, source port {port}");
        assert_eq!(String::from_utf8_lossy(&cb.stdout).trim(), "out 10.96.0.11:80", "pod b, source port {port}");
    }
    // Truly concurrent: spawn both, then wait.
    for i in 0..20u16 {
        let port = (42000 + i).to_string();
        let pa = a.dial_cmd("10.96.0.10:80", APP_UID, &["--bind", &port]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let pb = b.dial_cmd("10.96.0.11:80", APP_UID, &["--bind", &port]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let (oa, ob) = (pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap());
        assert_eq!(String::from_utf8_lossy(&oa.stdout).trim(), "out 10.96.0.10:80");
        assert_eq!(String::from_utf8_lossy(&ob.stdout).trim(), "out 10.96.0.11:80");
    }
}

#[test]
fn getsockopt_answers_are_unchanged_inside_an_enrolled_pod() {
    let (node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    let run = |cgroup: &std::path::Path| {
        let mut cmd = std::process::Command::new(tests::netprobe());
        cmd.arg("sockopts");
        redirect_agent::sandbox::enter(&mut cmd, &pod.ns.path(), cgroup, 0).unwrap();
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stdout).unwrap()
    };
    let outside = redirect_agent::sandbox::Cgroup::create(&tests::unique("redirect-test-out")).unwrap();
    let (inside, plain) = (run(pod.cgroup_path().unwrap()), run(&outside.path));
    assert!(plain.contains("SO_PEERGROUPS (8000 B, more than a page): rc=0 len=8000"), "{plain}");
    assert_eq!(inside, plain);
}

#[test]
fn a_starting_agent_replaces_an_older_agents_pins() {
    let (mut node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    let id = node.status()["pods"][0]["id"].as_u64().unwrap();
    node.kill_agent();
    // What an agent before the outbound hand-over left: no pinned sockops
    // program, and maps that this one doesn't use (ORIG_DST).
    let pod_dir = node.bpffs_dir.join("pods").join(id.to_string());
    let stale = node.bpffs_dir.join("maps").join("ORIG_DST");
    std::fs::rename(pod_dir.join("sockops_program"), &stale).unwrap();
    node.start_agent().unwrap();
    assert!(!stale.exists(), "a map pin no program of this agent uses stays");
    assert!(pod_dir.join("sockops_program").exists());
    assert_eq!(node.status()["pods"][0]["attached"], true);
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");

    // An agent before inbound answers came from the socket left its
    // records' LRU: its programs, which the pod still runs, used it.
    node.kill_agent();
    let stale = node.bpffs_dir.join("maps").join("INBOUND_ORIG");
    tests::pin_new_map(&stale, 9, 16, 8, 65536).unwrap();
    let program = || {
        use std::os::fd::AsFd as _;
        let fd = redirect_agent::ebpf::link::get(&pod_dir.join("getsockopt")).unwrap();
        redirect_agent::ebpf::link::info(fd.as_fd()).unwrap().prog_id
    };
    let old = program();
    node.start_agent().unwrap();
    assert!(!stale.exists(), "a map pin no program of this agent uses stays");
    assert_ne!(program(), old, "the pod still runs the older agent's programs");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

#[test]
fn a_starting_agent_replaces_maps_whose_layout_changed_and_reattaches_every_pod() {
    let (mut node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    let id = node.status()["pods"][0]["id"].as_u64().unwrap();
    node.kill_agent();
    // What an agent before IPv6 left: no connect6 link, counters of 20
    // slots per pod, listeners keyed by the pod id alone.
    let (pod_dir, maps) = (node.bpffs_dir.join("pods").join(id.to_string()), node.bpffs_dir.join("maps"));
    let links = ["connect4", "getsockopt", "sk_lookup"];
    let info = |pin: &str| {
        use std::os::fd::AsFd as _;
        let fd = redirect_agent::ebpf::link::get(&pod_dir.join(pin)).unwrap();
        redirect_agent::ebpf::link::info(fd.as_fd()).unwrap()
    };
    let before: Vec<_> = links.iter().map(|l| info(l)).collect();
    std::fs::remove_file(pod_dir.join("connect6")).unwrap();
    for (name, map_type, key_size, value_size, max_entries) in [("COUNTERS", 6, 4, 8, 4096 * 20), ("PROXY_LISTENERS", 18, 4, 4, 4096)] {
        std::fs::remove_file(maps.join(name)).unwrap();
        tests::pin_new_map(&maps.join(name), map_type, key_size, value_size, max_entries).unwrap();
    }
    node.start_agent().unwrap();
    assert!(node.agent_log().contains("replacing it"), "{}", node.agent_log());
    assert!(pod_dir.join("connect6").exists());
    assert_eq!(node.status()["pods"][0]["attached"], true);
    // The same links, running the new programs: updated in place, so
    // that no connect met no program in between.
    for (link, old) in links.iter().zip(&before) {
        let now = info(link);
        assert_eq!(now.id, old.id, "{link}: a new link replaced the old one");
        assert_ne!(now.prog_id, old.prog_id, "{link}: still the old program");
    }
    // The re-attached programs count into the new map and find the
    // re-registered listener.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial("[::ffff:10.96.0.10]:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
    let c = node.counters(&pod);
    assert_eq!((c["outbound_redirected"], c["outbound_ipv4_mapped"], c["inbound_redirected"]), (2, 1, 1), "{c:?}");
}

#[test]
fn interception_survives_the_agent_being_killed_and_restarted() {
    let (mut node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    let held = pod.dial_cmd("10.96.0.10:80", APP_UID, &["--hold", "4"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    node.kill_agent();
    // No agent: new connections are still intercepted.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    node.start_agent().unwrap();
    assert_eq!(pod.dial("10.96.0.11:80", APP_UID), "out 10.96.0.11:80");
    let out = String::from_utf8(held.wait_with_output().unwrap().stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("out 10.96.0.10:80"));
    assert!(lines.next().unwrap_or("").starts_with("held ok"), "{out}");
    // The restarted agent still manages the pod: a change reaches it.
    node.set_mesh_config("kind: MeshConfig\nspec:\n  traffic:\n    outboundPortExclusionList: [80]\n");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    let (ok, status) = node.cli(&["status", "--output", "json"]);
    assert!(ok, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["pods"][0]["attached"], true);
}

#[test]
fn bad_input_is_refused_by_name_and_nothing_changes() {
    let mesh = "kind: MeshConfig\nspec:\n  traffic:\n    outboundPortExclusionList: [6379]\n";
    let (node, pod) = both(mesh);
    let ns = pod.ns.path().display().to_string();
    let cg = pod.cgroup_path().unwrap().display().to_string();
    let refused = |args: &[&str], needle: &str| {
        let (ok, out) = node.cli(args);
        assert!(!ok, "{args:?} should fail");
        assert!(out.contains(needle), "{args:?}: expected {needle:?} in {out}");
    };
    refused(
        &["enroll", "t/a", "--netns", &ns, "--cgroup", &cg, "--annotation", "flomesh.io/outbound-port-exclusion-list=80,0"],
        "flomesh.io/outbound-port-exclusion-list: \"0\" is not a port number",
    );
    refused(
        &[
            "enroll",
            "t/a",
            "--netns",
            &ns,
            "--cgroup",
            &cg,
            "--annotation",
            "flomesh.io/outbound-ip-range-exclusion-list=10.0.0.0/8,10.1.2.3",
        ],
        "flomesh.io/outbound-ip-range-exclusion-list: \"10.1.2.3\" is not an IP address range",
    );
    refused(&["enroll", "t/a", "--netns", "/nonexistent/netns", "--cgroup", &cg], "/nonexistent/netns");
    refused(&["enroll", "t/a", "--netns", &ns, "--cgroup", "/nonexistent-cgroup"], "/nonexistent-cgroup");
    // Nothing was applied by the refused enrolments.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    node.enroll(&pod, &[]).unwrap();
    refused(&["enroll", &pod.name, "--netns", &ns, "--cgroup", &cg], "already enrolled");
    // A broken MeshConfig is refused; the previous lists stay in force.
    std::fs::write(&node.mesh_config, "spec:\n  traffic:\n    outboundPortExclusionList: [70000]\n").unwrap();
    refused(&["reload"], "spec.traffic.outboundPortExclusionList[0]: \"70000\"");
    std::fs::write(&node.mesh_config, "spec: [unclosed\n").unwrap();
    refused(&["reload"], "not valid YAML or JSON");
    refused(&["reload", "--mesh-config", "/nonexistent/mesh.yaml"], "/nonexistent/mesh.yaml: can't read");
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    // An agent started on a bad MeshConfig doesn't start.
    let never = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tests::agent_bin())
        .arg("--state-dir")
        .arg(never.path())
        .arg("--bpffs-dir")
        .arg(&node.bpffs_dir)
        .args(["run", "--mesh-config", "/nonexistent/mesh.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/mesh.yaml: can't read"), "{err}");
    assert!(!never.path().join("state.json").exists());
}

#[test]
fn uninstall_removes_every_trace() {
    let (node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    let (ok, out) = node.cli(&["uninstall"]);
    assert!(ok, "{out}");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    assert!(!node.bpffs_dir.exists(), "pins left in {}", node.bpffs_dir.display());
    assert!(!node.state_dir.path().join("state.json").exists());
}

#[test]
fn ports_and_proxy_uid_come_from_the_agent_config() {
    let node = Node::start_with(NO_LISTS, &["--outbound-port", "16001", "--inbound-port", "16003", "--proxy-uid", "1600"]).unwrap();
    let pod = Pod::with_proxy(&node, 16001, 16003, 1600).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial("10.96.0.10:80", 1600), "direct 10.96.0.10:80");
    // 1500 is an ordinary UID for this agent.
    assert_eq!(pod.dial("10.96.0.10:80", PROXY_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial(&format!("{}:8080", pod.ip), 1600), format!("in {}:8080", pod.ip));
}

#[test]
fn decision_logs_are_off_by_default_and_on_with_the_flag() {
    let quiet = Node::start(NO_LISTS).unwrap();
    let pod = Pod::create(&quiet).unwrap();
    quiet.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    let loud = Node::start_with(NO_LISTS, &["--log-decisions"]).unwrap();
    let pod2 = Pod::create(&loud).unwrap();
    loud.enroll(&pod2, &[]).unwrap();
    assert_eq!(pod2.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod2.dial("10.97.0.10:80", PROXY_UID), "direct 10.97.0.10:80");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = loud.agent_log();
    // Sent to a loopback address of its own, which names where the original
    // destination waits for the proxy (redirect_common::handover).
    let to = log
        .lines()
        .find_map(|l| l.split("uid 1000 -> 10.96.0.10:80 redirected to ").nth(1))
        .and_then(|rest| rest.strip_suffix(":15001 (rule 10)"))
        .unwrap_or_else(|| panic!("no redirect record in {log}"));
    let to: std::net::Ipv4Addr = to.parse().unwrap();
    let to = u32::from(to);
    assert!(redirect_common::handover::is_address_v4(to), "{to}");
    assert!(log.contains("uid 1500 -> 10.97.0.10:80 direct (rule 3)"), "{log}");
    assert!(!quiet.agent_log().contains("redirected to"), "{}", quiet.agent_log());
}

#[test]
fn the_redirect_needs_no_sockops_and_concurrent_connections_each_get_their_own_destination() {
    let (node, pod) = both(NO_LISTS);
    node.enroll(&pod, &[]).unwrap();
    // The proxy listened before enrolment and was found: nothing needs sockops.
    assert_eq!(node.status()["pods"][0]["sockops"], false);
    let clients: Vec<_> = (0..40u16)
        .map(|i| {
            let to = format!("10.96.0.10:{}", 20000 + i);
            let child = pod.dial_cmd(&to, APP_UID, &[]).stdout(std::process::Stdio::piped()).spawn().unwrap();
            (to, child)
        })
        .collect();
    for (to, child) in clients {
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(out.trim(), format!("out {to}"));
    }
}

#[test]
fn every_pod_runs_the_nodes_one_instance_of_the_cgroup_programs_with_its_own_policy() {
    use std::os::fd::AsFd as _;

    use redirect_agent::ebpf::{link, programs::PROGRAMS};
    let (node, a) = both(NO_LISTS);
    let b = Pod::create(&node).unwrap();
    node.enroll(&a, &["flomesh.io/outbound-port-exclusion-list=80"]).unwrap();
    node.enroll(&b, &[]).unwrap();
    // One program for both pods, each connection under its own pod's policy.
    assert_eq!(a.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    assert_eq!(b.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(a.dial("10.96.0.10:81", APP_UID), "out 10.96.0.10:81");
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(node.bpffs_dir.join("pods")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let program = |dir: &std::path::Path, pin: &str| {
        let fd = link::get(&dir.join(pin)).unwrap();
        link::info(fd.as_fd()).unwrap().prog_id
    };
    for (pin, _, _) in PROGRAMS {
        let (pa, pb) = (program(&dirs[0], pin), program(&dirs[1], pin));
        if pin == "sk_lookup" {
            // A netns hook has no cgroup storage: each pod's own.
            assert_ne!(pa, pb, "{pin}");
        } else {
            assert_eq!(pa, pb, "{pin}: the node's one program");
        }
    }
}
