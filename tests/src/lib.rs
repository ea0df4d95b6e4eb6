//! Fixtures for the privileged integration tests: a node (private bpffs,
//! state directory, the agent as a child process, a "node" network
//! namespace holding the destinations) and pods (netns + cgroup + veth +
//! processes). Everything is removed by `Drop`, also when a test fails.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use redirect_agent::sandbox::{Bpffs, Cgroup, Children, Netns, enter_maybe_cgroup, enter_netns, veth};

pub mod kube_api;
pub mod sidecar;

pub const APP_UID: u32 = 1000;
pub const PROXY_UID: u32 = redirect_common::defaults::PROXY_UID;
/// Destinations that exist only inside the node namespace of a test.
pub const SERVICE_ADDRS: [&str; 4] = ["10.96.0.10", "10.96.0.11", "10.97.0.10", "10.98.0.10"];
/// Their IPv6 counterparts (unique local addresses).
pub const SERVICE_ADDRS6: [&str; 4] = ["fd00:96::10", "fd00:96::11", "fd00:97::10", "fd00:98::10"];
/// Ports the node namespace serves on every destination, both families.
pub const SERVICE_PORTS: [u16; 4] = [80, 6379, 7070, 8080];
/// The port an HTTP server of the node namespace serves on every destination.
pub const HTTP_PORT: u16 = 8000;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Deadlines stretch by `REDIRECT_TEST_TIME_SCALE` (the VM matrix runs
/// under software emulation, ten times slower).
pub fn scaled(d: Duration) -> Duration {
    let scale: u32 = std::env::var("REDIRECT_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    d * scale.max(1)
}

/// Polls `f` until it returns true or `limit` (scaled) has passed.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(limit);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// What some tests need of the machine.
#[derive(Clone, Copy, Debug)]
pub enum Feature {
    /// `bpf_sk_lookup.ingress_ifindex` (Linux 5.17): eBPF sees the
    /// interface a connection arrives on.
    SkLookupIngressIfindex,
    /// A machine that is not emulated (`REDIRECT_TEST_TIME_SCALE` unset):
    /// for the differential table with Envoy as the sidecar, which starts
    /// Envoy 26 times, over ten minutes under TCG. Its kernel side is the
    /// netprobe table's; the VM matrix runs Envoy in `real_proxies.rs`.
    NativeSpeed,
    /// Debian's CNI plugins (`containernetworking-plugins`, in
    /// /usr/lib/cni) and our `fsm-redirect-cni` next to the tests (the VM
    /// images carry neither).
    CniPlugins,
    /// Debian's containerd, ctr and runc, besides the CNI plugins.
    Containerd,
    /// util-linux's `unshare --cgroup` (busybox's, in the VM images, has
    /// no cgroup namespaces).
    UnshareCgroup,
    /// containerd as above, and the pause image `./x test` builds (see
    /// `pause_image`).
    ContainerdCri,
    /// The previous release's agent, which `./x test` builds from git
    /// (`xtask/src/previous.rs`).
    PreviousRelease,
    /// Atomic fetch-and-add in BPF (Linux 5.12): the per-pod hand-over.
    AtomicFetch,
}

impl Feature {
    pub fn available(self) -> bool {
        match self {
            Feature::SkLookupIngressIfindex => redirect_agent::ebpf::features::sees_ingress_interface(),
            Feature::NativeSpeed => scaled(Duration::from_secs(1)) == Duration::from_secs(1),
            Feature::CniPlugins => Path::new(CNI_BIN_DIR).join("bridge").exists() && try_workspace_bin("fsm-redirect-cni").is_some(),
            Feature::Containerd => {
                Feature::CniPlugins.available()
                    && ["containerd", "ctr", "runc", "containerd-shim-runc-v2"].iter().all(|tool| on_path(tool))
                    && Path::new("/bin/busybox").exists()
            }
            Feature::ContainerdCri => Feature::Containerd.available() && pause_image().is_some(),
            Feature::PreviousRelease => {
                std::env::var_os("REDIRECT_TEST_BINS").is_some_and(|d| Path::new(&d).join("redirect-agent-previous").exists())
            }
            Feature::AtomicFetch => redirect_agent::ebpf::features::has_atomic_fetch(),
            Feature::UnshareCgroup => {
                Command::new("unshare").arg("--help").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--cgroup"))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::SkLookupIngressIfindex => "sk_lookup-ingress_ifindex(5.17)",
            Feature::NativeSpeed => "native-speed(too slow under emulation; its kernel side runs in other tests)",
            Feature::CniPlugins => "cni-plugins(/usr/lib/cni from containernetworking-plugins)",
            Feature::Containerd => "containerd(Debian's containerd, runc and a static /bin/busybox)",
            Feature::UnshareCgroup => "unshare --cgroup(util-linux)",
            Feature::ContainerdCri => "containerd-cri(containerd, and the pause image that ./x test builds)",
            Feature::PreviousRelease => "previous-release(the agent that ./x test builds from git)",
            Feature::AtomicFetch => "atomic-fetch(BPF atomic fetch-and-add, 5.12: the per-pod hand-over)",
        }
    }
}

/// Whether `tool` is a file in one of `$PATH`'s directories (or /usr/sbin,
/// where Debian puts runc).
fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]).any(|dir| dir.join(tool).is_file())
}

