//! The agent's side of `fsm-redirect-cni`, the chained CNI plugin (its own
//! crate, `redirect_cni`): which pods FSM meshes, where the kubelet puts
//! their cgroups, and the plugin's place on the node.
//!
//! - `kubelet`: where the kubelet puts a pod's cgroup.
//! - `pods`: which pods FSM meshes.
//! - `install`: the plugin's binary and conflist entry on the node.
//! - `runtime`: where the node's container runtime looks for CNI.
//!
//! The CNI wire format (`spec`) and the plugin's requests (`CniAdd`,
//! `CniAdded`) are the plugin crate's, re-exported here.

pub mod install;
pub mod kubelet;
pub mod pods;
pub mod runtime;

pub use redirect_cni::{
    spec,
    wire::{CniAdd, CniAdded},
};
