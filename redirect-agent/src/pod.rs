//! A pod as the agent knows it: where its network namespace and cgroup are,
//! and its annotations; asked for ([`EnrollRequest`]), then enrolled
//! ([`Pod`]).

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;

use crate::{
    cgroup,
    config::{ConfigError, annotations::PodAnnotations},
    dataplane::Dataplane,
    injection::Injection,
    ipv6::Ipv6Mode,
    netns,
    settings::ProxySettings,
};

/// What `enroll` asks for: the dataplane and the switches maybe chosen
/// (`None`: the agent's), the annotations as given. Validated by
/// [`Pod::new`]; the CLI checks it first ([`EnrollRequest::validate`]) so a
/// mistake is named before the agent is asked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollRequest {
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
    /// Which dataplane serves the pod; `None`: the agent's `--dataplane`.
    #[serde(default)]
    pub dataplane: Option<Dataplane>,
    /// The fast path for this pod's local hops; `None`: the agent's
    /// `--fast-path`.
    #[serde(default)]
    pub fast_path: Option<bool>,
    /// Whether the pod's IPv6 is intercepted; `None`: the agent's `--ipv6`.
    #[serde(default)]
    pub ipv6: Option<Ipv6Mode>,
    /// The sandbox whose CNI ADD enrolled it (its DEL removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Found running by reconciling, not enrolled before it started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started_unintercepted: bool,
    /// What FSM's injector put into its spec, where the spec is known (from
    /// the API, or `--pod-manifest`): it decides whether fsm-init serves it
    /// (`crate::injection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<Injection>,
}

impl EnrollRequest {
    /// Checks what can be checked without touching the kernel.
    pub fn validate(&self) -> Result<PodAnnotations, ConfigError> {
        if self.name.trim().is_empty() || self.name.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid("pod name", &self.name, "must be non-empty without spaces"));
        }
        PodAnnotations::from_map(&self.annotations)
    }
}

/// An enrolled pod: its dataplane chosen, its annotations parsed and
/// validated once. The state file records it as the request it came from,
/// with the dataplane filled in, and its namespace's identity
/// ([`PodRecord`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "PodRecord", into = "PodRecord")]
pub struct Pod {
    pub name: String,
    pub netns: PathBuf,
    /// The namespace `netns` named at enrolment: a path can come to name
    /// another one (`/proc/PID/ns/net` once PID is reused). `None` in a
    /// record of an earlier release, until the agent's start takes it.
    pub netns_identity: Option<netns::Identity>,
    pub cgroup: Option<PathBuf>,
    pub dataplane: Dataplane,
    /// `None`: the agent's `--fast-path`.
    pub fast_path: Option<bool>,
    /// `None`: the agent's `--ipv6`.
    pub ipv6: Option<Ipv6Mode>,
    /// The annotations as given.
    pub annotations: BTreeMap<String, String>,
    /// What they say, parsed.
    pub lists: PodAnnotations,
    /// The sandbox whose CNI ADD enrolled it.
    pub container_id: Option<String>,
    /// Its processes ran before it was enrolled.
    pub started_unintercepted: bool,
    /// Its spec's injection, where known.
    pub injection: Option<Injection>,
}

impl Pod {
    /// The pod of `request`, served by `dataplane`; a bad name or
    /// annotation is refused by name.
    pub fn new(request: EnrollRequest, dataplane: Dataplane) -> Result<Self, ConfigError> {
        let lists = request.validate()?;
        Ok(Self::validated(request, lists, dataplane))
    }

    /// The pod of `request`, whose annotations `request.validate()` read as
    /// `lists` (for a caller that needed them to choose the dataplane).
    pub(crate) fn validated(request: EnrollRequest, lists: PodAnnotations, dataplane: Dataplane) -> Self {
        let EnrollRequest {
            name,
            netns,
            cgroup,
            annotations,
            dataplane: _,
            fast_path,
            ipv6,
            container_id,
            started_unintercepted,
            injection,
        } = request;
        Pod {
            name,
            netns,
            netns_identity: None,
            cgroup,
            dataplane,
            fast_path,
            ipv6,
            annotations,
            lists,
            container_id,
            started_unintercepted,
            injection,
        }
    }

    /// The node's proxy settings with the pod's own fast-path and IPv6
    /// switches.
    pub fn settings(&self, node: &ProxySettings) -> ProxySettings {
        ProxySettings { fast_path: self.fast_path.unwrap_or(node.fast_path), ipv6: self.ipv6.unwrap_or(node.ipv6), ..*node }
    }

