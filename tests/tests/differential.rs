//! One table of scenarios, run against both dataplanes in real network
//! namespaces: the eBPF programs and fsm-init's iptables rules (the kernel
//! running them is the oracle) must give the same verdict for every dial —
//! redirected to 15001, to 15003, or direct — and the proxy must see the
//! same original destination. Any disagreement is a bug in one of them.
//! Grow this table with every feature.

use tests::{APP_UID as APP, Node, PROXY_UID as PROXY, Pod};

struct Scenario {
    name: &'static str,
    mesh: &'static str,
    annotations: &'static [&'static str],
    /// (uid, destination); `POD` stands for the pod's own IP.
    dials: &'static [(u32, &'static str)],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "FSM defaults: who dials what",
        mesh: "kind: MeshConfig\nspec: {}\n",
        annotations: &[],
        dials: &[
            (APP, "10.96.0.10:80"),
            (PROXY, "10.96.0.10:80"),
            (APP, "POD:8080"),
            (PROXY, "POD:8080"),
            (APP, "127.0.0.1:8080"),
            (PROXY, "127.0.0.1:8080"),
            (APP, "127.0.0.2:8080"),
            (PROXY, "127.0.0.2:8080"),
            (APP, "0.0.0.0:8080"),
            (PROXY, "0.0.0.0:8080"),
            (0, "10.96.0.10:6379"),
        ],
    },
    Scenario {
        name: "excluded CIDRs from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.97.0.0/16]\n",
        annotations: &["flomesh.io/outbound-ip-range-exclusion-list=10.98.0.10/32"],
        dials: &[(APP, "10.97.0.10:80"), (APP, "10.98.0.10:80"), (APP, "10.96.0.10:80"), (PROXY, "10.96.0.10:80")],
    },
    Scenario {
        name: "excluded ports from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundPortExclusionList: [6379]\n",
        annotations: &["flomesh.io/outbound-port-exclusion-list=7070"],
        dials: &[(APP, "10.96.0.10:6379"), (APP, "10.96.0.10:7070"), (APP, "10.96.0.10:8080"), (APP, "POD:8080")],
    },
    Scenario {
        name: "inclusion lists from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/16]\n",
        annotations: &["flomesh.io/outbound-ip-range-inclusion-list=10.98.0.0/16"],
        dials: &[
            (APP, "10.96.0.10:80"),
            (APP, "10.97.0.10:80"),
            (APP, "10.98.0.10:80"),
            (PROXY, "10.96.0.10:80"),
            (PROXY, "POD:8080"),
            (APP, "POD:8080"),
        ],
    },
    Scenario {
        name: "exclusions win over the inclusion list",
        mesh: "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/12]\n    outboundIPRangeExclusionList: [10.96.0.11/32]\n    outboundPortExclusionList: [7070]\n",
        annotations: &[],
        dials: &[(APP, "10.96.0.11:80"), (APP, "10.96.0.10:7070"), (APP, "10.96.0.10:80"), (APP, "10.98.0.10:80")],
    },
];

/// The reply with the pod's own address written as POD.
fn dial(pod: &Pod, uid: u32, to: &str) -> String {
    pod.dial(&to.replace("POD", &pod.ip), uid).replace(&pod.ip, "POD")
}

#[test]
fn both_dataplanes_agree_on_every_scenario() {
    let mut seen = std::collections::BTreeSet::new();
    let mut table = String::new();
    for s in SCENARIOS {
        let node = Node::start(s.mesh).unwrap();
        let ipt = Pod::create(&node).unwrap();
        let bpf = Pod::create(&node).unwrap();
        node.enroll_with(&ipt, s.annotations, &["--dataplane", "iptables"]).unwrap();
        node.enroll_with(&bpf, s.annotations, &["--dataplane", "ebpf"]).unwrap();
        for (uid, to) in s.dials {
            let (want, got) = (dial(&ipt, *uid, to), dial(&bpf, *uid, to));
            table.push_str(&format!("{:<50} uid {uid:<5} {to:<16} iptables: {want:<24} ebpf: {got}\n", s.name));
            assert!(!want.starts_with("error"), "{}: uid {uid} -> {to}: iptables: {want}", s.name);
            assert_eq!(got, want, "{}: uid {uid} -> {to}: eBPF disagrees with iptables", s.name);
            seen.insert(want.split(' ').next().unwrap().to_owned());
        }
    }
    println!("{table}");
    // The table exercises every verdict: to 15001, to 15003, direct (to a
    // service or to the pod's own app).
    for verdict in ["out", "in", "direct", "app"] {
        assert!(seen.contains(verdict), "no scenario ends {verdict}: {seen:?}\n{table}");
    }
}
