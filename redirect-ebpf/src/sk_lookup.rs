//! `sk_lookup` (attached to the pod's network namespace): the inbound
//! decision for every TCP connection arriving at the pod from elsewhere.
//!
//! A redirected connection is not rewritten at all: its SYN is handed to
//! the proxy's listening socket on the inbound port (found in
//! `PROXY_LISTENERS`), so the accepted socket's local address is the one the
//! client dialled, replies leave from pod-IP:port as they would, and no
//! per-packet or per-connection state exists: the proxy's `SO_ORIGINAL_DST`
//! is answered from the accepted socket's own local address (sockopt.rs).

use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use redirect_common::{
    addr::Address,
    decision::{Inbound, Verdict, decide_inbound},
    handover,
    maps::{ListenerKey, counter, pod_flags},
};

use crate::{
    fields::read_ip6,
    maps::{POD_CONFIG, PROXY_LISTENERS, count},
    policy::MapLists,
};

const IPPROTO_TCP: u32 = 6;
const AF_INET6: u32 = 10;

#[sk_lookup]
pub fn redirect_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for this hook.
    unsafe { try_sk_lookup(&ctx) }
}

unsafe fn try_sk_lookup(ctx: &SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY (whole body): `l` is the context; fields read as the kernel
    // defines them.
    unsafe {
        if (*l).protocol != IPPROTO_TCP {
            return SK_PASS;
        }
        let Some(config) = POD_CONFIG.get(&crate::own_pod_id()).copied() else {
            return SK_PASS;
        };
        if config.flags & pod_flags::INBOUND == 0 {
            return SK_PASS;
        }
        let lists = MapLists { config: &config };
        let ipv6 = (*l).family == AF_INET6;
        // Connections a process of the pod opens to its own addresses come
        // from a local address: the outbound table has decided them. So do
        // stray segments of redirected connections already closed, sent
        // from the proxy's side: from the IPv6 hand-over prefix (routed to
        // lo, the pod's own as 127.0.0.0/8 is) or from loopback.
        let from_pod = if ipv6 {
            let remote = read_ip6(&raw const (*l).remote_ip6);
            remote.is_loopback() || handover::in_net6(remote) || lists.is_local_v6(remote)
        } else {
            let remote = u32::from_be((*l).remote_ip4);
            remote.is_loopback() || lists.is_local_v4(remote)
        };
        if from_pod {
            return SK_PASS;
        }
        let local_port = (*l).local_port as u16;
        // ingress_ifindex exists from Linux 5.17; the agent sets
        // HAS_INGRESS_IFINDEX only there, and the verifier drops the read
        // elsewhere as dead code.
        let ingress_ifindex = if crate::instance::HAS_INGRESS_IFINDEX.load() != 0 { Some((*l).ingress_ifindex) } else { None };
        let rule = decide_inbound(&Inbound { dst_port: local_port, ingress_ifindex, ipv6 }, &lists);
        count(crate::own_pod_id(), counter::inbound(rule));
        if ipv6 {
            count(crate::own_pod_id(), counter::INBOUND_IPV6);
        }
        if rule.verdict() == Verdict::Direct {
            return SK_PASS;
        }
        let pod = crate::own_pod_id();
        // An IPv4 connection goes to the IPv4 listener, or else to a
        // dual-stack `[::]` one (registered as IPv6; a v6-only socket
        // refuses it, and the connection is refused).
        let assigned = if ipv6 {
            PROXY_LISTENERS.redirect_sk_lookup(ctx, &ListenerKey::v6(pod), 0).is_ok()
        } else {
            PROXY_LISTENERS.redirect_sk_lookup(ctx, &ListenerKey::v4(pod), 0).is_ok()
                || PROXY_LISTENERS.redirect_sk_lookup(ctx, &ListenerKey::v6(pod), 0).is_ok()
        };
        if assigned {
            return SK_PASS;
        }
        // No proxy listening: refuse rather than let the connection reach
        // the application around the proxy (fail closed).
        count(crate::own_pod_id(), counter::INBOUND_NO_PROXY);
        SK_DROP
    }
}
