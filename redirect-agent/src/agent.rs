//! The node agent's core: enrolled pods, their policies in the kernel, and
//! the MeshConfig they derive from. Every operation either completes or
//! leaves the previous state in place.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use redirect_common::maps::PodId;

use crate::{
    cgroup,
    config::{MeshConfig, PodPolicy, annotations::PodAnnotations},
    ebpf::{
        maps::{ProxySettings, SharedMaps, SlotEntries},
        pins::Pins,
        programs,
    },
    netns,
    pod::PodSpec,
    state::State,
};

pub struct AgentOptions {
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    /// `None`: keep the file of the previous run, or FSM's defaults.
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
}

pub struct Agent {
    pins: Pins,
    state_dir: PathBuf,
    state: State,
    mesh: MeshConfig,
    mesh_mtime: Option<std::time::SystemTime>,
    maps: SharedMaps,
    /// Decision logs of every pod's programs (one pinned ring buffer).
    pub logger: aya_log::EbpfLogger<&'static dyn log::Log>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub id: PodId,
    pub name: String,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub attached: bool,
    pub local_addrs: Vec<String>,
    pub excluded_cidrs: usize,
    pub included_cidrs: usize,
    pub excluded_ports: usize,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
    pub pods: Vec<PodStatus>,
    pub tracked_connections: usize,
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Agent {
    pub fn start(opts: AgentOptions) -> anyhow::Result<Self> {
        let pins = Pins::new(&opts.bpffs_dir);
        pins.prepare()?;
        let mut state = State::load(&opts.state_dir)?.unwrap_or_default();
        if opts.mesh_config.is_some() {
            state.mesh_config = opts.mesh_config.clone();
        }
        state.settings = opts.settings;
        let mesh = match &state.mesh_config {
            Some(path) => MeshConfig::load(path)?,
            None => MeshConfig::fsm_default(),
        };
        let mut ebpf = programs::load(&pins, 0)?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).context("opening the decision log")?;
        let maps = SharedMaps::open(&mut ebpf)?;
        let mesh_mtime = state.mesh_config.as_deref().and_then(mtime);
        let mut agent = Agent { pins, state_dir: opts.state_dir, state, mesh, mesh_mtime, maps, logger };
        agent.reconcile()?;
        Ok(agent)
    }

