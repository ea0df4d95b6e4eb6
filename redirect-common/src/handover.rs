//! How `connect4` hands a redirected connection's original destination to
//! the proxy's `SO_ORIGINAL_DST`, with no map entry per connection and no
//! callback at close.
//!
//! connect4 knows the destination but not the source port (the kernel picks
//! it later); the proxy's accepted socket knows its 4-tuple but nothing of
//! the application's socket. What both ends see is the address the
//! connection was sent to, and connect4 chooses it: 127.128.0.0/10 plus the
//! low 22 bits of the application socket's cookie (unique per socket while
//! the machine runs). connect4 writes the destination into the slot of
//! `HANDOVER` named by the cookie's low 18 bits; getsockopt reads the slot
//! named by its socket's local address.
//!
//! A slot is one `u64`, written and read in one access, so a reader never
//! sees half of one connection and half of another. Besides the
//! destination it holds the address bits above the slot (the tag) and the
//! pod. A connection whose cookie shares the slot but not the tag, or a
//! connection of another pod, gives the proxy the kernel's own answer
//! (ENOENT), never its destination. A wrong answer needs two cookies of one
//! pod equal in all 22 bits, i.e. about 4M socket cookies handed out on the
//! node between one connection's `connect()` and its proxy's `accept()`.
//!
//! Also: every redirected connection has a destination address of its own,
//! so a pod's concurrent redirected connections are not limited to one
//! ephemeral port range towards a single 127.0.0.1:15001.
//!
//! An IPv6 socket dialling an IPv4-mapped address makes an IPv4
//! connection: it is sent to the same address in mapped form
//! (`::ffff:127.128.x.y`) and handed over the same way.
//!
//! IPv6 has a single loopback address, `::1`, so there is no loopback range
//! to carry a cookie. The agent routes a private prefix of its own,
//! [`NET6`]/64, to `lo` in the pod's network namespace (a `local` route:
//! every address of it is the pod's own, as `127.0.0.0/8` is), and
//! connect6 sends a redirected IPv6 connection to `NET6` plus the socket's
//! whole 64-bit cookie. The original destination (20 bytes with the port:
//! no single word holds it) goes into `HANDOVER6`, an LRU hash keyed by
//! that cookie, whose updates and lookups are whole-entry. Cookies are
//! unique while the machine runs, so a proxy's answer is never another
//! connection's destination; an entry evicted before the proxy asked gives
//! the kernel's own answer (ENOENT).

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::Ip6,
    maps::{Ipv4Be, PodConfig, PodId, capacity},
};

/// 127.128.0.0/10 (host byte order): within loopback's 127.0.0.0/8, clear
/// of the addresses in common use (127.0.0.1, 127.0.0.53, 127.0.1.1) and of
/// its broadcast address 127.255.255.255, which TCP can't connect to.
pub const NET: u32 = 0x7F80_0000;
/// The cookie bits an address carries.
const ADDR_MASK: u32 = 0x003F_FFFF;
const SLOT_BITS: u32 = capacity::HANDOVER_SLOTS.trailing_zeros();
const SLOT_MASK: u32 = capacity::HANDOVER_SLOTS - 1;
/// The address bits above the slot's.
const TAG_MASK: u32 = ADDR_MASK >> SLOT_BITS;
const _: () = assert!(capacity::HANDOVER_SLOTS.is_power_of_two() && SLOT_BITS <= 22 && TAG_MASK <= 0xF);

/// Where connect4 sends the connection of the socket with `cookie` (host
/// byte order).
#[inline(always)]
pub const fn address(cookie: u64) -> u32 {
    NET | (cookie as u32 & ADDR_MASK)
}

/// The `HANDOVER` slot of the socket with `cookie`.
#[inline(always)]
pub const fn slot(cookie: u64) -> u32 {
    cookie as u32 & SLOT_MASK
}

/// The slot named by an accepted socket's local address (host byte order),
/// if connect4 chose that address.
#[inline(always)]
pub const fn slot_of(local_addr: u32) -> Option<u32> {
    if local_addr & !ADDR_MASK == NET { Some(local_addr & SLOT_MASK) } else { None }
}

#[inline(always)]
const fn tag(addr: u32) -> u64 {
    ((addr & ADDR_MASK) >> SLOT_BITS) as u64
}

/// 12 bits of the pod id, never 0 (so that an empty slot matches no pod).
/// Two pods share it only if their ids differ by a multiple of 4095.
#[inline(always)]
const fn pod_tag(pod: PodId) -> u64 {
    (pod % 0xFFF + 1) as u64
}

/// A slot of `HANDOVER`: the last redirected connection whose cookie named
/// it. Bits 0–31: the original address (as it sits in a packet), 32–47:
/// the original port (host order), 48–51: the tag, 52–63: the pod. All
/// zero: never written.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Handover(pub u64);

