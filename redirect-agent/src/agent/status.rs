//! What `status` shows of the agent: its pods, their kernel state and the
//! node's, as the agent hands it out (`Agent::status`); the control
//! protocol carries it as it is.

use std::{collections::BTreeMap, path::PathBuf};

use redirect_common::maps::PodId;

use crate::{
    dataplane::{Choice, Dataplane},
    ebpf::maps::MapFill,
    settings::ProxySettings,
};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub id: PodId,
    pub name: String,
    pub dataplane: Dataplane,
    pub netns: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub attached: bool,
    /// Whether the pod's sockops program is attached right now (only while
    /// it needs it: see `programs::sockops_needed`).
    pub sockops: bool,
    /// Whether the pod's IPv6 is intercepted (its `--ipv6`, resolved).
    #[serde(default)]
    pub ipv6: bool,
    pub local_addrs: Vec<String>,
    pub excluded_cidrs: usize,
    pub included_cidrs: usize,
    pub excluded_ports: usize,
    /// Kernel event counters by name (eBPF pods).
    pub counters: BTreeMap<String, u64>,
    /// Why its last install failed, while it keeps what the kernel held
    /// before and is retried at each refresh.
    #[serde(default)]
    pub degraded: Option<String>,
    /// Its processes ran before the agent enrolled it (found by
    /// reconciling): connections they opened before are not intercepted.
    #[serde(default)]
    pub started_unintercepted: bool,
}

/// A pod whose install failed: it keeps its previous state, retried.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Degraded {
    pub pod: String,
    pub why: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
    pub dataplane: Choice,
    pub ebpf_unavailable: Option<String>,
    pub pods: Vec<PodStatus>,
    /// Pods removed since the agent started because their netns was gone.
    #[serde(default)]
    pub removed_netns_gone: u64,
    /// The pod ids whose programs are verified ahead of their enrolment
    /// (`ebpf::prewarm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prewarmed: Vec<PodId>,
    /// Why eBPF pods' sockets may no longer meet their programs (net_cls or
    /// net_prio in use on a kernel before 5.15): they have fsm-init's rules
    /// too, as a backstop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_sockets_unreliable: Option<String>,
    /// Where the MeshConfig in force came from.
    #[serde(default)]
    pub mesh_source: Option<crate::config::source::MeshSource>,
    /// Fill levels of the kernel maps.
    pub maps: Vec<MapFill>,
    /// Pods recorded in a form this agent can't read (a newer agent's):
    /// left as they are in the kernel and in the state file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable_pods: Vec<UnreadablePod>,
    /// What else of the state file could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_problems: Vec<String>,
}

/// A recorded pod the agent can't read, and why.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UnreadablePod {
    pub id: PodId,
    pub name: String,
    pub why: String,
}
