//! Writing pods' policies into the shared maps, one whole policy at a time.
//!
//! Each pod has two policy slots (see `redirect_common::maps`). A change is
//! written into the idle slot, then `POD_CONFIG` is switched to it in one
//! map update, then the old slot is cleared: a connection sees the old or
//! the new policy, never a mix. If the new slot can't be written (a map is
//! full), it is cleared again and the pod keeps its old policy.

use std::collections::HashMap as StdHashMap;

use anyhow::{Context as _, anyhow};
use redirect_common::maps::{capacity, counter};
use aya::maps::{HashMap, Map, MapData, lpm_trie::{Key, LpmTrie}};
use ipnet::IpNet;
use redirect_common::maps::{
    ConnKey, List, MESH_OWNER, OrigDst, PodConfig, PodId, PolicyAddr, PolicyIface, PolicyId, PolicyPort, direction,
    lpm_prefix_len, names, pod_flags, policy_id,
};

use crate::{
    config::{Cidr, MeshConfig, Port, annotations::PodAnnotations},
    netns::PodNet,
};

/// Settings that come from the agent's own configuration, not the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxySettings {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub log_decisions: bool,
    /// Steer inbound connections to the inbound port.
    #[serde(default = "yes")]
    pub inbound: bool,
    /// Splice local hops (app ↔ proxy) with sk_msg instead of TCP/IP.
    #[serde(default)]
    pub fast_path: bool,
}

fn yes() -> bool {
    true
}

impl Default for ProxySettings {
    fn default() -> Self {
        use redirect_common::defaults::*;
        ProxySettings {
            outbound_port: OUTBOUND_PORT,
            inbound_port: INBOUND_PORT,
            proxy_uid: PROXY_UID,
            log_decisions: false,
            inbound: true,
            fast_path: false,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

/// What is written for one pod, in map terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotEntries {
    pub local_addrs: Vec<[u8; 4]>,
    pub excluded_cidrs: Vec<([u8; 4], u8)>,
    pub included_cidrs: Vec<([u8; 4], u8)>,
    pub excluded_ports: Vec<u16>,
    pub inbound_excluded_ports: Vec<u16>,
    /// Interfaces of the pod in `networkInterfaceExclusionList`, by index.
    pub excluded_ifaces: Vec<u32>,
    /// The pod's routes: (destination, prefix, device excluded).
    pub routes: Vec<([u8; 4], u8, bool)>,
    /// The inclusion list is non-empty (in any family): only its CIDRs are
    /// redirected, and an IPv6-only list redirects no IPv4 destination.
    pub inclusion: bool,
}

impl SlotEntries {
    /// Whether `list` has an entry a lookup could match (see
    /// `redirect_common::maps::List`).
    pub fn holds(&self, list: List) -> bool {
        match list {
            List::ExcludedCidrs => !self.excluded_cidrs.is_empty(),
            List::IncludedCidrs => !self.included_cidrs.is_empty(),
            List::OutboundPorts => !self.excluded_ports.is_empty(),
            List::InboundPorts => !self.inbound_excluded_ports.is_empty(),
            List::ExcludedRoutes => self.routes.iter().any(|(_, _, excluded)| *excluded),
            List::ExcludedIfaces => !self.excluded_ifaces.is_empty(),
        }
    }
}

/// A pod's policy in map terms: the MeshConfig's part (shared by every pod)
/// and the pod's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodEntries {
    pub mesh: SlotEntries,
    pub own: SlotEntries,
}

impl PodEntries {
    /// The MeshConfig's part, once for every pod.
    pub fn mesh(mesh: &MeshConfig) -> SlotEntries {
        SlotEntries::lists(
            &mesh.outbound_ip_range_exclusions,
            &mesh.outbound_ip_range_inclusions,
            &mesh.outbound_port_exclusions,
            &mesh.inbound_port_exclusions,
        )
    }

    /// The pod's own part: its annotations' entries (an entry the MeshConfig
    /// has too is harmless: the programs look in both slots), its addresses,
    /// excluded interfaces and routes. Linear in the pod's own lists, so a
    /// MeshConfig change costs little per pod however long its lists are.
    pub fn own(mesh: &MeshConfig, pod: &PodAnnotations, net: &PodNet) -> SlotEntries {
        let mut own = SlotEntries::lists(
            &pod.outbound_ip_range_exclusions,
            &pod.outbound_ip_range_inclusions,
            &pod.outbound_port_exclusions,
            &pod.inbound_port_exclusions,
        );
        let ifaces: Vec<&str> = mesh.network_interface_exclusions.iter().map(|i| i.as_str()).collect();
        own.pod_net(&ifaces, net);
        own.inclusion = !mesh.outbound_ip_range_inclusions.is_empty() || !pod.outbound_ip_range_inclusions.is_empty();
        own
    }