/// `true` if the kernel has `feature`; otherwise records that the calling
/// test is skipped for it (the VM matrix reads `REDIRECT_SKIP_LOG`) and
/// returns `false`.
pub fn requires(feature: Feature) -> bool {
    if feature.available() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    eprintln!("skipped {test}: the kernel lacks {}", feature.name());
    if let Ok(log) = std::env::var("REDIRECT_SKIP_LOG") {
        use std::io::Write as _;
        // One write of the whole line: tests run two at a time, and an
        // O_APPEND write is not interleaved with another, where the pieces
        // of `writeln!` are (the matrix once read two tests' names joined).
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = f.write_all(format!("{test} {}\n", feature.name()).as_bytes());
        }
    }
    false
}

/// A short name unique to this process and call (interface and netns names are short).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// A binary of the workspace, built in the same target directory as the
/// running binary.
fn workspace_bin(name: &str) -> PathBuf {
    try_workspace_bin(name).unwrap_or_else(|| panic!("{name} is missing next to the tests: build it first (`cargo build --bins`)"))
}

fn try_workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps, other binaries one up.
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    Some(dir.join(name)).filter(|bin| bin.exists())
}

/// The chained CNI plugin (run by the tests as root, as a runtime runs it).
pub fn cni_plugin_bin() -> PathBuf {
    workspace_bin("fsm-redirect-cni")
}

/// The test client and servers. Its proxies and apps run as other users
/// (UIDs 1500 and 1000), who may not reach a checkout under a private
/// directory (root's home is mode 0700 on Debian): `./x test` puts copies
/// of both binaries where they can and names the directory in
/// `REDIRECT_TEST_BINS`.
pub fn netprobe() -> PathBuf {
    match std::env::var_os("REDIRECT_TEST_BINS") {
        Some(dir) => PathBuf::from(dir).join("netprobe"),
        None => workspace_bin("netprobe"),
    }
}

/// The agent (see `netprobe` for `REDIRECT_TEST_BINS`: a test runs its
/// CLI as another user).
pub fn agent_bin() -> PathBuf {
    match std::env::var_os("REDIRECT_TEST_BINS") {
        Some(dir) => PathBuf::from(dir).join("redirect-agent"),
        None => workspace_bin("redirect-agent"),
    }
}

/// The sandbox (pause) image for containerd's CRI, an OCI archive that
/// `./x test` builds from Debian's static busybox and puts beside the
/// staged binaries (`REDIRECT_TEST_BINS`).
pub fn pause_image() -> Option<PathBuf> {
    let image = PathBuf::from(std::env::var_os("REDIRECT_TEST_BINS")?).join("pause.tar");
    image.exists().then_some(image)
}

/// Starts `cmd` and waits for it to print `listening`.
fn start_listener(mut cmd: Command) -> anyhow::Result<Child> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("spawning netprobe")?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line)?;
    if line.trim() != "listening" {
        let _ = child.kill();
        bail!("listener did not start: {line}");
    }
    Ok(child)
}

