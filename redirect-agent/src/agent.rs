//! The node agent's core: enrolled pods, the dataplane serving each, their
//! policies in the kernel, and the MeshConfig they derive from. Every
//! operation either completes or leaves the previous state in place.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use redirect_common::{addr::Family as _, maps::PodId};

use crate::{
    cgroup,
    config::{MeshConfig, PodPolicy},
    control::{PodStatus, Status},
    dataplane::{Choice, Dataplane},
    ebpf::{
        entries::{PodEntries, SlotEntries},
        maps::{Listeners, SharedMaps},
        pins::Pins,
        programs,
    },
    iptables::{self, Family, PodIp},
    netns,
    pod::PodSpec,
    settings::ProxySettings,
    state::State,
};

pub struct AgentOptions {
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    /// `None`: keep the file of the previous run, or FSM's defaults.
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
    pub dataplane: Choice,
}

/// The eBPF dataplane's user-space half, when the kernel can run it.
pub struct Ebpf {
    pub(crate) pins: Pins,
    pub(crate) maps: SharedMaps,
    /// Decision logs of every pod's programs (one pinned ring buffer).
    pub logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    /// Shared maps were replaced at start (their layout changed): every
    /// pod's programs still use the old ones until attached again.
    reattach_all: bool,
}

pub struct Agent {
    pub(crate) state_dir: PathBuf,
    pub(crate) bpffs_dir: PathBuf,
    pub(crate) state: State,
    pub(crate) mesh: MeshConfig,
    mesh_mtime: Option<std::time::SystemTime>,
    choice: Choice,
    /// Why eBPF can't serve pods here, if it can't.
    pub(crate) ebpf_unavailable: Option<String>,
    pub ebpf: Option<Ebpf>,
    /// The rules last applied to each iptables pod: iptables', and
    /// ip6tables' where its IPv6 is intercepted.
    pub(crate) iptables_applied: HashMap<PodId, (String, Option<String>)>,
    /// Pods whose sockops could not be attached or detached (logged once).
    sockops_failing: std::collections::HashSet<PodId>,
}

/// The node's proxy settings with the pod's own fast-path and IPv6 switches.
pub(crate) fn pod_settings(node: &ProxySettings, spec: &PodSpec) -> ProxySettings {
    ProxySettings { fast_path: spec.fast_path.unwrap_or(node.fast_path), ipv6: spec.ipv6.unwrap_or(node.ipv6), ..*node }
}

