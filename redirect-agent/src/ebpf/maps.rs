//! Writing pods' policies into the shared maps, one whole policy at a time.
//!
//! Each pod has two policy slots (see `redirect_common::maps`). A change is
//! written into the idle slot, then `POD_CONFIG` is switched to it in one
//! map update, then the old slot is cleared: a connection sees the old or
//! the new policy, never a mix. If the new slot can't be written (a map is
//! full), it is cleared again and the pod keeps its old policy.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv6Addr},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{
    HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;
use redirect_common::{
    handover::Handover6,
    maps::{
        ConnKey, ConnKey6, Ip6, List, ListenerKey, MESH_OWNER, OrigDst, OrigDst6, PodConfig, PodId, PolicyAddr, PolicyAddr6, PolicyId,
        PolicyIface, PolicyPort, capacity, counter, direction, lpm_prefix_len, names, pod_flags, policy_id,
    },
};

use crate::{
    config::{Cidr, MeshConfig, Port, annotations::PodAnnotations},
    ipv6::Ipv6Mode,
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
    /// Whose IPv6 is intercepted (`--ipv6`).
    #[serde(default)]
    pub ipv6: Ipv6Mode,
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
            ipv6: Ipv6Mode::default(),
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
    pub local_addrs6: Vec<Ip6>,
    pub excluded_cidrs: Vec<([u8; 4], u8)>,
    pub excluded_cidrs6: Vec<(Ip6, u8)>,
    pub included_cidrs: Vec<([u8; 4], u8)>,
    pub included_cidrs6: Vec<(Ip6, u8)>,
    pub excluded_ports: Vec<u16>,
    pub inbound_excluded_ports: Vec<u16>,
    /// Interfaces of the pod in `networkInterfaceExclusionList`, by index.
    pub excluded_ifaces: Vec<u32>,
    /// The pod's routes: (destination, prefix, device excluded).
    pub routes: Vec<([u8; 4], u8, bool)>,
    pub routes6: Vec<(Ip6, u8, bool)>,
    /// The inclusion list is non-empty (in any family): only its CIDRs are
    /// redirected, and an IPv6-only list redirects no IPv4 destination.
    pub inclusion: bool,
    /// The pod's IPv6 is intercepted (`pod_flags::IPV6`; own slot only).
    pub ipv6: bool,
}

/// One entry of a policy slot in its map: the one table that `write`,
/// `delete` and the read-back of `read_slots` all go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Local(PolicyAddr),
    Local6(PolicyAddr6),
    Cidr { included: bool, key: PolicyAddr, len: u8 },
    Cidr6 { included: bool, key: PolicyAddr6, len: u8 },
    Port(PolicyPort),
    Iface(PolicyIface),
    Route { key: PolicyAddr, len: u8, excluded: bool },
    Route6 { key: PolicyAddr6, len: u8, excluded: bool },
}

impl SlotEntries {
    /// Whether `list` has an entry a lookup could match (see
    /// `redirect_common::maps::List`).
    pub fn holds(&self, list: List) -> bool {
        match list {
            List::ExcludedCidrs => !self.excluded_cidrs.is_empty(),
            List::IncludedCidrs => !self.included_cidrs.is_empty(),
            List::ExcludedCidrs6 => !self.excluded_cidrs6.is_empty(),
            List::IncludedCidrs6 => !self.included_cidrs6.is_empty(),
            List::OutboundPorts => !self.excluded_ports.is_empty(),
            List::InboundPorts => !self.inbound_excluded_ports.is_empty(),
            List::ExcludedRoutes => self.routes.iter().any(|(_, _, excluded)| *excluded),
            List::ExcludedRoutes6 => self.routes6.iter().any(|(_, _, excluded)| *excluded),
            List::ExcludedIfaces => !self.excluded_ifaces.is_empty(),
        }
    }

