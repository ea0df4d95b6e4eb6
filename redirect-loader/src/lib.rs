//! The eBPF dataplane: the embedded objects, what the kernel can do
//! (`features`, `probe`), where its state is pinned (`pins`), how a pod's programs are
//! attached (`programs`, `link`; verified ahead of need: `prewarm`; the
//! shared programs' pod of each cgroup: `pod_of_cgroup`), a policy in map terms (`policy_entries`)
//! written to the maps (`maps`), and the decision log (`decision_log`).

pub mod decision_log;
pub mod features;
pub mod link;
pub mod maps;
pub mod pins;
pub mod pod_of_cgroup;
pub mod policy_entries;
pub mod prewarm;
pub mod probe;
pub mod programs;

/// The node's eBPF object (redirect-ebpf's `main.rs`: the cgroup hooks'
/// programs), built by build.rs with the pinned nightly.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect-ebpf"));

/// A pod's own eBPF object (redirect-ebpf's `pod.rs`: sk_lookup, sockops,
/// sk_msg), loaded once per pod.
pub static POD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect-ebpf-pod"));
