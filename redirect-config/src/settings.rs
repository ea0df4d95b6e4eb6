//! The agent's own settings, not the mesh's: the proxy's ports and UID and
//! the switches of `redirect-agent run` (recorded in the state file, shown
//! by `status`, read by both dataplanes).

use crate::ipv6::Ipv6Mode;

/// Settings that come from the agent's own configuration, not the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxySettings {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub log_decisions: bool,
    /// Steer inbound connections to the inbound port.
    #[serde(default = "yes")]
    pub inbound: bool,
    /// Splice local hops (app ↔ proxy) with sk_msg instead of TCP/IP.
    #[serde(default)]
    pub fast_path: bool,
    /// Whose IPv6 is intercepted (`--ipv6`).
    #[serde(default)]
    pub ipv6: Ipv6Mode,
    /// The most entries each of a pod's four list annotations may hold
    /// (`--max-annotation-entries`): the node's policy maps are shared.
    #[serde(default = "default_max_annotation_entries")]
    pub max_annotation_entries: u32,
}

/// 256: a pod's annotations then take at most 512 of the 64 Ki entries of
/// the CIDR tries, and of the ports map; FSM's examples hold a handful.
pub const DEFAULT_MAX_ANNOTATION_ENTRIES: u32 = 256;

// A node's pods at their quotas fit the node-wide maps: each pod's two
// policy slots (one is written while the other serves) and the
// MeshConfig's two, ports of both directions in one map.
const _: () = {
    use redirect_common::maps::capacity::{CIDRS, PODS, PODS_AT_QUOTA, PORTS};
    let slots = 2 * PODS_AT_QUOTA + 2;
    assert!(PODS_AT_QUOTA <= PODS);
    assert!(slots * 2 * DEFAULT_MAX_ANNOTATION_ENTRIES <= 2 * PORTS);
    assert!(slots * DEFAULT_MAX_ANNOTATION_ENTRIES <= CIDRS);
};

fn default_max_annotation_entries() -> u32 {
    DEFAULT_MAX_ANNOTATION_ENTRIES
}

fn yes() -> bool {
    true
}

impl Default for ProxySettings {
    fn default() -> Self {
        use redirect_common::defaults::*;
        ProxySettings {
            outbound_port: OUTBOUND_PORT,
            inbound_port: INBOUND_PORT,
            proxy_uid: PROXY_UID,
            log_decisions: false,
            inbound: true,
            fast_path: false,
            ipv6: Ipv6Mode::default(),
            max_annotation_entries: DEFAULT_MAX_ANNOTATION_ENTRIES,
        }
    }
}
