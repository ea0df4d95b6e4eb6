//! "Why was this connection (not) intercepted?": `explain`, `diagnose`, the
//! counters of `status` and the Prometheus text of `--metrics-listen`.
//!
//! `explain` runs the one decision of `redirect_common::decision` twice:
//! on the configured lists (MeshConfig + annotations, with where each entry
//! came from) and on what the kernel's maps hold right now, and says when
//! the two disagree.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddrV4};

use anyhow::{Context as _, anyhow};
use redirect_common::{
    decision::{
        Inbound, InboundLists, InboundRule, Outbound, OutboundLists, OutboundRule, Verdict, decide_inbound,
        decide_outbound,
    },
    maps::{List, PodConfig, PodId, counter, direction, pod_flags},
};

use crate::{
    agent::Agent,
    config::{PodPolicy, Source},
    dataplane::Dataplane,
    ebpf::maps::{PodEntries, SharedMaps, SlotEntries},
    iptables::{self, Family, PodIp},
    lists::PolicyLists,
    netns::{self, PodNet},
    pod::PodSpec,
};

/// Counter names, by slot (see `redirect_common::maps::counter`).
pub fn counter_name(id: u32) -> Option<&'static str> {
    Some(match id {
        counter::ORIGINAL_DST_ANSWERED => "original_dst_answered",
        1 => "outbound_to_inbound_listener",
        2 => "outbound_direct_local",
        3 => "outbound_direct_proxy_uid",
        5 => "outbound_direct_excluded_interface",
        6 => "outbound_direct_excluded_cidr",
        7 => "outbound_direct_excluded_port",
        8 => "outbound_redirected_included",
        9 => "outbound_direct_not_included",
        10 => "outbound_redirected",
        11 => "inbound_direct_excluded_port",
        12 => "inbound_direct_excluded_interface",
        13 => "inbound_direct_proxy_port",
        14 => "inbound_redirected",
        counter::INBOUND_NO_PROXY => "inbound_refused_no_proxy",
        counter::FAST_PATH_SOCKETS => "fast_path_sockets",
        counter::FAST_PATH_MESSAGES => "fast_path_messages",
        counter::FAST_PATH_LEFT => "fast_path_sockets_left",
        _ => return None,
    })
}

pub fn named_counters(values: &[u64]) -> BTreeMap<String, u64> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| counter_name(i as u32).map(|n| (n.to_owned(), *v)))
        .collect()
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "direction")]
pub enum Query {
    /// A process of the pod with `uid` connects to `to`.
    Outbound { to: SocketAddrV4, uid: u32 },
    /// A connection from elsewhere to the pod's `port`, arriving on `iface`.
    Inbound { port: u16, iface: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// `redirect-outbound`, `redirect-inbound` or `direct`.
    pub verdict: String,
    /// The row of the table that decided (outbound 1-10, inbound 1-4).
    pub rule: u8,
    pub reason: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    pub pod: String,
    pub dataplane: Option<Dataplane>,
    pub query: Query,
    /// From the configured lists.
    pub config: Decision,
    /// The list entry that matched, with where it came from.
    pub matched: Option<String>,
    /// From the kernel's maps (eBPF pods).
    pub kernel: Option<Decision>,
    pub agrees: bool,
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

impl OutboundLists for KernelLists<'_> {
    fn proxy_uid(&self) -> u32 {
        self.config.proxy_uid
    }
    fn is_local_addr(&self, addr: u32) -> bool {
        self.maps.lookup_local(self.config.policy, addr.to_be_bytes())
    }
    fn routed_via_excluded_iface(&self, addr: u32) -> bool {
        self.slots(List::ExcludedRoutes).any(|s| self.maps.lookup_route_excluded(s, addr.to_be_bytes()))
    }
    fn cidr_excluded(&self, addr: u32) -> bool {
        self.slots(List::ExcludedCidrs).any(|s| self.maps.lookup_cidr(false, s, addr.to_be_bytes()))
    }
    fn port_excluded(&self, port: u16) -> bool {
        self.slots(List::OutboundPorts).any(|s| self.maps.lookup_port(s, port, direction::OUTBOUND))
    }
    fn inclusion_enabled(&self) -> bool {
        self.config.flags & pod_flags::INCLUSION != 0
    }
    fn cidr_included(&self, addr: u32) -> bool {
        self.slots(List::IncludedCidrs).any(|s| self.maps.lookup_cidr(true, s, addr.to_be_bytes()))
    }
}

impl KernelLists<'_> {
    /// The slots the programs consult for `list`, as they read them.
    fn slots(&self, list: List) -> impl Iterator<Item = u32> {
        self.config.slots_with(list).into_iter().flatten()
    }
}

