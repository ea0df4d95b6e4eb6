//! The node agent of the FSM eBPF interception dataplane.
//!
//! - `config`: MeshConfig, pod annotations, the merged per-pod policy.
//! - `policy_lists`: that policy as the shared decision's `OutboundLists`.
//! - `ebpf` (the `redirect-loader` crate): the embedded programs, pins,
//!   per-pod attachment, map writes; `iptables` (`redirect-iptables`):
//!   fsm-init's rules; `netns`, `cgroup` (`redirect-node`); `config`,
//!   `settings`, `ipv6` (`redirect-config`). Re-exported under these names.
//! - `pod`: a pod asked for (`EnrollRequest`) and enrolled (`Pod`).
//! - `agent`: enrolled pods and their kernel state, one handler per
//!   dataplane; `daemon` its event loop; `control` the typed protocol of the
//!   socket the CLI talks to it over; `render` the CLI's tables.
//! - `sandbox`, `demo`, `original_dst` (feature `sandbox`): throwaway pods
//!   for the demo and the tests, and the proxy side of `SO_ORIGINAL_DST`
//!   they serve with; the agent a node runs is built without them.

pub mod agent;
pub use redirect_node::cgroup;
pub mod cni;
pub use redirect_config as config;
pub mod control;
pub mod daemon;
pub mod dataplane;
#[cfg(feature = "sandbox")]
pub mod demo;
mod diagnostics;
pub use redirect_loader as ebpf;
mod files;
pub mod injection;
pub use redirect_config::ipv6;
pub use redirect_iptables as iptables;
pub mod kubernetes;
mod metrics;
pub use redirect_node::netns;
#[cfg(feature = "sandbox")]
pub mod original_dst;
pub mod pod;
mod policy_lists;
pub mod render;
pub mod repair;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub use redirect_config::settings;
pub mod state;
