//! The agent's side of the CNI plugin (`crate::cni`): ADD enrolls a pod FSM
//! meshes, with the cgroup the kubelet made for it; DEL removes what an
//! ADD enrolled.

use anyhow::{Context as _, bail};

use super::Agent;
use crate::{
    cni::{CniAdd, CniAdded, kubelet, spec::KubernetesPod},
    config::source::MeshSource,
    dataplane::Dataplane,
    injection::{FsmInit, Injection, Serving},
    pod::EnrollRequest,
};

impl Agent {
    /// ADD: a meshed pod enrolled, the MeshConfig's state said where it is
    /// not the mesh's own (`config::source`).
    pub fn cni_add(&mut self, add: CniAdd) -> anyhow::Result<CniAdded> {
        let mut added = self.enroll_added(add)?;
        if let CniAdded::Enrolled { note, .. } = &mut added {
            *note = self.mesh_source.note();
        }
        Ok(added)
    }

    fn enroll_added(&mut self, add: CniAdd) -> anyhow::Result<CniAdded> {
        let key = add.pod.key();
        // The plugin passes these without asking (an entry of an older
        // agent may not know them yet).
        if self.excluded_namespace(&add.pod.namespace) {
            return Ok(CniAdded::NotMeshed {
                why: format!("pod {key}: namespace {} is excluded (--cni-exclude-namespaces)", add.pod.namespace),
            });
        }
        let pod = match self.pods.meshed(&add.pod)? {
            Ok(pod) => pod,
            Err(why) => return Ok(CniAdded::NotMeshed { why }),
        };
        if let MeshSource::Unknown { why } = &self.mesh_source {
            bail!("pod {key}: FSM's MeshConfig is not known ({why}): try again");
        }
        let injection = Injection::of_pod(&pod);
        let serving = crate::injection::serving(self.mesh.interception_mode, Some(&injection));
        if let Serving::Nobody(why) = &serving {
            log::info!("CNI ADD of pod {key}: left alone: {why}");
            return Ok(CniAdded::NotMeshed { why: format!("pod {key}: {why}") });
        }
        if let Some(id) = self.state.pod_id(&key) {
            let enrolled = &self.state.pods[&id];
            // ADD again for the same sandbox (the runtime retried): done.
            if enrolled.container_id.as_deref() == Some(add.container_id.as_str()) {
                return Ok(CniAdded::Enrolled { id, dataplane: enrolled.dataplane.name().to_owned(), note: None });
            }
            // Reconciling found the sandbox running first (a runtime that
            // starts the sandbox's process before its network): the same
            // namespace, now known by its sandbox id, for DEL.
            let same_netns =
                matches!((crate::netns::identity(&enrolled.netns), crate::netns::identity(&add.netns)), (Ok(a), Ok(b)) if a == b);
            if enrolled.container_id.is_none() && same_netns {
                let dataplane = enrolled.dataplane;
                self.state.pods.get_mut(&id).expect("enrolled").container_id = Some(add.container_id);
                self.state.save(&self.state_dir)?;
                return Ok(CniAdded::Enrolled { id, dataplane: dataplane.name().to_owned(), note: None });
            }
            // A new sandbox for the pod whose old one went without a DEL
            // that reached us: the old enrolment goes with its netns.
            if enrolled.netns.exists() {
                bail!("pod {key}: already enrolled for sandbox {:?}, whose netns is still there", enrolled.container_id);
            }
            log::info!("pod {key}: sandbox {:?} gone without a DEL; enrolling sandbox {}", enrolled.container_id, add.container_id);
            self.remove(&key)?;
        }
        let request = EnrollRequest {
            name: key.clone(),
            netns: add.netns,
            cgroup: None,
            annotations: add.annotations.unwrap_or_else(|| pod.metadata.annotations.unwrap_or_default()),
            dataplane: None,
            fast_path: None,
            ipv6: None,
            container_id: Some(add.container_id),
            started_unintercepted: false,
            injection: Some(injection),
        };
        let as_fsm_init = EnrollRequest { dataplane: Some(Dataplane::FsmInit), ..request.clone() };
        if serving == Serving::FsmInit {
            return Ok(self.record_fsm_init(as_fsm_init));
        }
        match self.cni_enroll(request, &add.pod.uid, &add.ips) {
            Ok((id, dataplane)) => Ok(CniAdded::Enrolled { id, dataplane: dataplane.name().to_owned(), note: None }),
            // Whatever failed, a guarded fsm-init finds no mark and applies
            // its rules: the pod starts intercepted all the same, by
            // fsm-init, which the agent records.
            Err(e) if injection.fsm_init == FsmInit::Guarded => {
                log::warn!("pod {key}: not intercepted by the agent ({e:#}); its guarded fsm-init will apply its rules");
                Ok(self.record_fsm_init(as_fsm_init))
            }
            Err(e) => Err(e),
        }
    }

