//! The chained CNI plugin, `fsm-redirect-cni`, driven as a runtime drives a
//! conflist (the CNI spec: the environment, stdin, `prevResult` from one
//! plugin to the next, DEL in reverse order), after Debian's real `bridge`
//! plugin with `host-local` IPAM, in network namespaces and a
//! kubelet-shaped cgroup tree that each test makes and removes. The agent
//! learns which pods FSM meshes from a `PodList` file (`--pods-file`), or
//! from an in-process Kubernetes API server (`tests::kube_api`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use redirect_agent::sandbox::{Cgroup, Netns, enter_netns};
use serde_json::{Value, json};
use tests::{APP_UID, Driver, Kubelet, Node, PROXY_UID, Pod, eventually, scaled};

const NO_LISTS: &str = "kind: MeshConfig\nspec: {}\n";

/// The node the tests' pods run on.
const NODE_NAME: &str = "node-a";

/// A conflist (bridge + host-local, then ours) and what running it needs.
struct Chain {
    conflist: Value,
    /// Holds `fsm-redirect-cni` for `CNI_PATH`, and host-local's data.
    dir: tempfile::TempDir,
    /// The plugins run in the node's namespace (the bridge is made there).
    node_ns: PathBuf,
}

/// One plugin's outcome: exit status, stdout and stderr (the runtime's
/// log).
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl Chain {
    fn new(node: &Node, subnet: u8, ours: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(tests::cni_plugin_bin(), dir.path().join("fsm-redirect-cni")).unwrap();
        let bridge = json!({
            "type": "bridge",
            "bridge": format!("cnibr{subnet}"),
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.247.{subnet}.0/24")}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.path().join("ipam"),
            }
        });
        let mut ours = ours;
        ours["type"] = "fsm-redirect-cni".into();
        ours["capabilities"] = json!({"io.kubernetes.cri.pod-annotations": true});
        ours["socket"] = redirect_agent::state::State::socket(node.state_dir.path()).display().to_string().into();
        let conflist = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [bridge, ours]});
        Chain { conflist, dir, node_ns: node.ns.path() }
    }

    fn set(&mut self, key: &str, value: Value) {
        self.conflist["plugins"][1][key] = value;
    }

    /// One plugin, as libcni runs it.
    fn invoke(&self, plugin: &Value, command: &str, sandbox: &Sandbox, prev: Option<&Value>) -> Run {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if plugin["capabilities"]["io.kubernetes.cri.pod-annotations"] == true {
            conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": sandbox.annotations});
        }
        let kind = plugin["type"].as_str().unwrap();
        let bin = if kind == "fsm-redirect-cni" { self.dir.path().join(kind) } else { Path::new(tests::CNI_BIN_DIR).join(kind) };
        let mut cmd = Command::new(bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", sandbox.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{}:{}", tests::CNI_BIN_DIR, self.dir.path().display()))
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    sandbox.namespace, sandbox.name, sandbox.container_id, sandbox.uid
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        enter_netns(&mut cmd, &self.node_ns).unwrap();
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        eprintln!("{kind} {command}: {stderr}");
        Run { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(), stderr }
    }

    /// ADD through every plugin, each given the previous one's result: the
    /// last plugin's run (the final result, or the failure).
    fn add(&self, sandbox: &Sandbox) -> Run {
        let mut prev: Option<Value> = None;
        let plugins = self.conflist["plugins"].as_array().unwrap();
        for (i, plugin) in plugins.iter().enumerate() {
            let run = self.invoke(plugin, "ADD", sandbox, prev.as_ref());
            if !run.ok || i == plugins.len() - 1 {
                return run;
            }
            prev = Some(run.json());
        }
        unreachable!()
    }

    /// DEL through every plugin in reverse order, with the cached result:
    /// whether every one succeeded.
    fn del(&self, sandbox: &Sandbox, result: Option<&Value>) -> bool {
        let plugins = self.conflist["plugins"].as_array().unwrap();
        plugins.iter().rev().all(|p| self.invoke(p, "DEL", sandbox, result).ok)
    }

    fn ours(&self) -> Value {
        self.conflist["plugins"][1].clone()
    }
}

/// What the kubelet knows of a pod and what its runtime made for it.
struct Sandbox {
    namespace: String,
    name: String,
    uid: String,
    container_id: String,
    annotations: Value,
    ns: Netns,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let n = std::process::id() % 10_000;
        Sandbox {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("7e1d{n:04}-0000-4000-8000-{:012x}", rand_suffix()),
            container_id: format!("{:064x}", rand_suffix()),
            annotations: json!({}),
            ns: Netns::create(&tests::unique("cni")).unwrap(),
        }
    }

    /// Another sandbox for the same pod (the kubelet makes one when the
    /// first is lost).
    fn again(&self) -> Self {
        Sandbox {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            container_id: format!("{:064x}", rand_suffix() ^ 1),
            annotations: self.annotations.clone(),
            ns: Netns::create(&tests::unique("cni")).unwrap(),
        }
    }

    fn netns_path(&self) -> String {
        self.ns.path().display().to_string()
    }

    /// The pod's processes, in `container`: they see the namespace by
    /// another handle (the first one to go deletes it).
    fn pod(&self, ip: &str, container: Cgroup) -> Pod {
        Pod::adopt(&self.key(), ip, Netns { name: self.ns.name.clone() }, container)
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod as the API lists it; `meshed`: as FSM's injector leaves it
    /// in `interceptionMode: none` (its label and the `sidecar` container,
    /// no fsm-init).
    fn pod_object(&self, meshed: bool) -> Value {
        self.injected(if meshed { Injected::Sidecar } else { Injected::Nothing })
    }

    /// The pod as the API lists it, with what FSM's injector put in it.
    fn injected(&self, injected: Injected) -> Value {
        let mut labels = json!({"app": self.name});
        if injected != Injected::Nothing {
            labels["fsm-proxy-uuid"] = "0b6c3f9e-6a4d-4f8e-9a51-3d5c1e2f7a10".into();
        }
        let mut containers = vec![json!({"name": "app", "image": "app"})];
        if matches!(injected, Injected::Sidecar | Injected::FsmInit | Injected::Guarded) {
            containers.push(json!({"name": "sidecar", "image": "flomesh/pipy"}));
        }
        let script = "iptables-restore --noflush <<EOF\n*nat\nCOMMIT\nEOF\n";
        let init: Vec<Value> = match injected {
            Injected::FsmInit => vec![json!({"name": "fsm-init", "command": ["/bin/sh"], "args": ["-c", script]})],
            Injected::Guarded => vec![json!({"name": "fsm-init", "command": ["/bin/sh"],
                                            "args": ["-c", format!("{}{script}", redirect_agent::injection::GUARD)]})],
            _ => vec![],
        };
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid, "labels": labels,
                            "annotations": {"flomesh.io/outbound-port-exclusion-list": "6379"}},
               "spec": {"nodeName": NODE_NAME, "containers": containers, "initContainers": init}})
    }
}

/// What FSM's injector did to a pod.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Injected {
    /// Not meshed: no label.
    Nothing,
    /// The label and the sidecar (`interceptionMode: none`).
    Sidecar,
    /// The label, the sidecar and fsm-init (FSM's default).
    FsmInit,
    /// As FsmInit, with the guard of `deploy/fsm-init-guard`.
    Guarded,
    /// The label only (NodeLevel).
    LabelOnly,
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() & 0xffff_ffff_ffff
}

