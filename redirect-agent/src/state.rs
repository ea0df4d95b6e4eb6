//! The agent's record of enrolled pods and of where its MeshConfig comes
//! from, kept in the state directory so that a restarted agent carries on.
//! Written atomically (temporary file, then rename).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use redirect_common::{
    handover::per_pod,
    maps::{PodId, capacity},
};

use crate::{pod::Pod, settings::ProxySettings};

pub const DEFAULT_DIR: &str = redirect_cni::wire::DEFAULT_STATE_DIR;

/// What the agent records. Read part by part: what a rolled-back agent
/// can't read of a newer one's file (a dataplane it does not know, say) is
/// kept as it was and reported, never a reason to stop (an agent that
/// crashloops leaves its plugin chained, and every meshed pod's ADD
/// failing).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "StateFile")]
pub struct State {
    /// Enrolled pods by their id in the kernel maps.
    pub pods: BTreeMap<PodId, Pod>,
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
    /// The pod id given out last: ids go round (`take_id`), so a removed
    /// pod's id comes back only after every other one was given out.
    pub last_id: PodId,
    /// Where the CNI plugin was installed (`run --cni-conf-dir`).
    pub cni: Option<crate::cni::install::CniInstall>,
    /// Recorded pods this agent can't read: written back as they were, their
    /// ids not given out, their kernel objects left as they are (still
    /// intercepting), and reported.
    pub unreadable: BTreeMap<PodId, Unreadable>,
    /// What else could not be read, as `status` says it.
    pub problems: Vec<String>,
    /// The file could not be read at all (moved aside as
    /// `state.json.unreadable`): which ids the pinned pods have is not
    /// known, so none is taken for a leftover.
    pub ids_unknown: bool,
    /// Each pod as last written (`PodsRef`).
    written: WrittenPods,
}

/// A recorded pod this agent can't read, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    pub entry: serde_json::Value,
    pub why: String,
}

impl Unreadable {
    /// Its name, where the entry has one.
    pub fn name(&self) -> &str {
        self.entry.get("name").and_then(|n| n.as_str()).unwrap_or("(no name)")
    }
}

/// The file as JSON, each part read on its own (`State`'s `From`).
#[derive(Default, serde::Deserialize)]
struct StateFile {
    #[serde(default)]
    pods: BTreeMap<PodId, serde_json::Value>,
    #[serde(default)]
    mesh_config: serde_json::Value,
    #[serde(default)]
    settings: serde_json::Value,
    #[serde(default)]
    last_id: serde_json::Value,
    #[serde(default)]
    cni: serde_json::Value,
}

/// `value` read as a `T`; `None` where it is absent (null), or written in
/// a form this agent can't read (a problem noted).
fn part<T: serde::de::DeserializeOwned>(value: serde_json::Value, what: &str, problems: &mut Vec<String>) -> Option<T> {
    if value.is_null() {
        return None;
    }
    serde_json::from_value(value.clone()).inspect_err(|e| problems.push(format!("{what}: {e} (recorded as {value})"))).ok()
}

impl From<StateFile> for State {
    fn from(file: StateFile) -> Self {
        let mut problems = Vec::new();
        let mut pods = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for (id, entry) in file.pods {
            match serde_json::from_value::<Pod>(entry.clone()).map_err(|e| e.to_string()) {
                Ok(pod) => {
                    pods.insert(id, pod);
                }
                Err(why) => {
                    let pod = Unreadable { entry, why };
                    log::warn!("pod {} (id {id}): recorded in a form this agent can't read ({}): left as it is", pod.name(), pod.why);
                    unreadable.insert(id, pod);
                }
            }
        }
        // The settings come from the flags at each start: ones that don't
        // read are replaced without a word.
        let settings = serde_json::from_value(file.settings).unwrap_or_default();
        let cni = part(file.cni, "the CNI plugin's install record (written again from --cni-conf-dir)", &mut problems);
        let mesh_config = part(file.mesh_config, "the MeshConfig's path", &mut problems);
        let last_id = part(file.last_id, "the last pod id", &mut problems).unwrap_or(0);
        for p in &problems {
            log::warn!("state: {p}");
        }
        State { pods, mesh_config, settings, last_id, cni, unreadable, problems, ids_unknown: false, written: WrittenPods::default() }
    }
}

/// The file as written: `StateFile`'s form, each part serialized from the
/// state where it is (the state is written at every enrolment, whole: a
/// copy of it, each pod turned into a JSON value first, took most of that
/// time on a full node).
#[derive(serde::Serialize)]
struct StateFileRef<'a> {
    pods: PodsRef<'a>,
    mesh_config: &'a Option<PathBuf>,
    settings: &'a ProxySettings,
    last_id: PodId,
    #[serde(skip_serializing_if = "is_none")]
    cni: &'a Option<crate::cni::install::CniInstall>,
}