/// Registers the pod's proxy sockets that already listen on the inbound
/// port (found by the agent, not by sockops). Returns what is registered.
fn register_running_listener(ebpf: &mut Ebpf, id: PodId, netns: &Path, cgroup: &Path, port: u16) -> anyhow::Result<Listeners> {
    use std::os::fd::AsFd as _;
    for (v6, socket) in crate::listener::find(netns, cgroup, port)? {
        ebpf.maps.set_listener(id, v6, socket.as_fd())?;
    }
    Ok(ebpf.maps.listeners(id))
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Agent {
    pub fn start(opts: AgentOptions) -> anyhow::Result<Self> {
        let mut state = State::load(&opts.state_dir)?.unwrap_or_default();
        if opts.mesh_config.is_some() {
            state.mesh_config = opts.mesh_config.clone();
        }
        state.settings = opts.settings;
        let mesh = match &state.mesh_config {
            Some(path) => MeshConfig::load(path)?,
            None => MeshConfig::fsm_default(),
        };
        let (ebpf, ebpf_unavailable) = match opts.dataplane {
            Choice::Iptables => (None, Some("--dataplane iptables".to_owned())),
            choice => match crate::ebpf::probe::probe_ebpf() {
                Ok(what) => {
                    log::info!("eBPF dataplane available: {what}");
                    (Some(Self::open_ebpf(Pins::new(&opts.bpffs_dir))?), None)
                }
                Err(why) if choice == Choice::Auto => {
                    log::warn!("eBPF dataplane unavailable ({why}): pods get iptables rules");
                    (None, Some(why))
                }
                Err(why) => bail!("--dataplane ebpf: the eBPF dataplane can't run here: {why}"),
            },
        };
        let mesh_mtime = state.mesh_config.as_deref().and_then(mtime);
        let mut agent = Agent {
            state_dir: opts.state_dir,
            bpffs_dir: opts.bpffs_dir,
            state,
            mesh,
            mesh_mtime,
            choice: opts.dataplane,
            ebpf_unavailable,
            ebpf,
            iptables_applied: HashMap::new(),
            sockops_failing: Default::default(),
        };
        agent.reconcile()?;
        Ok(agent)
    }

    fn open_ebpf(pins: Pins) -> anyhow::Result<Ebpf> {
        pins.prepare()?;
        pins.remove_unknown_maps(&redirect_common::maps::names::SHARED)?;
        let (mut object, replaced) = programs::load_replacing_changed_maps(&pins)?;
        let logger = aya_log::EbpfLogger::init(&mut object).context("opening the decision log")?;
        let maps = SharedMaps::open(&mut object)?;
        Ok(Ebpf { pins, maps, logger, reattach_all: !replaced.is_empty() })
    }

    fn ebpf_mut(&mut self) -> anyhow::Result<&mut Ebpf> {
        let why = self.ebpf_unavailable.clone().unwrap_or_default();
        self.ebpf.as_mut().ok_or_else(|| anyhow!("the eBPF dataplane is not available here ({why})"))
    }

    /// Brings the kernel in line with the recorded state after a start:
    /// pods whose netns or cgroup is gone are dropped, missing links are
    /// attached, pinned leftovers of unknown pods are removed. Links that are
    /// already there are left alone: interception never pauses.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let ids: Vec<PodId> = self.state.pods.keys().copied().collect();
        self.sync_mesh()?;
        let reattach = self.ebpf.as_mut().is_some_and(|e| std::mem::take(&mut e.reattach_all));
        for id in ids {
            let spec = self.state.pods[&id].clone();
            let result = if !spec.netns.exists() {
                Err(anyhow!("its netns is gone"))
            } else if reattach && spec.dataplane == Some(Dataplane::Ebpf) {
                self.reattach(id, &spec).and_then(|()| self.install(id, &spec, true))
            } else {
                self.install(id, &spec, true)
            };
            if let Err(e) = result {
                log::warn!("pod {}: dropped ({e:#})", spec.name);
                self.uninstall_best_effort(id, &spec);
                self.state.pods.remove(&id);
            }
        }
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.maps.finish_mesh();
            for id in ebpf.pins.pinned_pods()? {
                if !self.state.pods.contains_key(&id) {
                    programs::detach(&ebpf.pins, id)?;
                }
            }
            for id in ebpf.maps.pods() {
                if !self.state.pods.contains_key(&id) {
                    ebpf.maps.remove(id);
                }
            }
        }
        self.state.save(&self.state_dir)
    }

    /// Replaces the pod's programs with new instances of this agent's, on
    /// the maps it has now (see `programs::load_replacing_changed_maps`).
    fn reattach(&mut self, id: PodId, spec: &PodSpec) -> anyhow::Result<()> {
        let cg = spec.cgroup.as_deref().map(cgroup::resolve).transpose()?.ok_or_else(|| anyhow!("pod {}: no cgroup", spec.name))?;
        let ebpf = self.ebpf_mut()?;
        programs::attach(&ebpf.pins, id, &cg, &spec.netns)
    }

    /// The dataplane for a new pod.
    fn choose(&self, spec: &PodSpec) -> anyhow::Result<(Dataplane, String)> {
        let requested = match spec.dataplane {
            Some(Dataplane::Ebpf) => Choice::Ebpf,
            Some(Dataplane::Iptables) => Choice::Iptables,
            None => self.choice,
        };
        if let Some(path) = &spec.cgroup {
            // A cgroup that isn't there is a mistake, whatever the dataplane.
            if !cgroup::exists(path) {
                bail!("cgroup {}: no such cgroup", path.display());
            }
        }
        let cgroup_v2 = spec.cgroup.as_deref().map(cgroup::resolve);
        Ok(match requested {
            Choice::Iptables => (Dataplane::Iptables, "iptables requested".into()),
            Choice::Ebpf => {
                if let Some(why) = &self.ebpf_unavailable {
                    bail!("pod {}: eBPF requested but unavailable ({why})", spec.name);
                }
                match cgroup_v2 {
                    Some(Ok(_)) => (Dataplane::Ebpf, "eBPF requested".into()),
                    Some(Err(e)) => return Err(e),
                    None => bail!("pod {}: the eBPF dataplane needs --cgroup", spec.name),
                }
            }
            Choice::Auto => match (&self.ebpf_unavailable, cgroup_v2) {
                (Some(why), _) => (Dataplane::Iptables, format!("eBPF unavailable: {why}")),
                (None, None) => (Dataplane::Iptables, "no cgroup v2 group given".into()),
                (None, Some(Err(e))) => (Dataplane::Iptables, format!("{e:#}")),
                (None, Some(Ok(_)))
                    if !self.policy(spec)?.network_interface_exclusions.is_empty() && !crate::ebpf::features::sees_ingress_interface() =>
                {
                    (Dataplane::Iptables, "interface exclusions need Linux 5.17 for eBPF".into())
                }
                (None, Some(Ok(_))) => (Dataplane::Ebpf, "kernel and pod support eBPF".into()),
            },
        })
    }

    pub(crate) fn policy(&self, spec: &PodSpec) -> anyhow::Result<PodPolicy> {
        Ok(PodPolicy::merge(&self.mesh, &spec.validate()?))
    }

    /// Writes the MeshConfig's lists into their shared slot if they changed:
    /// once per change, before the pods are pointed at it by `install`.
    fn sync_mesh(&mut self) -> anyhow::Result<()> {
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.maps.begin_mesh(&PodEntries::mesh(&self.mesh))?;
        }
        Ok(())
    }

    /// Writes the pod's policy with its dataplane (and, for eBPF, makes sure
    /// its programs are attached); the MeshConfig's slot is `sync_mesh`'s.
    /// `find_listener`: also look for a proxy that listened before it was
    /// enrolled (reads the pod's /proc/net/tcp,
    /// which walks the host's whole TCP table: at enrolment and refresh, not
    /// on every list change).
    fn install(&mut self, id: PodId, spec: &PodSpec, find_listener: bool) -> anyhow::Result<()> {
        let annotations = spec.validate()?;
        let net = netns::pod_net(&spec.netns)?;
        let settings = pod_settings(&self.state.settings, spec);
        let ipv6 = settings.ipv6.intercepts(&net);
        match spec.dataplane {
            Some(Dataplane::Iptables) => {
                let policy = PodPolicy::merge(&self.mesh, &annotations);
                let input = |family: Family| -> anyhow::Result<String> {
                    let pod_ip = net.pod_ip(family == Family::V6);
                    if policy.local_proxy_mode == crate::config::LocalProxyMode::PodIP && pod_ip.is_none() {
                        bail!(
                            "pod {}: localProxyMode PodIP needs a pod IP of each family it intercepts, and its netns has no {family:?} one",
                            spec.name
                        );
                    }
                    Ok(iptables::rules::restore_input(&policy, &settings, family, pod_ip.map_or(PodIp::ShellVariable, PodIp::Addr)))
                };
                let wanted = (input(Family::V4)?, if ipv6 { Some(input(Family::V6)?) } else { None });
                let applied = self.iptables_applied.get(&id);
                if applied.map(|a| &a.0) != Some(&wanted.0) {
                    iptables::apply::apply(&spec.netns, Family::V4, &wanted.0)
                        .with_context(|| format!("pod {}: applying iptables rules", spec.name))?;
                }
                if applied.map(|a| &a.1) != Some(&wanted.1) {
                    match &wanted.1 {
                        Some(rules) => iptables::apply::apply(&spec.netns, Family::V6, rules),
                        None => iptables::apply::remove(&spec.netns, Family::V6),
                    }
                    .with_context(|| format!("pod {}: applying ip6tables rules", spec.name))?;
                }
                self.iptables_applied.insert(id, wanted);
            }
            _ => {
                let cg = spec.cgroup.as_deref().map(cgroup::resolve).transpose()?;
                let cg = cg.ok_or_else(|| anyhow!("pod {}: no cgroup", spec.name))?;
                if !self.mesh.network_interface_exclusions.is_empty() && !crate::ebpf::features::sees_ingress_interface() {
                    log::warn!(
                        "pod {}: this kernel can't tell eBPF the interface of arrival: inbound interface exclusions are not honoured",
                        spec.name
                    );
                }
                // The route first: connect6 redirects IPv6 only once the
                // pod's config says so, and sends it into this prefix.
                if ipv6 && !net.handover_route {
                    netns::set_handover_route(&spec.netns, true)
                        .with_context(|| format!("pod {}: intercepting its IPv6 ({:?})", spec.name, settings.ipv6))?;
                }
                let own = PodEntries::own(&self.mesh, &annotations, &net, ipv6);
                let ebpf = self.ebpf_mut()?;
                ebpf.maps.apply(id, own, &settings)?;
                if !ipv6 && net.handover_route {
                    netns::set_handover_route(&spec.netns, false)?;
                }
                if !programs::is_attached(&ebpf.pins, id) {
                    programs::attach(&ebpf.pins, id, &cg, &spec.netns)?;
                }
                let mut listeners = ebpf.maps.listeners(id);
                // A proxy that was listening before it was enrolled.
                if find_listener && settings.inbound && !listeners.serve(ipv6) {
                    listeners = register_running_listener(ebpf, id, &spec.netns, &cg, settings.inbound_port)?;
                }
                let needed = programs::sockops_needed(settings.fast_path, settings.inbound, listeners.serve(ipv6));
                programs::set_sockops(&ebpf.pins, id, &cg, needed)?;
            }
        }
        Ok(())
    }

    /// Takes away whatever the pod's dataplane installed.
    fn uninstall_pod(&mut self, id: PodId, spec: &PodSpec) -> anyhow::Result<()> {
        match spec.dataplane {
            Some(Dataplane::Iptables) => {
                let applied = self.iptables_applied.remove(&id);
                iptables::apply::remove(&spec.netns, Family::V4)?;
                if applied.is_none_or(|(_, v6)| v6.is_some()) {
                    iptables::apply::remove(&spec.netns, Family::V6)?;
                }
            }
            _ => {
                let ebpf = self.ebpf_mut()?;
                programs::detach(&ebpf.pins, id)?;
                ebpf.maps.remove(id);
                // Whether or not its IPv6 was intercepted: a route left
                // from an interrupted install goes too.
                if spec.netns.exists() && netns::pod_net(&spec.netns).is_ok_and(|n| n.handover_route) {
                    netns::set_handover_route(&spec.netns, false)?;
                }
            }
        }
        Ok(())
    }

    /// `uninstall_pod` where a failure can only be logged (a pod that is
    /// being dropped or was never enrolled).
    fn uninstall_best_effort(&mut self, id: PodId, spec: &PodSpec) {
        if let Err(e) = self.uninstall_pod(id, spec) {
            log::warn!("pod {}: removing what was installed: {e:#}", spec.name);
        }
    }

    /// Enrolls a pod: its id, and the dataplane chosen for it.
    pub fn enroll(&mut self, mut spec: PodSpec) -> anyhow::Result<(PodId, Dataplane)> {
        spec.validate()?;
        if self.state.pod_id(&spec.name).is_some() {
            bail!("pod {}: already enrolled (remove it first)", spec.name);
        }
        netns::open(&spec.netns)?;
        if let Some(cg) = spec.cgroup.as_deref().map(cgroup::resolve).and_then(Result::ok) {
            let taken =
                self.state.pods.values().find(|p| p.cgroup.as_deref().map(cgroup::resolve).and_then(Result::ok).as_ref() == Some(&cg));
            if let Some(other) = taken {
                bail!("cgroup {}: already enrolled as pod {}", cg.display(), other.name);
            }
        }
        let (dataplane, why) = self.choose(&spec)?;
        spec.dataplane = Some(dataplane);
        let id = self.state.free_id();
        if let (Dataplane::Ebpf, Some(ebpf)) = (dataplane, &mut self.ebpf) {
            ebpf.maps.reset_counters(id)?;
        }
        if let Err(e) = self.sync_mesh().and_then(|()| self.install(id, &spec, true)) {
            self.uninstall_best_effort(id, &spec);
            return Err(e.context(format!("pod {}: not enrolled", spec.name)));
        }
        log::info!("pod {} enrolled as {id}: {dataplane:?} dataplane ({why})", spec.name);
        self.state.pods.insert(id, spec);
        self.state.save(&self.state_dir)?;
        Ok((id, dataplane))
    }

    pub fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        let id = self.state.pod_id(name).ok_or_else(|| anyhow!("pod {name}: not enrolled"))?;
        let spec = self.state.pods[&id].clone();
        self.uninstall_pod(id, &spec)?;
        self.state.pods.remove(&id);
        self.state.save(&self.state_dir)
    }

    /// Switches every pod to `mesh`. All pods' new policies are computed
    /// first; if one can't be written, the pods already switched go back.
    pub fn set_mesh_config(&mut self, mesh: MeshConfig, source: Option<PathBuf>) -> anyhow::Result<()> {
        let old = std::mem::replace(&mut self.mesh, mesh);
        let result = self.apply_all(false);
        if result.is_err() {
            self.mesh = old;
            if let Err(e) = self.apply_all(false) {
                log::error!("restoring the previous MeshConfig failed: {e:#}");
            }
            return result;
        }
        self.mesh_mtime = source.as_deref().and_then(mtime);
        self.state.mesh_config = source;
        self.state.save(&self.state_dir)
    }

    fn apply_all(&mut self, find_listeners: bool) -> anyhow::Result<()> {
        // Validate everything before touching anything.
        for spec in self.state.pods.values() {
            spec.validate()?;
        }
        let pods: Vec<(PodId, PodSpec)> = self.state.pods.iter().map(|(i, s)| (*i, s.clone())).collect();
        self.sync_mesh()?;
        for (id, spec) in pods {
            self.install(id, &spec, find_listeners).with_context(|| format!("pod {}", spec.name))?;
        }
        // Every pod points to the MeshConfig's new slot now: clear the old.
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.maps.finish_mesh();
        }
        Ok(())
    }

    /// Re-reads the MeshConfig file if it changed since it was applied.
    /// Returns whether it was applied; a bad file is refused and the
    /// previous lists stay.
    pub fn reload_if_changed(&mut self) -> anyhow::Result<bool> {
        let Some(path) = self.state.mesh_config.clone() else { return Ok(false) };
        let now = mtime(&path);
        if now == self.mesh_mtime {
            return Ok(false);
        }
        // Remember the attempt, so a bad file is reported once, not every tick.
        self.mesh_mtime = now;
        let mesh = MeshConfig::load(&path)?;
        self.set_mesh_config(mesh, Some(path))?;
        Ok(true)
    }

    /// Re-reads the MeshConfig and rewrites every pod's policy, also where
    /// nothing changed (repairs kernel state changed behind the agent's back).
    pub fn reload(&mut self, path: Option<PathBuf>) -> anyhow::Result<()> {
        let ids: Vec<PodId> = self.state.pods.keys().copied().collect();
        if let Some(ebpf) = &mut self.ebpf {
            for id in &ids {
                ebpf.maps.force_rewrite(*id);
            }
        }
        self.iptables_applied.clear();
        let path = path.or_else(|| self.state.mesh_config.clone());
        let mesh = match &path {
            Some(p) => MeshConfig::load(p)?,
            None => MeshConfig::fsm_default(),
        };
        self.set_mesh_config(mesh, path)
    }

    /// Keeps each eBPF pod's sockops program attached exactly while the pod
    /// needs it (`programs::sockops_needed`): detached once its proxy's
    /// inbound listener is registered, attached again when that listener
    /// closes (a restarting proxy), so that the next `listen()` registers
    /// at once; a proxy that listened again before this tick is looked for
    /// right after attaching. Runs every tick (1 s).
    pub fn watch_listeners(&mut self) {
        let Some(ebpf) = self.ebpf.as_mut() else { return };
        let registered = ebpf.maps.all_listeners();
        for (id, spec) in &self.state.pods {
            if spec.dataplane == Some(Dataplane::Iptables) {
                continue;
            }
            let settings = pod_settings(&self.state.settings, spec);
            let ipv6 = ebpf.maps.written(*id).is_some_and(|e| e.ipv6);
            let serving = registered.get(id).is_some_and(|l| l.serve(ipv6));
            let needed = programs::sockops_needed(settings.fast_path, settings.inbound, serving);
            if needed == programs::has_sockops(&ebpf.pins, *id) {
                self.sockops_failing.remove(id);
                continue;
            }
            let result = (|| {
                let cg = spec.cgroup.as_deref().map(cgroup::resolve).transpose()?.ok_or_else(|| anyhow!("no cgroup"))?;
                programs::set_sockops(&ebpf.pins, *id, &cg, needed)?;
                if needed && settings.inbound && !serving {
                    register_running_listener(ebpf, *id, &spec.netns, &cg, settings.inbound_port)?;
                }
                anyhow::Ok(())
            })();
            match result {
                Ok(()) => log::debug!("pod {}: sockops {}", spec.name, if needed { "attached" } else { "detached" }),
                // Once per pod until it works again, not every second.
                Err(e) if self.sockops_failing.insert(*id) => {
                    log::warn!("pod {}: {} sockops: {e:#}", spec.name, if needed { "attaching" } else { "detaching" })
                }
                Err(_) => {}
            }
        }
    }

    /// Follows pod address changes (a pod IP added later, say).
    pub fn refresh(&mut self) {
        if let Err(e) = self.apply_all(true) {
            log::warn!("refreshing pod addresses: {e:#}");
        }
    }

    pub fn status(&self) -> Status {
        let pods = self
            .state
            .pods
            .iter()
            .map(|(id, spec)| {
                let ebpf = self.ebpf.as_ref().filter(|_| spec.dataplane == Some(Dataplane::Ebpf));
                let none = SlotEntries::default();
                let written = ebpf.and_then(|e| e.maps.written(*id)).unwrap_or(&none);
                let iptables = self.iptables_applied.get(id);
                let mesh = ebpf.and_then(|e| e.maps.mesh_entries()).unwrap_or(&none);
                PodStatus {
                    id: *id,
                    name: spec.name.clone(),
                    dataplane: spec.dataplane,
                    netns: spec.netns.clone(),
                    cgroup: spec.cgroup.clone(),
                    attached: match ebpf {
                        Some(e) => programs::is_attached(&e.pins, *id),
                        None => self.iptables_applied.contains_key(id),
                    },
                    sockops: ebpf.is_some_and(|e| programs::has_sockops(&e.pins, *id)),
                    ipv6: written.ipv6 || iptables.is_some_and(|(_, v6)| v6.is_some()),
                    local_addrs: written
                        .local_addrs
                        .iter()
                        .map(|a| std::net::Ipv4Addr::from(*a).to_string())
                        .chain(written.local_addrs6.iter().map(|a| a.ip().to_string()))
                        .collect(),
                    excluded_cidrs: [written, mesh].iter().map(|e| e.excluded_cidrs.len() + e.excluded_cidrs6.len()).sum(),
                    included_cidrs: [written, mesh].iter().map(|e| e.included_cidrs.len() + e.included_cidrs6.len()).sum(),
                    excluded_ports: written.excluded_ports.len() + mesh.excluded_ports.len(),
                    counters: ebpf.map(|e| e.maps.counters(*id)).unwrap_or_default(),
                }
            })
            .collect();
        Status {
            mesh_config: self.state.mesh_config.clone(),
            settings: self.state.settings,
            dataplane: self.choice,
            ebpf_unavailable: self.ebpf_unavailable.clone(),
            pods,
            maps: self.ebpf.as_ref().map(|e| e.maps.fill()).unwrap_or_default(),
        }
    }

    /// Removes every trace: links, maps, pins, iptables rules, state.
    pub fn uninstall(mut self) -> anyhow::Result<()> {
        let pods: Vec<(PodId, PodSpec)> = std::mem::take(&mut self.state.pods).into_iter().collect();
        for (id, spec) in &pods {
            self.uninstall_best_effort(*id, spec);
        }
        let Agent { state_dir, bpffs_dir, ebpf, .. } = self;
        drop(ebpf);
        uninstall(&Pins::new(bpffs_dir), &state_dir)
    }
}

/// Removes every trace of an agent, running or not: the pins (which
/// detaches every eBPF link), the iptables rules of recorded pods, the state.
pub fn uninstall(pins: &Pins, state_dir: &Path) -> anyhow::Result<()> {
    if let Ok(Some(state)) = State::load(state_dir) {
        for spec in state.pods.values().filter(|p| p.dataplane == Some(Dataplane::Iptables)) {
            if spec.netns.exists() {
                iptables::apply::remove(&spec.netns, Family::V4)?;
                // Whether its IPv6 was intercepted is not recorded: where
                // ip6tables itself is missing, there is nothing to remove.
                if let Err(e) = iptables::apply::remove(&spec.netns, Family::V6) {
                    log::warn!("pod {}: removing ip6tables rules: {e:#}", spec.name);
                }
            }
        }
    }
    pins.remove_all()?;
    for f in [State::file(state_dir), State::socket(state_dir)] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()));
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir(state_dir);
    Ok(())
}
