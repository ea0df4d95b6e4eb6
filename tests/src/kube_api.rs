//! An in-process Kubernetes API server for the agent's `--kubernetes`
//! side, since none can run on these machines. It speaks the real wire
//! format for what the agent asks: pods (all namespaces) and FSM's
//! MeshConfigs (one namespace), listed with a resourceVersion and watched
//! from one (JSON lines of `{"type","object"}`), field selectors,
//! bookmarks, and a watch from a version that is gone answered with an
//! ERROR event of code 410, after which a client must list again. Every
//! request is recorded, for tests to check what the client asked. Of the
//! writes, what `--repair` sends: a pod's merge patch, its eviction and its
//! deletion (both leave it terminating), each refused (409) where the
//! body's UID precondition names another pod.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Which collection an object or a watch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Pods,
    MeshConfigs,
}

impl Kind {
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pods => ("PodList", "v1"),
            Kind::MeshConfigs => ("MeshConfigList", "config.flomesh.io/v1alpha3"),
        }
    }
}

/// A request as the server saw it: path and query parameters.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: &'static str,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// A write's body.
    pub body: Option<Value>,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

struct Watcher {
    kind: Kind,
    selector: Option<(String, String)>,
    tx: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Every change, for watches that resume from a version.
    history: Vec<(u64, Kind, &'static str, Value)>,
    /// Watches from a version below this are answered 410.
    gone_below: u64,
    watchers: Vec<Watcher>,
    requests: Vec<Seen>,
    /// Evictions still to refuse with 429 (a PodDisruptionBudget).
    refuse_evictions: u32,
    /// MeshConfigs are refused with 403 (RBAC without the rule for them).
    forbid_mesh_configs: bool,
}

pub struct FakeApi {
    pub addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The kubeconfig that points at it.
    pub kubeconfig: tempfile::NamedTempFile,
}

fn field(object: &Value, path: &str) -> String {
    path.split('.').fold(object, |v, k| &v[k]).as_str().unwrap_or_default().to_owned()
}

fn matches(selector: &Option<(String, String)>, object: &Value) -> bool {
    selector.as_ref().is_none_or(|(path, want)| field(object, path) == *want)
}

fn parse_selector(query: &BTreeMap<String, String>) -> Option<(String, String)> {
    let (path, value) = query.get("fieldSelector")?.split_once('=')?;
    Some((path.to_owned(), value.to_owned()))
}

impl FakeApi {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_at("127.0.0.1:0".parse()?)
    }

    /// A kubeconfig for an API server at `addr` (which may not answer yet).
    pub fn kubeconfig_for(addr: std::net::SocketAddr) -> anyhow::Result<tempfile::NamedTempFile> {
        let kubeconfig = tempfile::NamedTempFile::new()?;
        std::fs::write(
            kubeconfig.path(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
            ),
        )?;
        Ok(kubeconfig)
    }

    /// The server on `addr` (port 0: any free one).
    pub fn start_at(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner { rv: 100, ..Inner::default() }));
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let app = Router::new()
                    .route("/api/v1/pods", get(|s, q| serve(s, q, Kind::Pods, None)))
                    .route(
                        "/apis/config.flomesh.io/v1alpha3/namespaces/{ns}/meshconfigs",
                        get(|s, Path(ns): Path<String>, q| serve(s, q, Kind::MeshConfigs, Some(ns))),
                    )
                    .route("/api/v1/namespaces/{ns}/pods/{name}", patch(write_pod).delete(write_pod))
                    .route("/api/v1/namespaces/{ns}/pods/{name}/eviction", post(write_pod))
                    .fallback(|uri: axum::http::Uri| async move {
                        (axum::http::StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound", &format!("no route {uri}"))))
                    })
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let kubeconfig = Self::kubeconfig_for(addr)?;
        Ok(FakeApi { addr, inner, stop: Some(stop), thread: Some(thread), kubeconfig })
    }

    fn change(&self, kind: Kind, object: Value, event: &'static str, notify: bool) {
        self.inner.lock().unwrap().change(kind, object, event, notify);
    }

    fn apply(&self, kind: Kind, object: Value, notify: bool) {
        let key = (kind, field(&object, "metadata.namespace"), field(&object, "metadata.name"));
        let event = if self.inner.lock().unwrap().objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        self.change(kind, object, event, notify);
    }

    /// Creates or changes a pod; its watches see it.
    pub fn apply_pod(&self, pod: Value) {
        self.apply(Kind::Pods, pod, true);
    }

    pub fn apply_mesh_config(&self, mesh_config: Value) {
        self.apply(Kind::MeshConfigs, mesh_config, true);
    }

    /// Changes a pod while no watch hears of it, then ends every watch with
    /// `410 Gone` (the server compacted the versions they were at): only a
    /// client that lists again learns of the change.
    pub fn change_pod_unheard_then_expire(&self, pod: Value) {
        self.apply(Kind::Pods, pod, false);
        let mut inner = self.inner.lock().unwrap();
        inner.gone_below = inner.rv + 1;
        let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
        for w in inner.watchers.drain(..) {
            let _ = w.tx.send(gone.clone());
        }
    }

    /// A BOOKMARK at the current version to every watch of pods; returns it.
    pub fn bookmark_pods(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        let line =
            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}});
        inner.watchers.retain(|w| w.kind != Kind::Pods || w.tx.send(line.clone()).is_ok());
        rv
    }

    /// Ends every watch of pods cleanly (as its timeout would).
    pub fn end_pod_watches(&self) {
        self.inner.lock().unwrap().watchers.retain(|w| w.kind != Kind::Pods);
    }

    /// The next `n` evictions are refused as a PodDisruptionBudget would.
    pub fn refuse_evictions(&self, n: u32) {
        self.inner.lock().unwrap().refuse_evictions = n;
    }

    /// Whether listing and watching MeshConfigs is refused with 403, as
    /// for a service account without the rule for them.
    pub fn forbid_mesh_configs(&self, forbid: bool) {
        self.inner.lock().unwrap().forbid_mesh_configs = forbid;
    }

    /// The pod as the server has it now.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner.lock().unwrap().objects.get(&(Kind::Pods, namespace.to_owned(), name.to_owned())).cloned()
    }

    /// The writes made to pods (patches, evictions, deletions).
    pub fn writes(&self) -> Vec<Seen> {
        self.requests().into_iter().filter(|r| r.method != "GET").collect()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.inner.lock().unwrap().watchers.clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn change(&mut self, kind: Kind, mut object: Value, event: &'static str, notify: bool) {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        let key = (kind, field(&object, "metadata.namespace"), field(&object, "metadata.name"));
        if event == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        self.history.push((rv, kind, event, object.clone()));
        if notify {
            let line = json!({"type": event, "object": object});
            self.watchers.retain(|w| w.kind != kind || !matches(&w.selector, &object) || w.tx.send(line.clone()).is_ok());
        }
    }
}

