//! The local DNS proxy's rule (FSM v1.0 to v1.4.16 with
//! `spec.sidecar.localDNSProxy.enable`): a pod's UDP to 127.0.0.153:53 goes
//! to the sidecar's DNS proxy on 127.0.0.153:5300, and its answers come
//! back from 127.0.0.153:53. The kernel running fsm-init's DNAT rule is the
//! oracle (fsm-init's script, and the agent's iptables dataplane, which
//! writes that rule in FSM's place); the eBPF dataplane must answer every
//! query as it does: glibc's resolver, unconnected and connected sockets,
//! IPv4 and IPv4-mapped, the proxy's own query; TCP to 127.0.0.153:53
//! untouched. Switched on and off live with the MeshConfig.

use std::path::Path;

use tests::{APP_UID, Node, PROXY_UID, Pod};

const DNS_ON: &str = "spec:\n  sidecar:\n    localDNSProxy:\n      enable: true\n      primaryUpstreamDNSServerIPAddr: 10.96.0.10\n";
const DNS_OFF: &str = "spec:\n  sidecar:\n    localDNSProxy:\n      enable: false\n";
/// The sidecar's DNS proxy answers with this address...
const PROXY_ANSWER: &str = "10.53.0.1";
/// ... and a server at 127.0.0.153:53 itself (where the rule does not send
/// the query) with this one.
const DIRECT_ANSWER: &str = "10.53.0.2";

/// A pod with the DNS servers: the sidecar's proxy on 127.0.0.153:5300 (its
/// UID), and at 127.0.0.153:53 a UDP and a TCP server (root).
fn dns_pod(node: &Node) -> Pod {
    let mut pod = Pod::create(node).unwrap();
    pod.spawn_listener(&["dns-serve", "127.0.0.153:5300", PROXY_ANSWER], PROXY_UID).unwrap();
    pod.spawn_listener(&["dns-serve", "127.0.0.153:53", DIRECT_ANSWER], 0).unwrap();
    pod.spawn_listener(&["serve", "127.0.0.153:53", "dnstcp"], 0).unwrap();
    pod
}

/// glibc's resolver in the pod (as the app's UID), with a resolv.conf that
/// names 127.0.0.153 (what FSM gives a pod with the DNS proxy on):
/// `getent ahostsv4`'s first address, or its failure.
fn getent(pod: &Pod, resolv_conf: &Path) -> String {
    let out = pod
        .netprobe_cmd(&["resolve", resolv_conf.to_str().unwrap(), &APP_UID.to_string(), "cart.shop.svc.cluster.test"], 0)
        .output()
        .expect("netprobe resolve");
    match out.status.success() {
        true => String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned(),
        false => format!("failed ({}): {}", out.status, String::from_utf8_lossy(&out.stdout).trim()),
    }
}

/// What each way of asking gets, one line each.
fn queries(pod: &Pod, resolv_conf: &Path) -> Vec<String> {
    let q = |to: &str, uid: u32, connected: bool| {
        let mut args = vec!["dns-query", to, "cart.shop.svc.cluster.test"];
        if connected {
            args.push("--connected");
        }
        format!("uid {uid} {to}{}: {}", if connected { " connected" } else { "" }, pod.netprobe(&args, uid).trim())
    };
    vec![
        format!("getent: {}", getent(pod, resolv_conf)),
        q("127.0.0.153:53", APP_UID, false),
        q("127.0.0.153:53", APP_UID, true),
        q("[::ffff:127.0.0.153]:53", APP_UID, false),
        q("[::ffff:127.0.0.153]:53", APP_UID, true),
        q("127.0.0.153:53", PROXY_UID, false),
        q("127.0.0.153:5300", APP_UID, false),
        format!("tcp: {}", pod.dial("127.0.0.153:53", APP_UID)),
    ]
}

