//! The interception decision, in one place.
//!
//! This is the outbound table of `docs/interception-semantics.md`, evaluated top
//! to bottom, first match wins. The eBPF `connect4`/`connect6` programs
//! answer the questions of [`PodLists`] and [`AddrLists`] from their maps;
//! the agent answers them from the configured lists (for `explain` and for
//! tests). All of them then call [`decide_outbound`], so the kernel and the
//! tools can't drift apart.
//!
//! One table serves both families (`crate::addr`): IPv4 addresses as `u32`
//! in host byte order, IPv6 ones as [`Ip6`]. An IPv6 socket dialling an
//! IPv4-mapped address (`::ffff:a.b.c.d`) makes an IPv4 connection, and is
//! decided as one ([`Ip6::to_mapped_v4`]). Ports are in host byte order.

use crate::addr::{Address, Ip6};

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
    /// 0: an IPv6 destination of a pod whose IPv6 is not intercepted
    /// (fsm-init's rules are IPv4 only; `--ipv6 off`, or `auto` without a
    /// global IPv6 address).
    Ipv6Off = 0,
    /// 1: the proxy dialling a local address other than 127.0.0.1 (its own
    /// pod IP): through inbound handling.
    ProxyToLocal = 1,
    /// 2: an application dialling a local address (its own pod, loopback).
    AppToLocal = 2,
    /// 3: the proxy's own upstream connections.
    ProxyUid = 3,
    /// 4: an IPv6 link-local destination (fe80::/10): a proxy could not
    /// dial it back, its answer to `SO_ORIGINAL_DST` has no interface.
    /// (Row 4's other half, destination 127.0.0.1 or ::1, never decides:
    /// those leave via lo, and rows 2 and 3 have matched already.)
    LinkLocal = 4,
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
    /// Where a connection this rule decided goes.
    pub const fn verdict(self) -> Verdict {
        match self {
            OutboundRule::ProxyToLocal => Verdict::RedirectInbound,
            OutboundRule::Included | OutboundRule::Default => Verdict::RedirectOutbound,
            _ => Verdict::Direct,
        }
    }

    /// The rule in words, for `explain` and the logs.
    pub const fn describe(self) -> &'static str {
        match self {
            OutboundRule::Ipv6Off => "IPv6, and the pod's IPv6 is not intercepted (--ipv6)",
            OutboundRule::ProxyToLocal => "proxy UID dialling a local address other than 127.0.0.1 (::1): inbound listener",
            OutboundRule::AppToLocal => "destination is local to the pod (leaves via lo)",
            OutboundRule::ProxyUid => "connection opened by the proxy UID",
            OutboundRule::LinkLocal => "IPv6 link-local destination",
            OutboundRule::ExcludedInterface => "routed through an excluded interface",
            OutboundRule::ExcludedCidr => "destination in an excluded CIDR",
            OutboundRule::ExcludedPort => "destination port excluded",
            OutboundRule::Included => "destination in the inclusion list",
            OutboundRule::NotIncluded => "inclusion list set and destination not in it",
            OutboundRule::Default => "default: all other TCP goes to the proxy",
        }
    }

    /// Every rule, in row order.
    pub const ALL: [OutboundRule; 11] = [
        OutboundRule::Ipv6Off,
        OutboundRule::ProxyToLocal,
        OutboundRule::AppToLocal,
        OutboundRule::ProxyUid,
        OutboundRule::LinkLocal,
        OutboundRule::ExcludedInterface,
        OutboundRule::ExcludedCidr,
        OutboundRule::ExcludedPort,
        OutboundRule::Included,
        OutboundRule::NotIncluded,
        OutboundRule::Default,
    ];

    /// The name of its counter (`crate::maps::counter`) in `status` and
    /// the metrics.
    pub const fn counter_name(self) -> &'static str {
        match self {
            OutboundRule::Ipv6Off => "outbound_direct_ipv6_off",
            OutboundRule::ProxyToLocal => "outbound_to_inbound_listener",
            OutboundRule::AppToLocal => "outbound_direct_local",
            OutboundRule::ProxyUid => "outbound_direct_proxy_uid",
            OutboundRule::LinkLocal => "outbound_direct_link_local",
            OutboundRule::ExcludedInterface => "outbound_direct_excluded_interface",
            OutboundRule::ExcludedCidr => "outbound_direct_excluded_cidr",
            OutboundRule::ExcludedPort => "outbound_direct_excluded_port",
            OutboundRule::Included => "outbound_redirected_included",
            OutboundRule::NotIncluded => "outbound_direct_not_included",
            OutboundRule::Default => "outbound_redirected",
        }
    }
}

