//! The fast path for local hops (sockmap + sk_msg): a pod's connections
//! with itself (app -> proxy after the redirect, proxy -> app over
//! loopback) carry their data socket to socket. What users rely on: every
//! byte arrives, in order, whatever the timing; the switch turns it off,
//! per agent and per pod, also for connections already open.
//! Needs root and cgroup v2.

use std::{io::BufRead as _, time::Duration};

use tests::{APP_UID, Node, PROXY_UID, Pod};

const MESH: &str = "kind: MeshConfig\nspec: {}\n";

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn counter(node: &Node, pod: &Pod, name: &str) -> u64 {
    node.counters(pod).get(name).copied().unwrap_or(0)
}

/// Short connections whose first lines are written before the peer has
/// accepted (the race the per-socket decision exists for), both hops.
fn bursts_arrive_intact(pod: &Pod) -> u64 {
    let line = pod.netprobe(&["burst", "10.96.0.10:80", "4", "50", "40"], APP_UID);
    assert_eq!((field(&line, "ok"), field(&line, "misordered"), field(&line, "errors")), (200, 0, 0), "app -> proxy: {line}");
    let line = pod.netprobe(&["burst", "127.0.0.1:8080", "2", "25", "40"], PROXY_UID);
    assert_eq!((field(&line, "ok"), field(&line, "misordered"), field(&line, "errors")), (50, 0, 0), "proxy -> app: {line}");
    250
}

#[test]
fn local_hops_are_spliced_and_keep_every_byte_in_order() {
    let node = Node::start_with(MESH, &["--fast-path", "on"]).expect("node");
    let pod = Pod::create(&node).expect("pod");
    node.enroll(&pod, &[]).unwrap();

    let conns = bursts_arrive_intact(&pod);
    // 32 MiB each way, 64 KiB writes, read back and compared byte by byte.
    let line = pod.netprobe(&["stream", "10.96.0.10:80", "32"], APP_UID);
    assert!(line.contains("intact=true"), "{line}");

    // Both sockets of every connection joined, and the data went socket to
    // socket: at least every echoed line (the proxy's socket always finds
    // the app's, which was established first).
    let c = node.counters(&pod);
    assert!(c["fast_path_sockets"] >= 2 * (conns + 1), "{c:?}");
    assert!(c["fast_path_messages"] >= 200 * 40 + 50 * 40, "{c:?}");
    // The redirect itself is unchanged: the proxy still learns where the
    // app was going.
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

#[test]
fn a_socket_whose_first_message_finds_no_peer_stays_on_tcp() {
    let node = Node::start_with(MESH, &["--fast-path", "on"]).expect("node");
    let mut pod = Pod::create(&node).expect("pod");
    node.enroll(&pod, &[]).unwrap();
    // A listener in the pod's netns that is not a process of the pod: the
    // app's socket joins, its peer never does.
    pod.spawn_outside_cgroup(&["serve", "9090", "outsider"]).unwrap();
    let line = pod.netprobe(&["burst", "127.0.0.1:9090", "2", "20", "40"], APP_UID);
    assert_eq!((field(&line, "ok"), field(&line, "misordered"), field(&line, "errors")), (40, 0, 0), "{line}");
    let c = node.counters(&pod);
    assert_eq!(c["fast_path_sockets"], 40, "{c:?}");
    assert_eq!(c["fast_path_sockets_left"], 40, "each went TCP at its first message: {c:?}");
    assert_eq!(c["fast_path_messages"], 0, "{c:?}");
}

#[test]
fn off_unless_switched_on_for_the_agent_or_the_pod() {
    let node = Node::start(MESH).expect("node");
    let off = Pod::create(&node).unwrap();
    let on = Pod::create(&node).unwrap();
    node.enroll(&off, &[]).unwrap();
    node.enroll_with(&on, &[], &["--fast-path", "on"]).unwrap();
    bursts_arrive_intact(&off);
    bursts_arrive_intact(&on);
    assert_eq!(counter(&node, &off, "fast_path_sockets"), 0);
    assert_eq!(counter(&node, &off, "fast_path_messages"), 0);
    assert!(counter(&node, &on, "fast_path_messages") > 0);
}

#[test]
fn switching_off_moves_open_connections_to_tcp_without_losing_a_byte() {
    let mut node = Node::start_with(MESH, &["--fast-path", "on"]).expect("node");
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    // A long-lived connection: a ping every 100 ms, each echo checked.
    let hold = tests::scaled(Duration::from_secs(4)).as_secs().to_string();
    let mut held = pod.dial_cmd("10.96.0.10:80", APP_UID, &["--hold", &hold]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut greeting = String::new();
    out.read_line(&mut greeting).unwrap();
    assert_eq!(greeting.trim(), "out 10.96.0.10:80");
    std::thread::sleep(tests::scaled(Duration::from_millis(1000)));
    let spliced_before = counter(&node, &pod, "fast_path_messages");
    assert!(spliced_before > 0, "the held connection was not spliced");

    node.restart_agent_with(&["--fast-path", "off"]).unwrap();
    let mut rest = String::new();
    out.read_line(&mut rest).unwrap();
    let _ = held.wait();
    assert!(rest.starts_with("held ok"), "{rest}");
    // Both of its sockets left the fast path; new connections don't join.
    assert!(counter(&node, &pod, "fast_path_sockets_left") >= 2);
    let joined = counter(&node, &pod, "fast_path_sockets");
    bursts_arrive_intact(&pod);
    assert_eq!(counter(&node, &pod, "fast_path_sockets"), joined);
}

#[test]
fn removing_a_running_pod_loses_no_byte_already_handed_over() {
    let node = Node::start_with(MESH, &["--fast-path", "on"]).expect("node");
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    // The proxy greets at once; the app reads only after the pod is gone
    // from the agent, so the greeting waits in its socket meanwhile.
    let delay = tests::scaled(Duration::from_millis(1500)).as_millis().to_string();
    let dial = pod.dial_cmd("10.96.0.10:80", APP_UID, &["--delay-ms", &delay]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(tests::scaled(Duration::from_millis(500)));
    assert!(counter(&node, &pod, "fast_path_messages") >= 1, "the greeting was not spliced");
    let (ok, out) = node.cli(&["remove", &pod.name]);
    assert!(ok, "{out}");
    let out = dial.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "out 10.96.0.10:80");
}
