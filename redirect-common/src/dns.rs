//! fsm-init's local DNS proxy rule, in one place for the programs
//! (`sendmsg4/6`, `recvmsg4/6`, `connect4/6`, `getpeername4/6`), `explain`
//! and the tests.
//!
//! With `spec.sidecar.localDNSProxy.enable`, FSM v1.0 to v1.4.16 put
//! `-A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT --to-destination
//! 127.0.0.153:5300` into every meshed pod and point its resolver at
//! 127.0.0.153: the sidecar's DNS proxy listens on 127.0.0.153:5300. The
//! rule matches UDP only (TCP to 127.0.0.153:53 goes where it was sent),
//! every UID (it has no owner match: the sidecar's own queries too), and
//! IPv4 packets (so an IPv6 socket's datagram to `::ffff:127.0.0.153`
//! too). Conntrack un-NATs the replies: the client sees them come from
//! 127.0.0.153:53, which glibc's resolver checks.
//!
//! The programs rewrite the destination port of such a datagram (or of a
//! UDP socket's `connect()`), mark the socket, and on a marked socket show
//! the replies' source port, and its peer's, as 53.

use crate::defaults::{DNS_PORT, LOCAL_DNS_PROXY_IP, LOCAL_DNS_PROXY_PORT};

/// 127.0.0.153, host byte order.
pub const ADDR: u32 = u32::from_be_bytes(LOCAL_DNS_PROXY_IP);

/// The row of the UDP table of `docs/interception-semantics.md` that
/// decided a datagram (or a UDP socket's `connect()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UdpRule {
    /// 1: to 127.0.0.153:53 (IPv4, or IPv4-mapped) with the DNS proxy on:
    /// to the proxy, 127.0.0.153:[`LOCAL_DNS_PROXY_PORT`].
    DnsProxy = 1,
    /// 2: everything else goes where it was sent.
    Direct = 2,
}

impl UdpRule {
    /// The rule in words, for `explain`.
    pub const fn describe(self) -> &'static str {
        match self {
            UdpRule::DnsProxy => "UDP to 127.0.0.153:53 goes to the sidecar's local DNS proxy on 127.0.0.153:5300 (localDNSProxy)",
            UdpRule::Direct => "UDP goes where it was sent (only the local DNS proxy's rule rewrites UDP)",
        }
    }

    /// Where a datagram this rule decided goes: the proxy's port on the
    /// same address, or `None` (where it was sent).
    pub const fn port(self) -> Option<u16> {
        match self {
            UdpRule::DnsProxy => Some(LOCAL_DNS_PROXY_PORT),
            UdpRule::Direct => None,
        }
    }
}

/// Decides UDP to `dst:port` (IPv4, host byte order) of a pod whose
/// MeshConfig has the DNS proxy `on`.
#[inline(always)]
pub const fn decide(dst: u32, port: u16, on: bool) -> UdpRule {
    if on && dst == ADDR && port == DNS_PORT { UdpRule::DnsProxy } else { UdpRule::Direct }
}

/// The port a marked socket is shown for a reply (or a peer) at
/// `src:port`: 53 where the rule sent it to the proxy, or `None`.
#[inline(always)]
pub const fn reply_port(src: u32, port: u16) -> Option<u16> {
    if src == ADDR && port == LOCAL_DNS_PROXY_PORT { Some(DNS_PORT) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_udp_to_127_0_0_153_port_53_goes_to_the_proxy_and_its_replies_come_back_from_53() {
        assert_eq!(ADDR, 0x7F00_0099);
        assert_eq!(decide(ADDR, 53, true).port(), Some(5300));
        assert_eq!(decide(ADDR, 53, false), UdpRule::Direct, "the proxy off");
        assert_eq!(decide(ADDR, 5300, true), UdpRule::Direct);
        assert_eq!(decide(ADDR, 54, true), UdpRule::Direct);
        assert_eq!(decide(0x7F00_0035, 53, true), UdpRule::Direct, "127.0.0.53 (systemd-resolved) stays");
        assert_eq!(decide(0x0A60_000A, 53, true), UdpRule::Direct, "a cluster DNS service stays");
        assert_eq!(reply_port(ADDR, 5300), Some(53));
        assert_eq!(reply_port(ADDR, 53), None);
        assert_eq!(reply_port(0x7F00_0001, 5300), None);
    }
}
