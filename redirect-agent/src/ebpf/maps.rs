//! Writing pods' policies into the shared maps, one whole policy at a time.
//!
//! Each pod has two policy slots (see `redirect_common::maps`). A change is
//! written into the idle slot, then `POD_CONFIG` is switched to it in one
//! map update, then the old slot is cleared: a connection sees the old or
//! the new policy, never a mix. If the new slot can't be written (a map is
//! full), it is cleared again and the pod keeps its old policy.

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, Map, MapData, lpm_trie::{Key, LpmTrie}};
use ipnet::IpNet;
use redirect_common::maps::{
    ConnKey, OrigDst, PodConfig, PodId, PolicyAddr, PolicyId, PolicyPort, lpm_prefix_len, names,
    pod_flags, policy_id,
};

use crate::config::PodPolicy;

/// Settings that come from the agent's own configuration, not the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxySettings {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub log_decisions: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        use redirect_common::defaults::*;
        ProxySettings { outbound_port: OUTBOUND_PORT, inbound_port: INBOUND_PORT, proxy_uid: PROXY_UID, log_decisions: false }
    }
}

/// What is written for one pod, in map terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotEntries {
    pub local_addrs: Vec<[u8; 4]>,
    pub excluded_cidrs: Vec<([u8; 4], u8)>,
    pub included_cidrs: Vec<([u8; 4], u8)>,
    pub excluded_ports: Vec<u16>,
    /// The inclusion list is non-empty (in any family): only its CIDRs are
    /// redirected, and an IPv6-only list redirects no IPv4 destination.
    pub inclusion: bool,
}

impl SlotEntries {
    /// The IPv4 part of a policy: the eBPF hooks are IPv4.
    pub fn from_policy(policy: &PodPolicy, local_addrs: &[Ipv4Addr]) -> Self {
        let v4 = |cidrs: &[crate::config::Sourced<crate::config::Cidr>]| {
            let mut out: Vec<([u8; 4], u8)> = cidrs
                .iter()
                .filter_map(|c| match c.value.net.trunc() {
                    IpNet::V4(n) => Some((n.addr().octets(), n.prefix_len())),
                    IpNet::V6(_) => None,
                })
                .collect();
            out.sort();
            out.dedup();
            out
        };
        let mut ports: Vec<u16> = policy.outbound_port_exclusions.iter().map(|p| p.value.get()).collect();
        ports.sort();
        ports.dedup();
        SlotEntries {
            local_addrs: local_addrs.iter().map(|a| a.octets()).collect(),
            excluded_cidrs: v4(&policy.outbound_ip_range_exclusions),
            included_cidrs: v4(&policy.outbound_ip_range_inclusions),
            excluded_ports: ports,
            inclusion: !policy.outbound_ip_range_inclusions.is_empty(),
        }
    }
}

pub struct SharedMaps {
    pod_config: HashMap<MapData, PodId, PodConfig>,
    local_addrs: HashMap<MapData, PolicyAddr, u8>,
    excluded_cidrs: LpmTrie<MapData, PolicyAddr, u8>,
    included_cidrs: LpmTrie<MapData, PolicyAddr, u8>,
    excluded_ports: HashMap<MapData, PolicyPort, u8>,
    /// An LRU hash in the kernel; aya's `HashMap` reads both kinds.
    orig_dst: HashMap<MapData, ConnKey, OrigDst>,
    /// What each pod's active slot holds, so a change deletes exactly that.
    written: StdHashMap<PodId, (PolicyId, SlotEntries)>,
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
            orig_dst: take(ebpf, names::ORIG_DST)?.try_into()?,
            written: StdHashMap::new(),
        };
        maps.recover()?;
        Ok(maps)
    }

    /// Rebuilds `written` from the kernel (after an agent restart), and
    /// clears slots that no pod uses (a change interrupted half-way).
    fn recover(&mut self) -> anyhow::Result<()> {
        let configs: StdHashMap<PodId, PodConfig> = self.pod_config.iter().filter_map(Result::ok).collect();
        let active: StdHashMap<PodId, PolicyId> = configs.iter().map(|(pod, c)| (*pod, c.policy)).collect();
        let mut slots: StdHashMap<PolicyId, SlotEntries> = StdHashMap::new();
        for k in self.local_addrs.keys().filter_map(Result::ok) {
            slots.entry(k.policy).or_default().local_addrs.push(k.addr);
        }
        for k in self.excluded_cidrs.keys().filter_map(Result::ok) {
            let d = k.data();
            slots.entry(d.policy).or_default().excluded_cidrs.push((d.addr, (k.prefix_len() - 32) as u8));
        }
        for k in self.included_cidrs.keys().filter_map(Result::ok) {
            let d = k.data();
            slots.entry(d.policy).or_default().included_cidrs.push((d.addr, (k.prefix_len() - 32) as u8));
        }
        for k in self.excluded_ports.keys().filter_map(Result::ok) {
            slots.entry(k.policy).or_default().excluded_ports.push(k.port);
        }
        for (slot, entries) in slots {
            match active.iter().find(|(_, p)| **p == slot) {
                Some((pod, _)) => {
                    self.written.insert(*pod, (slot, entries));
                }
                None => self.delete(slot, &entries),
            }
        }
        for (pod, slot) in active {
            let entry = self.written.entry(pod).or_insert((slot, SlotEntries::default()));
            entry.1.inclusion = configs[&pod].flags & pod_flags::INCLUSION != 0;
        }
        Ok(())
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

    /// Number of redirected connections the proxy may still ask about.
    pub fn tracked_connections(&self) -> usize {
        self.orig_dst.keys().filter(Result::is_ok).count()
    }

    /// Writes `entries` as the pod's policy, switching over atomically.
    pub fn apply(&mut self, pod: PodId, entries: SlotEntries, settings: &ProxySettings) -> anyhow::Result<()> {
        let current = self.pod_config(pod);
        if let (Some(cfg), Some((_, written))) = (current, self.written.get(&pod)) {
            if *written == entries && cfg == self.config_for(cfg.policy, &entries, settings) {
                return Ok(());
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
        Ok(())
    }

    fn config_for(&self, slot: PolicyId, entries: &SlotEntries, s: &ProxySettings) -> PodConfig {
        let mut flags = 0;
        if entries.inclusion {
            flags |= pod_flags::INCLUSION;
        }
        if s.log_decisions {
            flags |= pod_flags::LOG_DECISIONS;
        }
        PodConfig { policy: slot, proxy_uid: s.proxy_uid, outbound_port: s.outbound_port, inbound_port: s.inbound_port, flags }
    }

    /// Stops interception for the pod (its config goes first, so its
    /// programs see no pod from then on) and removes its entries.
    pub fn remove(&mut self, pod: PodId) {
        let _ = self.pod_config.remove(&pod);
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
        for port in &e.excluded_ports {
            self.excluded_ports
                .insert(&PolicyPort { policy: slot, port: *port, _pad: 0 }, &1, 0)
                .context("EXCLUDED_PORTS is full")?;
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
        for port in &e.excluded_ports {
            let _ = self.excluded_ports.remove(&PolicyPort { policy: slot, port: *port, _pad: 0 });
        }
    }
}

fn lpm_key(slot: PolicyId, addr: [u8; 4], len: u8) -> Key<PolicyAddr> {
    Key::new(lpm_prefix_len(len), PolicyAddr { policy: slot, addr })
}