fn write_pods(path: &Path, pods: &[Value]) {
    std::fs::write(path, json!({"kind": "PodList", "apiVersion": "v1", "items": pods}).to_string()).unwrap();
}

/// A node whose agent reads the pods from a file (returned) and looks for
/// their cgroups under `kubelet`'s root.
fn node_with_pods(kubelet: &Kubelet, extra: &[&str]) -> (Node, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.json");
    write_pods(&pods, &[]);
    let mut args = vec!["--pods-file", pods.to_str().unwrap(), "--kubelet-cgroup-root", &kubelet.root];
    args.extend_from_slice(extra);
    let node = Node::start_with(NO_LISTS, &args).unwrap();
    (node, dir, pods)
}

fn enrolled(node: &Node, name: &str) -> Option<Value> {
    node.status()["pods"].as_array().into_iter().flatten().find(|p| p["name"] == name).cloned()
}

fn pod_ip(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

#[test]
fn a_meshed_pod_added_through_the_chain_is_intercepted_from_its_first_connect() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let mut sandbox = Sandbox::new("cart-0");
    let pod_group = kubelet.pod(&sandbox.uid);
    write_pods(&pods, &[sandbox.pod_object(true)]);
    sandbox.annotations = json!({"flomesh.io/outbound-port-exclusion-list": "6379"});
    let chain = Chain::new(&node, 41, json!({}));

    let add = chain.add(&sandbox);
    assert!(add.ok, "{}", add.stdout);
    // The bridge's result goes on unchanged.
    let result = add.json();
    let ip = pod_ip(&result);
    assert!(ip.starts_with("10.247.41."), "{result}");
    assert_eq!(result["interfaces"].as_array().map(Vec::len), Some(3), "{result}");
    let status = enrolled(&node, &sandbox.key()).expect("enrolled by ADD");
    assert_eq!(status["cgroup"], pod_group.display().to_string());
    assert_eq!(status["attached"], true, "{status}");
    assert_eq!(status["excluded_ports"], 1, "the runtime's annotations: {status}");

    // The containers start after ADD, in groups below the pod's.
    let mut pod = sandbox.pod(&ip, kubelet.container(&pod_group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));

    // ADD again for the same sandbox (a runtime retrying): still enrolled.
    let again = chain.invoke(&chain.ours(), "ADD", &sandbox, Some(&result));
    assert!(again.ok, "{}", again.stdout);
    assert_eq!(again.json(), result);

    // DEL: the pod is removed; a second DEL succeeds too. (The runtime
    // stops the containers first.)
    pod.stop_listeners();
    assert!(chain.del(&sandbox, Some(&result)));
    assert!(enrolled(&node, &sandbox.key()).is_none());
    // No programs, and no interface either (the bridge's DEL took it).
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "error: connect: Network is unreachable (os error 101)");
    assert!(chain.del(&sandbox, Some(&result)), "a repeated DEL");
}

#[test]
fn a_pod_fsm_does_not_mesh_is_left_alone() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let plain = Sandbox::new("db-0");
    let unknown = Sandbox::new("batch-0");
    let pod_group = kubelet.pod(&plain.uid);
    kubelet.pod(&unknown.uid);
    // db-0 is listed without the injector's label; batch-0 is not listed.
    write_pods(&pods, &[plain.pod_object(false)]);
    let chain = Chain::new(&node, 42, json!({}));
    let add = chain.add(&plain);
    assert!(add.ok, "{}", add.stdout);
    let ip = pod_ip(&add.json());
    let other = chain.add(&unknown);
    assert!(other.ok, "{}", other.stdout);
    assert_eq!(node.status()["pods"].as_array().map(Vec::len), Some(0));
    let mut pod = plain.pod(&ip, kubelet.container(&pod_group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    assert!(chain.del(&unknown, None));
    assert!(chain.del(&plain, None));
}

#[test]
fn with_the_agent_down_add_fails_so_the_kubelet_retries_unless_the_config_says_fail_open() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Systemd);
    let (mut node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let sandbox = Sandbox::new("cart-1");
    let pod_group = kubelet.pod(&sandbox.uid);
    write_pods(&pods, &[sandbox.pod_object(true)]);
    let mut chain = Chain::new(&node, 43, json!({}));
    node.kill_agent();

    let add = chain.add(&sandbox);
    assert!(!add.ok);
    let error = add.json();
    assert_eq!(error["code"], 11, "try again later: {error}");
    assert!(error["msg"].as_str().unwrap().contains("can't be reached"), "{error}");
    // The node's own pods are never held back: a namespace the entry
    // excludes passes without the agent.
    chain.set("excludeNamespaces", json!(["kube-system", "fsm-system"]));
    let coredns = Sandbox { namespace: "kube-system".into(), ..Sandbox::new("coredns-0") };
    let add = chain.add(&coredns);
    assert!(add.ok, "{}", add.stdout);
    assert!(chain.del(&coredns, None));
    assert!(!chain.add(&sandbox).ok, "a meshed pod elsewhere still waits for the agent");
    // The runtime cleans up after a failed ADD: DEL goes through every
    // plugin even with the agent down (which removes a pod once its netns
    // is gone), freeing the interface and address.
    assert!(chain.del(&sandbox, None));

    chain.set("failOpen", true.into());
    let open = chain.add(&sandbox);
    assert!(open.ok, "{}", open.stdout);
    assert!(open.json()["ips"].is_array());
    chain.set("failOpen", false.into());
    assert!(chain.del(&sandbox, None), "{}", node.agent_log());

    // The agent back: ADD enrolls, in the systemd driver's layout.
    node.start_agent().unwrap();
    let add = chain.add(&sandbox);
    assert!(add.ok, "{}", add.stdout);
    let status = enrolled(&node, &sandbox.key()).unwrap();
    assert_eq!(status["cgroup"], pod_group.display().to_string());

    // CHECK (0.4.0 and later): fine while intercepted, an error once not.
    let result = add.json();
    assert!(chain.invoke(&chain.ours(), "CHECK", &sandbox, Some(&result)).ok);
    let (removed, out) = node.cli(&["remove", &sandbox.key()]);
    assert!(removed, "{out}");
    let check = chain.invoke(&chain.ours(), "CHECK", &sandbox, Some(&result));
    assert!(!check.ok);
    assert_eq!(check.json()["code"], 101, "{}", check.stdout);
    assert!(chain.del(&sandbox, Some(&result)));
}

