//! Pods served by the eBPF programs: their links pinned per pod, their
//! policies in the shared maps, the decision log, and each pod's sockops
//! program attached exactly while it is needed.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use anyhow::Context as _;
use redirect_common::{
    addr::Ip6,
    maps::{PodId, PodIps},
};

use super::handler::{Install, PodHandler};
use crate::{
    config::{LocalProxyMode, MeshConfig},
    dataplane::Dataplane,
    ebpf::{
        decision_log::DecisionLog,
        features,
        maps::{Listeners, SharedMaps},
        pins::Pins,
        policy_entries::PodEntries,
        prewarm::Prewarm,
        programs,
    },
    netns,
    pod::Pod,
    settings::ProxySettings,
};

/// The eBPF dataplane's user-space half, when the kernel can run it.
pub struct EbpfPods {
    pub(super) pins: Pins,
    pub(super) maps: SharedMaps,
    /// Decision logs of every pod's programs (one pinned ring buffer).
    pub(super) decisions: DecisionLog,
    /// The cgroup hooks' programs, loaded once for every pod.
    shared: programs::Shared,
    /// Shared maps were replaced at start (their layout changed), or an
    /// older agent's maps removed: every pod's programs still use the old
    /// ones until attached again.
    pub(super) reattach_all: bool,
    /// Pods whose links still run other programs than this agent's: given
    /// these at their next install, once their entries are written.
    pub(super) reattach_pending: std::collections::BTreeSet<PodId>,
    /// Pods whose sockops could not be attached or detached (logged once).
    sockops_failing: HashSet<PodId>,
    /// The next enrolments' own programs, verified ahead.
    pub(super) prewarm: Prewarm,
}

impl EbpfPods {
    /// Loads the programs and opens the pinned maps (replacing those whose
    /// layout changed), removing pinned maps this agent doesn't know.
    /// `tags`: this agent's programs' (the probe's); pods whose links run
    /// others (an earlier release's) are given these at the start's
    /// reconcile, in place.
    pub fn open(pins: Pins, may_mount: bool, tags: &programs::Tags) -> anyhow::Result<Self> {
        pins.prepare(may_mount)?;
        let removed = pins.remove_unknown_maps(&redirect_common::maps::names::SHARED)?;
        let outdated = programs::outdated(&pins, tags)?;
        if let Some((pod, which)) = outdated.first() {
            log::info!(
                "{} pod(s) run other programs than this agent's (pod {pod}: {}): replacing them in place",
                outdated.len(),
                which.join(", ")
            );
        }
        let (mut object, replaced) = programs::load_replacing_changed_maps(&pins)?;
        let decisions = DecisionLog::open(&mut object)?;
        let maps = SharedMaps::open(&mut object)?;
        let shared = programs::Shared::load(&mut object, &pins)?;
        let prewarm = Prewarm::start(pins.clone());
        let reattach_all = removed || !replaced.is_empty() || !outdated.is_empty();
        Ok(EbpfPods {
            pins,
            maps,
            decisions,
            shared,
            reattach_all,
            reattach_pending: Default::default(),
            sockops_failing: HashSet::new(),
            prewarm,
        })
    }

    /// Replaces the pod's programs with new instances of this agent's, on
    /// the maps it has now (see `programs::load_replacing_changed_maps`).
    pub fn reattach(&mut self, id: PodId, pod: &Pod) -> anyhow::Result<()> {
        programs::attach(&self.pins, id, &pod.cgroup_path()?, &pod.netns, None, &self.shared)
    }

    /// Writes the MeshConfig's lists into their shared slot if they changed:
    /// once per change, before the pods are pointed at it by `install`.
    pub fn begin_mesh(&mut self, mesh: &MeshConfig) -> anyhow::Result<()> {
        self.maps.begin_mesh(&PodEntries::mesh(mesh))
    }

