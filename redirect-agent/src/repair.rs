//! What becomes of a meshed pod that started around the plugin (its ADD
//! missed: the agent was down or installed after it, or the entry was not
//! chained yet). Reconciling enrolls it where it runs, so its new
//! connections are intercepted; connections it opened before stay direct
//! for as long as they last (a gRPC stream, a database pool). Istio's
//! repair controller settles the same case by labelling, evicting or
//! deleting the pod; `--repair` offers the same, through the API.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
};

/// The label `--repair label` puts on such a pod (a selector finds them:
/// `kubectl get pods -A -l fsm-redirect/started-unintercepted`).
pub const LABEL: &str = "fsm-redirect/started-unintercepted";

/// What is done to a meshed pod that started around the plugin, beyond
/// enrolling it in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RepairMode {
    /// Enrolled in place and reported (`status`: "started unintercepted").
    #[default]
    InPlace,
    /// Also labelled with [`LABEL`], for an operator or a controller to act.
    Label,
    /// Also evicted through the Eviction API: its controller starts a new
    /// pod, whose ADD enrolls it; PodDisruptionBudgets are respected (an
    /// eviction they refuse is tried again).
    Evict,
    /// Also deleted: as `evict`, disregarding PodDisruptionBudgets.
    Delete,
}

impl RepairMode {
    /// For the log: (doing, done).
    fn words(self) -> (&'static str, &'static str) {
        match self {
            RepairMode::InPlace => ("enrolling", "enrolled"),
            RepairMode::Label => ("labelling", "labelled"),
            RepairMode::Evict => ("evicting", "evicted"),
            RepairMode::Delete => ("deleting", "deleted"),
        }
    }
}

/// The first retry after a failed call, doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// How a pod's repair stands, by UID.
#[derive(Debug)]
enum Attempt {
    InFlight,
    Done,
    /// Failed; not tried again before `at`, then after `next`.
    Failed {
        at: Instant,
        next: Duration,
    },
}

/// Repairs pods through the API, one task per call, off the agent's loop
/// (an API that is slow or away must not hold up ADDs).
#[derive(Clone)]
pub struct Repairer {
    mode: RepairMode,
    client: Client,
    runtime: tokio::runtime::Handle,
    attempts: Arc<Mutex<HashMap<String, Attempt>>>,
}

impl Repairer {
    /// `None` for [`RepairMode::InPlace`]: nothing to call. Must run in the
    /// agent's runtime.
    pub fn new(mode: RepairMode, client: Client) -> Option<Self> {
        (mode != RepairMode::InPlace).then(|| Repairer {
            mode,
            client,
            runtime: tokio::runtime::Handle::current(),
            attempts: Arc::default(),
        })
    }

    /// Forgets pods that are no longer the node's.
    pub fn retain(&self, uids: &std::collections::HashSet<&str>) {
        self.attempts.lock().unwrap().retain(|uid, _| uids.contains(uid.as_str()));
    }

    /// Called at each reconcile for a meshed pod that started around the
    /// plugin: repairs it unless that is done, under way, or waiting for
    /// its retry. A pod already going away (or labelled, for `label`) is
    /// left alone, also after an agent restart.
    pub fn started_unintercepted(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        if pod.metadata.deletion_timestamp.is_some()
            || (self.mode == RepairMode::Label && pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key(LABEL)))
        {
            return;
        }
        let mut attempts = self.attempts.lock().unwrap();
        match attempts.get(&uid) {
            Some(Attempt::InFlight | Attempt::Done) => return,
            Some(Attempt::Failed { at, .. }) if Instant::now() < *at => return,
            _ => {}
        }
        let next = match attempts.insert(uid.clone(), Attempt::InFlight) {
            Some(Attempt::Failed { next, .. }) => next,
            _ => FIRST_RETRY,
        };
        drop(attempts);
        let (namespace, name) = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        let (mode, client, attempts) = (self.mode, self.client.clone(), self.attempts.clone());
        self.runtime.spawn(async move {
            let result = call(mode, client, &namespace, &name, &uid).await;
            let (doing, done) = mode.words();
            let attempt = match result {
                Ok(()) => {
                    log::warn!(
                        "pod {namespace}/{name}: started around the plugin (connections it opened before its enrolment are not intercepted): {done} it"
                    );
                    Attempt::Done
                }
                Err(e) => {
                    log::warn!("pod {namespace}/{name}: {doing} it (it started around the plugin) failed: {e:#}; trying again in {next:?}");
                    Attempt::Failed { at: Instant::now() + next, next: (next * 2).min(MAX_RETRY) }
                }
            };
            attempts.lock().unwrap().insert(uid, attempt);
        });
    }
}

/// The call itself; each names the pod's UID as a precondition, so that a
/// pod made again under the same name is never the one repaired.
async fn call(mode: RepairMode, client: Client, namespace: &str, name: &str, uid: &str) -> anyhow::Result<()> {
    let api = Api::<Pod>::namespaced(client, namespace);
    let preconditions = Some(Preconditions { uid: Some(uid.to_owned()), resource_version: None });
    match mode {
        RepairMode::InPlace => {}
        RepairMode::Label => {
            // A merge patch that names the UID fails (409) on another pod.
            let patch = serde_json::json!({"metadata": {"uid": uid, "labels": {LABEL: "true"}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        RepairMode::Evict => {
            // Not kube's `Api::evict`: its body names the options
            // `delete_options`, a field the API server drops (an
            // Eviction's is `deleteOptions`), and the UID with it.
            let eviction = serde_json::json!({
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": namespace},
                "deleteOptions": {"preconditions": preconditions},
            });
            let _: serde_json::Value = api.create_subresource("eviction", name, &PostParams::default(), &eviction).await?;
        }
        RepairMode::Delete => {
            api.delete(name, &DeleteParams { preconditions, ..DeleteParams::default() }).await?;
        }
    }
    Ok(())
}
