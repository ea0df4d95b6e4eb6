//! `sk_lookup` (attached to the pod's network namespace): the inbound
//! decision for every TCP connection arriving at the pod from elsewhere.
//!
//! A redirected connection is not rewritten at all: its SYN is handed to
//! the proxy's listening socket on the inbound port (found in
//! `PROXY_LISTENERS`), so the accepted socket's local address is the one the
//! client dialled, replies leave from pod-IP:port as they would, and no
//! per-packet state exists. The dialled address is recorded in
//! `INBOUND_ORIG` for the proxy's `SO_ORIGINAL_DST` (where the accepted
//! socket's own local address would say the same: the record says that
//! this connection was steered, as iptables' conntrack entry does).

use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use redirect_common::{
    addr::Address,
    decision::{Inbound, Verdict, decide_inbound},
    handover,
    maps::{ConnKey, ConnKey6, ListenerKey, OrigDst, OrigDst6, counter, pod_flags},
};

use crate::{
    fields::read_ip6,
    maps::{INBOUND_ORIG, INBOUND_ORIG6, POD_CONFIG, PROXY_LISTENERS, count},
    policy::MapLists,
};

const IPPROTO_TCP: u32 = 6;
const AF_INET6: u32 = 10;

#[sk_lookup]
pub fn redirect_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for this hook.
    unsafe { try_sk_lookup(&ctx) }
}

/// The connection's record for the proxy's `SO_ORIGINAL_DST`, by family.
enum Record {
    V4(ConnKey),
    V6(ConnKey6),
}

unsafe fn try_sk_lookup(ctx: &SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY (whole body): `l` is the context; fields read as the kernel
    // defines them.
    unsafe {
        if (*l).protocol != IPPROTO_TCP {
            return SK_PASS;
        }
        let Some(config) = POD_CONFIG.get(&crate::pod_id()).copied() else {
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
        // lo, the pod's own as 127.0.0.0/8 is) or from 127.128.0.0/10.
        let from_pod = if ipv6 {
            let remote = read_ip6(&raw const (*l).remote_ip6);
            remote.is_loopback() || handover::cookie_of6(remote).is_some() || lists.is_local_v6(remote)
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
        let ingress_ifindex = if crate::HAS_INGRESS_IFINDEX.load() != 0 { Some((*l).ingress_ifindex) } else { None };
        let rule = decide_inbound(&Inbound { dst_port: local_port, ingress_ifindex, ipv6 }, &lists);
        count(counter::inbound(rule));
        if ipv6 {
            count(counter::INBOUND_IPV6);
        }
        if rule.verdict() == Verdict::Direct {
            return SK_PASS;
        }
        // remote_port: network order in the low 16 bits (read as the 32-bit
        // field of kernels before 5.19).
        let remote_port_field = core::ptr::addr_of!((*l).remote_port).cast::<u32>();
        let remote_port = u16::from_be(*remote_port_field as u16);
        let pod = crate::pod_id();
        let record = if ipv6 {
            let (src_addr, dst_addr) = (read_ip6(&raw const (*l).remote_ip6), read_ip6(&raw const (*l).local_ip6));
            let key = ConnKey6 { pod, src_addr, dst_addr, src_port: remote_port, dst_port: local_port };
            if INBOUND_ORIG6.insert(&key, &OrigDst6 { addr: dst_addr, port: local_port, _pad: 0 }, 0).is_err() {
                return SK_DROP;
            }
            Record::V6(key)
        } else {
            let key = ConnKey {
                pod,
                src_addr: (*l).remote_ip4.to_ne_bytes(),
                dst_addr: (*l).local_ip4.to_ne_bytes(),
                src_port: remote_port,
                dst_port: local_port,
            };
            if INBOUND_ORIG.insert(&key, &OrigDst { addr: (*l).local_ip4.to_ne_bytes(), port: local_port, _pad: 0 }, 0).is_err() {
                return SK_DROP;
            }
            Record::V4(key)
        };
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
        let _ = match record {
            Record::V4(key) => INBOUND_ORIG.remove(&key),
            Record::V6(key) => INBOUND_ORIG6.remove(&key),
        };
        count(counter::INBOUND_NO_PROXY);
        SK_DROP
    }
}
