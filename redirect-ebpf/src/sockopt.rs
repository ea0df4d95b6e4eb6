//! `cgroup/getsockopt`: answers the proxy's `SO_ORIGINAL_DST` on the accepted
//! socket of a redirected connection, as iptables REDIRECT plus conntrack
//! would:
//!
//! - `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on an IPv4 connection, whether
//!   the proxy's socket is AF_INET or an AF_INET6 socket of a dual-stack
//!   listener holding it in mapped form (Envoy asks this for both; HAProxy
//!   for AF_INET): a `sockaddr_in`;
//! - `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an IPv6 connection: a
//!   `sockaddr_in6`.
//!
//! A connection connect4/connect6 redirected is answered from the hand-over
//! its local address names; any other connection the proxy accepted, from
//! the socket's own local address (an inbound connection sk_lookup steered
//! keeps the address it was dialled at; see `handover::Record`).
//!
//! The program runs after the kernel has answered. Where conntrack knew the
//! connection (iptables NAT rewrote it: fsm-init's rules in the same pod,
//! or any other REDIRECT/DNAT), its answer is the truth of where the
//! socket's peer dialled, and it stands: a pod served by fsm-init and
//! enrolled too reads the port the client dialled, not 15003. The one
//! exception is an answer naming one of our hand-over addresses (connect4
//! redirected the connection, then iptables redirected it again): that is
//! translated to the original destination the hand-over holds.
//!
//! Conntrack answers neither question for the other family's connection
//! (its tuple has the wrong family: ENOENT); neither do we. And it answers
//! a socket only about its own connection: we answer only the pod's proxy
//! (its UID), from a hand-over only on a socket accepted by its listeners'
//! ports (`handover::may_answer`), so that no other process of the pod can
//! read a destination by accepting a connection to an address of its
//! choosing. The proxy's own outgoing sockets (marked by connect4/connect6
//! in `PROXY_DIALLED`), listening sockets and sockets not connected are
//! left to the kernel.
//!
//! Every other call must look exactly as if no program were attached. For
//! those we set `optlen` to 0, which tells the kernel to keep its own answer
//! untouched: nothing is copied back to the caller. Returning with `optlen`
//! as it came would copy the program's view back, and that view is wrong in
//! two cases: a value longer than a page (the program only sees the first
//! page; some kernels then truncate or EFAULT) and, before Linux 6.x, a call
//! the kernel failed (ERANGE for a too small buffer: the caller would get its
//! own buffer size back instead of the size it needs; seen on 5.10 by the
//! VM matrix). Merbridge once clamped every option on the node by getting
//! this wrong.

use aya_ebpf::{bindings::bpf_sock, helpers::bpf_get_current_uid_gid, macros::cgroup_sockopt, programs::SockoptContext};
use redirect_common::{
    IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6,
    addr::Ip6,
    handover::{self, Record, node_wide, per_pod},
    maps::{Ipv4Be, counter},
};

use crate::{
    fields::read_ip6,
    maps::{HANDOVER, HANDOVER_POD, HANDOVER6, HANDOVER6_POD, POD_CONFIG, count},
};

/// Whether the caller may be told the original destination of `sk`'s
/// connection, read from `record` (see `handover::may_answer`).
#[inline(always)]
unsafe fn may_answer(pod: u32, sk: *const bpf_sock, record: Record) -> bool {
    // SAFETY: the map value is read whole; `sk` is the context's.
    unsafe {
        let Some(config) = POD_CONFIG.get(&pod) else { return false };
        handover::may_answer(config, bpf_get_current_uid_gid() as u32, local_port(sk), record)
    }
}

