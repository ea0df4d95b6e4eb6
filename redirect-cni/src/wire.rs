//! What the plugin and the agent say to each other on the agent's control
//! socket: one JSON request per line, one JSON [`Response`] per line. The
//! agent's own protocol (`redirect_agent::control`) carries these requests
//! and replies among its others, unchanged on the wire, so that a plugin
//! and an agent of neighbouring releases (a node mid-upgrade) still agree.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use crate::spec::KubernetesPod;

/// Where the agent keeps its state and control socket unless told
/// otherwise; the plugin's `socket` key defaults to [`DEFAULT_SOCKET`].
pub const DEFAULT_STATE_DIR: &str = "/run/fsm-redirect";
/// The control socket's name in the state directory.
pub const SOCKET_NAME: &str = "agent.sock";
pub const DEFAULT_SOCKET: &str = "/run/fsm-redirect/agent.sock";

/// The annotation of a pod whose fsm-init is guarded (FSM's injector
/// leaves fsm-init in, the guard of `deploy/fsm-init-guard` makes it step
/// aside where the agent intercepts): the runtime passes it to the plugin
/// (`io.kubernetes.cri.pod-annotations`) so that such a pod may start
/// while the agent can't be reached, its fsm-init then applying the rules.
pub const GUARD_ANNOTATION: (&str, &str) = ("fsm-redirect/fsm-init", "guarded");

/// The plugin's requests.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum CniRequest {
    /// ADD: enroll the pod if FSM meshes it.
    CniAdd { add: CniAdd },
    /// DEL: remove the pod its ADD enrolled, if any.
    CniDel { container_id: String },
    /// CHECK: is the pod intercepted if FSM meshes it?
    CniCheck { container_id: String, pod: KubernetesPod },
    /// GC: remove the pods enrolled by ADDs of sandboxes other than these.
    CniGc { valid: Vec<String> },
}

/// The agent's answer to each, one variant per request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum CniReply {
    CniAdded(CniAdded),
    CniDeleted {
        removed: bool,
    },
    CniChecked,
    /// The pods GC removed.
    CniCollected {
        removed: Vec<String>,
    },
}

/// ADD, as the plugin hands it to the agent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CniAdd {
    pub container_id: String,
    pub netns: PathBuf,
    pub pod: KubernetesPod,
    /// From `prevResult`.
    pub ips: Vec<IpAddr>,
    /// From the runtime (`io.kubernetes.cri.pod-annotations`), where it
    /// passed them; else the agent takes the pod's own.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What the agent did with an ADD.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CniAdded {
    Enrolled {
        id: u32,
        /// The dataplane's name (`ebpf`, `iptables`, `fsm-init`), for the
        /// plugin's log.
        dataplane: String,
        /// What the runtime's log should say besides (the MeshConfig it
        /// was enrolled with is not the mesh's own, say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// FSM does not mesh the pod: nothing was done.
    NotMeshed { why: String },
}

/// Every answer on the socket: the request's reply, or why it failed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response<R> {
    Ok(R),
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's `Dataplane` serialised to this string before the split:
    /// an ADD answered by an agent of either side reads the same.
    #[test]
    fn the_wire_form_is_the_one_plugins_and_agents_already_speak() {
        let added = CniReply::CniAdded(CniAdded::Enrolled { id: 7, dataplane: "ebpf".into(), note: None });
        let line = serde_json::to_string(&Response::Ok(added.clone())).unwrap();
        assert_eq!(line, r#"{"ok":{"reply":"cni-added","outcome":"enrolled","id":7,"dataplane":"ebpf"}}"#);
        let back: Response<CniReply> = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Response::Ok(r) if r == added));
        let del = serde_json::to_string(&CniRequest::CniDel { container_id: "c1".into() }).unwrap();
        assert_eq!(del, r#"{"request":"cni-del","container_id":"c1"}"#);
        assert_eq!(DEFAULT_SOCKET, format!("{DEFAULT_STATE_DIR}/{SOCKET_NAME}"));
    }
}
