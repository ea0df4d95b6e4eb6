//! Answers the questions of `redirect_common::decision` (`PodLists`,
//! `AddrLists` for both families, `InboundLists`) from the maps, for the
//! pod's active policy slots.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use redirect_common::{
    addr::Ip6,
    decision::{AddrLists, InboundLists, PodLists},
    maps::{List, PodConfig, PolicyAddr, PolicyAddr6, PolicyIface, PolicyPort, direction, lpm_prefix_len, pod_flags},
};

use crate::maps::{
    EXCLUDED_CIDRS, EXCLUDED_CIDRS6, EXCLUDED_IFACES, EXCLUDED_PORTS, IFACE_ROUTES, IFACE_ROUTES6, INCLUDED_CIDRS, INCLUDED_CIDRS6,
    LOCAL_ADDRS, LOCAL_ADDRS6,
};

pub struct MapLists<'a> {
    pub config: &'a PodConfig,
}

/// A policy map key for an address of one family: what the LPM tries and
/// the local-address hashes of that family are keyed by.
trait PolicyKey: Copy {
    type Key;
    fn key(self, policy: u32) -> Self::Key;
    /// Its full-length prefix (host route) in an LPM trie.
    const BITS: u8;
}

impl PolicyKey for u32 {
    type Key = PolicyAddr;
    #[inline(always)]
    fn key(self, policy: u32) -> PolicyAddr {
        PolicyAddr { policy, addr: self.to_be_bytes() }
    }
    const BITS: u8 = 32;
}

impl PolicyKey for Ip6 {
    type Key = PolicyAddr6;
    #[inline(always)]
    fn key(self, policy: u32) -> PolicyAddr6 {
        PolicyAddr6 { policy, addr: self }
    }
    const BITS: u8 = 128;
}

impl MapLists<'_> {
    /// In the MeshConfig's list or the pod's own.
    #[inline(always)]
    fn in_lpm<A: PolicyKey>(&self, trie: &LpmTrie<A::Key, u8>, list: List, addr: A) -> bool {
        let [mesh, own] = self.config.slots_with(list);
        let found = |p| trie.get(&Key::new(lpm_prefix_len(A::BITS), addr.key(p))).is_some();
        mesh.is_some_and(found) || own.is_some_and(found)
    }

    /// The pod's own routes (own slot only): the longest match decides.
    #[inline(always)]
    fn route_excluded<A: PolicyKey>(&self, trie: &LpmTrie<A::Key, u8>, list: List, addr: A) -> bool {
        let [_, own] = self.config.slots_with(list);
        own.is_some_and(|p| matches!(trie.get(&Key::new(lpm_prefix_len(A::BITS), addr.key(p))), Some(1)))
    }

    #[inline(always)]
    fn port_in(&self, port: u16, list: List, direction: u16) -> bool {
        let [mesh, own] = self.config.slots_with(list);
        // SAFETY: the values are only tested for presence.
        let found = |policy| unsafe { EXCLUDED_PORTS.get(&PolicyPort { policy, port, direction }).is_some() };
        mesh.is_some_and(found) || own.is_some_and(found)
    }

    #[inline(always)]
    pub fn is_local_v4(&self, addr: u32) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { LOCAL_ADDRS.get(&addr.key(self.config.policy)).is_some() }
    }

    #[inline(always)]
    pub fn is_local_v6(&self, addr: Ip6) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { LOCAL_ADDRS6.get(&addr.key(self.config.policy)).is_some() }
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

    #[inline(always)]
    fn ipv6_intercepted(&self) -> bool {
        self.config.flags & pod_flags::IPV6 != 0
    }
}

impl PodLists for MapLists<'_> {
    #[inline(always)]
    fn proxy_uid(&self) -> u32 {
        self.config.proxy_uid
    }

    #[inline(always)]
    fn port_excluded(&self, port: u16) -> bool {
        self.port_in(port, List::OutboundPorts, direction::OUTBOUND)
    }

    #[inline(always)]
    fn inclusion_enabled(&self) -> bool {
        self.config.flags & pod_flags::INCLUSION != 0
    }
}

impl AddrLists<u32> for MapLists<'_> {
    #[inline(always)]
    fn intercepted(&self) -> bool {
        true
    }

    #[inline(always)]
    fn is_local_addr(&self, addr: u32) -> bool {
        self.is_local_v4(addr)
    }

    /// `connect4` runs before routing, so the agent mirrors the pod's routes
    /// into `IFACE_ROUTES` and the longest matching route decides.
    #[inline(always)]
    fn routed_via_excluded_iface(&self, addr: u32) -> bool {
        self.route_excluded(&IFACE_ROUTES, List::ExcludedRoutes, addr)
    }

    #[inline(always)]
    fn cidr_excluded(&self, addr: u32) -> bool {
        self.in_lpm(&EXCLUDED_CIDRS, List::ExcludedCidrs, addr)
    }

    #[inline(always)]
    fn cidr_included(&self, addr: u32) -> bool {
        self.in_lpm(&INCLUDED_CIDRS, List::IncludedCidrs, addr)
    }
}

impl AddrLists<Ip6> for MapLists<'_> {
    #[inline(always)]
    fn intercepted(&self) -> bool {
        self.ipv6_intercepted()
    }

    #[inline(always)]
    fn is_local_addr(&self, addr: Ip6) -> bool {
        self.is_local_v6(addr)
    }

    #[inline(always)]
    fn routed_via_excluded_iface(&self, addr: Ip6) -> bool {
        self.route_excluded(&IFACE_ROUTES6, List::ExcludedRoutes6, addr)
    }

    #[inline(always)]
    fn cidr_excluded(&self, addr: Ip6) -> bool {
        self.in_lpm(&EXCLUDED_CIDRS6, List::ExcludedCidrs6, addr)
    }

    #[inline(always)]
    fn cidr_included(&self, addr: Ip6) -> bool {
        self.in_lpm(&INCLUDED_CIDRS6, List::IncludedCidrs6, addr)
    }
}