#[test]
fn a_pod_whose_sandbox_went_without_del_is_removed_and_the_others_survive_an_agent_restart() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (mut node, _dir, pods) = node_with_pods(&kubelet, &["--refresh-interval", "1"]);
    let kept = Sandbox::new("cart-2");
    let gone = Sandbox::new("cart-3");
    let kept_group = kubelet.pod(&kept.uid);
    kubelet.pod(&gone.uid);
    write_pods(&pods, &[kept.pod_object(true), gone.pod_object(true)]);
    let chain = Chain::new(&node, 44, json!({}));
    let add = chain.add(&kept);
    assert!(add.ok, "{}", add.stdout);
    let ip = pod_ip(&add.json());
    let add = chain.add(&gone);
    assert!(add.ok, "{}", add.stdout);

    // The agent restarts with both pods running: they stay intercepted.
    node.kill_agent();
    node.start_agent().unwrap();
    assert!(enrolled(&node, &kept.key()).is_some());
    let mut pod = kept.pod(&ip, kubelet.container(&kept_group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");

    // The runtime lost cart-3's sandbox without a DEL: its netns goes.
    let gone_key = gone.key();
    drop(gone);
    assert!(eventually(Duration::from_secs(10), || enrolled(&node, &gone_key).is_none()), "a pod whose netns is gone stays enrolled");
    assert!(enrolled(&node, &kept.key()).is_some());
    assert!(chain.del(&kept, None));
}

#[test]
fn a_new_sandbox_replaces_one_that_went_without_a_del_but_not_one_still_there() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let first = Sandbox::new("cart-4");
    kubelet.pod(&first.uid);
    write_pods(&pods, &[first.pod_object(true)]);
    let chain = Chain::new(&node, 45, json!({}));
    assert!(chain.add(&first).ok);
    let second = first.again();
    let refused = chain.add(&second);
    assert!(!refused.ok);
    assert_eq!(refused.json()["code"], 100, "{}", refused.stdout);
    assert!(chain.del(&second, None), "the runtime cleans up the failed ADD");

    // The first sandbox goes without a DEL reaching the agent.
    let key = first.key();
    drop(first);
    let add = chain.add(&second);
    assert!(add.ok, "{}", add.stdout);
    assert_eq!(enrolled(&node, &key).unwrap()["netns"], second.netns_path());
    assert!(chain.del(&second, Some(&add.json())));
    assert!(enrolled(&node, &key).is_none());
}

#[test]
fn the_agent_chains_the_plugin_in_the_primary_conflist_keeps_it_there_and_uninstall_takes_it_out() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (conf_dir, bin_dir) = (dir.path().join("net.d"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let primary = conf_dir.join("10-calico.conflist");
    let calico = r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"portmap"}]}"#;
    std::fs::write(&primary, calico).unwrap();
    let types = || -> Vec<String> {
        let v: Value = serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
        v["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap().to_owned()).collect()
    };
    let args = ["--cni-conf-dir", conf_dir.to_str().unwrap(), "--cni-bin-dir", bin_dir.to_str().unwrap(), "--refresh-interval", "1"];
    let wait_for_entry = || {
        let chained = eventually(Duration::from_secs(10), || types().last().map(String::as_str) == Some("fsm-redirect-cni"));
        assert!(chained, "the entry was not chained: {:?}", types());
    };
    // The agent starts before the primary CNI wrote its configuration (a
    // node booting): the binary is there at once, the entry once the file is.
    std::fs::remove_file(&primary).unwrap();
    let mut node = Node::start_with(NO_LISTS, &args).unwrap();
    let installed = bin_dir.join("fsm-redirect-cni");
    // The installed copy runs (a runtime finds it by its type).
    let version = Command::new(&installed).env("CNI_COMMAND", "VERSION").stdin(Stdio::null()).output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains("supportedVersions"), "{version:?}");
    std::fs::write(&primary, calico).unwrap();
    wait_for_entry();
    assert_eq!(types(), ["calico", "portmap", "fsm-redirect-cni"]);

    // The primary CNI writes its file again, without the entry: put back
    // at once (the conf dir is watched), not at the next refresh, which
    // comes after an hour here.
    node.restart_agent_with(&[&args[..4], &["--refresh-interval", "3600"]].concat()).unwrap();
    std::fs::write(&primary, calico).unwrap();
    wait_for_entry();
    assert_eq!(types(), ["calico", "portmap", "fsm-redirect-cni"]);
    assert!(node.agent_log().contains("chained again"), "{}", node.agent_log());
    // And a file it renames into place (as most writers do).
    let tmp = conf_dir.join(".10-calico.tmp");
    std::fs::write(&tmp, calico).unwrap();
    std::fs::rename(&tmp, &primary).unwrap();
    wait_for_entry();

    let (ok, out) = node.cli(&["uninstall"]);
    assert!(ok, "{out}");
    node.kill_agent();
    assert_eq!(types(), ["calico", "portmap"]);
    assert!(!installed.exists());
}

#[test]
fn the_plugin_speaks_the_cni_versions_and_reports_errors_as_the_spec_says() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let run = |env: &[(&str, &str)], stdin: &str| {
        let mut cmd = Command::new(tests::cni_plugin_bin());
        cmd.env_clear().envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write as _;
            // (The plugin may refuse before it reads.)
            let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().unwrap();
        (out.status.success(), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let (ok, v) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert!(ok);
    assert_eq!(v, json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}));
    let add = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/var/run/netns/none"), ("CNI_IFNAME", "eth0")];
    let (ok, v) = run(&add[..3], "{}");
    assert!(!ok);
    assert_eq!((v["code"].as_u64(), v["msg"].as_str().unwrap().contains("CNI_IFNAME")), (Some(4), true), "{v}");
    let (ok, v) = run(&add, "{not json");
    assert_eq!((ok, v["code"].as_u64()), (false, Some(6)), "{v}");
    let (ok, v) = run(&add, r#"{"cniVersion":"0.2.0","name":"n","type":"fsm-redirect-cni"}"#);
    assert_eq!((ok, v["code"].as_u64()), (false, Some(1)), "{v}");
    // First in a chain, or alone: there is no interface to pass on.
    let (ok, v) = run(&add, r#"{"cniVersion":"1.0.0","name":"n","type":"fsm-redirect-cni"}"#);
    assert_eq!((ok, v["code"].as_u64()), (false, Some(7)), "{v}");
    // A container that is not a Kubernetes pod (`ctr run --cni`: no
    // K8S_POD_* in CNI_ARGS) goes through untouched, without the agent.
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/none"}],
                      "ips": [{"address": "10.4.0.2/24", "interface": 0}]});
    let conf =
        json!({"cniVersion": "1.0.0", "name": "n", "type": "fsm-redirect-cni", "socket": "/nonexistent/agent.sock", "prevResult": prev});
    let (ok, v) = run(&add, &conf.to_string());
    assert_eq!((ok, &v), (true, &prev));
    // CHECK before 0.4.0 does not exist.
    let check = [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/var/run/netns/none"), ("CNI_IFNAME", "eth0")];
    let (ok, v) = run(&check, r#"{"cniVersion":"0.3.1","name":"n","type":"fsm-redirect-cni","prevResult":{}}"#);
    assert_eq!((ok, v["code"].as_u64()), (false, Some(1)), "{v}");
    // STATUS and GC (1.1.0): ready, and done, with the agent nowhere: an
    // agent that is down must not mark the node's network not ready.
    let conf11 = r#"{"cniVersion":"1.1.0","name":"n","type":"fsm-redirect-cni","socket":"/nonexistent/agent.sock"}"#;
    for command in ["STATUS", "GC"] {
        let out = Command::new(tests::cni_plugin_bin())
            .env_clear()
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(conf11.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success() && out.stdout.is_empty(), "{command}: {}", String::from_utf8_lossy(&out.stdout));
        let (ok, v) = run(&[("CNI_COMMAND", command)], &conf11.replace("1.1.0", "1.0.0"));
        assert_eq!((ok, v["code"].as_u64()), (false, Some(1)), "{command} before 1.1.0: {v}");
    }
}

#[test]
fn gc_removes_the_pods_of_sandboxes_the_runtime_no_longer_has() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let (kept, gone) = (Sandbox::new("cart-10"), Sandbox::new("cart-11"));
    kubelet.pod(&kept.uid);
    kubelet.pod(&gone.uid);
    write_pods(&pods, &[kept.pod_object(true), gone.pod_object(true)]);
    let chain = Chain::new(&node, 51, json!({}));
    for s in [&kept, &gone] {
        let add = chain.add(s);
        assert!(add.ok, "{}", add.stdout);
    }
    // A pod enrolled by hand is not the runtime's to name.
    let mut by_hand = Pod::create(&node).unwrap();
    node.enroll(&by_hand, &[]).unwrap();
    // GC with the runtime's attachments of this network: `gone`'s is not
    // among them (its sandbox went without a DEL that reached us).
    let mut gc = chain.ours();
    gc["cniVersion"] = "1.1.0".into();
    gc["name"] = chain.conflist["name"].clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": kept.container_id, "ifname": "eth0"}]);
    let out = Command::new(tests::cni_plugin_bin())
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", tests::CNI_BIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(gc.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(enrolled(&node, &kept.key()).is_some());
    assert!(enrolled(&node, &gone.key()).is_none(), "GC removed the pod of the sandbox the runtime no longer has");
    assert!(enrolled(&node, &by_hand.name).is_some());
    by_hand.stop_listeners();
    for s in [&kept, &gone] {
        assert!(chain.del(s, None));
    }
}