impl Handover {
    #[inline(always)]
    /// The slot of `pod`'s connection of the socket with `cookie`, to `orig_addr`:`orig_port`.
    pub const fn new(pod: PodId, cookie: u64, orig_addr: Ipv4Be, orig_port: u16) -> Self {
        Handover(u32::from_ne_bytes(orig_addr) as u64 | (orig_port as u64) << 32 | tag(address(cookie)) << 48 | pod_tag(pod) << 52)
    }

    /// The original destination, if this slot holds `pod`'s connection that
    /// arrived at `local_addr` (host byte order).
    #[inline(always)]
    pub const fn orig_for(self, pod: PodId, local_addr: u32) -> Option<(Ipv4Be, u16)> {
        let v = self.0;
        if v >> 52 != pod_tag(pod) || (v >> 48) & TAG_MASK as u64 != tag(local_addr) {
            return None;
        }
        Some(((v as u32).to_ne_bytes(), (v >> 32) as u16))
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(transparent)]` over a u64.
unsafe impl aya::Pod for Handover {}

/// The agent's IPv6 hand-over prefix, routed to `lo` in the network
/// namespace of every pod whose IPv6 is intercepted: fd3c:a7e1:52b9:1::/64,
/// a unique local prefix (RFC 4193) with a random global id, so it meets no
/// address a cluster uses.
pub const NET6: [u8; 8] = [0xfd, 0x3c, 0xa7, 0xe1, 0x52, 0xb9, 0x00, 0x01];
/// The length of [`NET6`]: the rest of an address is a socket cookie.
pub const NET6_PREFIX_LEN: u8 = 64;

/// Where connect6 sends the IPv6 connection of the socket with `cookie`:
/// [`NET6`] with the cookie as interface identifier.
#[inline(always)]
pub const fn address6(cookie: u64) -> Ip6 {
    let c = cookie.to_be_bytes();
    let n = NET6;
    Ip6::from_octets([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// The cookie named by an accepted socket's local address, if connect6
/// chose that address.
#[inline(always)]
pub const fn cookie_of6(local_addr: Ip6) -> Option<u64> {
    let net = address6(0).prefix64();
    let [a, b] = local_addr.prefix64();
    if a != net[0] || b != net[1] {
        return None;
    }
    let [w2, w3] = [local_addr.0[2].to_ne_bytes(), local_addr.0[3].to_ne_bytes()];
    Some(u64::from_be_bytes([w2[0], w2[1], w2[2], w2[3], w3[0], w3[1], w3[2], w3[3]]))
}

/// An entry of `HANDOVER6`, keyed by the application socket's cookie: the
/// original destination of a redirected IPv6 connection, and its pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Handover6 {
    /// The original destination.
    pub addr: Ip6,
    /// Host byte order.
    pub port: u16,
    /// Zero.
    pub _pad: u16,
    /// The pod whose socket it was.
    pub pod: PodId,
}

impl Handover6 {
    /// The original destination, if this entry is `pod`'s.
    #[inline(always)]
    pub const fn orig_for(&self, pod: PodId) -> Option<(Ip6, u16)> {
        if self.pod == pod { Some((self.addr, self.port)) } else { None }
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` plain data without padding holes (bytemuck's derive checks).
unsafe impl aya::Pod for Handover6 {}

/// Where the answer to an accepted socket's `SO_ORIGINAL_DST` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `HANDOVER`/`HANDOVER6`: a connection connect4/connect6 redirected
    /// (to the outbound listener, or the inbound one for the proxy's own
    /// connection to its pod IP).
    Handover,
    /// The socket's own local address: a connection sk_lookup steered to
    /// the inbound listener keeps the address and port it was dialled at
    /// (nothing is rewritten), and for a connection that was not steered
    /// conntrack answers that same address. So no record is kept per
    /// inbound connection, and nothing another pod does (a SYN flood) can
    /// make one missing. The caller learns nothing `getsockname` would not
    /// tell it.
    OwnAddress,
}

/// Whether `SO_ORIGINAL_DST` may be answered to a caller with `uid`, on an
/// accepted socket whose local port is `local_port`, from `record`: only
/// the pod's proxy, and from a hand-over record only on a socket of its
/// listeners' ports. Conntrack answers a socket only about its own
/// connection; without this a process of the pod could listen on an
/// address of 127.128.0.0/10 itself, connect to it, and read the
/// destination of another container's connection (or, with a recycled pod
/// id, of an earlier pod's).
#[inline(always)]
pub const fn may_answer(config: &PodConfig, uid: u32, local_port: u16, record: Record) -> bool {
    if uid != config.proxy_uid {
        return false;
    }
    match record {
        Record::Handover => local_port == config.outbound_port || local_port == config.inbound_port,
        Record::OwnAddress => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{Record, may_answer};
    use crate::maps::PodConfig;

    #[test]
    fn only_the_proxy_on_its_listeners_gets_an_original_destination() {
        let c = PodConfig { policy: 0, mesh_policy: 0, proxy_uid: 1500, outbound_port: 15001, inbound_port: 15003, flags: 0 };
        assert!(may_answer(&c, 1500, 15001, Record::Handover));
        assert!(may_answer(&c, 1500, 15003, Record::Handover), "the proxy dialling its own pod IP");
        assert!(may_answer(&c, 1500, 8080, Record::OwnAddress), "a steered socket keeps the app's port");
        assert!(!may_answer(&c, 1000, 8080, Record::OwnAddress));
        assert!(!may_answer(&c, 1000, 15001, Record::Handover), "another container of the pod");
        assert!(!may_answer(&c, 0, 15001, Record::Handover), "not even root: conntrack answers only about a socket's own connection");
        assert!(!may_answer(&c, 1500, 9999, Record::Handover), "a socket the proxy accepted elsewhere");
    }

    use super::*;

    const LOOPBACK: u32 = 0x7F00_0001;
    const SVC: Ipv4Be = [10, 96, 0, 10];

    #[test]
    fn every_address_is_a_connectable_loopback_address_that_names_the_cookies_slot() {
        for cookie in [1, 2, 0x3_ffff, 0x4_0000, 0x3f_ffff, 0x40_0000, 0x7f_ffff, 0xdead_beef_1234, u64::MAX] {
            let a = address(cookie);
            assert_eq!(a >> 24, 127, "{cookie:#x} -> {a:#x}");
            assert!((0x7F80_0000..=0x7FBF_FFFF).contains(&a), "{cookie:#x} -> {a:#x}");
            assert_ne!(a, 0x7FFF_FFFF, "the broadcast address");
            assert_eq!(slot_of(a), Some(slot(cookie)));
            assert!(slot(cookie) < capacity::HANDOVER_SLOTS);
        }
    }

    #[test]
    fn addresses_connect4_never_chooses_name_no_slot() {
        for a in [LOOPBACK, 0x7F00_0035, 0x7F7F_FFFF, 0x7FC0_0000, 0x7FFF_FFFF, 0x0A60_000A, 0x8000_0000, 0xFF80_0000] {
            assert_eq!(slot_of(a), None, "{a:#x}");
        }
    }

    #[test]
    fn a_slot_answers_only_for_its_own_pod_and_connection() {
        let (pod, c) = (7, 0x1234_5678);
        let h = Handover::new(pod, c, SVC, 80);
        assert_eq!(h.orig_for(pod, address(c)), Some((SVC, 80)));
        assert_eq!(Handover::new(pod, c, [255; 4], 65535).orig_for(pod, address(c)), Some(([255; 4], 65535)));
        // Another pod dialling the same address gets nothing.
        assert_eq!(h.orig_for(8, address(c)), None);
        // Never written: no pod's.
        for p in [0, 1, 4095, 4096, u32::MAX] {
            assert_eq!(Handover::default().orig_for(p, address(0)), None, "pod {p}");
        }
        // A later cookie took the slot: the earlier connection's address no
        // longer matches it (ENOENT, not the later one's destination).
        let later = c + u64::from(capacity::HANDOVER_SLOTS);
        assert_eq!(slot(later), slot(c));
        let h2 = Handover::new(pod, later, [10, 1, 1, 1], 443);
        assert_eq!(h2.orig_for(pod, address(c)), None);
        assert_eq!(h2.orig_for(pod, address(later)), Some(([10, 1, 1, 1], 443)));
        // The documented limit: 2^22 cookies later, the address repeats.
        assert_eq!(Handover::new(pod, c + (1 << 22), SVC, 81).orig_for(pod, address(c)), Some((SVC, 81)));
    }

    fn ip6(s: &str) -> Ip6 {
        Ip6::from_octets(s.parse::<core::net::Ipv6Addr>().unwrap().octets())
    }

    #[test]
    fn an_ipv6_redirect_address_carries_the_whole_cookie_in_the_agents_prefix() {
        assert_eq!(address6(0x0123_4567_89ab_cdef), ip6("fd3c:a7e1:52b9:1:123:4567:89ab:cdef"));
        for cookie in [1, 2, 0xffff_ffff, 0x1_0000_0000, 0xdead_beef_1234, u64::MAX] {
            assert_eq!(cookie_of6(address6(cookie)), Some(cookie), "{cookie:#x}");
        }
        // Addresses connect6 never chooses name no cookie: loopback, the
        // pods' own, a neighbouring prefix, mapped ones.
        for other in ["::1", "fd00:244:1::2", "fd3c:a7e1:52b9:2::1", "fd3c:a7e1:52b8:1::1", "::ffff:127.128.0.1", "fe80::1"] {
            assert_eq!(cookie_of6(ip6(other)), None, "{other}");
        }
    }

    #[test]
    fn an_ipv6_entry_answers_only_its_own_pod() {
        let h = Handover6 { addr: ip6("fd00:96::10"), port: 80, _pad: 0, pod: 7 };
        assert_eq!(h.orig_for(7), Some((ip6("fd00:96::10"), 80)));
        assert_eq!(h.orig_for(8), None);
    }
}
