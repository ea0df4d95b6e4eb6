//! The pod's programs, attached to the pod's cgroup (sk_lookup: to its
//! network namespace), with every link pinned so that it outlives the
//! agent.
//!
//! Which pod a socket belongs to: the cgroup hooks' programs (connect4/6,
//! getsockopt, the UDP ones) are loaded once per node ([`Shared`]) and read
//! the pod from the storage of the cgroup they run for, which the agent
//! writes at attach (`pod_of_cgroup`). sk_lookup (a netns hook, which has
//! no cgroup storage), sockops and sk_msg (the pod's own fast-path
//! sockhash) are loaded per pod with `POD_ID` baked in ([`Prepared`]), from
//! an object of their own ([`Object::Pod`]): aya reads and links a whole
//! object for each load, and the node's took 1 ms of a pod's 1.7.
//!
//! A pod whose cgroup links were made before the shared programs (by an
//! earlier release) keeps programs of its own for them, `POD_ID` baked in:
//! a link given another program in place keeps the storage it was made with
//! (none), and a program reading storage there would read none. Its links
//! get shared programs when they are made anew (the pod enrolled again).
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

use crate::{
    OBJECT, POD_OBJECT,
    link::{self, AttachType},
    pins::Pins,
    pod_of_cgroup::PodOfCgroup,
};

/// The programs of one pod that are always attached, by the name of their
/// link pin. The UDP ones (the local DNS proxy's rule) do nothing but look
/// up the pod's config while the MeshConfig has the proxy off.
pub const PROGRAMS: [(&str, &str, AttachType); 10] = [
    ("connect4", "redirect_connect4", AttachType::CgroupInet4Connect),
    ("connect6", "redirect_connect6", AttachType::CgroupInet6Connect),
    ("getsockopt", "redirect_getsockopt", AttachType::CgroupGetsockopt),
    ("sk_lookup", "redirect_sk_lookup", AttachType::SkLookup),
    ("sendmsg4", "redirect_sendmsg4", AttachType::CgroupUdp4Sendmsg),
    ("sendmsg6", "redirect_sendmsg6", AttachType::CgroupUdp6Sendmsg),
    ("recvmsg4", "redirect_recvmsg4", AttachType::CgroupUdp4Recvmsg),
    ("recvmsg6", "redirect_recvmsg6", AttachType::CgroupUdp6Recvmsg),
    ("getpeername4", "redirect_getpeername4", AttachType::CgroupInet4Getpeername),
    ("getpeername6", "redirect_getpeername6", AttachType::CgroupInet6Getpeername),
];

/// sockops is loaded with the others but attached only while the pod needs
/// it ([`sockops_needed`]): the kernel runs it on every TCP event of every
/// socket in the pod, about a dozen times per connection, which is most of
/// what interception would otherwise cost a connection. Its program is
/// pinned so that it can be attached again later without reloading.
const SOCKOPS: (&str, &str) = ("sockops", "redirect_sockops");
// (bpffs refuses names with a dot.)
const SOCKOPS_PROGRAM_PIN: &str = "sockops_program";

/// Every program a pod's links may run (not the fast path's sk_msg), by
/// function name: the shared ones, a pod's own, sockops. Each is in the
/// object `Object::of` its attach type names.
pub fn every_program() -> impl Iterator<Item = (&'static str, AttachType)> {
    let shared = PROGRAMS.iter().map(|(_, name, t)| (on_this_kernel(name), *t));
    let own = PROGRAMS.iter().filter(|(_, name, _)| own_variant(on_this_kernel(name)) != on_this_kernel(name));
    shared.chain(own.map(|(_, name, t)| (own_variant(on_this_kernel(name)), *t))).chain([(SOCKOPS.1, AttachType::CgroupSockOps)])
}

