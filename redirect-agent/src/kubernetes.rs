//! The Kubernetes API side of the agent (`run --kubernetes`): it watches
//! the pods of its node (field selector `spec.nodeName`) and FSM's
//! MeshConfig, with in-cluster credentials or a kubeconfig. kube's watcher
//! lists, then watches from the list's resourceVersion with bookmarks, and
//! lists again when the server says the version is gone (410); the agent
//! sees only the results: a store of the node's pods, a signal when one
//! changed, and the MeshConfig as last seen.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::{Notify, watch};

/// FSM's MeshConfig resource (`meshconfigs.config.flomesh.io`).
pub const MESH_CONFIG_GROUP: &str = "config.flomesh.io";
pub const MESH_CONFIG_VERSION: &str = "v1alpha3";
pub const MESH_CONFIG_PLURAL: &str = "meshconfigs";

/// What `run --kubernetes` watches, and with which credentials.
#[derive(Clone, Debug)]
pub struct KubernetesOptions {
    /// `None`: in-cluster credentials (the pod's service account), else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// Where FSM's MeshConfig is (FSM's namespace).
    pub fsm_namespace: String,
    pub mesh_config_name: String,
}

/// The MeshConfig as the watch last saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum MeshConfigSeen {
    /// Not listed yet.
    Unknown,
    /// Not listed yet: the API refused or failed, with this error (RBAC, the
    /// CRD missing), retried.
    Failing(String),
    /// Listed, and not there (or deleted).
    Absent,
    Present(Box<DynamicObject>),
}

impl MeshConfigSeen {
    /// Whether the API has answered with the MeshConfig, or that there is
    /// none.
    pub fn listed(&self) -> bool {
        matches!(self, MeshConfigSeen::Absent | MeshConfigSeen::Present(_))
    }
}

/// What the watches deliver to the agent's loop.
pub struct Watches {
    /// The node's pods.
    pub pods: Store<Pod>,
    /// Notified when one of them changed (notifications coalesce).
    pub pods_changed: Arc<Notify>,
    pub mesh_config: watch::Receiver<MeshConfigSeen>,
    /// For the agent's own calls (`--repair`).
    pub client: Client,
}

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no Kubernetes credentials: neither in-cluster nor a kubeconfig (--kubeconfig)")?,
    };
    Client::try_from(config).context("the Kubernetes client")
}

/// Starts both watches; they run (retrying with backoff) as long as the
/// runtime does.
pub async fn start(opts: &KubernetesOptions) -> anyhow::Result<Watches> {
    if opts.node_name.is_empty() {
        anyhow::bail!("--node-name: empty (on Kubernetes, pass spec.nodeName through the downward API)");
    }
    let client = client(opts.kubeconfig.as_deref()).await?;

    let (pods, writer) = reflector::store();
    let pods_changed = Arc::new(Notify::new());
    let selector = format!("spec.nodeName={}", opts.node_name);
    let stream =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().fields(&selector)).backoff(Retry::default()).reflect(writer);
    let changed = pods_changed.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // A page of a (re)list is not yet the node's pods: the
                // store is replaced at its end.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => log::warn!("watching the node's pods: {e} (retrying)"),
            }
        }
    });

    let gvk = GroupVersionKind::gvk(MESH_CONFIG_GROUP, MESH_CONFIG_VERSION, "MeshConfig");
    let resource = ApiResource::from_gvk_with_plural(&gvk, MESH_CONFIG_PLURAL);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &opts.fsm_namespace, &resource);
    let selector = format!("metadata.name={}", opts.mesh_config_name);
    let (tx, mesh_config) = watch::channel(MeshConfigSeen::Unknown);
    let stream = watcher(api, watcher::Config::default().fields(&selector)).backoff(Retry::default());
    let name = format!("{}/{}", opts.fsm_namespace, opts.mesh_config_name);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        // Whether the current (re)list has shown the object.
        let mut listed = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listed = false,
                Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object)) => {
                    listed = true;
                    tx.send_replace(MeshConfigSeen::Present(Box::new(object)));
                }
                Ok(watcher::Event::InitDone) if !listed => {
                    tx.send_replace(MeshConfigSeen::Absent);
                }
                Ok(watcher::Event::InitDone) => {}
                Ok(watcher::Event::Delete(_)) => {
                    tx.send_replace(MeshConfigSeen::Absent);
                }
                Err(e) => {
                    log::warn!("watching MeshConfig {name}: {e} (retrying)");
                    // What stands in the way until it is listed (RBAC, the
                    // CRD missing), for the ADDs that wait on it.
                    tx.send_if_modified(|seen| match seen {
                        MeshConfigSeen::Unknown | MeshConfigSeen::Failing(_) => {
                            *seen = MeshConfigSeen::Failing(e.to_string());
                            true
                        }
                        _ => false,
                    });
                }
            }
        }
    });
    Ok(Watches { pods, pods_changed, mesh_config, client })
}

/// When to ask the API again after a failure: 200 ms, doubling up to
/// [`Retry::MAX`]. kube's default goes up to 30 s: a change made while the
/// API was away (a node booting before its control plane) then took up to
/// 25 s to apply once the API answered again; now at most `MAX` and the
/// list. One node's watches ask twice every `MAX` while the API is away.
#[derive(Clone, Debug)]
struct Retry {
    next: Duration,
}

impl Retry {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for Retry {
    fn default() -> Self {
        Retry { next: Self::MIN }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Waits (up to `limit`) until the MeshConfig was listed once, so that a
/// starting agent enrolls pods with the mesh's lists rather than defaults.
pub async fn first_mesh_config(rx: &mut watch::Receiver<MeshConfigSeen>, limit: Duration) -> MeshConfigSeen {
    match tokio::time::timeout(limit, rx.wait_for(MeshConfigSeen::listed)).await {
        Ok(Ok(seen)) => seen.clone(),
        _ => MeshConfigSeen::Unknown,
    }
}
