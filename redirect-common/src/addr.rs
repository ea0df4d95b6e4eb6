//! The two address families as the decision, the hand-over and the maps
//! see them.
//!
//! IPv4 addresses are `u32` in host byte order. IPv6 addresses are [`Ip6`]:
//! four 32-bit words in network byte order, the layout in which the kernel
//! hands them to BPF (`bpf_sock_addr.user_ip6`, `bpf_sock.src_ip6`), so a
//! program copies them without swapping, and as map keys their bytes are
//! the packet's bytes (what an LPM trie matches bit by bit).
//!
//! Comparisons are written word by word: an array compare may become a
//! `memcmp` call, which BPF programs can't make.

use bytemuck::{Pod, Zeroable};

/// An IPv6 address: four words in network byte order (see the module).
/// Ordered as addresses are (by their bytes), not by the words' values.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Ip6(pub [u32; 4]);

impl Ord for Ip6 {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.octets().cmp(&other.octets())
    }
}

impl PartialOrd for Ip6 {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `::ffff:0:0/96`: an IPv4 address in an IPv6 socket's address.
const MAPPED_WORD: [u8; 4] = [0, 0, 0xff, 0xff];

impl Ip6 {
    /// `::`.
    pub const UNSPECIFIED: Ip6 = Ip6([0; 4]);
    /// `::1`.
    pub const LOOPBACK: Ip6 = Ip6([0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);

    #[inline(always)]
    /// From the address's bytes, as they sit in a packet.
    pub const fn from_octets(b: [u8; 16]) -> Self {
        Ip6([
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ])
    }

    #[inline(always)]
    /// The address's bytes, as they sit in a packet.
    pub const fn octets(self) -> [u8; 16] {
        let [a, b, c, d] = [self.0[0].to_ne_bytes(), self.0[1].to_ne_bytes(), self.0[2].to_ne_bytes(), self.0[3].to_ne_bytes()];
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
    }

    /// `::ffff:a.b.c.d` for an IPv4 address (host byte order).
    #[inline(always)]
    pub const fn mapped(v4: u32) -> Self {
        Ip6([0, 0, u32::from_ne_bytes(MAPPED_WORD), v4.to_be()])
    }

    /// The IPv4 address (host byte order) of an IPv4-mapped address: an
    /// IPv6 socket's connection to it is an IPv4 connection.
    #[inline(always)]
    pub const fn to_mapped_v4(self) -> Option<u32> {
        if self.0[0] == 0 && self.0[1] == 0 && self.0[2] == u32::from_ne_bytes(MAPPED_WORD) { Some(u32::from_be(self.0[3])) } else { None }
    }

    #[inline(always)]
    /// Equality, word by word (see the module: no `memcmp` in BPF).
    pub const fn same(self, other: Ip6) -> bool {
        self.0[0] == other.0[0] && self.0[1] == other.0[1] && self.0[2] == other.0[2] && self.0[3] == other.0[3]
    }

    /// The first 64 bits, in network byte order (as a `u64` read from memory).
    #[inline(always)]
    pub const fn prefix64(self) -> [u32; 2] {
        [self.0[0], self.0[1]]
    }
}

/// What the outbound decision needs to know of a destination address, for
/// either family.
pub trait Address: Copy {
    /// Where `connect()` really goes: to 0.0.0.0 or `::`, it reaches the
    /// loopback address (`ip_route_output_key_hash_rcu`; `tcp_v6_connect`),
    /// and that is what nat OUTPUT sees.
    fn routed(self) -> Self;
    /// Leaves through `lo` whatever the pod's addresses: 127.0.0.0/8, `::1`.
    fn is_loopback(self) -> bool;
    /// The address of the table's `-d 127.0.0.1/32` (`-d ::1/128`) rules.
    fn is_loopback_one(self) -> bool;
    /// IPv6 link-local (fe80::/10); never an IPv4 address.
    fn is_link_local(self) -> bool;
}

const LOOPBACK_127_0_0_1: u32 = 0x7f00_0001;

impl Address for u32 {
    #[inline(always)]
    fn routed(self) -> Self {
        if self == 0 { LOOPBACK_127_0_0_1 } else { self }
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self >> 24 == 127
    }
    #[inline(always)]
    fn is_loopback_one(self) -> bool {
        self == LOOPBACK_127_0_0_1
    }
    #[inline(always)]
    fn is_link_local(self) -> bool {
        false
    }
}

impl Address for Ip6 {
    #[inline(always)]
    fn routed(self) -> Self {
        if self.same(Ip6::UNSPECIFIED) { Ip6::LOOPBACK } else { self }
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self.same(Ip6::LOOPBACK)
    }
    #[inline(always)]
    fn is_loopback_one(self) -> bool {
        self.same(Ip6::LOOPBACK)
    }
    #[inline(always)]
    fn is_link_local(self) -> bool {
        let b = self.0[0].to_ne_bytes();
        b[0] == 0xfe && b[1] & 0xc0 == 0x80
    }
}

/// A family's addresses as user space names them: the agent answers the
/// decision's questions for both families with one piece of code.
pub trait Family: Address {
    /// Whether this is the IPv6 family.
    const IS_V6: bool;
    /// The address as `core::net` has it.
    fn ip(self) -> core::net::IpAddr;
}

impl Family for u32 {
    const IS_V6: bool = false;
    fn ip(self) -> core::net::IpAddr {
        core::net::IpAddr::V4(core::net::Ipv4Addr::from(self))
    }
}

impl Family for Ip6 {
    const IS_V6: bool = true;
    fn ip(self) -> core::net::IpAddr {
        core::net::IpAddr::V6(core::net::Ipv6Addr::from(self.octets()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip6(s: &str) -> Ip6 {
        Ip6::from_octets(s.parse::<core::net::Ipv6Addr>().unwrap().octets())
    }

    #[test]
    fn octets_round_trip_and_constants_are_what_they_say() {
        let a = ip6("2001:db8::1:2:3");
        assert_eq!(Ip6::from_octets(a.octets()), a);
        assert_eq!(Ip6::LOOPBACK, ip6("::1"));
        assert_eq!(Ip6::mapped(0x0a00_0001), ip6("::ffff:10.0.0.1"));
        assert!(ip6("fd00::1") < ip6("fe80::1") && ip6("::1") < ip6("::2") && ip6("::ff") < ip6("::100"));
    }

    #[test]
    fn mapped_addresses_and_only_they_are_ipv4() {
        assert_eq!(ip6("::ffff:10.77.0.1").to_mapped_v4(), Some(0x0a4d_0001));
        assert_eq!(ip6("::ffff:0.0.0.0").to_mapped_v4(), Some(0));
        for not in ["::1", "::", "::10.77.0.1", "64:ff9b::10.77.0.1", "fd00::ffff:a4d:1", "::fffe:a4d:1"] {
            assert_eq!(ip6(not).to_mapped_v4(), None, "{not}");
        }
    }

    #[test]
    fn what_leaves_via_lo_and_what_is_link_local() {
        assert_eq!(ip6("::").routed(), Ip6::LOOPBACK);
        assert_eq!(0u32.routed(), LOOPBACK_127_0_0_1);
        assert!(ip6("::1").is_loopback() && ip6("::1").is_loopback_one());
        assert!(!ip6("::2").is_loopback() && !ip6("fd00::1").is_loopback());
        assert!(0x7f00_0005u32.is_loopback() && !0x7f00_0005u32.is_loopback_one());
        for ll in ["fe80::1", "febf:ffff::1"] {
            assert!(ip6(ll).is_link_local(), "{ll}");
        }
        for not in ["fec0::1", "fe00::1", "fd00::1", "::1"] {
            assert!(!ip6(not).is_link_local(), "{not}");
        }
        assert!(!0xa9fe_0001u32.is_link_local(), "IPv4 link-local is an ordinary destination, as in iptables");
    }
}
