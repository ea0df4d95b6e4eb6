//! The iptables dataplane in a real network namespace: the emitted rules
//! load, applying twice leaves one copy, removing leaves nothing.

use redirect_agent::sandbox::Netns;
use tests::unique;

fn agent(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(tests::agent_bin()).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn nat_rules(ns: &Netns, cmd: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "exec", &ns.name, cmd, "-t", "nat"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().filter(|l| l.starts_with('-') || l.starts_with(':')).map(str::to_owned).collect()
}

const ALL_LISTS: &str = "spec:\n  sidecar:\n    localProxyMode: PodIP\n    localDNSProxy: {enable: true}\n  traffic:\n    outboundIPRangeExclusionList: [1.1.1.1/32, 2.2.2.0/24, fd00::/8]\n    outboundIPRangeInclusionList: [10.96.0.0/12, fd01::/16]\n    outboundPortExclusionList: [6379, 7070]\n    inboundPortExclusionList: [9090]\n    networkInterfaceExclusionList: [net1]\n";

#[test]
fn apply_is_idempotent_and_remove_is_clean() {
    let ns = Netns::create(&unique("ipt")).unwrap();
    ns.exec(&["addr", "add", "10.244.9.2/32", "dev", "lo"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, ALL_LISTS).unwrap();
    let path = ns.path().display().to_string();
    let mesh = mesh.display().to_string();
    let before = nat_rules(&ns, "iptables-save");
    // Rules an agent of an earlier release left, with the troubleshooting
    // page's chain names: the apply replaces them too.
    let (ok, seed) = agent(&["iptables", "print", "--form", "seed", "--restore-input", "--mesh-config", &mesh]);
    assert!(ok && seed.contains(":fsm_PROXY_INBOUND"), "{seed}");
    restore(&ns, &seed.replace("$POD_IP", "10.244.9.2"));
    let ports: String = (1..=20).map(|p| format!("{},", 20000 + p)).collect();
    let ann = format!("flomesh.io/outbound-port-exclusion-list={}", ports.trim_end_matches(','));
    for _ in 0..2 {
        let (ok, out) = agent(&["iptables", "apply", "--netns", &path, "--mesh-config", &mesh, "--annotation", &ann]);
        assert!(ok, "{out}");
    }
    let rules = nat_rules(&ns, "iptables-save");
    assert!(!rules.iter().any(|r| r.contains("fsm_PROXY")), "the earlier release's chains stay: {rules:#?}");
    let ours: Vec<&String> = rules.iter().filter(|r| r.contains("FSM_PROXY") || r.contains("DNAT")).collect();
    let mut unique_rules = ours.clone();
    unique_rules.sort();
    unique_rules.dedup();
    assert_eq!(ours.len(), unique_rules.len(), "duplicated rules after two applies: {ours:#?}");
    for want in [
        "-A PREROUTING -p tcp -j FSM_PROXY_INBOUND",
        "-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND",
        "-A OUTPUT -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1500 -j DNAT --to-destination 10.244.9.2",
        "-A OUTPUT -d 127.0.0.153/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.153:5300",
        "-A FSM_PROXY_OUTBOUND -d 1.1.1.1/32 -j RETURN",
        "-A FSM_PROXY_OUTBOUND -d 10.96.0.0/12 -j FSM_PROXY_OUT_REDIRECT",
        "-A FSM_PROXY_INBOUND -i net1 -j RETURN",
        "-A FSM_PROXY_INBOUND -p tcp -m multiport --dports 9090 -j RETURN",
    ] {
        assert!(rules.iter().any(|r| r == want), "missing {want:?} in {rules:#?}");
    }
    // 2 MeshConfig ports + 20 annotation ports: two multiport rules (15 + 7).
    let multiport: Vec<_> = rules.iter().filter(|r| r.starts_with("-A FSM_PROXY_OUTBOUND -p tcp -m multiport")).collect();
    assert_eq!(multiport.len(), 2, "{multiport:#?}");
    assert!(!rules.iter().any(|r| r.contains("fd00::")), "IPv6 CIDR in the IPv4 rules");

    let (ok, out) = agent(&["iptables", "apply", "--ipv6", "--pod-ip", "fd02::2", "--netns", &path, "--mesh-config", &mesh]);
    assert!(ok, "{out}");
    let v6 = nat_rules(&ns, "ip6tables-save");
    assert!(v6.iter().any(|r| r == "-A FSM_PROXY_OUTBOUND -d fd00::/8 -j RETURN"), "{v6:#?}");
    assert!(v6.iter().any(|r| r == "-A FSM_PROXY_OUTBOUND -d fd01::/16 -j FSM_PROXY_OUT_REDIRECT"), "{v6:#?}");

    for v6 in [false, true] {
        let mut args = vec!["iptables", "remove", "--netns", &path];
        if v6 {
            args.push("--ipv6");
        }
        let (ok, out) = agent(&args);
        assert!(ok, "{out}");
    }
    assert_eq!(nat_rules(&ns, "iptables-save"), before);
    assert!(!nat_rules(&ns, "ip6tables-save").iter().any(|r| r.contains("FSM_PROXY")));
    // Removing again is fine: nothing there, nothing done.
    let (ok, out) = agent(&["iptables", "remove", "--netns", &path]);
    assert!(ok, "{out}");
}

/// `iptables-restore --noflush` of `input` in the namespace.
fn restore(ns: &Netns, input: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "iptables-restore refused {input}");
}

#[test]
fn bad_input_gets_the_same_error_as_the_ebpf_path() {
    let (ok, out) = agent(&["iptables", "print", "--annotation", "flomesh.io/inbound-port-exclusion-list=99999"]);
    assert!(!ok);
    assert!(out.contains("flomesh.io/inbound-port-exclusion-list: \"99999\" is not a port number (1-65535)"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.0.0.0/33]\n").unwrap();
    let (ok, out) = agent(&["iptables", "print", "--mesh-config", &mesh.display().to_string()]);
    assert!(!ok);
    assert!(out.contains("spec.traffic.outboundIPRangeExclusionList[0]: \"10.0.0.0/33\" is not an IP address range"), "{out}");
}

#[test]
fn auto_serves_a_pod_without_cgroup_v2_with_iptables_live_and_removably() {
    use tests::{APP_UID, Node, Pod};
    let node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    let pod = Pod::create(&node).unwrap();
    let ns = pod.ns.path().display().to_string();
    // No cgroup v2 group: eBPF can't tell this pod's processes from others.
    let (ok, out) = node.cli(&["enroll", &pod.name, "--netns", &ns]);
    assert!(ok, "{out}");
    assert!(out.contains("iptables dataplane"), "{out}");
    assert_eq!(node.status()["pods"][0]["dataplane"], "iptables");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    // A MeshConfig change reaches the iptables pod too, without a restart.
    node.set_mesh_config("spec:\n  traffic:\n    outboundPortExclusionList: [80]\n");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "out 10.96.0.10:6379");
    // Asking for eBPF without a cgroup is refused by name.
    let other = Pod::create(&node).unwrap();
    let (ok, out) = node.cli(&["enroll", &other.name, "--netns", &other.ns.path().display().to_string(), "--dataplane", "ebpf"]);
    assert!(!ok && out.contains("needs --cgroup"), "{out}");
    let (ok, out) = node.cli(&["remove", &pod.name]);
    assert!(ok, "{out}");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    let rules = nat_rules(&pod.ns, "iptables-save");
    assert!(!rules.iter().any(|r| r.contains("FSM_PROXY")), "{rules:#?}");
}

#[test]
fn auto_gives_a_pod_with_interface_exclusions_the_dataplane_the_kernel_can_serve() {
    use tests::{Node, Pod};
    let node = Node::start("spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n").unwrap();
    let pod = Pod::create(&node).unwrap();
    let net1 = pod.add_net1(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    // eBPF sees the interface of arrival from 5.17; before, iptables serves.
    let want = if redirect_agent::ebpf::features::sees_ingress_interface() { "ebpf" } else { "iptables" };
    assert_eq!(node.status()["pods"][0]["dataplane"], want);
    assert_eq!(Pod::dial_from(&node.ns, &format!("{net1}:8080")), format!("app {net1}:8080"));
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
    assert_eq!(pod.dial("10.96.0.10:80", tests::APP_UID), "out 10.96.0.10:80");
}

/// The VM matrix runs this in a second pass with cgroup v2 unmounted: the
/// agent must see that eBPF can't serve and give every pod iptables.
#[test]
#[ignore = "needs a machine without cgroup v2 (the VM matrix runs it)"]
fn without_cgroup_v2_the_agent_falls_back_to_iptables() {
    use tests::{APP_UID, Node, Pod};
    assert!(redirect_agent::cgroup::cgroup2_mount().is_err(), "cgroup v2 is mounted here");
    let node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    let status = node.status();
    assert!(status["ebpf_unavailable"].as_str().unwrap().contains("no cgroup2 file system"), "{status:#}");
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(node.status()["pods"][0]["dataplane"], "iptables");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
}

/// fsm-init's own rules in a pod's netns, of either backend, found by an
/// agent that does not know the pod's spec: rules made before the
/// enrolment (legacy iptables) and after it (nf_tables, found at a
/// refresh): the pod is fsm-init's, the agent's programs go, and its
/// connections are fsm-init's. A pod without them stays the agent's.
#[test]
fn fsm_inits_own_rules_are_found_in_either_backend_before_or_after_enrolment() {
    use tests::{APP_UID, Backend, Node, Pod};
    let node = Node::start_with("kind: MeshConfig\nspec: {}\n", &["--refresh-interval", "1"]).unwrap();
    let dataplane =
        |pod: &Pod| node.status()["pods"].as_array().unwrap().iter().find(|p| p["name"] == pod.name.as_str()).unwrap()["dataplane"].clone();
    let before = Pod::create(&node).unwrap();
    tests::run_fsm_init(&before.ns, &before.ip, &node.mesh_config, &[], Backend::Legacy, false).unwrap();
    node.enroll(&before, &[]).unwrap();
    assert_eq!(dataplane(&before), "fsm-init");
    let after = Pod::create(&node).unwrap();
    node.enroll_with(&after, &[], &["--dataplane", "ebpf"]).unwrap();
    assert_eq!(dataplane(&after), "ebpf");
    tests::run_fsm_init(&after.ns, &after.ip, &node.mesh_config, &[], Backend::Nft, false).unwrap();
    assert!(tests::eventually(std::time::Duration::from_secs(20), || dataplane(&after) == "fsm-init"), "{}", node.agent_log());
    assert!(node.agent_log().contains("fsm-init's rules appeared in its netns"), "{}", node.agent_log());
    let plain = Pod::create(&node).unwrap();
    node.enroll(&plain, &[]).unwrap();
    for pod in [&before, &after] {
        assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
        assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
    }
    assert_eq!(dataplane(&plain), "ebpf", "no fsm-init rules: the agent's");
}
