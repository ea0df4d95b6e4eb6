//! One table of scenarios, run against both dataplanes in real network
//! namespaces: the eBPF programs and fsm-init's iptables rules (the kernel
//! running them is the oracle; ip6tables for the IPv6 of dual-stack pods)
//! must give the same verdict for every dial — redirected to 15001, to
//! 15003, or direct — and the proxy must see the same original destination.
//! Any disagreement is a bug in one of them. Grow this table with every
//! feature.
//!
//! Every IPv4 dial of a process of the pod is dialled a second time from an
//! IPv6 socket, to the same address IPv4-mapped (`[::ffff:a.b.c.d]`): that
//! is an IPv4 connection, and must end exactly where the IPv4 dial did, on
//! both dataplanes.
//!
//! The table runs twice: with netprobe's proxy, which answers each
//! connection with the `SO_ORIGINAL_DST` it read, and with an unmodified
//! Envoy as the sidecar, where a dial's outcome is what answered it plus
//! Envoy's own record of the connection (which listener, the original
//! destination its `original_dst` filter read, the upstream it dialled).

use tests::{APP_UID, Node, PROXY_UID, Pod, sidecar::Envoy};

/// Who dials: a process of the pod (by UID) or a client on another host.
#[derive(Clone, Copy, Debug)]
enum From {
    Pod(u32),
    Node,
}

const APP: From = From::Pod(APP_UID);
const PROXY: From = From::Pod(PROXY_UID);
const ROOT: From = From::Pod(0);
const NODE: From = From::Node;

/// The pods of a scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pods {
    /// IPv4 only, listeners on 0.0.0.0 (FSM's setting today).
    V4,
    /// Dual-stack, listeners on `[::]`, enrolled with these arguments.
    DualStack(&'static [&'static str]),
}

struct Scenario {
    name: &'static str,
    mesh: &'static str,
    annotations: &'static [&'static str],
    pods: Pods,
    /// Give the pods a second interface, net1.
    net1: bool,
    /// (who, destination). Placeholders: `{POD}`, `{POD6}` (the pod's own
    /// addresses), `{NET1}`, `{NET16}` (its addresses on net1),
    /// `{NET1PEER}`, `{NET1PEER6}` (the node's end of net1), `{LLPEER}` (the
    /// node's link-local address on eth0, with its scope).
    dials: &'static [(From, &'static str)],
}

