//! "Why was this connection (not) intercepted?": `explain`, `diagnose`, the
//! counters of `status` and the Prometheus text of `--metrics-listen`.
//!
//! `explain` runs the one decision of `redirect_common::decision` twice:
//! on the configured lists (MeshConfig + annotations, with where each entry
//! came from) and on what the kernel's maps hold right now, and says when
//! the two disagree.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, anyhow};
use redirect_common::{
    addr::{Family, Ip6},
    decision::{AddrLists, Dest6, Inbound, InboundLists, InboundRule, OutboundRule, PodLists, Verdict, decide_connect, decide_inbound},
    dns,
    maps::{List, PodConfig, PodId, direction, pod_flags},
};

use crate::{
    config::{MeshConfig, PodPolicy, Source, source::MeshSource},
    dataplane::Dataplane,
    ebpf::{
        maps::SharedMaps,
        pins::Pins,
        policy_entries::{PodEntries, SlotEntries},
    },
    iptables::{self, Family as IptFamily, PodIp},
    netns::{self, PodNet},
    pod::Pod,
    policy_lists::PolicyLists,
    state::State,
};

// What `explain` and `diagnose` answer (the control protocol carries
// these as they are).

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "direction")]
pub enum Query {
    /// A process of the pod with `uid` connects to `to` (IPv4, IPv6, or
    /// IPv4-mapped: an IPv4 connection).
    Outbound { to: SocketAddr, uid: u32 },
    /// A connection from elsewhere to the pod's `port`, arriving on `iface`,
    /// over IPv6 or IPv4.
    Inbound {
        port: u16,
        iface: Option<String>,
        #[serde(default)]
        ipv6: bool,
    },
    /// A process of the pod sends UDP to `to` (the local DNS proxy's rule).
    Udp { to: SocketAddr },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// `redirect-outbound`, `redirect-inbound`, `redirect-dns-proxy` or
    /// `direct`.
    pub verdict: String,
    /// The row of the table that decided (outbound 1-10, inbound 1-4).
    pub rule: u8,
    pub reason: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    pub pod: String,
    pub dataplane: Dataplane,
    pub query: Query,
    /// From the configured lists.
    pub config: Decision,
    /// The list entry that matched, with where it came from.
    pub matched: Option<String>,
    /// How the destination was read (an IPv4-mapped address is IPv4).
    pub note: Option<String>,
    /// From the kernel's maps (eBPF pods).
    pub kernel: Option<Decision>,
    pub agrees: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub pod: String,
    pub check: String,
    pub pass: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(pod: &str, check: &str, detail: String) -> Self {
        Check { pod: pod.into(), check: check.into(), pass: true, detail, fix: None }
    }
    pub fn fail(pod: &str, check: &str, detail: String, fix: &str) -> Self {
        Check { pod: pod.into(), check: check.into(), pass: false, detail, fix: Some(fix.into()) }
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Direct => "direct",
        Verdict::RedirectOutbound => "redirect-outbound",
        Verdict::RedirectInbound => "redirect-inbound",
    }
}

fn outbound_decision(rule: OutboundRule) -> Decision {
    Decision { verdict: verdict_name(rule.verdict()).into(), rule: rule as u8, reason: rule.describe().into() }
}

fn inbound_decision(rule: InboundRule) -> Decision {
    Decision { verdict: verdict_name(rule.verdict()).into(), rule: rule as u8, reason: rule.describe().into() }
}

fn udp_decision(to: &SocketAddr, dns_proxy: bool) -> Decision {
    let rule = match decided_ip(to) {
        IpAddr::V4(v4) => dns::decide(u32::from(v4), to.port(), dns_proxy),
        IpAddr::V6(_) => dns::UdpRule::Direct,
    };
    let verdict = if rule.port().is_some() { "redirect-dns-proxy" } else { "direct" };
    Decision { verdict: verdict.into(), rule: rule as u8, reason: rule.describe().into() }
}

fn source(s: Source) -> &'static str {
    match s {
        Source::MeshConfig => "MeshConfig",
        Source::Annotation => "pod annotation",
    }
}

/// The kernel's answers for one pod, read from the pinned maps.
struct KernelLists<'a> {
    maps: &'a SharedMaps,
    config: PodConfig,
}

impl KernelLists<'_> {
    /// The slots the programs consult for `list`, as they read them.
    fn slots(&self, list: List) -> impl Iterator<Item = u32> {
        self.config.slots_with(list).into_iter().flatten()
    }
}

