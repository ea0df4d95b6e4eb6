//! The node agent of the FSM eBPF interception dataplane.
//!
//! - `config`: MeshConfig, pod annotations, the merged per-pod policy.
//! - `lists`: that policy as the shared decision's `OutboundLists`.
//! - `ebpf`: the embedded programs, pins, per-pod attachment, map writes.
//! - `agent`: enrolled pods and their kernel state; `daemon` its event loop;
//!   `control` the socket the CLI talks to it over.
//! - `sandbox`, `demo`: throwaway pods for the demo and the tests.

pub mod agent;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod diagnostics;
pub mod ebpf;
pub mod iptables;
pub mod ipv6;
pub mod listener;
pub mod lists;
pub mod netns;
pub mod original_dst;
pub mod pod;
pub mod sandbox;
pub mod settings;
pub mod state;