    /// Records a pod its own fsm-init serves. Its ADD succeeds whatever
    /// happens here: fsm-init intercepts the pod without the agent, which
    /// must never hold back a pod it does not serve (a failure is logged;
    /// reconciling records the pod later).
    fn record_fsm_init(&mut self, request: EnrollRequest) -> CniAdded {
        let key = request.name.clone();
        match self.enroll_scanning(request, false) {
            Ok((id, dataplane)) => CniAdded::Enrolled { id, dataplane: dataplane.name().to_owned(), note: None },
            Err(e) => {
                log::warn!("pod {key}: served by its own fsm-init, not recorded: {e:#}");
                CniAdded::NotMeshed { why: format!("pod {key}: served by its own fsm-init (not recorded by the agent: {e:#})") }
            }
        }
    }

    /// Whether the mesh never holds pods of `namespace` (the CNI entry's
    /// `excludeNamespaces`).
    pub(crate) fn excluded_namespace(&self, namespace: &str) -> bool {
        self.state.cni.as_ref().is_some_and(|c| c.exclude_namespaces.iter().any(|n| n == namespace))
    }

    /// Enrolls the pod of an ADD, with the cgroup the kubelet made for the
    /// pod of `uid`.
    fn cni_enroll(&mut self, mut request: EnrollRequest, uid: &str, ips: &[std::net::IpAddr]) -> anyhow::Result<(u32, Dataplane)> {
        request.cgroup = match crate::cgroup::cgroup2_mount() {
            Ok(root) => {
                let cgroup =
                    kubelet::find_pod_cgroup(&root, &self.kubelet_cgroup_root, uid).with_context(|| format!("pod {}", request.name))?;
                log::info!(
                    "CNI ADD of pod {} (sandbox {:?}, IPs {ips:?}): cgroup {}",
                    request.name,
                    request.container_id,
                    cgroup.display()
                );
                Some(cgroup)
            }
            // A node without cgroup v2: the programs could not tell the
            // pod's processes from the node's, so the pod gets fsm-init's
            // rules in its netns (`--dataplane auto`), before any container.
            Err(e) => {
                log::info!("CNI ADD of pod {} (sandbox {:?}, IPs {ips:?}): no cgroup v2 ({e:#})", request.name, request.container_id);
                None
            }
        };
        // ADD runs before any container of the pod: no proxy listens yet.
        self.enroll_scanning(request, false)
    }

    /// Whether a pod was removed.
    pub fn cni_del(&mut self, container_id: &str) -> anyhow::Result<bool> {
        match self.state.pod_of_sandbox(container_id) {
            Some(id) => self.remove(&self.state.pods[&id].name.clone()).map(|()| true),
            None => Ok(false),
        }
    }

    /// GC (CNI 1.1.0): removes the pods that ADDs of sandboxes other than
    /// `valid` enrolled (the runtime has no such sandbox any more). Pods
    /// enrolled otherwise (by hand, by reconciling) are not the runtime's
    /// to name. Returns the pods removed.
    pub fn cni_gc(&mut self, valid: &[String]) -> anyhow::Result<Vec<String>> {
        let stale: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| p.container_id.as_ref().is_some_and(|c| !valid.contains(c)))
            .map(|p| p.name.clone())
            .collect();
        for name in &stale {
            log::info!("CNI GC: pod {name}: its sandbox is not among the runtime's: removed");
            self.remove(name)?;
        }
        Ok(stale)
    }

    /// Fails if FSM meshes the pod and this sandbox's pod is not enrolled
    /// with its programs attached.
    pub fn cni_check(&mut self, container_id: &str, pod: &KubernetesPod) -> anyhow::Result<()> {
        if self.pods.meshed(pod)?.is_err() {
            return Ok(());
        }
        let Some(id) = self.state.pod_of_sandbox(container_id) else {
            bail!("pod {} is meshed but not enrolled", pod.key());
        };
        let enrolled = &self.state.pods[&id];
        if let Some(why) = self.degraded.get(&id) {
            bail!("pod {}: degraded: {why}", enrolled.name);
        }
        if !self.handler(enrolled.dataplane).is_some_and(|h| h.attached(id)) {
            bail!("pod {}: its programs are not attached (see `redirect-agent diagnose {}`)", enrolled.name, enrolled.name);
        }
        Ok(())
    }
}