impl PodLists for KernelLists<'_> {
    fn proxy_uid(&self) -> u32 {
        self.config.proxy_uid
    }
    fn port_excluded(&self, port: u16) -> bool {
        self.slots(List::OutboundPorts).any(|s| self.maps.lookup_port(s, port, direction::OUTBOUND))
    }
    fn inclusion_enabled(&self) -> bool {
        self.config.flags & pod_flags::INCLUSION != 0
    }
}

impl<A: Family> AddrLists<A> for KernelLists<'_> {
    fn intercepted(&self) -> bool {
        !A::IS_V6 || self.ipv6_intercepted()
    }
    fn is_local_addr(&self, addr: A) -> bool {
        self.maps.lookup_local(self.config.policy, addr.ip())
    }
    fn routed_via_excluded_iface(&self, addr: A) -> bool {
        self.slots(List::excluded_routes(A::IS_V6)).any(|s| self.maps.lookup_route_excluded(s, addr.ip()))
    }
    fn cidr_excluded(&self, addr: A) -> bool {
        self.slots(List::excluded_cidrs(A::IS_V6)).any(|s| self.maps.lookup_cidr(false, s, addr.ip()))
    }
    fn cidr_included(&self, addr: A) -> bool {
        self.slots(List::included_cidrs(A::IS_V6)).any(|s| self.maps.lookup_cidr(true, s, addr.ip()))
    }
}

impl InboundLists for KernelLists<'_> {
    fn inbound_port_excluded(&self, port: u16) -> bool {
        self.slots(List::InboundPorts).any(|s| self.maps.lookup_port(s, port, direction::INBOUND))
    }
    fn interface_excluded(&self, ifindex: u32) -> bool {
        self.slots(List::ExcludedIfaces).any(|s| self.maps.lookup_iface(s, ifindex))
    }
    fn ipv6_intercepted(&self) -> bool {
        self.config.flags & pod_flags::IPV6 != 0
    }
}

/// The address a connect() to `to` is decided on: an IPv4-mapped one's
/// IPv4 address.
fn decided_ip(to: &SocketAddr) -> IpAddr {
    match to.ip() {
        IpAddr::V6(a) => match Dest6::of(Ip6::from_octets(a.octets())) {
            Dest6::Mapped(v4) => v4.ip(),
            Dest6::V6(_) => IpAddr::V6(a),
        },
        v4 => v4,
    }
}

/// The list entry behind a rule.
fn matched_entry(policy: &PodPolicy, net: &PodNet, query: &Query, rule: &Decision) -> Option<String> {
    let in_list = |list: &[crate::config::Sourced<crate::config::Cidr>], ip: IpAddr| {
        list.iter().find(|c| c.value.net.contains(&ip)).map(|c| format!("{} ({})", c.value, source(c.source)))
    };
    match (query, rule.rule) {
        (Query::Outbound { to, .. }, 6) => in_list(&policy.outbound_ip_range_exclusions, decided_ip(to)),
        (Query::Outbound { to, .. }, 8) => in_list(&policy.outbound_ip_range_inclusions, decided_ip(to)),
        (Query::Outbound { to, .. }, 7) => policy
            .outbound_port_exclusions
            .iter()
            .find(|p| p.value.get() == to.port())
            .map(|p| format!("port {} ({})", p.value, source(p.source))),
        (Query::Outbound { to, .. }, 5) => {
            net.route_for(decided_ip(to)).map(|r| format!("route {} dev {} (networkInterfaceExclusionList)", r.net, r.iface))
        }
        (Query::Inbound { port, .. }, 1) => policy
            .inbound_port_exclusions
            .iter()
            .find(|p| p.value.get() == *port)
            .map(|p| format!("port {} ({})", p.value, source(p.source))),
        (Query::Inbound { iface: Some(i), .. }, 2) => Some(format!("{i} (networkInterfaceExclusionList)")),
        (Query::Outbound { to, uid }, 3) if policy.local_proxy_mode == crate::config::LocalProxyMode::PodIP => {
            use redirect_common::decision::{Outbound, OutboundRule, to_pod_ip};
            let ip = decided_ip(to);
            let goes = match ip {
                IpAddr::V4(a) => to_pod_ip(OutboundRule::ProxyUid, &Outbound { dst: u32::from(a), dst_port: to.port(), uid: *uid }),
                IpAddr::V6(a) => to_pod_ip(
                    OutboundRule::ProxyUid,
                    &Outbound { dst: redirect_common::addr::Ip6::from_octets(a.octets()), dst_port: to.port(), uid: *uid },
                ),
            };
            let pod_ip = net.pod_ip(ip.is_ipv6())?;
            goes.then(|| format!("localProxyMode PodIP (MeshConfig): sent to the pod IP, {}", SocketAddr::new(pod_ip, to.port())))
        }
        _ => None,
    }
}

