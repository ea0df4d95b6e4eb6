//! Which pods FSM meshes. Its injector labels every pod it injected with
//! `fsm-proxy-uuid` (FSM's own code calls that label the reliable way to
//! select injected pods); labels don't reach CNI, so the agent reads the
//! pods of its node: from the Kubernetes API (`crate::kubernetes` keeps
//! them in a store), or from a file holding a `PodList` (what `kubectl get
//! pods -A -o json --field-selector spec.nodeName=NODE` prints) on a node
//! without one.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use futures::FutureExt as _;
use k8s_openapi::{List, api::core::v1::Pod};
use kube::runtime::reflector::{ObjectRef, Store};

use super::spec::KubernetesPod;

/// The label FSM's injector puts on every pod it injected.
pub const INJECTED_LABEL: &str = "fsm-proxy-uuid";

/// Where the agent learns the node's pods.
#[derive(Clone, Default)]
pub enum PodSource {
    /// None: no pod is meshed (enrolments are by hand only).
    #[default]
    None,
    /// A `PodList` file, read at each use.
    File(PathBuf),
    /// The API's pods of this node, as the watch last had them.
    Api(Store<Pod>),
}

/// Whether FSM meshes the pod: the pod as the source has it, or why not.
pub type Meshed = Result<Pod, String>;

pub fn is_meshed(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key(INJECTED_LABEL))
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// The pod's key in the agent: `namespace/name`.
pub fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default())
}

