//! How connect4/connect6 hand a redirected connection's original
//! destination to the proxy's `SO_ORIGINAL_DST`, with no map entry per
//! connection and no callback at close.
//!
//! connect4 knows the destination but not the source port (the kernel picks
//! it later); the proxy's accepted socket knows its 4-tuple but nothing of
//! the application's socket. What both ends see is the address the
//! connection was sent to, and connect4 chooses it: an address of
//! loopback that names a slot where it leaves the destination. getsockopt
//! reads the slot its socket's local address names. Every redirected
//! connection so has a destination address of its own, and a pod's
//! concurrent redirected connections are not limited to one ephemeral port
//! range towards a single 127.0.0.1:15001. An IPv6 socket dialling an
//! IPv4-mapped address makes an IPv4 connection: it is sent to the same
//! address in mapped form (`::ffff:127.x.y.z`) and handed over the same way.
//!
//! IPv6 has a single loopback address, `::1`, so there is no loopback range
//! to carry a slot. The agent routes a private prefix of its own,
//! [`NET6`]/64, to `lo` in the pod's network namespace (a `local` route:
//! every address of it is the pod's own, as `127.0.0.0/8` is), and
//! connect6 sends a redirected IPv6 connection to an address of it.
//!
//! Two forms, told apart by the address:
//!
//! - [`per_pod`] (kernels with atomic fetch-and-add in BPF, 5.12 and
//!   later): each pod has its own region of the hand-over arrays, and its
//!   connections take the region's slots in turn, numbered by the region's
//!   counter. Another pod's connects never write into a pod's region
//!   however many it makes, and a pod's own connection loses its slot only
//!   after [`per_pod::REGION_SLOTS`] later connects of that pod.
//! - [`node_wide`] (kernels before 5.12, and what earlier releases wrote,
//!   still read while an upgrade swaps a pod's programs): one ring for the
//!   node, the slot named by the socket cookie (node-wide, so every pod's
//!   connects move it on), IPv6 in an LRU hash keyed by the cookie.
//!
//! In either form a slot that no longer holds the connection gives the
//! proxy the kernel's own answer (ENOENT, and the proxy drops that one
//! connection), never another connection's destination: each slot carries
//! bits of the address beyond those that name it, and the pod.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::Ip6,
    maps::{Ipv4Be, PodConfig, PodId, capacity},
};

/// The agent's IPv6 hand-over prefix, routed to `lo` in the network
/// namespace of every pod whose IPv6 is intercepted: fd3c:a7e1:52b9:1::/64,
/// a unique local prefix (RFC 4193) with a random global id, so it meets no
/// address a cluster uses.
pub const NET6: [u8; 8] = [0xfd, 0x3c, 0xa7, 0xe1, 0x52, 0xb9, 0x00, 0x01];
/// The length of [`NET6`]: the rest of an address names a slot.
pub const NET6_PREFIX_LEN: u8 = 64;

/// Whether `addr` is in [`NET6`], whichever form chose it.
#[inline(always)]
pub const fn in_net6(addr: Ip6) -> bool {
    let net = Ip6::from_octets([NET6[0], NET6[1], NET6[2], NET6[3], NET6[4], NET6[5], NET6[6], NET6[7], 0, 0, 0, 0, 0, 0, 0, 0]).prefix64();
    let [a, b] = addr.prefix64();
    a == net[0] && b == net[1]
}

/// Whether connect4 chose `addr` (host byte order) to hand a connection
/// over, in either form.
#[inline(always)]
pub const fn is_address_v4(addr: u32) -> bool {
    per_pod::is_address(addr) || node_wide::is_address(addr)
}

/// The interface identifier of an address of [`NET6`] (host order).
#[inline(always)]
const fn iid6(addr: Ip6) -> u64 {
    let [w2, w3] = [addr.0[2].to_ne_bytes(), addr.0[3].to_ne_bytes()];
    u64::from_be_bytes([w2[0], w2[1], w2[2], w2[3], w3[0], w3[1], w3[2], w3[3]])
}