/// What `explain` and `diagnose` read of the agent, handed out by it
/// (`Agent::view`): its record, the MeshConfig, the kernel's pins and maps,
/// and what it knows of the node. Read-only: diagnostics never reach into
/// the agent.
pub struct AgentView<'a> {
    pub state: &'a State,
    pub mesh: &'a MeshConfig,
    /// The eBPF dataplane's, where it runs.
    pub kernel: Option<Kernel<'a>>,
    /// Pods whose last install failed, with why.
    pub degraded: &'a BTreeMap<PodId, String>,
    pub ebpf_unavailable: &'a Option<String>,
    pub cgroup_sockets_unreliable: &'a Option<String>,
    pub mesh_source: &'a MeshSource,
    pub mesh_object: &'a Option<String>,
    pub cni_chained: &'a Option<Result<(), String>>,
}

/// The eBPF dataplane's state: where it is pinned, and its maps.
pub struct Kernel<'a> {
    pub pins: &'a Pins,
    pub maps: &'a SharedMaps,
}

impl AgentView<'_> {
    fn policy(&self, pod: &Pod) -> PodPolicy {
        PodPolicy::merge(self.mesh, &pod.lists)
    }

    fn pod(&self, name: &str) -> anyhow::Result<(PodId, &Pod)> {
        let id = self.state.pod_id(name).ok_or_else(|| {
            let known: Vec<&str> = self.state.pods.values().map(|p| p.name.as_str()).collect();
            anyhow!("pod {name}: not enrolled (enrolled: {})", if known.is_empty() { "none".into() } else { known.join(", ") })
        })?;
        Ok((id, &self.state.pods[&id]))
    }

    pub fn explain(&self, name: &str, query: Query) -> anyhow::Result<Explanation> {
        let (id, pod) = self.pod(name)?;
        let policy = self.policy(pod);
        let net = netns::pod_net(&pod.netns)?;
        let settings = pod.settings(&self.state.settings);
        let lists =
            PolicyLists { policy: &policy, net: &net, proxy_uid: settings.proxy_uid, ipv6: settings.ipv6.intercepts(net.has_global_v6()) };
        let ifindex = |iface: &Option<String>| -> anyhow::Result<Option<u32>> {
            iface.as_ref().map(|i| net.ifindex(i).ok_or_else(|| anyhow!("pod {name}: no interface {i:?}"))).transpose()
        };
        let inbound = |port: u16, iface: &Option<String>, ipv6: bool| -> anyhow::Result<Inbound> {
            Ok(Inbound { dst_port: port, ingress_ifindex: ifindex(iface)?, ipv6 })
        };
        let config = match &query {
            Query::Outbound { to, uid } => outbound_decision(decide_connect(*to, *uid, &lists)),
            Query::Inbound { port, iface, ipv6 } => inbound_decision(decide_inbound(&inbound(*port, iface, *ipv6)?, &lists)),
            Query::Udp { to } => udp_decision(to, self.mesh.local_dns_proxy),
        };
        let kernel = match (pod.dataplane, &self.kernel) {
            (Dataplane::Ebpf, Some(ebpf)) => {
                let kernel_config = ebpf.maps.pod_config(id).ok_or_else(|| anyhow!("pod {name}: no POD_CONFIG entry in the kernel"))?;
                let k = KernelLists { maps: ebpf.maps, config: kernel_config };
                Some(match &query {
                    Query::Outbound { to, uid } => outbound_decision(decide_connect(*to, *uid, &k)),
                    Query::Inbound { .. } if kernel_config.flags & pod_flags::INBOUND == 0 => {
                        Decision { verdict: "direct".into(), rule: 0, reason: "inbound interception is off for the pod".into() }
                    }
                    Query::Inbound { port, iface, ipv6 } => inbound_decision(decide_inbound(&inbound(*port, iface, *ipv6)?, &k)),
                    Query::Udp { to } => udp_decision(to, kernel_config.flags & pod_flags::DNS_PROXY != 0),
                })
            }
            _ => None,
        };
        let agrees = kernel.as_ref().is_none_or(|k| *k == config);
        let matched = matched_entry(&policy, &net, &query, &config);
        let note = match &query {
            Query::Outbound { to, .. } | Query::Udp { to } if to.is_ipv6() && decided_ip(to).is_ipv4() => Some(format!(
                "{} is IPv4-mapped: an IPv4 connection to {}:{}, decided by the IPv4 rules",
                to.ip(),
                decided_ip(to),
                to.port()
            )),
            _ => None,
        };
        Ok(Explanation { pod: pod.name.clone(), dataplane: pod.dataplane, query, config, matched, note, kernel, agrees })
    }

    /// The troubleshooting page's checks, automated, for one pod or all.
    pub fn diagnose(&self, name: Option<&str>) -> anyhow::Result<Vec<Check>> {
        let pods: Vec<(PodId, &Pod)> = match name {
            Some(n) => vec![self.pod(n)?],
            None => self.state.pods.iter().map(|(i, p)| (*i, p)).collect(),
        };
        let mut checks = vec![Check::pass("agent", "the agent is running", "answers on its control socket".into())];
        if let Some(why) = &self.ebpf_unavailable {
            checks.push(Check::pass("agent", "dataplane", format!("eBPF unavailable ({why}): pods get iptables")));
        }
        checks.push(self.check_mesh_source());
        if let Some(why) = &self.cgroup_sockets_unreliable {
            checks.push(Check::fail(
                "agent",
                "cgroup v2 socket matching",
                format!("{why}: eBPF pods have fsm-init's rules too, as a backstop"),
                "stop using net_cls/net_prio (cgroup v1) on the node, or run a kernel from 5.15, and reboot it: the kernel keeps the matching off until then",
            ));
        }
        if let Some(install) = &self.state.cni {
            const WHAT: &str = "CNI plugin chained";
            checks.push(match &self.cni_chained {
                Some(Err(why)) => Check::fail(
                    "agent",
                    WHAT,
                    why.clone(),
                    "give the agent the CNI dirs the runtime uses (--cni-conf-dir, --cni-bin-dir; docs/configuration.md lists them per distribution)",
                ),
                _ => Check::pass("agent", WHAT, format!("in {} (binary in {})", install.conf_dir.display(), install.bin_dir.display())),
            });
        }
        for (id, unreadable) in &self.state.unreadable {
            checks.push(Check::fail(
                unreadable.name(),
                "recorded",
                format!("as pod {id}, in a form this agent can't read ({}): left as it is, not followed", unreadable.why),
                "run the agent release that recorded it (a rollback met a newer agent's state), or remove the pod and add it again",
            ));
        }
        for problem in &self.state.problems {
            checks.push(Check::fail(
                "agent",
                "state",
                problem.clone(),
                "the agent carries on without it; see docs/configuration.md, \"The state file\"",
            ));
        }
        for (id, pod) in pods {
            checks.extend(self.diagnose_pod(id, pod));
        }
        Ok(checks)
    }

    /// Whether the MeshConfig in force is the mesh's (`config::source`).
    fn check_mesh_source(&self) -> Check {
        const WHAT: &str = "MeshConfig";
        const WHERE: &str = "check --fsm-namespace and --mesh-config-name: FSM keeps its MeshConfig in its own namespace (fsm-system/fsm-mesh-config by default)";
        let detail = self.mesh_source.describe();
        match &self.mesh_source {
            MeshSource::File { .. } | MeshSource::Api { gone: false, .. } => Check::pass("agent", WHAT, detail),
            // Told of no other: the operator's choice.
            MeshSource::Defaults { .. } if self.mesh_object.is_none() => Check::pass("agent", WHAT, detail),
            MeshSource::Defaults { .. } | MeshSource::Api { gone: true, .. } => Check::fail("agent", WHAT, detail, WHERE),
            MeshSource::Unknown { .. } => Check::fail(
                "agent",
                WHAT,
                detail,
                "let the agent reach the API and list meshconfigs.config.flomesh.io in FSM's namespace (deploy/clusterrole.yaml); meshed pods' ADDs fail until it can",
            ),
        }
    }

    fn diagnose_pod(&self, id: PodId, spec: &Pod) -> Vec<Check> {
        let pod = spec.name.as_str();
        let mut out = vec![Check::pass(pod, "enrolled", format!("as pod {id}, {:?} dataplane", spec.dataplane))];
        if let Some(why) = self.degraded.get(&id) {
            out.push(Check::fail(
                pod,
                "last install",
                format!("degraded: {why}; the kernel keeps the pod's previous programs and lists"),
                "the agent retries at each refresh; fix the cause named here (a full map: see `status`)",
            ));
        }
        let policy = self.policy(spec);
        let net = match netns::pod_net(&spec.netns) {
            Ok(n) => n,
            Err(e) => {
                out.push(Check::fail(pod, "pod readable", format!("{e:#}"), "remove the pod and enroll it again"));
                return out;
            }
        };
        let settings = spec.settings(&self.state.settings);
        let ipv6 = settings.ipv6.intercepts(net.has_global_v6()) && spec.dataplane != Dataplane::FsmInit;
        out.push(Check::pass(
            pod,
            "IPv6 interception",
            match (ipv6, settings.ipv6) {
                _ if spec.dataplane == Dataplane::FsmInit => "off (fsm-init's rules are IPv4 only)".into(),
                (true, crate::ipv6::Ipv6Mode::Auto) => "on (--ipv6 auto: the pod has a global IPv6 address)".into(),
                (true, _) => "on (--ipv6 on)".into(),
                (false, crate::ipv6::Ipv6Mode::Off) => "off (--ipv6 off: IPv4 and IPv4-mapped only, as fsm-init)".into(),
                (false, _) => "off (--ipv6 auto: the pod has no global IPv6 address)".into(),
            },
        ));
        match (spec.dataplane, &self.kernel) {
            (Dataplane::Iptables, _) => out.push(check_iptables(pod, spec, &policy, &net, &settings, ipv6)),
            (Dataplane::Ebpf, Some(ebpf)) => {
                let mut missing: Vec<String> = crate::ebpf::programs::missing(ebpf.pins, id).iter().map(|p| p.to_string()).collect();
                if let Ok(cg) = spec.cgroup_path() {
                    missing.extend(
                        crate::ebpf::programs::misplaced(ebpf.pins, id, &cg, &spec.netns)
                            .iter()
                            .map(|p| format!("{p} (on a cgroup or netns that is gone)")),
                    );
                }
                out.push(if missing.is_empty() {
                    Check::pass(
                        pod,
                        "programs attached",
                        "connect4/6, getsockopt, sendmsg4/6, recvmsg4/6, getpeername4/6 on its cgroup; sk_lookup on its netns".into(),
                    )
                } else {
                    Check::fail(
                        pod,
                        "programs attached",
                        format!("not attached: {}", missing.join(", ")),
                        "the agent re-attaches missing programs within its refresh interval; or `redirect-agent reload`",
                    )
                });
                out.push(check_maps(pod, id, ebpf.maps, &policy, self.mesh, &spec.lists, &net, &settings, ipv6));
                out.push(check_outsiders(pod, spec));
                if ipv6 {
                    out.push(if net.handover_route {
                        Check::pass(pod, "IPv6 hand-over route", format!("local {} dev lo in the pod's netns", netns::handover_net()))
                    } else {
                        Check::fail(
                            pod,
                            "IPv6 hand-over route",
                            format!(
                                "local {} dev lo is missing from the pod's netns: redirected IPv6 connections leave the pod and fail",
                                netns::handover_net()
                            ),
                            "the agent adds it again within its refresh interval",
                        )
                    });
                }
                let listeners = ebpf.maps.listeners(id);
                let needed = crate::ebpf::programs::sockops_needed(settings.fast_path, settings.inbound, listeners.serve(ipv6));
                let attached = crate::ebpf::programs::has_sockops(ebpf.pins, id);
                let why = match (settings.fast_path, needed) {
                    (true, _) => "needed by the fast path",
                    (false, true) => "needed until the proxy's inbound listeners register",
                    (false, false) => "not needed: the redirect works without it",
                };
                // Attached without need only costs time (the agent detaches it
                // at its next tick); missing when needed loses a listener.
                out.push(match (needed, attached) {
                    (true, false) => Check::fail(
                        pod,
                        "sockops attached when needed",
                        format!("not attached, but {why}"),
                        "the agent attaches it within a second; if this persists, see the agent's log",
                    ),
                    _ => Check::pass(
                        pod,
                        "sockops attached when needed",
                        format!("{} ({why})", if attached { "attached" } else { "not attached" }),
                    ),
                });
                if settings.inbound {
                    let port = settings.inbound_port;
                    out.push(match (listeners.serve(ipv6), listeners.v4 || listeners.v6) {
                        (true, _) => Check::pass(
                            pod,
                            "inbound listener registered",
                            format!("the proxy's socket on {port} is in PROXY_LISTENERS{}", if ipv6 { " (IPv6 too)" } else { "" }),
                        ),
                        (false, true) => Check::fail(
                            pod,
                            "inbound listener registered",
                            format!("no IPv6 socket listening on {port} is known to the kernel: inbound IPv6 connections are refused"),
                            &format!("have the proxy listen on [::]:{port}"),
                        ),
                        (false, false) => Check::fail(
                            pod,
                            "inbound listener registered",
                            format!("no socket listening on {port} is known to the kernel: inbound connections are refused"),
                            "start the proxy (it registers when it listens)",
                        ),
                    });
                }
            }
            (Dataplane::Ebpf, None) => {
                out.push(Check::fail(pod, "dataplane", "an eBPF pod, but eBPF is not available".into(), "restart the agent"))
            }
            (Dataplane::FsmInit, _) => out.push(check_fsm_init(pod, spec)),
        }
        let ebpf_pod = spec.dataplane == Dataplane::Ebpf;
        for (port, what) in [(settings.outbound_port, "outbound"), (settings.inbound_port, "inbound")] {
            out.push(check_listening(pod, port, what, ebpf_pod, ipv6, netns::listening(&spec.netns, port)));
        }
        out
    }
}