const DEFAULTS: &str = "kind: MeshConfig\nspec: {}\n";
const IPV6_AUTO: Pods = Pods::DualStack(&[]);
const IPV6_OFF: Pods = Pods::DualStack(&["--ipv6", "off"]);

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "FSM defaults: who dials what",
        mesh: DEFAULTS,
        annotations: &[],
        pods: Pods::V4,
        dials: &[
            (APP, "10.96.0.10:80"),
            (PROXY, "10.96.0.10:80"),
            (APP, "{POD}:8080"),
            (PROXY, "{POD}:8080"),
            (APP, "127.0.0.1:8080"),
            (PROXY, "127.0.0.1:8080"),
            (APP, "127.0.0.2:8080"),
            (PROXY, "127.0.0.2:8080"),
            (APP, "0.0.0.0:8080"),
            (PROXY, "0.0.0.0:8080"),
            (ROOT, "10.96.0.10:6379"),
        ],
        net1: false,
    },
    Scenario {
        name: "inbound from another host",
        mesh: DEFAULTS,
        annotations: &[],
        pods: Pods::V4,
        dials: &[
            (NODE, "{POD}:8080"),
            (NODE, "{POD}:9999"),
            (NODE, "{POD}:15001"),
            (NODE, "{POD}:15003"),
            (NODE, "{POD}:15010"),
            (NODE, "{POD}:15901"),
        ],
        net1: false,
    },
    Scenario {
        name: "inbound port exclusions, MeshConfig and annotation",
        mesh: "spec:\n  traffic:\n    inboundPortExclusionList: [8080]\n",
        // An excluded 15003: the connection reaches the proxy un-redirected,
        // and conntrack's SO_ORIGINAL_DST answers the address it was
        // dialled at.
        annotations: &["flomesh.io/inbound-port-exclusion-list=9999,15010,15003"],
        pods: Pods::V4,
        dials: &[
            (NODE, "{POD}:8080"),
            (NODE, "{POD}:9999"),
            (NODE, "{POD}:15010"),
            (NODE, "{POD}:15003"),
            (NODE, "{POD}:8081"),
            (APP, "10.96.0.10:8080"),
        ],
        net1: false,
    },
    Scenario {
        name: "excluded CIDRs from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.97.0.0/16]\n",
        annotations: &["flomesh.io/outbound-ip-range-exclusion-list=10.98.0.10/32"],
        pods: Pods::V4,
        dials: &[(APP, "10.97.0.10:80"), (APP, "10.98.0.10:80"), (APP, "10.96.0.10:80"), (PROXY, "10.96.0.10:80")],
        net1: false,
    },
    Scenario {
        name: "excluded ports from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundPortExclusionList: [6379]\n",
        annotations: &["flomesh.io/outbound-port-exclusion-list=7070"],
        pods: Pods::V4,
        dials: &[(APP, "10.96.0.10:6379"), (APP, "10.96.0.10:7070"), (APP, "10.96.0.10:8080"), (APP, "{POD}:8080")],
        net1: false,
    },
    Scenario {
        name: "inclusion lists from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/16]\n",
        annotations: &["flomesh.io/outbound-ip-range-inclusion-list=10.98.0.0/16"],
        pods: Pods::V4,
        dials: &[
            (APP, "10.96.0.10:80"),
            (APP, "10.97.0.10:80"),
            (APP, "10.98.0.10:80"),
            (PROXY, "10.96.0.10:80"),
            (PROXY, "{POD}:8080"),
            (APP, "{POD}:8080"),
        ],
        net1: false,
    },
    Scenario {
        name: "exclusions win over the inclusion list",
        mesh: "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/12]\n    outboundIPRangeExclusionList: [10.96.0.11/32]\n    outboundPortExclusionList: [7070]\n",
        annotations: &[],
        pods: Pods::V4,
        dials: &[(APP, "10.96.0.11:80"), (APP, "10.96.0.10:7070"), (APP, "10.96.0.10:80"), (APP, "10.98.0.10:80")],
        net1: false,
    },
    Scenario {
        name: "dual-stack, FSM defaults: who dials what",
        mesh: DEFAULTS,
        annotations: &[],
        pods: IPV6_AUTO,
        dials: &[
            (APP, "[fd00:96::10]:80"),
            (PROXY, "[fd00:96::10]:80"),
            (ROOT, "[fd00:96::10]:6379"),
            (APP, "[{POD6}]:8080"),
            (PROXY, "[{POD6}]:8080"),
            (APP, "[::1]:8080"),
            (PROXY, "[::1]:8080"),
            (APP, "[::]:8080"),
            (PROXY, "[::]:8080"),
            (APP, "[{LLPEER}]:80"),
            (PROXY, "[{LLPEER}]:80"),
            // IPv4 through listeners on [::]: their accepted sockets hold
            // IPv4-mapped addresses.
            (APP, "10.96.0.10:80"),
            (PROXY, "{POD}:8080"),
            (APP, "127.0.0.1:8080"),
        ],
        net1: false,
    },
    Scenario {
        name: "dual-stack, inbound from another host",
        mesh: "spec:\n  traffic:\n    inboundPortExclusionList: [8080]\n",
        annotations: &["flomesh.io/inbound-port-exclusion-list=8081"],
        pods: IPV6_AUTO,
        dials: &[
            (NODE, "[{POD6}]:8080"),
            (NODE, "[{POD6}]:9999"),
            (NODE, "[{POD6}]:15010"),
            (NODE, "[{POD6}]:8081"),
            (NODE, "[{POD6}]:15003"),
            (NODE, "{POD}:8080"),
            (NODE, "{POD}:9999"),
        ],
        net1: false,
    },
    Scenario {
        name: "dual-stack, IPv6 exclusions from the MeshConfig and the annotation",
        mesh: "spec:\n  traffic:\n    outboundIPRangeExclusionList: [fd00:97::/32, 10.97.0.0/16]\n    outboundPortExclusionList: [6379]\n",
        annotations: &["flomesh.io/outbound-ip-range-exclusion-list=fd00:98::10/128", "flomesh.io/outbound-port-exclusion-list=7070"],
        pods: IPV6_AUTO,
        dials: &[
            (APP, "[fd00:97::10]:80"),
            (APP, "[fd00:98::10]:80"),
            (APP, "[fd00:96::10]:80"),
            (APP, "[fd00:96::10]:6379"),
            (APP, "[fd00:96::10]:7070"),
            (APP, "10.97.0.10:80"),
            (APP, "10.98.0.10:80"),
        ],
        net1: false,
    },
    Scenario {
        name: "dual-stack, an inclusion list limits both families",
        mesh: "spec:\n  traffic:\n    outboundIPRangeInclusionList: [fd00:96::/32]\n",
        annotations: &["flomesh.io/outbound-ip-range-inclusion-list=10.98.0.0/16"],
        pods: IPV6_AUTO,
        dials: &[
            (APP, "[fd00:96::10]:80"),
            (APP, "[fd00:97::10]:80"),
            (APP, "10.96.0.10:80"),
            (APP, "10.98.0.10:80"),
            (PROXY, "[{POD6}]:8080"),
        ],
        net1: false,
    },
    Scenario {
        name: "dual-stack pods with --ipv6 off: IPv4 only, as fsm-init",
        mesh: DEFAULTS,
        annotations: &[],
        pods: IPV6_OFF,
        dials: &[
            (APP, "[fd00:96::10]:80"),
            (PROXY, "[{POD6}]:8080"),
            (APP, "[::1]:8080"),
            (NODE, "[{POD6}]:8080"),
            (APP, "10.96.0.10:80"),
            (NODE, "{POD}:8080"),
        ],
        net1: false,
    },
    Scenario {
        name: "localProxyMode PodIP: the proxy's connections to 127.0.0.1 go to the pod IP",
        mesh: "spec:\n  sidecar:\n    localProxyMode: PodIP\n",
        annotations: &[],
        pods: Pods::V4,
        dials: &[
            (PROXY, "127.0.0.1:8080"),
            (PROXY, "0.0.0.0:8080"),
            (PROXY, "127.0.0.2:8080"),
            (APP, "127.0.0.1:8080"),
            (PROXY, "{POD}:8080"),
            (PROXY, "10.96.0.10:80"),
            (APP, "10.96.0.10:80"),
        ],
        net1: false,
    },
    Scenario {
        name: "dual-stack, localProxyMode PodIP: ::1 too, where IPv6 is intercepted",
        mesh: "spec:\n  sidecar:\n    localProxyMode: PodIP\n",
        annotations: &[],
        pods: IPV6_AUTO,
        dials: &[(PROXY, "[::1]:8080"), (PROXY, "127.0.0.1:8080"), (APP, "[::1]:8080"), (PROXY, "[{POD6}]:8080")],
        net1: false,
    },
    Scenario {
        name: "dual-stack, localProxyMode PodIP with --ipv6 off: ::1 stays",
        mesh: "spec:\n  sidecar:\n    localProxyMode: PodIP\n",
        annotations: &[],
        pods: IPV6_OFF,
        dials: &[(PROXY, "[::1]:8080"), (PROXY, "127.0.0.1:8080")],
        net1: false,
    },
];

