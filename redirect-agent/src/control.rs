//! The agent's control protocol, on `<state dir>/agent.sock` (root only,
//! like the agent): one JSON [`Request`] per line, one JSON [`Response`] per
//! line, each request with its own typed [`Reply`], and the types those
//! carry. [`Client`] is the CLI's (and the demo's) side of it.

use std::path::{Path, PathBuf};

use anyhow::bail;
use redirect_cni::wire::{CniReply, CniRequest};
use redirect_common::maps::PodId;

// The types the replies carry live with what makes them; the protocol
// carries them as they are.
pub use crate::{
    agent::status::{Degraded, PodStatus, Status, UnreadablePod},
    diagnostics::{Check, Decision, Explanation, Query},
    ebpf::maps::MapFill,
};
use crate::{dataplane::Dataplane, pod::EnrollRequest, state::State};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Enroll {
        pod: EnrollRequest,
    },
    Remove {
        name: String,
    },
    Status,
    /// Re-read the MeshConfig (from `path`, or the file the agent uses).
    Reload {
        path: Option<PathBuf>,
    },
    /// Remove every trace, then stop.
    Uninstall,
    Explain {
        pod: String,
        query: Query,
    },
    Diagnose {
        pod: Option<String>,
    },
    /// The CNI plugin's requests, as its crate has them (the same JSON on
    /// the socket as the others).
    #[serde(untagged)]
    Cni(CniRequest),
}

/// The agent's answer to each request, one variant per request.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Enrolled {
        id: PodId,
        dataplane: Dataplane,
    },
    Removed,
    Status(Box<Status>),
    /// Applied to every pod but the `degraded` ones, which keep their
    /// previous lists and are retried at each refresh.
    Reloaded {
        degraded: Vec<Degraded>,
    },
    Uninstalled,
    Explanation(Box<Explanation>),
    Checks {
        checks: Vec<Check>,
    },
    /// The answers to the CNI plugin's requests.
    #[serde(untagged)]
    Cni(CniReply),
}

/// The reply, or why the request failed.
pub type Response = redirect_cni::wire::Response<Reply>;

/// The CLI's side of the control socket: one connection per request.
pub struct Client {
    socket: PathBuf,
    /// How long a request may wait for its answer (none: as long as the
    /// agent takes, for the CLI's `reload` of a large node).
    timeout: Option<std::time::Duration>,
}

impl Client {
    pub fn new(state_dir: &Path) -> Self {
        Client { socket: State::socket(state_dir), timeout: None }
    }

    /// A client of the agent listening on `socket`.
    pub fn at(socket: PathBuf) -> Self {
        Client { socket, timeout: None }
    }

    /// Gives up on an answer after `timeout` ([`Unanswered`]).
    pub fn with_timeout(self, timeout: std::time::Duration) -> Self {
        Client { timeout: Some(timeout), ..self }
    }

    /// Sends one request to the running agent.
    fn call(&self, request: &Request) -> anyhow::Result<Reply> {
        Ok(redirect_cni::client::call(&self.socket, self.timeout, request)?)
    }

    /// Enrolls a pod: its id and the dataplane the agent chose.
    pub fn enroll(&self, pod: EnrollRequest) -> anyhow::Result<(PodId, Dataplane)> {
        match self.call(&Request::Enroll { pod })? {
            Reply::Enrolled { id, dataplane } => Ok((id, dataplane)),
            other => unexpected(other),
        }
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        match self.call(&Request::Remove { name: name.to_owned() })? {
            Reply::Removed => Ok(()),
            other => unexpected(other),
        }
    }

    pub fn status(&self) -> anyhow::Result<Status> {
        match self.call(&Request::Status)? {
            Reply::Status(status) => Ok(*status),
            other => unexpected(other),
        }
    }

    /// Applies the MeshConfig: the pods that could not take it (degraded).
    pub fn reload(&self, path: Option<PathBuf>) -> anyhow::Result<Vec<Degraded>> {
        match self.call(&Request::Reload { path })? {
            Reply::Reloaded { degraded } => Ok(degraded),
            other => unexpected(other),
        }
    }

    pub fn uninstall(&self) -> anyhow::Result<()> {
        match self.call(&Request::Uninstall)? {
            Reply::Uninstalled => Ok(()),
            other => unexpected(other),
        }
    }

    pub fn explain(&self, pod: String, query: Query) -> anyhow::Result<Explanation> {
        match self.call(&Request::Explain { pod, query })? {
            Reply::Explanation(e) => Ok(*e),
            other => unexpected(other),
        }
    }

    pub fn diagnose(&self, pod: Option<String>) -> anyhow::Result<Vec<Check>> {
        match self.call(&Request::Diagnose { pod })? {
            Reply::Checks { checks } => Ok(checks),
            other => unexpected(other),
        }
    }
}

fn unexpected<T>(reply: Reply) -> anyhow::Result<T> {
    bail!("the agent answered out of turn: {reply:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines a plugin of the release before the split sent and read
    /// (its DEL captured from its binary, the rest as its types serialised
    /// them): an agent of this one takes and answers them the same, so a
    /// node mid-upgrade keeps starting pods.
    #[test]
    fn the_plugins_lines_from_before_its_crate_split_are_still_understood() {
        let del: Request = serde_json::from_str(r#"{"request":"cni-del","container_id":"c1"}"#).unwrap();
        assert!(matches!(del, Request::Cni(CniRequest::CniDel { container_id }) if container_id == "c1"));
        let gc: Request = serde_json::from_str(r#"{"request":"cni-gc","valid":["a"]}"#).unwrap();
        assert!(matches!(gc, Request::Cni(CniRequest::CniGc { valid }) if valid == ["a"]));
        // The agent's own requests still come first.
        assert!(matches!(serde_json::from_str(r#"{"request":"status"}"#).unwrap(), Request::Status));
        let added = Response::Ok(Reply::Cni(CniReply::CniAdded(crate::cni::CniAdded::Enrolled {
            id: 3,
            dataplane: Dataplane::FsmInit.name().into(),
            note: None,
        })));
        assert_eq!(
            serde_json::to_string(&added).unwrap(),
            r#"{"ok":{"reply":"cni-added","outcome":"enrolled","id":3,"dataplane":"fsm-init"}}"#
        );
        let refused = serde_json::to_string(&Response::Error("no".into())).unwrap();
        assert_eq!(refused, r#"{"error":"no"}"#);
    }
}
