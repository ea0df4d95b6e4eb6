//! `cgroup/connect4` and `cgroup/connect6`: the outbound decision for every
//! TCP `connect()` of a process in the pod, whatever its socket's family
//! (and, for a UDP socket's `connect()`, the local DNS proxy's rule:
//! `dns.rs`).
//!
//! An IPv6 socket dialling `::ffff:a.b.c.d` makes an IPv4 connection (its
//! packets are IPv4, and fsm-init's iptables rules catch them): connect6
//! decides it as IPv4 and sends it to the IPv4 redirect address in mapped
//! form. Without connect6 such a connection would reach its destination
//! around the proxy.

use aya_ebpf::{
    helpers::{bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use redirect_common::{
    addr::{Address, Ip6},
    decision::{AddrLists, Dest6, Outbound, OutboundRule, Verdict, decide_outbound, to_pod_ip},
    decision_log::DecisionRecord,
    handover::{
        node_wide::{self, Handover, Handover6},
        per_pod,
    },
    maps::{PodConfig, counter, pod_flags},
};

use crate::{
    fields::{read_ip6, write_ip6},
    maps::{DECISIONS, HANDOVER, HANDOVER_POD, HANDOVER_SEQ, HANDOVER6, HANDOVER6_POD, POD_CONFIG, POD_IPS, count},
    policy::MapLists,
};

const IPPROTO_TCP: u32 = 6;
/// Let the `connect()` go on (returning 0 would fail it with EPERM).
const ALLOW: i32 = 1;

// Two of each: the per-pod hand-over takes one atomic fetch-and-add, an
// instruction kernels before 5.12 refuse wherever it stands (their
// verifier checks every instruction's fields before it follows any
// branch), so those kernels are given the node-wide one
// (`redirect_common::handover`). The agent loads one of the two. And each
// of those twice: the node's shared program reads its pod from the
// cgroup's storage, a pod's own (`_own`) has it baked in (see main.rs).

/// One entry point: `hook`, running `try_connect` with the hand-over form
/// and where the pod comes from. Whatever happens, it never fails the
/// application's connect(): a pod whose lists can't be read connects
/// directly, as it would without a mesh.
macro_rules! connect_program {
    ($name:ident, $hook:ident, $try_connect:ident, $per_pod:literal, $pod:path) => {
        #[cgroup_sock_addr($hook)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            // SAFETY: the kernel passes a valid bpf_sock_addr for this hook,
            // and a shared program's link has storage (`storage_pod_id`).
            unsafe { $try_connect::<$per_pod>(&ctx, $pod()) };
            ALLOW
        }
    };
}

connect_program!(redirect_connect4, connect4, try_connect4, false, crate::storage_pod_id);
connect_program!(redirect_connect6, connect6, try_connect6, false, crate::storage_pod_id);
connect_program!(redirect_connect4_per_pod, connect4, try_connect4, true, crate::storage_pod_id);
connect_program!(redirect_connect6_per_pod, connect6, try_connect6, true, crate::storage_pod_id);
connect_program!(redirect_connect4_own, connect4, try_connect4, false, crate::own_pod_id);
connect_program!(redirect_connect6_own, connect6, try_connect6, false, crate::own_pod_id);
connect_program!(redirect_connect4_per_pod_own, connect4, try_connect4, true, crate::own_pod_id);
connect_program!(redirect_connect6_per_pod_own, connect6, try_connect6, true, crate::own_pod_id);

/// The pod's config, if this is a TCP connect of an enrolled pod. A
/// socket its proxy dials is marked as such on the way (see
/// `maps::PROXY_DIALLED`): its `SO_ORIGINAL_DST` is not its own address.
#[inline(always)]
unsafe fn tcp_config(ctx: &SockAddrContext, pod: u32) -> Option<PodConfig> {
    // SAFETY: `sock_addr` is the context pointer; protocol is readable here.
    if unsafe { (*ctx.sock_addr).protocol } != IPPROTO_TCP {
        return None;
    }
    // SAFETY: the value is copied out before any other map access.
    let config = unsafe { POD_CONFIG.get(&pod) }.copied()?;
    if uid() == config.proxy_uid {
        crate::maps::mark_dialled(ctx);
    }
    Some(config)
}

/// Runs the table, counts the rule, and says which proxy port a redirect
/// goes to.
#[inline(always)]
fn decide<A: Address>(pod: u32, config: &PodConfig, conn: &Outbound<A>) -> (OutboundRule, Option<u16>)
where
    for<'a> MapLists<'a>: AddrLists<A>,
{
    let rule = decide_outbound(conn, &MapLists { config });
    count(pod, counter::outbound(rule));
    let port = match rule.verdict() {
        Verdict::Direct => None,
        Verdict::RedirectOutbound => Some(config.outbound_port),
        Verdict::RedirectInbound => Some(config.inbound_port),
    };
    (rule, port)
}

/// The pod's next connection number of one family (see
/// `handover::per_pod`) in the per-pod programs; None in the node-wide ones.
#[inline(always)]
fn next_number<const PER_POD: bool>(pod: u32, v6: bool) -> Option<u32> {
    if !PER_POD {
        return None;
    }
    let counter = HANDOVER_SEQ.get_ptr_mut(per_pod::counter(pod, v6))?;
    // SAFETY: a valid, aligned u64 of an array map, only ever accessed
    // atomically.
    Some(unsafe { fetch_add_one(counter) } as u32)
}

/// `*counter += 1`, atomically, returning the value before. (u64: BPF has
/// 32-bit atomics only with ALU32; the low 32 bits are the number.)
///
/// # Safety
/// `counter` is valid and aligned, and only ever accessed atomically.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn fetch_add_one(counter: *mut u64) -> u64 {
    // core's atomics lack fetch_add on BPF (no compare-and-swap), and LLVM
    // emits BPF_FETCH only for the v3 CPU, which the rest of the object
    // does not need: the one instruction is written out.
    let mut n: u64 = 1;
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!("{n} = atomic_fetch_add((u64 *)({p} + 0), {n})", n = inout(reg) n, p = in(reg) counter, options(nostack));
    }
    n
}

