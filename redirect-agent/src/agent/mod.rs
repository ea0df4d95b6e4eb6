//! The node agent's core: enrolled pods, the dataplane serving each, their
//! policies in the kernel, and the MeshConfig they derive from. Every
//! operation either completes or leaves the previous state in place.
//!
//! What each dataplane does for a pod is its handler's
//! ([`handler::PodHandler`]): [`ebpf_pods::EbpfPods`],
//! [`iptables_pods::IptablesPods`], and [`fsm_init_pods::FsmInitPods`] for
//! the pods whose own fsm-init serves them (`crate::injection`).

mod cluster;
mod cni;
pub mod ebpf_pods;
pub mod fsm_init_pods;
pub mod handler;
pub mod iptables_pods;
pub mod status;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use redirect_common::{addr::Family as _, maps::PodId};

use self::{
    ebpf_pods::EbpfPods,
    fsm_init_pods::FsmInitPods,
    handler::{Install, PodHandler},
    iptables_pods::IptablesPods,
    status::{Degraded, PodStatus, Status, UnreadablePod},
};
use crate::{
    cgroup,
    cni::{install::Chained, pods::PodSource},
    config::{MeshConfig, PodPolicy, annotations::PodAnnotations, source::MeshSource},
    dataplane::{Choice, Dataplane},
    diagnostics::{AgentView, Kernel},
    ebpf::{pins::Pins, policy_entries::SlotEntries},
    injection::{FsmInit, Serving},
    netns,
    pod::{EnrollRequest, Pod},
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
    /// Where the node's pods are read from, for CNI enrolment and
    /// reconciling; `PodSource::None`: the CNI plugin's pods are left alone.
    pub pods: PodSource,
    /// kubelet's `--cgroup-root` (`/`), under which it puts pods' cgroups.
    pub kubelet_cgroup_root: String,
    /// Install the CNI plugin there, and keep its conflist entry.
    pub cni_install: Option<crate::cni::install::CniInstall>,
    /// Mount a bpffs at /sys/fs/bpf if the node has none (not in a
    /// container: see `Pins::prepare`).
    pub mount_bpffs: bool,
    /// The API's MeshConfig (`namespace/name`), where the agent reads it
    /// from the API.
    pub mesh_object: Option<String>,
}

pub struct Agent {
    state_dir: PathBuf,
    bpffs_dir: PathBuf,
    state: State,
    mesh: MeshConfig,
    /// The MeshConfig file's mtime when it was last applied.
    mesh_mtime: Option<std::time::SystemTime>,
    /// The mtime of a file version that was refused, so that it is logged
    /// once; it is tried again at each refresh all the same.
    mesh_refused: Option<std::time::SystemTime>,
    /// Pods whose last install failed, with why: they keep what the kernel
    /// held before (pins, previous lists) and are tried again at each
    /// refresh. Never dropped for it.
    degraded: BTreeMap<PodId, String>,
    /// Pods removed because their netns was gone (a pod deleted without
    /// `remove`: a crashed kubelet, a missed CNI DEL).
    removed_gone: u64,
    /// Enrolments refused for annotations over the per-pod limit.
    refused_over_limit: u64,
    choice: Choice,
    /// Why eBPF can't serve pods here, if it can't.
    ebpf_unavailable: Option<String>,
    /// Why sockets may have stopped meeting their pod's cgroup v2 programs
    /// since the agent started (`features::cgroup_sockets_reliable`, looked
    /// at each refresh): eBPF pods then get fsm-init's rules too, as a
    /// backstop, until the agent restarts (the kernel's switch stays off
    /// until a reboot).
    cgroup_sockets_unreliable: Option<String>,
    ebpf: Option<EbpfPods>,
    iptables: IptablesPods,
    fsm_init: FsmInitPods,
    pods: PodSource,
    /// Where the MeshConfig in force came from; meshed pods are enrolled
    /// only while it is known (`config::source` decides).
    mesh_source: MeshSource,
    /// The API's MeshConfig (`namespace/name`), with the API.
    mesh_object: Option<String>,
    /// How the last check of the CNI plugin's entry went (with
    /// `--cni-conf-dir`).
    cni_chained: Option<Result<(), String>>,
    /// Meshed pods that reconciling could not enroll, by UID, with why
    /// (logged when it changes).
    unadoptable: BTreeMap<String, String>,
    /// What becomes of meshed pods that started around the plugin, beyond
    /// their enrolment in place (`run --repair`, with the API).
    repair: Option<crate::repair::Repairer>,
    kubelet_cgroup_root: String,
}

/// The identity of a pod's recorded netns, or why it is no longer its
/// namespace: the path is gone, or a process's path (`/proc/PID/ns/net`, as
/// reconciling and cri-dockerd record it) names another namespace: the
/// process exited and its PID was reused, and following the path would
/// read and attach in a stranger's namespace. A bind mount made again
/// under the same path (a runtime that names namespaces after the pod) is
/// still the pod's, and followed (`EbpfPods::reattach`).
fn netns_now(path: &Path, recorded: Option<netns::Identity>) -> Result<netns::Identity, &'static str> {
    let Ok(now) = netns::identity(path) else { return Err("is gone") };
    let by_process = path.starts_with("/proc");
    if by_process && recorded.is_some_and(|was| was != now) {
        return Err("names another namespace now (its process exited; the PID was reused)");
    }
    Ok(now)
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The handlers of the three dataplanes, borrowed apart from the rest of
/// the agent.
struct Handlers<'a> {
    ebpf: &'a mut Option<EbpfPods>,
    iptables: &'a mut IptablesPods,
    fsm_init: &'a mut FsmInitPods,
    unavailable: &'a Option<String>,
}

