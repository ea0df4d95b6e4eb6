//! `fsm-redirect-cni`, a chained CNI plugin: on ADD, before any container
//! of the pod starts, it hands the pod to the agent over the control socket
//! and returns once the agent has enrolled it (or said that FSM does not
//! mesh it); on DEL it has the agent remove it. The previous plugin's
//! result goes through unchanged.
//!
//! - `plugin`: the plugin's commands (the binary's whole logic).
//! - `spec`: the CNI wire format.
//! - `kubelet`: where the kubelet puts a pod's cgroup.
//! - `pods`: which pods FSM meshes.
//! - `install`: the plugin's binary and conflist entry on the node.
//! - `runtime`: where the node's container runtime looks for CNI.

pub mod install;
pub mod kubelet;
pub mod plugin;
pub mod pods;
pub mod runtime;
pub mod spec;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use spec::KubernetesPod;

use crate::dataplane::Dataplane;

/// ADD, as the plugin hands it to the agent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CniAdd {
    pub container_id: String,
    pub netns: PathBuf,
    pub pod: KubernetesPod,
    /// From `prevResult`.
    pub ips: Vec<IpAddr>,
    /// From the runtime (`io.kubernetes.cri.pod-annotations`), where it
    /// passed them; else the agent takes the pod's own.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What the agent did with an ADD.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CniAdded {
    Enrolled {
        id: u32,
        dataplane: Dataplane,
    },
    /// FSM does not mesh the pod: nothing was done.
    NotMeshed {
        why: String,
    },
}
