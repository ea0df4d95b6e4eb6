//! Answers the questions of `redirect_common::decision::OutboundLists` from
//! the maps, for the pod's active policy slot.

use aya_ebpf::maps::lpm_trie::Key;
use redirect_common::{
    decision::OutboundLists,
    maps::{PodConfig, PolicyAddr, PolicyPort, lpm_prefix_len, pod_flags},
};

use crate::maps::{EXCLUDED_CIDRS, EXCLUDED_PORTS, INCLUDED_CIDRS, LOCAL_ADDRS};

pub struct MapLists<'a> {
    pub config: &'a PodConfig,
}

impl MapLists<'_> {
    #[inline(always)]
    fn addr(&self, addr: u32) -> PolicyAddr {
        PolicyAddr { policy: self.config.policy, addr: addr.to_be_bytes() }
    }

    #[inline(always)]
    fn lpm_key(&self, addr: u32) -> Key<PolicyAddr> {
        Key::new(lpm_prefix_len(32), self.addr(addr))
    }
}

impl OutboundLists for MapLists<'_> {
    #[inline(always)]
    fn proxy_uid(&self) -> u32 {
        self.config.proxy_uid
    }

    #[inline(always)]
    fn is_local_addr(&self, addr: u32) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { LOCAL_ADDRS.get(&self.addr(addr)).is_some() }
    }

    #[inline(always)]
    fn routed_via_excluded_iface(&self, _addr: u32) -> bool {
        // Interface exclusions for outbound traffic need the route of the
        // destination, which `connect4` can't see; they arrive with the
        // inbound/interface work. Until then no destination matches, which
        // is what a MeshConfig without `networkInterfaceExclusionList` means.
        false
    }

    #[inline(always)]
    fn cidr_excluded(&self, addr: u32) -> bool {
        EXCLUDED_CIDRS.get(&self.lpm_key(addr)).is_some()
    }

    #[inline(always)]
    fn port_excluded(&self, port: u16) -> bool {
        let key = PolicyPort { policy: self.config.policy, port, _pad: 0 };
        // SAFETY: the value is only tested for presence.
        unsafe { EXCLUDED_PORTS.get(&key).is_some() }
    }

    #[inline(always)]
    fn inclusion_enabled(&self) -> bool {
        self.config.flags & pod_flags::INCLUSION != 0
    }

    #[inline(always)]
    fn cidr_included(&self, addr: u32) -> bool {
        INCLUDED_CIDRS.get(&self.lpm_key(addr)).is_some()
    }
}
