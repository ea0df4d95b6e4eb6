//! The CNI wire format (spec 1.1.0 and 1.0.0, and 0.3.0–0.4.0 as runtimes
//! still send them): the environment, the network configuration on stdin,
//! and the error object. Only what a chained plugin that passes `prevResult` on
//! unchanged needs; unknown keys are ignored (libcni passes
//! `capabilities` through, and plugins of the chain add their own).

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

/// The versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The capability whose `runtimeConfig` key carries the pod's annotations
/// (containerd's CRI, when the plugin's entry declares it).
pub const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

/// Well-known error codes (spec, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin can't serve ADDs.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Ours (100 and up are the plugin's): the agent refused the pod.
    pub const ENROLMENT_REFUSED: u32 = 100;
    /// Ours: CHECK found a meshed pod not intercepted.
    pub const NOT_INTERCEPTED: u32 = 101;
    /// Ours: GC failed in the agent.
    pub const GC_FAILED: u32 = 102;
}

/// An error as CNI reports it: printed on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { cni_version: "1.0.0".into(), code, msg: msg.into(), details: details.into() }
    }
}

/// What the runtime asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    /// 1.1.0: whether the plugin can serve ADDs (containerd 2 asks every
    /// plugin of a 1.1.0 conflist; a failure marks the node's network not
    /// ready).
    Status,
    /// 1.1.0: remove what belongs to attachments other than the valid ones.
    Gc,
    Version,
}

impl Command {
    /// The version from which the spec has it.
    fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// The environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty on a DEL whose namespace is already gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`.
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// Reads the environment (`var` gives one variable) as the spec
    /// requires it for the command; a missing or bad one is named.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"),
                    "",
                ));
            }
        };
        let required = |name: &str| -> Result<String, CniError> {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set (required for {command:?})"), ""))
        };
        // These name no attachment.
        if matches!(command, Command::Version | Command::Status | Command::Gc) {
            return Ok(Env { command, container_id: String::new(), netns: None, ifname: String::new(), args: BTreeMap::new() });
        }
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        let netns = match command {
            Command::Del => var("CNI_NETNS").filter(|v| !v.is_empty()).map(PathBuf::from),
            _ => Some(PathBuf::from(required("CNI_NETNS")?)),
        };
        let args = parse_args(&var("CNI_ARGS").unwrap_or_default())?;
        Ok(Env { command, container_id, netns, ifname, args })
    }

    /// The pod `CNI_ARGS` names (kubelet's runtimes pass it), if all of
    /// namespace, name and UID are there.
    pub fn kubernetes_pod(&self) -> Option<KubernetesPod> {
        let get = |k: &str| self.args.get(k).filter(|v| !v.is_empty()).cloned();
        Some(KubernetesPod { namespace: get("K8S_POD_NAMESPACE")?, name: get("K8S_POD_NAME")?, uid: get("K8S_POD_UID")? })
    }
}

/// `K=V;K=V` (`IgnoreUnknown=1` among them, from containerd).
fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    text.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {pair:?} is not KEY=VALUE"), ""))
        })
        .collect()
}

/// The pod of an invocation, as kubelet's runtime names it in `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KubernetesPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl KubernetesPod {
    /// `namespace/name`: the pod's name in the agent.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The plugin's configuration on stdin.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The agent's control socket (default: the agent's default state
    /// directory's).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Let the pod start when the agent can't be reached or refuses it
    /// (default: fail, so that the kubelet tries again and no app runs
    /// unintercepted).
    #[serde(default)]
    pub fail_open: bool,
    /// How long a command waits for the agent's answer before it gives up
    /// with a CNI error that says so (default 30 s).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Namespaces whose pods the mesh never holds (FSM's own, kube-system):
    /// their ADD succeeds without asking the agent, so that an agent that is
    /// down, hung or behind never holds back the node's own pods.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// GC (1.1.0): the attachments the runtime still has.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<Attachment>,
}

fn default_timeout() -> u64 {
    30
}

/// One of GC's valid attachments.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct RuntimeConfig {
    #[serde(default, rename = "io.kubernetes.cri.pod-annotations")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

impl NetConf {
    /// Parses stdin; refuses a version this plugin doesn't speak.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, "the network configuration on stdin is not valid", e.to_string()))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {:?}: not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        Ok(conf)
    }

    /// Refuses `command` where the configuration's version does not have
    /// it (CHECK before 0.4.0, STATUS and GC before 1.1.0).
    pub fn supports(&self, command: Command) -> Result<(), CniError> {
        let since = command.since();
        let index = |v: &str| SUPPORTED_VERSIONS.iter().position(|s| *s == v);
        if index(&self.cni_version) < index(since) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("{command:?} needs cniVersion {since} or later, not {}", self.cni_version),
                "",
            ));
        }
        Ok(())
    }

    /// The pod's IPs in `prevResult` (`ips[].address`, CIDR form).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let ips = self.prev_result.as_ref().and_then(|r| r.get("ips")).and_then(|v| v.as_array());
        ips.into_iter().flatten().filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok()).collect()
    }
}