    pub fn new(mesh: &MeshConfig, pod: &PodAnnotations, net: &PodNet) -> Self {
        PodEntries { mesh: Self::mesh(mesh), own: Self::own(mesh, pod, net) }
    }
}

impl SlotEntries {
    /// The IPv4 part of the lists (the eBPF hooks are IPv4).
    fn lists(excluded: &[Cidr], included: &[Cidr], out_ports: &[Port], in_ports: &[Port]) -> Self {
        let v4 = |cidrs: &[Cidr]| {
            let mut out: Vec<([u8; 4], u8)> = cidrs
                .iter()
                .filter_map(|c| match c.net.trunc() {
                    IpNet::V4(n) => Some((n.addr().octets(), n.prefix_len())),
                    IpNet::V6(_) => None,
                })
                .collect();
            out.sort();
            out.dedup();
            out
        };
        let ports = |list: &[Port]| {
            let mut ports: Vec<u16> = list.iter().map(|p| p.get()).collect();
            ports.sort();
            ports.dedup();
            ports
        };
        SlotEntries {
            excluded_cidrs: v4(excluded),
            included_cidrs: v4(included),
            excluded_ports: ports(out_ports),
            inbound_excluded_ports: ports(in_ports),
            ..SlotEntries::default()
        }
    }

