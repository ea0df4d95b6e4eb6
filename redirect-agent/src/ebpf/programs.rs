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
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, CgroupSockopt, Program, ProgramError, SkLookup, SkMsg, SockOps, links::PinnedLink},
};
use redirect_common::maps::{PodId, names};

use super::{
    OBJECT,
    link::{self, AttachType},
    pins::Pins,
};

/// The programs of one pod that are always attached, by the name of their
/// link pin.
pub const PROGRAMS: [(&str, &str, AttachType); 4] = [
    ("connect4", "redirect_connect4", AttachType::CgroupInet4Connect),
    ("connect6", "redirect_connect6", AttachType::CgroupInet6Connect),
    ("getsockopt", "redirect_getsockopt", AttachType::CgroupGetsockopt),
    ("sk_lookup", "redirect_sk_lookup", AttachType::SkLookup),
];

/// sockops is loaded with the others but attached only while the pod needs
/// it ([`sockops_needed`]): the kernel runs it on every TCP event of every
/// socket in the pod, about a dozen times per connection, which is most of
/// what interception would otherwise cost a connection. Its program is
/// pinned so that it can be attached again later without reloading.
const SOCKOPS: (&str, &str) = ("sockops", "redirect_sockops");
// (bpffs refuses names with a dot.)
const SOCKOPS_PROGRAM_PIN: &str = "sockops_program";

/// Every program of a pod (not the fast path's sk_msg), by function name.
pub fn every_program() -> impl Iterator<Item = (&'static str, AttachType)> {
    PROGRAMS.iter().map(|(_, name, t)| (*name, *t)).chain([(SOCKOPS.1, AttachType::CgroupSockOps)])
}

/// Whether a pod needs sockops: to put local connections on the fast path,
/// or to register its proxy's inbound listener the moment it calls
/// `listen()` (once registered, the listener stays in `PROXY_LISTENERS`
/// until it closes). When the fast path is switched off, sockops goes with
/// it: the fast-path decisions of sockets still open then are not removed at
/// their close but age out of `FAST_PATH_STATE` (an LRU).
pub fn sockops_needed(fast_path: bool, inbound: bool, listener_registered: bool) -> bool {
    fast_path || (inbound && !listener_registered)
}

/// The sk_msg program of the fast path, and the pin of the pod's sockhash
/// it is attached to.
const FAST_PATH_PROGRAM: &str = "redirect_sk_msg";
pub const FAST_PATH_PIN: &str = "fast_path";

/// Loads the object with every shared map opened from (or created at) its
/// pin. `pod` is baked into the instance's `POD_ID`.
pub fn load(pins: &Pins, pod: PodId) -> anyhow::Result<Ebpf> {
    let map_paths: Vec<_> = names::SHARED.iter().map(|n| (*n, pins.map(n))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // bpf_sk_lookup.ingress_ifindex exists from 5.17.
    let has_ifindex = u8::from(super::features::sees_ingress_interface());
    loader
        .override_global("POD_ID", &pod, true)
        .override_global("HAS_INGRESS_IFINDEX", &has_ifindex, true)
        .load(OBJECT)
        .context("loading the eBPF object")
}

/// Loads the agent's own instance, first unpinning every shared map whose
/// pinned definition is not this object's (an older agent's layout: a map
/// that grew, a key that changed). Programs still attached keep the old map
/// until their pod is attached again, so the caller re-attaches every pod
/// when this returns names. Returns the instance and the maps replaced.
pub fn load_replacing_changed_maps(pins: &Pins) -> anyhow::Result<(Ebpf, Vec<String>)> {
    let mut replaced: Vec<String> = Vec::new();
    loop {
        let e = match load(pins, 0) {
            Ok(ebpf) => return Ok((ebpf, replaced)),
            Err(e) => e,
        };
        let Some(aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap { name, property, expected, actual })) =
            e.downcast_ref::<aya::EbpfError>()
        else {
            return Err(e);
        };
        if replaced.contains(name) {
            return Err(e);
        }
        let pin = pins.map(name);
        log::info!("{}: pinned with {property} {actual}, this agent's has {expected}: replacing it", pin.display());
        std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        replaced.push(name.clone());
    }
}

/// Attaches the pod's programs to its cgroup (and sk_lookup to its network
/// namespace) and pins the links, in place of whatever the pod had attached
/// (an older agent's programs). Everything is loaded and verified first, so
/// the pod's connects go unexamined only for the few syscalls of the
/// switch, not for the verifier's tens of milliseconds. If loading fails,
/// what the pod had stays; if attaching fails, nothing stays attached.
pub fn attach(pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path) -> anyhow::Result<()> {
    let loaded = Loaded::prepare(pins, pod)?;
    let dir = pins.pod_dir(pod);
    super::pins::remove_dir(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = loaded.attach(pins, pod, cgroup, netns);
    if result.is_err() {
        let _ = super::pins::remove_dir(&dir);
    }
    result
}

/// Loads (verifies) one program of the object into the kernel.
pub fn load_program(ebpf: &mut Ebpf, name: &str, attach_type: AttachType) -> anyhow::Result<OwnedFd> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    match attach_type {
        AttachType::CgroupInet4Connect | AttachType::CgroupInet6Connect => load_as(program, CgroupSockAddr::load),
        AttachType::CgroupSockOps => load_as(program, SockOps::load),
        AttachType::CgroupGetsockopt => load_as(program, CgroupSockopt::load),
        AttachType::SkLookup => load_as(program, SkLookup::load),
        AttachType::SkMsgVerdict => load_as(program, SkMsg::load),
    }
    .with_context(|| format!("loading {name}"))?;
    Ok(program.fd()?.as_fd().try_clone_to_owned()?)
}

