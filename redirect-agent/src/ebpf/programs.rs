//! Loading one instance of the programs for a pod and attaching it to the
//! pod's cgroup (sk_lookup: to its network namespace), with every link
//! pinned so that it outlives the agent.
//!
//! Why one instance per pod: the programs need to know which pod a socket
//! belongs to in all three hooks. `bpf_get_netns_cookie` would tell, but
//! sockops and getsockopt only have it from Linux 5.15, and the cgroup id
//! seen in softirq context (sockops) is not the pod's. A per-pod instance
//! with `POD_ID` baked in at load time works from 5.7 (cgroup bpf_link) on,
//! keeps every pod's verdicts independent, and costs one verifier pass per
//! enrolment.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, CgroupSockopt, SkLookup, SockOps, links::PinnedLink},
};
use redirect_common::maps::{PodId, names};

use super::{
    OBJECT,
    link::{self, AttachType},
    pins::Pins,
};

/// The programs of one pod, by the name of their link pin.
pub const PROGRAMS: [(&str, &str, AttachType); 4] = [
    ("connect4", "redirect_connect4", AttachType::CgroupInet4Connect),
    ("sockops", "redirect_sockops", AttachType::CgroupSockOps),
    ("getsockopt", "redirect_getsockopt", AttachType::CgroupGetsockopt),
    ("sk_lookup", "redirect_sk_lookup", AttachType::SkLookup),
];

/// Loads the object with every shared map opened from (or created at) its
/// pin. `pod` is baked into the instance's `POD_ID`.
pub fn load(pins: &Pins, pod: PodId) -> anyhow::Result<Ebpf> {
    let map_paths: Vec<_> = names::SHARED.iter().map(|n| (*n, pins.map(n))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // bpf_sk_lookup.ingress_ifindex exists from 5.17.
    let has_ifindex = u8::from(crate::dataplane::sees_ingress_interface());
    loader
        .override_global("POD_ID", &pod, true)
        .override_global("HAS_INGRESS_IFINDEX", &has_ifindex, true)
        .load(OBJECT)
        .context("loading the eBPF object")
}

/// Attaches the pod's programs to its cgroup (and sk_lookup to its network
/// namespace) and pins the links. On failure nothing stays attached.
pub fn attach(pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path) -> anyhow::Result<()> {
    let dir = pins.pod_dir(pod);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = attach_all(pins, pod, cgroup, netns);
    if result.is_err() {
        let _ = super::pins::remove_dir(&dir);
    }
    result
}

/// Loads (verifies) one program of the object into the kernel.
pub fn load_program(ebpf: &mut Ebpf, name: &str, attach_type: AttachType) -> anyhow::Result<OwnedFd> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let fd = match attach_type {
        AttachType::CgroupInet4Connect => {
            let p: &mut CgroupSockAddr = program.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        AttachType::CgroupSockOps => {
            let p: &mut SockOps = program.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        AttachType::CgroupGetsockopt => {
            let p: &mut CgroupSockopt = program.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        AttachType::SkLookup => {
            let p: &mut SkLookup = program.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            p.fd()?.as_fd().try_clone_to_owned()?
        }
    };
    Ok(fd)
}

fn attach_all(pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path) -> anyhow::Result<()> {
    let mut ebpf = load(pins, pod)?;
    let cg = crate::cgroup::open(cgroup)?;
    let ns = crate::netns::open(netns)?;
    for (pin, name, attach_type) in PROGRAMS {
        let prog = load_program(&mut ebpf, name, attach_type)?;
        let (target, what) = match attach_type {
            AttachType::SkLookup => (ns.as_fd(), netns),
            _ => (cg.as_fd(), cgroup),
        };
        let fd = link::create(prog.as_fd(), target, attach_type)
            .with_context(|| format!("attaching {name} to {}", what.display()))?;
        link::pin(&fd, &pins.link(pod, pin))?;
    }
    Ok(())
}

/// Whether every link of the pod is pinned.
pub fn is_attached(pins: &Pins, pod: PodId) -> bool {
    PROGRAMS.iter().all(|(pin, _, _)| PinnedLink::from_pin(pins.link(pod, pin)).is_ok())
}

/// Detaches the pod's programs: removing the last reference to a link (its
/// pin) detaches it.
pub fn detach(pins: &Pins, pod: PodId) -> anyhow::Result<()> {
    super::pins::remove_dir(&pins.pod_dir(pod))
}
