//! A real runtime through the chain: Debian's containerd, with runc.
//!
//! `ctr run --cni` runs a container that is not a pod, through the primary
//! network's conflist into which the agent installed `fsm-redirect-cni`.
//! ctr passes no Kubernetes pod (no `K8S_POD_*` in CNI_ARGS), so this is
//! the path of every container on the node that is not a pod: it must get
//! its network, untouched, whatever the agent does.
//!
//! containerd's CRI plugin, driven over its gRPC API as the kubelet drives
//! it, runs a meshed pod: RunPodSandbox with the pod's metadata,
//! annotations and cgroup parent (the pod's group made first, as the
//! kubelet makes it), which runs the chain; then the app's container,
//! whose first connection must reach the proxy.
//!
//! ctr reads the network from /etc/cni/net.d and the plugins from
//! /opt/cni/bin (go-cni's defaults; it has no flag for either), so its
//! test makes both; the CRI plugin takes its dirs from its config. libcni
//! caches results under /var/lib/cni and the shims keep their sockets
//! under /run/containerd whatever the config says. A test runs only where
//! the machine-wide directories it needs are absent (a node's real network
//! configuration is never touched), and removes them. containerd runs in
//! the test's node namespace, so the bridge the plugins make is there, not
//! on the machine.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use k8s_cri::v1 as cri;
use redirect_agent::sandbox::{Netns, enter_netns};
use serde_json::{Value, json};
use tests::{APP_UID, Driver, Kubelet, Node, PROXY_UID, Pod, eventually, scaled};

/// Where libcni caches results and where containerd's shims put their
/// sockets, whatever containerd's config says.
const CACHES: [&str; 2] = ["/var/lib/cni", "/run/containerd"];

/// The tests make and remove the same machine-wide directories: one at a
/// time.
static MACHINE_WIDE: Mutex<()> = Mutex::new(());

/// The machine-wide directories a test needs, made by it and removed on
/// drop. `None` where one exists already.
struct GlobalDirs {
    remove: Vec<&'static str>,
    _serial: MutexGuard<'static, ()>,
}