/// An outbound TCP connection as `connect()` sees it: `A` is `u32` (IPv4,
/// host byte order) or [`Ip6`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outbound<A> {
    /// The destination `connect()` was given.
    pub dst: A,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// UID of the connecting process.
    pub uid: u32,
}

/// What the decision needs to know about one pod, whatever the family.
pub trait PodLists {
    /// The UID the proxy runs as.
    fn proxy_uid(&self) -> u32;
    /// Connections to `port` stay direct (`outboundPortExclusionList` and the annotation).
    fn port_excluded(&self, port: u16) -> bool;
    /// The inclusion list is non-empty (in either family: a list of IPv4
    /// CIDRs only redirects no IPv6 destination, as in the ip6tables
    /// variant of the rules).
    fn inclusion_enabled(&self) -> bool;
}

/// What the decision needs to know about one pod's addresses and lists of
/// family `A`.
pub trait AddrLists<A>: PodLists {
    /// The pod's connections of this family are intercepted at all (IPv4:
    /// always; IPv6: the pod's `--ipv6` switch).
    fn intercepted(&self) -> bool;
    /// `addr` is one of the pod's own addresses (not loopback): a
    /// connection to it is routed through `lo`.
    fn is_local_addr(&self, addr: A) -> bool;
    /// `addr` is routed through an interface of `networkInterfaceExclusionList`.
    fn routed_via_excluded_iface(&self, addr: A) -> bool;
    /// `addr` is in an excluded CIDR (`outboundIPRangeExclusionList` and the annotation).
    fn cidr_excluded(&self, addr: A) -> bool;
    /// `addr` is in the inclusion list (`outboundIPRangeInclusionList` and the annotation).
    fn cidr_included(&self, addr: A) -> bool;
}

/// Whether a connection the table sent direct by row 3 (the proxy's own)
/// goes to the pod IP instead, in `localProxyMode: PodIP`: fsm-init's
/// `-I OUTPUT -o lo -d 127.0.0.1 --uid-owner 1500 -j DNAT --to-destination
/// $POD_IP` (`::1` and `$POD_IPV6` in the ip6tables variant), which comes
/// before the jump to its outbound chain. Only 127.0.0.1 (`::1`), never the
/// rest of loopback; an IPv4-mapped `::ffff:127.0.0.1` is IPv4.
#[inline(always)]
pub fn to_pod_ip<A: Address>(rule: OutboundRule, conn: &Outbound<A>) -> bool {
    matches!(rule, OutboundRule::ProxyUid) && conn.dst.routed().is_loopback_one()
}

/// The outbound table, first match wins.
#[inline(always)]
pub fn decide_outbound<A: Address, L: AddrLists<A>>(conn: &Outbound<A>, lists: &L) -> OutboundRule {
    if !lists.intercepted() {
        return OutboundRule::Ipv6Off;
    }
    let dst = conn.dst.routed();
    let is_proxy = conn.uid == lists.proxy_uid();
    // Leaves through `lo`: loopback, and the pod's own addresses.
    if dst.is_loopback() || lists.is_local_addr(dst) {
        return if is_proxy && !dst.is_loopback_one() {
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
    if dst.is_link_local() {
        return OutboundRule::LinkLocal;
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
        return if lists.cidr_included(dst) { OutboundRule::Included } else { OutboundRule::NotIncluded };
    }
    OutboundRule::Default
}

/// Where an IPv6 socket's `connect()` goes: an IPv4-mapped address makes
/// an IPv4 connection (the kernel hands it to `tcp_v4_connect`, its packets
/// are IPv4 and meet iptables, not ip6tables), anything else an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest6 {
    /// An IPv4-mapped address: the IPv4 address, host byte order.
    Mapped(u32),
    /// Any other IPv6 address.
    V6(Ip6),
}

impl Dest6 {
    #[inline(always)]
    /// What an IPv6 socket dialling `addr` connects to.
    pub const fn of(addr: Ip6) -> Self {
        match addr.to_mapped_v4() {
            Some(v4) => Dest6::Mapped(v4),
            None => Dest6::V6(addr),
        }
    }
}

/// The decision for a `connect()` to `dst` by a process with `uid`, the way
/// connect4 and connect6 take it (for user space: `explain`, tests).
pub fn decide_connect<L: AddrLists<u32> + AddrLists<Ip6>>(dst: core::net::SocketAddr, uid: u32, lists: &L) -> OutboundRule {
    let dst_port = dst.port();
    match dst.ip() {
        core::net::IpAddr::V4(a) => decide_outbound(&Outbound { dst: u32::from(a), dst_port, uid }, lists),
        core::net::IpAddr::V6(a) => match Dest6::of(Ip6::from_octets(a.octets())) {
            Dest6::Mapped(v4) => decide_outbound(&Outbound { dst: v4, dst_port, uid }, lists),
            Dest6::V6(v6) => decide_outbound(&Outbound { dst: v6, dst_port, uid }, lists),
        },
    }
}

/// The row of the inbound table that decided a connection arriving at the
/// pod from elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InboundRule {
    /// 0: arrived over IPv6 at a pod whose IPv6 is not intercepted.
    Ipv6Off = 0,
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
    /// Where a connection this rule decided goes.
    pub const fn verdict(self) -> Verdict {
        match self {
            InboundRule::Redirect => Verdict::RedirectInbound,
            _ => Verdict::Direct,
        }
    }

    /// The rule in words, for `explain` and the logs.
    pub const fn describe(self) -> &'static str {
        match self {
            InboundRule::Ipv6Off => "IPv6, and the pod's IPv6 is not intercepted (--ipv6)",
            InboundRule::ExcludedPort => "destination port in the inbound exclusion list",
            InboundRule::ExcludedInterface => "arrived on an excluded interface",
            InboundRule::ProxyPort => "the proxy's own admin/health/metrics port",
            InboundRule::Redirect => "default: inbound TCP goes to the proxy's inbound listener",
        }
    }

    /// Every rule, in row order.
    pub const ALL: [InboundRule; 5] =
        [InboundRule::Ipv6Off, InboundRule::ExcludedPort, InboundRule::ExcludedInterface, InboundRule::ProxyPort, InboundRule::Redirect];

    /// The name of its counter (`crate::maps::counter`).
    pub const fn counter_name(self) -> &'static str {
        match self {
            InboundRule::Ipv6Off => "inbound_direct_ipv6_off",
            InboundRule::ExcludedPort => "inbound_direct_excluded_port",
            InboundRule::ExcludedInterface => "inbound_direct_excluded_interface",
            InboundRule::ProxyPort => "inbound_direct_proxy_port",
            InboundRule::Redirect => "inbound_redirected",
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
    /// It arrived over IPv6 (IPv4-mapped never arrives: on the wire it is IPv4).
    pub ipv6: bool,
}