    /// Points a pod whose install failed at the MeshConfig's new lists
    /// (`SharedMaps::follow_mesh`).
    pub fn follow_mesh(&mut self, id: PodId) -> anyhow::Result<()> {
        self.maps.follow_mesh(id)
    }

    /// Every pod points at the MeshConfig's new slot: clears the old one.
    pub fn finish_mesh(&mut self) {
        self.maps.finish_mesh();
    }

    /// Detaches the programs and clears the map entries of every pod that
    /// is not `enrolled` (leftovers of a pod dropped while the agent was
    /// away).
    pub fn remove_unknown(&mut self, enrolled: impl Fn(PodId) -> bool) -> anyhow::Result<()> {
        for id in self.pins.pinned_pods()? {
            if !enrolled(id) {
                programs::detach(&self.pins, id)?;
            }
        }
        for id in self.maps.pods() {
            if !enrolled(id) {
                self.maps.remove(id);
            }
        }
        Ok(())
    }

    /// A new pod starts from zero (its id may be a removed pod's).
    pub fn reset_counters(&mut self, id: PodId) -> anyhow::Result<()> {
        self.maps.reset_counters(id)
    }

    /// Makes the next install write the pod's entries even where nothing
    /// changed (repairs maps changed behind the agent's back).
    pub fn force_rewrite(&mut self, id: PodId) {
        self.maps.force_rewrite(id);
    }

    /// Registers the pod's proxy sockets that already listen on the inbound
    /// port (found by the agent, not by sockops). Returns what is registered.
    fn register_running_listener(&mut self, id: PodId, netns: &Path, cgroup: &Path, port: u16) -> anyhow::Result<Listeners> {
        use std::os::fd::AsFd as _;
        for (v6, socket) in crate::netns::duplicate_listeners(netns, cgroup, port)? {
            self.maps.set_listener(id, v6, socket.as_fd())?;
        }
        Ok(self.maps.listeners(id))
    }

    /// Keeps each eBPF pod's sockops program attached exactly while the pod
    /// needs it (`programs::sockops_needed`): detached once its proxy's
    /// inbound listener is registered, attached again when that listener
    /// closes (a restarting proxy), so that the next `listen()` registers
    /// at once; a proxy that listened again before this tick is looked for
    /// right after attaching. Runs every tick (1 s).
    pub fn watch_listeners(&mut self, pods: &BTreeMap<PodId, Pod>, node: &ProxySettings) {
        let registered = self.maps.all_listeners();
        for (id, pod) in pods.iter().filter(|(_, p)| p.dataplane == Dataplane::Ebpf) {
            let settings = pod.settings(node);
            let serving = registered.get(id).is_some_and(|l| l.serve(self.ipv6(*id)));
            let needed = programs::sockops_needed(settings.fast_path, settings.inbound, serving);
            if needed == programs::has_sockops(&self.pins, *id) {
                self.sockops_failing.remove(id);
                continue;
            }
            let result = (|| {
                let cg = pod.cgroup_path()?;
                programs::set_sockops(&self.pins, *id, &cg, needed)?;
                if needed && settings.inbound && !serving {
                    self.register_running_listener(*id, &pod.netns, &cg, settings.inbound_port)?;
                }
                anyhow::Ok(())
            })();
            match result {
                Ok(()) => log::debug!("pod {}: sockops {}", pod.name, if needed { "attached" } else { "detached" }),
                // Once per pod until it works again, not every second.
                Err(e) if self.sockops_failing.insert(*id) => {
                    log::warn!("pod {}: {} sockops: {e:#}", pod.name, if needed { "attaching" } else { "detaching" })
                }
                Err(_) => {}
            }
        }
    }
}