/// The agent's [`Handlers`], borrowed field by field (the pod being
/// handled is borrowed from the agent's state meanwhile).
macro_rules! handlers {
    ($agent:expr) => {
        Handlers {
            ebpf: &mut $agent.ebpf,
            iptables: &mut $agent.iptables,
            fsm_init: &mut $agent.fsm_init,
            unavailable: &$agent.ebpf_unavailable,
        }
    };
}

/// The handler of `dataplane`'s pods; eBPF's only where it runs.
fn handler<'a>(h: Handlers<'a>, dataplane: Dataplane) -> anyhow::Result<&'a mut dyn PodHandler> {
    let Handlers { ebpf, iptables, fsm_init, unavailable } = h;
    Ok(match dataplane {
        Dataplane::Iptables => iptables,
        Dataplane::FsmInit => fsm_init,
        Dataplane::Ebpf => ebpf
            .as_mut()
            .ok_or_else(|| anyhow!("the eBPF dataplane is not available here ({})", unavailable.as_deref().unwrap_or("not loaded")))?,
    })
}

/// A refresh under way (`Agent::begin_refresh`): the pods still to do.
pub struct Refresh {
    pods: std::collections::VecDeque<PodId>,
    /// Whether one was removed (its netns gone).
    removed: bool,
}

impl Agent {
    pub fn start(opts: AgentOptions) -> anyhow::Result<Self> {
        let mut state = State::load(&opts.state_dir)?.unwrap_or_default();
        if opts.mesh_config.is_some() {
            state.mesh_config = opts.mesh_config.clone();
        }
        state.settings = opts.settings;
        let mut cni_chained = None;
        if let Some(install) = opts.cni_install {
            install.install_binary(&plugin_binary()?)?;
            // The primary CNI may not have written its configuration yet
            // (a node booting): the entry is tried again at each refresh.
            let chained = install.ensure_chained();
            match &chained {
                Ok(Chained::Added(conf) | Chained::Updated(conf)) => {
                    log::info!("CNI plugin installed into {} and chained in {}", install.bin_dir.display(), conf.display())
                }
                Ok(Chained::Already) => log::info!("CNI plugin installed into {}; already chained", install.bin_dir.display()),
                Err(e) => log::warn!("CNI plugin installed into {}, not chained yet: {e:#}", install.bin_dir.display()),
            }
            cni_chained = Some(chained.map(|_| ()).map_err(|e| format!("{e:#}")));
            state.cni = Some(install);
        }
        let mesh = match &state.mesh_config {
            Some(path) => MeshConfig::load(path)?,
            None => MeshConfig::fsm_default(),
        };
        let (ebpf, ebpf_unavailable) = match opts.dataplane {
            Choice::Iptables => (None, Some("--dataplane iptables".to_owned())),
            choice => match crate::ebpf::probe::probe_ebpf() {
                Ok((what, tags)) => {
                    log::info!("eBPF dataplane available: {what}");
                    (Some(EbpfPods::open(Pins::new(&opts.bpffs_dir), opts.mount_bpffs, &tags)?), None)
                }
                Err(why) if choice == Choice::Auto => {
                    log::warn!("eBPF dataplane unavailable ({why}): pods get iptables rules");
                    (None, Some(why))
                }
                Err(why) => bail!("--dataplane ebpf: the eBPF dataplane can't run here: {why}"),
            },
        };
        let mesh_mtime = state.mesh_config.as_deref().and_then(mtime);
        let kept = opts.state_dir.join(cluster::API_MESH_CONFIG);
        let mesh_source = match (&state.mesh_config, &opts.mesh_object) {
            (Some(path), Some(object)) if *path == kept => MeshSource::Api { object: object.clone(), kept, gone: false },
            (Some(path), _) => MeshSource::File { path: path.clone() },
            (None, Some(object)) => {
                MeshSource::Unknown { why: format!("MeshConfig {object}: the Kubernetes API has not answered since the agent started") }
            }
            (None, None) => MeshSource::Defaults { why: "no --mesh-config and no Kubernetes API".into() },
        };
        let mut agent = Agent {
            state_dir: opts.state_dir,
            bpffs_dir: opts.bpffs_dir,
            state,
            mesh,
            mesh_mtime,
            mesh_refused: None,
            degraded: BTreeMap::new(),
            removed_gone: 0,
            refused_over_limit: 0,
            choice: opts.dataplane,
            pods: opts.pods,
            mesh_source,
            mesh_object: opts.mesh_object,
            cni_chained,
            unadoptable: BTreeMap::new(),
            repair: None,
            kubelet_cgroup_root: opts.kubelet_cgroup_root,
            ebpf_unavailable,
            cgroup_sockets_unreliable: None,
            ebpf,
            iptables: IptablesPods::default(),
            fsm_init: FsmInitPods::default(),
        };
        agent.reconcile()?;
        Ok(agent)
    }

