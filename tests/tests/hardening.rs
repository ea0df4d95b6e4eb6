//! Hardening: no restart, failure, stale pod or hostile request may
//! silently un-mesh a pod or take in the whole node. Needs root and
//! cgroup v2, like the other kernel tests.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHash, Map, MapData};
use redirect_common::maps::{PodConfig, PolicyAddr, names};
use tests::{APP_UID, Node, PROXY_UID, Pod, eventually, scaled};

const NO_LISTS: &str = "kind: MeshConfig\nspec: {}\n";

fn pod_status(node: &Node, pod: &Pod) -> Option<serde_json::Value> {
    node.status()["pods"].as_array().into_iter().flatten().find(|p| p["name"] == pod.name.as_str()).cloned()
}

fn enroll_args(node: &Node, name: &str, netns: &Path, cgroup: &Path) -> (bool, String) {
    node.cli(&["enroll", name, "--netns", &netns.display().to_string(), "--cgroup", &cgroup.display().to_string()])
}

/// A cgroup made by a test, removed (after its children) on drop.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn enroll_refuses_the_node_and_anything_that_overlaps_an_enrolled_pod() {
    let node = Node::start(NO_LISTS).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let spare = Pod::bare(&node).unwrap();
    let pod_cg = pod.cgroup_path().unwrap().to_owned();
    let spare_cg = spare.cgroup_path().unwrap().to_owned();
    let root = redirect_agent::cgroup::cgroup2_mount().unwrap();
    let inner = Dir(pod_cg.join("inner"));
    std::fs::create_dir(&inner.0).unwrap();
    // The pod's netns under another name: a process's /proc/PID/ns/net.
    let mut sleeper = pod.command("sleep", APP_UID).arg("60").stdout(Stdio::null()).spawn().unwrap();
    let same_netns = format!("/proc/{}/ns/net", sleeper.id());
    // The agent's own (the test's): the node's.
    let host_netns = std::path::PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));

    let cases: [(&Path, &Path, &str); 5] = [
        (&spare.ns.path(), &root, "the cgroup2 root holds every process of the node"),
        (&host_netns, &spare_cg, "the node's own network namespace"),
        (&spare.ns.path(), &pod_cg, "already enrolled as pod"),
        (&spare.ns.path(), &inner.0, "inside the cgroup of pod"),
        (Path::new(&same_netns), &spare_cg, "already enrolled as pod"),
    ];
    for (netns, cgroup, why) in cases {
        let (ok, out) = enroll_args(&node, "test/intruder", netns, cgroup);
        assert!(!ok && out.contains(why), "netns {netns:?} cgroup {cgroup:?}: {out}");
        let named = out.contains(&netns.display().to_string()) || out.contains(&cgroup.display().to_string());
        assert!(named, "the error names the value: {out}");
    }
    // A cgroup that holds an enrolled pod's: enroll a pod inside a parent
    // group, then try the parent.
    let parent = Dir(spare_cg.join("outer"));
    std::fs::create_dir(&parent.0).unwrap();
    let child = Dir(parent.0.join("pod"));
    std::fs::create_dir(&child.0).unwrap();
    let third = Pod::bare(&node).unwrap();
    let (ok, out) = enroll_args(&node, "test/nested", &third.ns.path(), &child.0);
    assert!(ok, "{out}");
    let (ok, out) = enroll_args(&node, "test/intruder", &spare.ns.path(), &parent.0);
    assert!(!ok && out.contains("holds the cgroup of pod test/nested"), "{out}");

    // Nothing was half-applied: the two pods and nothing else.
    let names: Vec<String> = node.status()["pods"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, [pod.name.clone(), "test/nested".to_owned()]);
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let (ok, out) = node.cli(&["remove", "test/nested"]);
    assert!(ok, "{out}");
    drop(child);
}

#[test]
fn a_pod_whose_netns_vanished_is_removed_and_does_not_hold_back_a_meshconfig_change() {
    let listen = tests::metrics_listen();
    let node = Node::start_with(NO_LISTS, &["--metrics-listen", &listen]).unwrap();
    let gone = Pod::create(&node).unwrap();
    let ebpf = Pod::create(&node).unwrap();
    let iptables = Pod::create(&node).unwrap();
    node.enroll(&gone, &[]).unwrap();
    node.enroll(&ebpf, &[]).unwrap();
    node.enroll_with(&iptables, &[], &["--dataplane", "iptables"]).unwrap();
    for pod in [&ebpf, &iptables] {
        assert_eq!(pod.dial("10.96.0.10:8080", APP_UID), "out 10.96.0.10:8080");
    }
    // Deleted without `remove` (a crashed kubelet, a missed CNI DEL): its
    // processes still hold the namespace, but no path names it.
    redirect_agent::sandbox::ip(&["netns", "del", &gone.ns.name]).unwrap();
    // A changed file, not a `reload`: the agent notices on its own.
    std::fs::write(&node.mesh_config, "kind: MeshConfig\nspec:\n  traffic:\n    outboundPortExclusionList: [8080]\n").unwrap();
    let reached = eventually(Duration::from_secs(10), || {
        ebpf.dial("10.96.0.10:8080", APP_UID) == "direct 10.96.0.10:8080"
            && iptables.dial("10.96.0.10:8080", APP_UID) == "direct 10.96.0.10:8080"
    });
    assert!(reached, "the change reached the other pods\n{}", node.agent_log());
    let status = node.status();
    assert!(pod_status(&node, &gone).is_none(), "{status}");
    assert_eq!(status["removed_netns_gone"], 1, "{status}");
    let metrics = tests::metrics(&listen);
    assert!(metrics.contains("fsm_redirect_pods_removed_netns_gone_total 1"), "{metrics}");
    assert!(node.agent_log().contains("is gone: removed"), "logged");
}

