//! The interception decision, in one place.
//!
//! This is the outbound table of `interception-semantics.md`, evaluated top
//! to bottom, first match wins. The eBPF `connect4` program answers the
//! questions of [`OutboundLists`] from its maps; the agent answers them from
//! the configured lists (for `explain` and for tests). Both then call
//! [`decide_outbound`], so the kernel and the tools can't drift apart.
//!
//! Addresses are IPv4 in host byte order (`u32`), ports in host byte order.

/// Where a connection ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// The connection goes where the application asked.
    Direct = 0,
    /// Rewritten to a loopback address:<outbound port> (the proxy's
    /// outbound listener; the address: see `crate::handover`).
    RedirectOutbound = 1,
    /// Rewritten to a loopback address:<inbound port> (the proxy's inbound
    /// listener).
    RedirectInbound = 2,
}

/// The row of the outbound table that decided a connection. The numbers are
/// the row numbers of the table, so logs and `explain` can cite them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OutboundRule {
    /// 1: the proxy dialling a local address other than 127.0.0.1 (its own
    /// pod IP): through inbound handling.
    ProxyToLocal = 1,
    /// 2: an application dialling a local address (its own pod, loopback).
    AppToLocal = 2,
    /// 3: the proxy's own upstream connections.
    ProxyUid = 3,
    // Row 4 (destination 127.0.0.1) can never decide: 127.0.0.1 leaves via
    // lo, so rows 2 and 3 have already matched. It has no variant.
    /// 5: routed out of an interface in `networkInterfaceExclusionList`.
    ExcludedInterface = 5,
    /// 6: destination in an excluded CIDR.
    ExcludedCidr = 6,
    /// 7: destination port excluded.
    ExcludedPort = 7,
    /// 8: destination in the (non-empty) inclusion list.
    Included = 8,
    /// 9: inclusion list non-empty and destination not in it.
    NotIncluded = 9,
    /// 10: everything else.
    Default = 10,
}

impl OutboundRule {
    pub const fn verdict(self) -> Verdict {
        match self {
            OutboundRule::ProxyToLocal => Verdict::RedirectInbound,
            OutboundRule::Included | OutboundRule::Default => Verdict::RedirectOutbound,
            _ => Verdict::Direct,
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            OutboundRule::ProxyToLocal => {
                "proxy UID dialling a local address other than 127.0.0.1: inbound listener"
            }
            OutboundRule::AppToLocal => "destination is local to the pod (leaves via lo)",
            OutboundRule::ProxyUid => "connection opened by the proxy UID",
            OutboundRule::ExcludedInterface => "routed through an excluded interface",
            OutboundRule::ExcludedCidr => "destination in an excluded CIDR",
            OutboundRule::ExcludedPort => "destination port excluded",
            OutboundRule::Included => "destination in the inclusion list",
            OutboundRule::NotIncluded => "inclusion list set and destination not in it",
            OutboundRule::Default => "default: all other TCP goes to the proxy",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => OutboundRule::ProxyToLocal,
            2 => OutboundRule::AppToLocal,
            3 => OutboundRule::ProxyUid,
            5 => OutboundRule::ExcludedInterface,
            6 => OutboundRule::ExcludedCidr,
            7 => OutboundRule::ExcludedPort,
            8 => OutboundRule::Included,
            9 => OutboundRule::NotIncluded,
            10 => OutboundRule::Default,
            _ => return None,
        })
    }
}

/// An outbound TCP connection as `connect()` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Destination address, host byte order.
    pub dst: u32,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// UID of the connecting process.
    pub uid: u32,
}

/// What the decision needs to know about one pod's lists.
pub trait OutboundLists {
    fn proxy_uid(&self) -> u32;
    /// `addr` is one of the pod's own addresses (outside 127.0.0.0/8): a
    /// connection to it is routed through `lo`.
    fn is_local_addr(&self, addr: u32) -> bool;
    /// `addr` is routed through an interface of `networkInterfaceExclusionList`.
    fn routed_via_excluded_iface(&self, addr: u32) -> bool;
    fn cidr_excluded(&self, addr: u32) -> bool;
    fn port_excluded(&self, port: u16) -> bool;
    /// The inclusion list is non-empty.
    fn inclusion_enabled(&self) -> bool;
    fn cidr_included(&self, addr: u32) -> bool;
}