impl PodSource {
    /// Whether FSM meshes the pod the runtime named: the one with its
    /// namespace, name and UID (a pod deleted and made again under its name
    /// has another UID). From the API, a pod the watch has not shown (yet)
    /// is an error, not "not meshed": the kubelet runs only pods the API
    /// has, so the watch lags, and the ADD must fail and be retried rather
    /// than let a meshed pod start unintercepted. A file is what it says.
    pub fn meshed(&self, pod: &KubernetesPod) -> anyhow::Result<Meshed> {
        let key = pod.key();
        let found = match self {
            PodSource::None => return Ok(Err("the agent has no pod source (run --kubernetes or --pods-file)".into())),
            PodSource::File(path) => match read_file(path)?.iter().find(|p| self::key(p) == key) {
                Some(p) => p.clone(),
                None => return Ok(Err(format!("pod {key} is not among the node's pods in {}", path.display()))),
            },
            PodSource::Api(store) => {
                if !store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()) {
                    anyhow::bail!("the node's pods are not listed from the Kubernetes API yet: try again");
                }
                match store.get(&ObjectRef::new(&pod.name).within(&pod.namespace)) {
                    Some(p) if uid(&p) == pod.uid => (*p).clone(),
                    _ => anyhow::bail!("pod {key} (UID {}): not in the agent's watch of the node's pods yet: try again", pod.uid),
                }
            }
        };
        Ok(match found {
            p if uid(&p) != pod.uid => Err(format!("pod {key}: UID {} is not the runtime's {}", uid(&p), pod.uid)),
            p if !is_meshed(&p) => Err(format!("pod {key} has no {INJECTED_LABEL} label")),
            p => Ok(p),
        })
    }

    /// The node's pods that FSM meshes (for reconciling).
    pub fn meshed_pods(&self) -> anyhow::Result<Vec<Pod>> {
        Ok(match self {
            PodSource::None => Vec::new(),
            PodSource::File(path) => read_file(path)?.iter().filter(|p| is_meshed(p)).cloned().collect(),
            PodSource::Api(store) => store.state().iter().filter(|p| is_meshed(p)).map(|p| (**p).clone()).collect(),
        })
    }

    /// Waits until the API's watch has the pod (up to `limit`): the kubelet
    /// learns of a pod from its own watch, and can run the pod's CNI ADD
    /// before ours delivered it. Files and pods never seen are left to
    /// `meshed`.
    pub async fn wait_for(&self, pod: &KubernetesPod, limit: Duration) {
        let PodSource::Api(store) = self else { return };
        let deadline = tokio::time::Instant::now() + limit;
        if tokio::time::timeout_at(deadline, store.wait_until_ready()).await.is_err() {
            log::warn!("pod {}: the API's pods were not listed within {limit:?}", pod.key());
            return;
        }
        let wanted = ObjectRef::new(&pod.name).within(&pod.namespace);
        while store.get(&wanted).is_none_or(|p| uid(&p) != pod.uid) {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The pods of the file, parsed again only when its bytes changed: an ADD
/// reads it, and parsing a node's worth of pods took most of an ADD's time
/// (reading and comparing the bytes costs microseconds; a timestamp would
/// miss a rewrite within the clock's tick).
fn read_file(path: &Path) -> anyhow::Result<std::sync::Arc<Vec<Pod>>> {
    type Parsed = (PathBuf, Vec<u8>, std::sync::Arc<Vec<Pod>>);
    static LAST: std::sync::Mutex<Option<Parsed>> = std::sync::Mutex::new(None);
    let text = std::fs::read(path).with_context(|| format!("pods file {}: can't read", path.display()))?;
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, bytes, pods)) = last.as_ref()
        && p == path
        && *bytes == text
    {
        return Ok(pods.clone());
    }
    let list: List<Pod> = serde_json::from_slice(&text).with_context(|| format!("pods file {}: not a PodList in JSON", path.display()))?;
    let pods = std::sync::Arc::new(list.items);
    *last = Some((path.to_owned(), text, pods.clone()));
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(name: &str, uid: &str) -> KubernetesPod {
        KubernetesPod { namespace: "shop".into(), name: name.into(), uid: uid.into() }
    }

    #[test]
    fn only_pods_with_the_injectors_label_are_meshed() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[
              {"apiVersion":"v1","kind":"Pod","metadata":{"name":"cart-0","namespace":"shop","uid":"u1","labels":{"app":"cart","fsm-proxy-uuid":"9c1"},
               "annotations":{"flomesh.io/outbound-port-exclusion-list":"6379"}},"spec":{"nodeName":"n1","containers":[]}},
              {"apiVersion":"v1","kind":"Pod","metadata":{"name":"db-0","namespace":"shop","uid":"u2","labels":{"app":"db"}}}]}"#,
        )
        .unwrap();
        let source = PodSource::File(file.path().to_owned());
        let cart = source.meshed(&runtime("cart-0", "u1")).unwrap().unwrap();
        assert_eq!(cart.metadata.annotations.unwrap()["flomesh.io/outbound-port-exclusion-list"], "6379");
        let db = source.meshed(&runtime("db-0", "u2")).unwrap().unwrap_err();
        assert!(db.contains("no fsm-proxy-uuid label"), "{db}");
        let again = source.meshed(&runtime("cart-0", "other-uid")).unwrap().unwrap_err();
        assert!(again.contains("is not the runtime's other-uid"), "a pod made again under the same name: {again}");
        let missing = source.meshed(&runtime("web-0", "u3")).unwrap().unwrap_err();
        assert!(missing.contains("not among the node's pods in"), "{missing}");
        assert_eq!(source.meshed_pods().unwrap().iter().map(key).collect::<Vec<_>>(), ["shop/cart-0"]);
    }

    fn api_pod(name: &str, uid: &str, meshed: bool) -> Pod {
        let labels = if meshed { serde_json::json!({INJECTED_LABEL: "9c1"}) } else { serde_json::json!({}) };
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels}}))
        .unwrap()
    }

    #[test]
    fn from_the_api_a_pod_the_watch_has_not_shown_fails_the_add_rather_than_pass_unmeshed() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = kube::runtime::reflector::store::<Pod>();
        let source = PodSource::Api(store);
        let e = source.meshed(&runtime("cart-0", "u1")).unwrap_err();
        assert!(format!("{e}").contains("not listed from the Kubernetes API yet"), "{e}");
        for event in
            [Event::Init, Event::InitApply(api_pod("cart-0", "u1", true)), Event::InitApply(api_pod("db-0", "u2", false)), Event::InitDone]
        {
            writer.apply_watcher_event(&event);
        }
        assert!(source.meshed(&runtime("cart-0", "u1")).unwrap().is_ok());
        assert!(source.meshed(&runtime("db-0", "u2")).unwrap().unwrap_err().contains("no fsm-proxy-uuid label"));
        for (name, uid) in [("web-0", "u3"), ("cart-0", "u9")] {
            let e = source.meshed(&runtime(name, uid)).unwrap_err();
            assert!(format!("{e}").contains("not in the agent's watch of the node's pods yet: try again"), "{e}");
        }
        assert_eq!(source.meshed_pods().unwrap().iter().map(key).collect::<Vec<_>>(), ["shop/cart-0"]);
    }

    #[test]
    fn a_file_that_is_not_a_pod_list_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "{\"items\": 3}").unwrap();
        let e = PodSource::File(file.path().to_owned()).meshed(&runtime("a", "b")).unwrap_err();
        assert!(format!("{e:#}").contains("not a PodList in JSON"), "{e:#}");
    }
}