impl GlobalDirs {
    /// The caches, and `tops` (made, with `make` below them).
    fn make(tops: &[&'static str], make: &[&str]) -> Option<Self> {
        let serial = MACHINE_WIDE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let remove: Vec<&'static str> = CACHES.iter().chain(tops).copied().collect();
        if let Some(found) = remove.iter().find(|d| Path::new(d).exists()) {
            eprintln!("skipped: {found} exists on this machine, and the test leaves a node's CNI and containerd directories alone");
            return None;
        }
        let dirs = GlobalDirs { remove, _serial: serial };
        for dir in make {
            std::fs::create_dir_all(dir).unwrap();
        }
        Some(dirs)
    }
}

impl Drop for GlobalDirs {
    fn drop(&mut self) {
        for dir in &self.remove {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The CRI plugin's settings.
struct CriConfig<'a> {
    sandbox_image: &'a str,
    cni_conf_dir: &'a Path,
    cni_bin_dir: &'a Path,
    /// The cgroup tree the pods go in (the kubelet's root, relative to the
    /// hierarchies' roots): runc makes it in every cgroup-v1 hierarchy too,
    /// and leaves it there.
    cgroup_root: &'a str,
}

/// A containerd of the test's own: its root, state, socket and `opt`
/// directory in a temp dir; the CRI plugin only if asked for. On drop: its
/// pods removed (CRI), containerd and its shims killed, the cgroups and
/// network namespaces it made removed.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    namespace: String,
    cri: Option<Cri>,
    /// runc's cgroup trees: each in every hierarchy.
    cgroups: Vec<String>,
    /// The network namespaces there were before (the CRI's are `cni-*`).
    netns_before: BTreeSet<String>,
}

impl Containerd {
    fn start(cri: Option<&CriConfig>, netns: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut config = format!("version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n");
        if cri.is_none() {
            config += "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";
        }
        config += &format!("[grpc]\n  address = \"{d}/sock\"\n");
        // Where it would make /opt/containerd otherwise.
        config += &format!("[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n");
        if let Some(c) = cri {
            // No AppArmor profile loaded; the native snapshotter, which
            // needs no overlayfs (nor a kernel module in the VM images).
            config += &format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{}\"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"native\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{}\"\n  conf_dir = \"{}\"\n",
                c.sandbox_image,
                c.cni_bin_dir.display(),
                c.cni_conf_dir.display()
            );
        }
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let netns_before = netns_names();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&path).stdout(Stdio::null()).stderr(log);
        // With setns, not `ip netns exec`: that remounts /sys, where runc
        // then finds no cgroup mount.
        enter_netns(&mut cmd, netns).unwrap();
        let child = cmd.spawn().unwrap();
        let namespace = if cri.is_some() { "k8s.io".to_owned() } else { tests::unique("redirect-test-ctr") };
        let mut cgroups = vec![namespace.clone()];
        cgroups.extend(cri.map(|c| c.cgroup_root.to_owned()));
        let mut containerd = Containerd { child, dir, namespace, cri: None, cgroups, netns_before };
        assert!(
            eventually(scaled(Duration::from_secs(10)), || containerd.ctr(&["version"]).status().is_ok_and(|s| s.success())),
            "containerd did not come up: {}",
            containerd.log()
        );
        if cri.is_some() {
            containerd.cri = Some(Cri::connect(&containerd.dir.path().join("sock")));
        }
        containerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// ctr in the test's containerd namespace (runc names its containers'
    /// cgroups after it; the CRI's is `k8s.io`).
    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.dir.path().join("sock")).args(["--namespace", &self.namespace]);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("containerd started with its CRI plugin")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The pods first, as the kubelet removes them: their containers
        // stopped, the chain's DEL run, their namespaces removed.
        if let Some(cri) = &mut self.cri {
            cri.remove_all_pods();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A shim outlives containerd: ours name its socket.
        let sock = self.dir.path().join("sock");
        for pid in processes_with_arg(&sock.display().to_string()) {
            // SAFETY: a plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // runc leaves its groups' parents in every cgroup hierarchy (v1
        // ones too, on a hybrid layout); the v2 ones left are the
        // kubelet's, which it removes itself.
        for (mount, v1) in cgroup_mounts() {
            for group in &self.cgroups {
                if v1 || *group == self.namespace {
                    remove_groups(&mount.join(group));
                }
            }
        }
        for name in netns_names().difference(&self.netns_before).filter(|n| n.starts_with("cni-")) {
            drop(Netns { name: name.clone() });
        }
    }
}

/// The names under /var/run/netns.
fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns").into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Every cgroup hierarchy's mount point, and whether it is v1.
fn cgroup_mounts() -> Vec<(PathBuf, bool)> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| (PathBuf::from(f[1]), f[2] == "cgroup"))
        })
        .collect()
}

/// The processes one of whose arguments is `arg`.
fn processes_with_arg(arg: &str) -> Vec<i32> {
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    procs
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Removes an empty group and the empty groups below it, deepest first.
fn remove_groups(group: &Path) {
    if let Ok(entries) = std::fs::read_dir(group) {
        for entry in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            remove_groups(&entry.path());
        }
        let _ = std::fs::remove_dir(group);
    }
}

/// containerd's CRI runtime service, as the kubelet calls it: gRPC over
/// the unix socket, each call bounded.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
}

impl Cri {
    fn connect(sock: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let sock = sock.to_owned();
        // The URI is unused: every connection is the socket.
        let endpoint = tonic::transport::Endpoint::from_static("http://[::]").timeout(scaled(Duration::from_secs(60)));
        let channel = rt
            .block_on(endpoint.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let sock = sock.clone();
                async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
            })))
            .expect("connecting to containerd's CRI");
        Cri { rt, client: cri::runtime_service_client::RuntimeServiceClient::new(channel) }
    }

    /// Whether the runtime says its network is ready (a CNI config loaded).
    fn network_ready(&mut self) -> bool {
        let status = self.rt.block_on(self.client.status(cri::StatusRequest { verbose: false }));
        status.is_ok_and(|s| s.into_inner().status.is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "NetworkReady" && c.status)))
    }

    /// Stops and removes every pod (best effort: for the fixture's drop).
    fn remove_all_pods(&mut self) {
        let Ok(pods) = self.rt.block_on(self.client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })) else { return };
        for pod in pods.into_inner().items {
            let _ = self.rt.block_on(self.client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }));
            let _ = self.rt.block_on(self.client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.id }));
        }
    }
}