const LOOPBACK_127_0_0_1: u32 = 0x7f00_0001;

/// `connect()` to 0.0.0.0 is routed to 127.0.0.1 through `lo`
/// (`ip_route_output_key_hash_rcu`), so nat OUTPUT sees 127.0.0.1.
#[inline(always)]
pub const fn routed_destination(dst: u32) -> u32 {
    if dst == 0 { LOOPBACK_127_0_0_1 } else { dst }
}

/// Whether a destination leaves through `lo`: 127.0.0.0/8 and the pod's own
/// addresses.
#[inline(always)]
fn leaves_via_lo<L: OutboundLists>(dst: u32, lists: &L) -> bool {
    (dst >> 24) == 127 || lists.is_local_addr(dst)
}

/// The outbound table, first match wins.
#[inline(always)]
pub fn decide_outbound<L: OutboundLists>(conn: &Outbound, lists: &L) -> OutboundRule {
    let dst = routed_destination(conn.dst);
    let is_proxy = conn.uid == lists.proxy_uid();
    if leaves_via_lo(dst, lists) {
        return if is_proxy && dst != LOOPBACK_127_0_0_1 {
            OutboundRule::ProxyToLocal
        } else if is_proxy {
            // `-o lo ! -d 127.0.0.1 --uid-owner 1500` did not match and
            // `-o lo ! --uid-owner 1500` does not either: the proxy-UID rule.
            OutboundRule::ProxyUid
        } else {
            OutboundRule::AppToLocal
        };
    }
    if is_proxy {
        return OutboundRule::ProxyUid;
    }
    if lists.routed_via_excluded_iface(dst) {
        return OutboundRule::ExcludedInterface;
    }
    if lists.cidr_excluded(dst) {
        return OutboundRule::ExcludedCidr;
    }
    if lists.port_excluded(conn.dst_port) {
        return OutboundRule::ExcludedPort;
    }
    if lists.inclusion_enabled() {
        return if lists.cidr_included(dst) {
            OutboundRule::Included
        } else {
            OutboundRule::NotIncluded
        };
    }
    OutboundRule::Default
}

/// The row of the inbound table that decided a connection arriving at the
/// pod from elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InboundRule {
    /// 1: destination port in the inbound exclusion list.
    ExcludedPort = 1,
    /// 2: arrived on an interface in `networkInterfaceExclusionList`.
    ExcludedInterface = 2,
    /// 3: one of the proxy's own admin, health and metrics ports.
    ProxyPort = 3,
    /// 4: everything else goes to the proxy's inbound listener.
    Redirect = 4,
}

impl InboundRule {
    pub const fn verdict(self) -> Verdict {
        match self {
            InboundRule::Redirect => Verdict::RedirectInbound,
            _ => Verdict::Direct,
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            InboundRule::ExcludedPort => "destination port in the inbound exclusion list",
            InboundRule::ExcludedInterface => "arrived on an excluded interface",
            InboundRule::ProxyPort => "the proxy's own admin/health/metrics port",
            InboundRule::Redirect => "default: inbound TCP goes to the proxy's inbound listener",
        }
    }
}

/// A TCP connection arriving at the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// The interface it arrived on, where the kernel tells.
    pub ingress_ifindex: Option<u32>,
}

pub trait InboundLists {
    fn inbound_port_excluded(&self, port: u16) -> bool;
    fn interface_excluded(&self, ifindex: u32) -> bool;
}

/// The inbound table, first match wins.
#[inline(always)]
pub fn decide_inbound<L: InboundLists>(conn: &Inbound, lists: &L) -> InboundRule {
    if lists.inbound_port_excluded(conn.dst_port) {
        return InboundRule::ExcludedPort;
    }
    if let Some(ifindex) = conn.ingress_ifindex {
        if lists.interface_excluded(ifindex) {
            return InboundRule::ExcludedInterface;
        }
    }
    let p = conn.dst_port;
    let admin = crate::defaults::PROXY_ADMIN_PORTS;
    if p == admin[0] || p == admin[1] || p == admin[2] || p == admin[3] || p == admin[4] {
        return InboundRule::ProxyPort;
    }
    InboundRule::Redirect
}
