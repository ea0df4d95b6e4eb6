//! Which pods FSM meshes. Its injector labels every pod it injected with
//! `fsm-proxy-uuid` (FSM's own code calls that label the reliable way to
//! select injected pods); labels don't reach CNI, so the agent reads the
//! pods of its node: from a file holding a `PodList` (what `kubectl get
//! pods -A -o json --field-selector spec.nodeName=NODE` prints).

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;

/// The label FSM's injector puts on every pod it injected.
pub const INJECTED_LABEL: &str = "fsm-proxy-uuid";

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<PodObject>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct PodObject {
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl PodObject {
    pub fn meshed(&self) -> bool {
        self.metadata.labels.contains_key(INJECTED_LABEL)
    }
}

impl PodList {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("pods file {}: can't read", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("pods file {}: not a PodList in JSON", path.display()))
    }

    /// The pod with this namespace and name, if it is the one with `uid`
    /// (a pod deleted and made again under its name has another).
    pub fn find(&self, namespace: &str, name: &str, uid: &str) -> Option<&PodObject> {
        self.items.iter().find(|p| p.metadata.namespace == namespace && p.metadata.name == name && p.metadata.uid == uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pods_with_the_injectors_label_are_meshed() {
        let list: PodList = serde_json::from_str(
            r#"{"kind":"PodList","apiVersion":"v1","items":[
              {"metadata":{"name":"cart-0","namespace":"shop","uid":"u1","labels":{"app":"cart","fsm-proxy-uuid":"9c1"},
               "annotations":{"flomesh.io/outbound-port-exclusion-list":"6379"}},"spec":{"nodeName":"n1"}},
              {"metadata":{"name":"db-0","namespace":"shop","uid":"u2","labels":{"app":"db"}}}]}"#,
        )
        .unwrap();
        let cart = list.find("shop", "cart-0", "u1").unwrap();
        assert!(cart.meshed());
        assert_eq!(cart.metadata.annotations["flomesh.io/outbound-port-exclusion-list"], "6379");
        assert!(!list.find("shop", "db-0", "u2").unwrap().meshed());
        assert!(list.find("shop", "cart-0", "other-uid").is_none(), "a pod made again under the same name");
    }
}