/// Scenarios with a second interface; the eBPF side needs the interface of
/// arrival from the kernel.
const INTERFACE_SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "an excluded interface, both directions",
        mesh: "spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n",
        annotations: &[],
        pods: Pods::V4,
        dials: &[
            (NODE, "{NET1}:8080"),
            (NODE, "{POD}:8080"),
            (APP, "{NET1PEER}:80"),
            (PROXY, "{NET1PEER}:80"),
            (APP, "10.96.0.10:80"),
            (PROXY, "{NET1}:8080"),
            (APP, "{NET1}:8080"),
        ],
        net1: true,
    },
    Scenario {
        name: "an interface prefix (net+, iptables' wildcard), both directions",
        mesh: "spec:\n  traffic:\n    networkInterfaceExclusionList: [net+]\n",
        annotations: &[],
        pods: Pods::V4,
        dials: &[(NODE, "{NET1}:8080"), (NODE, "{POD}:8080"), (APP, "{NET1PEER}:80"), (APP, "10.96.0.10:80")],
        net1: true,
    },
    Scenario {
        name: "a second interface that is not excluded",
        mesh: DEFAULTS,
        annotations: &[],
        pods: Pods::V4,
        dials: &[(NODE, "{NET1}:8080"), (APP, "{NET1PEER}:80")],
        net1: true,
    },
    Scenario {
        name: "dual-stack, an excluded interface, both directions",
        mesh: "spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n",
        annotations: &[],
        pods: IPV6_AUTO,
        dials: &[
            (NODE, "[{NET16}]:8080"),
            (NODE, "[{POD6}]:8080"),
            (APP, "[{NET1PEER6}]:80"),
            (APP, "[fd00:96::10]:80"),
            (PROXY, "[{NET16}]:8080"),
            (APP, "{NET1PEER}:80"),
        ],
        net1: true,
    },
];