/// Processes in the pod's network namespace but outside its cgroup
/// (`nsenter`, `ip netns exec`, a runtime's helper): the eBPF programs hang
/// on the cgroup and never see their sockets, while fsm-init's rules, on
/// the netns, would catch them.
fn check_outsiders(pod: &str, spec: &Pod) -> Check {
    const CHECK: &str = "every process of the netns in the pod's cgroup";
    let (Ok(ns), Ok(cg)) = (netns::identity(&spec.netns), spec.cgroup_path()) else {
        return Check::fail(pod, CHECK, "the pod's netns or cgroup can't be read".into(), "see `status`");
    };
    let outside: Vec<String> = netns::processes_in(ns)
        .into_iter()
        .filter_map(|pid| {
            let theirs = crate::cgroup::of_process(pid)?;
            (!theirs.starts_with(&cg)).then(|| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{pid} ({}) in {}", comm.trim(), theirs.display())
            })
        })
        .collect();
    if outside.is_empty() {
        Check::pass(pod, CHECK, format!("all in {}", cg.display()))
    } else {
        Check::fail(
            pod,
            CHECK,
            format!("not intercepted by eBPF, as they are outside the pod's cgroup: {}", outside.join(", ")),
            "run them in the pod's cgroup (a container of the pod, not nsenter or ip netns exec), or enroll the pod with --dataplane iptables",
        )
    }
}

