//! One request over the agent's control socket, with a bound on how long
//! the answer may take: the plugin's and the agent's CLI's shared path.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::wire::Response;

/// Why a request got no reply.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens on the socket, or the caller may not connect to it.
    Unreachable(String),
    /// The agent took the request but gave no answer in time (hung or
    /// overloaded).
    Unanswered(Duration),
    /// The agent answered with an error (it refused the request).
    Refused(String),
    /// The exchange broke off, or the answer was not one.
    Broken(String),
}

impl CallError {
    /// Whether the agent could not be asked at all, or gave no answer in
    /// time (where an agent that answered with an error is not this).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable(_) | CallError::Unanswered(_))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) | CallError::Refused(why) | CallError::Broken(why) => f.write_str(why),
            CallError::Unanswered(limit) => write!(f, "the agent did not answer within {} s", limit.as_secs()),
        }
    }
}

impl std::error::Error for CallError {}

/// Sends `request` to the agent on `socket` and reads its one answer;
/// `timeout` bounds each of the write and the read (none: as long as the
/// agent takes, for the CLI's `reload` of a large node).
pub fn call<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    socket: &Path,
    timeout: Option<Duration>,
    request: &Q,
) -> Result<R, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        CallError::Unreachable(match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!("permission denied on {}: the agent's control socket is root's only; run this as root", socket.display())
            }
            _ => format!("the agent is not running (no answer on {}: {e}); start it with `redirect-agent run`", socket.display()),
        })
    })?;
    let broken = |what: &str, e: &dyn std::fmt::Display| CallError::Broken(format!("{what}: {e}"));
    stream.set_read_timeout(timeout).map_err(|e| broken("the control socket", &e))?;
    stream.set_write_timeout(timeout).map_err(|e| broken("the control socket", &e))?;
    let mut line = serde_json::to_string(request).map_err(|e| broken("the request", &e))?;
    line.push('\n');
    // An agent that turns the caller away answers and closes at once,
    // maybe before the request is written: its answer is still there.
    let written = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    let timed_out = |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    if let (Some(limit), true) = (timeout, written.as_ref().err().is_some_and(timed_out) || read.as_ref().err().is_some_and(timed_out)) {
        return Err(CallError::Unanswered(limit));
    }
    if answer.is_empty() {
        written.map_err(|e| broken("writing to the agent", &e))?;
        read.map_err(|e| broken("reading the agent's answer", &e))?;
        return Err(CallError::Broken("the agent closed the connection without an answer".into()));
    }
    match serde_json::from_str(&answer).map_err(|e| broken("the agent's answer is not a reply", &e))? {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(CallError::Refused(e)),
    }
}
