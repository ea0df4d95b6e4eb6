//! `cgroup/connect4`: the outbound decision for every TCP `connect()` of a
//! process in the pod.

use aya_ebpf::{
    helpers::{bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::info;
use redirect_common::{
    decision::{Outbound, Verdict, decide_outbound},
    handover::{self, Handover},
    maps::{counter, pod_flags},
};

use crate::{
    maps::{HANDOVER, POD_CONFIG},
    policy::MapLists,
};

const IPPROTO_TCP: u32 = 6;
/// Let the `connect()` go on (returning 0 would fail it with EPERM).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for this hook.
    unsafe { try_connect4(&ctx) };
    // Whatever happens, never fail the application's connect(): a pod whose
    // lists can't be read connects directly, as it would without a mesh.
    ALLOW
}

unsafe fn try_connect4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer; these fields are readable here.
    if unsafe { (*sa).protocol } != IPPROTO_TCP {
        return;
    }
    // SAFETY: the value is copied out before any other map access.
    let Some(config) = (unsafe { POD_CONFIG.get(&crate::pod_id()) }).copied() else {
        return;
    };
    let conn = Outbound {
        dst: u32::from_be(unsafe { (*sa).user_ip4 }),
        dst_port: u16::from_be(unsafe { (*sa).user_port } as u16),
        uid: bpf_get_current_uid_gid() as u32,
    };
    let rule = decide_outbound(&conn, &MapLists { config: &config });
    crate::maps::count(counter::outbound(rule));
    let port = match rule.verdict() {
        Verdict::Direct => {
            if config.flags & pod_flags::LOG_DECISIONS != 0 {
                info!(
                    ctx,
                    "pod {} uid {} -> {:i}:{} direct (rule {})",
                    crate::pod_id(),
                    conn.uid,
                    conn.dst,
                    conn.dst_port,
                    rule as u8
                );
            }
            return;
        }
        Verdict::RedirectOutbound => config.outbound_port,
        Verdict::RedirectInbound => config.inbound_port,
    };
    // SAFETY: `sock_addr` is the bpf_sock_addr context, valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // The slot index is masked to the array's size: always there.
    let Some(slot) = HANDOVER.get_ptr_mut(handover::slot(cookie)) else {
        return;
    };
    // SAFETY: a valid array slot. One 8-byte store: getsockopt, or another
    // connect4 writing the same slot, never sees half of it.
    unsafe {
        core::ptr::write_volatile(slot, Handover::new(crate::pod_id(), cookie, conn.dst.to_be_bytes(), conn.dst_port));
    }
    let to = handover::address(cookie);
    // SAFETY: user_ip4/user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = to.to_be();
        (*sa).user_port = u32::from(port.to_be());
    }
    if config.flags & pod_flags::LOG_DECISIONS != 0 {
        info!(
            ctx,
            "pod {} uid {} -> {:i}:{} redirected to {:i}:{} (rule {})",
            crate::pod_id(),
            conn.uid,
            conn.dst,
            conn.dst_port,
            to,
            port,
            rule as u8
        );
    }
}