/// The proxy's listener on `port` accepts what interception sends it.
fn check_listening(
    pod: &str,
    port: u16,
    what: &str,
    ebpf_pod: bool,
    ipv6: bool,
    listening: anyhow::Result<Vec<netns::Listening>>,
) -> Check {
    let check = format!("proxy listens on {port}");
    let l = match listening {
        Ok(l) => l,
        Err(e) => return Check::fail(pod, &check, format!("{e:#}"), "check the pod's netns"),
    };
    if l.is_empty() {
        return Check::fail(
            pod,
            &check,
            format!("nothing listens on {port} in the pod: {what} connections fail"),
            "check that the sidecar container is running and ready",
        );
    }
    // connect4 sends each redirected connection (to the inbound port too:
    // the proxy dialling its own pod IP) to an address of its own in
    // 127.64.0.0/10 (127.128.0.0/10 before 5.12), connect6 to one in the IPv6 hand-over prefix
    // (redirect_common::handover): a listener bound to 127.0.0.1 or ::1
    // alone never sees them. (ip6tables REDIRECT goes to ::1.)
    if ebpf_pod && !l.iter().any(|l| l.wildcard) {
        return Check::fail(
            pod,
            &check,
            format!(
                "the {what} listener is bound to one address, not 0.0.0.0: redirected connections arrive at addresses of 127.0.0.0/8 other than 127.0.0.1 and are refused"
            ),
            &format!("bind the proxy's {what} listener to 0.0.0.0 (or [::])"),
        );
    }
    if ipv6 && !l.iter().any(|l| l.v6 && (l.wildcard || !ebpf_pod)) {
        return Check::fail(
            pod,
            &check,
            format!("the pod's IPv6 is intercepted, but no {what} listener is an IPv6 one: IPv6 connections are refused"),
            &format!("have the proxy listen on [::]:{port} too (or enroll the pod with --ipv6 off)"),
        );
    }
    Check::pass(pod, &check, format!("the {what} listener is up{}", if ipv6 { " (IPv4 and IPv6)" } else { "" }))
}

