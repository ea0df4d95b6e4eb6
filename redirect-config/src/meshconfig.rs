//! FSM's MeshConfig, as `kubectl get meshconfig fsm-mesh-config -o yaml`
//! (or `-o json`) prints it. Only the fields that decide interception are
//! read; everything else in the document is ignored.

use std::path::Path;

use serde_yaml_ng::Value;

use super::{Cidr, ConfigError, InterfaceName, Port};

/// `spec.sidecar.localProxyMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum LocalProxyMode {
    /// The proxy reaches the application over 127.0.0.1 (FSM's default).
    #[default]
    Localhost,
    /// The proxy reaches the application over the pod IP.
    PodIP,
}

/// `spec.traffic.interceptionMode`: what FSM's injector does to a meshed
/// pod, and who intercepts its traffic. FSM v1.0–v1.4 know `iptables`,
/// `ebpf` and `none`; v1.5 and later `PodLevel` and `NodeLevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum InterceptionMode {
    /// v1.0–v1.4's default: the sidecar and fsm-init.
    Iptables,
    /// v1.0–v1.4: the sidecar without fsm-init; FSM's own `fsm-interceptor`
    /// DaemonSet intercepts.
    Ebpf,
    /// v1.0–v1.4: the sidecar without fsm-init, and nothing of FSM's
    /// intercepts: the mode to run this agent in.
    None,
    /// v1.5+'s default: the sidecar and fsm-init, always.
    PodLevel,
    /// v1.5+: no sidecar at all; FSM's `fsm-xnetwork` DaemonSet handles
    /// pods' traffic on the node.
    NodeLevel,
}

impl InterceptionMode {
    /// As the MeshConfig spells it.
    pub fn name(self) -> &'static str {
        match self {
            InterceptionMode::Iptables => "iptables",
            InterceptionMode::Ebpf => "ebpf",
            InterceptionMode::None => "none",
            InterceptionMode::PodLevel => "PodLevel",
            InterceptionMode::NodeLevel => "NodeLevel",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Iptables, Self::Ebpf, Self::None, Self::PodLevel, Self::NodeLevel].into_iter().find(|m| m.name() == text)
    }

    /// Why the agent leaves the pods of a mesh in this mode to FSM (None:
    /// it may intercept them).
    pub fn held_by_fsm(self) -> Option<&'static str> {
        match self {
            InterceptionMode::Ebpf => Some("interceptionMode ebpf: FSM's own fsm-interceptor intercepts meshed pods"),
            InterceptionMode::NodeLevel => {
                Some("interceptionMode NodeLevel: FSM's fsm-xnetwork handles meshed pods, which have no sidecar")
            }
            _ => None,
        }
    }
}

/// The interception-relevant part of a MeshConfig (`spec.traffic` and
/// `spec.sidecar.localProxyMode`, `.localDNSProxy.enable`), validated.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MeshConfig {
    pub outbound_ip_range_exclusions: Vec<Cidr>,
    pub outbound_ip_range_inclusions: Vec<Cidr>,
    pub outbound_port_exclusions: Vec<Port>,
    pub inbound_port_exclusions: Vec<Port>,
    pub network_interface_exclusions: Vec<InterfaceName>,
    pub local_proxy_mode: LocalProxyMode,
    /// `spec.traffic.interceptionMode`; `None` where the document has none
    /// (both FSM defaults, `iptables` and `PodLevel`, inject fsm-init).
    pub interception_mode: Option<InterceptionMode>,
    /// `spec.sidecar.localDNSProxy.enable`: fsm-init (v1.0–v1.4.16) then
    /// sends the pod's UDP to 127.0.0.153:53 to the sidecar's DNS proxy on
    /// 127.0.0.153:5300.
    pub local_dns_proxy: bool,
}

const TRAFFIC: &str = "spec.traffic";

