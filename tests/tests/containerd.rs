//! A real runtime through the chain: Debian's containerd (with runc) runs a
//! container with `ctr run --cni`, through the primary network's conflist
//! into which the agent installed `fsm-redirect-cni`. ctr passes no
//! Kubernetes pod (no `K8S_POD_*` in CNI_ARGS), so this is the path of every
//! container on the node that is not a pod: it must get its network,
//! untouched, whatever the agent does.
//!
//! ctr reads the network from /etc/cni/net.d and the plugins from
//! /opt/cni/bin (go-cni's defaults; it has no flag for either), so the test
//! makes both, runs only where the machine has neither (a node's real
//! network configuration is never touched), and removes them; libcni
//! caches results under /var/lib/cni and ctr's shims keep their sockets
//! under /run/containerd, removed too (the test runs only where neither
//! is). ctr itself runs in the test's node namespace, so the bridge the
//! plugins make is there, not on the machine.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use redirect_agent::sandbox::enter_netns;
use serde_json::json;
use tests::{Node, eventually};

/// What go-cni reads, where libcni caches results, and where containerd's
/// shims put their sockets.
const GLOBAL_DIRS: [&str; 4] = ["/etc/cni", "/opt/cni", "/var/lib/cni", "/run/containerd"];

/// The machine-wide directories ctr needs, made by the test and removed
/// on drop. `None` where one exists already.
struct GlobalDirs;

impl GlobalDirs {
    fn make() -> Option<Self> {
        if let Some(found) = GLOBAL_DIRS.iter().find(|d| Path::new(d).exists()) {
            eprintln!("skipped: {found} exists on this machine, and the test leaves a node's CNI and containerd directories alone");
            return None;
        }
        let dirs = GlobalDirs;
        for dir in ["/etc/cni/net.d", "/opt/cni/bin"] {
            std::fs::create_dir_all(dir).unwrap();
        }
        Some(dirs)
    }
}

impl Drop for GlobalDirs {
    fn drop(&mut self) {
        for dir in GLOBAL_DIRS {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A containerd of the test's own: its root, state and socket in a temp
/// dir, the CRI plugin off (ctr needs none of it). Killed on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    namespace: String,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/sock\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("containerd").arg("--config").arg(&config).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let containerd = Containerd { child, dir, namespace: tests::unique("redirect-test-ctr") };
        assert!(
            eventually(Duration::from_secs(10), || containerd.ctr(&["version"]).status().is_ok_and(|s| s.success())),
            "containerd did not come up: {}",
            std::fs::read_to_string(containerd.dir.path().join("log")).unwrap_or_default()
        );
        containerd
    }

    /// ctr in the test's own containerd namespace (runc names its
    /// containers' cgroups after it).
    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.dir.path().join("sock")).args(["--namespace", &self.namespace]);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // runc leaves the namespace's group in every cgroup hierarchy (v1
        // ones too, on a hybrid layout) once its containers are gone.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for mount in mounts.lines().filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        }) {
            remove_groups(&mount.join(&self.namespace));
        }
    }
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
    let Some(_dirs) = GlobalDirs::make() else { return };
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

    let containerd = Containerd::start();
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
