//! What the agent is told: FSM's MeshConfig, a pod's annotations, and the
//! effective per-pod policy that merges them; and the agent's own settings
//! from its operator (`settings`: the proxy's ports and UID, `--ipv6`). Everything here is validated
//! before anything reaches the kernel; a bad value is refused with the field
//! it came from, and nothing is applied.

pub mod annotations;
pub mod error;
pub mod ipv6;
pub mod meshconfig;
pub mod policy;
pub mod settings;
pub mod source;
pub mod values;

pub use error::ConfigError;
pub use meshconfig::{InterceptionMode, LocalProxyMode, MeshConfig};
pub use policy::{PodPolicy, Source, Sourced};
pub use values::{Cidr, InterfaceName, Port};
