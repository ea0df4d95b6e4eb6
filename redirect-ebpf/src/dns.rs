//! fsm-init's local DNS proxy rule (`redirect_common::dns`) on UDP sockets:
//! `sendmsg4/6` and (from `connect4/6`) `connect()` send the pod's
//! datagrams for 127.0.0.153:53 to the sidecar's DNS proxy on
//! 127.0.0.153:5300 and mark the socket; `recvmsg4/6` and `getpeername4/6`
//! show a marked socket the proxy as 127.0.0.153:53, as conntrack's un-NAT
//! of fsm-init's DNAT does. An IPv6 socket's `::ffff:127.0.0.153` is the
//! same IPv4 destination (the DNAT rule sees its IPv4 packets).
//!
//! Every UID, as the rule has no owner match. Only while the MeshConfig has
//! the proxy on (`pod_flags::DNS_PROXY`); a socket marked before it was
//! turned off keeps seeing its replies from 53, as conntrack keeps a flow's
//! NAT until it ends.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use redirect_common::{
    dns,
    maps::{counter, pod_flags},
};

use crate::{
    fields::read_ip6,
    maps::{DNS_REDIRECTED, POD_CONFIG, count},
};

const IPPROTO_UDP: u32 = 17;
/// Let the call go on (sendmsg: 0 would fail it with EPERM; recvmsg and
/// getpeername must return 1).
const ALLOW: i32 = 1;

/// Whether this is a UDP socket of an enrolled pod, and the MeshConfig's
/// DNS proxy is on for it.
#[inline(always)]
unsafe fn udp_dns_on(ctx: &SockAddrContext, pod: u32) -> Option<bool> {
    // SAFETY: `sock_addr` is the context pointer; the value is copied out.
    unsafe {
        if (*ctx.sock_addr).protocol != IPPROTO_UDP {
            return None;
        }
        POD_CONFIG.get(&pod).map(|c| c.flags & pod_flags::DNS_PROXY != 0)
    }
}

/// Decides UDP to an IPv4 destination (host byte order) and, where it goes
/// to the proxy, rewrites the port and marks the socket; whether it did.
#[inline(always)]
unsafe fn redirect(ctx: &SockAddrContext, pod: u32, dst: u32) -> bool {
    // SAFETY: user_port is readable and writable in connect and sendmsg.
    unsafe {
        let Some(on) = udp_dns_on(ctx, pod) else { return false };
        let sa = ctx.sock_addr;
        let Some(port) = dns::decide(dst, u16::from_be((*sa).user_port as u16), on).port() else { return false };
        (*sa).user_port = u32::from(port.to_be());
        mark(ctx, pod);
        true
    }
}

/// Used by sendmsg4 and connect4.
#[inline(always)]
pub unsafe fn redirect4(ctx: &SockAddrContext, pod: u32) -> bool {
    // SAFETY: user_ip4 is readable in connect4 and sendmsg4.
    unsafe { redirect(ctx, pod, u32::from_be((*ctx.sock_addr).user_ip4)) }
}

/// For an IPv6 socket's IPv4-mapped destination: sendmsg6 and connect6.
#[inline(always)]
pub unsafe fn redirect6(ctx: &SockAddrContext, pod: u32) -> bool {
    // SAFETY: user_ip6 is readable in connect6 and sendmsg6.
    unsafe {
        match read_ip6(&raw const (*ctx.sock_addr).user_ip6).to_mapped_v4() {
            Some(v4) => redirect(ctx, pod, v4),
            None => false,
        }
    }
}

/// Marks the socket as one whose DNS went to the proxy, and counts it. If
/// the kernel can't allocate the mark, its replies keep the proxy's port
/// (the resolver drops them and retries).
#[inline(always)]
fn mark(ctx: &SockAddrContext, pod: u32) {
    let _ = DNS_REDIRECTED.get_or_insert_ptr_mut(ctx, None);
    count(pod, counter::DNS_REDIRECTED);
}