pub struct Node {
    pub agent: Option<Child>,
    // Unmounted before the state directory that holds its mount point goes.
    _bpffs: Bpffs,
    pub state_dir: tempfile::TempDir,
    pub bpffs_dir: PathBuf,
    pub mesh_config: PathBuf,
    pub ns: Netns,
    /// The destinations' servers, killed on drop.
    _servers: Children,
    run_args: Vec<String>,
    /// Extra environment of the agent from its next start (a `PATH` with a
    /// failing `iptables-restore` in front, say).
    pub agent_env: Vec<(String, String)>,
    /// A command the agent runs under from its next start (`unshare -C`:
    /// in a cgroup namespace of its own, as in a container).
    pub agent_wrapper: Vec<String>,
    /// Another agent binary (an earlier release's) for the agent and the
    /// CLI, from its next start; `None`: this tree's.
    pub agent_program: Option<PathBuf>,
}

impl Node {
    /// A node whose agent reads `mesh_yaml` (written to a file it follows).
    pub fn start(mesh_yaml: &str) -> anyhow::Result<Self> {
        Self::start_with(mesh_yaml, &[])
    }

    /// With extra `redirect-agent run` arguments.
    pub fn start_with(mesh_yaml: &str, run_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_program(None, mesh_yaml, run_args)
    }