/// What a pod's app gets dialling each of these ports of 10.96.0.10:
/// "out" (through the proxy) or "direct".
fn verdicts(pod: &Pod, ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| {
            let got = pod.dial(&format!("10.96.0.10:{p}"), APP_UID);
            format!("{p} {}", got.split_whitespace().next().unwrap_or_default())
        })
        .collect()
}

fn expect(ports: &[(u16, &str)]) -> Vec<String> {
    ports.iter().map(|(p, v)| format!("{p} {v}")).collect()
}

#[test]
fn a_meshed_pod_running_before_the_agent_is_enrolled_by_reconciling_and_status_says_so() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Systemd);
    let (node, _dir, pods) = node_with_pods(&kubelet, &["--refresh-interval", "1"]);
    let chain = Chain::new(&node, 46, json!({}));
    let bridge = chain.conflist["plugins"][0].clone();
    // Both pods were set up by the primary CNI alone (the agent was not on
    // the node yet) and run.
    let meshed = Sandbox::new("cart-6");
    let plain = Sandbox::new("db-6");
    let mut running = Vec::new();
    for sandbox in [&meshed, &plain] {
        let group = kubelet.pod(&sandbox.uid);
        let add = chain.invoke(&bridge, "ADD", sandbox, None);
        assert!(add.ok, "{}", add.stdout);
        let mut pod = sandbox.pod(&pod_ip(&add.json()), kubelet.container(&group, "app"));
        pod.start_processes(15001, 15003, PROXY_UID).unwrap();
        assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80", "not intercepted yet");
        running.push((group, pod));
    }

    // The node's pods become known (here: the pods file; the API's watch
    // does the same): the meshed one is enrolled at the next refresh.
    write_pods(&pods, &[meshed.pod_object(true), plain.pod_object(false)]);
    assert!(eventually(Duration::from_secs(10), || enrolled(&node, &meshed.key()).is_some()), "{}", node.agent_log());
    let status = enrolled(&node, &meshed.key()).unwrap();
    assert_eq!(status["started_unintercepted"], true, "{status}");
    assert_eq!(status["netns"], meshed.netns_path(), "the runtime's netns, found by its processes");
    assert_eq!(status["cgroup"], running[0].0.display().to_string());
    assert_eq!(status["excluded_ports"], 1, "the pod's annotations: {status}");
    assert_eq!(verdicts(&running[0].1, &[80, 6379]), expect(&[(80, "out"), (6379, "direct")]));
    let (ok, table) = node.cli(&["status"]);
    assert!(ok && table.contains("started unintercepted"), "{table}");

    // The pod FSM does not mesh stays untouched.
    assert!(enrolled(&node, &plain.key()).is_none());
    assert_eq!(running[1].1.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");

    for ((_, mut pod), sandbox) in running.into_iter().zip([&meshed, &plain]) {
        pod.stop_listeners();
        assert!(chain.invoke(&bridge, "DEL", sandbox, None).ok);
    }
}

