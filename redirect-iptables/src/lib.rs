//! The iptables dataplane: fsm-init's rules, emitted from the same policy
//! the eBPF path uses (`rules`), and applied inside a pod's network
//! namespace (`apply`). It is the fallback where eBPF can't run, and the
//! oracle the eBPF path is tested against.

pub mod apply;
pub mod fsm_init;
pub mod rules;

pub use rules::{Family, PodIp};
