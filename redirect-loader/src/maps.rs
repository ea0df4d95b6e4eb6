//! Writing pods' policies into the shared maps, one whole policy at a time.
//!
//! Each pod has two policy slots (see `redirect_common::maps`). A change is
//! written into the idle slot, then `POD_CONFIG` is switched to it in one
//! map update, then the old slot is cleared: a connection sees the old or
//! the new policy, never a mix. If the new slot can't be written (a map is
//! full), it is cleared again and the pod keeps its old policy.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{
    HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use redirect_common::{
    handover::node_wide::Handover6,
    maps::{
        ConnKey, List, ListenerKey, MESH_OWNER, PodConfig, PodId, PodIps, PolicyAddr, PolicyAddr6, PolicyId, PolicyIface, PolicyPort,
        capacity, counter, lpm_prefix_len, names, pod_flags, policy_id,
    },
};

use crate::policy_entries::{Entry, SlotEntries, ip6};
use redirect_config::settings::ProxySettings;

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
    /// LRU hashes in the kernel (these two), which only the programs
    /// write; held so that loading checks their key and value sizes
    /// against the agent's types, as it does for every other map (their
    /// fill levels are read from the pins, `fill`).
    #[allow(dead_code)]
    handover6: HashMap<MapData, u64, Handover6>,
    #[allow(dead_code)]
    fast_path_state: HashMap<MapData, ConnKey, u8>,
    pod_ips: HashMap<MapData, PodId, PodIps>,
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
            handover6: take(ebpf, names::HANDOVER6)?.try_into()?,
            fast_path_state: take(ebpf, names::FAST_PATH_STATE)?.try_into()?,
            pod_ips: take(ebpf, names::POD_IPS)?.try_into()?,
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
            entries.dns_proxy = c.flags & pod_flags::DNS_PROXY != 0;
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
            // A pod still on it (one that could follow no change, not even
            // by `follow_mesh`) would read the new lists with flags of the
            // old: refuse, and keep both, until it moves or goes.
            let stranded: Vec<PodId> =
                self.pod_config.iter().filter_map(Result::ok).filter(|(_, c)| c.mesh_policy == slot).map(|(pod, _)| pod).collect();
            if !stranded.is_empty() {
                self.retired_mesh = Some((slot, e));
                anyhow::bail!(
                    "pod id(s) {stranded:?} still use the MeshConfig before last (their installs fail): the change waits for them"
                );
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

    /// Points a pod whose install failed at the MeshConfig's active slot,
    /// changing only its `POD_CONFIG` entry (the slot, and the flags that
    /// depend on the MeshConfig's lists); its own slot stays as it was. So
    /// a pod that can't be installed still follows MeshConfig changes, and
    /// the previous slot can go.
    pub fn follow_mesh(&mut self, pod: PodId) -> anyhow::Result<()> {
        let (Some((active, mesh)), Some(mut config)) = (self.mesh.clone(), self.pod_config(pod)) else { return Ok(()) };
        if config.mesh_policy == active {
            return Ok(());
        }
        let own = self.written.get(&pod).map(|(_, e)| e.clone()).unwrap_or_default();
        let includes = |e: &SlotEntries| !e.included_cidrs.is_empty() || !e.included_cidrs6.is_empty();
        config.mesh_policy = active;
        config.flags &= !pod_flags::INCLUSION;
        if includes(&mesh) || includes(&own) {
            config.flags |= pod_flags::INCLUSION;
        }
        for list in List::ALL {
            config.flags &= !list.flag(true);
            if mesh.holds(list) {
                config.flags |= list.flag(true);
            }
        }
        self.pod_config.insert(&pod, &config, 0).context("POD_CONFIG")
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
        if entries.dns_proxy {
            flags |= pod_flags::DNS_PROXY;
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

    /// The pod's event counters, summed over CPUs, by name
    /// (`redirect_common::maps::counter::name`).
    pub fn counters(&self, pod: PodId) -> std::collections::BTreeMap<String, u64> {
        (0..counter::SLOTS)
            .filter_map(|id| {
                let name = counter::name(id)?;
                let values = self.counters.get(&counter::index(pod, id), 0).ok()?;
                Some((name.to_owned(), values.iter().sum()))
            })
            .collect()
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
        let _ = self.pod_ips.remove(&pod);
        let _ = self.proxy_listeners.remove(&ListenerKey::v4(pod));
        let _ = self.proxy_listeners.remove(&ListenerKey::v6(pod));
        if let Some((slot, entries)) = self.written.remove(&pod) {
            self.delete(slot, &entries);
        }
    }

    /// Where the proxy's loopback connections go in `localProxyMode: PodIP`
    /// (`None`: the pod is not in that mode), unless already so.
    pub fn set_pod_ips(&mut self, pod: PodId, ips: Option<PodIps>) -> anyhow::Result<()> {
        if self.pod_ips.get(&pod, 0).ok() == ips {
            return Ok(());
        }
        match ips {
            Some(ips) => self.pod_ips.insert(&pod, &ips, 0).context("POD_IPS"),
            None => self.pod_ips.remove(&pod).context("POD_IPS"),
        }
    }

    /// What `set_pod_ips` last wrote for the pod, read from the kernel.
    pub fn pod_ips(&self, pod: PodId) -> Option<PodIps> {
        self.pod_ips.get(&pod, 0).ok()
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

/// The maps that can fill up, with their capacity: what `status` and
/// the metrics report.
pub const FILLABLE: [(&str, u32); 14] = [
    (names::POD_CONFIG, capacity::PODS),
    (names::LOCAL_ADDRS, capacity::LOCAL_ADDRS),
    (names::LOCAL_ADDRS6, capacity::LOCAL_ADDRS),
    (names::EXCLUDED_CIDRS, capacity::CIDRS),
    (names::EXCLUDED_CIDRS6, capacity::CIDRS),
    (names::INCLUDED_CIDRS, capacity::CIDRS),
    (names::INCLUDED_CIDRS6, capacity::CIDRS),
    (names::EXCLUDED_PORTS, capacity::PORTS),
    (names::EXCLUDED_IFACES, capacity::IFACES),
    (names::IFACE_ROUTES, capacity::ROUTES),
    (names::IFACE_ROUTES6, capacity::ROUTES),
    (names::HANDOVER6, capacity::HANDOVER6),
    (names::FAST_PATH_STATE, capacity::FAST_PATH_DECISIONS),
    (names::POD_IPS, capacity::PODS),
];

/// How full one kernel map is (`status`, the metrics).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

/// Entries in use of each of the [`FILLABLE`] maps, read from their pins,
/// so that the metrics' thread reads them as `status` does, without the
/// agent's loop. A map that can't be read is left out.
pub fn fill(pins: &crate::pins::Pins) -> Vec<MapFill> {
    FILLABLE
        .iter()
        .filter_map(|&(map, capacity)| Some(MapFill { map: map.to_owned(), entries: entries(&pins.map(map)).ok()?, capacity }))
        .collect()
}

/// How many keys the pinned map at `pin` holds (`BPF_MAP_GET_NEXT_KEY`
/// until the last), whatever its key type.
fn entries(pin: &std::path::Path) -> anyhow::Result<usize> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let data = aya::maps::MapData::from_pin(pin).with_context(|| pin.display().to_string())?;
    let key_size = data.info()?.key_size() as usize;
    let fd = data.fd().as_fd().as_raw_fd();
    let (mut key, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
    let mut count = 0;
    let mut first = true;
    loop {
        // union bpf_attr { map_fd: u32, pad, key: u64, next_key: u64 }
        let mut attr = [0u64; 8];
        attr[0] = u64::from(fd as u32);
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: a zero-padded bpf_attr of 64 bytes, with buffers of the
        // map's key size that outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(count),
                _ => Err(e).context("BPF_MAP_GET_NEXT_KEY"),
            };
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}