#[test]
fn dns_for_127_0_0_153_goes_to_the_sidecars_proxy_on_every_dataplane_as_fsm_inits_rule_sends_it() {
    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.153\noptions timeout:1 attempts:2\n").unwrap();
    let node = Node::start(DNS_ON).unwrap();
    let fsm_init = dns_pod(&node);
    tests::run_fsm_init(&fsm_init.ns, &fsm_init.ip, &node.mesh_config, &[], tests::Backend::Nft, false).unwrap();
    let iptables = dns_pod(&node);
    node.enroll_with(&iptables, &[], &["--dataplane", "iptables"]).unwrap();
    let ebpf = dns_pod(&node);
    node.enroll_with(&ebpf, &[], &["--dataplane", "ebpf"]).unwrap();

    let want = queries(&fsm_init, &resolv_conf);
    // What fsm-init's rule gives: the proxy answers, seen from port 53.
    assert_eq!(
        want,
        [
            format!("getent: {PROXY_ANSWER}"),
            format!("uid {APP_UID} 127.0.0.153:53: answer {PROXY_ANSWER} from 127.0.0.153:53"),
            format!("uid {APP_UID} 127.0.0.153:53 connected: answer {PROXY_ANSWER} from 127.0.0.153:53 peer 127.0.0.153:53"),
            format!("uid {APP_UID} [::ffff:127.0.0.153]:53: answer {PROXY_ANSWER} from [::ffff:127.0.0.153]:53"),
            format!(
                "uid {APP_UID} [::ffff:127.0.0.153]:53 connected: answer {PROXY_ANSWER} from [::ffff:127.0.0.153]:53 peer [::ffff:127.0.0.153]:53"
            ),
            format!("uid {PROXY_UID} 127.0.0.153:53: answer {PROXY_ANSWER} from 127.0.0.153:53"),
            format!("uid {APP_UID} 127.0.0.153:5300: answer {PROXY_ANSWER} from 127.0.0.153:5300"),
            "tcp: dnstcp 127.0.0.153:53".to_owned(),
        ]
    );
    assert_eq!(queries(&iptables, &resolv_conf), want, "the iptables dataplane");
    assert_eq!(queries(&ebpf, &resolv_conf), want, "the eBPF dataplane");
    let counters = node.counters(&ebpf);
    assert!(counters["dns_redirected"] >= 6 && counters["dns_replies"] >= 6, "{counters:?}");
    let explain = |to: &str| node.explain(&ebpf, &["--udp", "--to", to]);
    for to in ["127.0.0.153:53", "[::ffff:127.0.0.153]:53"] {
        let e = explain(to);
        assert_eq!(e["config"]["verdict"], "redirect-dns-proxy", "{e:#}");
        assert_eq!(e["agrees"], true, "{e:#}");
    }
    assert_eq!(explain("127.0.0.153:5300")["config"]["verdict"], "direct");
    for (pod, says) in [(&ebpf, "local DNS proxy on"), (&iptables, "every chain holds the expected rules")] {
        let (ok, out) = node.cli(&["diagnose", &pod.name]);
        assert!(ok && out.contains(says), "{out}");
    }

    // Off: every query goes where it was sent, on both dataplanes.
    node.set_mesh_config(DNS_OFF);
    let off = queries(&iptables, &resolv_conf);
    assert_eq!(off[0], format!("getent: {DIRECT_ANSWER}"));
    assert_eq!(off[1], format!("uid {APP_UID} 127.0.0.153:53: answer {DIRECT_ANSWER} from 127.0.0.153:53"));
    assert_eq!(queries(&ebpf, &resolv_conf), off, "the eBPF dataplane, the proxy off");
    assert_eq!(explain("127.0.0.153:53")["config"]["verdict"], "direct");
    let (ok, out) = node.cli(&["diagnose", &ebpf.name]);
    assert!(ok && out.contains("local DNS proxy off"), "{out}");
    // And on again.
    node.set_mesh_config(DNS_ON);
    assert_eq!(queries(&ebpf, &resolv_conf), want);
    assert_eq!(queries(&iptables, &resolv_conf), want);
}