/// The effective lists (labelled with their source) against the kernel's
/// maps, entry by entry.
#[allow(clippy::too_many_arguments)]
fn check_maps(
    pod: &str,
    id: PodId,
    maps: &SharedMaps,
    policy: &PodPolicy,
    mesh: &crate::config::MeshConfig,
    annotations: &crate::config::annotations::PodAnnotations,
    net: &PodNet,
    settings: &crate::settings::ProxySettings,
    ipv6: bool,
) -> Check {
    const WHAT: &str = "kernel maps hold the effective lists";
    const FIX: &str = "`redirect-agent reload` rewrites every pod's maps";
    let Some(config) = maps.pod_config(id) else {
        return Check::fail(pod, WHAT, "no POD_CONFIG entry: the programs treat the pod as not enrolled".into(), FIX);
    };
    let want = PodEntries::new(mesh, annotations, net, ipv6);
    let (have_mesh, have_own) = (maps.read_slot(config.mesh_policy), maps.read_slot(config.policy));
    let mut diffs = slot_diff(&want.mesh, &have_mesh, policy);
    diffs.extend(slot_diff(&want.own, &have_own, policy));
    if (config.flags & pod_flags::INCLUSION != 0) != want.own.inclusion {
        diffs.push("POD_CONFIG's inclusion flag is wrong".into());
    }
    if (config.flags & pod_flags::DNS_PROXY != 0) != want.own.dns_proxy {
        diffs.push(format!(
            "POD_CONFIG has the local DNS proxy {}, the MeshConfig {}",
            if want.own.dns_proxy { "off" } else { "on" },
            if want.own.dns_proxy { "on" } else { "off" }
        ));
    }
    if (config.flags & pod_flags::IPV6 != 0) != ipv6 {
        diffs.push(format!(
            "POD_CONFIG says IPv6 is {}intercepted, the agent says it is {}",
            if ipv6 { "not " } else { "" },
            if ipv6 { "" } else { "not" }
        ));
    }
    if config.outbound_port != settings.outbound_port
        || config.inbound_port != settings.inbound_port
        || config.proxy_uid != settings.proxy_uid
    {
        diffs.push(format!(
            "POD_CONFIG has ports {}/{} and UID {}, the agent {}/{} and {}",
            config.outbound_port, config.inbound_port, config.proxy_uid, settings.outbound_port, settings.inbound_port, settings.proxy_uid
        ));
    }
    if diffs.is_empty() {
        let n = |f: fn(&SlotEntries) -> usize, what: &str| format!("{} {what}", f(&want.mesh) + f(&want.own));
        Check::pass(
            pod,
            WHAT,
            [
                n(|e| e.excluded_cidrs.len() + e.excluded_cidrs6.len(), "excluded CIDRs"),
                n(|e| e.included_cidrs.len() + e.included_cidrs6.len(), "included CIDRs"),
                n(|e| e.excluded_ports.len(), "excluded outbound ports"),
                n(|e| e.inbound_excluded_ports.len(), "excluded inbound ports"),
                n(|e| e.excluded_ifaces.len(), "excluded interfaces"),
                format!("local DNS proxy {}", if want.own.dns_proxy { "on" } else { "off" }),
            ]
            .join(", "),
        )
    } else {
        Check::fail(pod, WHAT, diffs.join("; "), FIX)
    }
}