    /// Every map entry of these lists in `slot`.
    fn entries(&self, slot: PolicyId) -> impl Iterator<Item = Entry> + '_ {
        let v4 = move |addr| PolicyAddr { policy: slot, addr };
        let v6 = move |addr| PolicyAddr6 { policy: slot, addr };
        fn cidrs(slot: PolicyId, included: bool, list: &[([u8; 4], u8)]) -> impl Iterator<Item = Entry> + '_ {
            list.iter().map(move |(addr, len)| Entry::Cidr { included, key: PolicyAddr { policy: slot, addr: *addr }, len: *len })
        }
        fn cidrs6(slot: PolicyId, included: bool, list: &[(Ip6, u8)]) -> impl Iterator<Item = Entry> + '_ {
            list.iter().map(move |(addr, len)| Entry::Cidr6 { included, key: PolicyAddr6 { policy: slot, addr: *addr }, len: *len })
        }
        fn ports(slot: PolicyId, direction: u16, list: &[u16]) -> impl Iterator<Item = Entry> + '_ {
            list.iter().map(move |port| Entry::Port(PolicyPort { policy: slot, port: *port, direction }))
        }
        self.local_addrs
            .iter()
            .map(move |a| Entry::Local(v4(*a)))
            .chain(self.local_addrs6.iter().map(move |a| Entry::Local6(v6(*a))))
            .chain(cidrs(slot, false, &self.excluded_cidrs))
            .chain(cidrs(slot, true, &self.included_cidrs))
            .chain(cidrs6(slot, false, &self.excluded_cidrs6))
            .chain(cidrs6(slot, true, &self.included_cidrs6))
            .chain(ports(slot, direction::OUTBOUND, &self.excluded_ports))
            .chain(ports(slot, direction::INBOUND, &self.inbound_excluded_ports))
            .chain(self.excluded_ifaces.iter().map(move |ifindex| Entry::Iface(PolicyIface { policy: slot, ifindex: *ifindex })))
            .chain(self.routes.iter().map(move |(a, len, excluded)| Entry::Route { key: v4(*a), len: *len, excluded: *excluded }))
            .chain(self.routes6.iter().map(move |(a, len, excluded)| Entry::Route6 { key: v6(*a), len: *len, excluded: *excluded }))
    }

    /// Puts an entry read back from the maps into its list.
    fn add(&mut self, e: Entry) {
        match e {
            Entry::Local(k) => self.local_addrs.push(k.addr),
            Entry::Local6(k) => self.local_addrs6.push(k.addr),
            Entry::Cidr { included: false, key, len } => self.excluded_cidrs.push((key.addr, len)),
            Entry::Cidr { included: true, key, len } => self.included_cidrs.push((key.addr, len)),
            Entry::Cidr6 { included: false, key, len } => self.excluded_cidrs6.push((key.addr, len)),
            Entry::Cidr6 { included: true, key, len } => self.included_cidrs6.push((key.addr, len)),
            Entry::Port(p) if p.direction == direction::INBOUND => self.inbound_excluded_ports.push(p.port),
            Entry::Port(p) => self.excluded_ports.push(p.port),
            Entry::Iface(i) => self.excluded_ifaces.push(i.ifindex),
            Entry::Route { key, len, excluded } => self.routes.push((key.addr, len, excluded)),
            Entry::Route6 { key, len, excluded } => self.routes6.push((key.addr, len, excluded)),
        }
    }

    /// Every list in the order the translation writes them (sorted).
    fn sort(&mut self) {
        self.local_addrs.sort();
        self.local_addrs6.sort();
        self.excluded_cidrs.sort();
        self.included_cidrs.sort();
        self.excluded_cidrs6.sort();
        self.included_cidrs6.sort();
        self.excluded_ports.sort();
        self.inbound_excluded_ports.sort();
        self.excluded_ifaces.sort();
        self.routes.sort();
        self.routes6.sort();
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
    /// excluded interfaces and routes, and whether its IPv6 is intercepted.
    /// Linear in the pod's own lists, so a MeshConfig change costs little
    /// per pod however long its lists are.
    pub fn own(mesh: &MeshConfig, pod: &PodAnnotations, net: &PodNet, ipv6: bool) -> SlotEntries {
        let mut own = SlotEntries::lists(
            &pod.outbound_ip_range_exclusions,
            &pod.outbound_ip_range_inclusions,
            &pod.outbound_port_exclusions,
            &pod.inbound_port_exclusions,
        );
        let ifaces: Vec<&str> = mesh.network_interface_exclusions.iter().map(|i| i.as_str()).collect();
        own.pod_net(&ifaces, net);
        own.inclusion = !mesh.outbound_ip_range_inclusions.is_empty() || !pod.outbound_ip_range_inclusions.is_empty();
        own.ipv6 = ipv6;
        own
    }

    pub fn new(mesh: &MeshConfig, pod: &PodAnnotations, net: &PodNet, ipv6: bool) -> Self {
        PodEntries { mesh: Self::mesh(mesh), own: Self::own(mesh, pod, net, ipv6) }
    }
}