/// Each of aya's program types has its own `load`; the rest is the same.
fn load_as<P>(program: &mut Program, load: fn(&mut P) -> Result<(), ProgramError>) -> Result<(), ProgramError>
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    load(program.try_into()?)
}

/// One pod's instance, loaded and verified, not yet attached.
struct Loaded {
    /// Holds the instance's maps (the fast path's sockhash) until pinned.
    ebpf: Ebpf,
    sockops: OwnedFd,
    programs: Vec<(&'static str, OwnedFd, AttachType)>,
}

impl Loaded {
    fn prepare(pins: &Pins, pod: PodId) -> anyhow::Result<Self> {
        let mut ebpf = load(pins, pod)?;
        // Before sockops can run: a socket takes the sockhash's sk_msg
        // program when it joins, not later.
        let sk_msg = load_program(&mut ebpf, FAST_PATH_PROGRAM, AttachType::SkMsgVerdict)?;
        link::prog_attach(sk_msg.as_fd(), fast_path_map(&ebpf)?, AttachType::SkMsgVerdict)
            .context("attaching the fast path's sk_msg program to its sockhash")?;
        let sockops = load_program(&mut ebpf, SOCKOPS.1, AttachType::CgroupSockOps)?;
        let mut programs = Vec::new();
        for (pin, name, attach_type) in PROGRAMS {
            programs.push((pin, load_program(&mut ebpf, name, attach_type)?, attach_type));
        }
        Ok(Loaded { ebpf, sockops, programs })
    }

    fn attach(self, pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path) -> anyhow::Result<()> {
        // The pin is what keeps the sk_msg program attached: the kernel
        // detaches a sockhash's programs when the last file descriptor or pin
        // of the map goes, even while sockops still uses the map.
        link::pin(fast_path_map(&self.ebpf)?, &pins.link(pod, FAST_PATH_PIN))?;
        link::pin(&self.sockops, &pins.link(pod, SOCKOPS_PROGRAM_PIN))?;
        let cg = crate::cgroup::open(cgroup)?;
        let ns = crate::netns::open(netns)?;
        for (pin, prog, attach_type) in &self.programs {
            let (target, what) = match attach_type {
                AttachType::SkLookup => (ns.as_fd(), netns),
                _ => (cg.as_fd(), cgroup),
            };
            link_and_pin(prog.as_fd(), target, *attach_type, what, &pins.link(pod, pin))?;
        }
        Ok(())
    }
}

/// Attaches `prog` to `target` (`what`, for the error) and pins the link
/// at `pin`: the pin keeps it attached.
fn link_and_pin(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: AttachType, what: &Path, pin: &Path) -> anyhow::Result<()> {
    let fd = link::create(prog, target, attach_type)
        .with_context(|| format!("attaching {} to {}", pin.file_name().unwrap_or_default().display(), what.display()))?;
    link::pin(&fd, pin)
}

/// The instance's own fast-path sockhash.
fn fast_path_map(ebpf: &Ebpf) -> anyhow::Result<BorrowedFd<'_>> {
    match ebpf.map(names::FAST_PATH) {
        Some(aya::maps::Map::SockHash(data)) => Ok(data.fd().as_fd()),
        Some(_) => Err(anyhow!("map {} is not a sockhash", names::FAST_PATH)),
        None => Err(anyhow!("map {} missing from the eBPF object", names::FAST_PATH)),
    }
}

/// Attaches or detaches the pod's sockops program (see [`SOCKOPS`]), if
/// it isn't so already.
pub fn set_sockops(pins: &Pins, pod: PodId, cgroup: &Path, attached: bool) -> anyhow::Result<()> {
    let link_pin = pins.link(pod, SOCKOPS.0);
    if attached == link_pin.exists() {
        return Ok(());
    }
    if attached {
        let prog = link::get(&pins.link(pod, SOCKOPS_PROGRAM_PIN))?;
        let cg = crate::cgroup::open(cgroup)?;
        link_and_pin(prog.as_fd(), cg.as_fd(), AttachType::CgroupSockOps, cgroup, &link_pin)
    } else {
        // The pin is the link's last reference: removing it detaches.
        std::fs::remove_file(&link_pin).with_context(|| format!("unpinning {}", link_pin.display()))
    }
}

/// Whether the pod's sockops program is attached now.
pub fn has_sockops(pins: &Pins, pod: PodId) -> bool {
    pins.link(pod, SOCKOPS.0).exists()
}

/// The pins of the pod's attachment that are missing: links, its fast-path
/// sockhash, its sockops program. Empty: fully attached.
pub fn missing(pins: &Pins, pod: PodId) -> Vec<&'static str> {
    let mut missing: Vec<&str> =
        PROGRAMS.iter().filter(|(pin, _, _)| PinnedLink::from_pin(pins.link(pod, pin)).is_err()).map(|(pin, _, _)| *pin).collect();
    missing.extend([FAST_PATH_PIN, SOCKOPS_PROGRAM_PIN].into_iter().filter(|pin| !pins.link(pod, pin).exists()));
    missing
}

pub fn is_attached(pins: &Pins, pod: PodId) -> bool {
    missing(pins, pod).is_empty()
}

/// Detaches the pod's programs: removing the last reference to a link (its
/// pin) detaches it. Open connections of the pod lose nothing: each socket
/// on the fast path holds the sk_msg program, which holds the sockhash, so
/// both live on until the pod's last such socket closes, while new messages
/// go the TCP way (the pod's config is gone: the switch reads off).
pub fn detach(pins: &Pins, pod: PodId) -> anyhow::Result<()> {
    super::pins::remove_dir(&pins.pod_dir(pod))
}