/// Where the proxy's loopback connections go in `localProxyMode: PodIP`:
/// the pod IP of each family it intercepts, which must exist (as the
/// iptables dataplane needs it for its DNAT rule). `None` in `Localhost`.
fn pod_ips(cx: &Install<'_>) -> anyhow::Result<Option<PodIps>> {
    if cx.mesh.local_proxy_mode != LocalProxyMode::PodIP {
        return Ok(None);
    }
    let ip = |v6: bool| cx.net.pod_ip_for_local_proxy(v6, &cx.pod.name);
    let v4 = match ip(false)? {
        std::net::IpAddr::V4(a) => a.octets(),
        std::net::IpAddr::V6(_) => unreachable!("pod_ip(false) is IPv4"),
    };
    let v6 = match cx.ipv6 {
        true => match ip(true)? {
            std::net::IpAddr::V6(a) => Ip6::from_octets(a.octets()),
            std::net::IpAddr::V4(_) => unreachable!("pod_ip(true) is IPv6"),
        },
        false => Ip6::UNSPECIFIED,
    };
    Ok(Some(PodIps { v4, v6 }))
}

impl PodHandler for EbpfPods {
    fn install(&mut self, cx: &Install<'_>) -> anyhow::Result<()> {
        let Install { id, pod, net, settings, ipv6, .. } = cx;
        let (id, ipv6) = (*id, *ipv6);
        let cg = pod.cgroup_path()?;
        if !cx.mesh.network_interface_exclusions.is_empty() && !features::sees_ingress_interface() {
            log::warn!(
                "pod {}: this kernel can't tell eBPF the interface of arrival: inbound interface exclusions are not honoured",
                pod.name
            );
        }
        // Nothing changes for a pod over its caps: it keeps what it had.
        let own = PodEntries::own(cx.mesh, &pod.lists, net, ipv6);
        own.within_pod_caps().with_context(|| format!("pod {}", pod.name))?;
        // The route first: connect6 redirects IPv6 only once the pod's
        // config says so, and sends it into this prefix.
        if ipv6 && !net.handover_route {
            netns::set_handover_route(&pod.netns, true)
                .with_context(|| format!("pod {}: intercepting its IPv6 ({:?})", pod.name, settings.ipv6))?;
        }
        let pod_ips = pod_ips(cx)?;
        self.maps.apply(id, own, settings)?;
        self.maps.set_pod_ips(id, pod_ips)?;
        if !ipv6 && net.handover_route {
            netns::set_handover_route(&pod.netns, false)?;
        }
        let misplaced = programs::misplaced(&self.pins, id, &cg, &pod.netns);
        if !misplaced.is_empty() {
            log::warn!(
                "pod {}: {} attached to a cgroup or netns that is gone (made again under the same path): attaching to the new one",
                pod.name,
                misplaced.join(", ")
            );
        }
        if !programs::is_attached(&self.pins, id) || !misplaced.is_empty() {
            let prepared = self.prewarm.take(id);
            programs::attach(&self.pins, id, &cg, &pod.netns, prepared, &self.shared)?;
        }
        let mut listeners = self.maps.listeners(id);
        // A proxy that was listening before it was enrolled.
        if cx.find_listener && settings.inbound && !listeners.serve(ipv6) {
            listeners = self.register_running_listener(id, &pod.netns, &cg, settings.inbound_port)?;
        }
        let needed = programs::sockops_needed(settings.fast_path, settings.inbound, listeners.serve(ipv6));
        programs::set_sockops(&self.pins, id, &cg, needed)
    }

    fn uninstall(&mut self, id: PodId, pod: &Pod) -> anyhow::Result<()> {
        programs::detach(&self.pins, id)?;
        self.maps.remove(id);
        self.sockops_failing.remove(&id);
        // Whether or not its IPv6 was intercepted: a route left from an
        // interrupted install goes too.
        if pod.netns.exists() && netns::pod_net(&pod.netns).is_ok_and(|n| n.handover_route) {
            netns::set_handover_route(&pod.netns, false)?;
        }
        Ok(())
    }

    fn attached(&self, id: PodId) -> bool {
        programs::is_attached(&self.pins, id)
    }

    fn ipv6(&self, id: PodId) -> bool {
        self.maps.written(id).is_some_and(|e| e.ipv6)
    }
}
