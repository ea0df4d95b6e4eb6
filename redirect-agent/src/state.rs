//! The agent's record of enrolled pods and of where its MeshConfig comes
//! from, kept in the state directory so that a restarted agent carries on.
//! Written atomically (temporary file, then rename).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use redirect_common::maps::PodId;

use crate::{
    pod::{EnrollRequest, Pod},
    settings::ProxySettings,
};

pub const DEFAULT_DIR: &str = "/run/fsm-redirect";

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Enrolled pods by their id in the kernel maps.
    #[serde(deserialize_with = "valid_pods")]
    pub pods: BTreeMap<PodId, Pod>,
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
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
        dir.join("agent.sock")
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
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    pub fn pod_id(&self, name: &str) -> Option<PodId> {
        self.pods.iter().find(|(_, p)| p.name == name).map(|(id, _)| *id)
    }

    /// The smallest free id from 1 (0 is what an unset `POD_ID` reads).
    pub fn free_id(&self) -> PodId {
        (1..).find(|id| !self.pods.contains_key(id)).expect("fewer than 2^32 pods")
    }
}