/// Whether `sk` is a connection the proxy accepted: a TCP socket with a
/// peer that it did not dial itself.
#[inline(always)]
unsafe fn accepted(sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` is the context's; the storage is only looked up.
    unsafe { (*sk).protocol == IPPROTO_TCP && (*sk).state != TCP_LISTEN && (*sk).state != TCP_CLOSE && !crate::maps::dialled(sk) }
}

/// Let the call return (0 would turn it into EPERM).
const CONTINUE: i32 = 1;
const AF_INET: u16 = 2;
const IPPROTO_TCP: u32 = 6;
/// `bpf_sock.state` values (the kernel's `TCP_*` states).
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const AF_INET6: u16 = 10;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn redirect_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: a shared program's link has storage.
    getsockopt(&ctx, unsafe { crate::storage_pod_id() })
}

/// A pod's own (see main.rs).
#[cgroup_sockopt(getsockopt)]
pub fn redirect_getsockopt_own(ctx: SockoptContext) -> i32 {
    getsockopt(&ctx, crate::own_pod_id())
}

#[inline(always)]
fn getsockopt(ctx: &SockoptContext, pod: u32) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: the kernel passes a valid bpf_sockopt for this hook.
    unsafe {
        let (level, optname) = ((*so).level, (*so).optname);
        // 0: the kernel answered (conntrack knew the connection).
        let kernel_answered = (*so).retval == 0;
        let answered = match level {
            SOL_IP if optname == SO_ORIGINAL_DST && kernel_answered => translate_v4(so, pod),
            SOL_IP if optname == SO_ORIGINAL_DST => answer_v4(so, pod),
            SOL_IPV6 if optname == IP6T_SO_ORIGINAL_DST && kernel_answered => translate_v6(so, pod),
            SOL_IPV6 if optname == IP6T_SO_ORIGINAL_DST => answer_v6(so, pod),
            _ => false,
        };
        if !answered {
            // Not ours: the kernel's answer stands, untouched.
            core::ptr::write_volatile(&raw mut (*so).optlen, 0);
        }
    }
    CONTINUE
}

/// The socket's own port, host order.
#[inline(always)]
unsafe fn local_port(sk: *const bpf_sock) -> u16 {
    // SAFETY: `sk` is a valid bpf_sock of the context.
    unsafe { (*sk).src_port as u16 }
}

/// `SOL_IP`: an IPv4 connection, on an AF_INET socket or in mapped form on
/// an AF_INET6 one. Whether the call was answered.
unsafe fn answer_v4(so: *mut aya_ebpf::bindings::bpf_sockopt, pod: u32) -> bool {
    // SAFETY (whole body): `so` is the context; `sk` is checked for null.
    unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        if sk.is_null() {
            return false;
        }
        // src_ip4/dst_ip4 hold an IPv4 connection's addresses in either
        // family of socket; a native IPv6 connection is not one.
        if (*sk).family == u32::from(AF_INET6) && read_ip6(&raw const (*sk).src_ip6).to_mapped_v4().is_none() {
            return false;
        }
        let local_addr = u32::from_be((*sk).src_ip4);
        let sent_by_connect = handover::is_address_v4(local_addr);
        if !may_answer(pod, sk, if sent_by_connect { Record::Handover } else { Record::OwnAddress }) {
            return false;
        }
        let (a, port) = if sent_by_connect {
            match handed_over_v4(pod, local_addr) {
                Some(orig) => orig,
                None => return false,
            }
        } else if accepted(sk) {
            ((*sk).src_ip4.to_ne_bytes(), local_port(sk))
        } else {
            return false;
        };
        write_answer(so, pod, &sockaddr_in(a, port), counter::ORIGINAL_DST_ANSWERED)
    }
}

/// The kernel's `SO_ORIGINAL_DST` answer, if it names a hand-over address:
/// the original destination that hand-over holds, written in its place.
/// Whether it was (otherwise the kernel's answer stands).
unsafe fn translate_v4(so: *mut aya_ebpf::bindings::bpf_sockopt, pod: u32) -> bool {
    // SAFETY (whole body): `so` is the context; `sk` is checked for null,
    // the kernel's answer is read within the bounds-checked window.
    unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        let optval = (*so).__bindgen_anon_2.optval.cast::<u8>();
        if sk.is_null() || optval.add(SOCKADDR_IN_LEN) > (*so).__bindgen_anon_3.optval_end.cast::<u8>() {
            return false;
        }
        // struct sockaddr_in: the address at bytes 4..8, network order.
        let dialled = u32::from_be_bytes([*optval.add(4), *optval.add(5), *optval.add(6), *optval.add(7)]);
        if !handover::is_address_v4(dialled) || !may_answer(pod, sk, Record::Handover) {
            return false;
        }
        let Some((a, port)) = handed_over_v4(pod, dialled) else { return false };
        write_answer(so, pod, &sockaddr_in(a, port), counter::ORIGINAL_DST_ANSWERED)
    }
}

/// [`translate_v4`] for `IP6T_SO_ORIGINAL_DST` (ip6tables' NAT).
unsafe fn translate_v6(so: *mut aya_ebpf::bindings::bpf_sockopt, pod: u32) -> bool {
    // SAFETY: as translate_v4's.
    unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        let optval = (*so).__bindgen_anon_2.optval.cast::<u8>();
        if sk.is_null() || optval.add(SOCKADDR_IN6_LEN) > (*so).__bindgen_anon_3.optval_end.cast::<u8>() {
            return false;
        }
        // struct sockaddr_in6: the address at bytes 8..24, network order.
        let word = |i: usize| u32::from_ne_bytes([*optval.add(i), *optval.add(i + 1), *optval.add(i + 2), *optval.add(i + 3)]);
        let dialled = redirect_common::addr::Ip6([word(8), word(12), word(16), word(20)]);
        if !handover::in_net6(dialled) || !may_answer(pod, sk, Record::Handover) {
            return false;
        }
        let Some((addr, port)) = handed_over_v6(pod, dialled) else { return false };
        write_answer(so, pod, &sockaddr_in6(addr, port), counter::ORIGINAL_DST_ANSWERED_IPV6)
    }
}

/// The original destination of this pod's connection that connect4 sent
/// to `local_addr`, if its slot still holds it: one 8-byte load of the
/// slot the address names, in the form the address is of.
#[inline(always)]
fn handed_over_v4(pod: u32, local_addr: u32) -> Option<(Ipv4Be, u16)> {
    if let Some(slot) = per_pod::slot_of(pod, local_addr) {
        let slot = HANDOVER_POD.get_ptr(slot)?;
        // SAFETY: a valid array slot, read whole.
        return unsafe { core::ptr::read_volatile(slot) }.orig_for(pod, local_addr);
    }
    let slot = HANDOVER.get_ptr(node_wide::slot_of(local_addr)?)?;
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(slot) }.orig_for(pod, local_addr)
}

/// [`handed_over_v4`] for an IPv6 connection connect6 sent to `local`: the
/// per-pod form's three words (each read whole, checked together), or the
/// node-wide form's entry.
#[inline(always)]
fn handed_over_v6(pod: u32, local: Ip6) -> Option<(Ip6, u16)> {
    if let Some(n) = per_pod::number_of6(local) {
        let slot = HANDOVER6_POD.get_ptr(per_pod::slot(pod, n))?;
        // SAFETY: a valid array slot of three u64s.
        let words = unsafe {
            let w = slot.cast::<u64>();
            [core::ptr::read_volatile(w), core::ptr::read_volatile(w.add(1)), core::ptr::read_volatile(w.add(2))]
        };
        return per_pod::Slot6::orig_for(words, pod, n);
    }
    let cookie = node_wide::cookie_of6(local)?;
    // SAFETY: the value is copied out.
    unsafe { HANDOVER6.get(&cookie) }.and_then(|h| h.orig_for(pod))
}

/// `struct sockaddr_in { sa_family_t; in_port_t (BE); in_addr (BE); zero[8] }`.
#[inline(always)]
fn sockaddr_in(a: [u8; 4], port: u16) -> [u8; SOCKADDR_IN_LEN] {
    let family = AF_INET.to_ne_bytes();
    let port = port.to_be_bytes();
    [family[0], family[1], port[0], port[1], a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0]
}

/// `struct sockaddr_in6 { sa_family_t; in_port_t (BE); u32 flowinfo;
/// in6_addr; u32 scope_id }`. Conntrack gives the socket's own flow label
/// (none here) and the scope of a link-local address, which is never
/// redirected.
#[inline(always)]
fn sockaddr_in6(addr: redirect_common::addr::Ip6, port: u16) -> [u8; SOCKADDR_IN6_LEN] {
    let family = AF_INET6.to_ne_bytes();
    let port = port.to_be_bytes();
    let a = addr.octets();
    #[rustfmt::skip]
    let bytes = [
        family[0], family[1], port[0], port[1], 0, 0, 0, 0,
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15],
        0, 0, 0, 0,
    ];
    bytes
}

/// `SOL_IPV6`: a native IPv6 connection. Whether the call was answered.
unsafe fn answer_v6(so: *mut aya_ebpf::bindings::bpf_sockopt, pod: u32) -> bool {
    // SAFETY (whole body): `so` is the context; `sk` is checked for null.
    unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        if sk.is_null() || (*sk).family != u32::from(AF_INET6) {
            return false;
        }
        let local = read_ip6(&raw const (*sk).src_ip6);
        if local.to_mapped_v4().is_some() {
            return false;
        }
        let sent_by_connect = handover::in_net6(local);
        if !may_answer(pod, sk, if sent_by_connect { Record::Handover } else { Record::OwnAddress }) {
            return false;
        }
        let (addr, port) = if sent_by_connect {
            match handed_over_v6(pod, local) {
                Some(orig) => orig,
                None => return false,
            }
        } else if accepted(sk) {
            (local, local_port(sk))
        } else {
            return false;
        };
        write_answer(so, pod, &sockaddr_in6(addr, port), counter::ORIGINAL_DST_ANSWERED_IPV6)
    }
}

/// Writes the answer into the caller's buffer, if it is large enough
/// (otherwise the kernel's answer stands, as conntrack refuses a short
/// buffer too). Whether it was written.
#[inline(always)]
unsafe fn write_answer<const N: usize>(so: *mut aya_ebpf::bindings::bpf_sockopt, pod: u32, bytes: &[u8; N], answered: u32) -> bool {
    // SAFETY: the optval window is bounds-checked before the write, as the
    // verifier demands.
    unsafe {
        let optval = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let optval_end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        if optval.add(N) > optval_end {
            return false;
        }
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), optval, N);
        // Two separate 4-byte stores: the verifier refuses the one 8-byte
        // store LLVM would merge them into.
        core::ptr::write_volatile(&raw mut (*so).optlen, N as i32);
        core::ptr::write_volatile(&raw mut (*so).retval, 0);
        count(pod, answered);
        true
    }
}