/// The program of a pod's own instance for a cgroup hook whose shared
/// program is `name`: it reads `POD_ID`, never the cgroup's storage (for
/// links made without storage: see the module's header). getpeername's
/// program needs no pod and serves both; sk_lookup has no shared one.
fn own_variant(name: &'static str) -> &'static str {
    match name {
        "redirect_connect4" => "redirect_connect4_own",
        "redirect_connect6" => "redirect_connect6_own",
        "redirect_connect4_per_pod" => "redirect_connect4_per_pod_own",
        "redirect_connect6_per_pod" => "redirect_connect6_per_pod_own",
        "redirect_getsockopt" => "redirect_getsockopt_own",
        "redirect_sendmsg4" => "redirect_sendmsg4_own",
        "redirect_sendmsg6" => "redirect_sendmsg6_own",
        "redirect_recvmsg4" => "redirect_recvmsg4_own",
        "redirect_recvmsg6" => "redirect_recvmsg6_own",
        other => other,
    }
}

/// The function this kernel runs for `name`: connect4/6 hand over per pod
/// where BPF has atomic fetch-and-add (5.12), node-wide before, whose
/// verifier refuses that instruction wherever it stands
/// (`redirect_common::handover`).
fn on_this_kernel(name: &'static str) -> &'static str {
    static PER_POD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match name {
        "redirect_connect4" if *PER_POD.get_or_init(crate::features::has_atomic_fetch) => "redirect_connect4_per_pod",
        "redirect_connect6" if *PER_POD.get_or_init(crate::features::has_atomic_fetch) => "redirect_connect6_per_pod",
        other => other,
    }
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

/// The marker, in the pod's pin directory, that the pod's cgroup links are
/// made for the shared programs (so have storage): a pin of the
/// `POD_OF_CGROUP` map itself, made before the first of them.
const SHARED_LINKS_PIN: &str = "shared_links";

/// Whether a program of [`PROGRAMS`] is one of the node's shared ones (a
/// cgroup hook: it can read the cgroup's storage).
fn is_shared(attach_type: AttachType) -> bool {
    !matches!(attach_type, AttachType::SkLookup)
}

/// The pin of the link that a pod's attach makes first: one whose program
/// reads the storage (the kernel makes storage only for a program that
/// uses the map) and does nothing for a pod whose id isn't written yet
/// (getsockopt looks up the pod's config, finds none and leaves the
/// kernel's answer), made first so that the cgroup's storage exists, and
/// the id is written, before any other hook runs.
const FIRST_LINK: &str = "getsockopt";

/// The cgroup hooks' programs, loaded (verified) once, in the agent's own
/// instance (`POD_ID` 0): every pod's cgroup links run these.
pub struct Shared {
    programs: Vec<(&'static str, OwnedFd, AttachType)>,
    storage: PodOfCgroup,
}

impl Shared {
    /// `ebpf`: the agent's own instance (`load_replacing_changed_maps`).
    pub fn load(ebpf: &mut Ebpf, pins: &Pins) -> anyhow::Result<Self> {
        let mut programs = load_cgroup_programs(ebpf, |name| name)?;
        // The first link's program first: see FIRST_LINK.
        programs.sort_by_key(|(pin, _, _)| *pin != FIRST_LINK);
        Ok(Shared { programs, storage: PodOfCgroup::open(pins)? })
    }
}

/// Whether the shared program of the link at `pin` reads the cgroup's
/// storage: all that need the pod (those with an own variant).
fn reads_storage(pin: &str) -> bool {
    PROGRAMS.iter().any(|(p, name, _)| *p == pin && own_variant(on_this_kernel(name)) != on_this_kernel(name))
}

/// Loads the cgroup hooks' programs of [`PROGRAMS`] into `ebpf`: for each,
/// the function `variant` names for this kernel's (the shared one, or
/// `own_variant`).
fn load_cgroup_programs(
    ebpf: &mut Ebpf,
    variant: fn(&'static str) -> &'static str,
) -> anyhow::Result<Vec<(&'static str, OwnedFd, AttachType)>> {
    PROGRAMS
        .into_iter()
        .filter(|(_, _, t)| is_shared(*t))
        .map(|(pin, name, attach_type)| Ok((pin, load_program(ebpf, variant(on_this_kernel(name)), attach_type)?, attach_type)))
        .collect()
}

/// Whether the pod's cgroup links were made for programs of its own (no
/// storage): some are pinned, without the shared-links marker.
fn has_own_cgroup_links(pins: &Pins, pod: PodId) -> bool {
    !pins.link(pod, SHARED_LINKS_PIN).exists() && PROGRAMS.iter().any(|(pin, _, t)| is_shared(*t) && pins.link(pod, pin).exists())
}

/// The two eBPF objects a pod's programs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// The node's ([`OBJECT`]): the cgroup hooks' programs, shared and
    /// `_own`.
    Node,
    /// A pod's own ([`POD_OBJECT`]): sk_lookup, sockops and sk_msg.
    Pod,
}

impl Object {
    /// The object holding the program of `attach_type`.
    pub fn of(attach_type: AttachType) -> Self {
        match attach_type {
            AttachType::SkLookup | AttachType::CgroupSockOps | AttachType::SkMsgVerdict => Object::Pod,
            _ => Object::Node,
        }
    }

    pub fn bytes(self) -> &'static [u8] {
        match self {
            Object::Node => OBJECT,
            Object::Pod => POD_OBJECT,
        }
    }
}

/// Loads `object` with every shared map opened from (or created at) its
/// pin. `pod` is baked into the instance's `POD_ID` (0: the shared one).
pub fn load(pins: &Pins, object: Object, pod: PodId) -> anyhow::Result<Ebpf> {
    let map_paths: Vec<_> = names::SHARED.iter().map(|n| (*n, pins.map(n))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // bpf_sk_lookup.ingress_ifindex exists from 5.17.
    let has_ifindex = u8::from(crate::features::sees_ingress_interface());
    loader
        .override_global("POD_ID", &pod, true)
        .override_global("HAS_INGRESS_IFINDEX", &has_ifindex, true)
        .load(object.bytes())
        .with_context(|| format!("loading the eBPF object ({object:?})"))
}

/// Loads the agent's own instance, first unpinning every shared map whose
/// pinned definition is not this object's (an older agent's layout: a map
/// that grew, a key that changed). Programs still attached keep the old map
/// until their pod is attached again, so the caller re-attaches every pod
/// when this returns names. Returns the instance and the maps replaced.
pub fn load_replacing_changed_maps(pins: &Pins) -> anyhow::Result<(Ebpf, Vec<String>)> {
    let mut replaced: Vec<String> = Vec::new();
    loop {
        let e = match load(pins, Object::Node, 0) {
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
/// namespace) and pins the links. Where the pod has a link already (an
/// older agent's programs, or this agent's on maps it replaced), the link
/// is given the new program in place (`BPF_LINK_UPDATE`): every connect
/// meets the old program or the new one, never none. A link whose cgroup
/// or namespace is gone (made again under the same path) is replaced.
/// Everything is loaded and verified first; if loading fails, what the pod
/// had stays, and if one link fails, the others are done all the same.
/// `prepared`: the pod's own programs verified ahead for this pod id
/// (`prewarm`), else they are loaded now; `shared`: the node's.
pub fn attach(pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path, prepared: Option<Prepared>, shared: &Shared) -> anyhow::Result<()> {
    let loaded = match prepared {
        Some(p) if p.pod == pod => p,
        _ => Prepared::new(pins, pod)?,
    };
    let dir = pins.pod_dir(pod);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    loaded.attach(pins, pod, cgroup, netns, shared)
}

/// What the pod's cgroup links and its netns link must be attached to: the
/// cgroup's id (its directory's inode) and the namespace's inode.
fn target_ids(cgroup: &Path, netns: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let cg = std::fs::metadata(cgroup).with_context(|| format!("cgroup {}", cgroup.display()))?.ino();
    Ok((cg, redirect_node::netns::identity(netns)?.ino()))
}

/// The pod's links that are pinned but attached to a cgroup or network
/// namespace that is not the pod's any more (removed, and made again under
/// the same path): they intercept nothing. Empty where they can't be read.
pub fn misplaced(pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path) -> Vec<&'static str> {
    // A pod being enrolled has no links yet: nothing to look up.
    if !pins.pod_dir(pod).exists() {
        return Vec::new();
    }
    let Ok((cg, ns)) = target_ids(cgroup, netns) else { return Vec::new() };
    PROGRAMS
        .iter()
        .map(|(pin, _, attach_type)| (*pin, *attach_type))
        .chain([(SOCKOPS.0, AttachType::CgroupSockOps)])
        .filter(|(pin, attach_type)| {
            let Ok(fd) = link::get(&pins.link(pod, pin)) else { return false };
            let want = if matches!(attach_type, AttachType::SkLookup) { ns } else { cg };
            matches!(link::target_id(fd.as_fd()), Ok(Some(id)) if id != want)
        })
        .map(|(pin, _)| pin)
        .collect()
}

/// The kernel's tags of this agent's programs, by link pin (sockops by its
/// program pin): those a link there may run (the shared program's and a
/// pod's own). A tag is a hash of the instructions with map references
/// left out, so every instance of one program has the same, and an older
/// release's differs (a program built into the node's object, as before
/// the pod's had one of its own, too). `node`, `pod`: an instance of each
/// object with its programs of `every_program` loaded.
pub type Tags = std::collections::BTreeMap<&'static str, Vec<u64>>;

pub fn tags(node: &Ebpf, pod: &Ebpf) -> anyhow::Result<Tags> {
    let tag = |attach_type: AttachType, name: &str| -> anyhow::Result<u64> {
        let ebpf = match Object::of(attach_type) {
            Object::Node => node,
            Object::Pod => pod,
        };
        let program = ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        Ok(program.info().with_context(|| format!("{name}: its tag"))?.tag())
    };
    let mut tags = Tags::new();
    for (pin, name, attach_type) in PROGRAMS {
        let name = on_this_kernel(name);
        let mut both = vec![tag(attach_type, name)?];
        if own_variant(name) != name {
            both.push(tag(attach_type, own_variant(name))?);
        }
        tags.insert(pin, both);
    }
    tags.insert(SOCKOPS_PROGRAM_PIN, vec![tag(AttachType::CgroupSockOps, SOCKOPS.1)?]);
    Ok(tags)
}

/// The pinned pods that run other programs than `ours` (an earlier
/// release's, or one without a program this one has), with the pins that
/// differ. Their links are given this agent's programs in place.
pub fn outdated(pins: &Pins, ours: &Tags) -> anyhow::Result<Vec<(PodId, Vec<&'static str>)>> {
    let pods = pins.pinned_pods()?;
    if pods.is_empty() {
        return Ok(Vec::new());
    }
    // One pass over the node's programs, rather than one per link.
    let loaded: std::collections::HashMap<u32, u64> =
        aya::programs::loaded_programs().filter_map(Result::ok).map(|p| (p.id(), p.tag())).collect();
    let mut found = Vec::new();
    for pod in pods {
        let differ: Vec<&'static str> = ours
            .iter()
            .filter(|(pin, tags)| {
                let path = pins.link(pod, pin);
                let theirs = if **pin == SOCKOPS_PROGRAM_PIN {
                    aya::programs::ProgramInfo::from_pin(&path).ok().map(|p| p.tag())
                } else {
                    link::get(&path).ok().and_then(|fd| link::info(fd.as_fd()).ok()).and_then(|i| loaded.get(&i.prog_id).copied())
                };
                !theirs.is_some_and(|t| tags.contains(&t))
            })
            .map(|(pin, _)| *pin)
            .collect();
        if !differ.is_empty() {
            found.push((pod, differ));
        }
    }
    Ok(found)
}

/// Loads (verifies) one program of the object into the kernel.
pub fn load_program(ebpf: &mut Ebpf, name: &str, attach_type: AttachType) -> anyhow::Result<OwnedFd> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    match attach_type {
        AttachType::CgroupInet4Connect
        | AttachType::CgroupInet6Connect
        | AttachType::CgroupUdp4Sendmsg
        | AttachType::CgroupUdp6Sendmsg
        | AttachType::CgroupUdp4Recvmsg
        | AttachType::CgroupUdp6Recvmsg
        | AttachType::CgroupInet4Getpeername
        | AttachType::CgroupInet6Getpeername => load_as(program, CgroupSockAddr::load),
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

/// One pod's own programs, loaded and verified, not yet attached.
pub struct Prepared {
    /// The id baked into it.
    pod: PodId,
    /// Holds the instance's maps (the fast path's sockhash) until pinned.
    ebpf: Ebpf,
    sockops: OwnedFd,
    /// sk_lookup; and the cgroup hooks' too where the pod needs its own
    /// ([`has_own_cgroup_links`]).
    programs: Vec<(&'static str, OwnedFd, AttachType)>,
}

impl Prepared {
    pub fn new(pins: &Pins, pod: PodId) -> anyhow::Result<Self> {
        let mut ebpf = load(pins, Object::Pod, pod)?;
        // Before sockops can run: a socket takes the sockhash's sk_msg
        // program when it joins, not later.
        let sk_msg = load_program(&mut ebpf, FAST_PATH_PROGRAM, AttachType::SkMsgVerdict)?;
        link::prog_attach(sk_msg.as_fd(), fast_path_map(&ebpf)?, AttachType::SkMsgVerdict)
            .context("attaching the fast path's sk_msg program to its sockhash")?;
        let sockops = load_program(&mut ebpf, SOCKOPS.1, AttachType::CgroupSockOps)?;
        let mut programs = Vec::new();
        for (pin, name, attach_type) in PROGRAMS.into_iter().filter(|(_, _, t)| !is_shared(*t)) {
            programs.push((pin, load_program(&mut ebpf, on_this_kernel(name), attach_type)?, attach_type));
        }
        Ok(Prepared { pod, ebpf, sockops, programs })
    }

    /// Loads the cgroup hooks' programs of the pod's own too, from an
    /// instance of the node's object with the pod's id (a verifier pass
    /// each, as every enrolment took before the shared programs). Each
    /// program's descriptor keeps it loaded after the instance goes.
    fn load_own_cgroup_programs(&mut self, pins: &Pins) -> anyhow::Result<()> {
        let mut node = load(pins, Object::Node, self.pod)?;
        let own = load_cgroup_programs(&mut node, own_variant)?;
        self.programs.extend(own);
        Ok(())
    }

    fn attach(mut self, pins: &Pins, pod: PodId, cgroup: &Path, netns: &Path, shared: &Shared) -> anyhow::Result<()> {
        let own = has_own_cgroup_links(pins, pod);
        if own {
            self.load_own_cgroup_programs(pins)?;
        }
        // The pin is what keeps the sk_msg program attached: the kernel
        // detaches a sockhash's programs when the last file descriptor or pin
        // of the map goes, even while sockops still uses the map. Sockets in
        // the previous instance's sockhash keep its sk_msg program.
        replace_pin(fast_path_map(&self.ebpf)?, &pins.link(pod, FAST_PATH_PIN))?;
        replace_pin(&self.sockops, &pins.link(pod, SOCKOPS_PROGRAM_PIN))?;
        let cg = redirect_node::cgroup::open(cgroup)?;
        let ns = redirect_node::netns::open(netns)?;
        let (cg_id, ns_id) = target_ids(cgroup, netns)?;
        // Each with whether its program reads the cgroup's storage (a
        // shared one that needs the pod: all but getpeername's).
        let mut links: Vec<(&str, BorrowedFd<'_>, AttachType, bool)> =
            self.programs.iter().map(|(pin, prog, attach_type)| (*pin, prog.as_fd(), *attach_type, false)).collect();
        if !own {
            links.extend(shared.programs.iter().map(|(pin, prog, attach_type)| (*pin, prog.as_fd(), *attach_type, reads_storage(pin))));
        }
        // sockops only where it is attached now (`set_sockops` decides).
        if pins.link(pod, SOCKOPS.0).exists() {
            links.push((SOCKOPS.0, self.sockops.as_fd(), AttachType::CgroupSockOps, false));
        }
        // The marker first: a link made for a shared program (with storage)
        // must never be given a pod's own (without), which the kernel
        // refuses, so a pod whose attach fails half-way is tried again
        // with the shared programs.
        let marker = pins.link(pod, SHARED_LINKS_PIN);
        if !own && !marker.exists() {
            link::pin(shared.storage.fd(), &marker)?;
        }
        // The shared programs' pod: written before any link changes where
        // the cgroup has storage already, else after the first link whose
        // program reads it (the kernel makes storage for such a program).
        let mut written = own;
        if !written && shared.storage.get(cg_id).is_some() {
            shared.storage.set(cg_id, pod)?;
            written = true;
        }
        let mut failed = Vec::new();
        for (pin, prog, attach_type, reads) in links {
            let (target, what, id) = match attach_type {
                AttachType::SkLookup => (ns.as_fd(), netns, ns_id),
                _ => (cg.as_fd(), cgroup, cg_id),
            };
            if let Err(e) = replace_link(prog, target, id, attach_type, what, &pins.link(pod, pin)) {
                failed.push(format!("{e:#}"));
            } else if !written && reads {
                // Fails only if the kernel made no storage: the links run
                // with no pod, so the pod is not enrolled.
                shared.storage.set(cg_id, pod)?;
                written = true;
            }
        }
        if !failed.is_empty() {
            anyhow::bail!("{}", failed.join("; "));
        }
        Ok(())
    }
}

/// Pins `object` at `pin`, in place of what was pinned there.
fn replace_pin(object: impl AsFd, pin: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("unpinning {}", pin.display())),
        _ => {}
    }
    link::pin(object, pin)
}

/// Makes the link pinned at `pin` run `prog` on `target` (whose id is
/// `target_id`): updated in place if it is attached there, else attached
/// anew (a link whose target is gone is unpinned first: it is detached).
fn replace_link(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    target_id: u64,
    attach_type: AttachType,
    what: &Path,
    pin: &Path,
) -> anyhow::Result<()> {
    if let Ok(existing) = link::get(pin) {
        if matches!(link::target_id(existing.as_fd()), Ok(Some(id)) if id == target_id) {
            return link::update(existing.as_fd(), prog).with_context(|| format!("updating {} in place", pin.display()));
        }
        std::fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))?;
    }
    link_and_pin(prog, target, attach_type, what, pin)
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
        let cg = redirect_node::cgroup::open(cgroup)?;
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
    crate::pins::remove_dir(&pins.pod_dir(pod))
}