    /// Its cgroup's path in the cgroup2 hierarchy (the eBPF dataplane
    /// attaches there).
    pub fn cgroup_path(&self) -> anyhow::Result<PathBuf> {
        let cgroup = self.cgroup.as_deref().ok_or_else(|| anyhow::anyhow!("pod {}: no cgroup", self.name))?;
        cgroup::resolve(cgroup)
    }
}

impl TryFrom<EnrollRequest> for Pod {
    type Error = ConfigError;

    fn try_from(request: EnrollRequest) -> Result<Self, ConfigError> {
        let dataplane = request.dataplane.ok_or_else(|| ConfigError::invalid("dataplane of pod", &request.name, "is not recorded"))?;
        Pod::new(request, dataplane)
    }
}

impl From<Pod> for EnrollRequest {
    fn from(pod: Pod) -> Self {
        PodRecord::from(pod).request
    }
}

/// A pod as the state file records it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PodRecord {
    #[serde(flatten)]
    request: EnrollRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns_identity: Option<netns::Identity>,
}

impl TryFrom<PodRecord> for Pod {
    type Error = ConfigError;

    fn try_from(record: PodRecord) -> Result<Self, ConfigError> {
        Ok(Pod { netns_identity: record.netns_identity, ..Pod::try_from(record.request)? })
    }
}

impl From<Pod> for PodRecord {
    fn from(pod: Pod) -> Self {
        let Pod {
            name,
            netns,
            netns_identity,
            cgroup,
            dataplane,
            fast_path,
            ipv6,
            annotations,
            lists: _,
            container_id,
            started_unintercepted,
            injection,
        } = pod;
        let request = EnrollRequest {
            name,
            netns,
            cgroup,
            annotations,
            dataplane: Some(dataplane),
            fast_path,
            ipv6,
            container_id,
            started_unintercepted,
            injection,
        };
        PodRecord { request, netns_identity }
    }
}

/// What a pod manifest tells the agent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub annotations: BTreeMap<String, String>,
    /// `None`: the file has no `spec` (a plain map of annotations).
    pub injection: Option<Injection>,
}

/// Reads a pod manifest (`kubectl get pod -o yaml` or `-o json`): its
/// `metadata.annotations` and what FSM injected into its `spec`; or a plain
/// map of annotations.
pub fn manifest_from_file(path: &std::path::Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: can't read", path.display()))?;
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not valid YAML or JSON", path.display()))?;
    let injection = match doc.get("spec") {
        None => None,
        Some(_) => {
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_yaml_ng::from_value(doc.clone()).with_context(|| format!("{}: not a pod manifest", path.display()))?;
            Some(Injection::of_pod(&pod))
        }
    };
    let map = match doc.get("metadata") {
        Some(metadata) => metadata.get("annotations").cloned().unwrap_or_default(),
        None if injection.is_some() => serde_yaml_ng::Value::Null,
        None => doc,
    };
    let annotations = if map.is_null() {
        BTreeMap::new()
    } else {
        serde_yaml_ng::from_value(map).with_context(|| format!("{}: annotations must be a map of strings to strings", path.display()))?
    };
    Ok(Manifest { annotations, injection })
}

/// Parses `KEY=VALUE`.
pub fn parse_annotation(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("annotation {arg:?}: expected KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injection::FsmInit;

    fn read(text: &str) -> anyhow::Result<Manifest> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        manifest_from_file(file.path())
    }

    #[test]
    fn a_manifest_gives_its_annotations_and_what_fsm_injected() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cart\n  annotations: {flomesh.io/outbound-port-exclusion-list: '6379'}\nspec:\n  initContainers: [{name: fsm-init}]\n  containers: [{name: app}, {name: sidecar}]\n";
        let m = read(pod).unwrap();
        assert_eq!(m.annotations["flomesh.io/outbound-port-exclusion-list"], "6379");
        assert_eq!(m.injection, Some(Injection { sidecar: true, fsm_init: FsmInit::Present }));
        // No annotations at all: none, not the whole document as a map.
        let m = read("metadata: {name: cart}\nspec:\n  containers: [{name: app}]\n").unwrap();
        assert!(m.annotations.is_empty());
        assert_eq!(m.injection, Some(Injection { sidecar: false, fsm_init: FsmInit::Absent }));
        // A plain map of annotations: no spec known.
        let m = read("flomesh.io/inbound-port-exclusion-list: '8080'\n").unwrap();
        assert_eq!(m.annotations["flomesh.io/inbound-port-exclusion-list"], "8080");
        assert_eq!(m.injection, None);
        let e = read("spec:\n  containers: 7\n").unwrap_err();
        assert!(format!("{e:#}").contains("not a pod manifest"), "{e:#}");
    }
}