#[test]
fn a_meshed_pod_that_started_around_the_plugin_is_evicted_or_labelled_as_repair_says() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    use tests::kube_api::FakeApi;
    let api = FakeApi::start().unwrap();
    api.apply_mesh_config(json!({"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
                                 "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"}, "spec": {}}));
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let kubeconfig = api.kubeconfig.path().to_str().unwrap().to_owned();
    let args = |repair: &'static str| {
        let mut a = vec!["--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", NODE_NAME, "--kubelet-cgroup-root", &kubelet.root];
        a.extend(["--refresh-interval", "1", "--repair", repair]);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let (evict_args, label_args) = (args("evict"), args("label"));
    let mut node = Node::start_with(NO_LISTS, &evict_args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let mut chain = Chain::new(&node, 55, json!({}));
    chain.set("capabilities", json!({}));
    let bridge = chain.conflist["plugins"][0].clone();
    // A PodDisruptionBudget refuses the first eviction.
    api.refuse_evictions(1);

    // One pod through the plugin, one around it (the primary CNI alone set
    // its network up: an agent that was down, an entry not chained yet).
    let through = Sandbox::new("cart-13");
    api.apply_pod(through.pod_object(true));
    let through_group = kubelet.pod(&through.uid);
    let add = chain.add(&through);
    assert!(add.ok, "{}\n{}", add.stdout, node.agent_log());
    let started_around = |kubelet: &mut Kubelet, name: &str| {
        let sandbox = Sandbox::new(name);
        let group = kubelet.pod(&sandbox.uid);
        let add = chain.invoke(&bridge, "ADD", &sandbox, None);
        assert!(add.ok, "{}", add.stdout);
        let mut pod = sandbox.pod(&pod_ip(&add.json()), kubelet.container(&group, "app"));
        pod.start_processes(15001, 15003, PROXY_UID).unwrap();
        (sandbox, pod)
    };
    let (around, mut around_pod) = started_around(&mut kubelet, "cart-14");
    assert_eq!(around_pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80");
    api.apply_pod(around.pod_object(true));

    // Enrolled in place, then evicted: once refused, then again.
    let evictions = |sandbox: &Sandbox| -> Vec<Value> {
        let path = format!("/api/v1/namespaces/shop/pods/{}/eviction", sandbox.name);
        api.writes().into_iter().filter(|w| w.path == path).map(|w| w.body.unwrap_or_default()).collect()
    };
    let terminating = |sandbox: &Sandbox| api.pod("shop", &sandbox.name).is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string());
    assert!(eventually(Duration::from_secs(20), || terminating(&around)), "{:?}\n{}", api.writes(), node.agent_log());
    assert_eq!(enrolled(&node, &around.key()).unwrap()["started_unintercepted"], true);
    assert_eq!(around_pod.dial("10.96.0.10:80", APP_UID).split_whitespace().next(), Some("out"), "enrolled where it runs meanwhile");
    let sent = evictions(&around);
    assert_eq!(sent.len(), 2, "one refused by the budget, one accepted: {sent:?}");
    assert!(sent.iter().all(|b| b["deleteOptions"]["preconditions"]["uid"] == around.uid.as_str()), "{sent:?}");
    assert!(node.agent_log().contains("evicted it"), "{}", node.agent_log());

    // With `label`, after a restart: the evicted pod (terminating) is not
    // touched again, a new one started around is labelled, and the pod the
    // plugin enrolled never is.
    node.restart_agent_with(&label_args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let (labelled, mut labelled_pod) = started_around(&mut kubelet, "cart-15");
    api.apply_pod(labelled.pod_object(true));
    let has_label = |sandbox: &Sandbox| {
        api.pod("shop", &sandbox.name).is_some_and(|p| p["metadata"]["labels"]["fsm-redirect/started-unintercepted"] == "true")
    };
    assert!(eventually(Duration::from_secs(20), || has_label(&labelled)), "{:?}\n{}", api.writes(), node.agent_log());
    assert!(!terminating(&labelled));
    // Reconciles go on (one more pod started around is labelled in one of
    // them), and none repairs a pod twice.
    let (later, mut later_pod) = started_around(&mut kubelet, "cart-16");
    api.apply_pod(later.pod_object(true));
    assert!(eventually(Duration::from_secs(20), || has_label(&later)), "{:?}\n{}", api.writes(), node.agent_log());
    let patches: Vec<_> = api.writes().into_iter().filter(|w| w.path.ends_with(&format!("/pods/{}", labelled.name))).collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].method, "PATCH");
    assert_eq!(patches[0].body.as_ref().unwrap()["metadata"]["uid"], labelled.uid.as_str(), "the UID as a precondition");
    assert_eq!(evictions(&around).len(), 2, "{:?}", api.writes());
    assert!(api.writes().iter().all(|w| !w.path.contains(&format!("/pods/{}", through.name))), "{:?}", api.writes());
    assert_eq!(enrolled(&node, &through.key()).unwrap()["started_unintercepted"], false);

    for (sandbox, pod) in [(&around, &mut around_pod), (&labelled, &mut labelled_pod), (&later, &mut later_pod)] {
        pod.stop_listeners();
        assert!(chain.invoke(&bridge, "DEL", sandbox, None).ok);
    }
    let _ = through_group;
    assert!(chain.del(&through, Some(&add.json())));
}

#[test]
fn from_the_kubernetes_api_pods_and_the_meshconfig_are_watched_and_apply_live() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    use tests::kube_api::FakeApi;
    let api = FakeApi::start().unwrap();
    let mesh_config = |port: u16| {
        json!({"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
               "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"},
               "spec": {"traffic": {"outboundPortExclusionList": [port]}}})
    };
    api.apply_mesh_config(mesh_config(7070));
    let sandbox = Sandbox::new("cart-7");
    let mut object = sandbox.pod_object(true);
    api.apply_pod(object.clone());
    // A meshed pod of another node, that the field selector keeps away.
    let mut elsewhere = Sandbox::new("cart-8").pod_object(true);
    elsewhere["spec"]["nodeName"] = "node-b".into();
    api.apply_pod(elsewhere);

    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let kubeconfig = api.kubeconfig.path().to_str().unwrap().to_owned();
    let args = ["--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", NODE_NAME, "--kubelet-cgroup-root", &kubelet.root];
    let node = Node::start_with(NO_LISTS, &args).unwrap();
    let group = kubelet.pod(&sandbox.uid);
    let mut chain = Chain::new(&node, 47, json!({}));
    // This runtime passes no annotations: the agent takes the API's.
    chain.set("capabilities", json!({}));
    let add = chain.add(&sandbox);
    assert!(add.ok, "{}\n{}", add.stdout, node.agent_log());
    let mut pod = sandbox.pod(&pod_ip(&add.json()), kubelet.container(&group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    let ports = [80, 6379, 7070, 8080];
    assert_eq!(verdicts(&pod, &ports), expect(&[(80, "out"), (6379, "direct"), (7070, "direct"), (8080, "out")]));

    let requests = api.requests();
    let pods: Vec<_> = requests.iter().filter(|r| r.path == "/api/v1/pods").collect();
    assert!(pods.iter().all(|r| r.query.get("fieldSelector").map(String::as_str) == Some("spec.nodeName=node-a")), "{pods:?}");
    let meshes: Vec<_> = requests.iter().filter(|r| r.path.ends_with("/namespaces/fsm-system/meshconfigs")).collect();
    assert!(
        !meshes.is_empty()
            && meshes.iter().all(|r| r.query.get("fieldSelector").map(String::as_str) == Some("metadata.name=fsm-mesh-config"))
    );
    assert!(pods.iter().any(|r| r.is_watch() && r.query.get("allowWatchBookmarks").map(String::as_str) == Some("true")), "{pods:?}");
    assert!(enrolled(&node, "shop/cart-8").is_none());

    // A pod whose ADD comes before the watch delivered it: the ADD waits
    // for it (the kubelet saw it first), and enrolls it.
    let late = Sandbox::new("cart-10");
    kubelet.pod(&late.uid);
    let late_add = std::thread::scope(|s| {
        let adding = s.spawn(|| chain.add(&late));
        std::thread::sleep(Duration::from_millis(300));
        api.apply_pod(late.pod_object(true));
        adding.join().unwrap()
    });
    assert!(late_add.ok, "{}", late_add.stdout);
    assert!(enrolled(&node, &late.key()).is_some());
    assert!(chain.del(&late, Some(&late_add.json())));

    // The MeshConfig changes: applied live, and kept for a restart.
    api.apply_mesh_config(mesh_config(8080));
    let want = expect(&[(80, "out"), (6379, "direct"), (7070, "out"), (8080, "direct")]);
    assert!(eventually(Duration::from_secs(10), || verdicts(&pod, &ports) == want), "{:?}\n{}", verdicts(&pod, &ports), node.agent_log());

    // The pod's annotation changes: applied live.
    object["metadata"]["annotations"]["flomesh.io/outbound-port-exclusion-list"] = "80".into();
    api.apply_pod(object.clone());
    let want = expect(&[(80, "direct"), (6379, "out"), (7070, "out"), (8080, "direct")]);
    assert!(eventually(Duration::from_secs(10), || verdicts(&pod, &ports) == want), "{:?}\n{}", verdicts(&pod, &ports), node.agent_log());

    // A bookmark moves the watch on: the next watch starts from it.
    let bookmark = api.bookmark_pods();
    std::thread::sleep(Duration::from_millis(200));
    api.end_pod_watches();
    let from_bookmark = || {
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/pods" && r.is_watch() && r.query.get("resourceVersion") == Some(&bookmark.to_string()))
    };
    assert!(eventually(Duration::from_secs(10), from_bookmark), "{:?}", api.requests());

    // A change the watch never heard of, then 410 Gone: the agent lists
    // again and applies it.
    let lists_before = api.requests().iter().filter(|r| r.path == "/api/v1/pods" && !r.is_watch()).count();
    object["metadata"]["annotations"]["flomesh.io/outbound-port-exclusion-list"] = "6379".into();
    api.change_pod_unheard_then_expire(object.clone());
    let want = expect(&[(80, "out"), (6379, "direct"), (7070, "out"), (8080, "direct")]);
    assert!(eventually(Duration::from_secs(15), || verdicts(&pod, &ports) == want), "{:?}\n{}", verdicts(&pod, &ports), node.agent_log());
    assert!(api.requests().iter().filter(|r| r.path == "/api/v1/pods" && !r.is_watch()).count() > lists_before);

    pod.stop_listeners();
    assert!(chain.del(&sandbox, Some(&add.json())));
    assert!(enrolled(&node, &sandbox.key()).is_none());
}

/// The programs whose descriptors the process holds (what bpftool reads).
fn programs_held(pid: u32) -> std::collections::BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Default::default() };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:").and_then(|v| v.trim().parse().ok())))
        .collect()
}

