//! Following the cluster: the node's meshed pods (from the pod source) are
//! kept enrolled with their current annotations, and the MeshConfig the API
//! holds is applied. CNI ADD enrolls a pod before its containers start;
//! reconciling catches the pods it could not (the agent installed after
//! them, or down during their ADD) and says that they started
//! unintercepted.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod as ApiPod;

use super::Agent;
use crate::{
    cni::{kubelet, pods},
    config::{MeshConfig, annotations::PodAnnotations, source::MeshSource},
    dataplane::{Choice, Dataplane},
    injection::{Injection, Serving},
    kubernetes::MeshConfigSeen,
    netns,
    pod::EnrollRequest,
};

/// Where the MeshConfig last read from the API is kept: a starting agent
/// applies it until the API answers (never FSM's defaults in between).
pub(super) const API_MESH_CONFIG: &str = "meshconfig-from-api.json";

impl Agent {
    /// Brings the node's meshed pods in line with the pod source: enrolled
    /// ones get annotation changes, running ones that are not enrolled are
    /// enrolled (also one removed by hand: the source says it is meshed).
    /// Pods that are not meshed are never touched.
    pub fn sync_pods(&mut self) {
        // Not with FSM's defaults in place of the mesh's MeshConfig.
        if !self.mesh_source.known() {
            return;
        }
        let pods = match self.pods.meshed_pods() {
            Ok(pods) => pods,
            Err(e) => return log::warn!("reading the node's pods: {e:#}"),
        };
        // Failures are remembered for the pods there still are.
        self.unadoptable.retain(|uid, _| pods.iter().any(|p| p.metadata.uid.as_deref() == Some(uid.as_str())));
        if let Some(repair) = &self.repair {
            repair.retain(&pods.iter().filter_map(|p| p.metadata.uid.as_deref()).collect());
        }
        for pod in pods {
            let key = pods::key(&pod);
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            let result = match self.state.pod_id(&key) {
                Some(_) => self.set_annotations(&key, annotations).map(|_| ()),
                None => self.adopt(&pod, annotations),
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match result {
                Ok(()) => {
                    self.unadoptable.remove(&uid);
                    let started_around = self.state.pod_id(&key).is_some_and(|id| self.state.pods[&id].started_unintercepted);
                    if let Some(repair) = self.repair.as_ref().filter(|_| started_around) {
                        repair.started_unintercepted(&pod);
                    }
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if self.unadoptable.get(&uid) != Some(&why) {
                        log::warn!("pod {key}: {why}");
                        self.unadoptable.insert(uid, why);
                    }
                }
            }
        }
    }

    /// Enrolls a meshed pod that is running but not enrolled: its sandbox
    /// is found from the processes in its kubelet cgroup. One without
    /// processes has no sandbox yet (its CNI ADD will come) or none any
    /// more: left alone.
    fn adopt(&mut self, pod: &ApiPod, annotations: std::collections::BTreeMap<String, String>) -> anyhow::Result<()> {
        let key = pods::key(pod);
        let injection = Injection::of_pod(pod);
        let serving = crate::injection::serving(self.mesh.interception_mode, Some(&injection));
        if matches!(serving, Serving::Nobody(_)) || self.excluded_namespace(pod.metadata.namespace.as_deref().unwrap_or_default()) {
            return Ok(());
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let root = crate::cgroup::cgroup2_mount()?;
        let Ok(cgroup) = kubelet::find_pod_cgroup(&root, &self.kubelet_cgroup_root, uid) else { return Ok(()) };
        let Some(netns) = sandbox_netns(&cgroup)? else { return Ok(()) };
        netns::refuse_host(&netns).with_context(|| format!("pod {key} (host network?)"))?;
        // A pod fsm-init serves started intercepted: it is only recorded.
        let unintercepted = serving != Serving::FsmInit;
        if unintercepted {
            log::warn!(
                "pod {key}: running but not enrolled (started before the agent, or its CNI ADD missed it): enrolling; its connections opened so far are not intercepted"
            );
        }
        let request = EnrollRequest {
            name: key,
            netns,
            cgroup: Some(cgroup),
            annotations,
            dataplane: None,
            fast_path: None,
            ipv6: None,
            container_id: None,
            started_unintercepted: unintercepted,
            injection: Some(injection),
        };
        self.enroll(request).map(|_| ())
    }

    /// Applies an enrolled pod's changed annotations; whether they changed.
    /// Refused ones (malformed, over the limit, or needing another
    /// dataplane) leave the previous lists in place.
    pub fn set_annotations(&mut self, name: &str, annotations: std::collections::BTreeMap<String, String>) -> anyhow::Result<bool> {
        let id = self.state.pod_id(name).with_context(|| format!("pod {name}: not enrolled"))?;
        let lists =
            PodAnnotations::from_map(&annotations).with_context(|| format!("pod {name}: annotations changed; previous lists kept"))?;
        if lists == self.state.pods[&id].lists {
            return Ok(false);
        }
        lists
            .within(self.state.settings.max_annotation_entries)
            .with_context(|| format!("pod {name}: annotations changed; previous lists kept"))?;
        let pod = &self.state.pods[&id];
        let mut request = EnrollRequest::from(pod.clone());
        request.annotations = annotations;
        request.dataplane = None;
        // What `--dataplane auto` would choose now (interface exclusions
        // need a kernel that sees the ingress interface); a pod does not
        // change dataplane while it runs.
        if pod.dataplane == Dataplane::Ebpf && self.choice == Choice::Auto {
            let (now, why) = self.choose(&request, &lists)?;
            if now != Dataplane::Ebpf {
                bail!("pod {name}: its changed annotations need the iptables dataplane ({why}), it runs eBPF: previous lists kept");
            }
        }
        let before = self.state.pods.get_mut(&id).expect("enrolled");
        let old = (std::mem::replace(&mut before.annotations, request.annotations), std::mem::replace(&mut before.lists, lists));
        if let Err(e) = self.install(id, false).and_then(|()| self.state.save(&self.state_dir)) {
            let pod = self.state.pods.get_mut(&id).expect("enrolled");
            (pod.annotations, pod.lists) = old;
            let restored = self.install(id, false);
            self.record_install(id, restored);
            return Err(e.context(format!("pod {name}: annotations changed; previous lists kept")));
        }
        log::info!("pod {name}: annotations changed: lists updated");
        Ok(true)
    }

    /// Applies the MeshConfig the API holds: kept in the state dir, then
    /// applied as a file would be. One that is refused (a malformed field)
    /// or gone leaves the previous lists.
    pub fn apply_api_mesh_config(&mut self, seen: &MeshConfigSeen) -> anyhow::Result<bool> {
        let name = self.mesh_object.clone().unwrap_or_default();
        let object = match seen {
            MeshConfigSeen::Present(object) => object,
            MeshConfigSeen::Unknown => return Ok(false),
            // Known already (kept from before, or listed once): it stays.
            MeshConfigSeen::Failing(why) => {
                if !self.mesh_source.known() {
                    self.mesh_source = MeshSource::Unknown { why: format!("MeshConfig {name}: the API refuses to list it: {why}") };
                }
                return Ok(false);
            }
            MeshConfigSeen::Absent => {
                match &mut self.mesh_source {
                    MeshSource::Api { gone, .. } => {
                        log::warn!("MeshConfig {name} was deleted from the API: the lists applied last stay");
                        *gone = true;
                    }
                    source => {
                        log::warn!("the API has no MeshConfig {name}: meshed pods are enrolled with FSM's defaults");
                        *source = MeshSource::Defaults { why: format!("the API has no MeshConfig {name}") };
                    }
                }
                return Ok(false);
            }
        };
        let text = serde_json::to_string(object).context("the API's MeshConfig")?;
        let mesh = MeshConfig::parse(&text).context("the API's MeshConfig")?;
        let path = self.state_dir.join(API_MESH_CONFIG);
        let source = MeshSource::Api { object: name, kept: path.clone(), gone: false };
        if mesh == self.mesh && self.state.mesh_config.as_deref() == Some(path.as_path()) {
            self.mesh_source = source;
            return Ok(false);
        }
        crate::files::replace(&path, text.as_bytes(), crate::files::Survives::NodeCrash)?;
        let degraded = self.set_mesh_config(mesh, Some(path))?;
        self.mesh_source = source;
        for d in degraded {
            log::warn!("pod {}: degraded: {}", d.pod, d.why);
        }
        Ok(true)
    }
}

/// The network namespace of the sandbox whose processes are in `cgroup`
/// (or below it), if any: the runtime's bind mount of it where there is one
/// (`/var/run/netns`, what CNI was given), else the oldest process's.
fn sandbox_netns(cgroup: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(pid) = crate::cgroup::processes_below(cgroup).into_iter().min_by_key(|pid| started(*pid)) else { return Ok(None) };
    let by_process = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns = netns::identity(&by_process)?;
    for dir in ["/var/run/netns", "/run/netns"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            if netns::identity(&entry.path()).is_ok_and(|i| i == ns) {
                return Ok(Some(entry.path()));
            }
        }
    }
    Ok(Some(by_process))
}

/// When the process started (clock ticks since boot), for finding the
/// sandbox's first process; one gone meanwhile sorts last.
fn started(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        // The fields after the command's closing parenthesis; starttime is
        // the 22nd field of the line, the 20th after it.
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok()))
        .unwrap_or(u64::MAX)
}
