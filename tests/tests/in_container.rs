//! The agent as the DaemonSet runs it: in a container, with a cgroup
//! namespace and a mount namespace of its own (deploy/daemonset.yaml).

use std::{process::Command, time::Duration};

use redirect_agent::sandbox::Cgroup;
use tests::{Node, Pod};

/// A cgroup namespace rooted at a group of the agent's own, as a
/// container's: a pod's processes then read as `/../<pod group>` in
/// /proc/PID/cgroup. The agent's check that every process of the pod's
/// netns is in the pod's cgroup must still see them there.
#[test]
fn in_a_cgroup_namespace_of_its_own_the_agent_still_places_pods_processes() {
    if !tests::requires(tests::Feature::UnshareCgroup) {
        return;
    }
    let mut node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    let own = Cgroup::create(&tests::unique("redirect-test-agent")).unwrap();
    node.kill_agent();
    // Into the group, then a cgroup namespace rooted there, then the agent.
    node.agent_wrapper = ["sh", "-c", "echo $$ > \"$0/cgroup.procs\" && exec unshare --cgroup \"$@\"", own.path.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    node.start_agent().unwrap();
    let pid = node.agent_pid().unwrap();
    let own_ns = std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(own_ns, std::fs::read_link("/proc/self/ns/cgroup").unwrap(), "the agent has a cgroup namespace of its own");

    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let out = node.agent_cmd().args(["diagnose", &pod.name, "--output", "json"]).output().unwrap();
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("diagnose JSON");
    let failed: Vec<_> = checks.iter().filter(|c| c["pass"] == false).collect();
    assert!(out.status.success() && failed.is_empty(), "{failed:#?}\n{}", node.agent_log());
    drop(pod);
    node.kill_agent();
    drop(node);
    drop(own);
}

/// On Kubernetes (`--kubernetes`) the agent never mounts a bpffs itself:
/// in its container that mount, and every pin, would go with it. Run in a
/// private mount namespace, so that a failing agent's mount would stay
/// there too.
#[test]
fn on_kubernetes_the_agent_refuses_to_mount_a_bpffs_of_its_own() {
    if redirect_agent::ebpf::pins::is_bpffs(std::path::Path::new("/sys/fs/bpf")).unwrap_or(true) {
        eprintln!("skipped: /sys/fs/bpf is a bpffs on this machine");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let api = tests::kube_api::FakeApi::start().unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(tests::agent_bin())
        .arg("--state-dir")
        .arg(state.path())
        .args(["run", "--kubernetes", "--node-name", "node-a", "--kubeconfig"])
        .arg(api.kubeconfig.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = tests::eventually(Duration::from_secs(30), || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(exited && !out.status.success(), "the agent ran: {stderr}");
    assert!(stderr.contains("/sys/fs/bpf: not a BPF file system. On Kubernetes the node must have mounted its own"), "{stderr}");
}