#[test]
fn add_attaches_programs_verified_before_it_came() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let sandbox = Sandbox::new("cart-9");
    kubelet.pod(&sandbox.uid);
    write_pods(&pods, &[sandbox.pod_object(true)]);
    let chain = Chain::new(&node, 48, json!({}));
    // The agent verifies the next pods' programs while it waits, for the
    // next few pod ids. Waited for until every one is whole (`status`
    // says which are): the workers load several at once, and an ADD whose
    // instance is still loading waits for it, so a part of it would come
    // after `before`. (Counting the programs held was not enough on a
    // busy machine: the count was reached while one was still loading.)
    let pid = node.agent_pid().unwrap();
    let ahead = redirect_agent::ebpf::prewarm::AHEAD;
    let ready = || node.status()["prewarmed"].as_array().map_or(0, Vec::len);
    assert!(eventually(scaled(Duration::from_secs(20)), || ready() >= ahead), "{}", node.status());
    let before = programs_held(pid);

    let add = chain.add(&sandbox);
    assert!(add.ok, "{}", add.stdout);
    let id = enrolled(&node, &sandbox.key()).unwrap()["id"].as_u64().unwrap() as u32;
    let pins = redirect_agent::ebpf::pins::Pins::new(&node.bpffs_dir);
    for program in ["connect4", "connect6", "getsockopt", "sk_lookup"] {
        let link = redirect_agent::ebpf::link::get(&pins.link(id, program)).unwrap();
        let attached = redirect_agent::ebpf::link::info(std::os::fd::AsFd::as_fd(&link)).unwrap().prog_id;
        assert!(before.contains(&attached), "{program}: program {attached} was loaded by the ADD, not before it ({before:?})");
    }
    assert!(chain.del(&sandbox, Some(&add.json())));
}