/// [`NET6`] with interface identifier `iid`.
#[inline(always)]
const fn in_net6_at(iid: u64) -> Ip6 {
    let c = iid.to_be_bytes();
    let n = NET6;
    Ip6::from_octets([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// The form of the three words of an IPv6 destination (18 bytes with the
/// port: no single word holds it): bits 0–47 of each word a third of it
/// (address bytes 0–5, 6–11, then 12–15 and the port), bits 48–63 the same
/// `meta` in all three. Each word is written and read in one access; a
/// reader takes the destination only if all three carry the meta it
/// expects, so a slot rewritten meanwhile gives ENOENT, never a mix of two
/// destinations.
#[inline(always)]
const fn words6(meta: u16, addr: Ip6, port: u16) -> [u64; 3] {
    let b = addr.octets();
    let p = port.to_be_bytes();
    let m = (meta as u64) << 48;
    [
        m | u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]),
        m | u64::from_be_bytes([0, 0, b[6], b[7], b[8], b[9], b[10], b[11]]),
        m | u64::from_be_bytes([0, 0, b[12], b[13], b[14], b[15], p[0], p[1]]),
    ]
}

/// The destination three words hold, if all three carry `meta`.
#[inline(always)]
const fn from_words6(words: [u64; 3], meta: u16) -> Option<(Ip6, u16)> {
    let m = meta as u64;
    if words[0] >> 48 != m || words[1] >> 48 != m || words[2] >> 48 != m {
        return None;
    }
    let [a, b, c] = [words[0].to_be_bytes(), words[1].to_be_bytes(), words[2].to_be_bytes()];
    let addr = Ip6::from_octets([a[2], a[3], a[4], a[5], a[6], a[7], b[2], b[3], b[4], b[5], b[6], b[7], c[2], c[3], c[4], c[5]]);
    Some((addr, u16::from_be_bytes([c[6], c[7]])))
}

/// The hand-over of kernels with atomic fetch-and-add (5.12 and later): a
/// region per pod, slots taken in turn.
///
/// The pod's region is its id mod [`REGIONS`]; the agent gives out ids so
/// that no two pods share a region while the node has at most `REGIONS`
/// meshed pods (beyond that, pods share one, and tell their slots apart by
/// the id bits a slot keeps). Each region has a counter per family in
/// `HANDOVER_SEQ`: connect takes the next number `n` with one atomic
/// fetch-and-add, writes the destination into slot `n mod REGION_SLOTS` of
/// its region, and sends the connection to an address carrying the low 22
/// bits of `n` (IPv4: 127.64.0.0/10; IPv6: [`NET6`] with the top bit of the
/// interface identifier set, and all 32 bits of `n`). A slot keeps the bits
/// of `n` above the slot's, so a connection whose slot a later one took
/// gets ENOENT; a wrong answer would need 2^22 connects of the pod between
/// one `connect()` and its proxy's `SO_ORIGINAL_DST`.
pub mod per_pod {
    use super::{Ip6, Ipv4Be, Pod, PodId, Zeroable, capacity};

    /// 127.64.0.0/10 (host byte order): within loopback's 127.0.0.0/8,
    /// clear of the addresses in common use (127.0.0.1, 127.0.0.53,
    /// 127.0.1.1) and of the node-wide form's 127.128.0.0/10.
    pub const NET: u32 = 0x7F40_0000;
    /// The number bits an IPv4 address carries.
    const ADDR_MASK: u32 = 0x003F_FFFF;
    /// Regions: a pod's hand-overs go into region `id mod REGIONS`.
    pub const REGIONS: u32 = capacity::HANDOVER_REGIONS;
    /// Slots per region: how many later connects of its own pod a
    /// connection's hand-over outlives.
    pub const REGION_SLOTS: u32 = capacity::HANDOVER_REGION_SLOTS;
    const REGION_BITS: u32 = REGION_SLOTS.trailing_zeros();
    const REGION_MASK: u32 = REGION_SLOTS - 1;
    /// The pod's id above its region: 4 bits, ids are below 4096.
    const POD_HIGH_BITS: u32 = 4;
    /// The bits of `n` above the slot's that an IPv4 slot keeps.
    const TAG_BITS: u32 = 22 - REGION_BITS;
    const _: () = assert!(
        REGIONS.is_power_of_two()
            && REGION_SLOTS.is_power_of_two()
            && capacity::PODS / REGIONS <= 1 << POD_HIGH_BITS
            && TAG_BITS + POD_HIGH_BITS < 16
    );

    /// The region of `pod`.
    #[inline(always)]
    pub const fn region(pod: PodId) -> u32 {
        pod % REGIONS
    }

    /// The index in `HANDOVER_SEQ` of `pod`'s counter for IPv4 (`v6`
    /// false) or IPv6.
    #[inline(always)]
    pub const fn counter(pod: PodId, v6: bool) -> u32 {
        region(pod) + if v6 { REGIONS } else { 0 }
    }

    /// The slot of `pod`'s connection number `n`, in either family's array.
    #[inline(always)]
    pub const fn slot(pod: PodId, n: u32) -> u32 {
        region(pod) * REGION_SLOTS + (n & REGION_MASK)
    }

    /// 16 bits kept with a slot (IPv4: above the destination; IPv6: in each
    /// of its three words): `tag` (the bits of `n` above the slot's that
    /// the address carries), the pod's id above its region, and a bit that
    /// says it was written (so that a slot never written matches nothing).
    #[inline(always)]
    const fn meta(pod: PodId, tag: u32) -> u16 {
        (1 << 15 | ((pod / REGIONS) & ((1 << POD_HIGH_BITS) - 1)) << TAG_BITS | (tag & ((1 << TAG_BITS) - 1))) as u16
    }

    /// Where connect4 sends `pod`'s connection number `n` (host byte order).
    #[inline(always)]
    pub const fn address(n: u32) -> u32 {
        NET | (n & ADDR_MASK)
    }

    /// Whether connect4 chose `addr` (host byte order) in this form.
    #[inline(always)]
    pub const fn is_address(addr: u32) -> bool {
        addr & !ADDR_MASK == NET
    }

    /// The slot of `pod` named by an accepted socket's local address (host
    /// byte order), if connect4 chose that address in this form.
    #[inline(always)]
    pub const fn slot_of(pod: PodId, local_addr: u32) -> Option<u32> {
        if is_address(local_addr) { Some(slot(pod, local_addr)) } else { None }
    }

    /// A slot of `HANDOVER_POD`: bits 0–31 the original address (as it
    /// sits in a packet), 32–47 the original port (host order), 48–63 the
    /// meta. All zero: never written.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
    pub struct Slot(pub u64);

    impl Slot {
        /// The slot of `pod`'s connection number `n`, to `addr`:`port`.
        #[inline(always)]
        pub const fn new(pod: PodId, n: u32, addr: Ipv4Be, port: u16) -> Self {
            Slot(u32::from_ne_bytes(addr) as u64 | (port as u64) << 32 | (meta(pod, (n & ADDR_MASK) >> REGION_BITS) as u64) << 48)
        }

        /// The original destination, if this slot holds `pod`'s connection
        /// that arrived at `local_addr` (host byte order).
        #[inline(always)]
        pub const fn orig_for(self, pod: PodId, local_addr: u32) -> Option<(Ipv4Be, u16)> {
            let v = self.0;
            if (v >> 48) as u16 != meta(pod, (local_addr & ADDR_MASK) >> REGION_BITS) {
                return None;
            }
            Some(((v as u32).to_ne_bytes(), (v >> 32) as u16))
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: `#[repr(transparent)]` over a u64.
    unsafe impl aya::Pod for Slot {}

    /// The interface identifier's top bit: this form (cookies, which the
    /// node-wide form carries, never reach it).
    const FORM6: u64 = 1 << 63;

    /// Where connect6 sends `pod`'s IPv6 connection number `n`.
    #[inline(always)]
    pub const fn address6(n: u32) -> Ip6 {
        super::in_net6_at(FORM6 | n as u64)
    }

    /// The number an accepted socket's local address carries, if connect6
    /// chose that address in this form.
    #[inline(always)]
    pub const fn number_of6(local_addr: Ip6) -> Option<u32> {
        let iid = super::iid6(local_addr);
        if super::in_net6(local_addr) && iid & !0xFFFF_FFFF == FORM6 { Some(iid as u32) } else { None }
    }

    /// A slot of `HANDOVER6_POD`: three words (see `words6` in the parent
    /// module), each with the meta.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
    pub struct Slot6(pub [u64; 3]);

    impl Slot6 {
        /// The slot of `pod`'s IPv6 connection number `n`, to `addr`:`port`.
        #[inline(always)]
        pub const fn new(pod: PodId, n: u32, addr: Ip6, port: u16) -> Self {
            Slot6(super::words6(meta(pod, n >> REGION_BITS), addr, port))
        }

        /// The original destination, if all three words (each read whole,
        /// one by one) hold `pod`'s connection number `n`.
        #[inline(always)]
        pub const fn orig_for(words: [u64; 3], pod: PodId, n: u32) -> Option<(Ip6, u16)> {
            super::from_words6(words, meta(pod, n >> REGION_BITS))
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: `#[repr(transparent)]` over plain u64s.
    unsafe impl aya::Pod for Slot6 {}
}

/// The hand-over of kernels before 5.12, and of earlier releases: one ring
/// for the node.
///
/// connect4 sends the connection to 127.128.0.0/10 plus the low 22 bits of
/// the application socket's cookie (unique per socket while the machine
/// runs) and writes the destination into the slot of `HANDOVER` named by
/// the cookie's low 18 bits. A slot keeps the address bits above the
/// slot's (the tag) and the pod; a wrong answer needs two cookies of one
/// pod equal in all 22 bits, i.e. about 4M socket cookies handed out on the
/// node between one `connect()` and its proxy's `accept()`. Cookies are
/// node-wide: every pod's connects move the ring on, and about 256 Ki
/// cookies later a slot is taken again.
///
/// connect6 sends the connection to [`NET6`] plus the socket's whole
/// cookie, and puts the destination into `HANDOVER6`, an LRU hash keyed by
/// the cookie (64 Ki entries for the node).
pub mod node_wide {
    use super::{Ip6, Ipv4Be, Pod, PodId, Zeroable, capacity};

    /// 127.128.0.0/10 (host byte order): within loopback's 127.0.0.0/8,
    /// clear of the addresses in common use (127.0.0.1, 127.0.0.53,
    /// 127.0.1.1) and of its broadcast address 127.255.255.255, which TCP
    /// can't connect to.
    pub const NET: u32 = 0x7F80_0000;
    /// The cookie bits an address carries.
    const ADDR_MASK: u32 = 0x003F_FFFF;
    const SLOT_BITS: u32 = capacity::HANDOVER_SLOTS.trailing_zeros();
    const SLOT_MASK: u32 = capacity::HANDOVER_SLOTS - 1;
    /// The address bits above the slot's.
    const TAG_MASK: u32 = ADDR_MASK >> SLOT_BITS;
    const _: () = assert!(capacity::HANDOVER_SLOTS.is_power_of_two() && SLOT_BITS <= 22 && TAG_MASK <= 0xF);

    /// Where connect4 sends the connection of the socket with `cookie`
    /// (host byte order).
    #[inline(always)]
    pub const fn address(cookie: u64) -> u32 {
        NET | (cookie as u32 & ADDR_MASK)
    }

    /// The `HANDOVER` slot of the socket with `cookie`.
    #[inline(always)]
    pub const fn slot(cookie: u64) -> u32 {
        cookie as u32 & SLOT_MASK
    }

    /// The slot named by an accepted socket's local address (host byte
    /// order), if connect4 chose that address in this form.
    #[inline(always)]
    pub const fn slot_of(local_addr: u32) -> Option<u32> {
        if is_address(local_addr) { Some(local_addr & SLOT_MASK) } else { None }
    }

    /// Whether connect4 chose `addr` (host byte order) in this form.
    #[inline(always)]
    pub const fn is_address(addr: u32) -> bool {
        addr & !ADDR_MASK == NET
    }

    #[inline(always)]
    const fn tag(addr: u32) -> u64 {
        ((addr & ADDR_MASK) >> SLOT_BITS) as u64
    }

    /// 12 bits of the pod id, never 0 (so that an empty slot matches no
    /// pod). Two pods share it only if their ids differ by a multiple of
    /// 4095.
    #[inline(always)]
    const fn pod_tag(pod: PodId) -> u64 {
        (pod % 0xFFF + 1) as u64
    }

    /// A slot of `HANDOVER`: the last redirected connection whose cookie
    /// named it. Bits 0–31: the original address (as it sits in a packet),
    /// 32–47: the original port (host order), 48–51: the tag, 52–63: the
    /// pod. All zero: never written.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
    pub struct Handover(pub u64);

    impl Handover {
        /// The slot of `pod`'s connection of the socket with `cookie`, to
        /// `orig_addr`:`orig_port`.
        #[inline(always)]
        pub const fn new(pod: PodId, cookie: u64, orig_addr: Ipv4Be, orig_port: u16) -> Self {
            Handover(u32::from_ne_bytes(orig_addr) as u64 | (orig_port as u64) << 32 | tag(address(cookie)) << 48 | pod_tag(pod) << 52)
        }

        /// The original destination, if this slot holds `pod`'s connection
        /// that arrived at `local_addr` (host byte order).
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

    /// Where connect6 sends the IPv6 connection of the socket with
    /// `cookie`: [`super::NET6`] with the cookie as interface identifier.
    #[inline(always)]
    pub const fn address6(cookie: u64) -> Ip6 {
        super::in_net6_at(cookie)
    }

    /// The cookie named by an accepted socket's local address, if connect6
    /// chose that address in this form (a cookie never has the top bit,
    /// which marks the per-pod form).
    #[inline(always)]
    pub const fn cookie_of6(local_addr: Ip6) -> Option<u64> {
        let iid = super::iid6(local_addr);
        if super::in_net6(local_addr) && iid >> 63 == 0 { Some(iid) } else { None }
    }

    /// An entry of `HANDOVER6`, keyed by the application socket's cookie:
    /// the original destination of a redirected IPv6 connection, and its
    /// pod. Updates and lookups are whole-entry.
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
}

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

    fn ip6(s: &str) -> Ip6 {
        Ip6::from_octets(s.parse::<core::net::Ipv6Addr>().unwrap().octets())
    }

    mod per_pod_form {
        use super::{super::per_pod::*, *};

        #[test]
        fn every_address_is_a_connectable_loopback_address_that_names_the_numbers_slot_in_the_pods_region() {
            for pod in [1, 2, 255, 256, 257, 4095] {
                for n in [0, 1, 2, 0x7ff, 0x800, 0x3f_ffff, 0x40_0000, 0xdead_beef, u32::MAX] {
                    let a = address(n);
                    assert!((0x7F40_0000..=0x7F7F_FFFF).contains(&a), "{n:#x} -> {a:#x}");
                    assert_eq!(slot_of(pod, a), Some(slot(pod, n)));
                    assert!(slot(pod, n) < capacity::HANDOVER_REGIONS * capacity::HANDOVER_REGION_SLOTS);
                    let first = region(pod) * REGION_SLOTS;
                    assert!((first..first + REGION_SLOTS).contains(&slot(pod, n)), "pod {pod}: its own region");
                    assert_eq!(number_of6(address6(n)), Some(n));
                    assert!(in_net6(address6(n)));
                }
            }
        }

        #[test]
        fn addresses_of_the_other_form_or_none_name_no_slot() {
            for a in [LOOPBACK, 0x7F00_0035, 0x7F3F_FFFF, 0x7F80_0000, 0x7FFF_FFFF, 0x0A60_000A, 0x8000_0000] {
                assert_eq!(slot_of(7, a), None, "{a:#x}");
            }
            for a in [super::super::node_wide::address6(1), super::super::node_wide::address6(0x7fff_ffff_ffff_ffff), ip6("::1")] {
                assert_eq!(number_of6(a), None, "{a:?}");
            }
        }

        #[test]
        fn a_pods_next_region_slots_connects_never_take_one_anothers_slot_and_no_other_pods_do() {
            // In turn: the slots of REGION_SLOTS consecutive numbers are all
            // different, whatever number the counter is at.
            for start in [0, 5, u32::MAX - 3] {
                let mut seen = [false; REGION_SLOTS as usize];
                for i in 0..REGION_SLOTS {
                    let s = slot(7, start.wrapping_add(i)) - region(7) * REGION_SLOTS;
                    assert!(!core::mem::replace(&mut seen[s as usize], true), "from {start}: slot {s} twice");
                }
            }
            // Pod 8's numbers never name a slot of pod 7's region; pod 7 + REGIONS shares it.
            let of_7 = |s: u32| (region(7) * REGION_SLOTS..(region(7) + 1) * REGION_SLOTS).contains(&s);
            assert!((0..3 * REGION_SLOTS).all(|n| of_7(slot(7, n)) && !of_7(slot(8, n))));
            assert!(of_7(slot(7 + REGIONS, 5)));
            assert_ne!(counter(7, false), counter(8, false));
            assert_ne!(counter(7, false), counter(7, true));
        }

        #[test]
        fn a_slot_answers_only_its_own_pod_and_connection() {
            let (pod, n) = (7, 0x1234);
            let s = Slot::new(pod, n, SVC, 80);
            assert_eq!(s.orig_for(pod, address(n)), Some((SVC, 80)));
            assert_eq!(Slot::new(pod, n, [0; 4], 0).orig_for(pod, address(n)), Some(([0; 4], 0)), "written, whatever it holds");
            assert_eq!(Slot::new(pod, n, [255; 4], 65535).orig_for(pod, address(n)), Some(([255; 4], 65535)));
            // A pod sharing the region (more than REGIONS pods) reads this
            // slot and gets nothing.
            assert_eq!(slot_of(pod + REGIONS, address(n)), slot_of(pod, address(n)));
            assert_eq!(s.orig_for(pod + REGIONS, address(n)), None);
            for p in [0, 1, 255, 256, 4095] {
                assert_eq!(Slot::default().orig_for(p, address(0)), None, "never written: pod {p}");
            }
            // The pod's connection REGION_SLOTS later took the slot: ENOENT
            // for the earlier one, not the later one's destination.
            let later = n + REGION_SLOTS;
            assert_eq!(slot(pod, later), slot(pod, n));
            let s2 = Slot::new(pod, later, [10, 1, 1, 1], 443);
            assert_eq!(s2.orig_for(pod, address(n)), None);
            assert_eq!(s2.orig_for(pod, address(later)), Some(([10, 1, 1, 1], 443)));
            // The documented limit: 2^22 connects later, the address repeats.
            assert_eq!(Slot::new(pod, n + (1 << 22), SVC, 81).orig_for(pod, address(n)), Some((SVC, 81)));
        }

        #[test]
        fn an_ipv6_slot_answers_only_its_own_connection_and_never_a_mix_of_two() {
            let (pod, n) = (7, 0x0123_4567);
            let dst = ip6("fd00:96::10");
            let s = Slot6::new(pod, n, dst, 8080);
            assert_eq!(Slot6::orig_for(s.0, pod, n), Some((dst, 8080)));
            let all = ip6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
            assert_eq!(Slot6::orig_for(Slot6::new(pod, n, all, 65535).0, pod, n), Some((all, 65535)));
            assert_eq!(Slot6::orig_for(s.0, pod + REGIONS, n), None, "a pod sharing the region");
            assert_eq!(Slot6::orig_for([0; 3], pod, 0), None, "never written");
            // A later connection of the pod rewriting the slot word by word:
            // every mix is refused.
            let later = Slot6::new(pod, n + REGION_SLOTS, ip6("fd00:96::99"), 443);
            for mask in 1..7u8 {
                let mixed: [u64; 3] = core::array::from_fn(|i| if mask & (1 << i) != 0 { later.0[i] } else { s.0[i] });
                assert_eq!(Slot6::orig_for(mixed, pod, n), None, "mix {mask:#b}");
                assert_eq!(Slot6::orig_for(mixed, pod, n + REGION_SLOTS), None, "mix {mask:#b}");
            }
        }
    }

    mod node_wide_form {
        use super::{super::node_wide::*, *};

        #[test]
        fn every_address_is_a_connectable_loopback_address_that_names_the_cookies_slot() {
            for cookie in [1, 2, 0x3_ffff, 0x4_0000, 0x3f_ffff, 0x40_0000, 0x7f_ffff, 0xdead_beef_1234, u64::MAX] {
                let a = address(cookie);
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
            assert_eq!(slot_of(super::super::per_pod::address(5)), None);
        }

        #[test]
        fn an_address_of_either_form_is_a_hand_over_address_and_no_other_is() {
            for a in [super::super::per_pod::address(0), super::super::per_pod::address(u32::MAX), address(1), address(u64::MAX)] {
                assert!(super::super::is_address_v4(a), "{a:#x}");
            }
            for a in [LOOPBACK, 0x7F00_0035, 0x7F3F_FFFF, 0x7FC0_0000, 0x7FFF_FFFF, 0x0A60_000A] {
                assert!(!super::super::is_address_v4(a), "{a:#x}");
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

        #[test]
        fn an_ipv6_redirect_address_carries_the_whole_cookie_in_the_agents_prefix() {
            assert_eq!(address6(0x0123_4567_89ab_cdef), ip6("fd3c:a7e1:52b9:1:123:4567:89ab:cdef"));
            for cookie in [1, 2, 0xffff_ffff, 0x1_0000_0000, 0xdead_beef_1234, (1 << 63) - 1] {
                assert_eq!(cookie_of6(address6(cookie)), Some(cookie), "{cookie:#x}");
            }
            // Addresses connect6 never chooses name no cookie: loopback, the
            // pods' own, a neighbouring prefix, mapped ones, the per-pod form.
            for other in ["::1", "fd00:244:1::2", "fd3c:a7e1:52b9:2::1", "fd3c:a7e1:52b8:1::1", "::ffff:127.128.0.1", "fe80::1"] {
                assert_eq!(cookie_of6(ip6(other)), None, "{other}");
            }
            assert_eq!(cookie_of6(super::super::per_pod::address6(5)), None);
        }

        #[test]
        fn an_ipv6_entry_answers_only_its_own_pod() {
            let h = Handover6 { addr: ip6("fd00:96::10"), port: 80, _pad: 0, pod: 7 };
            assert_eq!(h.orig_for(7), Some((ip6("fd00:96::10"), 80)));
            assert_eq!(h.orig_for(8), None);
        }
    }
}