impl MeshConfig {
    /// FSM's default MeshConfig: every list empty, `localProxyMode: Localhost`.
    /// Used when the agent is given no file.
    pub fn fsm_default() -> Self {
        MeshConfig::default()
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { path: path.to_owned(), problem: format!("can't read the MeshConfig: {e}") })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Invalid { field, value, problem } => {
                ConfigError::Invalid { field: format!("{}: {field}", path.display()), value, problem }
            }
            other => other,
        })
    }

    /// Parses YAML or JSON (JSON is read as YAML, which it is).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::invalid("MeshConfig", shape(text), format!("is not valid YAML or JSON: {e}")))?;
        if !doc.is_mapping() {
            return Err(ConfigError::invalid("MeshConfig", shape(text), "is not a YAML/JSON object"));
        }
        if let Some(kind) = doc.get("kind")
            && kind.as_str() != Some("MeshConfig")
        {
            return Err(ConfigError::invalid("kind", render(kind), "is not MeshConfig"));
        }
        let spec = doc.get("spec");
        let traffic = spec.and_then(|s| s.get("traffic"));
        let list = |name: &str| -> Result<Vec<(String, Value)>, ConfigError> {
            let field = format!("{TRAFFIC}.{name}");
            match traffic.and_then(|t| t.get(name)) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Sequence(items)) => Ok(items.iter().enumerate().map(|(i, v)| (format!("{field}[{i}]"), v.clone())).collect()),
                Some(other) => Err(ConfigError::invalid(field, render(other), "is not a list")),
            }
        };
        let cidrs = |name: &str| -> Result<Vec<Cidr>, ConfigError> {
            list(name)?
                .into_iter()
                .map(|(field, v)| match v.as_str() {
                    Some(s) => Cidr::parse(&field, s),
                    None => Err(ConfigError::invalid(&field, render(&v), "is not a CIDR string")),
                })
                .collect()
        };
        let ports = |name: &str| -> Result<Vec<Port>, ConfigError> {
            list(name)?
                .into_iter()
                .map(|(field, v)| match &v {
                    Value::Number(n) => match n.as_i64() {
                        Some(n) => Port::from_i64(&field, n),
                        None => Err(ConfigError::invalid(&field, render(&v), "is not a port number (1-65535)")),
                    },
                    // kubectl prints ints, but a hand-written file may quote them.
                    Value::String(s) => Port::parse(&field, s),
                    other => Err(ConfigError::invalid(&field, render(other), "is not a port number (1-65535)")),
                })
                .collect()
        };
        let interfaces = list("networkInterfaceExclusionList")?
            .into_iter()
            .map(|(field, v)| match v.as_str() {
                Some(s) => InterfaceName::parse(&field, s),
                None => Err(ConfigError::invalid(&field, render(&v), "is not an interface name")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local_proxy_mode = match spec.and_then(|s| s.get("sidecar")).and_then(|s| s.get("localProxyMode")) {
            None | Some(Value::Null) => LocalProxyMode::Localhost,
            Some(v) => match v.as_str() {
                Some("Localhost") => LocalProxyMode::Localhost,
                Some("PodIP") => LocalProxyMode::PodIP,
                _ => {
                    return Err(ConfigError::invalid("spec.sidecar.localProxyMode", render(v), "is neither Localhost nor PodIP"));
                }
            },
        };
        let interception_mode = match traffic.and_then(|t| t.get("interceptionMode")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().and_then(InterceptionMode::parse).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{TRAFFIC}.interceptionMode"),
                    render(v),
                    "is none of iptables, ebpf, none (FSM v1.0-v1.4), PodLevel, NodeLevel (v1.5+)",
                )
            })?),
        };
        let local_dns_proxy = match spec.and_then(|s| s.get("sidecar")).and_then(|s| s.get("localDNSProxy")).and_then(|d| d.get("enable")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(ConfigError::invalid("spec.sidecar.localDNSProxy.enable", render(v), "is not true or false")),
        };
        Ok(MeshConfig {
            interception_mode,
            local_dns_proxy,
            outbound_ip_range_exclusions: cidrs("outboundIPRangeExclusionList")?,
            outbound_ip_range_inclusions: cidrs("outboundIPRangeInclusionList")?,
            outbound_port_exclusions: ports("outboundPortExclusionList")?,
            inbound_port_exclusions: ports("inboundPortExclusionList")?,
            network_interface_exclusions: interfaces,
            local_proxy_mode,
        })
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
    }
}