/// What one slot lacks or has too much of, entry by entry.
fn slot_diff(want: &SlotEntries, have: &SlotEntries, policy: &PodPolicy) -> Vec<String> {
    let mut diffs = Vec::new();
    let label_port = |p: u16, list: &[crate::config::Sourced<crate::config::Port>]| {
        list.iter().find(|e| e.value.get() == p).map_or(String::new(), |e| format!(" ({})", source(e.source)))
    };
    for p in want.excluded_ports.iter().filter(|p| !have.excluded_ports.contains(p)) {
        diffs.push(format!("EXCLUDED_PORTS lacks outbound port {p}{}", label_port(*p, &policy.outbound_port_exclusions)));
    }
    for p in want.inbound_excluded_ports.iter().filter(|p| !have.inbound_excluded_ports.contains(p)) {
        diffs.push(format!("EXCLUDED_PORTS lacks inbound port {p}{}", label_port(*p, &policy.inbound_port_exclusions)));
    }
    let v4 = |a: &[u8; 4]| std::net::Ipv4Addr::from(*a).to_string();
    let v6 = |a: &Ip6| a.ip().to_string();
    lacks(&mut diffs, "EXCLUDED_CIDRS", &want.excluded_cidrs, &have.excluded_cidrs, |(a, l)| format!("{}/{l}", v4(a)));
    lacks(&mut diffs, "INCLUDED_CIDRS", &want.included_cidrs, &have.included_cidrs, |(a, l)| format!("{}/{l}", v4(a)));
    lacks(&mut diffs, "EXCLUDED_CIDRS6", &want.excluded_cidrs6, &have.excluded_cidrs6, |(a, l)| format!("{}/{l}", v6(a)));
    lacks(&mut diffs, "INCLUDED_CIDRS6", &want.included_cidrs6, &have.included_cidrs6, |(a, l)| format!("{}/{l}", v6(a)));
    lacks(&mut diffs, "LOCAL_ADDRS", &want.local_addrs, &have.local_addrs, v4);
    lacks(&mut diffs, "LOCAL_ADDRS6", &want.local_addrs6, &have.local_addrs6, v6);
    lacks(&mut diffs, "EXCLUDED_IFACES", &want.excluded_ifaces, &have.excluded_ifaces, |i| format!("ifindex {i}"));
    lacks(&mut diffs, "IFACE_ROUTES", &want.routes, &have.routes, |(a, l, _)| format!("{}/{l}", v4(a)));
    lacks(&mut diffs, "IFACE_ROUTES6", &want.routes6, &have.routes6, |(a, l, _)| format!("{}/{l}", v6(a)));
    let count = |e: &SlotEntries| {
        e.excluded_ports.len()
            + e.inbound_excluded_ports.len()
            + e.excluded_cidrs.len()
            + e.included_cidrs.len()
            + e.excluded_cidrs6.len()
            + e.included_cidrs6.len()
            + e.excluded_ifaces.len()
    };
    if count(have) > count(want) {
        diffs.push("the kernel holds entries the lists don't have".into());
    }
    diffs
}