impl InboundLists for KernelLists<'_> {
    fn inbound_port_excluded(&self, port: u16) -> bool {
        self.slots(List::InboundPorts).any(|s| self.maps.lookup_port(s, port, direction::INBOUND))
    }
    fn interface_excluded(&self, ifindex: u32) -> bool {
        self.slots(List::ExcludedIfaces).any(|s| self.maps.lookup_iface(s, ifindex))
    }
}

/// The list entry behind a rule.
fn matched_entry(policy: &PodPolicy, net: &PodNet, query: &Query, rule: &Decision) -> Option<String> {
    let ip = |q: &Query| match q {
        Query::Outbound { to, .. } => Some(std::net::IpAddr::V4(*to.ip())),
        Query::Inbound { .. } => None,
    };
    match (query, rule.rule) {
        (Query::Outbound { .. }, 6) => policy
            .outbound_ip_range_exclusions
            .iter()
            .find(|c| ip(query).is_some_and(|a| c.value.net.contains(&a)))
            .map(|c| format!("{} ({})", c.value, source(c.source))),
        (Query::Outbound { .. }, 8) => policy
            .outbound_ip_range_inclusions
            .iter()
            .find(|c| ip(query).is_some_and(|a| c.value.net.contains(&a)))
            .map(|c| format!("{} ({})", c.value, source(c.source))),
        (Query::Outbound { to, .. }, 7) => policy
            .outbound_port_exclusions
            .iter()
            .find(|p| p.value.get() == to.port())
            .map(|p| format!("port {} ({})", p.value, source(p.source))),
        (Query::Outbound { to, .. }, 5) => {
            let addr = u32::from(*to.ip());
            net.routes
                .iter()
                .filter(|r| {
                    let mask = if r.prefix_len == 0 { 0 } else { u32::MAX << (32 - r.prefix_len) };
                    addr & mask == u32::from(r.dst) & mask
                })
                .max_by_key(|r| r.prefix_len)
                .map(|r| format!("route {}/{} dev {} (networkInterfaceExclusionList)", r.dst, r.prefix_len, r.iface))
        }
        (Query::Inbound { port, .. }, 1) => policy
            .inbound_port_exclusions
            .iter()
            .find(|p| p.value.get() == *port)
            .map(|p| format!("port {} ({})", p.value, source(p.source))),
        (Query::Inbound { iface: Some(i), .. }, 2) => Some(format!("{i} (networkInterfaceExclusionList)")),
        _ => None,
    }
}

impl Agent {
    fn pod(&self, name: &str) -> anyhow::Result<(PodId, PodSpec)> {
        let id = self.state.pod_id(name).ok_or_else(|| {
            let known: Vec<&str> = self.state.pods.values().map(|p| p.name.as_str()).collect();
            anyhow!("pod {name}: not enrolled (enrolled: {})", if known.is_empty() { "none".into() } else { known.join(", ") })
        })?;
        Ok((id, self.state.pods[&id].clone()))
    }

    pub fn explain(&self, name: &str, query: Query) -> anyhow::Result<Explanation> {
        let (id, spec) = self.pod(name)?;
        let policy = self.policy(&spec)?;
        let net = netns::pod_net(&spec.netns)?;
        let lists = PolicyLists { policy: &policy, net: &net, proxy_uid: self.state.settings.proxy_uid };
        let ifindex = |iface: &Option<String>| -> anyhow::Result<Option<u32>> {
            iface
                .as_ref()
                .map(|i| net.ifindex(i).ok_or_else(|| anyhow!("pod {name}: no interface {i:?}")))
                .transpose()
        };
        let config = match &query {
            Query::Outbound { to, uid } => {
                outbound_decision(decide_outbound(&Outbound { dst: u32::from(*to.ip()), dst_port: to.port(), uid: *uid }, &lists))
            }
            Query::Inbound { port, iface } => {
                inbound_decision(decide_inbound(&Inbound { dst_port: *port, ingress_ifindex: ifindex(iface)? }, &lists))
            }
        };
        let kernel = match (spec.dataplane, &self.ebpf) {
            (Some(Dataplane::Ebpf), Some(ebpf)) => {
                let kernel_config = ebpf.maps.pod_config(id).ok_or_else(|| anyhow!("pod {name}: no POD_CONFIG entry in the kernel"))?;
                let k = KernelLists { maps: &ebpf.maps, config: kernel_config };
                Some(match &query {
                    Query::Outbound { to, uid } => outbound_decision(decide_outbound(
                        &Outbound { dst: u32::from(*to.ip()), dst_port: to.port(), uid: *uid },
                        &k,
                    )),
                    Query::Inbound { port, iface } => {
                        if kernel_config.flags & pod_flags::INBOUND == 0 {
                            Decision { verdict: "direct".into(), rule: 0, reason: "inbound interception is off for the pod".into() }
                        } else {
                            inbound_decision(decide_inbound(&Inbound { dst_port: *port, ingress_ifindex: ifindex(iface)? }, &k))
                        }
                    }
                })
            }
            _ => None,
        };
        let agrees = kernel.as_ref().is_none_or(|k| *k == config);
        let matched = matched_entry(&policy, &net, &query, &config);
        Ok(Explanation { pod: spec.name, dataplane: spec.dataplane, query, config, matched, kernel, agrees })
    }