fn is_none<T>(value: &&Option<T>) -> bool {
    value.is_none()
}

/// The pods, read and unreadable (written back as they were), by id.
struct PodsRef<'a>(&'a State);

impl serde::Serialize for PodsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap as _};
        enum Entry<'a> {
            Read(&'a Pod),
            Kept(&'a serde_json::Value),
        }
        let mut all: BTreeMap<PodId, Entry<'_>> = self.0.unreadable.iter().map(|(id, u)| (*id, Entry::Kept(&u.entry))).collect();
        all.extend(self.0.pods.iter().map(|(id, pod)| (*id, Entry::Read(pod))));
        let mut written = self.0.written.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        written.retain(|id, _| self.0.pods.contains_key(id));
        let mut map = serializer.serialize_map(Some(all.len()))?;
        for (id, entry) in all {
            match entry {
                Entry::Read(pod) => {
                    if written.get(&id).is_none_or(|(was, _)| was != pod) {
                        let record = serde_json::value::to_raw_value(pod).map_err(S::Error::custom)?;
                        written.insert(id, (pod.clone(), record));
                    }
                    map.serialize_entry(&id, &written[&id].1)?
                }
                Entry::Kept(value) => map.serialize_entry(&id, value)?,
            }
        }
        map.end()
    }
}

impl serde::Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StateFileRef {
            pods: PodsRef(self),
            mesh_config: &self.mesh_config,
            settings: &self.settings,
            last_id: self.last_id,
            cni: &self.cni,
        }
        .serialize(serializer)
    }
}

/// Each pod's record as last written (`PodsRef`), with the pod it was made
/// from: the file is written whole at every enrolment, and serializing
/// every pod again took 0.2 ms of each on a node of 140 pods. A record is used again
/// only for a pod equal to the one it was made from, so no change of a pod
/// can be missed; comparing costs a fraction of serializing. Not part of
/// the state: equal, cloned and shown as nothing.
#[derive(Default)]
struct WrittenPods(std::sync::Mutex<BTreeMap<PodId, Written>>);

/// A pod, and its record as written.
type Written = (Pod, Box<serde_json::value::RawValue>);

impl Clone for WrittenPods {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for WrittenPods {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for WrittenPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrittenPods")
    }
}

impl State {
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// The agent's control socket, beside the state.
    pub fn socket(dir: &Path) -> PathBuf {
        dir.join(redirect_cni::wire::SOCKET_NAME)
    }

