//! The agent's control protocol, on `<state dir>/agent.sock` (root only,
//! like the agent): one JSON [`Request`] per line, one JSON [`Response`] per
//! line, each request with its own typed [`Reply`], and the types those
//! carry. [`Client`] is the CLI's (and the demo's) side of it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use redirect_common::maps::PodId;

use crate::{
    dataplane::{Choice, Dataplane},
    pod::EnrollRequest,
    settings::ProxySettings,
    state::State,
};

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
    /// The CNI plugin's ADD: enroll the pod if FSM meshes it.
    CniAdd {
        add: crate::cni::CniAdd,
    },
    /// The CNI plugin's DEL: remove the pod its ADD enrolled, if any.
    CniDel {
        container_id: String,
    },
    /// The CNI plugin's CHECK: is the pod intercepted if FSM meshes it?
    CniCheck {
        container_id: String,
        pod: crate::cni::spec::KubernetesPod,
    },
    /// The CNI plugin's GC: remove the pods enrolled by ADDs of sandboxes
    /// other than these.
    CniGc {
        valid: Vec<String>,
    },
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
    CniAdded(crate::cni::CniAdded),
    CniDeleted {
        removed: bool,
    },
    CniChecked,
    /// The pods GC removed.
    CniCollected {
        removed: Vec<String>,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Ok(Reply),
    Error(String),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub id: PodId,
    pub name: String,
    pub dataplane: Dataplane,
    pub netns: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub attached: bool,
    /// Whether the pod's sockops program is attached right now (only while
    /// it needs it: see `programs::sockops_needed`).
    pub sockops: bool,
    /// Whether the pod's IPv6 is intercepted (its `--ipv6`, resolved).
    #[serde(default)]
    pub ipv6: bool,
    pub local_addrs: Vec<String>,
    pub excluded_cidrs: usize,
    pub included_cidrs: usize,
    pub excluded_ports: usize,
    /// Kernel event counters by name (eBPF pods).
    pub counters: BTreeMap<String, u64>,
    /// Why its last install failed, while it keeps what the kernel held
    /// before and is retried at each refresh.
    #[serde(default)]
    pub degraded: Option<String>,
    /// Its processes ran before the agent enrolled it (found by
    /// reconciling): connections they opened before are not intercepted.
    #[serde(default)]
    pub started_unintercepted: bool,
}

/// A pod whose install failed: it keeps its previous state, retried.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Degraded {
    pub pod: String,
    pub why: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub mesh_config: Option<PathBuf>,
    pub settings: ProxySettings,
    pub dataplane: Choice,
    pub ebpf_unavailable: Option<String>,
    pub pods: Vec<PodStatus>,
    /// Pods removed since the agent started because their netns was gone.
    #[serde(default)]
    pub removed_netns_gone: u64,
    /// Fill levels of the kernel maps.
    pub maps: Vec<MapFill>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "direction")]
pub enum Query {
    /// A process of the pod with `uid` connects to `to` (IPv4, IPv6, or
    /// IPv4-mapped: an IPv4 connection).
    Outbound { to: SocketAddr, uid: u32 },
    /// A connection from elsewhere to the pod's `port`, arriving on `iface`,
    /// over IPv6 or IPv4.
    Inbound {
        port: u16,
        iface: Option<String>,
        #[serde(default)]
        ipv6: bool,
    },
    /// A process of the pod sends UDP to `to` (the local DNS proxy's rule).
    Udp { to: SocketAddr },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// `redirect-outbound`, `redirect-inbound`, `redirect-dns-proxy` or
    /// `direct`.
    pub verdict: String,
    /// The row of the table that decided (outbound 1-10, inbound 1-4).
    pub rule: u8,
    pub reason: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    pub pod: String,
    pub dataplane: Dataplane,
    pub query: Query,
    /// From the configured lists.
    pub config: Decision,
    /// The list entry that matched, with where it came from.
    pub matched: Option<String>,
    /// How the destination was read (an IPv4-mapped address is IPv4).
    pub note: Option<String>,
    /// From the kernel's maps (eBPF pods).
    pub kernel: Option<Decision>,
    pub agrees: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub pod: String,
    pub check: String,
    pub pass: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(pod: &str, check: &str, detail: String) -> Self {
        Check { pod: pod.into(), check: check.into(), pass: true, detail, fix: None }
    }
    pub fn fail(pod: &str, check: &str, detail: String, fix: &str) -> Self {
        Check { pod: pod.into(), check: check.into(), pass: false, detail, fix: Some(fix.into()) }
    }
}

/// The agent could not be asked at all: nothing listens on its control
/// socket, or the caller may not connect to it. (An agent that answered
/// with an error is not this.)
#[derive(Debug)]
pub struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The agent took the request but gave no answer in time (a hung or
/// overloaded agent).
#[derive(Debug)]
pub struct Unanswered(pub std::time::Duration);

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the agent did not answer within {} s", self.0.as_secs())
    }
}

impl std::error::Error for Unanswered {}

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

    pub fn cni_add(&self, add: crate::cni::CniAdd) -> anyhow::Result<crate::cni::CniAdded> {
        match self.call(&Request::CniAdd { add })? {
            Reply::CniAdded(added) => Ok(added),
            other => unexpected(other),
        }
    }

    /// Whether there was a pod to remove.
    pub fn cni_del(&self, container_id: &str) -> anyhow::Result<bool> {
        match self.call(&Request::CniDel { container_id: container_id.to_owned() })? {
            Reply::CniDeleted { removed } => Ok(removed),
            other => unexpected(other),
        }
    }

    pub fn cni_check(&self, container_id: &str, pod: &crate::cni::spec::KubernetesPod) -> anyhow::Result<()> {
        match self.call(&Request::CniCheck { container_id: container_id.to_owned(), pod: pod.clone() })? {
            Reply::CniChecked => Ok(()),
            other => unexpected(other),
        }
    }

    /// The pods removed.
    pub fn cni_gc(&self, valid: Vec<String>) -> anyhow::Result<Vec<String>> {
        match self.call(&Request::CniGc { valid })? {
            Reply::CniCollected { removed } => Ok(removed),
            other => unexpected(other),
        }
    }

    /// Sends one request to the running agent.
    fn call(&self, request: &Request) -> anyhow::Result<Reply> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            Unreachable(match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    format!("permission denied on {}: the agent's control socket is root's only; run this as root", self.socket.display())
                }
                _ => format!("the agent is not running (no answer on {}: {e}); start it with `redirect-agent run`", self.socket.display()),
            })
        })?;
        stream.set_read_timeout(self.timeout)?;
        stream.set_write_timeout(self.timeout)?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        // An agent that turns the caller away answers and closes at once,
        // maybe before the request is written: its answer is still there.
        let written = stream.write_all(line.as_bytes());
        let mut answer = String::new();
        let read = BufReader::new(stream).read_line(&mut answer);
        let timed_out = |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
        if let (Some(limit), true) =
            (self.timeout, written.as_ref().err().is_some_and(timed_out) || read.as_ref().err().is_some_and(timed_out))
        {
            return Err(Unanswered(limit).into());
        }
        if answer.is_empty() {
            written.context("writing to the agent")?;
            read.context("reading the agent's answer")?;
        }
        match serde_json::from_str(&answer).context("the agent's answer is not a reply")? {
            Response::Ok(reply) => Ok(reply),
            Response::Error(e) => Err(anyhow!(e)),
        }
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
