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
use redirect_common::maps::ConnKey;

use crate::maps::{POD_CONFIG, PROXY_LISTENERS};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn redirect_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.family() == AF_INET {
        match ctx.op() {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
                crate::fast_path::join(&ctx, key_as_client(&ctx))
            }
            // Only sockets that joined the fast path ask for state changes.
            BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => crate::fast_path::leave(&key_as_client(&ctx)),
            BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
            _ => {}
        }
    }
    // sockops return values are only read for a few ops we don't handle.
    0
}

/// The socket's own view: local is the source.
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