    /// Brings the kernel in line with the recorded state after a start:
    /// pods whose netns is gone are removed, missing links are attached,
    /// pinned leftovers of unknown pods are removed. Links that are already
    /// there are left alone: interception never pauses. A pod that can't be
    /// installed now (a full map, a program the kernel refuses after an
    /// upgrade, a process exiting during the listener scan) keeps its pins
    /// and previous lists, is marked degraded, and is tried again at each
    /// refresh.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        self.sync_mesh()?;
        let ids: Vec<PodId> = self.state.pods.keys().copied().collect();
        if let Some(ebpf) = self.ebpf.as_mut().filter(|e| e.reattach_all) {
            ebpf.reattach_all = false;
            let pods = &self.state.pods;
            ebpf.reattach_pending.extend(ids.iter().filter(|id| pods[id].dataplane == Dataplane::Ebpf));
        }
        let started = std::time::Instant::now();
        let pending = self.ebpf.as_ref().map_or(0, |e| e.reattach_pending.len());
        for id in ids {
            if self.remove_if_gone(id) {
                continue;
            }
            let result = self.install(id, true);
            self.record_install(id, result);
        }
        let swapped = pending - self.ebpf.as_ref().map_or(0, |e| e.reattach_pending.len());
        if swapped > 0 {
            log::info!("programs replaced in {swapped} pod(s) in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.finish_mesh();
            // A pod recorded in a form this agent can't read keeps its
            // pins (and its interception); with no readable record at all,
            // every pinned pod does.
            if self.state.ids_unknown {
                log::warn!("the state was unreadable: pinned pods are kept, none taken for a leftover");
            } else {
                let state = &self.state;
                ebpf.remove_unknown(|id| state.pods.contains_key(&id) || state.unreadable.contains_key(&id))?;
            }
        }
        self.state.save_through_reboot(&self.state_dir)
    }

    /// Removes a pod whose netns no longer exists (logged and counted);
    /// whether it did. Checked before anything reads or attaches in a
    /// pod's netns again.
    fn remove_if_gone(&mut self, id: PodId) -> bool {
        let pod = &self.state.pods[&id];
        let why = match netns_now(&pod.netns, pod.netns_identity) {
            Ok(identity) => {
                // A record of an earlier release takes the identity now.
                if pod.netns_identity.is_none() {
                    self.state.pods.get_mut(&id).expect("a recorded pod").netns_identity = Some(identity);
                }
                return false;
            }
            Err(why) => why,
        };
        let pod = self.state.pods.remove(&id).expect("a recorded pod");
        log::warn!("pod {}: its netns {} {why}: removed (deleted without `remove`?)", pod.name, pod.netns.display());
        self.uninstall_best_effort(id, &pod);
        self.degraded.remove(&id);
        self.removed_gone += 1;
        true
    }

    /// Notes how a pod's install went: a failure marks it degraded (logged
    /// when it starts failing or fails otherwise), a success clears that.
    fn record_install(&mut self, id: PodId, result: anyhow::Result<()>) {
        let name = &self.state.pods[&id].name;
        match result {
            Ok(()) => {
                if self.degraded.remove(&id).is_some() {
                    log::info!("pod {name}: installed again, no longer degraded");
                }
            }
            Err(e) => {
                // It still follows the MeshConfig, whatever failed.
                if let (Some(ebpf), Dataplane::Ebpf) = (&mut self.ebpf, self.state.pods[&id].dataplane)
                    && let Err(e) = ebpf.follow_mesh(id)
                {
                    log::warn!("pod {name}: pointing it at the MeshConfig's lists: {e:#}");
                }
                let why = format!("{e:#}");
                if self.degraded.get(&id) != Some(&why) {
                    log::warn!("pod {name}: degraded, keeping what the kernel held before, retried at each refresh: {why}");
                }
                self.degraded.insert(id, why);
            }
        }
    }

    /// Refuses what would enroll more than one pod at once, or the node: the
    /// host's netns, a netns already enrolled (under any path or name), the
    /// cgroup2 root, a cgroup nested with an enrolled pod's.
    /// The identity of the request's netns, where nothing overlaps.
    fn refuse_overlap(&self, request: &EnrollRequest) -> anyhow::Result<netns::Identity> {
        netns::open(&request.netns)?;
        netns::refuse_host(&request.netns)?;
        let identity = netns::identity(&request.netns)?;
        // Each enrolled pod by what was recorded of it at its enrolment (its
        // namespace's identity, its cgroup's path), not looked up again: this
        // runs at every enrolment, for every pod of the node.
        if let Some(other) =
            self.state.pods.values().find(|p| p.netns_identity.or_else(|| netns::identity(&p.netns).ok()) == Some(identity))
        {
            bail!("netns {}: already enrolled as pod {} (netns {})", request.netns.display(), other.name, other.netns.display());
        }
        if let Some(cg) = request.cgroup.as_deref().map(cgroup::resolve).and_then(Result::ok) {
            let enrolled = self.state.pods.values().filter_map(|p| Some((p.name.as_str(), cgroup::as_recorded(p.cgroup.as_deref()?)?)));
            cgroup::refuse_overlap(&cg, enrolled)?;
        }
        Ok(identity)
    }

