//! Which kernel has which feature of the eBPF dataplane, by version.

use aya::util::KernelVersion;

/// The minimum kernel of the eBPF path: cgroup bpf_link (5.7), the ring
/// buffer of the decision log (5.8), sk_lookup (5.9).
pub const MIN_KERNEL: (u8, u8) = (5, 9);

/// Whether sk_lookup programs see the interface of arrival (5.17).
pub fn sees_ingress_interface() -> bool {
    KernelVersion::current().is_ok_and(|k| k >= KernelVersion::new(5, 17, 0))
}

/// Whether BPF has atomic fetch-and-add (5.12), which the per-pod
/// hand-over needs (`redirect_common::handover`).
pub fn has_atomic_fetch() -> bool {
    KernelVersion::current().is_ok_and(|k| k >= KernelVersion::new(5, 12, 0))
}

/// The kernel that stops sockets losing their cgroup v2 programs on hybrid
/// hosts (commit 8520e224f547, "bpf, cgroups: Fix cgroup v2 fallback on
/// v1/v2 mixed mode").
pub const HYBRID_FIXED: (u8, u8) = (5, 15);

/// Refuses a host where sockets can lose their cgroup v2 association:
/// before 5.15, once the v1 `net_cls` or `net_prio` controller is in use
/// (a classid or priority set on any group), the kernel stops recording a
/// socket's cgroup v2 group, and the eBPF programs on the pod's group no
/// longer run for it: its connections would leave unintercepted, which
/// iptables does not depend on. `mounts` is /proc/mounts.
pub fn cgroup_sockets_reliable(kernel: KernelVersion, mounts: &str) -> Result<(), String> {
    if kernel >= KernelVersion::new(HYBRID_FIXED.0, HYBRID_FIXED.1, 0) {
        return Ok(());
    }
    let v1: Vec<&str> = mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let net = options.split(',').any(|o| o == "net_cls" || o == "net_prio");
            (fstype == "cgroup" && net).then_some(dir)
        })
        .collect();
    match v1.first() {
        None => Ok(()),
        Some(dir) => Err(format!(
            "cgroup v1 net_cls/net_prio is mounted ({dir}) on kernel {kernel}: before {}.{} sockets of groups using it lose their cgroup v2 programs",
            HYBRID_FIXED.0, HYBRID_FIXED.1
        )),
    }
}

/// `cgroup_sockets_reliable` for this kernel and its mounts now. The
/// tests' agent (feature `sandbox`) reads the mounts from
/// `$REDIRECT_TEST_PROC_MOUNTS` where it is set: a test can't mount
/// net_cls on a kernel before 5.15 without taking eBPF from every other
/// test of the machine.
pub fn cgroup_sockets_reliable_now() -> Result<(), String> {
    let kernel = KernelVersion::current().map_err(|e| format!("can't read the kernel version: {e}"))?;
    #[cfg(feature = "sandbox")]
    let path = std::env::var("REDIRECT_TEST_PROC_MOUNTS").unwrap_or_else(|_| "/proc/mounts".into());
    #[cfg(not(feature = "sandbox"))]
    let path = String::from("/proc/mounts");
    let mounts = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    cgroup_sockets_reliable(kernel, &mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,net_cls,net_prio 0 0\n";
    const PURE_V2: &str = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu,cpuacct 0 0\n";

    #[test]
    fn net_cls_or_net_prio_before_5_15_falls_back_and_says_why() {
        let why = cgroup_sockets_reliable(KernelVersion::new(5, 10, 0), HYBRID).unwrap_err();
        assert!(why.contains("/sys/fs/cgroup/net_cls,net_prio") && why.contains("5.10"), "{why}");
        assert!(cgroup_sockets_reliable(KernelVersion::new(5, 15, 0), HYBRID).is_ok(), "fixed in 5.15");
        assert!(cgroup_sockets_reliable(KernelVersion::new(5, 10, 0), PURE_V2).is_ok(), "other v1 controllers are harmless");
        let prio_only = "cgroup /sys/fs/cgroup/net_prio cgroup rw,net_prio 0 0\n";
        assert!(cgroup_sockets_reliable(KernelVersion::new(5, 14, 21), prio_only).is_err());
    }
}
