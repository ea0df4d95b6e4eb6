//! What the agent is told: FSM's MeshConfig, a pod's annotations, and the
//! effective per-pod policy that merges them. Everything here is validated
//! before anything reaches the kernel; a bad value is refused with the field
//! it came from, and nothing is applied.

pub mod annotations;
pub mod error;
pub mod meshconfig;
pub mod policy;
pub mod source;
pub mod values;

pub use error::ConfigError;
pub use meshconfig::{InterceptionMode, LocalProxyMode, MeshConfig};
pub use policy::{PodPolicy, Source, Sourced};
pub use values::{Cidr, InterfaceName, Port};
