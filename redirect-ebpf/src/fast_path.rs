//! The fast path for local hops: a connection whose two ends are sockets of
//! the same pod (the app and its proxy over loopback, either direction)
//! joins the pod's `FAST_PATH` sockhash when it is established, and the
//! sk_msg program hands each message the sender writes straight to the
//! peer socket's receive queue, skipping TCP/IP for the data. The
//! handshake, FIN and RST still go through TCP.
//!
//! Why a decision per socket (`redirect_common::maps::fast_path`): the
//! app's socket is established before the proxy's accepted socket exists,
//! so the app's first message may find no peer and go through TCP. Its next
//! one must not overtake it, so a socket that sent through TCP stays there.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST, BPF_F_INGRESS, BPF_SOCK_OPS_STATE_CB_FLAG, sk_action::SK_PASS},
    macros::sk_msg,
    programs::{SkMsgContext, SockOpsContext},
};
use redirect_common::maps::{ConnKey, counter, fast_path, pod_flags};

use crate::maps::{FAST_PATH, FAST_PATH_STATE, POD_CONFIG, count};

const AF_INET: u32 = 2;

/// A connection of the pod with itself: to loopback, or from its own
/// address to itself (the proxy reached at the pod IP).
#[inline(always)]
fn is_local_hop(local: [u8; 4], remote: [u8; 4]) -> bool {
    remote[0] == 127 || remote == local
}

#[inline(always)]
fn enabled() -> bool {
    // SAFETY: copied out at once.
    unsafe { POD_CONFIG.get(&crate::own_pod_id()) }.is_some_and(|c| c.flags & pod_flags::FAST_PATH != 0)
}

/// sockops, at ACTIVE_ or PASSIVE_ESTABLISHED: a local socket joins.
/// `own` is the socket's own view (source = local end). A socket that
/// joins asks for state callbacks, to forget its decision at close.
#[inline(always)]
pub fn join(ctx: &SockOpsContext, mut own: ConnKey) {
    if !is_local_hop(own.src_addr, own.dst_addr) || !enabled() {
        return;
    }
    // The decision first: a socket in the sockhash without one only ever
    // goes the TCP way, never the reverse.
    if FAST_PATH_STATE.insert(&own, &fast_path::UNDECIDED, 0).is_err() {
        return;
    }
    // SAFETY: `ops` is the context of the running program.
    if FAST_PATH.update(&mut own, unsafe { &mut *ctx.ops }, BPF_ANY as u64).is_err() {
        let _ = FAST_PATH_STATE.remove(&own);
        return;
    }
    // The kernel drops the socket from the sockhash itself at close.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    count(crate::own_pod_id(), counter::FAST_PATH_SOCKETS);
}

/// sockops, at close.
#[inline(always)]
pub fn leave(own: &ConnKey) {
    if is_local_hop(own.src_addr, own.dst_addr) {
        let _ = FAST_PATH_STATE.remove(own);
    }
}

#[sk_msg]
pub fn redirect_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let md = unsafe { &*ctx.msg };
    if md.family != AF_INET {
        return SK_PASS;
    }
    let own = ConnKey {
        pod: crate::own_pod_id(),
        src_addr: md.local_ip4.to_ne_bytes(),
        dst_addr: md.remote_ip4.to_ne_bytes(),
        src_port: md.local_port as u16,
        // remote_port holds the network-order port in its upper half.
        dst_port: u32::from_be(md.remote_port) as u16,
    };
    // SAFETY: copied out at once.
    let Some(state) = (unsafe { FAST_PATH_STATE.get(&own) }).copied() else {
        return SK_PASS;
    };
    if state == fast_path::TCP {
        return SK_PASS;
    }
    let mut peer = own.reversed();
    // SK_PASS with a redirect set hands the message to the peer; without
    // (the helper failed: no peer) it goes through TCP.
    let spliced = enabled() && FAST_PATH.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64;
    let next = if spliced { fast_path::SPLICED } else { fast_path::TCP };
    if next != state {
        // By key, and only if the entry is still there: an LRU entry can be
        // evicted and reused for another socket meanwhile, whose decision a
        // write through the looked-up pointer would overwrite. (sendmsg
        // holds the socket's lock: nothing else changes this socket's entry.)
        let _ = FAST_PATH_STATE.insert(&own, &next, BPF_EXIST as u64);
    }
    // A socket leaves once: after that its state is TCP and it returns above.
    count(crate::own_pod_id(), if spliced { counter::FAST_PATH_MESSAGES } else { counter::FAST_PATH_LEFT });
    SK_PASS
}