/// The host build (`cargo clippy --workspace`) only type-checks this.
#[cfg(not(target_arch = "bpf"))]
unsafe fn fetch_add_one(counter: *mut u64) -> u64 {
    // SAFETY: the caller's.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
}

/// Leaves the original destination of an IPv4 connection for the proxy
/// and returns the loopback address to send it to (host byte order).
#[inline(always)]
fn hand_over_v4<const PER_POD: bool>(ctx: &SockAddrContext, pod: u32, conn: &Outbound<u32>) -> u32 {
    let addr = conn.dst.to_be_bytes();
    if let Some(n) = next_number::<PER_POD>(pod, false) {
        if let Some(slot) = HANDOVER_POD.get_ptr_mut(per_pod::slot(pod, n)) {
            // SAFETY: a valid array slot. One 8-byte store: getsockopt
            // never sees half of it.
            unsafe { core::ptr::write_volatile(slot, per_pod::Slot::new(pod, n, addr, conn.dst_port)) };
        }
        return per_pod::address(n);
    }
    let cookie = cookie(ctx);
    // The slot index is masked to the array's size: always there.
    if let Some(slot) = HANDOVER.get_ptr_mut(node_wide::slot(cookie)) {
        // SAFETY: a valid array slot. One 8-byte store: getsockopt, or
        // another connect writing the same slot, never sees half of it.
        unsafe { core::ptr::write_volatile(slot, Handover::new(pod, cookie, addr, conn.dst_port)) };
    }
    node_wide::address(cookie)
}

/// [`hand_over_v4`] for an IPv6 connection.
#[inline(always)]
fn hand_over_v6<const PER_POD: bool>(ctx: &SockAddrContext, pod: u32, conn: &Outbound<Ip6>) -> Ip6 {
    if let Some(n) = next_number::<PER_POD>(pod, true) {
        if let Some(slot) = HANDOVER6_POD.get_ptr_mut(per_pod::slot(pod, n)) {
            let words = per_pod::Slot6::new(pod, n, conn.dst, conn.dst_port).0;
            // SAFETY: a valid array slot of three u64s. Each word is one
            // 8-byte store naming the connection: a reader meanwhile sees
            // a mix it refuses (ENOENT), never another's destination.
            unsafe {
                let w = slot.cast::<u64>();
                core::ptr::write_volatile(w, words[0]);
                core::ptr::write_volatile(w.add(1), words[1]);
                core::ptr::write_volatile(w.add(2), words[2]);
            }
        }
        return per_pod::address6(n);
    }
    let cookie = cookie(ctx);
    // Whole-entry update: a reader sees this entry or none. If it can't be
    // written the proxy gets ENOENT and refuses the connection: redirected
    // all the same, never around the proxy.
    let _ = HANDOVER6.insert(&cookie, &Handover6 { addr: conn.dst, port: conn.dst_port, _pad: 0, pod }, 0);
    node_wide::address6(cookie)
}

/// Where a connection the table left direct goes in `localProxyMode:
/// PodIP` (`decision::to_pod_ip`): the pod IP, same port. None: where it
/// was going.
#[inline(always)]
fn pod_ip_v4(pod: u32, rule: OutboundRule, conn: &Outbound<u32>) -> Option<(u32, u16)> {
    if !to_pod_ip(rule, conn) {
        return None;
    }
    // SAFETY: the value is copied out.
    let ips = unsafe { POD_IPS.get(&pod) }.copied()?;
    let ip = u32::from_be_bytes(ips.v4);
    (ip != 0).then_some((ip, conn.dst_port))
}

/// [`pod_ip_v4`] for `::1`.
#[inline(always)]
fn pod_ip_v6(pod: u32, rule: OutboundRule, conn: &Outbound<Ip6>) -> Option<(Ip6, u16)> {
    if !to_pod_ip(rule, conn) {
        return None;
    }
    // SAFETY: the value is copied out.
    let ips = unsafe { POD_IPS.get(&pod) }.copied()?;
    (!ips.v6.same(Ip6::UNSPECIFIED)).then_some((ips.v6, conn.dst_port))
}

