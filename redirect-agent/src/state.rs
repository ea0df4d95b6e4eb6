//! The agent's record of enrolled pods and of where its MeshConfig comes
//! from, kept in the state directory so that a restarted agent carries on.
//! Written atomically (temporary file, then rename).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use redirect_common::maps::{PodId, capacity};

use crate::{
    pod::{EnrollRequest, Pod},
    settings::ProxySettings,
};

pub const DEFAULT_DIR: &str = redirect_cni::wire::DEFAULT_STATE_DIR;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Enrolled pods by their id in the kernel maps.
    #[serde(deserialize_with = "valid_pods")]
    pub pods: BTreeMap<PodId, Pod>,
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
    /// The pod id given out last: ids go round (`take_id`), so a removed
    /// pod's id comes back only after every other one was given out.
    #[serde(default)]
    pub last_id: PodId,
    /// Where the CNI plugin was installed (`run --cni-conf-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<crate::cni::install::CniInstall>,
}

/// The recorded pods that are still valid: one this agent can't read (an
/// annotation a newer rule refuses, say) is dropped with a warning rather
/// than keeping the agent from starting; the agent's start then detaches
/// its eBPF programs and clears its map entries, as for any unknown pod.
fn valid_pods<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<PodId, Pod>, D::Error> {
    let recorded: BTreeMap<PodId, EnrollRequest> = serde::Deserialize::deserialize(d)?;
    Ok(recorded
        .into_iter()
        .filter_map(|(id, request)| {
            let name = request.name.clone();
            Pod::try_from(request).map(|pod| (id, pod)).inspect_err(|e| log::warn!("pod {name}: dropped from the state ({e})")).ok()
        })
        .collect())
}

impl State {
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// The agent's control socket, beside the state.
    pub fn socket(dir: &Path) -> PathBuf {
        dir.join(redirect_cni::wire::SOCKET_NAME)
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::file(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: corrupt state", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = Self::file(dir);
        crate::files::replace(&path, &serde_json::to_vec_pretty(self)?)
    }

    pub fn pod_id(&self, name: &str) -> Option<PodId> {
        self.pods.iter().find(|(_, p)| p.name == name).map(|(id, _)| *id)
    }

    /// The pod a CNI ADD of sandbox `container_id` enrolled.
    pub fn pod_of_sandbox(&self, container_id: &str) -> Option<PodId> {
        self.pods.iter().find(|(_, p)| p.container_id.as_deref() == Some(container_id)).map(|(id, _)| *id)
    }

    /// The ids the next `n` calls of `take_id` will return, if no pod is
    /// removed meanwhile (fewer where the maps are nearly full).
    pub fn next_ids(&self, n: usize) -> Vec<PodId> {
        let mut next: Vec<PodId> = Vec::with_capacity(n);
        let mut last = self.last_id;
        while next.len() < n {
            let Some(id) = self.free_after(last, &next) else { break };
            next.push(id);
            last = id;
        }
        next
    }

    /// The first id after `last`, going round, that no pod holds and that
    /// is not in `also_taken`.
    fn free_after(&self, last: PodId, also_taken: &[PodId]) -> Option<PodId> {
        let last = last.clamp(0, capacity::PODS - 1);
        (last + 1..capacity::PODS).chain(1..=last).find(|id| !self.pods.contains_key(id) && !also_taken.contains(id))
    }

    /// The smallest free id from 1 (0 is what an unset `POD_ID` reads).
    /// An id for a new pod: the next one after the last given out that no
    /// pod holds, going round 1..PODS. Not the smallest free one: records a
    /// removed pod left in the kernel under its id (hand-over slots,
    /// inbound records, all tagged with the id) then stay unreachable to
    /// newer pods for as long as possible.
    pub fn take_id(&mut self) -> anyhow::Result<PodId> {
        let id = self
            .free_after(self.last_id, &[])
            .ok_or_else(|| anyhow::anyhow!("{} pods are enrolled: the node's maps hold no more", self.pods.len()))?;
        self.last_id = id;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataplane::Dataplane, pod::EnrollRequest};

    fn pod(name: &str) -> Pod {
        let request = EnrollRequest {
            name: name.into(),
            netns: "/var/run/netns/x".into(),
            cgroup: None,
            annotations: Default::default(),
            dataplane: Some(Dataplane::Iptables),
            fast_path: None,
            ipv6: None,
            container_id: None,
            started_unintercepted: false,
            injection: None,
        };
        Pod::try_from(request).unwrap()
    }

    #[test]
    fn ids_go_round_so_a_removed_pods_id_comes_back_last() {
        let mut s = State::default();
        for name in ["a", "b", "c"] {
            let id = s.take_id().unwrap();
            s.pods.insert(id, pod(name));
        }
        assert_eq!(s.pods.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        s.pods.remove(&2);
        assert_eq!(s.take_id().unwrap(), 4, "not the smallest free id");
        // At the end of the range: round to the first free one.
        s.last_id = capacity::PODS - 1;
        assert_eq!(s.take_id().unwrap(), 2);
        // A state written before ids went round starts from 1.
        let mut old = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().remove("last_id").expect("recorded");
        let old: State = serde_json::from_value(old).unwrap();
        assert_eq!(old.last_id, 0);
    }

    #[test]
    fn next_ids_are_the_ids_take_id_gives_next() {
        let mut s = State::default();
        for name in ["a", "b", "c", "d"] {
            let id = s.take_id().unwrap();
            s.pods.insert(id, pod(name));
        }
        s.pods.remove(&2);
        s.last_id = capacity::PODS - 3;
        let predicted = s.next_ids(4);
        let taken: Vec<PodId> = (0..4)
            .map(|i| {
                let id = s.take_id().unwrap();
                s.pods.insert(id, pod(&format!("n{i}")));
                id
            })
            .collect();
        assert_eq!(predicted, taken);
        assert_eq!(taken, [capacity::PODS - 2, capacity::PODS - 1, 2, 5]);
    }

    #[test]
    fn a_full_node_refuses_a_new_id_by_saying_so() {
        let mut s = State::default();
        for id in 1..capacity::PODS {
            s.pods.insert(id, pod(&format!("p{id}")));
        }
        let err = s.take_id().unwrap_err().to_string();
        assert!(err.contains("4095 pods are enrolled"), "{err}");
    }
}
