//! What this kernel can do for the eBPF dataplane. `auto` (the default)
//! probes once at start: cgroup v2 mounted, a kernel new enough for cgroup
//! bpf_links, ring buffers and sk_lookup (5.9), and the programs actually
//! loading (program types, attach types, helpers, the verifier: a
//! locked-down or BPF-less kernel fails here). Where that fails, or where a
//! pod has no cgroup v2 group, the pod gets fsm-init's iptables rules.

use aya::{EbpfLoader, util::KernelVersion};

use crate::{features::MIN_KERNEL, programs::Object};

/// What the eBPF dataplane found here, and the tags of its programs as
/// this kernel loads them (`programs::tags`); or why it can't run here.
pub fn probe_ebpf() -> Result<(String, crate::programs::Tags), String> {
    let mount = redirect_node::cgroup::cgroup2_mount().map_err(|e| format!("{e:#}"))?;
    let kernel = KernelVersion::current().map_err(|e| format!("can't read the kernel version: {e}"))?;
    if kernel < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        return Err(format!("kernel {kernel} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1));
    }
    crate::features::cgroup_sockets_reliable_now()?;
    // Load (not attach) every program of both objects, with throwaway maps.
    let load = |object: Object| EbpfLoader::new().load(object.bytes()).map_err(|e| format!("loading the eBPF object ({object:?}): {e}"));
    let (mut node, mut pod) = (load(Object::Node)?, load(Object::Pod)?);
    for (name, attach_type) in crate::programs::every_program() {
        let ebpf = match Object::of(attach_type) {
            Object::Node => &mut node,
            Object::Pod => &mut pod,
        };
        crate::programs::load_program(ebpf, name, attach_type).map_err(|e| {
            let first = format!("{e:#}");
            // The verifier's whole log, for whoever debugs a kernel that refuses.
            log::debug!("{name}: {first}");
            format!("the kernel refuses {name}: {}", first.lines().next().unwrap_or(""))
        })?;
    }
    let tags = crate::programs::tags(&node, &pod).map_err(|e| format!("{e:#}"))?;
    Ok((format!("kernel {kernel}, cgroup v2 at {}, connect4/connect6/getsockopt/sk_lookup/sockops load", mount.display()), tags))
}