/// Who is the pods' sidecar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sidecar {
    Netprobe,
    Envoy,
}

/// A scenario's pod: the pod, and its placeholders' values.
struct TablePod {
    pod: Pod,
    envoy: Option<Envoy>,
    names: Vec<(String, &'static str)>,
}

impl TablePod {
    fn new(node: &Node, s: &Scenario, dataplane: &str, sidecar: Sidecar) -> Self {
        let pod = Self::unenrolled(node, s, sidecar);
        let mut args = vec!["--dataplane", dataplane];
        if let Pods::DualStack(extra) = s.pods {
            args.extend_from_slice(extra);
        }
        node.enroll_with(&pod.pod, s.annotations, &args).unwrap();
        pod
    }

    /// The scenario's pod, its processes started, not enrolled.
    fn unenrolled(node: &Node, s: &Scenario, sidecar: Sidecar) -> Self {
        let dual_stack = s.pods != Pods::V4;
        let (pod, envoy) = match sidecar {
            Sidecar::Netprobe if dual_stack => (Pod::dual_stack(node).unwrap(), None),
            Sidecar::Netprobe => (Pod::create(node).unwrap(), None),
            Sidecar::Envoy => {
                let mut pod = Pod::wired(node, dual_stack).unwrap();
                pod.start_app("serve", PROXY_UID).unwrap();
                let envoy = Envoy::start(&mut pod).unwrap();
                (pod, Some(envoy))
            }
        };
        let mut names = vec![(pod.ip.clone(), "{POD}")];
        if let Some(ip6) = &pod.ip6 {
            names.push((ip6.clone(), "{POD6}"));
            names.push((pod.link_local_peer(), "{LLPEER}"));
        }
        if s.net1 {
            names.push((pod.add_net1(node).unwrap(), "{NET1}"));
            names.push((pod.net1_peer(), "{NET1PEER}"));
            if pod.ip6.is_some() {
                names.push((pod.net1_ip6(), "{NET16}"));
                names.push((pod.net1_peer6(), "{NET1PEER6}"));
            }
        }
        TablePod { pod, envoy, names }
    }

    /// The destination with the pod's own values.
    fn to(&self, to: &str) -> String {
        self.names.iter().fold(to.to_owned(), |to, (addr, name)| to.replace(name, addr))
    }

    /// The reply (and Envoy's records of the connection), with the pod's
    /// own addresses written as in the table.
    fn dial(&mut self, node: &Node, from: From, to: &str) -> String {
        let mut reply = match from {
            From::Pod(uid) => self.pod.dial(to, uid),
            From::Node => Pod::dial_from(&node.ns, to),
        };
        if let Some(envoy) = &mut self.envoy {
            let records = envoy.new_records();
            reply = format!("{reply} | envoy: {}", if records.is_empty() { "-".into() } else { records.join(", ") });
        }
        self.names.iter().fold(reply, |r, (addr, name)| r.replace(addr.as_str(), name))
    }
}

/// The same destination IPv4-mapped, for an IPv4 one.
fn mapped(to: &str) -> Option<String> {
    match to.parse::<std::net::SocketAddr>().ok()? {
        std::net::SocketAddr::V4(a) => Some(format!("[::ffff:{}]:{}", a.ip(), a.port())),
        std::net::SocketAddr::V6(_) => None,
    }
}

/// The scenarios of IPv4 pods, or of dual-stack ones.
fn scenarios(dual_stack: bool) -> Vec<&'static Scenario> {
    SCENARIOS.iter().filter(|s| (s.pods != Pods::V4) == dual_stack).collect()
}