/// Namespaces as the kubelet asks for them: the pod's network and IPC
/// shared, a PID namespace per container.
fn pod_namespaces() -> Option<cri::NamespaceOption> {
    Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// The name an OCI archive gives its image (containerd's annotation in its
/// index).
fn image_name(archive: &Path) -> String {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg("index.json").output().unwrap();
    assert!(out.status.success(), "reading {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
    let index: Value = serde_json::from_slice(&out.stdout).unwrap();
    index["manifests"][0]["annotations"]["io.containerd.image.name"].as_str().expect("an image name").to_owned()
}

/// A root filesystem holding Debian's static busybox.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    rootfs
}

#[test]
fn a_container_that_is_not_a_pod_runs_through_the_chain_with_its_network_untouched() {
    if !tests::requires(tests::Feature::Containerd) {
        return;
    }
    let Some(_dirs) = GlobalDirs::make(&["/etc/cni", "/opt/cni"], &["/etc/cni/net.d", "/opt/cni/bin"]) else { return };
    for plugin in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(Path::new(tests::CNI_BIN_DIR).join(plugin), Path::new("/opt/cni/bin").join(plugin)).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    // The primary network, as a node's CNI writes it; the agent chains its
    // plugin at the end and copies the binary next to the others.
    std::fs::write(
        "/etc/cni/net.d/10-primary.conflist",
        json!({"cniVersion": "1.0.0", "name": "primary", "plugins": [{
            "type": "bridge", "bridge": "ctrbr0", "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.249.7.0/24"}]], "dataDir": work.path().join("ipam")}}]})
        .to_string(),
    )
    .unwrap();
    let node =
        Node::start_with("kind: MeshConfig\nspec: {}\n", &["--cni-conf-dir", "/etc/cni/net.d", "--cni-bin-dir", "/opt/cni/bin"]).unwrap();
    let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read("/etc/cni/net.d/10-primary.conflist").unwrap()).unwrap();
    assert_eq!(conflist["plugins"][1]["type"], "fsm-redirect-cni", "{conflist}");
    assert!(Path::new("/opt/cni/bin/fsm-redirect-cni").exists());

    let containerd = Containerd::start(None, &node.ns.path());
    let rootfs = busybox_rootfs(work.path());
    let mut run =
        containerd.ctr(&["run", "--rm", "--cni", "--rootfs", rootfs.to_str().unwrap(), "ctr-cni-1", "/bin/busybox", "ip", "-4", "addr"]);
    enter_netns(&mut run, &node.ns.path()).unwrap();
    let out = run.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ctr run: {stdout}\n{stderr}\n{}", node.agent_log());
    assert!(stdout.contains("inet 10.249.7.2/24"), "the container's network: {stdout}");
    assert!(stderr.contains("is not a Kubernetes pod"), "{stderr}");
    assert_eq!(node.status()["pods"].as_array().map(Vec::len), Some(0), "nothing enrolled");
    // `--rm`: the container and its network went (DEL through the chain).
    let list = containerd.ctr(&["containers", "list", "-q"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "");
    drop(containerd);
    let (ok, out) = node.cli(&["uninstall"]);
    assert!(ok, "{out}");
}