/// The pinned `LOCAL_ADDRS` map of a node, filled by a test.
struct Filled {
    map: BpfHash<MapData, PolicyAddr, u8>,
    keys: Vec<PolicyAddr>,
}

impl Filled {
    /// Fills the map up with addresses of `policy` (an enrolled pod's slot,
    /// which the agent keeps), as a node full of pods would.
    fn fill(node: &Node, policy: u32) -> Self {
        let path = node.bpffs_dir.join("maps").join(names::LOCAL_ADDRS);
        let mut map = BpfHash::try_from(Map::HashMap(MapData::from_pin(&path).unwrap())).unwrap();
        let mut keys = Vec::new();
        for n in 0u32.. {
            let key = PolicyAddr { policy, addr: (0x0a63_0000 + n).to_be_bytes() };
            if map.insert(&key, &1, 0).is_err() {
                break;
            }
            keys.push(key);
        }
        assert!(keys.len() > 1000, "filled {} entries", keys.len());
        Filled { map, keys }
    }

    fn drain(&mut self) {
        for key in self.keys.drain(..) {
            let _ = self.map.remove(&key);
        }
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        self.drain();
    }
}

#[test]
fn a_pod_that_cannot_be_installed_at_restart_stays_intercepted_degraded_and_is_retried() {
    let listen = tests::metrics_listen();
    let mut node = Node::start_with(NO_LISTS, &["--refresh-interval", "1", "--metrics-listen", &listen]).unwrap();
    let stuck = Pod::create(&node).unwrap();
    let neighbour = Pod::create(&node).unwrap();
    node.enroll(&stuck, &[]).unwrap();
    node.enroll(&neighbour, &[]).unwrap();
    let neighbour_id = pod_status(&node, &neighbour).unwrap()["id"].as_u64().unwrap() as u32;
    node.kill_agent();
    // While the agent is away the pod gets an address (its policy must be
    // written again), and the node's LOCAL_ADDRS map fills up.
    stuck.ns.exec(&["addr", "add", "10.250.0.7/32", "dev", "lo"]).unwrap();
    let pod_config = node.bpffs_dir.join("maps").join(names::POD_CONFIG);
    let configs: BpfHash<MapData, u32, PodConfig> = BpfHash::try_from(Map::HashMap(MapData::from_pin(&pod_config).unwrap())).unwrap();
    let mut filled = Filled::fill(&node, configs.get(&neighbour_id, 0).unwrap().policy);
    node.start_agent().unwrap();

    // Kept, with its previous policy, and said so everywhere.
    let status = pod_status(&node, &stuck).expect("the pod is still enrolled");
    assert!(status["degraded"].as_str().is_some_and(|w| w.contains("LOCAL_ADDRS")), "{status}");
    assert_eq!(status["attached"], true, "{status}");
    assert_eq!(stuck.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    let (ok, out) = node.cli(&["diagnose", &stuck.name]);
    assert!(!ok && out.contains("degraded"), "{out}");
    // The neighbour too: its slot holds the filling, not its own lists, so
    // it must be written again, and can't be either.
    assert!(pod_status(&node, &neighbour).unwrap()["degraded"].is_string());
    assert_eq!(neighbour.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    let metrics = tests::metrics(&listen);
    assert!(metrics.contains("fsm_redirect_pods_degraded 2"), "{metrics}");

    // Degraded pods still follow MeshConfig changes, one after another
    // (their PodConfig is pointed at each new list slot).
    for (excluded, redirected) in [("7070", "6379"), ("6379", "7070")] {
        let yaml = format!("kind: MeshConfig\nspec:\n  traffic:\n    outboundPortExclusionList: [{excluded}]\n");
        std::fs::write(&node.mesh_config, yaml).unwrap();
        let (ok, out) = node.cli(&["reload"]);
        assert!(!ok && out.contains("degraded"), "{out}");
        for pod in [&stuck, &neighbour] {
            assert_eq!(pod.dial(&format!("10.96.0.10:{excluded}"), APP_UID), format!("direct 10.96.0.10:{excluded}"));
            assert_eq!(pod.dial(&format!("10.96.0.10:{redirected}"), APP_UID), format!("out 10.96.0.10:{redirected}"));
        }
    }
    // A degraded pod removed: the next change must not trip over it. (Its
    // slot held the filling, so the map has room again too.)
    let (ok, out) = node.cli(&["remove", &neighbour.name]);
    assert!(ok, "{out}");
    let (ok, out) = node.cli(&["reload"]);
    assert!(ok && out.contains("reloaded"), "{out}\n{}", node.agent_log());
    node.enroll(&neighbour, &[]).unwrap();

    // Room again: the next refresh installs it.
    filled.drain();
    let healed = eventually(Duration::from_secs(10), || {
        [&stuck, &neighbour].iter().all(|p| pod_status(&node, p).is_some_and(|s| s["degraded"].is_null()))
    });
    assert!(healed, "{}", node.agent_log());
    let local = pod_status(&node, &stuck).unwrap()["local_addrs"].clone();
    assert!(local.as_array().unwrap().iter().any(|a| a == "10.250.0.7"), "{local}");
    assert_eq!(stuck.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

#[test]
fn the_control_socket_serves_root_alone_and_bounds_each_request() {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    };
    let node = Node::start(NO_LISTS).unwrap();
    let sock = redirect_agent::state::State::socket(node.state_dir.path());
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    let as_user = || {
        let out = node.agent_cmd().arg("status").uid(APP_UID).output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Another user is told what stops them, not that the agent is down.
    let said = as_user();
    assert!(said.contains("permission denied") && said.contains("root") && !said.contains("not running"), "{said}");
    // With the file modes opened by hand, the peer's credentials still
    // keep them out.
    let dir = node.state_dir.path();
    let dir_mode = std::fs::metadata(dir).unwrap().permissions();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let said = as_user();
    std::fs::set_permissions(dir, dir_mode).unwrap();
    assert!(said.contains(&format!("serves root only, not uid {APP_UID}")), "{said}");

    let answer = |stream: UnixStream| {
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    };
    // An endless request line is cut off at the limit, and answered.
    let mut big = UnixStream::connect(&sock).unwrap();
    big.write_all(&vec![b'x'; redirect_agent::daemon::MAX_REQUEST + 2]).unwrap();
    assert!(answer(big).contains("request larger than"));
    // A client that never finishes its request is let go.
    let idle = UnixStream::connect(&sock).unwrap();
    let started = Instant::now();
    assert!(answer(idle).contains("no complete request within"));
    assert!(started.elapsed() < scaled(Duration::from_secs(30)));
    // And the agent still answers everyone else.
    assert!(node.status()["pods"].is_array());
}

#[test]
fn a_failed_iptables_restore_keeps_the_previous_rules_and_is_retried() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut node =
        Node::start_with("kind: MeshConfig\nspec:\n  traffic:\n    outboundPortExclusionList: [6379]\n", &["--refresh-interval", "1"])
            .unwrap();
    // An iptables-restore that fails while a flag file exists (as a held
    // xtables lock or a missing kernel module would make it fail).
    let shims = tempfile::tempdir().unwrap();
    let flag = shims.path().join("fail");
    let real = ["/usr/sbin/iptables-restore", "/sbin/iptables-restore"].into_iter().find(|p| Path::new(p).exists()).unwrap();
    let shim = shims.path().join("iptables-restore");
    std::fs::write(
        &shim,
        format!("#!/bin/sh\nif [ -e {} ]; then echo 'simulated failure' >&2; exit 4; fi\nexec {real} \"$@\"\n", flag.display()),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    node.kill_agent();
    node.agent_env.push(("PATH".into(), format!("{}:{}", shims.path().display(), std::env::var("PATH").unwrap())));
    node.start_agent().unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll_with(&pod, &[], &["--dataplane", "iptables"]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");

    std::fs::write(&flag, "").unwrap();
    // Rules larger than a pipe's buffer (64 KiB): the agent is still
    // writing them when iptables-restore exits without reading, so it
    // meets a broken pipe, and must report why the program stopped.
    let excluded: Vec<String> = (0..2000).map(|i| format!("10.200.{}.{}/32", i / 250, i % 250 + 1)).collect();
    std::fs::write(
        &node.mesh_config,
        format!(
            "kind: MeshConfig\nspec:\n  traffic:\n    outboundPortExclusionList: [7070]\n    outboundIPRangeExclusionList: [{}]\n",
            excluded.join(", ")
        ),
    )
    .unwrap();
    let (ok, out) = node.cli(&["reload"]);
    assert!(!ok && out.contains("degraded") && out.contains(&pod.name) && out.contains("simulated failure"), "{out}");
    // The previous rules, whole: intercepted, and the old exclusion.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");
    assert_eq!(pod.dial("10.96.0.10:7070", APP_UID), "out 10.96.0.10:7070");

    // The cause goes away: the next refresh applies the new lists.
    std::fs::remove_file(&flag).unwrap();
    let applied = eventually(Duration::from_secs(10), || pod.dial("10.96.0.10:7070", APP_UID) == "direct 10.96.0.10:7070");
    assert!(applied, "{}", node.agent_log());
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "out 10.96.0.10:6379");
    assert!(pod_status(&node, &pod).unwrap()["degraded"].is_null());
}

/// What a demo of process `pid` leaves behind, if anything.
fn demo_traces(pid: u32) -> Vec<String> {
    let tag = format!("fsm-demo-{pid}");
    let mut left = Vec::new();
    for ns in [tag.clone(), format!("{tag}-svc")] {
        if Path::new("/var/run/netns").join(&ns).exists() {
            left.push(format!("netns {ns}"));
        }
    }
    if redirect_agent::cgroup::cgroup2_mount().unwrap().join(&tag).exists() {
        left.push(format!("cgroup {tag}"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    left.extend(mounts.lines().filter(|l| l.contains(&tag)).map(|l| format!("mount {l}")));
    left
}

/// Removes what `demo_traces` found (after a failed check).
fn remove_demo_traces(pid: u32) {
    let tag = format!("fsm-demo-{pid}");
    for ns in [tag.clone(), format!("{tag}-svc")] {
        let _ = redirect_agent::sandbox::ip(&["netns", "del", &ns]);
    }
    let _ = nix::mount::umount2(Path::new(&format!("/run/{tag}-bpffs")), nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(format!("/run/{tag}-bpffs"));
    let _ = std::fs::remove_dir_all(format!("/run/{tag}"));
    let _ = std::fs::remove_dir(redirect_agent::cgroup::cgroup2_mount().unwrap().join(&tag));
}

#[test]
fn ctrl_c_at_any_moment_of_the_demo_leaves_nothing_behind() {
    // Early in set-up, later in set-up, and once it runs.
    for delay in [30, 150, 400, 3000] {
        let mut demo =
            std::process::Command::new(tests::agent_bin()).arg("demo").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(demo.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
        let status = demo.wait().unwrap();
        let left = demo_traces(demo.id());
        remove_demo_traces(demo.id());
        assert!(left.is_empty(), "SIGINT after {delay} ms ({status}) left {left:?}");
    }
}

#[test]
fn only_the_proxy_on_its_listener_learns_an_original_destination() {
    let node = Node::start(NO_LISTS).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    // Another container of the pod (or root in it) accepting, on an address
    // of the hand-over range it listens on itself, a connection it made:
    // conntrack would tell it nothing, and neither do we.
    for uid in [APP_UID, 0] {
        let out = pod.netprobe(&["peek", "10.96.0.10:80", "9977"], uid);
        let dialled = out.strip_prefix("peek ").and_then(|o| o.strip_suffix(" refused 2"));
        let dialled: Option<std::net::Ipv4Addr> = dialled.and_then(|a| a.parse().ok());
        assert!(dialled.is_some_and(|a| redirect_common::handover::is_address_v4(u32::from(a))), "uid {uid}: {out}");
    }
    // The proxy still learns its connections' destinations.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
}

#[test]
fn a_netns_made_again_under_the_same_path_is_attached_again() {
    let node = Node::start_with(NO_LISTS, &["--refresh-interval", "1"]).unwrap();
    let mut pod = Pod::bare(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    // The pod's sandbox dies and a new one gets the same netns path (a
    // runtime that names namespaces after the pod).
    // Never a moment without the path (a `del` then `add` left one, and a
    // refresh in it rightly removed the pod: its netns was gone): the old
    // namespace is unmounted from the path, and the new one, made under
    // another name, bound there.
    let path = pod.ns.path().display().to_string();
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let new = tests::unique("t");
    redirect_agent::sandbox::ip(&["netns", "add", &new]).unwrap();
    run("umount", &["-l", &path]);
    run("mount", &["-o", "bind", &format!("/var/run/netns/{new}"), &path]);
    redirect_agent::sandbox::ip(&["netns", "del", &new]).unwrap();
    pod.ns.exec(&["link", "set", "lo", "up"]).unwrap();
    pod.ns.exec(&["addr", "add", &format!("{}/32", pod.ip), "dev", "lo"]).unwrap();
    let node_end = tests::unique("v");
    redirect_agent::sandbox::veth(&node.ns, &node_end, "10.247.9.1/24", &pod.ns, "eth0", "10.247.9.2/24").unwrap();
    pod.start_processes(15001, 15003, tests::PROXY_UID).unwrap();
    // A connection arriving from the node goes through the proxy's inbound
    // listener once sk_lookup is on the new namespace.
    let to = "10.247.9.2:8080";
    let attached = eventually(Duration::from_secs(10), || Pod::dial_from(&node.ns, to) == format!("in {to}"));
    assert!(attached, "netns {path}: {}\n{}", Pod::dial_from(&node.ns, to), node.agent_log());
    assert!(node.agent_log().contains("attached to a cgroup or netns that is gone"));
    // Outbound too, from the pod's processes in the new netns.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID).split(' ').next(), Some("out"));
}

#[test]
fn annotations_over_the_nodes_per_pod_limit_are_refused_by_name_and_counted() {
    let listen = tests::metrics_listen();
    let node = Node::start_with(NO_LISTS, &["--metrics-listen", &listen, "--max-annotation-entries", "100"]).unwrap();
    let greedy = Pod::bare(&node).unwrap();
    let cidrs: Vec<String> = (0..101).map(|i| format!("10.{}.{}.0/24", 100 + i / 250, i % 250)).collect();
    let annotation = format!("flomesh.io/outbound-ip-range-exclusion-list={}", cidrs.join(","));
    let err = node.enroll(&greedy, &[&annotation]).unwrap_err().to_string();
    assert!(err.contains("flomesh.io/outbound-ip-range-exclusion-list: \"101 entries\" is more than this node's limit of 100"), "{err}");
    assert!(node.status()["pods"].as_array().unwrap().is_empty());
    assert!(tests::metrics(&listen).contains("fsm_redirect_enrolments_refused_over_limit_total 1"));
    // At the limit: enrolled, with every entry in the kernel.
    let annotation = format!("flomesh.io/outbound-ip-range-exclusion-list={}", cidrs[..100].join(","));
    node.enroll(&greedy, &[&annotation]).unwrap();
    assert_eq!(pod_status(&node, &greedy).unwrap()["excluded_cidrs"], 100);
}

/// Item 8: a SYN flood at one pod leaves another pod's proxy the original
/// destinations of its connections. (They used to be records in one
/// node-wide LRU of 64 Ki, written at each SYN: a flood evicted them, and
/// the proxy got ENOENT.) B's connection is made before the flood and its
/// proxy asks after it.
#[test]
fn a_syn_flood_at_one_pod_leaves_another_pods_original_destinations_alone() {
    const SYNS: u32 = 160 * 1024;
    let node = Node::start(NO_LISTS).unwrap();
    let a = Pod::create(&node).unwrap();
    let mut b = Pod::wired(&node, false).unwrap();
    b.start_app("serve", PROXY_UID).unwrap();
    b.start_proxy("15001", "out", PROXY_UID).unwrap();
    b.start_slow_inbound_proxy(15003, PROXY_UID).unwrap();
    node.enroll(&a, &[]).unwrap();
    node.enroll(&b, &[]).unwrap();
    let redirected = |pod: &Pod| node.counters(pod).get("inbound_redirected").copied().unwrap_or(0);
    let before = redirected(&a);

    let mut flood = std::process::Command::new(tests::netprobe());
    flood.args(["ask-after-flood", &format!("{}:8080", b.ip), &format!("{}:8080", a.ip), &SYNS.to_string()]);
    redirect_agent::sandbox::enter_netns(&mut flood, &node.ns.path()).unwrap();
    let out = flood.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));

    // The flood reached A's inbound decision, SYN by SYN (more than the
    // old LRU held)...
    assert!(text.contains(&format!("sent {SYNS} SYNs")), "{text}");
    let flooded = redirected(&a) - before;
    assert!(flooded > 2 * 64 * 1024, "only {flooded} of {SYNS} SYNs reached pod A's sk_lookup");
    // ...and B's proxy, asking afterwards, learns where its connection went.
    assert_eq!(text.lines().last(), Some(format!("in {}:8080", b.ip).as_str()), "{text}");
    // A itself still serves new connections.
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", a.ip)), format!("in {}:8080", a.ip));
}

/// The proxy's answer on an accepted socket is the socket's own local
/// address; on a socket it dialled itself it is not: that is left to the
/// kernel (conntrack, where it runs, answers the destination; without it,
/// an error), never the socket's own address.
#[test]
fn the_proxys_own_outgoing_sockets_are_not_answered_as_accepted_ones() {
    let node = Node::start(NO_LISTS).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    for to in ["10.96.0.10:80".to_owned(), format!("{}:8080", pod.ip)] {
        let out = pod.dial_cmd(&to, PROXY_UID, &["--ask"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        assert!(lines.next().is_some_and(|l| l.ends_with(&to)), "{to}: {text}");
        assert!(lines.next().is_some_and(|l| l.starts_with("asked none:")), "{to}: {text}");
    }
}

/// An agent with the file limit a container gets (1024, hard too) and
/// `--metrics-listen`, while a thousand idle connections sit on the metrics
/// endpoint: the control socket still serves (an enrolment, `status`), and
/// goes on serving once they are gone; a scrape is answered meanwhile.
#[test]
fn a_thousand_idle_metrics_connections_with_a_file_limit_of_1024_never_deafen_the_agent() {
    let listen = tests::metrics_listen();
    let mut node = Node::start_with(NO_LISTS, &["--metrics-listen", &listen]).unwrap();
    node.kill_agent();
    node.agent_wrapper = ["sh", "-c", "ulimit -n 1024 && exec \"$@\"", "sh"].map(str::to_owned).to_vec();
    node.start_agent().unwrap();
    assert!(tests::metrics(&listen).starts_with("HTTP/1.1 200"));
    // This process needs room for the connections.
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let idle: Vec<std::net::TcpStream> =
        (0..1100).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).ok()).collect();
    assert!(idle.len() >= 1000, "only {} connections made", idle.len());
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(node.status()["pods"].as_array().map(Vec::len), Some(1));
    // Those beyond the endpoint's few are closed at once, the others after
    // seconds without a request: a scrape gets its turn.
    assert!(eventually(std::time::Duration::from_secs(20), || tests::metrics(&listen).starts_with("HTTP/1.1 200")));
    drop(idle);
    assert_eq!(node.status()["pods"].as_array().map(Vec::len), Some(1));
    assert!(node.agent_log().lines().all(|l| !l.contains("panicked")), "{}", node.agent_log());
}

#[test]
fn a_state_file_the_agent_cant_read_keeps_every_pod_intercepted_and_is_reported() {
    let mut node = Node::start(NO_LISTS).unwrap();
    let kept = Pod::create(&node).unwrap();
    let newer = Pod::create(&node).unwrap();
    node.enroll(&kept, &[]).unwrap();
    node.enroll(&newer, &[]).unwrap();
    node.kill_agent();
    // A newer release recorded `newer` in a form this one does not know (a
    // rollback meeting its state).
    let file = node.state_dir.path().join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let pods = state["pods"].as_object_mut().unwrap();
    let (id, entry) = pods.iter_mut().find(|(_, p)| p["name"] == newer.name.as_str()).unwrap();
    let id: u64 = id.parse().unwrap();
    entry["dataplane"] = "ebpf-v2".into();
    let recorded = entry.clone();
    std::fs::write(&file, serde_json::to_vec(&state).unwrap()).unwrap();
    node.start_agent().unwrap_or_else(|e| panic!("{e}: {}", node.agent_log()));

    let status = node.status();
    let unreadable = &status["unreadable_pods"][0];
    assert_eq!((unreadable["name"].as_str(), unreadable["id"].as_u64()), (Some(newer.name.as_str()), Some(id)), "{status}");
    assert!(unreadable["why"].as_str().is_some_and(|w| w.contains("ebpf-v2")), "{status}");
    assert!(pod_status(&node, &kept).is_some_and(|p| p["attached"] == true));
    // Both still intercepted: the unreadable pod's programs were left.
    for pod in [&kept, &newer] {
        assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80", "{}", pod.name);
    }
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(!ok && out.contains(&newer.name) && out.contains("can't read"), "{out}");
    // Written back as it was when the state is saved, and its id not given
    // to a new pod.
    let third = Pod::create(&node).unwrap();
    node.enroll(&third, &[]).unwrap();
    assert_ne!(pod_status(&node, &third).unwrap()["id"].as_u64(), Some(id));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["pods"][id.to_string()], recorded, "{saved}");

    // A file that is not the state at all: moved aside, said so, and no
    // pinned pod taken for a leftover.
    node.kill_agent();
    std::fs::write(&file, b"{\"pods\": {\"1\": ").unwrap();
    node.start_agent().unwrap_or_else(|e| panic!("{e}: {}", node.agent_log()));
    let status = node.status();
    assert!(status["state_problems"][0].as_str().is_some_and(|p| p.contains("state.json.unreadable")), "{status}");
    assert!(node.state_dir.path().join("state.json.unreadable").exists());
    for pod in [&kept, &newer, &third] {
        assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80", "{}", pod.name);
    }
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(!ok && out.contains("moved to"), "{out}");
}

/// Spawns `cmd` as process `pid` (the kernel's `ns_last_pid`, retried
/// while other processes take the number first); `None` if it never got it.
fn spawn_as_pid(cmd: &mut std::process::Command, pid: u32) -> Option<std::process::Child> {
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = cmd.spawn().unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn a_pod_recorded_by_its_process_is_not_followed_into_the_namespace_a_reused_pid_names() {
    let node = Node::start_with(NO_LISTS, &["--refresh-interval", "1"]).unwrap();
    let pod = Pod::create(&node).unwrap();
    // The sandbox's process holds the pod's namespace, named by its /proc
    // path (as reconciling and cri-dockerd record it).
    let mut sandbox = std::process::Command::new("sleep");
    sandbox.arg("600").stdin(Stdio::null());
    redirect_agent::sandbox::enter_netns(&mut sandbox, &pod.ns.path()).unwrap();
    let mut sandbox = sandbox.spawn().unwrap();
    let pid = sandbox.id();
    let path = Path::new("/proc").join(pid.to_string()).join("ns/net");
    let (ok, out) = enroll_args(&node, &pod.name, &path, pod.cgroup_path().unwrap());
    assert!(ok, "{out}");
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");

    // The process exits; its PID goes to a process of another namespace,
    // with an address of its own. The agent is stopped meanwhile: a look
    // at the path while no process holds it (a refresh, every second, or a
    // change the kernel announces) finds it gone rather than another
    // namespace, and under emulation giving the PID again takes seconds.
    pod.wait_network_settled();
    let agent = nix::unistd::Pid::from_raw(node.agent_pid().unwrap() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    sandbox.kill().unwrap();
    sandbox.wait().unwrap();
    let stranger = redirect_agent::sandbox::Netns::create(&tests::unique("pidreuse")).unwrap();
    stranger.exec(&["addr", "add", "10.250.9.9/32", "dev", "lo"]).unwrap();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600").stdin(Stdio::null());
    redirect_agent::sandbox::enter_netns(&mut cmd, &stranger.path()).unwrap();
    let reused = spawn_as_pid(&mut cmd, pid);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    let Some(mut reused) = reused else { panic!("PID {pid} was never given again") };
    assert_ne!(redirect_agent::netns::identity(&path).unwrap(), redirect_agent::netns::identity(&pod.ns.path()).unwrap());

    // The next refresh removes the pod as gone, and never reads the
    // stranger's namespace as the pod's.
    let removed = eventually(scaled(Duration::from_secs(10)), || pod_status(&node, &pod).is_none());
    let status = node.status();
    let _ = reused.kill();
    let _ = reused.wait();
    assert!(removed, "still enrolled: {}\n{}", status, node.agent_log());
    assert_eq!(status["removed_netns_gone"], 1, "{status}");
    assert!(node.agent_log().contains("names another namespace now"), "{}", node.agent_log());
}

#[test]
fn a_pod_that_fills_its_netns_with_addresses_is_refused_by_name_and_keeps_no_one_else_out() {
    use redirect_common::maps::capacity::ADDRS_PER_POD;
    let node = Node::start_with(NO_LISTS, &["--refresh-interval", "1"]).unwrap();
    let greedy = Pod::create(&node).unwrap();
    let later = Pod::create(&node).unwrap();
    node.enroll(&later, &[]).unwrap();
    node.enroll(&greedy, &[]).unwrap();
    // Enrolled, then it takes more addresses than a pod may have (a pod
    // with NET_ADMIN can): degraded by name at the next refresh, its
    // previous entries kept, so it stays intercepted.
    // In one `ip -batch` (a refresh may still come in the middle: then the
    // addresses up to the cap are what it had).
    let batch = tempfile::NamedTempFile::new().unwrap();
    let lines: String = (0..ADDRS_PER_POD).map(|i| format!("addr add 10.251.{}.{}/32 dev lo\n", i / 200, i % 200 + 1)).collect();
    std::fs::write(batch.path(), lines).unwrap();
    greedy.ns.exec(&["-batch", batch.path().to_str().unwrap()]).unwrap();
    let over = format!("holds {} IPv4 addresses, over the {ADDRS_PER_POD}", ADDRS_PER_POD + 1);
    let degraded = eventually(scaled(Duration::from_secs(10)), || {
        pod_status(&node, &greedy).is_some_and(|p| p["degraded"].as_str().is_some_and(|d| d.contains(&over)))
    });
    assert!(degraded, "{}", node.status());
    let kept = pod_status(&node, &greedy).unwrap()["local_addrs"].clone();
    let v4 = kept.as_array().unwrap().iter().filter(|a| a.as_str().is_some_and(|a| a.contains('.'))).count();
    assert!(v4 <= ADDRS_PER_POD as usize, "its previous addresses kept, never more than the cap: {kept}");
    assert_eq!(greedy.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    // A new pod like it is refused by name; the others go on.
    node.cli(&["remove", &greedy.name]);
    let (ok, out) = node.cli(&[
        "enroll",
        &greedy.name,
        "--netns",
        &greedy.ns.path().display().to_string(),
        "--cgroup",
        &greedy.cgroup_path().unwrap().display().to_string(),
    ]);
    assert!(!ok && out.contains(&greedy.name) && out.contains(&over), "{out}");
    assert!(pod_status(&node, &later).is_some_and(|p| p["degraded"].is_null()));
    assert_eq!(later.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

/// Before 5.15, a net_cls or net_prio group in use turns the kernel's
/// cgroup v2 socket matching off node-wide: eBPF pods' new sockets would
/// leave unintercepted. The agent looks at each refresh and gives eBPF pods
/// fsm-init's rules too. The mount is a fake /proc/mounts
/// (`REDIRECT_TEST_PROC_MOUNTS`): a real one would take eBPF from every
/// other test of the machine for good. From 5.15 the kernel keeps the
/// matching, and nothing changes.
#[test]
fn net_cls_coming_into_use_before_5_15_gives_every_ebpf_pod_fsm_inits_rules_too() {
    use aya::util::KernelVersion;
    let mounts = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy("/proc/mounts", mounts.path()).unwrap();
    let mut node = Node::start_with(NO_LISTS, &["--refresh-interval", "1"]).unwrap();
    node.agent_env.push(("REDIRECT_TEST_PROC_MOUNTS".into(), mounts.path().display().to_string()));
    node.kill_agent();
    node.start_agent().unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    assert_eq!(pod_status(&node, &pod).unwrap()["dataplane"], "ebpf");
    assert!(tests::nat_chains(&pod.ns).is_empty());

    // A privileged pod mounts net_cls (and uses it).
    let mut text = std::fs::read_to_string(mounts.path()).unwrap();
    text += "cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,nodev,noexec,relatime,net_cls,net_prio 0 0\n";
    std::fs::write(mounts.path(), text).unwrap();
    // A refresh has run since once the pod's new address shows.
    pod.ns.exec(&["addr", "add", "10.250.3.3/32", "dev", "lo"]).unwrap();
    let refreshed = || pod_status(&node, &pod).is_some_and(|p| p["local_addrs"].as_array().unwrap().iter().any(|a| a == "10.250.3.3"));
    assert!(eventually(scaled(Duration::from_secs(10)), refreshed), "{}", node.status());

    let before_fix = KernelVersion::current().unwrap() < KernelVersion::new(5, 15, 0);
    if before_fix {
        let backstop = eventually(scaled(Duration::from_secs(10)), || tests::nat_chains(&pod.ns).iter().any(|c| c == "FSM_PROXY_OUTBOUND"));
        assert!(backstop, "{:?}\n{}", tests::nat_chains(&pod.ns), node.agent_log());
        let status = node.status();
        assert!(status["cgroup_sockets_unreliable"].as_str().is_some_and(|w| w.contains("net_cls")), "{status}");
        let (ok, out) = node.cli(&["diagnose"]);
        assert!(!ok && out.contains("cgroup v2 socket matching"), "{out}");
    } else {
        assert!(node.status()["cgroup_sockets_unreliable"].is_null());
        assert!(tests::nat_chains(&pod.ns).is_empty(), "{:?}", tests::nat_chains(&pod.ns));
    }
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
    // Removed: the backstop's rules go with the programs.
    let (ok, out) = node.cli(&["remove", &pod.name]);
    assert!(ok, "{out}");
    assert!(tests::nat_chains(&pod.ns).is_empty(), "{:?}", tests::nat_chains(&pod.ns));
}

/// One pod's connects can't take another's outbound hand-overs: each pod
/// writes its own region of `HANDOVER_POD` and `HANDOVER6_POD`, in turn.
/// Before (and on kernels before 5.12, documented), the node had one ring
/// of 256 Ki slots for IPv4 and one LRU of 64 Ki entries for IPv6, and a
/// pod that connected that many times while another pod's proxy had not
/// yet asked took its entry (ENOENT).
#[test]
fn a_connect_flood_from_one_pod_leaves_another_pods_outbound_hand_overs_alone() {
    if !tests::requires(tests::Feature::NativeSpeed) || !tests::requires(tests::Feature::AtomicFetch) {
        return;
    }
    let node = Node::start(NO_LISTS).unwrap();
    // The flooder has no proxy: each connect is refused at once, after
    // connect4/6 has redirected it and written its slot.
    let flooder = Pod::wired(&node, true).unwrap();
    let mut victim = Pod::wired(&node, true).unwrap();
    victim.spawn_listener(&["proxy-asked", "[::]:15001", "out"], PROXY_UID).unwrap();
    node.enroll(&flooder, &[]).unwrap();
    node.enroll(&victim, &[]).unwrap();

    for (dst, connects, counter) in
        [("10.96.0.10:80", 300 * 1024u32, "outbound_redirected"), ("[fd00:96::10]:80", 100 * 1024, "outbound_ipv6")]
    {
        let mut asker = victim.netprobe_cmd(&["ask-when-told", dst], APP_UID);
        let mut asker = asker.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = std::io::BufReader::new(asker.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "connected", "{dst}");

        let before = node.counters(&flooder).get(counter).copied().unwrap_or(0);
        let flood = flooder.netprobe(&["connect-flood", dst, &connects.to_string()], APP_UID);
        assert_eq!(flood, format!("connects={connects} refused={connects}"));
        let redirected = node.counters(&flooder).get(counter).copied().unwrap_or(0) - before;
        assert!(redirected >= u64::from(connects), "only {redirected} of the flood's connects to {dst} were redirected");

        // The victim's proxy asks only now.
        std::io::Write::write_all(asker.stdin.as_mut().unwrap(), b"go\n").unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let _ = asker.wait();
        assert_eq!(line.trim(), format!("out {dst}"), "the victim's hand-over after {connects} connects of another pod");
    }
}