#[inline(always)]
fn uid() -> u32 {
    bpf_get_current_uid_gid() as u32
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: `sock_addr` is the bpf_sock_addr context, valid for the helper.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// Decides an IPv4 connection (an IPv4 socket's, or an IPv6 socket's to a
/// mapped address) and, if it is redirected, leaves its original
/// destination for the proxy. Returns where to send it: an address (host
/// byte order) and port.
///
/// (Each branch logs on its own: with aya-log, an `Option` of the target
/// passed to one log call compiled to a read of a register the verifier
/// saw as never written on the direct path.)
#[inline(always)]
fn redirect_v4<const PER_POD: bool>(ctx: &SockAddrContext, pod: u32, config: &PodConfig, conn: &Outbound<u32>) -> Option<(u32, u16)> {
    let (rule, port) = decide(pod, config, conn);
    let Some(port) = port else {
        log_v4(pod, config, conn, None, rule);
        return pod_ip_v4(pod, rule, conn);
    };
    let to = hand_over_v4::<PER_POD>(ctx, pod, conn);
    log_v4(pod, config, conn, Some((to, port)), rule);
    Some((to, port))
}

/// [`redirect_v4`] for an IPv6 connection.
#[inline(always)]
fn redirect_v6<const PER_POD: bool>(ctx: &SockAddrContext, pod: u32, config: &PodConfig, conn: &Outbound<Ip6>) -> Option<(Ip6, u16)> {
    let (rule, port) = decide(pod, config, conn);
    let Some(port) = port else {
        log_v6(pod, config, conn, None, rule);
        return pod_ip_v6(pod, rule, conn);
    };
    let to = hand_over_v6::<PER_POD>(ctx, pod, conn);
    log_v6(pod, config, conn, Some((to, port)), rule);
    Some((to, port))
}

unsafe fn try_connect4<const PER_POD: bool>(ctx: &SockAddrContext, pod: u32) {
    // A UDP socket's connect(): only the local DNS proxy's rule applies.
    if unsafe { crate::dns::redirect4(ctx, pod) } {
        return;
    }
    let Some(config) = (unsafe { tcp_config(ctx, pod) }) else { return };
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4/user_port are readable and writable in connect4.
    unsafe {
        let conn = Outbound { dst: u32::from_be((*sa).user_ip4), dst_port: u16::from_be((*sa).user_port as u16), uid: uid() };
        if let Some((to, port)) = redirect_v4::<PER_POD>(ctx, pod, &config, &conn) {
            (*sa).user_ip4 = to.to_be();
            (*sa).user_port = u32::from(port.to_be());
        }
    }
}

unsafe fn try_connect6<const PER_POD: bool>(ctx: &SockAddrContext, pod: u32) {
    if unsafe { crate::dns::redirect6(ctx, pod) } {
        return;
    }
    let Some(config) = (unsafe { tcp_config(ctx, pod) }) else { return };
    let sa = ctx.sock_addr;
    // SAFETY: user_ip6/user_port are readable and writable in connect6.
    unsafe {
        let (dst, dst_port) = (read_ip6(&raw const (*sa).user_ip6), u16::from_be((*sa).user_port as u16));
        let to = match Dest6::of(dst) {
            Dest6::Mapped(v4) => {
                count(pod, counter::OUTBOUND_MAPPED);
                // The mapped form keeps it an IPv4 connection.
                redirect_v4::<PER_POD>(ctx, pod, &config, &Outbound { dst: v4, dst_port, uid: uid() })
                    .map(|(to, port)| (Ip6::mapped(to), port))
            }
            Dest6::V6(addr) => {
                count(pod, counter::OUTBOUND_IPV6);
                redirect_v6::<PER_POD>(ctx, pod, &config, &Outbound { dst: addr, dst_port, uid: uid() })
            }
        };
        if let Some((to, port)) = to {
            write_ip6(&raw mut (*sa).user_ip6, to);
            (*sa).user_port = u32::from(port.to_be());
        }
    }
}

/// Puts the decision into the decision log, if the pod's are logged. A
/// full ring buffer drops the record, not the connection.
#[inline(always)]
fn log(config: &PodConfig, record: &DecisionRecord) {
    if config.flags & pod_flags::LOG_DECISIONS != 0 {
        let _ = DECISIONS.output(record, 0);
    }
}

#[inline(always)]
fn log_v4(pod: u32, config: &PodConfig, conn: &Outbound<u32>, to: Option<(u32, u16)>, rule: OutboundRule) {
    log(config, &DecisionRecord::v4(pod, conn.uid, conn.dst, conn.dst_port, to, rule as u8));
}

#[inline(always)]
fn log_v6(pod: u32, config: &PodConfig, conn: &Outbound<Ip6>, to: Option<(Ip6, u16)>, rule: OutboundRule) {
    log(config, &DecisionRecord::v6(pod, conn.uid, conn.dst, conn.dst_port, to, rule as u8));
}