#[test]
fn a_meshed_pod_that_containerds_cri_runs_as_the_kubelet_asks_is_intercepted_from_its_first_connection() {
    if !tests::requires(tests::Feature::ContainerdCri) {
        return;
    }
    let Some(_dirs) = GlobalDirs::make(&[], &[]) else { return };
    let work = tempfile::tempdir().unwrap();
    let (conf_dir, bin_dir, logs) = (work.path().join("net.d"), work.path().join("bin"), work.path().join("pods"));
    for dir in [&conf_dir, &bin_dir, &logs] {
        std::fs::create_dir(dir).unwrap();
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(Path::new(tests::CNI_BIN_DIR).join(plugin), bin_dir.join(plugin)).unwrap();
    }
    std::fs::write(
        conf_dir.join("10-primary.conflist"),
        json!({"cniVersion": "1.0.0", "name": "primary", "plugins": [{
            "type": "bridge", "bridge": "cribr0", "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.249.8.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": work.path().join("ipam")}}]})
        .to_string(),
    )
    .unwrap();

    // The pod, as FSM's injector left it in `interceptionMode: none`, in
    // the list the agent reads; its group made as the kubelet makes it,
    // before the sandbox.
    let (namespace, name) = ("shop", "cart-cri");
    let uid = format!("7e1dc410-0000-4000-8000-{:012x}", std::process::id());
    let annotations = HashMap::from([("flomesh.io/outbound-port-exclusion-list".to_owned(), "6379".to_owned())]);
    let pods = work.path().join("pods.json");
    std::fs::write(
        &pods,
        json!({"kind": "PodList", "apiVersion": "v1", "items": [{"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "uid": uid, "annotations": annotations,
                         "labels": {"app": name, "fsm-proxy-uuid": "0b6c3f9e-6a4d-4f8e-9a51-3d5c1e2f7a10"}},
            "spec": {"containers": [{"name": "app", "image": "app"}, {"name": "sidecar", "image": "flomesh/pipy"}]}}]})
        .to_string(),
    )
    .unwrap();
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let pod_group = kubelet.pod(&uid);
    let mount = redirect_agent::cgroup::cgroup2_mount().unwrap();
    let cgroup_parent = Path::new("/").join(pod_group.strip_prefix(&mount).unwrap()).display().to_string();
    let (conf, bin) = (conf_dir.to_str().unwrap(), bin_dir.to_str().unwrap());
    let node = Node::start_with(
        "kind: MeshConfig\nspec: {}\n",
        &["--pods-file", pods.to_str().unwrap(), "--kubelet-cgroup-root", &kubelet.root, "--cni-conf-dir", conf, "--cni-bin-dir", bin],
    )
    .unwrap();

    let pause = tests::pause_image().unwrap();
    let image = image_name(&pause);
    let cri_config = CriConfig { sandbox_image: &image, cni_conf_dir: &conf_dir, cni_bin_dir: &bin_dir, cgroup_root: &kubelet.root };
    let mut containerd = Containerd::start(Some(&cri_config), &node.ns.path());
    let import = containerd.ctr(&["images", "import", "--snapshotter", "native", pause.to_str().unwrap()]).output().unwrap();
    assert!(import.status.success(), "importing the pause image: {}", String::from_utf8_lossy(&import.stderr));
    // The runtime reads the conflist the agent chained its plugin into.
    assert!(
        eventually(scaled(Duration::from_secs(20)), || containerd.cri().network_ready()),
        "the CRI's network is not ready: {}",
        containerd.log()
    );

    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid: uid.clone(), namespace: namespace.into(), attempt: 0 }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), namespace.to_owned()),
            ("io.kubernetes.pod.uid".to_owned(), uid.clone()),
        ]),
        annotations: annotations.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent,
            security_context: Some(cri::LinuxSandboxSecurityContext { namespace_options: pod_namespaces(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cri = containerd.cri();
    let run = cri.rt.block_on(
        cri.client.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: String::new() }),
    );
    let sandbox_id = match run {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => panic!("RunPodSandbox: {e}\n{}\n{}", containerd.log(), node.agent_log()),
    };
    let status = cri
        .rt
        .block_on(cri.client.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: sandbox_id.clone(), verbose: true }))
        .unwrap()
        .into_inner();
    let ip = status.status.as_ref().and_then(|s| s.network.as_ref()).map(|n| n.ip.clone()).unwrap();
    assert!(ip.starts_with("10.249.8."), "{:?}", status.status);
    let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .unwrap()
        .to_owned();

    // The chain ran at RunPodSandbox: the pod is enrolled with the group
    // the kubelet made, the namespace the runtime made, and the
    // annotations the runtime passed.
    let key = format!("{namespace}/{name}");
    let enrolled = node.status()["pods"].as_array().into_iter().flatten().find(|p| p["name"] == key).cloned();
    let enrolled = enrolled.unwrap_or_else(|| panic!("not enrolled at RunPodSandbox: {}", node.agent_log()));
    assert_eq!(enrolled["cgroup"], pod_group.display().to_string(), "{enrolled}");
    assert_eq!(enrolled["netns"], netns, "{enrolled}");
    assert_eq!(enrolled["attached"], true, "{enrolled}");
    assert_eq!(enrolled["excluded_ports"], 1, "the pod's annotations, from the runtime: {enrolled}");

    // The sidecar (netprobe's proxies) in a container group of the pod.
    let ns_name = Path::new(&netns).file_name().unwrap().to_string_lossy().into_owned();
    let mut pod = Pod::adopt(&key, &ip, Netns { name: ns_name }, kubelet.container(&pod_group, "sidecar"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();

    // The app's container, as the kubelet creates and starts it: its first
    // connection reaches the outbound proxy, which reads where it was
    // going.
    std::fs::create_dir(logs.join("app")).unwrap();
    let app = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
        command: vec!["/bin/busybox".into()],
        args: ["nc", "10.96.0.10", "80"].map(String::from).to_vec(),
        log_path: "app/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: pod_namespaces(),
                run_as_user: Some(cri::Int64Value { value: i64::from(APP_UID) }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = cri.rt.block_on(cri.client.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: sandbox_id.clone(),
        config: Some(app),
        sandbox_config: Some(sandbox_config),
    }));
    let container_id = created.unwrap_or_else(|e| panic!("CreateContainer: {e}")).into_inner().container_id;
    cri.rt.block_on(cri.client.start_container(cri::StartContainerRequest { container_id: container_id.clone() })).unwrap();
    let mut exited = None;
    let done = eventually(scaled(Duration::from_secs(20)), || {
        let status = cri
            .rt
            .block_on(cri.client.container_status(cri::ContainerStatusRequest { container_id: container_id.clone(), verbose: false }));
        exited = status.ok().and_then(|s| s.into_inner().status).filter(|s| s.state == cri::ContainerState::ContainerExited as i32);
        exited.is_some()
    });
    let log = std::fs::read_to_string(logs.join("app/0.log")).unwrap_or_default();
    assert!(done, "the app's container did not exit: {log}");
    assert_eq!(exited.map(|s| s.exit_code), Some(0), "{log}");
    // CRI log lines: TIME STREAM TAG MESSAGE.
    let said: Vec<&str> = log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect();
    assert_eq!(said, ["out 10.96.0.10:80"], "the app's first connection: {log}");
    assert!(node.counters(&pod).get("outbound_redirected").is_some_and(|n| *n >= 1), "{:?}", node.counters(&pod));
    // Inbound, from the node to the pod's address: the inbound proxy.
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));

    // The kubelet stops the pod, then removes it: DEL through the chain.
    pod.stop_listeners();
    cri.rt.block_on(cri.client.remove_container(cri::RemoveContainerRequest { container_id })).unwrap();
    cri.rt.block_on(cri.client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox_id.clone() })).unwrap();
    assert!(node.status()["pods"].as_array().is_some_and(|p| p.is_empty()), "removed at StopPodSandbox: {}", node.status());
    cri.rt.block_on(cri.client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox_id })).unwrap();
    assert!(!Path::new(&netns).exists(), "the runtime removed the pod's namespace");
    drop(pod);
    drop(containerd);
    let (ok, out) = node.cli(&["uninstall"]);
    assert!(ok, "{out}");
}
