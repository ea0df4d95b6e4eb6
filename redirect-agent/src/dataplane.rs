//! Which dataplane serves a pod, and what the kernel can do.
//!
//! `auto` (the default) probes the kernel once at start: cgroup v2 mounted,
//! a kernel new enough for cgroup bpf_links, ring buffers and sk_lookup (5.9), and the
//! programs actually loading (program types, attach types, helpers,
//! the verifier: a locked-down or BPF-less kernel fails here). Where that
//! fails, or where a pod has no cgroup v2 group, the pod gets fsm-init's
//! iptables rules instead. The agent says which it chose and why.

use aya::{EbpfLoader, util::KernelVersion};

use crate::ebpf::OBJECT;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Ebpf,
    Iptables,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Ebpf,
    Iptables,
    /// eBPF where the kernel and the pod allow it, iptables elsewhere.
    Auto,
}

/// The minimum kernel of the eBPF path: cgroup bpf_link (5.7), the ring
/// buffer of the decision log (5.8), sk_lookup (5.9).
const MIN_KERNEL: (u8, u8) = (5, 9);

/// Why the eBPF dataplane can't run here, if it can't.
pub fn probe_ebpf() -> Result<String, String> {
    let mount = crate::cgroup::cgroup2_mount().map_err(|e| format!("{e:#}"))?;
    let kernel = KernelVersion::current().map_err(|e| format!("can't read the kernel version: {e}"))?;
    if kernel < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        return Err(format!("kernel {kernel} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1));
    }
    // Load (not attach) every program, with throwaway maps.
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| format!("loading the eBPF object: {e}"))?;
    for (name, attach_type) in crate::ebpf::programs::every_program() {
        crate::ebpf::programs::load_program(&mut ebpf, name, attach_type).map_err(|e| {
            let first = format!("{e:#}");
            // The verifier's whole log, for whoever debugs a kernel that refuses.
            log::debug!("{name}: {first}");
            format!("the kernel refuses {name}: {}", first.lines().next().unwrap_or(""))
        })?;
    }
    Ok(format!("kernel {kernel}, cgroup v2 at {}, connect4/connect6/getsockopt/sk_lookup/sockops load", mount.display()))
}

/// Whether sk_lookup programs see the interface of arrival (5.17).
pub fn sees_ingress_interface() -> bool {
    KernelVersion::current().is_ok_and(|k| k >= KernelVersion::new(5, 17, 0))
}