fn ip6(a: &Ipv6Addr) -> Ip6 {
    Ip6::from_octets(a.octets())
}

impl SlotEntries {
    /// The lists, each family's CIDRs into its own maps.
    fn lists(excluded: &[Cidr], included: &[Cidr], out_ports: &[Port], in_ports: &[Port]) -> Self {
        fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
            v.sort();
            v.dedup();
            v
        }
        let v4 = |cidrs: &[Cidr]| {
            sorted(
                cidrs
                    .iter()
                    .filter_map(|c| match c.net.trunc() {
                        IpNet::V4(n) => Some((n.addr().octets(), n.prefix_len())),
                        IpNet::V6(_) => None,
                    })
                    .collect(),
            )
        };
        let v6 = |cidrs: &[Cidr]| {
            sorted(
                cidrs
                    .iter()
                    .filter_map(|c| match c.net.trunc() {
                        IpNet::V6(n) => Some((ip6(&n.addr()), n.prefix_len())),
                        IpNet::V4(_) => None,
                    })
                    .collect(),
            )
        };
        let ports = |list: &[Port]| sorted(list.iter().map(|p| p.get()).collect());
        SlotEntries {
            excluded_cidrs: v4(excluded),
            included_cidrs: v4(included),
            excluded_cidrs6: v6(excluded),
            included_cidrs6: v6(included),
            excluded_ports: ports(out_ports),
            inbound_excluded_ports: ports(in_ports),
            ..SlotEntries::default()
        }
    }

    /// What belongs to the pod's network namespace: addresses, excluded
    /// interfaces by index, routes.
    fn pod_net(&mut self, excluded_ifaces: &[&str], net: &PodNet) {
        let excluded = |name: &str| excluded_ifaces.contains(&name);
        // Two routes to one prefix (metrics): the kernel uses the first; so
        // do we (a stable sort keeps the kernel's order among equals). Only
        // routes matter when some device is excluded.
        fn routes<A: Ord + Copy>(mut r: Vec<(A, u8, bool)>) -> Vec<(A, u8, bool)> {
            r.sort_by_key(|(a, len, _)| (*a, *len));
            r.dedup_by_key(|(a, len, _)| (*a, *len));
            if r.iter().any(|(_, _, excluded)| *excluded) { r } else { Vec::new() }
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for r in &net.routes {
            match r.net.trunc() {
                IpNet::V4(n) => v4.push((n.addr().octets(), n.prefix_len(), excluded(&r.iface))),
                IpNet::V6(n) => v6.push((ip6(&n.addr()), n.prefix_len(), excluded(&r.iface))),
            }
        }
        self.routes = routes(v4);
        self.routes6 = routes(v6);
        let mut excluded_ifaces: Vec<u32> = net.ifaces.iter().filter(|(name, _)| excluded(name)).map(|(_, index)| *index).collect();
        excluded_ifaces.sort();
        self.excluded_ifaces = excluded_ifaces;
        for a in &net.addrs {
            match a {
                IpAddr::V4(a) => self.local_addrs.push(a.octets()),
                IpAddr::V6(a) => self.local_addrs6.push(ip6(a)),
            }
        }
        self.local_addrs.sort();
        self.local_addrs6.sort();
    }
}

/// Which of a pod's inbound listening sockets the kernel knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listeners {
    pub v4: bool,
    /// An AF_INET6 one: IPv6 connections, and IPv4 ones too where it is
    /// dual-stack and no IPv4 one is registered.
    pub v6: bool,
}

impl Listeners {
    /// Whether they serve what the pod's inbound connections need.
    pub fn serve(self, ipv6: bool) -> bool {
        (self.v4 || self.v6) && (!ipv6 || self.v6)
    }
}