    /// What belongs to the pod's network namespace: addresses, excluded
    /// interfaces by index, routes.
    fn pod_net(&mut self, excluded_ifaces: &[&str], net: &PodNet) {
        let excluded = |name: &str| excluded_ifaces.contains(&name);
        let mut routes: Vec<([u8; 4], u8, bool)> =
            net.routes.iter().map(|r| (r.dst.octets(), r.prefix_len, excluded(&r.iface))).collect();
        routes.sort();
        // Two routes to one prefix (metrics): the kernel uses the first; so do we.
        routes.dedup_by_key(|r| (r.0, r.1));
        let mut excluded_ifaces: Vec<u32> =
            net.ifaces.iter().filter(|(name, _)| excluded(name)).map(|(_, index)| *index).collect();
        excluded_ifaces.sort();
        self.local_addrs = net.addrs.iter().map(|a| a.octets()).collect();
        self.excluded_ifaces = excluded_ifaces;
        // Only routes matter when some device is excluded.
        self.routes = if routes.iter().any(|r| r.2) { routes } else { Vec::new() };
    }
}

pub struct SharedMaps {
    pod_config: HashMap<MapData, PodId, PodConfig>,
    local_addrs: HashMap<MapData, PolicyAddr, u8>,
    excluded_cidrs: LpmTrie<MapData, PolicyAddr, u8>,
    included_cidrs: LpmTrie<MapData, PolicyAddr, u8>,
    excluded_ports: HashMap<MapData, PolicyPort, u8>,
    excluded_ifaces: HashMap<MapData, PolicyIface, u8>,
    iface_routes: LpmTrie<MapData, PolicyAddr, u8>,
    proxy_listeners: aya::maps::SockHash<MapData, PodId>,
    /// An LRU hash in the kernel; aya's `HashMap` reads both kinds.
    inbound_orig: HashMap<MapData, ConnKey, OrigDst>,
    fast_path_state: HashMap<MapData, ConnKey, u8>,
    counters: aya::maps::PerCpuArray<MapData, u64>,
    /// What each pod's own active slot holds, so a change deletes exactly that.
    written: StdHashMap<PodId, (PolicyId, SlotEntries)>,
    /// The MeshConfig's active slot and what it holds.
    mesh: Option<(PolicyId, SlotEntries)>,
    /// The MeshConfig's previous slot, until every pod has left it.
    retired_mesh: Option<(PolicyId, SlotEntries)>,
    /// Pods whose next `apply` rewrites their policy even if unchanged.
    stale: std::collections::HashSet<PodId>,
    /// The next `begin_mesh` rewrites the MeshConfig's slot even if unchanged.
    mesh_stale: bool,
}

fn take(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

impl SharedMaps {
    /// Takes the shared maps out of a loaded (pinned-map) instance and reads
    /// back what earlier agents wrote.
    pub fn open(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut maps = SharedMaps {
            pod_config: take(ebpf, names::POD_CONFIG)?.try_into()?,
            local_addrs: take(ebpf, names::LOCAL_ADDRS)?.try_into()?,
            excluded_cidrs: take(ebpf, names::EXCLUDED_CIDRS)?.try_into()?,
            included_cidrs: take(ebpf, names::INCLUDED_CIDRS)?.try_into()?,
            excluded_ports: take(ebpf, names::EXCLUDED_PORTS)?.try_into()?,
            excluded_ifaces: take(ebpf, names::EXCLUDED_IFACES)?.try_into()?,
            iface_routes: take(ebpf, names::IFACE_ROUTES)?.try_into()?,
            proxy_listeners: take(ebpf, names::PROXY_LISTENERS)?.try_into()?,
            inbound_orig: take(ebpf, names::INBOUND_ORIG)?.try_into()?,
            fast_path_state: take(ebpf, names::FAST_PATH_STATE)?.try_into()?,
                    counters: take(ebpf, names::COUNTERS)?.try_into()?,
            written: StdHashMap::new(),
            mesh: None,
            retired_mesh: None,
            stale: Default::default(),
            mesh_stale: false,
        };
        maps.recover()?;
        Ok(maps)
    }

    /// Rebuilds `written` and the MeshConfig slot from the kernel (after an
    /// agent restart), and clears slots nothing uses (a change interrupted
    /// half-way).
    fn recover(&mut self) -> anyhow::Result<()> {
        let configs: StdHashMap<PodId, PodConfig> = self.pod_config.iter().filter_map(Result::ok).collect();
        let mut slots = self.read_slots(|_| true);
        // The MeshConfig slot most pods point to is the active one.
        let mut mesh_refs: StdHashMap<PolicyId, usize> = StdHashMap::new();
        for c in configs.values() {
            *mesh_refs.entry(c.mesh_policy).or_default() += 1;
        }
        let mut by_refs: Vec<(PolicyId, usize)> = mesh_refs.into_iter().collect();
        by_refs.sort_by_key(|(slot, n)| (std::cmp::Reverse(*n), *slot));
        let take = |slots: &mut StdHashMap<PolicyId, SlotEntries>, id: PolicyId| (id, slots.remove(&id).unwrap_or_default());
        self.mesh = by_refs.first().map(|(id, _)| take(&mut slots, *id));
        self.retired_mesh = by_refs.get(1).map(|(id, _)| take(&mut slots, *id));
        for (pod, c) in &configs {
            let mut entries = slots.remove(&c.policy).unwrap_or_default();
            entries.inclusion = c.flags & pod_flags::INCLUSION != 0;
            self.written.insert(*pod, (c.policy, entries));
        }
        for (slot, entries) in slots {
            self.delete(slot, &entries);
        }
        Ok(())
    }

    /// Makes `entries` the MeshConfig's lists: written into the idle slot;
    /// pods move to it as `apply` rewrites their config; `finish_mesh`
    /// clears the old one once every pod has moved.
    pub fn begin_mesh(&mut self, entries: &SlotEntries) -> anyhow::Result<()> {
        if self.mesh.as_ref().is_some_and(|(_, e)| e == entries) && !self.mesh_stale {
            return Ok(());
        }
        self.mesh_stale = false;
        // Going back to the slot being retired (a change that failed half-way).
        if let Some((slot, e)) = self.retired_mesh.take() {
            if e == *entries && self.mesh.as_ref().is_some_and(|(_, cur)| cur != entries) {
                self.retired_mesh = self.mesh.take();
                self.mesh = Some((slot, e));
                return Ok(());
            }
            self.delete(slot, &e);
        }
        let next = match &self.mesh {
            Some((slot, _)) => policy_id(MESH_OWNER, (slot & 1) ^ 1),
            None => policy_id(MESH_OWNER, 0),
        };
        if let Err(e) = self.write(next, entries) {
            self.delete(next, entries);
            return Err(e);
        }
        self.retired_mesh = self.mesh.replace((next, entries.clone()));
        Ok(())
    }

    /// Clears the previous MeshConfig slot once no pod points to it.
    pub fn finish_mesh(&mut self) {
        let Some((slot, entries)) = self.retired_mesh.take() else { return };
        if self.pod_config.iter().filter_map(Result::ok).any(|(_, c)| c.mesh_policy == slot) {
            self.retired_mesh = Some((slot, entries));
            return;
        }
        self.delete(slot, &entries);
    }

    /// What the MeshConfig's active slot holds.
    pub fn mesh_entries(&self) -> Option<&SlotEntries> {
        self.mesh.as_ref().map(|(_, e)| e)
    }

    /// The MeshConfig's active slot.
    pub fn mesh_slot(&self) -> Option<PolicyId> {
        self.mesh.as_ref().map(|(slot, _)| *slot)
    }

    pub fn pods(&self) -> Vec<PodId> {
        self.pod_config.keys().filter_map(Result::ok).collect()
    }

    pub fn pod_config(&self, pod: PodId) -> Option<PodConfig> {
        self.pod_config.get(&pod, 0).ok()
    }

    pub fn written(&self, pod: PodId) -> Option<&SlotEntries> {
        self.written.get(&pod).map(|(_, e)| e)
    }

    /// Writes `entries` as the pod's own policy and points it at the
    /// MeshConfig's active slot (`begin_mesh` first), switching over in one
    /// update of its config.
    pub fn apply(&mut self, pod: PodId, entries: SlotEntries, settings: &ProxySettings) -> anyhow::Result<()> {
        let current = self.pod_config(pod);
        if let (Some(cfg), Some((_, written))) = (current, self.written.get(&pod)) {
            if *written == entries && !self.stale.contains(&pod) {
                let config = self.config_for(cfg.policy, &entries, settings);
                if config == cfg {
                    return Ok(());
                }
                // Only the config changed (the MeshConfig's slot, settings).
                return self.pod_config.insert(&pod, &config, 0).context("POD_CONFIG");
            }
        }
        let next_slot = match current {
            Some(c) => policy_id(pod, (c.policy & 1) ^ 1),
            None => policy_id(pod, 0),
        };
        if let Err(e) = self.write(next_slot, &entries) {
            self.delete(next_slot, &entries);
            return Err(e);
        }
        let config = self.config_for(next_slot, &entries, settings);
        if let Err(e) = self.pod_config.insert(&pod, &config, 0) {
            self.delete(next_slot, &entries);
            return Err(e).context("POD_CONFIG is full");
        }
        if let Some((old_slot, old)) = self.written.insert(pod, (next_slot, entries)) {
            self.delete(old_slot, &old);
        }
        self.stale.remove(&pod);
        Ok(())
    }

    fn config_for(&self, slot: PolicyId, entries: &SlotEntries, s: &ProxySettings) -> PodConfig {
        let mesh_policy = self.mesh_slot().unwrap_or(policy_id(MESH_OWNER, 0));
        let mut flags = 0;
        if entries.inclusion {
            flags |= pod_flags::INCLUSION;
        }
        if s.log_decisions {
            flags |= pod_flags::LOG_DECISIONS;
        }
        if s.inbound {
            flags |= pod_flags::INBOUND;
        }
        if s.fast_path {
            flags |= pod_flags::FAST_PATH;
        }
        let mesh = self.mesh_entries();
        for list in List::ALL {
            if mesh.is_some_and(|m| m.holds(list)) {
                flags |= list.flag(true);
            }
            if entries.holds(list) {
                flags |= list.flag(false);
            }
        }
        PodConfig { policy: slot, mesh_policy, proxy_uid: s.proxy_uid, outbound_port: s.outbound_port, inbound_port: s.inbound_port, flags }
    }

    /// The pod's event counters, summed over CPUs (`redirect_common::maps::counter`).
    pub fn counters(&self, pod: PodId) -> [u64; counter::SLOTS as usize] {
        let mut out = [0u64; counter::SLOTS as usize];
        for (id, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&counter::index(pod, id as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Zeroes a pod id's counters (a new pod may get the id of an old one).
    pub fn reset_counters(&mut self, pod: PodId) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?.get() as usize;
        for id in 0..counter::SLOTS {
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
            self.counters.set(counter::index(pod, id), zeros, 0)?;
        }
        Ok(())
    }

    /// Entries in use and capacity of each map that can fill up.
    pub fn fill(&self) -> Vec<MapFill> {
        let n = |keys: usize, name: &str, capacity: u32| MapFill { map: name.to_owned(), entries: keys, capacity };
        vec![
            n(self.pod_config.keys().count(), names::POD_CONFIG, capacity::PODS),
            n(self.local_addrs.keys().count(), names::LOCAL_ADDRS, capacity::LOCAL_ADDRS),
            n(self.excluded_cidrs.keys().count(), names::EXCLUDED_CIDRS, capacity::CIDRS),
            n(self.included_cidrs.keys().count(), names::INCLUDED_CIDRS, capacity::CIDRS),
            n(self.excluded_ports.keys().count(), names::EXCLUDED_PORTS, capacity::PORTS),
            n(self.excluded_ifaces.keys().count(), names::EXCLUDED_IFACES, capacity::IFACES),
            n(self.iface_routes.keys().count(), names::IFACE_ROUTES, capacity::ROUTES),
            n(self.inbound_orig.keys().count(), names::INBOUND_ORIG, capacity::INBOUND_CONNECTIONS),
            n(self.fast_path_state.keys().count(), names::FAST_PATH_STATE, capacity::FAST_PATH_DECISIONS),
        ]
    }

    /// What the kernel holds in a policy slot right now (not what the agent
    /// believes it wrote): for diagnostics.
    pub fn read_slot(&self, slot: PolicyId) -> SlotEntries {
        self.read_slots(|p| p == slot).remove(&slot).unwrap_or_default()
    }

    /// The kernel's entries of every slot `wanted` accepts, grouped by slot
    /// in one pass over each map.
    fn read_slots(&self, wanted: impl Fn(PolicyId) -> bool) -> StdHashMap<PolicyId, SlotEntries> {
        let mut slots: StdHashMap<PolicyId, SlotEntries> = StdHashMap::new();
        for k in self.local_addrs.keys().filter_map(Result::ok) {
            if wanted(k.policy) {
                slots.entry(k.policy).or_default().local_addrs.push(k.addr);
            }
        }
        let lpm = |t: &LpmTrie<MapData, PolicyAddr, u8>, slots: &mut StdHashMap<PolicyId, SlotEntries>, put: fn(&mut SlotEntries, [u8; 4], u8, u8)| {
            for (k, v) in t.iter().filter_map(Result::ok) {
                if wanted(k.data().policy) {
                    put(slots.entry(k.data().policy).or_default(), k.data().addr, (k.prefix_len() - 32) as u8, v);
                }
            }
        };
        lpm(&self.excluded_cidrs, &mut slots, |e, a, l, _| e.excluded_cidrs.push((a, l)));
        lpm(&self.included_cidrs, &mut slots, |e, a, l, _| e.included_cidrs.push((a, l)));
        lpm(&self.iface_routes, &mut slots, |e, a, l, v| e.routes.push((a, l, v == 1)));
        for k in self.excluded_ports.keys().filter_map(Result::ok) {
            if wanted(k.policy) {
                let e = slots.entry(k.policy).or_default();
                match k.direction {
                    direction::INBOUND => e.inbound_excluded_ports.push(k.port),
                    _ => e.excluded_ports.push(k.port),
                }
            }
        }
        for k in self.excluded_ifaces.keys().filter_map(Result::ok) {
            if wanted(k.policy) {
                slots.entry(k.policy).or_default().excluded_ifaces.push(k.ifindex);
            }
        }
        for e in slots.values_mut() {
            e.local_addrs.sort();
            e.excluded_cidrs.sort();
            e.included_cidrs.sort();
            e.routes.sort();
            e.excluded_ports.sort();
            e.inbound_excluded_ports.sort();
            e.excluded_ifaces.sort();
        }
        slots
    }

    /// Kernel-side answers of the decision's questions for one pod.
    pub fn lookup_local(&self, slot: PolicyId, addr: [u8; 4]) -> bool {
        self.local_addrs.get(&PolicyAddr { policy: slot, addr }, 0).is_ok()
    }

    pub fn lookup_cidr(&self, included: bool, slot: PolicyId, addr: [u8; 4]) -> bool {
        let trie = if included { &self.included_cidrs } else { &self.excluded_cidrs };
        trie.get(&lpm_key(slot, addr, 32), 0).is_ok()
    }

    pub fn lookup_route_excluded(&self, slot: PolicyId, addr: [u8; 4]) -> bool {
        self.iface_routes.get(&lpm_key(slot, addr, 32), 0).is_ok_and(|v| v == 1)
    }

    pub fn lookup_port(&self, slot: PolicyId, port: u16, direction: u16) -> bool {
        self.excluded_ports.get(&PolicyPort { policy: slot, port, direction }, 0).is_ok()
    }

    pub fn lookup_iface(&self, slot: PolicyId, ifindex: u32) -> bool {
        self.excluded_ifaces.get(&PolicyIface { policy: slot, ifindex }, 0).is_ok()
    }

    /// Makes the next `apply` rewrite the pod's policy even if unchanged
    /// (repairs entries removed behind the agent's back).
    pub fn force_rewrite(&mut self, pod: PodId) {
        self.stale.insert(pod);
        self.mesh_stale = true;
    }

    /// Whether the pod's proxy listener is known to the kernel.
    pub fn has_listener(&self, pod: PodId) -> bool {
        // (A sockhash's values can't be read back from user space; its keys can.)
        self.proxy_listeners.keys().filter_map(Result::ok).any(|k| k == pod)
    }

    /// Pods whose proxy listener is known to the kernel (one pass over the
    /// sockhash's keys).
    pub fn listener_pods(&self) -> std::collections::HashSet<PodId> {
        self.proxy_listeners.keys().filter_map(Result::ok).collect()
    }

    /// Registers the pod's proxy listening socket (for sockets that were
    /// listening before the pod was enrolled; later ones register themselves
    /// from sockops).
    pub fn set_listener(&mut self, pod: PodId, socket: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd as _;
        self.proxy_listeners.insert(&pod, socket.as_raw_fd(), 0).context("PROXY_LISTENERS")
    }

    /// Stops interception for the pod (its config goes first, so its
    /// programs see no pod from then on) and removes its entries.
    pub fn remove(&mut self, pod: PodId) {
        let _ = self.pod_config.remove(&pod);
        let _ = self.proxy_listeners.remove(&pod);
        if let Some((slot, entries)) = self.written.remove(&pod) {
            self.delete(slot, &entries);
        }
    }

    fn write(&mut self, slot: PolicyId, e: &SlotEntries) -> anyhow::Result<()> {
        for addr in &e.local_addrs {
            self.local_addrs
                .insert(&PolicyAddr { policy: slot, addr: *addr }, &1, 0)
                .context("LOCAL_ADDRS is full")?;
        }
        for (addr, len) in &e.excluded_cidrs {
            self.excluded_cidrs
                .insert(&lpm_key(slot, *addr, *len), &1, 0)
                .context("EXCLUDED_CIDRS is full")?;
        }
        for (addr, len) in &e.included_cidrs {
            self.included_cidrs
                .insert(&lpm_key(slot, *addr, *len), &1, 0)
                .context("INCLUDED_CIDRS is full")?;
        }
        for (ports, direction) in [(&e.excluded_ports, direction::OUTBOUND), (&e.inbound_excluded_ports, direction::INBOUND)] {
            for port in ports {
                self.excluded_ports
                    .insert(&PolicyPort { policy: slot, port: *port, direction }, &1, 0)
                    .context("EXCLUDED_PORTS is full")?;
            }
        }
        for ifindex in &e.excluded_ifaces {
            self.excluded_ifaces
                .insert(&PolicyIface { policy: slot, ifindex: *ifindex }, &1, 0)
                .context("EXCLUDED_IFACES is full")?;
        }
        for (addr, len, excluded) in &e.routes {
            self.iface_routes
                .insert(&lpm_key(slot, *addr, *len), &u8::from(*excluded), 0)
                .context("IFACE_ROUTES is full")?;
        }
        Ok(())
    }

    fn delete(&mut self, slot: PolicyId, e: &SlotEntries) {
        // Entries that were never written (a failed write) are simply absent.
        for addr in &e.local_addrs {
            let _ = self.local_addrs.remove(&PolicyAddr { policy: slot, addr: *addr });
        }
        for (addr, len) in &e.excluded_cidrs {
            let _ = self.excluded_cidrs.remove(&lpm_key(slot, *addr, *len));
        }
        for (addr, len) in &e.included_cidrs {
            let _ = self.included_cidrs.remove(&lpm_key(slot, *addr, *len));
        }
        for (ports, direction) in [(&e.excluded_ports, direction::OUTBOUND), (&e.inbound_excluded_ports, direction::INBOUND)] {
            for port in ports {
                let _ = self.excluded_ports.remove(&PolicyPort { policy: slot, port: *port, direction });
            }
        }
        for ifindex in &e.excluded_ifaces {
            let _ = self.excluded_ifaces.remove(&PolicyIface { policy: slot, ifindex: *ifindex });
        }
        for (addr, len, _) in &e.routes {
            let _ = self.iface_routes.remove(&lpm_key(slot, *addr, *len));
        }
    }
}

fn lpm_key(slot: PolicyId, addr: [u8; 4], len: u8) -> Key<PolicyAddr> {
    Key::new(lpm_prefix_len(len), PolicyAddr { policy: slot, addr })
}