    /// The troubleshooting page's checks, automated, for one pod or all.
    pub fn diagnose(&self, name: Option<&str>) -> anyhow::Result<Vec<Check>> {
        let pods: Vec<(PodId, PodSpec)> = match name {
            Some(n) => vec![self.pod(n)?],
            None => self.state.pods.iter().map(|(i, s)| (*i, s.clone())).collect(),
        };
        let mut checks = vec![Check::pass("agent", "the agent is running", "answers on its control socket".into())];
        if let Some(why) = &self.ebpf_unavailable {
            checks.push(Check::pass("agent", "dataplane", format!("eBPF unavailable ({why}): pods get iptables")));
        }
        for (id, spec) in pods {
            checks.extend(self.diagnose_pod(id, &spec));
        }
        Ok(checks)
    }

    fn diagnose_pod(&self, id: PodId, spec: &PodSpec) -> Vec<Check> {
        let pod = spec.name.as_str();
        let mut out = vec![Check::pass(pod, "enrolled", format!("as pod {id}, {:?} dataplane", spec.dataplane.unwrap_or(Dataplane::Ebpf)))];
        let (policy, net) = match (self.policy(spec), netns::pod_net(&spec.netns)) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(e), _) | (_, Err(e)) => {
                out.push(Check::fail(pod, "pod readable", format!("{e:#}"), "remove the pod and enroll it again"));
                return out;
            }
        };
        let settings = &self.state.settings;
        match (spec.dataplane, &self.ebpf) {
            (Some(Dataplane::Iptables), _) => out.push(check_iptables(pod, spec, &policy, &net, settings)),
            (_, Some(ebpf)) => {
                let missing = crate::ebpf::programs::missing(&ebpf.pins, id);
                out.push(if missing.is_empty() {
                    Check::pass(pod, "programs attached", "connect4, getsockopt on its cgroup; sk_lookup on its netns".into())
                } else {
                    Check::fail(
                        pod,
                        "programs attached",
                        format!("not attached: {}", missing.join(", ")),
                        "the agent re-attaches missing programs within its refresh interval; or `redirect-agent reload`",
                    )
                });
                let annotations = spec.validate().unwrap_or_default();
                out.push(check_maps(pod, id, &ebpf.maps, &policy, &self.mesh, &annotations, &net, settings));
                let fast_path = crate::agent::pod_settings(settings, spec).fast_path;
                let needed = crate::ebpf::programs::sockops_needed(fast_path, settings.inbound, ebpf.maps.has_listener(id));
                let attached = crate::ebpf::programs::has_sockops(&ebpf.pins, id);
                let why = match (fast_path, needed) {
                    (true, _) => "needed by the fast path",
                    (false, true) => "needed until the proxy's inbound listener registers",
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
                    _ => Check::pass(pod, "sockops attached when needed", format!("{} ({why})", if attached { "attached" } else { "not attached" })),
                });
                if settings.inbound {
                    out.push(if ebpf.maps.has_listener(id) {
                        Check::pass(pod, "inbound listener registered", format!("the proxy's socket on {} is in PROXY_LISTENERS", settings.inbound_port))
                    } else {
                        Check::fail(pod, "inbound listener registered", format!("no socket listening on {} is known to the kernel: inbound connections are refused", settings.inbound_port), "start the proxy (it registers when it listens)")
                    });
                }
            }
            (_, None) => out.push(Check::fail(pod, "dataplane", "an eBPF pod, but eBPF is not available".into(), "restart the agent")),
        }
        let ebpf_pod = spec.dataplane != Some(Dataplane::Iptables);
        for (port, what) in [(settings.outbound_port, "outbound"), (settings.inbound_port, "inbound")] {
            let listening = netns::listening(&spec.netns, port);
            out.push(match listening {
                // connect4 sends each redirected connection (to the inbound
                // port too: the proxy dialling its own pod IP) to an address
                // of its own in 127.128.0.0/10 (redirect_common::handover): a
                // listener bound to 127.0.0.1 alone never sees them.
                Ok(l) if ebpf_pod && !l.is_empty() && !l.iter().any(|l| l.wildcard) => Check::fail(
                    pod,
                    &format!("proxy listens on {port}"),
                    format!("the {what} listener is bound to one address, not 0.0.0.0: redirected connections arrive at 127.128.0.0/10 and are refused"),
                    &format!("bind the proxy's {what} listener to 0.0.0.0"),
                ),
                Ok(l) if !l.is_empty() => Check::pass(pod, &format!("proxy listens on {port}"), format!("the {what} listener is up")),
                Ok(_) => Check::fail(
                    pod,
                    &format!("proxy listens on {port}"),
                    format!("nothing listens on {port} in the pod: {what} connections fail"),
                    "check that the sidecar container is running and ready",
                ),
                Err(e) => Check::fail(pod, &format!("proxy listens on {port}"), format!("{e:#}"), "check the pod's netns"),
            });
        }
        out
    }

    /// Prometheus text exposition of the counters and map fill levels.
    pub fn metrics(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP fsm_redirect_events_total Interception decisions and answers, per pod, from the kernel.");
        let _ = writeln!(o, "# TYPE fsm_redirect_events_total counter");
        if let Some(ebpf) = &self.ebpf {
            for (id, spec) in &self.state.pods {
                if spec.dataplane != Some(Dataplane::Ebpf) {
                    continue;
                }
                for (event, value) in named_counters(&ebpf.maps.counters(*id)) {
                    let _ = writeln!(o, "fsm_redirect_events_total{{pod=\"{}\",event=\"{event}\"}} {value}", escape(&spec.name));
                }
            }
            let _ = writeln!(o, "# HELP fsm_redirect_map_entries Entries in use per kernel map.");
            let _ = writeln!(o, "# TYPE fsm_redirect_map_entries gauge");
            let fill = ebpf.maps.fill();
            for m in &fill {
                let _ = writeln!(o, "fsm_redirect_map_entries{{map=\"{}\"}} {}", m.map, m.entries);
            }
            let _ = writeln!(o, "# HELP fsm_redirect_map_capacity Capacity per kernel map.");
            let _ = writeln!(o, "# TYPE fsm_redirect_map_capacity gauge");
            for m in &fill {
                let _ = writeln!(o, "fsm_redirect_map_capacity{{map=\"{}\"}} {}", m.map, m.capacity);
            }
        }
        let _ = writeln!(o, "# HELP fsm_redirect_pods Enrolled pods per dataplane.");
        let _ = writeln!(o, "# TYPE fsm_redirect_pods gauge");
        for (dp, name) in [(Dataplane::Ebpf, "ebpf"), (Dataplane::Iptables, "iptables")] {
            let n = self.state.pods.values().filter(|p| p.dataplane == Some(dp)).count();
            let _ = writeln!(o, "fsm_redirect_pods{{dataplane=\"{name}\"}} {n}");
        }
        o
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
    fn pass(pod: &str, check: &str, detail: String) -> Self {
        Check { pod: pod.into(), check: check.into(), pass: true, detail, fix: None }
    }
    fn fail(pod: &str, check: &str, detail: String, fix: &str) -> Self {
        Check { pod: pod.into(), check: check.into(), pass: false, detail, fix: Some(fix.into()) }
    }
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
    settings: &crate::ebpf::maps::ProxySettings,
) -> Check {
    const WHAT: &str = "kernel maps hold the effective lists";
    const FIX: &str = "`redirect-agent reload` rewrites every pod's maps";
    let Some(config) = maps.pod_config(id) else {
        return Check::fail(pod, WHAT, "no POD_CONFIG entry: the programs treat the pod as not enrolled".into(), FIX);
    };
    let want = PodEntries::new(mesh, annotations, net);
    let (have_mesh, have_own) = (maps.read_slot(config.mesh_policy), maps.read_slot(config.policy));
    let mut diffs = slot_diff(&want.mesh, &have_mesh, policy);
    diffs.extend(slot_diff(&want.own, &have_own, policy));
    if (config.flags & pod_flags::INCLUSION != 0) != want.own.inclusion {
        diffs.push("POD_CONFIG's inclusion flag is wrong".into());
    }
    if config.outbound_port != settings.outbound_port || config.inbound_port != settings.inbound_port || config.proxy_uid != settings.proxy_uid {
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
                n(|e| e.excluded_cidrs.len(), "excluded CIDRs"),
                n(|e| e.included_cidrs.len(), "included CIDRs"),
                n(|e| e.excluded_ports.len(), "excluded outbound ports"),
                n(|e| e.inbound_excluded_ports.len(), "excluded inbound ports"),
                n(|e| e.excluded_ifaces.len(), "excluded interfaces"),
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
    let cidr = |(a, l): &([u8; 4], u8)| format!("{}/{l}", std::net::Ipv4Addr::from(*a));
    for c in want.excluded_cidrs.iter().filter(|c| !have.excluded_cidrs.contains(c)) {
        diffs.push(format!("EXCLUDED_CIDRS lacks {}", cidr(c)));
    }
    for c in want.included_cidrs.iter().filter(|c| !have.included_cidrs.contains(c)) {
        diffs.push(format!("INCLUDED_CIDRS lacks {}", cidr(c)));
    }
    for a in want.local_addrs.iter().filter(|a| !have.local_addrs.contains(a)) {
        diffs.push(format!("LOCAL_ADDRS lacks {}", std::net::Ipv4Addr::from(*a)));
    }
    for i in want.excluded_ifaces.iter().filter(|i| !have.excluded_ifaces.contains(i)) {
        diffs.push(format!("EXCLUDED_IFACES lacks ifindex {i}"));
    }
    for r in want.routes.iter().filter(|r| !have.routes.contains(r)) {
        diffs.push(format!("IFACE_ROUTES lacks {}/{}", std::net::Ipv4Addr::from(r.0), r.1));
    }
    let count = |e: &SlotEntries| {
        e.excluded_ports.len() + e.inbound_excluded_ports.len() + e.excluded_cidrs.len() + e.included_cidrs.len() + e.excluded_ifaces.len()
    };
    if count(have) > count(want) {
        diffs.push("the kernel holds entries the lists don't have".into());
    }
    diffs
}

/// The pod's nat table against the rules the lists give: per chain, the
/// same number of rules, and the jumps into our chains.
fn check_iptables(pod: &str, spec: &PodSpec, policy: &PodPolicy, net: &PodNet, settings: &crate::ebpf::maps::ProxySettings) -> Check {
    const WHAT: &str = "iptables rules match the effective lists";
    const FIX: &str = "`redirect-agent reload` re-applies every pod's rules";
    let ip = net.addrs.first().map_or(PodIp::ShellVariable, |a| PodIp::Addr(std::net::IpAddr::V4(*a)));
    let input = iptables::rules::restore_input(policy, settings, Family::V4, ip);
    let count = |text: &str, chain: &str| {
        text.lines().filter(|l| l.starts_with(&format!("-A {chain} ")) || l.starts_with(&format!("-I {chain} "))).count()
    };
    let saved = match iptables::apply::save(&spec.netns, Family::V4).context("iptables-save") {
        Ok(s) => s,
        Err(e) => return Check::fail(pod, WHAT, format!("{e:#}"), "install iptables"),
    };
    let mut diffs = Vec::new();
    for chain in iptables::rules::CHAINS.iter().chain(["PREROUTING", "OUTPUT"].iter()) {
        let want = count(&input, chain);
        let have = if chain.starts_with("fsm_") {
            count(&saved, chain)
        } else {
            saved.lines().filter(|l| l.starts_with(&format!("-A {chain} ")) && (l.contains("-j fsm_") || l.contains("-j DNAT"))).count()
        };
        if want != have {
            diffs.push(format!("{chain}: {have} of our rules, expected {want}"));
        }
    }
    if diffs.is_empty() {
        Check::pass(pod, WHAT, "every chain holds the expected rules".into())
    } else {
        Check::fail(pod, WHAT, diffs.join("; "), FIX)
    }
}