pub struct SharedMaps {
    pod_config: HashMap<MapData, PodId, PodConfig>,
    local_addrs: HashMap<MapData, PolicyAddr, u8>,
    local_addrs6: HashMap<MapData, PolicyAddr6, u8>,
    excluded_cidrs: LpmTrie<MapData, PolicyAddr, u8>,
    excluded_cidrs6: LpmTrie<MapData, PolicyAddr6, u8>,
    included_cidrs: LpmTrie<MapData, PolicyAddr, u8>,
    included_cidrs6: LpmTrie<MapData, PolicyAddr6, u8>,
    excluded_ports: HashMap<MapData, PolicyPort, u8>,
    excluded_ifaces: HashMap<MapData, PolicyIface, u8>,
    iface_routes: LpmTrie<MapData, PolicyAddr, u8>,
    iface_routes6: LpmTrie<MapData, PolicyAddr6, u8>,
    proxy_listeners: aya::maps::SockHash<MapData, ListenerKey>,
    /// LRU hashes in the kernel; aya's `HashMap` reads both kinds.
    inbound_orig: HashMap<MapData, ConnKey, OrigDst>,
    inbound_orig6: HashMap<MapData, ConnKey6, OrigDst6>,
    handover6: HashMap<MapData, u64, Handover6>,
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

/// The LPM key of an IPv4 entry: the policy id matches in full
/// (`lpm_prefix_len`), then `len` bits of the address.
fn lpm4(key: PolicyAddr, len: u8) -> Key<PolicyAddr> {
    Key::new(lpm_prefix_len(len), key)
}

fn lpm6(key: PolicyAddr6, len: u8) -> Key<PolicyAddr6> {
    Key::new(lpm_prefix_len(len), key)
}

/// The prefix length of a CIDR in an LPM key read back.
fn cidr_len(key_len: u32) -> u8 {
    (key_len - lpm_prefix_len(0)) as u8
}

impl SharedMaps {
    /// Takes the shared maps out of a loaded (pinned-map) instance and reads
    /// back what earlier agents wrote.
    pub fn open(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut maps = SharedMaps {
            pod_config: take(ebpf, names::POD_CONFIG)?.try_into()?,
            local_addrs: take(ebpf, names::LOCAL_ADDRS)?.try_into()?,
            local_addrs6: take(ebpf, names::LOCAL_ADDRS6)?.try_into()?,
            excluded_cidrs: take(ebpf, names::EXCLUDED_CIDRS)?.try_into()?,
            excluded_cidrs6: take(ebpf, names::EXCLUDED_CIDRS6)?.try_into()?,
            included_cidrs: take(ebpf, names::INCLUDED_CIDRS)?.try_into()?,
            included_cidrs6: take(ebpf, names::INCLUDED_CIDRS6)?.try_into()?,
            excluded_ports: take(ebpf, names::EXCLUDED_PORTS)?.try_into()?,
            excluded_ifaces: take(ebpf, names::EXCLUDED_IFACES)?.try_into()?,
            iface_routes: take(ebpf, names::IFACE_ROUTES)?.try_into()?,
            iface_routes6: take(ebpf, names::IFACE_ROUTES6)?.try_into()?,
            proxy_listeners: take(ebpf, names::PROXY_LISTENERS)?.try_into()?,
            inbound_orig: take(ebpf, names::INBOUND_ORIG)?.try_into()?,
            inbound_orig6: take(ebpf, names::INBOUND_ORIG6)?.try_into()?,
            handover6: take(ebpf, names::HANDOVER6)?.try_into()?,
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
            entries.ipv6 = c.flags & pod_flags::IPV6 != 0;
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
        if let (Some(cfg), Some((_, written))) = (current, self.written.get(&pod))
            && *written == entries
            && !self.stale.contains(&pod)
        {
            let config = self.config_for(cfg.policy, &entries, settings);
            if config == cfg {
                return Ok(());
            }
            // Only the config changed (the MeshConfig's slot, settings).
            return self.pod_config.insert(&pod, &config, 0).context("POD_CONFIG");
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
        if entries.ipv6 {
            flags |= pod_flags::IPV6;
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
            n(self.local_addrs6.keys().count(), names::LOCAL_ADDRS6, capacity::LOCAL_ADDRS),
            n(self.excluded_cidrs.keys().count(), names::EXCLUDED_CIDRS, capacity::CIDRS),
            n(self.excluded_cidrs6.keys().count(), names::EXCLUDED_CIDRS6, capacity::CIDRS),
            n(self.included_cidrs.keys().count(), names::INCLUDED_CIDRS, capacity::CIDRS),
            n(self.included_cidrs6.keys().count(), names::INCLUDED_CIDRS6, capacity::CIDRS),
            n(self.excluded_ports.keys().count(), names::EXCLUDED_PORTS, capacity::PORTS),
            n(self.excluded_ifaces.keys().count(), names::EXCLUDED_IFACES, capacity::IFACES),
            n(self.iface_routes.keys().count(), names::IFACE_ROUTES, capacity::ROUTES),
            n(self.iface_routes6.keys().count(), names::IFACE_ROUTES6, capacity::ROUTES),
            n(self.inbound_orig.keys().count(), names::INBOUND_ORIG, capacity::INBOUND_CONNECTIONS),
            n(self.inbound_orig6.keys().count(), names::INBOUND_ORIG6, capacity::INBOUND_CONNECTIONS),
            n(self.handover6.keys().count(), names::HANDOVER6, capacity::HANDOVER6),
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
        let mut put = |policy: PolicyId, e: Entry| {
            if wanted(policy) {
                slots.entry(policy).or_default().add(e);
            }
        };
        for k in self.local_addrs.keys().filter_map(Result::ok) {
            put(k.policy, Entry::Local(k));
        }
        for k in self.local_addrs6.keys().filter_map(Result::ok) {
            put(k.policy, Entry::Local6(k));
        }
        for (included, trie) in [(false, &self.excluded_cidrs), (true, &self.included_cidrs)] {
            for k in trie.keys().filter_map(Result::ok) {
                put(k.data().policy, Entry::Cidr { included, key: k.data(), len: cidr_len(k.prefix_len()) });
            }
        }
        for (included, trie) in [(false, &self.excluded_cidrs6), (true, &self.included_cidrs6)] {
            for k in trie.keys().filter_map(Result::ok) {
                put(k.data().policy, Entry::Cidr6 { included, key: k.data(), len: cidr_len(k.prefix_len()) });
            }
        }
        for k in self.excluded_ports.keys().filter_map(Result::ok) {
            put(k.policy, Entry::Port(k));
        }
        for k in self.excluded_ifaces.keys().filter_map(Result::ok) {
            put(k.policy, Entry::Iface(k));
        }
        for (k, v) in self.iface_routes.iter().filter_map(Result::ok) {
            put(k.data().policy, Entry::Route { key: k.data(), len: cidr_len(k.prefix_len()), excluded: v == 1 });
        }
        for (k, v) in self.iface_routes6.iter().filter_map(Result::ok) {
            put(k.data().policy, Entry::Route6 { key: k.data(), len: cidr_len(k.prefix_len()), excluded: v == 1 });
        }
        for e in slots.values_mut() {
            e.sort();
        }
        slots
    }

    /// Kernel-side answers of the decision's questions for one pod.
    pub fn lookup_local(&self, slot: PolicyId, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.local_addrs.get(&PolicyAddr { policy: slot, addr: a.octets() }, 0).is_ok(),
            IpAddr::V6(a) => self.local_addrs6.get(&PolicyAddr6 { policy: slot, addr: ip6(&a) }, 0).is_ok(),
        }
    }

    pub fn lookup_cidr(&self, included: bool, slot: PolicyId, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => {
                let trie = if included { &self.included_cidrs } else { &self.excluded_cidrs };
                trie.get(&lpm4(PolicyAddr { policy: slot, addr: a.octets() }, 32), 0).is_ok()
            }
            IpAddr::V6(a) => {
                let trie = if included { &self.included_cidrs6 } else { &self.excluded_cidrs6 };
                trie.get(&lpm6(PolicyAddr6 { policy: slot, addr: ip6(&a) }, 128), 0).is_ok()
            }
        }
    }

    pub fn lookup_route_excluded(&self, slot: PolicyId, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.iface_routes.get(&lpm4(PolicyAddr { policy: slot, addr: a.octets() }, 32), 0).is_ok_and(|v| v == 1),
            IpAddr::V6(a) => self.iface_routes6.get(&lpm6(PolicyAddr6 { policy: slot, addr: ip6(&a) }, 128), 0).is_ok_and(|v| v == 1),
        }
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

    /// Which of the pod's proxy listeners the kernel knows.
    pub fn listeners(&self, pod: PodId) -> Listeners {
        self.all_listeners().remove(&pod).unwrap_or_default()
    }

    /// Every pod's registered listeners (one pass over the sockhash's keys;
    /// a sockhash's values can't be read back from user space, its keys can).
    pub fn all_listeners(&self) -> StdHashMap<PodId, Listeners> {
        let mut all: StdHashMap<PodId, Listeners> = StdHashMap::new();
        for k in self.proxy_listeners.keys().filter_map(Result::ok) {
            let l = all.entry(k.pod).or_default();
            match k.family {
                6 => l.v6 = true,
                _ => l.v4 = true,
            }
        }
        all
    }

    /// Registers one of the pod's proxy listening sockets, AF_INET6 or not
    /// (for sockets that were listening before the pod was enrolled; later
    /// ones register themselves from sockops).
    pub fn set_listener(&mut self, pod: PodId, v6: bool, socket: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd as _;
        let key = if v6 { ListenerKey::v6(pod) } else { ListenerKey::v4(pod) };
        self.proxy_listeners.insert(&key, socket.as_raw_fd(), 0).context("PROXY_LISTENERS")
    }

    /// Stops interception for the pod (its config goes first, so its
    /// programs see no pod from then on) and removes its entries.
    pub fn remove(&mut self, pod: PodId) {
        let _ = self.pod_config.remove(&pod);
        let _ = self.proxy_listeners.remove(&ListenerKey::v4(pod));
        let _ = self.proxy_listeners.remove(&ListenerKey::v6(pod));
        if let Some((slot, entries)) = self.written.remove(&pod) {
            self.delete(slot, &entries);
        }
    }

    fn write(&mut self, slot: PolicyId, e: &SlotEntries) -> anyhow::Result<()> {
        e.entries(slot).try_for_each(|entry| self.insert(entry))
    }

    fn delete(&mut self, slot: PolicyId, e: &SlotEntries) {
        // Entries that were never written (a failed write) are simply absent.
        for entry in e.entries(slot) {
            self.remove_entry(entry);
        }
    }

    fn insert(&mut self, e: Entry) -> anyhow::Result<()> {
        let full = |name: &str| format!("{name} is full");
        match e {
            Entry::Local(k) => self.local_addrs.insert(&k, &1, 0).with_context(|| full(names::LOCAL_ADDRS)),
            Entry::Local6(k) => self.local_addrs6.insert(&k, &1, 0).with_context(|| full(names::LOCAL_ADDRS6)),
            Entry::Cidr { included: false, key, len } => {
                self.excluded_cidrs.insert(&lpm4(key, len), &1, 0).with_context(|| full(names::EXCLUDED_CIDRS))
            }
            Entry::Cidr { included: true, key, len } => {
                self.included_cidrs.insert(&lpm4(key, len), &1, 0).with_context(|| full(names::INCLUDED_CIDRS))
            }
            Entry::Cidr6 { included: false, key, len } => {
                self.excluded_cidrs6.insert(&lpm6(key, len), &1, 0).with_context(|| full(names::EXCLUDED_CIDRS6))
            }
            Entry::Cidr6 { included: true, key, len } => {
                self.included_cidrs6.insert(&lpm6(key, len), &1, 0).with_context(|| full(names::INCLUDED_CIDRS6))
            }
            Entry::Port(k) => self.excluded_ports.insert(&k, &1, 0).with_context(|| full(names::EXCLUDED_PORTS)),
            Entry::Iface(k) => self.excluded_ifaces.insert(&k, &1, 0).with_context(|| full(names::EXCLUDED_IFACES)),
            Entry::Route { key, len, excluded } => {
                self.iface_routes.insert(&lpm4(key, len), &u8::from(excluded), 0).with_context(|| full(names::IFACE_ROUTES))
            }
            Entry::Route6 { key, len, excluded } => {
                self.iface_routes6.insert(&lpm6(key, len), &u8::from(excluded), 0).with_context(|| full(names::IFACE_ROUTES6))
            }
        }
    }

    fn remove_entry(&mut self, e: Entry) {
        let _ = match e {
            Entry::Local(k) => self.local_addrs.remove(&k),
            Entry::Local6(k) => self.local_addrs6.remove(&k),
            Entry::Cidr { included: false, key, len } => self.excluded_cidrs.remove(&lpm4(key, len)),
            Entry::Cidr { included: true, key, len } => self.included_cidrs.remove(&lpm4(key, len)),
            Entry::Cidr6 { included: false, key, len } => self.excluded_cidrs6.remove(&lpm6(key, len)),
            Entry::Cidr6 { included: true, key, len } => self.included_cidrs6.remove(&lpm6(key, len)),
            Entry::Port(k) => self.excluded_ports.remove(&k),
            Entry::Iface(k) => self.excluded_ifaces.remove(&k),
            Entry::Route { key, len, .. } => self.iface_routes.remove(&lpm4(key, len)),
            Entry::Route6 { key, len, .. } => self.iface_routes6.remove(&lpm6(key, len)),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::netns::Route;

    fn ip6s(s: &str) -> Ip6 {
        ip6(&s.parse().unwrap())
    }

    #[test]
    fn each_family_goes_to_its_own_lists_truncated_and_once() {
        let mesh = MeshConfig::parse(
            "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.1.2.3/16, fd00:96::1/32, 10.1.0.0/16]\n    outboundIPRangeInclusionList: [fd00:97::/48]\n    networkInterfaceExclusionList: [net1]\n",
        )
        .unwrap();
        let pod = PodAnnotations::from_map(&BTreeMap::from([(
            "flomesh.io/outbound-ip-range-exclusion-list".to_owned(),
            "fd00:98::/32, 10.9.0.0/16".to_owned(),
        )]))
        .unwrap();
        let route = |net: &str, iface: &str| Route { net: net.parse().unwrap(), iface: iface.into() };
        let net = PodNet {
            addrs: ["10.244.1.2", "fd00:244:1::2", "fe80::2"].iter().map(|a| a.parse().unwrap()).collect(),
            ifaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("net1".into(), 3)],
            routes: vec![
                route("0.0.0.0/0", "eth0"),
                route("::/0", "eth0"),
                route("fd00:245:1::/64", "net1"),
                route("fd00:245:1::/64", "eth0"),
            ],
            handover_route: true,
        };
        let e = PodEntries::new(&mesh, &pod, &net, true);
        assert_eq!(e.mesh.excluded_cidrs, [([10, 1, 0, 0], 16)]);
        assert_eq!(e.mesh.excluded_cidrs6, [(ip6s("fd00:96::"), 32)]);
        assert_eq!((e.mesh.included_cidrs.len(), e.mesh.included_cidrs6.clone()), (0, vec![(ip6s("fd00:97::"), 48)]));
        assert_eq!(
            (e.own.excluded_cidrs.clone(), e.own.excluded_cidrs6.clone()),
            (vec![([10, 9, 0, 0], 16)], vec![(ip6s("fd00:98::"), 32)])
        );
        assert!(e.own.inclusion && e.own.ipv6, "an IPv6-only inclusion list limits both families");
        assert_eq!(e.own.local_addrs, [[10, 244, 1, 2]]);
        assert_eq!(e.own.local_addrs6, [ip6s("fd00:244:1::2"), ip6s("fe80::2")]);
        assert_eq!(e.own.excluded_ifaces, [3]);
        // IPv4: no route through net1, so none at all; IPv6: the first of
        // two routes to one prefix, as the kernel takes it.
        assert!(e.own.routes.is_empty());
        assert_eq!(e.own.routes6, [(ip6s("::"), 0, false), (ip6s("fd00:245:1::"), 64, true)]);
        assert!(e.own.holds(List::ExcludedRoutes6) && !e.own.holds(List::ExcludedRoutes));
        // Written and read back, each entry lands in the list it came from.
        let mut back = SlotEntries::default();
        for entry in e.own.entries(9) {
            back.add(entry);
        }
        back.sort();
        assert_eq!(back, SlotEntries { inclusion: false, ipv6: false, ..e.own.clone() });
    }
}