#[test]
fn both_dataplanes_agree_on_every_ipv4_scenario() {
    let seen = run_table(&scenarios(false), Sidecar::Netprobe);
    // The table exercises every verdict: to 15001, to 15003, direct (to a
    // service, to the pod's own app, to the proxy's admin port).
    for verdict in ["out", "in", "direct", "app", "admin"] {
        assert!(seen.contains(verdict), "no scenario ends {verdict}: {seen:?}");
    }
}

#[test]
fn both_dataplanes_agree_on_every_dual_stack_scenario() {
    let seen = run_table(&scenarios(true), Sidecar::Netprobe);
    for verdict in ["out", "in", "direct", "app", "admin"] {
        assert!(seen.contains(verdict), "no scenario ends {verdict}: {seen:?}");
    }
}

#[test]
fn both_dataplanes_agree_on_every_scenario_with_envoy_as_the_sidecar() {
    if !tests::requires(tests::Feature::NativeSpeed) {
        return;
    }
    let seen = run_table(&SCENARIOS.iter().collect::<Vec<_>>(), Sidecar::Envoy);
    // Envoy handled connections on both listeners: its records say so.
    for record in ["envoy: out ", "envoy: in "] {
        assert!(seen.iter().any(|r| r.contains(record)), "no dial went through Envoy's {record:?}: {seen:?}");
    }
}

#[test]
fn both_dataplanes_agree_with_a_second_interface() {
    if !tests::requires(tests::Feature::SkLookupIngressIfindex) {
        return;
    }
    let seen = run_table(&INTERFACE_SCENARIOS.iter().collect::<Vec<_>>(), Sidecar::Netprobe);
    for verdict in ["out", "in", "direct", "app"] {
        assert!(seen.contains(verdict), "no scenario ends {verdict}: {seen:?}");
    }
}

/// Runs scenarios on both dataplanes; returns the kinds of replies seen
/// (their first word; with Envoy, whole replies).
fn run_table(scenarios: &[&Scenario], sidecar: Sidecar) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut table = String::new();
    for s in scenarios {
        let node = Node::start(s.mesh).unwrap();
        let mut ipt = TablePod::new(&node, s, "iptables", sidecar);
        let mut bpf = TablePod::new(&node, s, "ebpf", sidecar);
        for (from, to) in s.dials {
            let who = format!("{from:?}");
            let mut row = |to: &str, want: &str, got: &str| {
                table.push_str(&format!("{:<58} {who:<11} {to:<24} iptables: {want:<30} ebpf: {got}\n", s.name));
            };
            let want = ipt.dial(&node, *from, &ipt.to(to));
            let got = bpf.dial(&node, *from, &bpf.to(to));
            row(to, &want, &got);
            // Refused (nothing listens there) is a verdict too; anything else
            // is a broken test bed.
            assert!(!want.starts_with("error") || want.contains("Connection refused"), "{}: {who} -> {to}: iptables: {want}", s.name);
            assert_eq!(got, want, "{}: {who} -> {to}: eBPF disagrees with iptables", s.name);
            seen.insert(match sidecar {
                Sidecar::Netprobe => want.split(' ').next().unwrap().to_owned(),
                Sidecar::Envoy => want.clone(),
            });
            check_explain(&node, s, [&ipt, &bpf], *from, to, &want, sidecar);
            // The same destination IPv4-mapped, from an IPv6 socket: an IPv4
            // connection, which must end where the IPv4 dial did.
            if let (From::Pod(_), Some(to_mapped)) = (from, mapped(&ipt.to(to))) {
                let want_mapped = ipt.dial(&node, *from, &to_mapped);
                let got_mapped = bpf.dial(&node, *from, &mapped(&bpf.to(to)).unwrap());
                row(&format!("(mapped) {to}"), &want_mapped, &got_mapped);
                assert_eq!(want_mapped, want, "{}: {who} -> {to_mapped}: iptables treats a mapped address unlike IPv4", s.name);
                assert_eq!(got_mapped, want, "{}: {who} -> {to_mapped}: eBPF treats a mapped address unlike IPv4", s.name);
                let to6 = format!("[::ffff:{}]", to.rsplit_once(':').unwrap().0);
                check_explain(&node, s, [&ipt, &bpf], *from, &format!("{to6}:{}", to.rsplit_once(':').unwrap().1), &want, sidecar);
            }
        }
    }
    println!("{table}");
    seen
}