/// What ADD prints: the previous plugin's result, unchanged but for the
/// version it is given in (the configuration's).
pub fn pass_through(conf: &NetConf) -> Result<String, CniError> {
    let mut result = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "no prevResult: fsm-redirect must be chained after the plugin that sets up the pod's interface",
            "",
        )
    })?;
    if let Some(map) = result.as_object_mut() {
        map.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    Ok(result.to_string())
}

/// What VERSION prints.
pub fn version_info(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".into());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn the_environment_is_read_as_the_command_needs_it_and_missing_variables_are_named() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=1-2"),
        ])
        .unwrap();
        assert_eq!(e.kubernetes_pod().unwrap().key(), "shop/cart-0");
        assert_eq!(e.netns.as_deref(), Some(std::path::Path::new("/var/run/netns/cni-1")));
        let missing = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!((missing.code, missing.msg.contains("CNI_NETNS")), (code::INVALID_ENV, true), "{missing:?}");
        // DEL after the namespace is gone: no CNI_NETNS, still fine.
        let del = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")]).unwrap();
        assert_eq!(del.netns, None);
        assert!(env(&[("CNI_COMMAND", "NOPE")]).unwrap_err().msg.contains("expected ADD, DEL, CHECK, STATUS, GC or VERSION"));
        // STATUS and GC name no attachment (1.1.0).
        assert_eq!(env(&[("CNI_COMMAND", "STATUS")]).unwrap().command, Command::Status);
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
        assert!(
            env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "e"), ("CNI_NETNS", "/n"), ("CNI_ARGS", "oops")])
                .is_err()
        );
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
    }

    #[test]
    fn prev_result_goes_through_unchanged_in_the_configurations_version() {
        let stdin = br#"{"cniVersion":"0.4.0","name":"k8s","type":"fsm-redirect","capabilities":{"io.kubernetes.cri.pod-annotations":true},
            "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}},
            "prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.244.1.7/24","interface":0}],"dns":{}}}"#;
        let conf = NetConf::parse(stdin).unwrap();
        assert_eq!(conf.runtime_config.pod_annotations.as_ref().unwrap()["a"], "b");
        assert_eq!(conf.pod_ips(), vec!["10.244.1.7".parse::<IpAddr>().unwrap()]);
        let out: serde_json::Value = serde_json::from_str(&pass_through(&conf).unwrap()).unwrap();
        assert_eq!(&out, conf.prev_result.as_ref().unwrap());
        assert!(!conf.fail_open);
    }

    #[test]
    fn each_command_needs_the_version_that_has_it_and_gc_reads_the_valid_attachments() {
        let conf = |v: &str| NetConf::parse(format!(r#"{{"cniVersion":"{v}","name":"k8s"}}"#).as_bytes()).unwrap();
        assert!(conf("0.3.1").supports(Command::Check).is_err());
        conf("0.4.0").supports(Command::Check).unwrap();
        for c in [Command::Status, Command::Gc] {
            let e = conf("1.0.0").supports(c).unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{e:?}");
            conf("1.1.0").supports(c).unwrap();
        }
        let gc = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"k8s","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"},{"containerID":"def","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(gc.valid_attachments.iter().map(|a| a.container_id.as_str()).collect::<Vec<_>>(), ["abc", "def"]);
        let excluded = NetConf::parse(br#"{"cniVersion":"1.1.0","excludeNamespaces":["kube-system","fsm-system"]}"#).unwrap();
        assert_eq!(excluded.exclude_namespaces, ["kube-system", "fsm-system"]);
    }

    #[test]
    fn bad_configurations_get_the_spec_error_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE_FAILURE);
        let e = NetConf::parse(br#"{"cniVersion":"0.2.0"}"#).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (code::INCOMPATIBLE_VERSION, "cniVersion \"0.2.0\": not supported"));
        let alone = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(pass_through(&alone).unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(
            version_info(br#"{"cniVersion":"0.4.0"}"#),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        let e = serde_json::to_string(&CniError::new(code::TRY_AGAIN_LATER, "m", "")).unwrap();
        assert_eq!(e, r#"{"cniVersion":"1.0.0","code":11,"msg":"m"}"#);
    }
}