/// What the inbound decision needs to know about one pod.
pub trait InboundLists {
    /// Connections arriving at `port` go to the app (`inboundPortExclusionList` and the annotation).
    fn inbound_port_excluded(&self, port: u16) -> bool;
    /// The interface with this index is in `networkInterfaceExclusionList`.
    fn interface_excluded(&self, ifindex: u32) -> bool;
    /// The pod's IPv6 is intercepted (its `--ipv6` switch).
    fn ipv6_intercepted(&self) -> bool;
}

/// The inbound table, first match wins.
#[inline(always)]
pub fn decide_inbound<L: InboundLists>(conn: &Inbound, lists: &L) -> InboundRule {
    if conn.ipv6 && !lists.ipv6_intercepted() {
        return InboundRule::Ipv6Off;
    }
    if lists.inbound_port_excluded(conn.dst_port) {
        return InboundRule::ExcludedPort;
    }
    if let Some(ifindex) = conn.ingress_ifindex
        && lists.interface_excluded(ifindex)
    {
        return InboundRule::ExcludedInterface;
    }
    let p = conn.dst_port;
    let admin = crate::defaults::PROXY_ADMIN_PORTS;
    if p == admin[0] || p == admin[1] || p == admin[2] || p == admin[3] || p == admin[4] {
        return InboundRule::ProxyPort;
    }
    InboundRule::Redirect
}

#[cfg(test)]
mod tests {
    use super::{Outbound, OutboundRule, to_pod_ip};
    use crate::addr::Ip6;

    #[test]
    fn podip_mode_moves_only_the_proxys_connections_to_127_0_0_1() {
        let v4 = |dst: [u8; 4]| Outbound { dst: u32::from_be_bytes(dst), dst_port: 8080, uid: 1500 };
        assert!(to_pod_ip(OutboundRule::ProxyUid, &v4([127, 0, 0, 1])));
        assert!(to_pod_ip(OutboundRule::ProxyUid, &v4([0, 0, 0, 0])), "0.0.0.0 is routed to 127.0.0.1");
        assert!(!to_pod_ip(OutboundRule::ProxyUid, &v4([127, 0, 0, 2])), "-d 127.0.0.1/32 only");
        assert!(!to_pod_ip(OutboundRule::ProxyUid, &v4([10, 96, 0, 10])));
        assert!(!to_pod_ip(OutboundRule::AppToLocal, &v4([127, 0, 0, 1])), "not an app's");
        assert!(!to_pod_ip(OutboundRule::Ipv6Off, &Outbound { dst: Ip6::LOOPBACK, dst_port: 8080, uid: 1500 }));
        assert!(to_pod_ip(OutboundRule::ProxyUid, &Outbound { dst: Ip6::LOOPBACK, dst_port: 8080, uid: 1500 }));
    }
}