    /// Brings the kernel in line with the recorded state after a start:
    /// pods whose netns or cgroup is gone are dropped, missing links are
    /// attached, pinned leftovers of unknown pods are removed. Links that are
    /// already there are left alone: interception never pauses.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let ids: Vec<PodId> = self.state.pods.keys().copied().collect();
        for id in ids {
            let spec = self.state.pods[&id].clone();
            let usable = spec.netns.exists() && cgroup::resolve(&spec.cgroup).is_ok();
            let result = if usable { self.install(id, &spec) } else { Err(anyhow!("netns or cgroup is gone")) };
            if let Err(e) = result {
                log::warn!("pod {}: dropped ({e:#})", spec.name);
                let _ = programs::detach(&self.pins, id);
                self.maps.remove(id);
                self.state.pods.remove(&id);
            }
        }
        for id in self.pins.pinned_pods()? {
            if !self.state.pods.contains_key(&id) {
                programs::detach(&self.pins, id)?;
            }
        }
        for id in self.maps.pods() {
            if !self.state.pods.contains_key(&id) {
                self.maps.remove(id);
            }
        }
        self.state.save(&self.state_dir)
    }

    fn entries(&self, spec: &PodSpec, annotations: &PodAnnotations) -> anyhow::Result<SlotEntries> {
        let policy = PodPolicy::merge(&self.mesh, annotations);
        let addrs = netns::local_ipv4_addrs(&spec.netns)?;
        Ok(SlotEntries::from_policy(&policy, &addrs))
    }

    /// Writes the pod's policy and makes sure its programs are attached.
    fn install(&mut self, id: PodId, spec: &PodSpec) -> anyhow::Result<()> {
        let annotations = spec.validate()?;
        let entries = self.entries(spec, &annotations)?;
        self.maps.apply(id, entries, &self.state.settings)?;
        if !programs::is_attached(&self.pins, id) {
            let cg = cgroup::resolve(&spec.cgroup)?;
            programs::detach(&self.pins, id)?;
            programs::attach(&self.pins, id, &cg)?;
        }
        Ok(())
    }

    pub fn enroll(&mut self, spec: PodSpec) -> anyhow::Result<PodId> {
        spec.validate()?;
        if self.state.pod_id(&spec.name).is_some() {
            bail!("pod {}: already enrolled (remove it first)", spec.name);
        }
        let cg = cgroup::resolve(&spec.cgroup)?;
        if let Some((_, other)) = self.state.pods.iter().find(|(_, p)| cgroup::resolve(&p.cgroup).ok().as_ref() == Some(&cg)) {
            bail!("cgroup {}: already enrolled as pod {}", spec.cgroup.display(), other.name);
        }
        netns::open(&spec.netns)?;
        let id = self.state.free_id();
        if let Err(e) = self.install(id, &spec) {
            let _ = programs::detach(&self.pins, id);
            self.maps.remove(id);
            return Err(e.context(format!("pod {}: not enrolled", spec.name)));
        }
        self.state.pods.insert(id, spec);
        self.state.save(&self.state_dir)?;
        Ok(id)
    }

    pub fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        let id = self.state.pod_id(name).ok_or_else(|| anyhow!("pod {name}: not enrolled"))?;
        programs::detach(&self.pins, id)?;
        self.maps.remove(id);
        self.state.pods.remove(&id);
        self.state.save(&self.state_dir)
    }

    /// Switches every pod to `mesh`. All pods' new policies are computed
    /// first; if one can't be written, the pods already switched go back.
    pub fn set_mesh_config(&mut self, mesh: MeshConfig, source: Option<PathBuf>) -> anyhow::Result<()> {
        let old = std::mem::replace(&mut self.mesh, mesh);
        let result = self.apply_all();
        if result.is_err() {
            self.mesh = old;
            if let Err(e) = self.apply_all() {
                log::error!("restoring the previous MeshConfig failed: {e:#}");
            }
            return result;
        }
        self.mesh_mtime = source.as_deref().and_then(mtime);
        self.state.mesh_config = source;
        self.state.save(&self.state_dir)
    }

    fn apply_all(&mut self) -> anyhow::Result<()> {
        let mut planned = Vec::new();
        for (id, spec) in &self.state.pods {
            let annotations = spec.validate()?;
            planned.push((*id, self.entries(spec, &annotations).with_context(|| format!("pod {}", spec.name))?));
        }
        for (id, entries) in planned {
            self.maps.apply(id, entries, &self.state.settings)?;
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

    pub fn reload(&mut self, path: Option<PathBuf>) -> anyhow::Result<()> {
        let path = path.or_else(|| self.state.mesh_config.clone());
        let mesh = match &path {
            Some(p) => MeshConfig::load(p)?,
            None => MeshConfig::fsm_default(),
        };
        self.set_mesh_config(mesh, path)
    }

    /// Follows pod address changes (a pod IP added later, say).
    pub fn refresh(&mut self) {
        if let Err(e) = self.apply_all() {
            log::warn!("refreshing pod addresses: {e:#}");
        }
    }

    pub fn status(&self) -> Status {
        let pods = self
            .state
            .pods
            .iter()
            .map(|(id, spec)| {
                let written = self.maps.written(*id).cloned().unwrap_or_default();
                PodStatus {
                    id: *id,
                    name: spec.name.clone(),
                    netns: spec.netns.clone(),
                    cgroup: spec.cgroup.clone(),
                    attached: programs::is_attached(&self.pins, *id),
                    local_addrs: written.local_addrs.iter().map(|a| std::net::Ipv4Addr::from(*a).to_string()).collect(),
                    excluded_cidrs: written.excluded_cidrs.len(),
                    included_cidrs: written.included_cidrs.len(),
                    excluded_ports: written.excluded_ports.len(),
                }
            })
            .collect();
        Status {
            mesh_config: self.state.mesh_config.clone(),
            settings: self.state.settings,
            pods,
            tracked_connections: self.maps.tracked_connections(),
        }
    }

    /// Removes every trace: links, maps, pins, state.
    pub fn uninstall(self) -> anyhow::Result<()> {
        let Agent { pins, state_dir, maps, logger, .. } = self;
        drop((maps, logger));
        uninstall(&pins, &state_dir)
    }
}

/// Removes every trace of an agent, running or not.
pub fn uninstall(pins: &Pins, state_dir: &Path) -> anyhow::Result<()> {
    pins.remove_all()?;
    for f in [State::file(state_dir), crate::control::socket_path(state_dir)] {
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