#[test]
fn a_pod_fsm_gave_fsm_init_is_left_to_it_and_one_without_a_sidecar_or_in_fsms_own_modes_to_nobody() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &["--refresh-interval", "1"]);
    let with_init = Sandbox::new("cart-2");
    let node_level = Sandbox::new("cart-3");
    let pod_group = kubelet.pod(&with_init.uid);
    kubelet.pod(&node_level.uid);
    write_pods(&pods, &[with_init.injected(Injected::FsmInit), node_level.injected(Injected::LabelOnly)]);
    let chain = Chain::new(&node, 49, json!({}));

    // FSM's default: the ADD (before any init container) records the pod
    // as fsm-init's, and attaches nothing.
    let add = chain.add(&with_init);
    assert!(add.ok, "{}", add.stdout);
    let ip = pod_ip(&add.json());
    let status = enrolled(&node, &with_init.key()).expect("recorded by ADD");
    assert_eq!(status["dataplane"], "fsm-init", "{status}");
    assert_eq!(status["attached"], false, "fsm-init has not run yet: {status}");
    let mut pod = with_init.pod(&ip, kubelet.container(&pod_group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80", "the agent attached nothing");
    // Its init container runs: its rules alone intercept the pod.
    tests::run_fsm_init(&with_init.ns, &ip, &node.mesh_config, &[], tests::Backend::Nft, false).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"), "SO_ORIGINAL_DST from conntrack");
    assert!(
        eventually(Duration::from_secs(10), || enrolled(&node, &with_init.key()).is_some_and(|s| s["attached"] == true)),
        "status sees fsm-init's rules: {}",
        node.status()
    );
    let (ok, out) = node.cli(&["diagnose", &with_init.key()]);
    assert!(ok && out.contains("served by its own fsm-init") && out.contains("FSM_PROXY_INBOUND (iptables, nf_tables)"), "{out}");
    let (ok, out) = node.cli(&["status"]);
    assert!(ok && out.contains(&format!("{} is served by its own fsm-init (its rules are in place)", with_init.key())), "{out}");

    // Nothing of the agent's can hold back a pod fsm-init serves: one whose
    // cgroup the agent can't find (an eBPF pod's ADD would fail) starts.
    let elsewhere = Sandbox::new("cart-9");
    write_pods(
        &pods,
        &[with_init.injected(Injected::FsmInit), node_level.injected(Injected::LabelOnly), elsewhere.injected(Injected::FsmInit)],
    );
    let add = chain.add(&elsewhere);
    assert!(add.ok, "{}", add.stdout);
    assert_eq!(enrolled(&node, &elsewhere.key()).expect("recorded")["dataplane"], "fsm-init");

    // NodeLevel: the label, no sidecar: nothing would receive its traffic.
    let add = chain.add(&node_level);
    assert!(add.ok, "{}", add.stdout);
    assert!(enrolled(&node, &node_level.key()).is_none());
    assert!(node.agent_log().contains("no `sidecar` container"), "the ADD's answer says why");

    // interceptionMode ebpf (FSM v1.0-v1.4): FSM's own interceptor holds
    // meshed pods, sidecar or not.
    let ebpf_mode = Sandbox::new("cart-4");
    kubelet.pod(&ebpf_mode.uid);
    write_pods(&pods, &[with_init.injected(Injected::FsmInit), ebpf_mode.injected(Injected::Sidecar)]);
    node.set_mesh_config("spec:\n  traffic:\n    interceptionMode: ebpf\n");
    let add = chain.add(&ebpf_mode);
    assert!(add.ok, "{}", add.stdout);
    assert!(enrolled(&node, &ebpf_mode.key()).is_none());

    pod.stop_listeners();
    for s in [&ebpf_mode, &elsewhere, &node_level, &with_init] {
        assert!(chain.del(s, None));
    }
}

#[test]
fn a_guarded_fsm_init_steps_aside_where_the_agent_intercepts_and_applies_its_rules_where_it_could_not() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (mut node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let guarded = Sandbox::new("cart-5");
    let failed = Sandbox::new("cart-6");
    let pod_group = kubelet.pod(&guarded.uid);
    // No cgroup for cart-6 where the kubelet would put it: the agent can't
    // enroll it.
    write_pods(&pods, &[guarded.injected(Injected::Guarded), failed.injected(Injected::Guarded)]);
    let chain = Chain::new(&node, 50, json!({}));

    let add = chain.add(&guarded);
    assert!(add.ok, "{}", add.stdout);
    let ip = pod_ip(&add.json());
    assert_eq!(enrolled(&node, &guarded.key()).expect("enrolled")["dataplane"], "ebpf");
    let out = tests::run_fsm_init(&guarded.ns, &ip, &node.mesh_config, &[], tests::Backend::Nft, true).unwrap();
    assert_eq!(out, "fsm-init: fsm-redirect intercepts this pod; no iptables rules\n");
    assert!(tests::nat_chains(&guarded.ns).is_empty(), "no rules of fsm-init's: {:?}", tests::nat_chains(&guarded.ns));
    let mut pod = guarded.pod(&ip, kubelet.container(&pod_group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");

    // The agent fails the second pod: its ADD succeeds all the same, the
    // pod is fsm-init's, and the guard applies the rules.
    let add = chain.add(&failed);
    assert!(add.ok, "{}", add.stdout);
    let failed_ip = pod_ip(&add.json());
    assert_eq!(enrolled(&node, &failed.key()).expect("recorded")["dataplane"], "fsm-init");
    let out = tests::run_fsm_init(&failed.ns, &failed_ip, &node.mesh_config, &[], tests::Backend::Nft, true).unwrap();
    assert!(!out.contains("no iptables rules"), "{out}");
    assert!(tests::nat_chains(&failed.ns).contains(&"FSM_PROXY_INBOUND".to_owned()), "{:?}", tests::nat_chains(&failed.ns));

    // The agent down: a pod the policy guarded (and annotated) starts all
    // the same, and its fsm-init applies the rules; one it did not waits.
    let mut down = Sandbox::new("cart-7");
    down.annotations = json!({redirect_agent::injection::GUARD_ANNOTATION.0: redirect_agent::injection::GUARD_ANNOTATION.1});
    let unguarded = Sandbox::new("cart-8");
    node.kill_agent();
    let add = chain.add(&down);
    assert!(add.ok, "{}", add.stdout);
    let out = tests::run_fsm_init(&down.ns, &pod_ip(&add.json()), &node.mesh_config, &[], tests::Backend::Nft, true).unwrap();
    assert!(!out.contains("no iptables rules") && tests::nat_chains(&down.ns).contains(&"FSM_PROXY_INBOUND".to_owned()), "{out}");
    let add = chain.add(&unguarded);
    assert!(!add.ok && add.json()["code"] == 11, "{}", add.stdout);

    pod.stop_listeners();
    for s in [&unguarded, &down, &failed, &guarded] {
        assert!(chain.del(s, None));
    }
}

/// A node without cgroup v2 (cgroup v1 only): the agent, which sees no
/// cgroup2 file system (a mount namespace of its own without it), gives a
/// meshed pod fsm-init's rules at its ADD, before any container.
#[test]
fn on_a_node_without_cgroup_v2_add_gives_a_meshed_pod_fsm_inits_rules() {
    if !tests::requires(tests::Feature::CniPlugins) || !tests::requires(tests::Feature::UnshareCgroup) {
        return;
    }
    let cgroup2 = redirect_agent::cgroup::cgroup2_mount().unwrap();
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (mut node, _dir, pods) = node_with_pods(&kubelet, &[]);
    node.kill_agent();
    node.agent_wrapper =
        ["unshare", "-m", "--propagation", "slave", "--", "sh", "-c", &format!("umount -l {} && exec \"$@\"", cgroup2.display()), "sh"]
            .map(str::to_owned)
            .to_vec();
    node.start_agent().unwrap();
    assert!(node.status()["ebpf_unavailable"].as_str().unwrap_or_default().contains("cgroup"), "{}", node.status());
    let mut sandbox = Sandbox::new("cart-12");
    sandbox.annotations = json!({"flomesh.io/outbound-port-exclusion-list": "6379"});
    let pod_group = kubelet.pod(&sandbox.uid);
    write_pods(&pods, &[sandbox.pod_object(true)]);
    let chain = Chain::new(&node, 52, json!({}));
    let add = chain.add(&sandbox);
    assert!(add.ok, "{}", add.stdout);
    let ip = pod_ip(&add.json());
    assert_eq!(enrolled(&node, &sandbox.key()).expect("enrolled")["dataplane"], "iptables");
    let mut pod = sandbox.pod(&ip, kubelet.container(&pod_group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
    assert_eq!(pod.dial("10.96.0.10:6379", APP_UID), "direct 10.96.0.10:6379", "the pod's annotation");
    assert_eq!(Pod::dial_from(&node.ns, &format!("{ip}:8080")), format!("in {ip}:8080"));
    pod.stop_listeners();
    assert!(chain.del(&sandbox, None));
}

/// A hung agent (stopped: it takes connections into its backlog, answers
/// nothing): a meshed pod's ADD gives up after the entry's `timeoutSeconds`
/// with an error that says why, the node's own pods pass, and once the
/// agent goes on, the ADD the kubelet tries again enrolls the pod.
#[test]
fn a_hung_agent_fails_a_meshed_pods_add_after_the_entrys_timeout_with_an_error_that_says_so() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let (node, _dir, pods) = node_with_pods(&kubelet, &[]);
    let sandbox = Sandbox::new("cart-13");
    kubelet.pod(&sandbox.uid);
    write_pods(&pods, &[sandbox.pod_object(true)]);
    let chain = Chain::new(&node, 53, json!({"timeoutSeconds": 2, "excludeNamespaces": ["kube-system"]}));
    let pid = node.agent_pid().unwrap() as i32;
    // SAFETY: signals to the agent this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let add = chain.add(&sandbox);
    let coredns = Sandbox { namespace: "kube-system".into(), ..Sandbox::new("coredns-1") };
    let passed = chain.add(&coredns);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(!add.ok);
    let error = add.json();
    assert_eq!(error["code"], 11, "{error}");
    assert!(error["msg"].as_str().unwrap().contains("did not answer within 2 s"), "{error}");
    assert!(passed.ok, "{}", passed.stdout);
    assert!(chain.del(&sandbox, None));
    let again = chain.add(&sandbox);
    assert!(again.ok, "{}", again.stdout);
    assert!(enrolled(&node, &sandbox.key()).is_some());
    for s in [&coredns, &sandbox] {
        assert!(chain.del(s, None));
    }
}

/// A node booting before its control plane answers: the agent serves at
/// once (its control socket, the node's own pods through the plugin),
/// enrolls no meshed pod with FSM's defaults in place of the mesh's
/// MeshConfig (their ADDs fail and are retried), and does once the API
/// answers, with the API's lists.
#[test]
fn with_the_api_away_at_start_the_agent_serves_at_once_and_meshed_pods_wait_for_it() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    use tests::kube_api::FakeApi;
    // A port nobody listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let kubeconfig = FakeApi::kubeconfig_for(addr).unwrap();
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let path = kubeconfig.path().to_str().unwrap().to_owned();
    let args = ["--kubernetes", "--kubeconfig", &path, "--node-name", NODE_NAME, "--kubelet-cgroup-root", &kubelet.root];
    let node = Node::start_with(NO_LISTS, &args).unwrap();
    assert_eq!(node.status()["pods"].as_array().map(Vec::len), Some(0), "status answers without the API");
    let mut sandbox = Sandbox::new("cart-14");
    sandbox.annotations = json!({"flomesh.io/outbound-port-exclusion-list": "6379"});
    let group = kubelet.pod(&sandbox.uid);
    let chain = Chain::new(&node, 54, json!({"excludeNamespaces": ["kube-system"]}));
    let waiting = chain.add(&sandbox);
    assert!(!waiting.ok, "{}", waiting.stdout);
    assert!(waiting.stdout.contains("try again"), "{}", waiting.stdout);
    assert!(chain.del(&sandbox, None));
    let coredns = Sandbox { namespace: "kube-system".into(), ..Sandbox::new("coredns-2") };
    assert!(chain.add(&coredns).ok);

    // The API answers: the kubelet's next ADD enrolls the pod.
    let api = FakeApi::start_at(addr).unwrap();
    api.apply_mesh_config(json!({"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
        "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"},
        "spec": {"traffic": {"outboundPortExclusionList": [7070]}}}));
    api.apply_pod(sandbox.pod_object(true));
    let came = std::time::Instant::now();
    let mut result = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            let add = chain.add(&sandbox);
            if add.ok {
                result = Some(add.json());
            } else {
                chain.del(&sandbox, None);
            }
            add.ok
        }),
        "{}",
        node.agent_log()
    );
    println!("meshed pod enrolled {:.1} s after the API came back", came.elapsed().as_secs_f64());
    let mut pod = sandbox.pod(&pod_ip(result.as_ref().unwrap()), kubelet.container(&group, "app"));
    pod.start_processes(15001, 15003, PROXY_UID).unwrap();
    assert_eq!(verdicts(&pod, &[80, 6379, 7070]), expect(&[(80, "out"), (6379, "direct"), (7070, "direct")]), "the API's lists");
    pod.stop_listeners();
    for s in [&coredns, &sandbox] {
        assert!(chain.del(s, None));
    }
}