/// explain runs the same decision: it must name the verdict seen, and for
/// the eBPF pod the kernel's maps must agree with it.
fn check_explain(node: &Node, s: &Scenario, pods: [&TablePod; 2], from: From, to: &str, reply: &str, sidecar: Sidecar) {
    // Netprobe's proxy tags its answer; Envoy records which listener.
    let verdict = match sidecar {
        Sidecar::Netprobe => reply.split(' ').next().unwrap(),
        Sidecar::Envoy => reply.split("envoy: ").nth(1).and_then(|r| r.split(' ').next()).unwrap(),
    };
    let expected = match verdict {
        "out" => "redirect-outbound",
        "in" => "redirect-inbound",
        _ => "direct",
    };
    for p in pods {
        let to_addr = p.to(to);
        let e = match from {
            From::Pod(uid) => node.explain(&p.pod, &["--to", &to_addr, "--uid", &uid.to_string()]),
            From::Node => {
                let port = to_addr.rsplit(':').next().unwrap().to_owned();
                let iface = if to.starts_with("{NET1") || to.starts_with("[{NET1") { "net1" } else { "eth0" };
                let mut args = vec!["--inbound", "--port", &port, "--iface", iface];
                if to_addr.starts_with('[') {
                    args.push("--ipv6");
                }
                node.explain(&p.pod, &args)
            }
        };
        // A connection to the inbound listener's own port lands on the proxy
        // with the address it was dialled at, steered there or not: the
        // reply can't tell which, the kernel's agreement still must hold.
        let either = expected == "redirect-inbound" && to.ends_with(":15003");
        if !(either && e["config"]["verdict"] == "direct") {
            assert_eq!(e["config"]["verdict"], expected, "{}: {from:?} -> {to}: explain {e:#}", s.name);
        }
        assert_eq!(e["agrees"], true, "{}: {from:?} -> {to}: the kernel disagrees: {e:#}", s.name);
    }
}

/// How the agent meets a pod FSM gave fsm-init (its default in every
/// release), in the orders a node brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Beside {
    /// fsm-init's rules and no agent: the oracle.
    Alone,
    /// As at a CNI ADD, before the init containers: enrolled with its
    /// manifest (which has fsm-init), then fsm-init runs.
    ManifestFirst,
    /// As when the agent comes to a running pod without its spec:
    /// fsm-init ran (legacy iptables, as some images have), then enrolled.
    RulesFirst,
    /// Enrolled by hand without its spec, as eBPF, then fsm-init runs: the
    /// agent's refresh finds fsm-init's rules and steps aside.
    AgentFirst,
}

