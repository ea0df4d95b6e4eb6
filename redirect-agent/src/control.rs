//! The agent's control socket: one JSON request per line, one JSON response
//! per line, on `<state dir>/agent.sock` (root only, like the agent).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};

use crate::pod::PodSpec;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Enroll {
        pod: PodSpec,
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
        query: crate::diagnostics::Query,
    },
    Diagnose {
        pod: Option<String>,
    },
    /// Prometheus text.
    Metrics,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.sock")
}

/// Sends one request to the running agent.
pub fn call(state_dir: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path)
        .map_err(|e| anyhow!("the agent is not running (no answer on {}: {e}); start it with `redirect-agent run`", path.display()))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("writing to the agent")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).context("reading the agent's answer")?;
    match serde_json::from_str(&answer).context("the agent's answer is not JSON")? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(anyhow!(e)),
    }
}