/// Where the runtime's own configuration says it looks elsewhere for CNI
/// plugins (GKE's containerd: /home/kubernetes/bin), the plugin is not
/// chained (its entry would fail every pod's ADD), and `diagnose` says
/// why; given the runtime's dirs, it is.
#[test]
fn the_plugin_is_chained_only_where_the_runtime_looks_for_it() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (conf_dir, bin_dir) = (dir.path().join("net.d"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let primary = conf_dir.join("10-bridge.conflist");
    std::fs::write(&primary, r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#).unwrap();
    let containerd = dir.path().join("config.toml");
    std::fs::write(&containerd, "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['/home/kubernetes/bin']\n")
        .unwrap();
    let args = [
        "--cni-conf-dir",
        conf_dir.to_str().unwrap(),
        "--cni-bin-dir",
        bin_dir.to_str().unwrap(),
        "--cni-runtime-config",
        containerd.to_str().unwrap(),
        "--refresh-interval",
        "1",
    ];
    let node = Node::start_with(NO_LISTS, &args).unwrap();
    let chained = || std::fs::read_to_string(&primary).unwrap().contains("fsm-redirect-cni");
    assert!(!chained());
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(!ok && out.contains("FAIL") && out.contains("looks for CNI plugins in /home/kubernetes/bin"), "{out}");
    // The runtime's configuration names these dirs (the DaemonSet's, as
    // docs/configuration.md has them per distribution).
    std::fs::write(
        &containerd,
        format!(
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['{}']\nconf_dir = '{}'\n",
            bin_dir.display(),
            conf_dir.display()
        ),
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), chained), "{}", node.agent_log());
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(ok && out.contains("CNI plugin chained"), "{out}");
    let (ok, out) = node.cli(&["uninstall"]);
    assert!(ok, "{out}");
}

/// After a reboot the MeshConfig kept in `/run` is gone: until the API
/// lists it, meshed pods wait (fail closed, saying why); where the API has
/// none, they get FSM's defaults, said in `status`, `diagnose` and the
/// ADD's answer.
#[test]
fn a_meshconfig_the_api_refuses_holds_meshed_pods_back_and_one_it_lacks_gives_fsms_defaults_said_so() {
    if !tests::requires(tests::Feature::CniPlugins) {
        return;
    }
    use tests::kube_api::FakeApi;
    let api = FakeApi::start().unwrap();
    api.forbid_mesh_configs(true);
    let mut kubelet = Kubelet::new(Driver::Cgroupfs);
    let path = api.kubeconfig.path().to_str().unwrap().to_owned();
    let args = ["--kubernetes", "--kubeconfig", &path, "--node-name", NODE_NAME, "--kubelet-cgroup-root", &kubelet.root];
    let node = Node::start_with(NO_LISTS, &args).unwrap();
    let sandbox = Sandbox::new("cart-15");
    kubelet.pod(&sandbox.uid);
    api.apply_pod(sandbox.pod_object(true));
    let chain = Chain::new(&node, 55, json!({}));
    let source = |node: &Node| node.status()["mesh_source"].clone();

    // Refused (RBAC without the rule): the ADD fails, to be retried, and
    // says why.
    assert!(eventually(scaled(Duration::from_secs(20)), || source(&node)["why"].as_str().is_some_and(|w| w.contains("forbidden"))));
    assert_eq!(source(&node)["from"], "unknown");
    let add = chain.add(&sandbox);
    assert!(!add.ok && add.stdout.contains("try again") && add.stdout.contains("refuses to list"), "{}", add.stdout);
    assert!(chain.del(&sandbox, None));
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(!ok && out.contains("MeshConfig") && out.contains("NOT KNOWN"), "{out}");
    assert!(enrolled(&node, &sandbox.key()).is_none());

    // Listed, and none there: FSM's defaults, said everywhere.
    api.forbid_mesh_configs(false);
    assert!(eventually(scaled(Duration::from_secs(20)), || source(&node)["from"] == "defaults"), "{}", node.agent_log());
    assert!(source(&node)["why"].as_str().is_some_and(|w| w.contains("fsm-system/fsm-mesh-config")), "{}", source(&node));
    let add = chain.add(&sandbox);
    assert!(add.ok, "{}", add.stdout);
    assert!(
        add.stderr.contains("enrolled with FSM's default MeshConfig (the API has no MeshConfig fsm-system/fsm-mesh-config)"),
        "{}",
        add.stderr
    );
    let (ok, out) = node.cli(&["diagnose"]);
    assert!(!ok && out.contains("FSM's defaults (the API has no MeshConfig"), "{out}");
    let (_, text) = node.cli(&["status"]);
    assert!(text.contains("MeshConfig: FSM's defaults"), "{text}");

    // The mesh's own: the API's, and the check passes.
    api.apply_mesh_config(json!({"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
        "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"}, "spec": {}}));
    assert!(eventually(scaled(Duration::from_secs(20)), || source(&node)["from"] == "api"), "{}", node.agent_log());
    let (_, out) = node.cli(&["diagnose", &sandbox.key()]);
    assert!(out.lines().any(|l| l.contains("MeshConfig") && l.contains("the API's fsm-system/fsm-mesh-config")), "{out}");
    assert!(chain.del(&sandbox, None));
}