    /// Whose a pod's interception is (`crate::injection`), and why: from
    /// the MeshConfig's mode and the pod's spec; for a pod whose spec is
    /// not known, from fsm-init's rules found in its netns.
    pub(crate) fn serving(&self, request: &EnrollRequest) -> anyhow::Result<(Serving, String)> {
        let serving = crate::injection::serving(self.mesh.interception_mode, request.injection.as_ref());
        Ok(match serving {
            Serving::FsmInit => (serving, "its spec has FSM's fsm-init, whose rules serve it".into()),
            Serving::Agent { .. } if request.injection.is_none() => match crate::iptables::fsm_init::found(&request.netns)? {
                Some(chain) => (Serving::FsmInit, format!("fsm-init's rules are in its netns ({chain})")),
                None => (serving, String::new()),
            },
            Serving::Agent { guarded: true } => (serving, "its fsm-init is guarded".into()),
            other => (other, String::new()),
        })
    }

    /// The dataplane for a new pod, and why.
    fn choose(&self, request: &EnrollRequest, lists: &PodAnnotations) -> anyhow::Result<(Dataplane, String)> {
        let requested = match request.dataplane {
            Some(Dataplane::Ebpf) => Choice::Ebpf,
            Some(Dataplane::Iptables) => Choice::Iptables,
            Some(Dataplane::FsmInit) => return Ok((Dataplane::FsmInit, "fsm-init requested".into())),
            None => self.choice,
        };
        if let Some(path) = &request.cgroup {
            // A cgroup that isn't there is a mistake, whatever the dataplane.
            if !cgroup::exists(path) {
                bail!("cgroup {}: no such cgroup", path.display());
            }
        }
        let cgroup_v2 = request.cgroup.as_deref().map(cgroup::resolve);
        Ok(match requested {
            Choice::Iptables => (Dataplane::Iptables, "iptables requested".into()),
            Choice::Ebpf => {
                if let Some(why) = &self.ebpf_unavailable {
                    bail!("pod {}: eBPF requested but unavailable ({why})", request.name);
                }
                match cgroup_v2 {
                    Some(Ok(_)) => (Dataplane::Ebpf, "eBPF requested".into()),
                    Some(Err(e)) => return Err(e),
                    None => bail!("pod {}: the eBPF dataplane needs --cgroup", request.name),
                }
            }
            Choice::Auto => match (&self.ebpf_unavailable, cgroup_v2) {
                (Some(why), _) => (Dataplane::Iptables, format!("eBPF unavailable: {why}")),
                (None, None) => (Dataplane::Iptables, "no cgroup v2 group given".into()),
                (None, Some(Err(e))) => (Dataplane::Iptables, format!("{e:#}")),
                (None, Some(Ok(_)))
                    if !PodPolicy::merge(&self.mesh, lists).network_interface_exclusions.is_empty()
                        && !crate::ebpf::features::sees_ingress_interface() =>
                {
                    (Dataplane::Iptables, "interface exclusions need Linux 5.17 for eBPF".into())
                }
                (None, Some(Ok(_))) => (Dataplane::Ebpf, "kernel and pod support eBPF".into()),
            },
        })
    }

    /// Sets what becomes of meshed pods that started around the plugin
    /// (`run --repair`, with the API's client).
    pub fn set_repair(&mut self, repair: Option<crate::repair::Repairer>) {
        self.repair = repair;
    }

    /// The eBPF dataplane's decision log, where it runs (the daemon
    /// prints its records as they come).
    pub fn decision_log(&mut self) -> Option<&mut crate::ebpf::decision_log::DecisionLog> {
        self.ebpf.as_mut().map(|e| &mut e.decisions)
    }

