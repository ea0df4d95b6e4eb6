//! What the kernel side and the user side of the dataplane must agree on:
//! the layout of every map key and value, the defaults, and the one
//! interception decision (`decision`) that the eBPF programs, the agent's
//! `explain` output and the tests all run.
#![no_std]
#![warn(missing_docs)]

pub mod addr;
pub mod decision;
pub mod decision_log;
pub mod dns;
pub mod handover;
pub mod maps;

/// FSM's defaults (MeshConfig `spec.sidecar` / fsm-init arguments).
pub mod defaults {
    /// Where the outbound listener of the sidecar (Pipy) listens.
    pub const OUTBOUND_PORT: u16 = 15001;
    /// Where the inbound listener of the sidecar listens.
    pub const INBOUND_PORT: u16 = 15003;
    /// The UID the sidecar runs as; its own connections are never redirected.
    pub const PROXY_UID: u32 = 1500;
    /// The proxy's own admin, health and metrics ports: inbound connections
    /// to them go straight to the proxy, never through the inbound listener.
    pub const PROXY_ADMIN_PORTS: [u16; 5] = [15010, 15901, 15902, 15903, 15904];
    /// The sidecar's local DNS proxy (`spec.sidecar.localDNSProxy`): FSM
    /// v1.0 to v1.4.16 send a pod's UDP to 127.0.0.153:53 there.
    pub const LOCAL_DNS_PROXY_IP: [u8; 4] = [127, 0, 0, 153];
    /// DNS's port, which the pod dials.
    pub const DNS_PORT: u16 = 53;
    /// Where the sidecar's DNS proxy listens, on [`LOCAL_DNS_PROXY_IP`].
    pub const LOCAL_DNS_PROXY_PORT: u16 = 5300;
}

/// `SOL_IP` / `SO_ORIGINAL_DST` from `<linux/netfilter_ipv4.h>`: the
/// getsockopt that proxies use to learn where a redirected connection was
/// going.
pub const SOL_IP: i32 = 0;
/// The option of `SOL_IP` that answers with a `sockaddr_in`.
pub const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IPV6` / `IP6T_SO_ORIGINAL_DST` from `<linux/netfilter_ipv6/ip6_tables.h>`:
/// the same question for an IPv6 connection, answered with a `sockaddr_in6`.
pub const SOL_IPV6: i32 = 41;
/// The option of `SOL_IPV6` that answers with a `sockaddr_in6`.
pub const IP6T_SO_ORIGINAL_DST: i32 = 80;
