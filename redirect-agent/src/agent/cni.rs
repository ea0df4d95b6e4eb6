//! The agent's side of the CNI plugin (`crate::cni`): ADD enrolls a pod FSM
//! meshes, with the cgroup the kubelet made for it; DEL removes what an
//! ADD enrolled.

use anyhow::{Context as _, bail};

use super::Agent;
use crate::{
    cni::{CniAdd, CniAdded, kubelet, spec::KubernetesPod},
    pod::EnrollRequest,
};

impl Agent {
    pub fn cni_add(&mut self, add: CniAdd) -> anyhow::Result<CniAdded> {
        let key = add.pod.key();
        let pod = match self.pods.meshed(&add.pod)? {
            Ok(pod) => pod,
            Err(why) => return Ok(CniAdded::NotMeshed { why }),
        };
        if let Some(id) = self.state.pod_id(&key) {
            let enrolled = &self.state.pods[&id];
            // ADD again for the same sandbox (the runtime retried): done.
            if enrolled.container_id.as_deref() == Some(add.container_id.as_str()) {
                return Ok(CniAdded::Enrolled { id, dataplane: enrolled.dataplane });
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
                return Ok(CniAdded::Enrolled { id, dataplane });
            }
            // A new sandbox for the pod whose old one went without a DEL
            // that reached us: the old enrolment goes with its netns.
            if enrolled.netns.exists() {
                bail!("pod {key}: already enrolled for sandbox {:?}, whose netns is still there", enrolled.container_id);
            }
            log::info!("pod {key}: sandbox {:?} gone without a DEL; enrolling sandbox {}", enrolled.container_id, add.container_id);
            self.remove(&key)?;
        }
        let root = crate::cgroup::cgroup2_mount()?;
        let cgroup = kubelet::find_pod_cgroup(&root, &self.kubelet_cgroup_root, &add.pod.uid).with_context(|| format!("pod {key}"))?;
        log::info!("CNI ADD of pod {key} (sandbox {}, IPs {:?}): cgroup {}", add.container_id, add.ips, cgroup.display());
        let request = EnrollRequest {
            name: key,
            netns: add.netns,
            cgroup: Some(cgroup),
            annotations: add.annotations.unwrap_or_else(|| pod.metadata.annotations.unwrap_or_default()),
            dataplane: None,
            fast_path: None,
            ipv6: None,
            container_id: Some(add.container_id),
            started_unintercepted: false,
        };
        // ADD runs before any container of the pod: no proxy listens yet.
        let (id, dataplane) = self.enroll_scanning(request, false)?;
        Ok(CniAdded::Enrolled { id, dataplane })
    }

    /// Whether a pod was removed.
    pub fn cni_del(&mut self, container_id: &str) -> anyhow::Result<bool> {
        match self.state.pod_of_sandbox(container_id) {
            Some(id) => self.remove(&self.state.pods[&id].name.clone()).map(|()| true),
            None => Ok(false),
        }
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