/// A pod FSM gave the `sidecar` and `fsm-init` (a manifest as kubectl
/// prints it).
const FSM_INIT_MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cart\n  labels: {fsm-proxy-uuid: 9c1}\nspec:\n  initContainers:\n  - name: fsm-init\n    command: [/bin/sh]\n    args: [-c, \"iptables-restore --noflush <<EOF ...\"]\n  containers:\n  - {name: app}\n  - {name: sidecar}\n";

fn beside_fsm_init(node: &Node, s: &Scenario, beside: Beside, manifest: &std::path::Path) -> TablePod {
    let p = TablePod::unenrolled(node, s, Sidecar::Netprobe);
    let fsm_init = |backend| tests::run_fsm_init(&p.pod.ns, &p.pod.ip, &node.mesh_config, s.annotations, backend, false).unwrap();
    let mut args: Vec<&str> = match s.pods {
        Pods::DualStack(extra) => extra.to_vec(),
        Pods::V4 => vec![],
    };
    match beside {
        Beside::Alone => {
            fsm_init(tests::Backend::Nft);
            return p;
        }
        Beside::ManifestFirst => {
            args.extend(["--pod-manifest", manifest.to_str().unwrap()]);
            node.enroll_with(&p.pod, s.annotations, &args).unwrap();
            fsm_init(tests::Backend::Nft);
        }
        Beside::RulesFirst => {
            fsm_init(tests::Backend::Legacy);
            node.enroll_with(&p.pod, s.annotations, &args).unwrap();
        }
        Beside::AgentFirst => {
            args.extend(["--dataplane", "ebpf"]);
            node.enroll_with(&p.pod, s.annotations, &args).unwrap();
            assert_eq!(dataplane(node, &p.pod), "ebpf");
            fsm_init(tests::Backend::Nft);
        }
    }
    // `status` says fsm-init serves it, and sees its rules.
    let served = || dataplane(node, &p.pod) == "fsm-init" && pod_status(node, &p.pod)["attached"] == true;
    assert!(tests::eventually(std::time::Duration::from_secs(15), served), "{beside:?}: {}", node.status());
    p
}

fn pod_status(node: &Node, pod: &tests::Pod) -> serde_json::Value {
    node.status()["pods"].as_array().unwrap().iter().find(|p| p["name"] == pod.name.as_str()).cloned().unwrap_or_default()
}

fn dataplane(node: &Node, pod: &tests::Pod) -> String {
    pod_status(node, pod)["dataplane"].as_str().unwrap_or_default().to_owned()
}

/// Under emulation (the VM matrix) it is skipped: pods are slow to make
/// there, and its kernel's part (fsm-init's rules found in either backend,
/// the getsockopt answer beside NAT) has tests of its own that run there
/// (`iptables.rs`, `inbound.rs`).
#[test]
fn a_pod_fsm_gave_fsm_init_behaves_as_fsm_init_alone_whether_and_whenever_the_agent_enrolls_it() {
    if !tests::requires(tests::Feature::NativeSpeed) {
        return;
    }
    let manifest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(manifest.path(), FSM_INIT_MANIFEST).unwrap();
    // Where the kernel sees the interface of arrival (eBPF pods with
    // interface exclusions need it; fsm-init's do not, but the agent's
    // refresh-time order enrolls as eBPF).
    let interfaces = tests::Feature::SkLookupIngressIfindex.available();
    let mut table = String::new();
    for s in SCENARIOS.iter().chain(INTERFACE_SCENARIOS.iter().filter(|_| interfaces)) {
        let node = Node::start_with(s.mesh, &["--refresh-interval", "1"]).unwrap();
        let mut pods: Vec<(Beside, TablePod)> = [Beside::Alone, Beside::ManifestFirst, Beside::RulesFirst, Beside::AgentFirst]
            .map(|b| (b, beside_fsm_init(&node, s, b, manifest.path())))
            .into();
        for (from, to) in s.dials {
            let mut dests = vec![to.to_string()];
            if let (From::Pod(_), Some(_)) = (from, mapped(&pods[0].1.to(to))) {
                dests.push(format!("(mapped) {to}"));
            }
            for dest in dests {
                let dial = |p: &mut TablePod| match dest.strip_prefix("(mapped) ") {
                    Some(to) => p.dial(&node, *from, &mapped(&p.to(to)).unwrap()),
                    None => p.dial(&node, *from, &p.to(&dest)),
                };
                let (alone, beside) = pods.split_at_mut(1);
                let want = dial(&mut alone[0].1);
                assert!(
                    !want.starts_with("error") || want.contains("Connection refused"),
                    "{}: {from:?} -> {dest}: fsm-init: {want}",
                    s.name
                );
                for (b, p) in beside.iter_mut() {
                    let got = dial(p);
                    table.push_str(&format!("{:<58} {from:<11?} {dest:<26} fsm-init: {want:<30} {b:?}: {got}\n", s.name));
                    assert_eq!(got, want, "{}: {from:?} -> {dest}: {b:?} differs from fsm-init alone", s.name);
                }
            }
        }
        for (b, p) in &pods[1..] {
            let (ok, out) = node.cli(&["diagnose", &p.pod.name]);
            assert!(ok && out.contains("served by its own fsm-init"), "{b:?}: {out}");
        }
    }
    println!("{table}");
}
