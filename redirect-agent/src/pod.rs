//! A pod as the agent knows it: where its network namespace and cgroup are,
//! and its annotations.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;

use crate::{
    config::{ConfigError, annotations::PodAnnotations},
    dataplane::Dataplane,
};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodSpec {
    /// `namespace/name`, or any name unique on the node.
    pub name: String,
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// The pod's cgroup v2 group, absolute or relative to the cgroup2
    /// mount. Every process in it and in its descendants (the containers) is
    /// the pod. The eBPF dataplane needs it; without it the pod gets iptables.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Which dataplane serves the pod. When enrolling: `None` lets the agent
    /// choose (its `--dataplane`); once enrolled: the one it chose.
    #[serde(default)]
    pub dataplane: Option<Dataplane>,
    /// The fast path for this pod's local hops; `None`: the agent's
    /// `--fast-path`.
    #[serde(default)]
    pub fast_path: Option<bool>,
    /// Whether the pod's IPv6 is intercepted; `None`: the agent's `--ipv6`.
    #[serde(default)]
    pub ipv6: Option<crate::ipv6::Ipv6Mode>,
}

impl PodSpec {
    /// Checks what can be checked without touching the kernel.
    pub fn validate(&self) -> Result<PodAnnotations, ConfigError> {
        if self.name.trim().is_empty() || self.name.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid("pod name", &self.name, "must be non-empty without spaces"));
        }
        PodAnnotations::from_map(&self.annotations)
    }
}

/// Reads `metadata.annotations` from a pod manifest (`kubectl get pod -o
/// yaml` or `-o json`), or a plain map of annotations.
pub fn annotations_from_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: can't read", path.display()))?;
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not valid YAML or JSON", path.display()))?;
    let map = doc.get("metadata").and_then(|m| m.get("annotations")).cloned().unwrap_or(doc);
    if map.is_null() {
        return Ok(BTreeMap::new());
    }
    serde_yaml_ng::from_value(map).with_context(|| format!("{}: annotations must be a map of strings to strings", path.display()))
}

/// Parses `KEY=VALUE`.
pub fn parse_annotation(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("annotation {arg:?}: expected KEY=VALUE"))
}