/// A pod's patch (merge: its labels), eviction or deletion.
async fn write_pod(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    Path((ns, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    use axum::http::StatusCode;
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let mut guard = inner.lock().unwrap();
    let method = match method.as_str() {
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "POST",
    };
    guard.requests.push(Seen { method, path: uri.path().to_owned(), query: BTreeMap::new(), body: body.clone() });
    let Some(mut pod) = guard.objects.get(&(Kind::Pods, ns.clone(), name.clone())).cloned() else {
        return (StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound", &format!("pods \"{name}\" not found")))).into_response();
    };
    let body = body.unwrap_or_default();
    let precondition = match method {
        "PATCH" => body.pointer("/metadata/uid"),
        "POST" => body.pointer("/deleteOptions/preconditions/uid"),
        _ => body.pointer("/preconditions/uid"),
    };
    if let Some(uid) = precondition.filter(|uid| **uid != pod["metadata"]["uid"]) {
        let message = format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", pod["metadata"]["uid"]);
        return (StatusCode::CONFLICT, axum::Json(status(409, "Conflict", &message))).into_response();
    }
    if method == "POST" && guard.refuse_evictions > 0 {
        guard.refuse_evictions -= 1;
        let message = "Cannot evict pod as it would violate the pod's disruption budget.";
        return (StatusCode::TOO_MANY_REQUESTS, axum::Json(status(429, "TooManyRequests", message))).into_response();
    }
    if method == "PATCH" {
        for (key, value) in body.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
            pod["metadata"]["labels"][key] = value.clone();
        }
    } else {
        // Terminating: the kubelet would stop it, then the API remove it.
        pod["metadata"]["deletionTimestamp"] = "2026-12-05T00:00:00Z".into();
    }
    guard.change(Kind::Pods, pod, "MODIFIED", true);
    let answer = match method {
        "POST" => json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        _ => guard.objects[&(Kind::Pods, ns, name)].clone(),
    };
    (if method == "POST" { StatusCode::CREATED } else { StatusCode::OK }, axum::Json(answer)).into_response()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

async fn serve(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(query): Query<BTreeMap<String, String>>,
    kind: Kind,
    namespace: Option<String>,
) -> Response {
    let selector = parse_selector(&query);
    let in_scope =
        |object: &Value| matches(&selector, object) && namespace.as_ref().is_none_or(|ns| field(object, "metadata.namespace") == *ns);
    let path = match (&kind, &namespace) {
        (Kind::Pods, _) => "/api/v1/pods".to_owned(),
        (Kind::MeshConfigs, ns) => format!("/apis/config.flomesh.io/v1alpha3/namespaces/{}/meshconfigs", ns.as_deref().unwrap_or_default()),
    };
    let mut guard = inner.lock().unwrap();
    guard.requests.push(Seen { method: "GET", path, query: query.clone(), body: None });
    if kind == Kind::MeshConfigs && guard.forbid_mesh_configs {
        let why = "meshconfigs.config.flomesh.io is forbidden: User \"system:serviceaccount:fsm-system:fsm-redirect\" cannot list resource \"meshconfigs\"";
        return (axum::http::StatusCode::FORBIDDEN, axum::Json(status(403, "Forbidden", why))).into_response();
    }
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        let items: Vec<Value> = guard.objects.iter().filter(|((k, _, _), o)| *k == kind && in_scope(o)).map(|(_, o)| o.clone()).collect();
        let (list_kind, api_version) = kind.list_kind();
        let body =
            json!({"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": guard.rv.to_string()}, "items": items});
        return axum::Json(body).into_response();
    }
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(guard.rv);
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    if from < guard.gone_below {
        let _ = tx.send(json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from}"))}));
        drop(tx);
    } else {
        for (rv, k, event, object) in &guard.history {
            if *rv > from && *k == kind && in_scope(object) {
                let _ = tx.send(json!({"type": event, "object": object}));
            }
        }
        let selector = selector.clone();
        guard.watchers.push(Watcher { kind, selector, tx });
    }
    drop(guard);
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = event.to_string();
        line.push('\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(lines)).expect("a response")
}