/// What a document that is not a MeshConfig is named by in errors: its
/// size, never its text (`reload --mesh-config` reads any file root can, and
/// its contents must not reach the caller or the log).
fn shape(text: &str) -> String {
    format!("a document of {} line(s), {} byte(s)", text.lines().count(), text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL_YAML: &str = r#"
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata:
  name: fsm-mesh-config
  namespace: fsm-system
spec:
  sidecar:
    localProxyMode: PodIP
    logLevel: error
  traffic:
    enableEgress: false
    outboundIPRangeExclusionList:
    - 1.1.1.1/32
    - 2.2.2.2/24
    outboundIPRangeInclusionList: []
    outboundPortExclusionList:
    - 6379
    - 7070
    inboundPortExclusionList: [9090]
    networkInterfaceExclusionList: ["net1", "net2"]
"#;

    #[test]
    fn reads_the_lists_kubectl_prints() {
        let mc = MeshConfig::parse(KUBECTL_YAML).unwrap();
        let texts: Vec<_> = mc.outbound_ip_range_exclusions.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["1.1.1.1/32", "2.2.2.2/24"]);
        assert!(mc.outbound_ip_range_inclusions.is_empty());
        let ports: Vec<_> = mc.outbound_port_exclusions.iter().map(|p| p.get()).collect();
        assert_eq!(ports, [6379, 7070]);
        assert_eq!(mc.inbound_port_exclusions[0].get(), 9090);
        let ifs: Vec<_> = mc.network_interface_exclusions.iter().map(|i| i.as_str()).collect();
        assert_eq!(ifs, ["net1", "net2"]);
        assert_eq!(mc.local_proxy_mode, LocalProxyMode::PodIP);
    }

    #[test]
    fn reads_json_too() {
        let json = r#"{"apiVersion":"config.flomesh.io/v1alpha3","kind":"MeshConfig",
          "spec":{"traffic":{"outboundPortExclusionList":[6379],"outboundIPRangeInclusionList":["10.96.0.0/16"]}}}"#;
        let mc = MeshConfig::parse(json).unwrap();
        assert_eq!(mc.outbound_port_exclusions[0].get(), 6379);
        assert_eq!(mc.outbound_ip_range_inclusions[0].text, "10.96.0.0/16");
        assert_eq!(mc.local_proxy_mode, LocalProxyMode::Localhost);
    }

    #[test]
    fn reads_the_interception_mode_of_every_fsm_release_and_the_dns_proxy_switch() {
        for (mode, want) in [
            ("iptables", InterceptionMode::Iptables),
            ("ebpf", InterceptionMode::Ebpf),
            ("none", InterceptionMode::None),
            ("PodLevel", InterceptionMode::PodLevel),
            ("NodeLevel", InterceptionMode::NodeLevel),
        ] {
            let mc = MeshConfig::parse(&format!("spec:\n  traffic:\n    interceptionMode: {mode}\n")).unwrap();
            assert_eq!(mc.interception_mode, Some(want));
        }
        let mc = MeshConfig::parse(
            "spec:\n  sidecar:\n    localDNSProxy:\n      enable: true\n      primaryUpstreamDNSServerIPAddr: 10.96.0.10\n",
        )
        .unwrap();
        assert!(mc.local_dns_proxy);
        assert_eq!(mc.interception_mode, None);
        assert!(!MeshConfig::parse("spec:\n  sidecar:\n    localDNSProxy: {enable: false}\n").unwrap().local_dns_proxy);
    }

    #[test]
    fn missing_lists_mean_fsm_defaults() {
        let mc = MeshConfig::parse("kind: MeshConfig\nspec: {}\n").unwrap();
        assert_eq!(mc, MeshConfig::fsm_default());
    }

    #[test]
    fn bad_values_name_the_field_and_the_value() {
        let cases = [
            ("spec:\n  traffic:\n    outboundPortExclusionList: [80, 0]\n", "spec.traffic.outboundPortExclusionList[1]", "\"0\""),
            ("spec:\n  traffic:\n    inboundPortExclusionList: [65536]\n", "spec.traffic.inboundPortExclusionList[0]", "\"65536\""),
            (
                "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.0.0.0/8, 300.1.1.1/32]\n",
                "spec.traffic.outboundIPRangeExclusionList[1]",
                "\"300.1.1.1/32\"",
            ),
            (
                "spec:\n  traffic:\n    outboundIPRangeInclusionList: 10.0.0.0/8\n",
                "spec.traffic.outboundIPRangeInclusionList",
                "\"10.0.0.0/8\"",
            ),
            ("spec:\n  sidecar:\n    localProxyMode: Pod\n", "spec.sidecar.localProxyMode", "\"Pod\""),
            ("spec:\n  traffic:\n    interceptionMode: Iptables\n", "spec.traffic.interceptionMode", "\"Iptables\""),
            ("spec:\n  sidecar:\n    localDNSProxy: {enable: yes please}\n", "spec.sidecar.localDNSProxy.enable", "\"yes please\""),
            ("kind: Pod\n", "kind", "\"Pod\""),
        ];
        for (doc, field, value) in cases {
            let err = MeshConfig::parse(doc).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{field}: {value}")), "{doc}: {err}");
        }
    }

    #[test]
    fn malformed_yaml_is_refused() {
        let err = MeshConfig::parse("spec: [unclosed\n").unwrap_err().to_string();
        assert!(err.contains("not valid YAML or JSON"), "{err}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = MeshConfig::load(Path::new("/nonexistent/mesh.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/mesh.yaml: can't read"), "{err}");
    }
}
