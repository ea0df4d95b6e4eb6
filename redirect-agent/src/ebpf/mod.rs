//! The eBPF dataplane: the embedded object, where its state is pinned, how a
//! pod's programs are attached, and how policies are written to the maps.

pub mod link;
pub mod maps;
pub mod pins;
pub mod programs;

/// The eBPF object, built by build.rs with the pinned nightly.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect-ebpf"));
