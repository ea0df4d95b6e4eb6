//! Answers the questions of `redirect_common::decision::OutboundLists` from
//! the maps, for the pod's active policy slot.

use aya_ebpf::maps::lpm_trie::Key;
use redirect_common::{
    decision::{InboundLists, OutboundLists},
    maps::{List, PodConfig, PolicyAddr, PolicyIface, PolicyPort, direction, lpm_prefix_len, pod_flags},
};

use crate::maps::{EXCLUDED_CIDRS, EXCLUDED_IFACES, EXCLUDED_PORTS, IFACE_ROUTES, INCLUDED_CIDRS, LOCAL_ADDRS};

pub struct MapLists<'a> {
    pub config: &'a PodConfig,
}

impl MapLists<'_> {
    #[inline(always)]
    fn addr(&self, addr: u32) -> PolicyAddr {
        PolicyAddr { policy: self.config.policy, addr: addr.to_be_bytes() }
    }

    #[inline(always)]
    fn lpm_key(&self, policy: u32, addr: u32) -> Key<PolicyAddr> {
        Key::new(lpm_prefix_len(32), PolicyAddr { policy, addr: addr.to_be_bytes() })
    }

    /// In the MeshConfig's list or the pod's own.
    #[inline(always)]
    fn in_lpm(&self, trie: &aya_ebpf::maps::LpmTrie<PolicyAddr, u8>, list: List, addr: u32) -> bool {
        let [mesh, own] = self.config.slots_with(list);
        mesh.is_some_and(|p| trie.get(&self.lpm_key(p, addr)).is_some())
            || own.is_some_and(|p| trie.get(&self.lpm_key(p, addr)).is_some())
    }

    #[inline(always)]
    fn port_in(&self, port: u16, list: List, direction: u16) -> bool {
        let [mesh, own] = self.config.slots_with(list);
        // SAFETY: the values are only tested for presence.
        let found = |policy| unsafe { EXCLUDED_PORTS.get(&PolicyPort { policy, port, direction }).is_some() };
        mesh.is_some_and(found) || own.is_some_and(found)
    }

    #[inline(always)]
    pub fn is_local_addr(&self, addr: u32) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { LOCAL_ADDRS.get(&self.addr(addr)).is_some() }
    }
}

impl InboundLists for MapLists<'_> {
    #[inline(always)]
    fn inbound_port_excluded(&self, port: u16) -> bool {
        self.port_in(port, List::InboundPorts, direction::INBOUND)
    }

    #[inline(always)]
    fn interface_excluded(&self, ifindex: u32) -> bool {
        let [_, own] = self.config.slots_with(List::ExcludedIfaces);
        // SAFETY: the value is only tested for presence.
        own.is_some_and(|policy| unsafe { EXCLUDED_IFACES.get(&PolicyIface { policy, ifindex }).is_some() })
    }
}

impl OutboundLists for MapLists<'_> {
    #[inline(always)]
    fn proxy_uid(&self) -> u32 {
        self.config.proxy_uid
    }

    #[inline(always)]
    fn is_local_addr(&self, addr: u32) -> bool {
        MapLists::is_local_addr(self, addr)
    }

    /// `connect4` runs before routing, so the agent mirrors the pod's routes
    /// into `IFACE_ROUTES` and the longest matching route decides.
    #[inline(always)]
    fn routed_via_excluded_iface(&self, addr: u32) -> bool {
        let [_, own] = self.config.slots_with(List::ExcludedRoutes);
        own.is_some_and(|p| matches!(IFACE_ROUTES.get(&self.lpm_key(p, addr)), Some(1)))
    }

    #[inline(always)]
    fn cidr_excluded(&self, addr: u32) -> bool {
        self.in_lpm(&EXCLUDED_CIDRS, List::ExcludedCidrs, addr)
    }

    #[inline(always)]
    fn port_excluded(&self, port: u16) -> bool {
        self.port_in(port, List::OutboundPorts, direction::OUTBOUND)
    }

    #[inline(always)]
    fn inclusion_enabled(&self) -> bool {
        self.config.flags & pod_flags::INCLUSION != 0
    }

    #[inline(always)]
    fn cidr_included(&self, addr: u32) -> bool {
        self.in_lpm(&INCLUDED_CIDRS, List::IncludedCidrs, addr)
    }
}
