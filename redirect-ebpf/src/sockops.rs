//! `sockops`: registers the proxy's inbound listener when it calls
//! `listen()`, and puts a pod's local connections on the fast path.
//!
//! The kernel runs this program about a dozen times per connection (every
//! TCP event of both sockets, most of them ones we ignore), so the agent
//! attaches it to a pod only while the pod needs it: while the pod's inbound
//! listener is not yet registered, and while the fast path is on. The
//! redirect itself never needs it (see `redirect_common::handover`).

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirect_common::maps::{ConnKey, ListenerKey};

use crate::maps::{POD_CONFIG, PROXY_LISTENERS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn redirect_sockops(ctx: SockOpsContext) -> u32 {
    match (ctx.op(), ctx.family()) {
        (BPF_SOCK_OPS_TCP_LISTEN_CB, family) => on_listen(&ctx, family),
        // The fast path splices IPv4 local hops only.
        (BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, AF_INET) => {
            crate::fast_path::join(&ctx, key_as_client(&ctx))
        }
        // Only sockets that joined the fast path ask for state changes.
        (BPF_SOCK_OPS_STATE_CB, AF_INET) if ctx.arg(1) == BPF_TCP_CLOSE => crate::fast_path::leave(&key_as_client(&ctx)),
        _ => {}
    }
    // sockops return values are only read for a few ops we don't handle.
    0
}

/// The socket's own view: local is the source.
#[inline(always)]
fn key_as_client(ctx: &SockOpsContext) -> ConnKey {
    ConnKey {
        pod: crate::own_pod_id(),
        src_addr: ctx.local_ip4().to_ne_bytes(),
        dst_addr: ctx.remote_ip4().to_ne_bytes(),
        src_port: ctx.local_port() as u16,
        // remote_port holds the network-order port in its upper half on
        // little-endian hosts: u32::from_be undoes both.
        dst_port: u32::from_be(ctx.remote_port()) as u16,
    }
}

/// A process of the pod listens: if it is the proxy's inbound listener,
/// inbound connections of its family are steered to it (see sk_lookup.rs;
/// a dual-stack `[::]` listener serves IPv4 too).
fn on_listen(ctx: &SockOpsContext, family: u32) {
    let pod = crate::own_pod_id();
    // SAFETY: copied out at once.
    let Some(inbound_port) = (unsafe { POD_CONFIG.get(&pod) }).map(|c| c.inbound_port) else {
        return;
    };
    let mut key = match family {
        AF_INET => ListenerKey::v4(pod),
        AF_INET6 => ListenerKey::v6(pod),
        _ => return,
    };
    if ctx.local_port() as u16 == inbound_port {
        // SAFETY: `ops` is the context of this program.
        let _ = PROXY_LISTENERS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
    }
}