/// A pod its own fsm-init serves: its rules must be in its netns, and
/// nothing of the agent's.
fn check_fsm_init(pod: &str, spec: &Pod) -> Check {
    const WHAT: &str = "served by its own fsm-init";
    match crate::iptables::fsm_init::found(&spec.netns) {
        Ok(Some(chain)) => Check::pass(pod, WHAT, format!("fsm-init's rules are in its netns ({chain}); the agent installs nothing")),
        Ok(None) => Check::fail(
            pod,
            WHAT,
            "no fsm-init rules in its netns: the pod is not intercepted".into(),
            "if its init container has not run yet, wait; otherwise see `kubectl describe pod` (fsm-init's exit code) and FSM's troubleshooting page",
        ),
        Err(e) => Check::fail(pod, WHAT, format!("{e:#}"), "install iptables on the node (the agent's image has it)"),
    }
}

/// What `have` lacks of `want`, each named as `MAP lacks ENTRY`.
fn lacks<T: PartialEq>(diffs: &mut Vec<String>, map: &str, want: &[T], have: &[T], show: impl Fn(&T) -> String) {
    diffs.extend(want.iter().filter(|e| !have.contains(e)).map(|e| format!("{map} lacks {}", show(e))));
}

/// The pod's nat tables (ip6tables' too where its IPv6 is intercepted)
/// against the rules the lists give: per chain, the same number of rules,
/// and the jumps into our chains.
fn check_iptables(pod: &str, spec: &Pod, policy: &PodPolicy, net: &PodNet, settings: &crate::settings::ProxySettings, ipv6: bool) -> Check {
    const WHAT: &str = "iptables rules match the effective lists";
    const FIX: &str = "`redirect-agent reload` re-applies every pod's rules";
    let count = |text: &str, chain: &str| {
        text.lines().filter(|l| l.starts_with(&format!("-A {chain} ")) || l.starts_with(&format!("-I {chain} "))).count()
    };
    let mut diffs = Vec::new();
    let families: &[IptFamily] = if ipv6 { &[IptFamily::V4, IptFamily::V6] } else { &[IptFamily::V4] };
    for family in families {
        let ip = net.pod_ip(*family == IptFamily::V6).map_or(PodIp::ShellVariable, PodIp::Addr);
        let form = iptables::rules::Form::Fsm;
        let input = iptables::rules::restore_input(policy, settings, *family, ip, form);
        let saved = match iptables::apply::save(&spec.netns, *family).with_context(|| format!("{}-save", family.iptables())) {
            Ok(s) => s,
            Err(e) => return Check::fail(pod, WHAT, format!("{e:#}"), "install iptables"),
        };
        for chain in form.chains().all().iter().chain(["PREROUTING", "OUTPUT"].iter()) {
            let want = count(&input, chain);
            let have = if form.chains().all().contains(chain) {
                count(&saved, chain)
            } else {
                saved.lines().filter_map(|l| l.strip_prefix(&format!("-A {chain} "))).filter(|r| iptables::apply::is_ours(r)).count()
            };
            if want != have {
                diffs.push(format!("{} {chain}: {have} of our rules, expected {want}", family.iptables()));
            }
        }
    }
    if diffs.is_empty() {
        Check::pass(pod, WHAT, format!("every chain holds the expected rules{}", if ipv6 { " (iptables and ip6tables)" } else { "" }))
    } else {
        Check::fail(pod, WHAT, diffs.join("; "), FIX)
    }
}
