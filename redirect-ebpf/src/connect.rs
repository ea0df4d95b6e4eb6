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
    maps::{OrigDst, REDIRECT_ADDR, counter, pod_flags},
};

use crate::{
    maps::{ORIG_BY_COOKIE, POD_CONFIG},
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
    // SAFETY: `as_ptr` is the bpf_sock_addr context, valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let orig = OrigDst { addr: conn.dst.to_be_bytes(), port: conn.dst_port, _pad: 0 };
    if ORIG_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
        // Without a record the proxy could not learn the destination; leave
        // the connection direct rather than hand the proxy a blind one.
        return;
    }
    // SAFETY: user_ip4/user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(REDIRECT_ADDR);
        (*sa).user_port = u32::from(port.to_be());
    }
    if config.flags & pod_flags::LOG_DECISIONS != 0 {
        info!(
            ctx,
            "pod {} uid {} -> {:i}:{} redirected to 127.0.0.1:{} (rule {})",
            crate::pod_id(),
            conn.uid,
            conn.dst,
            conn.dst_port,
            port,
            rule as u8
        );
    }
}