    /// The recorded state; `None` where there is none. A file that is not
    /// the state's JSON at all is moved aside (`state.json.unreadable`,
    /// for a person to read) and the agent starts from nothing, saying so:
    /// it does not stop on it.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::file(dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match serde_json::from_slice::<State>(&text) {
            Ok(state) => Ok(Some(state)),
            Err(e) => {
                let aside = path.with_extension("json.unreadable");
                std::fs::rename(&path, &aside).with_context(|| format!("moving the unreadable {} aside", path.display()))?;
                let why =
                    format!("{} could not be read ({e}): moved to {}; which pods it held is not known", path.display(), aside.display());
                log::error!("state: {why}");
                Ok(Some(State { problems: vec![why], ids_unknown: true, ..State::default() }))
            }
        }
    }

    /// Saves a change of the pods recorded: for this boot (see
    /// [`crate::files::Survives::AgentCrash`]).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        // Not flushed: every pod it records goes with a reboot (its netns,
        // its pins in the bpffs); a node that crashes finds an older file,
        // or one moved aside, and no pod to hold it to.
        self.write(dir, crate::files::Survives::AgentCrash)
    }

    /// Saves a change that the next boot reads too (where the MeshConfig
    /// comes from, when no flag says it).
    pub fn save_through_reboot(&self, dir: &Path) -> anyhow::Result<()> {
        self.write(dir, crate::files::Survives::NodeCrash)
    }

    fn write(&self, dir: &Path, survives: crate::files::Survives) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Compact: it is written at every enrolment, whole, and a node's
        // worth of pods pretty-printed took most of the time of writing it.
        crate::files::replace(&Self::file(dir), &serde_json::to_vec(self)?, survives)
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
    /// Among those, one whose hand-over region no other pod has comes
    /// first (`redirect_common::handover::per_pod`): so one pod's connects
    /// can't take another's hand-overs while the node has at most
    /// `HANDOVER_REGIONS` pods.
    fn free_after(&self, last: PodId, also_taken: &[PodId]) -> Option<PodId> {
        let last = last.clamp(0, capacity::PODS - 1);
        let free = |id: &PodId| !self.pods.contains_key(id) && !self.unreadable.contains_key(id) && !also_taken.contains(id);
        let held: std::collections::BTreeSet<u32> =
            self.pods.keys().chain(self.unreadable.keys()).chain(also_taken).map(|id| per_pod::region(*id)).collect();
        let round = || (last + 1..capacity::PODS).chain(1..=last);
        round().find(|id| free(id) && !held.contains(&per_pod::region(*id))).or_else(|| round().find(free))
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
    fn a_new_pod_gets_a_hand_over_region_of_its_own_while_one_is_free() {
        let regions = capacity::HANDOVER_REGIONS;
        let mut s = State::default();
        let first = s.take_id().unwrap();
        s.pods.insert(first, pod("a"));
        // Going round reaches first + REGIONS, which shares a's region: the
        // next id with a region of its own is taken instead.
        s.last_id = first + regions - 1;
        assert_eq!(s.next_ids(2), [first + regions + 1, first + regions + 2]);
        // Every region held: any free id, going round as before.
        for i in 1..regions {
            let id = s.take_id().unwrap();
            s.pods.insert(id, pod(&format!("p{i}")));
        }
        let held: std::collections::BTreeSet<u32> = s.pods.keys().map(|id| per_pod::region(*id)).collect();
        assert_eq!(held.len() as u32, regions, "{regions} pods, each with its own region");
        let last = s.last_id;
        assert_eq!(s.take_id().unwrap(), last + 1);
    }

    #[test]
    fn a_pod_recorded_in_a_form_this_agent_cant_read_is_kept_as_it_was() {
        let mut s = State::default();
        for name in ["a", "b"] {
            let id = s.take_id().unwrap();
            s.pods.insert(id, pod(name));
        }
        let mut file = serde_json::to_value(&s).unwrap();
        file["pods"]["2"]["dataplane"] = "ebpf-v2".into();
        file["pods"]["2"]["added_later"] = serde_json::json!({"x": 1});
        file["cni"] = serde_json::json!({"conf_dir": 7});
        let read: State = serde_json::from_value(file.clone()).unwrap();
        assert_eq!(read.pods.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(read.unreadable[&2].name(), "b");
        assert!(read.unreadable[&2].why.contains("ebpf-v2"), "{}", read.unreadable[&2].why);
        assert!(read.cni.is_none() && read.problems.len() == 1, "{:?}", read.problems);
        // Written back unchanged (a roll-forward reads it again); its id
        // is not given out.
        let written = serde_json::to_value(&read).unwrap();
        assert_eq!(written["pods"]["2"], file["pods"]["2"]);
        let mut read = read;
        assert_eq!(read.take_id().unwrap(), 3);
        read.last_id = capacity::PODS - 1;
        assert_eq!(read.take_id().unwrap(), 3, "1 and 2 are taken");
    }

    /// The bytes written are the state serialized whole, after any change
    /// of a pod, a pod gone, a pod kept unread among the read ones.
    #[test]
    fn the_file_written_is_the_state_serialized_whatever_changed_since_the_last_write() {
        let mut s = State::default();
        for name in ["a", "b", "c", "d"] {
            let id = s.take_id().unwrap();
            s.pods.insert(id, pod(name));
        }
        s.cni = Some(crate::cni::install::CniInstall {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin".into(),
            socket: "/var/run/fsm-redirect/agent.sock".into(),
            exclude_namespaces: vec!["kube-system".into()],
            fail_open: false,
            runtime_configs: vec![],
        });
        // A clone keeps no records: every pod serialized afresh.
        let oracle = |s: &State| serde_json::to_vec(&s.clone()).unwrap();
        let check = |s: &State| {
            let bytes = serde_json::to_vec(s).unwrap();
            assert_eq!(String::from_utf8(bytes.clone()).unwrap(), String::from_utf8(oracle(s)).unwrap());
            let read: State = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(read.pods, s.pods);
        };
        check(&s);
        s.pods.get_mut(&2).unwrap().container_id = Some("sandbox-b".into());
        s.pods.get_mut(&3).unwrap().dataplane = Dataplane::FsmInit;
        check(&s);
        s.pods.remove(&1);
        s.mesh_config = Some("/etc/fsm/mesh.yaml".into());
        check(&s);
        // Kept unread: before, between and after the read ones, and under
        // the id of a read one (the read one is written).
        for id in [1, 3, 9] {
            s.unreadable
                .insert(id, Unreadable { entry: serde_json::json!({"name": format!("kept{id}"), "dataplane": "v9"}), why: "x".into() });
        }
        check(&s);
        s.pods.clear();
        check(&s);
    }

    #[test]
    fn a_file_that_is_not_the_state_is_moved_aside_and_the_agent_starts_from_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(State::file(dir.path()), "{\"pods\": [").unwrap();
        let s = State::load(dir.path()).unwrap().unwrap();
        assert!(s.ids_unknown && s.pods.is_empty());
        assert!(s.problems[0].contains("state.json.unreadable"), "{:?}", s.problems);
        assert!(dir.path().join("state.json.unreadable").exists() && !State::file(dir.path()).exists());
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