    /// What `explain` and `diagnose` read (`crate::diagnostics`).
    pub fn view(&self) -> AgentView<'_> {
        AgentView {
            state: &self.state,
            mesh: &self.mesh,
            kernel: self.ebpf.as_ref().map(|e| Kernel { pins: &e.pins, maps: &e.maps }),
            degraded: &self.degraded,
            ebpf_unavailable: &self.ebpf_unavailable,
            cgroup_sockets_unreliable: &self.cgroup_sockets_unreliable,
            mesh_source: &self.mesh_source,
            mesh_object: &self.mesh_object,
            cni_chained: &self.cni_chained,
        }
    }

    /// What the metrics endpoint needs of the agent (`crate::metrics`).
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        crate::metrics::Snapshot {
            pods: self.state.pods.iter().map(|(id, p)| (*id, p.name.clone(), p.dataplane)).collect(),
            degraded: self.degraded.len(),
            removed_gone: self.removed_gone,
            refused_over_limit: self.refused_over_limit,
            ebpf: self.ebpf.is_some(),
        }
    }

    /// Writes the MeshConfig's lists into their shared slot if they changed:
    /// once per change, before the pods are pointed at it by `install`.
    fn sync_mesh(&mut self) -> anyhow::Result<()> {
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.begin_mesh(&self.mesh)?;
        }
        Ok(())
    }

    /// Writes the recorded pod's policy with its dataplane; the MeshConfig's
    /// slot is `sync_mesh`'s.
    fn install(&mut self, id: PodId, find_listener: bool) -> anyhow::Result<()> {
        let pod = &self.state.pods[&id];
        let cx = Install::new(id, pod, &self.mesh, &self.state.settings, find_listener)?;
        handler(handlers!(self), pod.dataplane)?.install(&cx)?;
        // Its entries written, its links are given this agent's programs
        // where they still run others (`BPF_LINK_UPDATE`): the new programs
        // never run on maps not written for them, and the old ones keep
        // theirs (replaced maps are new objects) until the swap. One that
        // fails stays pending, for the next install.
        if let Some(ebpf) = self.ebpf.as_mut().filter(|e| pod.dataplane == Dataplane::Ebpf && e.reattach_pending.contains(&id)) {
            ebpf.reattach(id, pod)?;
            ebpf.reattach_pending.remove(&id);
        }
        // A pod with both fsm-init's rules and the programs behaves as with
        // fsm-init alone (the differential test's third variant): the rules
        // catch what the programs no longer see.
        if pod.dataplane == Dataplane::Ebpf && self.cgroup_sockets_unreliable.is_some() {
            self.iptables.install(&cx).with_context(|| format!("pod {}: fsm-init's rules as a backstop", pod.name))?;
        }
        Ok(())
    }

    /// Takes out what the pod's handler installed, and the backstop's rules
    /// where an eBPF pod has them.
    fn uninstall_pod(&mut self, id: PodId, pod: &Pod) -> anyhow::Result<()> {
        handler(handlers!(self), pod.dataplane)?.uninstall(id, pod)?;
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.reattach_pending.remove(&id);
        }
        if pod.dataplane == Dataplane::Ebpf && self.iptables.attached(id) {
            self.iptables.uninstall(id, pod)?;
        }
        Ok(())
    }

    /// Looks again whether sockets still meet their cgroup v2 programs (a
    /// privileged pod may mount and use net_cls/net_prio on a kernel before
    /// 5.15 after the agent started); once they may not, says so, and every
    /// eBPF pod gets the backstop at its install.
    fn check_cgroup_sockets(&mut self) {
        if self.ebpf.is_none() || self.cgroup_sockets_unreliable.is_some() {
            return;
        }
        if let Err(why) = crate::ebpf::features::cgroup_sockets_reliable_now() {
            log::error!("{why}: eBPF pods' sockets may no longer meet their programs; each gets fsm-init's rules too, as a backstop");
            self.cgroup_sockets_unreliable = Some(why);
        }
    }

    /// Leaves (or takes away) the mark by which a guarded fsm-init knows
    /// that the agent intercepts its pod (`crate::injection::GUARD`); for
    /// other pods, nothing.
    fn mark_guarded(&self, id: PodId, present: bool) -> anyhow::Result<()> {
        let pod = &self.state.pods[&id];
        let guarded = pod.injection.is_some_and(|i| i.fsm_init == FsmInit::Guarded);
        if guarded && pod.dataplane != Dataplane::FsmInit {
            netns::set_lo_alias(&pod.netns, if present { crate::injection::GUARD_MARK } else { "" })
                .with_context(|| format!("pod {}: the fsm-init guard's mark", pod.name))?;
        }
        Ok(())
    }

    /// Takes away whatever the pod's dataplane installed; a failure can only
    /// be logged (a pod that is being dropped or was never enrolled).
    fn uninstall_best_effort(&mut self, id: PodId, pod: &Pod) {
        if let Err(e) = self.uninstall_pod(id, pod) {
            log::warn!("pod {}: removing what was installed: {e:#}", pod.name);
        }
    }

    /// Enrolls a pod: its id, and the dataplane chosen for it.
    pub fn enroll(&mut self, request: EnrollRequest) -> anyhow::Result<(PodId, Dataplane)> {
        self.enroll_scanning(request, true)
    }

    /// `scan_listeners`: look for a proxy already listening (a scan of
    /// /proc); needless for a sandbox whose processes have not started
    /// (CNI ADD), where sockops registers the proxy's listener as it comes.
    fn enroll_scanning(&mut self, request: EnrollRequest, scan_listeners: bool) -> anyhow::Result<(PodId, Dataplane)> {
        let lists = request.validate()?;
        if let Err(e) = lists.within(self.state.settings.max_annotation_entries) {
            self.refused_over_limit += 1;
            return Err(anyhow::Error::from(e).context(format!("pod {}: not enrolled", request.name)));
        }
        if self.state.pod_id(&request.name).is_some() {
            bail!("pod {}: already enrolled (remove it first)", request.name);
        }
        let identity = self.refuse_overlap(&request)?;
        let (dataplane, why) = match self.serving(&request)? {
            (Serving::Nobody(why), _) => bail!("pod {}: not enrolled: {why}", request.name),
            // Whatever was asked for: the agent never runs beside fsm-init.
            (Serving::FsmInit, why) => (Dataplane::FsmInit, why),
            (Serving::Agent { .. }, _) => self.choose(&request, &lists)?,
        };
        let pod = Pod { netns_identity: Some(identity), ..Pod::validated(request, lists, dataplane) };
        let id = self.state.take_id()?;
        if let (Dataplane::Ebpf, Some(ebpf)) = (dataplane, &mut self.ebpf) {
            ebpf.reset_counters(id)?;
        }
        // Installed as recorded; unrecorded again if that fails.
        self.degraded.remove(&id);
        self.state.pods.insert(id, pod);
        if let Err(e) = self.sync_mesh().and_then(|()| self.install(id, scan_listeners)).and_then(|()| self.mark_guarded(id, true)) {
            let pod = self.state.pods.remove(&id).expect("just recorded");
            self.uninstall_best_effort(id, &pod);
            return Err(e.context(format!("pod {}: not enrolled", pod.name)));
        }
        log::info!("pod {} enrolled as {id}: {dataplane:?} dataplane ({why})", self.state.pods[&id].name);
        if let Err(e) = self.state.save(&self.state_dir) {
            let pod = self.state.pods.remove(&id).expect("just recorded");
            self.uninstall_best_effort(id, &pod);
            return Err(e.context(format!("pod {}: not enrolled", pod.name)));
        }
        Ok((id, dataplane))
    }

    pub fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        let id = self.state.pod_id(name).ok_or_else(|| anyhow!("pod {name}: not enrolled"))?;
        if let Err(e) = self.mark_guarded(id, false) {
            log::warn!("{e:#}");
        }
        let pod = self.state.pods[&id].clone();
        self.uninstall_pod(id, &pod)?;
        self.state.pods.remove(&id);
        self.degraded.remove(&id);
        self.state.save(&self.state_dir)
    }

    /// Switches every pod to `mesh`. The MeshConfig's own slot is written
    /// first: if that fails, nothing changed. Then each pod: one that fails
    /// is marked degraded and tried again at each refresh, while the others
    /// get the change (one broken pod never holds back the node); one whose
    /// netns is gone is removed. Returns the pods that are degraded.
    pub fn set_mesh_config(&mut self, mesh: MeshConfig, source: Option<PathBuf>) -> anyhow::Result<Vec<Degraded>> {
        let old = std::mem::replace(&mut self.mesh, mesh);
        if let Err(e) = self.sync_mesh() {
            self.mesh = old;
            return Err(e);
        }
        self.apply_all(false);
        self.mesh_mtime = source.as_deref().and_then(mtime);
        self.mesh_refused = None;
        self.state.mesh_config = source;
        self.state.save_through_reboot(&self.state_dir)?;
        Ok(self.degraded_pods())
    }

    /// The degraded pods by name, with why.
    pub fn degraded_pods(&self) -> Vec<Degraded> {
        self.degraded
            .iter()
            .filter_map(|(id, why)| Some(Degraded { pod: self.state.pods.get(id)?.name.clone(), why: why.clone() }))
            .collect()
    }

    /// Installs every pod's policy, each on its own (`set_mesh_config`).
    fn apply_all(&mut self, find_listeners: bool) {
        let ids: Vec<PodId> = self.state.pods.keys().copied().collect();
        let mut removed = false;
        for id in ids {
            removed |= self.apply_pod(id, find_listeners);
        }
        self.finish_apply(removed);
    }

    /// Installs one pod again, or removes it if its netns is gone (then
    /// returns true).
    fn apply_pod(&mut self, id: PodId, find_listeners: bool) -> bool {
        if self.remove_if_gone(id) {
            return true;
        }
        if let Err(e) = self.step_aside_for_fsm_init(id) {
            log::warn!("pod {}: looking for fsm-init's rules: {e:#}", self.state.pods[&id].name);
        }
        let result = self.install(id, find_listeners);
        self.record_install(id, result);
        false
    }

    /// An eBPF pod enrolled without its spec, in whose netns fsm-init's
    /// rules appeared since (its init container ran after the enrolment):
    /// fsm-init serves it from now on, and the agent's programs go. With
    /// the spec known, that was decided at enrolment. (Our own iptables
    /// dataplane writes chains of the same names, so its pods are not
    /// looked at.)
    fn step_aside_for_fsm_init(&mut self, id: PodId) -> anyhow::Result<()> {
        let pod = &self.state.pods[&id];
        // The backstop's rules are the agent's own.
        if pod.injection.is_some() || pod.dataplane != Dataplane::Ebpf || self.iptables.attached(id) {
            return Ok(());
        }
        let Some(chain) = crate::iptables::fsm_init::found(&pod.netns)? else { return Ok(()) };
        let pod = pod.clone();
        // As any uninstall: an upgrade's pending re-attach goes too, or it
        // would give fsm-init's pod the agent's programs back.
        self.uninstall_pod(id, &pod)?;
        log::warn!("pod {}: fsm-init's rules appeared in its netns ({chain}): they serve it; the agent's programs are detached", pod.name);
        self.state.pods.get_mut(&id).expect("enrolled").dataplane = Dataplane::FsmInit;
        self.degraded.remove(&id);
        self.state.save(&self.state_dir)
    }

    /// After every pod was applied: `removed`, whether one went.
    fn finish_apply(&mut self, removed: bool) {
        // Every pod that could be moved points to the MeshConfig's new slot:
        // the old one goes once no pod points to it.
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.finish_mesh();
        }
        // The state changes here only when a pod went; this runs at every
        // refresh, which must not rewrite the state file each time.
        if removed && let Err(e) = self.state.save(&self.state_dir) {
            log::error!("saving the state: {e:#}");
        }
    }

    /// Re-reads the MeshConfig file if it changed since it was applied.
    /// Returns whether it was applied; a bad file is refused, the previous
    /// lists stay, and it is reported once (until the file changes again).
    pub fn reload_if_changed(&mut self) -> anyhow::Result<bool> {
        let Some(path) = self.state.mesh_config.clone() else { return Ok(false) };
        let now = mtime(&path);
        if now == self.mesh_mtime || now == self.mesh_refused {
            return Ok(false);
        }
        self.retry_mesh_config(&path, now)?;
        Ok(true)
    }

    /// Applies the file's MeshConfig; on failure remembers the version, so
    /// that `reload_if_changed` reports it once and `refresh` retries it.
    fn retry_mesh_config(&mut self, path: &Path, version: Option<std::time::SystemTime>) -> anyhow::Result<()> {
        let result = MeshConfig::load(path).map_err(anyhow::Error::from).and_then(|mesh| self.set_mesh_config(mesh, Some(path.to_owned())));
        if result.is_err() {
            self.mesh_refused = version;
        }
        result.map(|_| ())
    }

    /// Re-reads the MeshConfig and rewrites every pod's policy, also where
    /// nothing changed (repairs kernel state changed behind the agent's
    /// back). Returns the pods that are degraded (retried at each refresh).
    pub fn reload(&mut self, path: Option<PathBuf>) -> anyhow::Result<Vec<Degraded>> {
        let path = path.or_else(|| self.state.mesh_config.clone());
        // A file given now is the MeshConfig from here on (the API's kept
        // copy, reloaded, stays the API's).
        if let Some(p) = path.as_ref().filter(|p| !matches!(&self.mesh_source, MeshSource::Api { kept, .. } if kept == *p)) {
            self.mesh_source = MeshSource::File { path: p.clone() };
        }
        let mesh = match &path {
            Some(p) => MeshConfig::load(p)?,
            None => MeshConfig::fsm_default(),
        };
        if let Some(ebpf) = &mut self.ebpf {
            for id in self.state.pods.keys() {
                ebpf.force_rewrite(*id);
            }
        }
        self.iptables.forget_applied();
        self.set_mesh_config(mesh, path)
    }

    /// Has the instances of the next enrolments' pod ids verified ahead
    /// (`ebpf::prewarm`); cheap when they are. Only where pods come from a
    /// pod source (the CNI plugin's ADDs, which wait for it): an agent
    /// enrolled by hand spends no CPU or memory on it.
    pub fn prepare_ahead(&mut self) {
        if matches!(self.pods, PodSource::None) {
            return;
        }
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.prewarm.want(&self.state.next_ids(crate::ebpf::prewarm::AHEAD));
        }
    }

    /// The pods whose network the agent follows as it changes
    /// (`netns::events`), with their netns: every pod but those their own
    /// fsm-init serves.
    pub fn watched_netns(&self) -> Vec<(PodId, PathBuf)> {
        self.state.pods.iter().filter(|(_, p)| p.dataplane != Dataplane::FsmInit).map(|(id, p)| (*id, p.netns.clone())).collect()
    }

    /// Reads one pod's network again and installs what changed, at once:
    /// its netns announced a change of its interfaces, addresses or routes.
    pub fn refresh_pod(&mut self, id: PodId) {
        if !self.state.pods.contains_key(&id) {
            return;
        }
        if self.apply_pod(id, false)
            && let Err(e) = self.state.save(&self.state_dir)
        {
            log::error!("saving the state: {e:#}");
        }
    }

    /// Keeps each eBPF pod's sockops attached exactly while it is needed
    /// (`EbpfPods::watch_listeners`). Runs every tick (1 s).
    pub fn watch_listeners(&mut self) {
        if let Some(ebpf) = &mut self.ebpf {
            ebpf.watch_listeners(&self.state.pods, &self.state.settings);
        }
    }

    /// Starts a refresh, which follows pod address changes (a pod IP added
    /// later, say), removes pods whose netns is gone, retries degraded pods
    /// and a MeshConfig file version that failed to apply, and reconciles
    /// the node's meshed pods with the pod source (`sync_pods`). The
    /// node-wide part (the conflist entry, a MeshConfig file refused
    /// before, the MeshConfig's lists) is done now, each pod at one
    /// `refresh_next` each, so that the agent's loop answers requests
    /// between two pods: a pod's re-read costs up to milliseconds (its
    /// interfaces, routes, listeners), and a CNI ADD waiting behind every
    /// pod of a full node waited most of a second. None if there is nothing
    /// more to do.
    pub fn begin_refresh(&mut self) -> Option<Refresh> {
        self.ensure_cni_entry();
        self.check_cgroup_sockets();
        if let Some(path) = self.state.mesh_config.clone() {
            let now = mtime(&path);
            if now != self.mesh_mtime {
                match self.retry_mesh_config(&path, now) {
                    Ok(()) => {
                        log::info!("MeshConfig applied on retry");
                        return None;
                    }
                    // The previous lists stay; the pods are refreshed with them.
                    Err(e) => log::debug!("MeshConfig still refused: {e:#}"),
                }
            }
        }
        if let Err(e) = self.sync_mesh() {
            log::warn!("refreshing the MeshConfig's lists: {e:#}");
            return None;
        }
        Some(Refresh { pods: self.state.pods.keys().copied().collect(), removed: false })
    }

    /// Puts the CNI plugin's entry back into the primary conflist if it is
    /// not there as the agent has it (at each refresh, and as soon as the
    /// conf dir changes: a primary CNI rewrites its file at its restart).
    pub fn ensure_cni_entry(&mut self) {
        let Some(install) = &self.state.cni else { return };
        let result = install.ensure_chained();
        match &result {
            Ok(Chained::Added(conf)) => log::warn!("the CNI plugin's entry was missing from {}: chained again", conf.display()),
            Ok(Chained::Updated(conf)) => {
                log::info!("the CNI plugin's entry in {} differed from the agent's settings: updated", conf.display())
            }
            Ok(Chained::Already) => {}
            // Logged when it changes: it is checked every few seconds.
            Err(e) if self.cni_chained.as_ref().is_some_and(|c| c.as_ref().err() == Some(&format!("{e:#}"))) => {}
            Err(e) => log::warn!("checking the CNI plugin's conflist entry: {e:#}"),
        }
        self.cni_chained = Some(result.map(|_| ()).map_err(|e| format!("{e:#}")));
    }

    /// Refreshes the next pod of `refresh`; once none is left, finishes it
    /// (and reconciles the node's pods) and returns true.
    pub fn refresh_next(&mut self, refresh: &mut Refresh) -> bool {
        if let Some(id) = refresh.pods.pop_front() {
            // Skipped if it was removed since the refresh began.
            if self.state.pods.contains_key(&id) {
                refresh.removed |= self.apply_pod(id, true);
            }
            return false;
        }
        self.finish_apply(refresh.removed);
        self.sync_pods();
        true
    }

    /// The handler of a pod's dataplane, to read.
    fn handler(&self, dataplane: Dataplane) -> Option<&dyn PodHandler> {
        match dataplane {
            Dataplane::Iptables => Some(&self.iptables),
            Dataplane::FsmInit => Some(&self.fsm_init),
            Dataplane::Ebpf => self.ebpf.as_ref().map(|e| e as &dyn PodHandler),
        }
    }

    pub fn status(&self) -> Status {
        let pods = self
            .state
            .pods
            .iter()
            .map(|(id, pod)| {
                let handler = self.handler(pod.dataplane);
                let ebpf = self.ebpf.as_ref().filter(|_| pod.dataplane == Dataplane::Ebpf);
                let none = SlotEntries::default();
                let written = ebpf.and_then(|e| e.maps.written(*id)).unwrap_or(&none);
                let mesh = ebpf.and_then(|e| e.maps.mesh_entries()).unwrap_or(&none);
                PodStatus {
                    id: *id,
                    name: pod.name.clone(),
                    dataplane: pod.dataplane,
                    netns: pod.netns.clone(),
                    cgroup: pod.cgroup.clone(),
                    attached: handler.is_some_and(|h| h.attached(*id)),
                    sockops: ebpf.is_some_and(|e| crate::ebpf::programs::has_sockops(&e.pins, *id)),
                    ipv6: handler.is_some_and(|h| h.ipv6(*id)),
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
                    degraded: self.degraded.get(id).cloned(),
                    started_unintercepted: pod.started_unintercepted,
                }
            })
            .collect();
        Status {
            mesh_config: self.state.mesh_config.clone(),
            settings: self.state.settings,
            dataplane: self.choice,
            ebpf_unavailable: self.ebpf_unavailable.clone(),
            pods,
            removed_netns_gone: self.removed_gone,
            cgroup_sockets_unreliable: self.cgroup_sockets_unreliable.clone(),
            mesh_source: Some(self.mesh_source.clone()),
            prewarmed: self.ebpf.as_ref().map(|e| e.prewarm.ready()).unwrap_or_default(),
            unreadable_pods: self
                .state
                .unreadable
                .iter()
                .map(|(id, u)| UnreadablePod { id: *id, name: u.name().to_owned(), why: u.why.clone() })
                .collect(),
            state_problems: self.state.problems.clone(),
            maps: self.ebpf.as_ref().map(|e| crate::ebpf::maps::fill(&e.pins)).unwrap_or_default(),
        }
    }

    /// Removes every trace: links, maps, pins, iptables rules, state.
    pub fn uninstall(mut self) -> anyhow::Result<()> {
        for (id, pod) in std::mem::take(&mut self.state.pods) {
            self.uninstall_best_effort(id, &pod);
        }
        if let Some(install) = &self.state.cni {
            install.uninstall()?;
        }
        let Agent { state_dir, bpffs_dir, ebpf, .. } = self;
        drop(ebpf);
        uninstall(&Pins::new(bpffs_dir), &state_dir)
    }
}

