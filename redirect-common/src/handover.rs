//! How `connect4` hands a redirected connection's original destination to
//! the proxy's `SO_ORIGINAL_DST`, with no map entry per connection and no
//! callback at close.
//!
//! connect4 knows the destination but not the source port (the kernel picks
//! it later); the proxy's accepted socket knows its 4-tuple but nothing of
//! the application's socket. What both ends see is the address the
//! connection was sent to, and connect4 chooses it: 127.128.0.0/9 plus the
//! low 23 bits of the application socket's cookie (unique per socket while
//! the machine runs). connect4 writes the destination into the slot of
//! `HANDOVER` named by the cookie's low bits; getsockopt reads the slot
//! named by its socket's local address.
//!
//! A slot holds the whole cookie. A later connection whose cookie shares
//! the slot but not the address (another tag in the upper bits) overwrites
//! it; if that happens before the proxy asked, the proxy gets the kernel's
//! own answer (ENOENT), never that other connection's destination. A wrong
//! answer needs two cookies equal in all 23 bits, i.e. 8M redirected
//! connects on the node between one connection's `connect()` and its
//! proxy's `accept()`.
//!
//! Also: every redirected connection has a destination address of its own,
//! so a pod's concurrent redirected connections are not limited to one
//! ephemeral port range towards a single 127.0.0.1:15001.

use bytemuck::{Pod, Zeroable};

use crate::maps::{Ipv4Be, capacity};

/// 127.128.0.0/9 (host byte order): within loopback's 127.0.0.0/8, and
/// clear of the addresses in common use (127.0.0.1, 127.0.0.53, 127.0.1.1).
pub const NET: u32 = 0x7F80_0000;
/// The cookie bits an address carries.
const TAG_MASK: u32 = 0x007F_FFFF;
const SLOT_MASK: u32 = capacity::HANDOVER_SLOTS - 1;
const _: () = assert!(capacity::HANDOVER_SLOTS.is_power_of_two() && SLOT_MASK <= TAG_MASK);

/// Where connect4 sends the connection of the socket with `cookie` (host
/// byte order).
#[inline(always)]
pub const fn address(cookie: u64) -> u32 {
    NET | (cookie as u32 & TAG_MASK)
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
    if local_addr & !TAG_MASK == NET { Some(local_addr & SLOT_MASK) } else { None }
}

/// A slot of `HANDOVER`: the last redirected connection whose cookie named it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Handover {
    /// 0 in a slot never written (the kernel's cookies start at 1).
    pub cookie: u64,
    pub orig_addr: Ipv4Be,
    /// Host byte order.
    pub orig_port: u16,
    /// The proxy port connect4 sent the connection to (host byte order).
    pub proxy_port: u16,
}

impl Handover {
    /// Whether this slot still holds the connection that arrived at
    /// `local_addr`:`local_port` (host byte order).
    #[inline(always)]
    pub const fn is_for(&self, local_addr: u32, local_port: u16) -> bool {
        self.cookie != 0 && address(self.cookie) == local_addr && self.proxy_port == local_port
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` plain data without padding holes (bytemuck checks).
unsafe impl aya::Pod for Handover {}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: u32 = 0x7F00_0001;

    fn entry(cookie: u64) -> Handover {
        Handover { cookie, orig_addr: [10, 96, 0, 10], orig_port: 80, proxy_port: 15001 }
    }

    #[test]
    fn every_address_is_loopback_outside_127_0_and_names_the_cookies_slot() {
        for cookie in [1, 2, 0x3_ffff, 0x4_0000, 0x7f_ffff, 0x80_0000, 0xdead_beef_1234, u64::MAX] {
            let a = address(cookie);
            assert_eq!(a >> 24, 127, "{cookie:#x} -> {a:#x}");
            assert!(a >= 0x7F80_0000, "{cookie:#x} -> {a:#x}");
            assert_eq!(slot_of(a), Some(slot(cookie)));
            assert!(slot(cookie) < capacity::HANDOVER_SLOTS);
        }
    }

    #[test]
    fn addresses_connect4_never_chooses_name_no_slot() {
        for a in [LOOPBACK, 0x7F00_0035, 0x7F7F_FFFF, 0x0A60_000A, 0x8000_0000, 0xFF80_0000] {
            assert_eq!(slot_of(a), None, "{a:#x}");
        }
    }

    #[test]
    fn a_slot_answers_only_for_its_own_connection() {
        let c = 0x1234_5678;
        assert!(entry(c).is_for(address(c), 15001));
        // Another proxy port at the same address: not what connect4 did.
        assert!(!entry(c).is_for(address(c), 15003));
        // Never written.
        assert!(!Handover::default().is_for(address(0), 0));
        // A later cookie took the slot: the earlier connection's address no
        // longer matches it (ENOENT, not the later one's destination).
        let later = c + u64::from(capacity::HANDOVER_SLOTS);
        assert_eq!(slot(later), slot(c));
        assert!(!entry(later).is_for(address(c), 15001));
        assert!(entry(later).is_for(address(later), 15001));
        // The documented limit: 2^23 cookies later, the address repeats.
        assert!(entry(c + (1 << 23)).is_for(address(c), 15001));
    }
}
