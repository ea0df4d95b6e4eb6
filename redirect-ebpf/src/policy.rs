//! Answers the questions of `redirect_common::decision::OutboundLists` from
//! the maps, for the pod's active policy slot.

use aya_ebpf::maps::lpm_trie::Key;
use redirect_common::{
    decision::{InboundLists, OutboundLists},
    maps::{PodConfig, PolicyAddr, PolicyIface, PolicyPort, direction, lpm_prefix_len, pod_flags},
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
    fn in_lpm(&self, trie: &aya_ebpf::maps::LpmTrie<PolicyAddr, u8>, addr: u32) -> bool {
        trie.get(&self.lpm_key(self.config.mesh_policy, addr)).is_some()
            || trie.get(&self.lpm_key(self.config.policy, addr)).is_some()
    }

    #[inline(always)]
    fn port_in(&self, port: u16, direction: u16) -> bool {
        let mesh = PolicyPort { policy: self.config.mesh_policy, port, direction };
        let own = PolicyPort { policy: self.config.policy, port, direction };
        // SAFETY: the values are only tested for presence.
        unsafe { EXCLUDED_PORTS.get(&mesh).is_some() || EXCLUDED_PORTS.get(&own).is_some() }
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
        self.port_in(port, direction::INBOUND)
    }

    #[inline(always)]
    fn interface_excluded(&self, ifindex: u32) -> bool {
        let key = PolicyIface { policy: self.config.policy, ifindex };
        // SAFETY: the value is only tested for presence.
        unsafe { EXCLUDED_IFACES.get(&key).is_some() }
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
        matches!(IFACE_ROUTES.get(&self.lpm_key(self.config.policy, addr)), Some(1))
    }

    #[inline(always)]
    fn cidr_excluded(&self, addr: u32) -> bool {
        self.in_lpm(&EXCLUDED_CIDRS, addr)
    }

    #[inline(always)]
    fn port_excluded(&self, port: u16) -> bool {
        self.port_in(port, direction::OUTBOUND)
    }

    #[inline(always)]
    fn inclusion_enabled(&self) -> bool {
        self.config.flags & pod_flags::INCLUSION != 0
    }

    #[inline(always)]
    fn cidr_included(&self, addr: u32) -> bool {
        self.in_lpm(&INCLUDED_CIDRS, addr)
    }
}
