//! Which kernel has which feature of the eBPF dataplane, by version.

use aya::util::KernelVersion;

/// The minimum kernel of the eBPF path: cgroup bpf_link (5.7), the ring
/// buffer of the decision log (5.8), sk_lookup (5.9).
pub const MIN_KERNEL: (u8, u8) = (5, 9);

/// Whether sk_lookup programs see the interface of arrival (5.17).
pub fn sees_ingress_interface() -> bool {
    KernelVersion::current().is_ok_and(|k| k >= KernelVersion::new(5, 17, 0))
}