    /// With `program` as the agent (an earlier release's).
    pub fn start_program(program: Option<PathBuf>, mesh_yaml: &str, run_args: &[&str]) -> anyhow::Result<Self> {
        let state_dir = tempfile::Builder::new().prefix("redirect-test-").tempdir()?;
        let bpffs = Bpffs::mount(&state_dir.path().join("bpffs"))?;
        let mesh_config = state_dir.path().join("mesh.yaml");
        std::fs::write(&mesh_config, mesh_yaml)?;
        let ns = Netns::create(&unique("n"))?;
        // Addresses usable at once, without duplicate address detection.
        ns.sysctls(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        for addr in SERVICE_ADDRS {
            ns.exec(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        }
        for addr in SERVICE_ADDRS6 {
            ns.exec(&["addr", "add", &format!("{addr}/128"), "dev", "lo"])?;
        }
        // The node routes between its pods, as a node does.
        ns.sysctls(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        let mut procs = Children::default();
        let servers = SERVICE_PORTS.iter().map(|p| ("serve", *p)).chain([("http", HTTP_PORT)]);
        for (kind, port) in servers {
            let mut cmd = Command::new(netprobe());
            // Dual-stack: every destination of both families.
            cmd.args([kind, &format!("[::]:{port}"), "direct"]);
            enter_netns(&mut cmd, &ns.path())?;
            procs.push(start_listener(cmd)?);
        }
        let mut node = Node {
            agent: None,
            bpffs_dir: bpffs.path.join("fsm-redirect"),
            state_dir,
            mesh_config,
            ns,
            _servers: procs,
            _bpffs: bpffs,
            run_args: run_args.iter().map(|a| a.to_string()).collect(),
            agent_env: Vec::new(),
            agent_wrapper: Vec::new(),
            agent_program: program,
        };
        node.start_agent()?;
        Ok(node)
    }

    fn program(&self) -> PathBuf {
        self.agent_program.clone().unwrap_or_else(agent_bin)
    }

    pub fn agent_cmd(&self) -> Command {
        let mut c = Command::new(self.program());
        c.env("RUST_LOG", "warn").arg("--state-dir").arg(self.state_dir.path()).arg("--bpffs-dir").arg(&self.bpffs_dir);
        c
    }

    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut cmd = match self.agent_wrapper.split_first() {
            None => self.agent_cmd(),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(self.program()).arg("--state-dir").arg(self.state_dir.path()).arg("--bpffs-dir").arg(&self.bpffs_dir);
                c
            }
        };
        cmd.arg("run");
        // On Kubernetes the MeshConfig comes from the API.
        if !self.run_args.iter().any(|a| a == "--kubernetes") {
            cmd.arg("--mesh-config").arg(&self.mesh_config);
        }
        cmd.args(&self.run_args);
        cmd.envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", "info");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().context("starting the agent")?;
        self.agent = Some(child);
        let sock = redirect_agent::state::State::socket(self.state_dir.path());
        let deadline = Instant::now() + scaled(Duration::from_secs(20));
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(status) = self.agent.as_mut().unwrap().try_wait()? {
                bail!("the agent exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("the agent did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.state_dir.path().join("agent.log")
    }

    /// What the agent has logged so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The agent's `status --output json`.
    /// A pod's kernel event counters (`status`), by name.
    pub fn counters(&self, pod: &Pod) -> std::collections::BTreeMap<String, u64> {
        let status = self.status();
        let entry = status["pods"].as_array().into_iter().flatten().find(|p| p["name"] == pod.name.as_str());
        entry.map(|p| serde_json::from_value(p["counters"].clone()).unwrap_or_default()).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        let (ok, out) = self.cli(&["status", "--output", "json"]);
        assert!(ok, "status: {out}");
        serde_json::from_str(&out).expect("status JSON")
    }

    /// `explain --output json` for a pod.
    pub fn explain(&self, pod: &Pod, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["explain", pod.name.as_str(), "--output", "json"];
        all.extend_from_slice(args);
        let (ok, out) = self.cli(&all);
        assert!(ok, "explain {args:?}: {out}");
        serde_json::from_str(&out).expect("explain JSON")
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Stops the agent and starts it again with other `run` arguments
    /// (interception goes on meanwhile).
    pub fn restart_agent_with(&mut self, run_args: &[&str]) -> anyhow::Result<()> {
        self.kill_agent();
        self.run_args = run_args.iter().map(|a| a.to_string()).collect();
        self.start_agent()
    }

    /// The agent's process id (for its resident memory).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Runs a CLI command against this node's agent: (success, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = self.agent_cmd().args(args).output().expect("running redirect-agent");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Rewrites the MeshConfig file and waits until the agent applied it.
    pub fn set_mesh_config(&self, yaml: &str) {
        std::fs::write(&self.mesh_config, yaml).unwrap();
        let (ok, out) = self.cli(&["reload"]);
        assert!(ok, "reload: {out}");
    }

    pub fn enroll(&self, pod: &Pod, annotations: &[&str]) -> anyhow::Result<()> {
        self.enroll_with(pod, annotations, &[])
    }

    /// With extra `enroll` arguments (e.g. `--dataplane iptables`).
    pub fn enroll_with(&self, pod: &Pod, annotations: &[&str], extra: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["enroll".to_string(), pod.name.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(["--netns".into(), pod.ns.path().display().to_string()]);
        if let Some(cg) = &pod.cgroup {
            args.extend(["--cgroup".into(), cg.path.display().to_string()]);
        }
        for a in annotations {
            args.extend(["--annotation".into(), (*a).to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = self.cli(&args);
        if !ok {
            bail!("enroll failed: {out}");
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Uninstall with the agent (or without it, if a test killed it).
        let _ = self.cli(&["uninstall"]);
        self.kill_agent();
    }
}

/// A pod: netns wired to the node namespace, a cgroup, an app server on
/// 8080 and a proxy on 15001 (outbound) and 15003 (inbound) as UID 1500.
/// A dual-stack pod has an IPv6 address too, and its servers and proxy
/// listen on `[::]` (both families).
pub struct Pod {
    pub name: String,
    pub ip: String,
    /// The pod's IPv6 address (`fd00:244:N::2`), for a dual-stack pod.
    pub ip6: Option<String>,
    /// N of the pod's subnets 10.244.N.0/24 and 10.245.N.0/24.
    net: u32,
    procs: Children,
    /// None where the machine has no cgroup v2.
    pub cgroup: Option<Cgroup>,
    pub ns: Netns,
}

static SUBNET: AtomicU32 = AtomicU32::new(1);

impl Pod {
    /// A pod with no processes (for scale: many enrolled pods).
    pub fn bare(node: &Node) -> anyhow::Result<Self> {
        let n = SUBNET.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let name = unique("b");
        let ns = Netns::create(&name)?;
        let cgroup = Some(Cgroup::create(&format!("redirect-test-{name}"))?);
        let ip = format!("10.246.{}.{}", n, 2);
        ns.exec(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        let _ = node;
        Ok(Pod { name: format!("test/{name}"), ip, ip6: None, procs: Children::default(), cgroup, ns, net: n })
    }

    /// A pod whose proxy uses FSM's default ports and UID.
    /// Waits (bounded) until the kernel has finished setting the pod's
    /// network up: no IPv6 address still tentative (duplicate address
    /// detection announces its end, and the agent, which follows each
    /// pod's network as the kernel announces changes, reads the pod again
    /// then: a test that changes something behind the agent's back and
    /// looks before any refresh waits for this first).
    pub fn wait_network_settled(&self) {
        let settled = eventually(Duration::from_secs(10), || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.ns.name, "ip", "-6", "addr", "show", "tentative"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
        });
        assert!(settled, "pod {}: IPv6 addresses still tentative", self.name);
    }

    pub fn create(node: &Node) -> anyhow::Result<Self> {
        use redirect_common::defaults::{INBOUND_PORT, OUTBOUND_PORT};
        Self::with_proxy(node, OUTBOUND_PORT, INBOUND_PORT, PROXY_UID)
    }

    pub fn with_proxy(node: &Node, outbound_port: u16, inbound_port: u16, proxy_uid: u32) -> anyhow::Result<Self> {
        let mut pod = Self::wired(node, false)?;
        pod.start_processes(outbound_port, inbound_port, proxy_uid)?;
        Ok(pod)
    }

    /// A pod with an IPv6 address (`fd00:244:N::2/64`, the node at `::1`,
    /// and the static link-local `fe80::2`, the node at `fe80::1`) besides
    /// its IPv4 one; its app, proxy and admin port listen on `[::]`.
    pub fn dual_stack(node: &Node) -> anyhow::Result<Self> {
        use redirect_common::defaults::{INBOUND_PORT, OUTBOUND_PORT};
        let mut pod = Self::wired(node, true)?;
        pod.start_processes(OUTBOUND_PORT, INBOUND_PORT, PROXY_UID)?;
        Ok(pod)
    }

    /// A pod whose network a CNI chain set up in `ns` (address `ip`), whose
    /// processes run in `container`, a cgroup below the one the pod was
    /// enrolled with (as the kubelet's containers do).
    pub fn adopt(name: &str, ip: &str, ns: Netns, container: Cgroup) -> Self {
        Pod { name: name.to_owned(), ip: ip.to_owned(), ip6: None, procs: Children::default(), cgroup: Some(container), ns, net: 0 }
    }

    /// A pod without processes yet, wired to the node (with IPv6 if asked).
    pub fn wired(node: &Node, ipv6: bool) -> anyhow::Result<Self> {
        let n = SUBNET.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let name = unique("p");
        let ns = Netns::create(&name)?;
        let cgroup = match redirect_agent::cgroup::cgroup2_mount() {
            Ok(_) => Some(Cgroup::create(&format!("redirect-test-{name}"))?),
            Err(_) => None,
        };
        if ipv6 {
            ns.sysctls(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        }
        let ip = format!("10.244.{n}.2");
        let node_if = format!("v{name}");
        veth(&ns, "eth0", &format!("{ip}/24"), &node.ns, &node_if, &format!("10.244.{n}.1/24"))?;
        ns.exec(&["route", "add", "default", "via", &format!("10.244.{n}.1")])?;
        let ip6 = if ipv6 {
            let ip6 = format!("fd00:244:{n}::2");
            ns.exec(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
            ns.exec(&["addr", "add", "fe80::2/64", "dev", "eth0", "nodad"])?;
            node.ns.exec(&["addr", "add", &format!("fd00:244:{n}::1/64"), "dev", &node_if, "nodad"])?;
            node.ns.exec(&["addr", "add", "fe80::1/64", "dev", &node_if, "nodad"])?;
            ns.exec(&["-6", "route", "add", "default", "via", &format!("fd00:244:{n}::1")])?;
            Some(ip6)
        } else {
            None
        };
        Ok(Pod { name: format!("test/{name}"), ip, ip6, procs: Children::default(), cgroup, ns, net: n })
    }

    /// The app on 8080, the proxy's listeners and its admin port 15010
    /// (on `[::]` in a dual-stack pod, on 0.0.0.0 otherwise).
    pub fn start_processes(&mut self, outbound_port: u16, inbound_port: u16, proxy_uid: u32) -> anyhow::Result<()> {
        self.start_app("serve", proxy_uid)?;
        let (out, inb) = (self.bind(outbound_port), self.bind(inbound_port));
        self.spawn_listener(&["proxy", &out, "out"], proxy_uid)?;
        self.spawn_listener(&["proxy", &inb, "in"], proxy_uid)?;
        Ok(())
    }

    /// The app on 8080 (a netprobe `serve` or `http` server) and the
    /// proxy's admin port 15010, which inbound interception leaves alone.
    pub fn start_app(&mut self, kind: &str, proxy_uid: u32) -> anyhow::Result<()> {
        let (app, admin) = (self.bind(8080), self.bind(15010));
        self.spawn_listener(&[kind, &app, "app"], APP_UID)?;
        self.spawn_listener(&["serve", &admin, "admin"], proxy_uid)
    }

    /// Where the pod's servers bind `port`: `[::]` (both families) in a
    /// dual-stack pod, 0.0.0.0 otherwise.
    fn bind(&self, port: u16) -> String {
        if self.ip6.is_some() { format!("[::]:{port}") } else { port.to_string() }
    }

    /// Starts `cmd` as a process of the pod running as `uid`, killed with
    /// the pod.
    pub fn spawn_sidecar(&mut self, mut cmd: Command, uid: u32) -> anyhow::Result<()> {
        enter_maybe_cgroup(&mut cmd, &self.ns.path(), self.cgroup_path(), uid)?;
        self.procs.push(cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?);
        Ok(())
    }

    /// `program` as a process of the pod running as `uid`.
    pub fn command(&self, program: &str, uid: u32) -> Command {
        let mut cmd = Command::new(program);
        enter_maybe_cgroup(&mut cmd, &self.ns.path(), self.cgroup_path(), uid).unwrap();
        cmd
    }

    /// The node's link-local address on the pod's eth0, with its scope:
    /// `fe80::1%<index of eth0>` (a dual-stack pod).
    pub fn link_local_peer(&self) -> String {
        let out = Command::new("ip").args(["-n", &self.ns.name, "-o", "link", "show", "eth0"]).output().expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        let index = text.split(':').next().unwrap_or("").trim().to_owned();
        format!("fe80::1%{index}")
    }

    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(|c| c.path.as_path())
    }

    /// A second interface, `net1` (as Multus adds), with address
    /// 10.245.N.2/24 facing the node's 10.245.N.1. Returns the pod's address.
    pub fn add_net1(&self, node: &Node) -> anyhow::Result<String> {
        let n = self.net;
        let ip = format!("10.245.{n}.2");
        let node_if = format!("w{}", self.ns.name);
        veth(&self.ns, "net1", &format!("{ip}/24"), &node.ns, &node_if, &format!("10.245.{n}.1/24"))?;
        if self.ip6.is_some() {
            self.ns.exec(&["addr", "add", &format!("fd00:245:{n}::2/64"), "dev", "net1", "nodad"])?;
            node.ns.exec(&["addr", "add", &format!("fd00:245:{n}::1/64"), "dev", &node_if, "nodad"])?;
        }
        Ok(ip)
    }

    /// The pod's IPv6 address on net1 (a dual-stack pod, after `add_net1`).
    pub fn net1_ip6(&self) -> String {
        format!("fd00:245:{}::2", self.net)
    }

    /// The node's IPv6 address on the pod's net1 link.
    pub fn net1_peer6(&self) -> String {
        format!("fd00:245:{}::1", self.net)
    }

    /// The node's address on the pod's net1 link.
    pub fn net1_peer(&self) -> String {
        format!("10.245.{}.1", self.net)
    }

    /// Starts the proxy's inbound listener again (after `stop_listeners`).
    pub fn start_inbound_proxy(&mut self, inbound_port: u16, proxy_uid: u32) -> anyhow::Result<()> {
        self.start_proxy(&inbound_port.to_string(), "in", proxy_uid)
    }

    /// Starts a proxy listener on `bind` (`PORT` on 0.0.0.0, or
    /// `ADDR:PORT`) that answers `TAG <SO_ORIGINAL_DST>`.
    pub fn start_proxy(&mut self, bind: &str, tag: &str, proxy_uid: u32) -> anyhow::Result<()> {
        self.spawn_listener(&["proxy", bind, tag], proxy_uid)
    }

    /// Starts an inbound proxy listener that asks `SO_ORIGINAL_DST` only
    /// once the client has sent a line (netprobe `proxy-asked`).
    pub fn start_slow_inbound_proxy(&mut self, inbound_port: u16, proxy_uid: u32) -> anyhow::Result<()> {
        let bind = self.bind(inbound_port);
        self.spawn_listener(&["proxy-asked", &bind, "in"], proxy_uid)
    }

    /// Kills every listener of the pod (app, proxy).
    pub fn stop_listeners(&mut self) {
        self.procs = Children::default();
    }

    /// What a client on another host (the node namespace) gets when it
    /// connects to `to`.
    pub fn dial_from(netns: &Netns, to: &str) -> String {
        let mut cmd = Command::new(netprobe());
        cmd.args(["dial", to]);
        enter_netns(&mut cmd, &netns.path()).unwrap();
        let out = cmd.output().expect("running netprobe");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts `netprobe ARGS` in the pod as `uid`, once it listens.
    pub fn spawn_listener(&mut self, args: &[&str], uid: u32) -> anyhow::Result<()> {
        let mut cmd = Command::new(netprobe());
        cmd.args(args);
        enter_maybe_cgroup(&mut cmd, &self.ns.path(), self.cgroup_path(), uid)?;
        self.procs.push(start_listener(cmd)?);
        Ok(())
    }

    /// A netprobe listener in the pod's network namespace but outside its
    /// cgroup (not a process of the pod), killed with the pod.
    pub fn spawn_outside_cgroup(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new(netprobe());
        cmd.args(args);
        enter_netns(&mut cmd, &self.ns.path())?;
        self.procs.push(start_listener(cmd)?);
        Ok(())
    }

    /// netprobe with `args`, as a process of the pod (its netns and cgroup)
    /// running as `uid`.
    pub fn netprobe_cmd(&self, args: &[&str], uid: u32) -> Command {
        let mut cmd = Command::new(netprobe());
        cmd.args(args);
        enter_maybe_cgroup(&mut cmd, &self.ns.path(), self.cgroup_path(), uid).unwrap();
        cmd
    }

    /// Runs netprobe in the pod and returns its last line of output.
    pub fn netprobe(&self, args: &[&str], uid: u32) -> String {
        let out = self.netprobe_cmd(args, uid).output().expect("running netprobe");
        String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or("").to_owned()
    }

    pub fn dial_cmd(&self, to: &str, uid: u32, extra: &[&str]) -> Command {
        let mut cmd = Command::new(netprobe());
        cmd.args(["dial", to]).args(extra);
        enter_maybe_cgroup(&mut cmd, &self.ns.path(), self.cgroup_path(), uid).unwrap();
        cmd
    }

    /// What a process of the pod gets when it connects to `to`: the first
    /// line the other end wrote (`direct <addr>`, `app <addr>`,
    /// `out <original dst>`, `in <original dst>`), or `error: ...`.
    pub fn dial(&self, to: &str, uid: u32) -> String {
        let out = self.dial_cmd(to, uid, &[]).output().expect("running netprobe");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A loopback address for an agent's `--metrics-listen`, free right now.
/// A TCP counter of a network namespace, from the `TcpExt` rows of its
/// `/proc/net/netstat` (`TCPSynRetrans`, say), read by a process inside it.
pub fn tcp_ext(netns: &Netns, name: &str) -> u64 {
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/net/netstat");
    enter_netns(&mut cmd, &netns.path()).unwrap();
    let out = cmd.output().expect("reading /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (rows.next().expect("TcpExt names"), rows.next().expect("TcpExt values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name} in {text}"))
}

pub fn metrics_listen() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// The Prometheus text an agent serves on `listen`, HTTP status line first
/// (the endpoint comes up on a thread of its own: waited for, bounded).
pub fn metrics(listen: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut connected = None;
    eventually(Duration::from_secs(10), || {
        connected = std::net::TcpStream::connect(listen).ok();
        connected.is_some()
    });
    let mut s = connected.expect("the metrics endpoint");
    let mut body = String::new();
    match s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").and_then(|()| s.read_to_string(&mut body)) {
        Ok(_) => body,
        // Closed by an endpoint that is busy: no status line.
        Err(e) => format!("error: {e}"),
    }
}

/// Creates a map with the given definition and pins it at `path` (a
/// stand-in for a map an older agent pinned with another layout).
pub fn pin_new_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> anyhow::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let bpf = |cmd: libc::c_long, attr: &mut [u64; 8]| {
        // SAFETY: a zero-padded bpf_attr of 64 bytes.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
        if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc as i32) }
    };
    // Before 5.11 map memory counts against RLIMIT_MEMLOCK (aya raises it
    // for the agent the same way).
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit; failing leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    // { map_type, key_size }, { value_size, max_entries }
    let mut attr = [0u64; 8];
    attr[0] = u64::from(map_type) | u64::from(key_size) << 32;
    attr[1] = u64::from(value_size) | u64::from(max_entries) << 32;
    let fd = bpf(BPF_MAP_CREATE, &mut attr).context("BPF_MAP_CREATE")?;
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 8];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd as u64;
    let pinned = bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", path.display()));
    // SAFETY: our own descriptor; the pin holds the map from here on.
    unsafe { libc::close(fd) };
    pinned.map(drop)
}

/// The cgroups a kubelet with `--cgroup-root /<root>` (unique to the
/// test) makes, removed (deepest first) on drop.
pub struct Kubelet {
    driver: Driver,
    pub root: String,
    /// The QoS class's group, where pods go.
    qos: PathBuf,
    made: Vec<Cgroup>,
}

#[derive(Clone, Copy)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

impl Kubelet {
    /// The QoS parent the pods go in: burstable (cgroupfs), besteffort
    /// (systemd).
    pub fn new(driver: Driver) -> Self {
        // (No '-' in it: the systemd driver would write it '_'.)
        let root = unique("rtkubelet");
        let levels = match driver {
            Driver::Cgroupfs => vec![root.clone(), format!("{root}/kubepods"), format!("{root}/kubepods/burstable")],
            Driver::Systemd => {
                let a = format!("{root}.slice");
                let b = format!("{a}/{root}-kubepods.slice");
                let c = format!("{b}/{root}-kubepods-besteffort.slice");
                vec![a, b, c]
            }
        };
        let made: Vec<Cgroup> = levels.iter().map(|l| Cgroup::create(l).unwrap()).collect();
        Kubelet { driver, qos: made.last().unwrap().path.clone(), made, root }
    }

    /// Makes pod `uid`'s group, as the kubelet does before the sandbox;
    /// returns its path.
    pub fn pod(&mut self, uid: &str) -> PathBuf {
        let parent = self.qos.clone();
        let name = match self.driver {
            Driver::Cgroupfs => format!("pod{uid}"),
            Driver::Systemd => format!("{}-kubepods-besteffort-pod{}.slice", self.root, uid.replace('-', "_")),
        };
        let mount = redirect_agent::cgroup::cgroup2_mount().unwrap();
        let rel = parent.join(name).strip_prefix(&mount).unwrap().display().to_string();
        self.made.push(Cgroup::create(&rel).unwrap());
        mount.join(rel)
    }

    /// A container's group below pod group `pod` (removed before it).
    pub fn container(&self, pod: &Path, name: &str) -> Cgroup {
        let mount = redirect_agent::cgroup::cgroup2_mount().unwrap();
        Cgroup::create(&pod.join(name).strip_prefix(&mount).unwrap().display().to_string()).unwrap()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        while let Some(group) = self.made.pop() {
            drop(group);
        }
    }
}

/// The iptables backend an fsm-init image runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

/// Does what FSM's `fsm-init` init container does in the pod's network
/// namespace: `/bin/sh -c SCRIPT` with `POD_IP` set, where SCRIPT is FSM's
/// script for `mesh_config` and the pod's `annotations` (the agent's
/// emitter writes FSM's generator's text, byte for byte: see its golden
/// files), behind the guard of `deploy/fsm-init-guard` if `guarded`. Run
/// by `ip netns exec`, which mounts the namespace's own sysfs, as a
/// container has it. Its output.
pub fn run_fsm_init(
    ns: &Netns,
    pod_ip: &str,
    mesh_config: &Path,
    annotations: &[&str],
    backend: Backend,
    guarded: bool,
) -> anyhow::Result<String> {
    let mut print = Command::new(agent_bin());
    print.args(["iptables", "print", "--mesh-config"]).arg(mesh_config);
    for a in annotations {
        print.args(["--annotation", a]);
    }
    let out = print.output()?;
    if !out.status.success() {
        bail!("iptables print: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut script = String::from_utf8(out.stdout)?;
    if backend == Backend::Legacy {
        script = script.replacen("iptables-restore ", "iptables-legacy-restore ", 1);
    }
    if guarded {
        script.insert_str(0, redirect_agent::injection::GUARD);
    }
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "sh", "-c", &script]).env("POD_IP", pod_ip).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("fsm-init failed: {text}");
    }
    Ok(text)
}

/// The user chains of the namespace's nat table (nf_tables backend).
pub fn nat_chains(ns: &Netns) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "iptables-save", "-t", "nat"]).output().expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| !["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"].contains(c))
        .map(str::to_owned)
        .collect()
}
