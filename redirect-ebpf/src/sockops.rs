//! `sockops`: ties a redirected connection's original destination (known
//! by socket cookie since `connect4`) to its 4-tuple, which is what the
//! proxy's accepted socket can be matched by, and forgets it at close.
//!
//! Lifetime of an `ORIG_DST` entry:
//! - created at `TCP_CONNECT_CB` of the application's socket (the source port
//!   is chosen by then; the SYN is not yet sent, so the proxy can't ask
//!   before the entry exists);
//! - removed when the proxy's accepted socket closes, or when the
//!   application's socket closes straight from SYN_SENT (the proxy never got
//!   the connection; the application's state callbacks are on only until
//!   its connect succeeds). An entry the proxy never closes (backlog overflow) is
//!   aged out by the LRU; a new connection with the same 4-tuple overwrites it
//!   at its own `TCP_CONNECT_CB`, so it is never handed a stale destination.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirect_common::maps::{ConnKey, REDIRECT_ADDR};

use crate::maps::{INBOUND_ORIG, INBOUND_PENDING, ORIG_BY_COOKIE, ORIG_DST, POD_CONFIG, PROXY_LISTENERS};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn redirect_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.family() == AF_INET {
        match ctx.op() {
            BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
                crate::fast_path::join(&ctx, key_as_client(&ctx));
                on_passive_established(&ctx);
            }
            BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
            BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
            _ => {}
        }
    }
    // sockops return values are only read for a few ops we don't handle.
    0
}

/// The socket's own view: local is the source. For the application's
/// socket that is the client's view.
#[inline(always)]
fn key_as_client(ctx: &SockOpsContext) -> ConnKey {
    ConnKey {
        pod: crate::pod_id(),
        src_addr: ctx.local_ip4().to_ne_bytes(),
        dst_addr: ctx.remote_ip4().to_ne_bytes(),
        src_port: ctx.local_port() as u16,
        // remote_port holds the network-order port in its upper half on
        // little-endian hosts: u32::from_be undoes both.
        dst_port: u32::from_be(ctx.remote_port()) as u16,
    }
}

/// The accepted (proxy) socket's view, turned around to the client's.
#[inline(always)]
fn key_as_server(ctx: &SockOpsContext) -> ConnKey {
    key_as_client(ctx).reversed()
}

fn on_connect(ctx: &SockOpsContext) {
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    if ORIG_DST.insert(&key_as_client(ctx), &orig, 0).is_ok() {
        // Hear about this socket's state changes, to clean up if the
        // connect fails.
        watch_close(ctx);
    }
}

/// The application's connect succeeded: its record is now the proxy's to
/// remove (at the close of its accepted socket), so the state callbacks
/// asked for at `TCP_CONNECT_CB` are turned off again unless the fast path
/// needs them: each is a run of this program (the bench measures them).
fn on_active_established(ctx: &SockOpsContext) {
    if !crate::fast_path::join(ctx, key_as_client(ctx)) && ctx.cb_flags() & BPF_SOCK_OPS_STATE_CB_FLAG != 0 {
        let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// A process of the pod listens: if it is the proxy's inbound listener,
/// inbound connections are steered to it (see sk_lookup.rs).
fn on_listen(ctx: &SockOpsContext) {
    let mut pod = crate::pod_id();
    // SAFETY: copied out at once.
    let Some(inbound_port) = (unsafe { POD_CONFIG.get(&pod) }).map(|c| c.inbound_port) else {
        return;
    };
    if ctx.local_port() as u16 == inbound_port {
        // SAFETY: `ops` is the context of this program.
        let _ = PROXY_LISTENERS.update(&mut pod, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
    }
}

fn on_passive_established(ctx: &SockOpsContext) {
    let key = key_as_server(ctx);
    // connect4 redirects to 127.0.0.1: only such a connection can have an
    // outbound record, and only one from elsewhere an inbound one: one
    // lookup per accepted connection instead of three.
    if is_redirect_target(&key) {
        // SAFETY: only tested for presence.
        if unsafe { ORIG_DST.get(&key).is_some() } {
            watch_close(ctx);
        }
        return;
    }
    // An inbound connection steered by sk_lookup is a connection now.
    // SAFETY: copied out at once.
    if let Some(orig) = unsafe { INBOUND_PENDING.get(&key) }.copied() {
        let _ = INBOUND_PENDING.remove(&key);
        if INBOUND_ORIG.insert(&key, &orig, 0).is_ok() {
            watch_close(ctx);
        }
    }
}

/// The accepted side of a redirected connection: its local end is where
/// connect4 sent it.
#[inline(always)]
fn is_redirect_target(key: &ConnKey) -> bool {
    key.dst_addr == REDIRECT_ADDR
}

#[inline(always)]
fn watch_close(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

fn on_state_change(ctx: &SockOpsContext) {
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    if new != BPF_TCP_CLOSE {
        return;
    }
    crate::fast_path::leave(&key_as_client(ctx));
    if old == BPF_TCP_SYN_SENT {
        // The application's connect failed: nobody will ask.
        let _ = ORIG_DST.remove(&key_as_client(ctx));
    } else {
        // Only sockets we flagged get here: the proxy's (done with its
        // record) and sockets on the fast path.
        let key = key_as_server(ctx);
        let _ = if is_redirect_target(&key) { ORIG_DST.remove(&key) } else { INBOUND_ORIG.remove(&key) };
    }
}