/// The CNI plugin built next to the agent (`cargo xtask build` puts both in
/// target/release; an image, both in one directory).
fn plugin_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the agent's own path")?;
    let plugin = exe.with_file_name(crate::cni::install::PLUGIN_TYPE);
    if !plugin.exists() {
        bail!("--cni-conf-dir: {} is missing (it is built and shipped next to the agent)", plugin.display());
    }
    Ok(plugin)
}

/// Removes every trace of an agent, running or not: the pins (which
/// detaches every eBPF link), the iptables rules of recorded pods, the state.
pub fn uninstall(pins: &Pins, state_dir: &Path) -> anyhow::Result<()> {
    if let Ok(Some(state)) = State::load(state_dir) {
        for pod in state.pods.values().filter(|p| p.dataplane == Dataplane::Iptables && p.netns.exists()) {
            iptables_pods::remove_rules(&pod.name, &pod.netns)?;
        }
        // An entry this agent can't read otherwise still names its netns.
        for pod in state.unreadable.values().filter(|u| u.entry["dataplane"] == "iptables") {
            if let Some(netns) = pod.entry["netns"].as_str().map(Path::new).filter(|n| n.exists()) {
                iptables_pods::remove_rules(pod.name(), netns)?;
            }
        }
        if let Some(install) = &state.cni {
            install.uninstall()?;
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