#[inline(always)]
fn marked(ctx: &SockAddrContext) -> bool {
    !DNS_REDIRECTED.get_ptr_mut(ctx).is_null()
}

/// The source (recvmsg) or peer (getpeername) of a marked IPv4 socket: the
/// proxy's port shown as 53.
#[inline(always)]
unsafe fn unredirect4(ctx: &SockAddrContext) -> bool {
    // SAFETY: user_ip4/user_port hold the address reported to the caller.
    unsafe {
        let sa = ctx.sock_addr;
        if (*sa).protocol != IPPROTO_UDP || !marked(ctx) {
            return false;
        }
        let Some(port) = dns::reply_port(u32::from_be((*sa).user_ip4), u16::from_be((*sa).user_port as u16)) else { return false };
        (*sa).user_port = u32::from(port.to_be());
        true
    }
}

/// [`unredirect4`] for an IPv6 socket, where the proxy is
/// `::ffff:127.0.0.153`.
#[inline(always)]
unsafe fn unredirect6(ctx: &SockAddrContext) -> bool {
    // SAFETY: user_ip6/user_port hold the address reported to the caller.
    unsafe {
        let sa = ctx.sock_addr;
        if (*sa).protocol != IPPROTO_UDP || !marked(ctx) {
            return false;
        }
        let Some(v4) = read_ip6(&raw const (*sa).user_ip6).to_mapped_v4() else { return false };
        let Some(port) = dns::reply_port(v4, u16::from_be((*sa).user_port as u16)) else { return false };
        (*sa).user_port = u32::from(port.to_be());
        true
    }
}

// sendmsg and recvmsg twice each: the node's shared program (the pod
// from the cgroup's storage) and a pod's own (`_own`, see main.rs).
// getpeername needs no pod: one program serves both.

/// A sendmsg entry point: `redirect` (4 or 6) with the pod from `pod`.
macro_rules! sendmsg_program {
    ($name:ident, $hook:ident, $redirect:ident, $pod:path) => {
        #[cgroup_sock_addr($hook)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            // SAFETY: the kernel passes a valid bpf_sock_addr for this hook,
            // and a shared program's link has storage (`storage_pod_id`).
            unsafe { $redirect(&ctx, $pod()) };
            ALLOW
        }
    };
}

/// A recvmsg entry point: `unredirect` (4 or 6), counted for the pod.
macro_rules! recvmsg_program {
    ($name:ident, $hook:ident, $unredirect:ident, $pod:path) => {
        #[cgroup_sock_addr($hook)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            // SAFETY: as sendmsg's.
            unsafe {
                if $unredirect(&ctx) {
                    count($pod(), counter::DNS_REPLIES);
                }
            }
            ALLOW
        }
    };
}

sendmsg_program!(redirect_sendmsg4, sendmsg4, redirect4, crate::storage_pod_id);
sendmsg_program!(redirect_sendmsg6, sendmsg6, redirect6, crate::storage_pod_id);
sendmsg_program!(redirect_sendmsg4_own, sendmsg4, redirect4, crate::own_pod_id);
sendmsg_program!(redirect_sendmsg6_own, sendmsg6, redirect6, crate::own_pod_id);
recvmsg_program!(redirect_recvmsg4, recvmsg4, unredirect4, crate::storage_pod_id);
recvmsg_program!(redirect_recvmsg6, recvmsg6, unredirect6, crate::storage_pod_id);
recvmsg_program!(redirect_recvmsg4_own, recvmsg4, unredirect4, crate::own_pod_id);
recvmsg_program!(redirect_recvmsg6_own, recvmsg6, unredirect6, crate::own_pod_id);

#[cgroup_sock_addr(getpeername4)]
pub fn redirect_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for this hook.
    unsafe { unredirect4(&ctx) };
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn redirect_getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as getpeername4's.
    unsafe { unredirect6(&ctx) };
    ALLOW
}
