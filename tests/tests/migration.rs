//! Moving a cluster from fsm-init to the agent, pod by pod: a node runs
//! pods of both kinds while their workloads are rolled (each new pod made
//! without fsm-init, each old one taken out of service, then deleted),
//! and clients keep dialling all along: the pods' own outbound
//! connections, and connections from another host to each pod in service.
//! Not one may be refused, escape its pod's proxy, or reach the proxy
//! with a wrong original destination.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use redirect_agent::sandbox::enter_maybe_cgroup;
use tests::{APP_UID, Backend, Node, Pod};

/// A pod manifest as FSM's injector leaves it: the sidecar, and fsm-init
/// or not.
fn manifest(dir: &std::path::Path, fsm_init: bool) -> PathBuf {
    let init = if fsm_init { "  initContainers:\n  - {name: fsm-init, command: [/bin/sh], args: [-c, iptables-restore]}\n" } else { "" };
    let path = dir.join(if fsm_init { "with-fsm-init.yaml" } else { "without.yaml" });
    std::fs::write(
        &path,
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {{fsm-proxy-uuid: 9c1}}\nspec:\n{init}  containers:\n  - {{name: app}}\n  - {{name: sidecar}}\n"),
    )
    .unwrap();
    path
}

/// A pod of a workload, as the rollout makes it: fsm-init's rules (its
/// init container ran), or the agent's programs.
fn pod(node: &Node, dir: &std::path::Path, fsm_init: bool) -> Pod {
    let pod = Pod::create(node).unwrap();
    if fsm_init {
        tests::run_fsm_init(&pod.ns, &pod.ip, &node.mesh_config, &[], Backend::Nft, false).unwrap();
    }
    let manifest = manifest(dir, fsm_init);
    node.enroll_with(&pod, &[], &["--pod-manifest", manifest.to_str().unwrap()]).unwrap();
    let dataplane = node.status()["pods"].as_array().unwrap().iter().find(|p| p["name"] == pod.name.as_str()).unwrap()["dataplane"].clone();
    assert_eq!(dataplane, if fsm_init { "fsm-init" } else { "ebpf" }, "{}", pod.name);
    pod
}

/// One dial the clients keep making: from a netns (and cgroup, as UID),
/// to an address, and the one answer that is right.
#[derive(Clone)]
struct Dial {
    netns: PathBuf,
    cgroup: Option<PathBuf>,
    uid: u32,
    to: String,
    want: String,
}

impl Dial {
    /// A process of `pod` dialling a service: its proxy's outbound listener.
    fn outbound(pod: &Pod) -> Self {
        let to = "10.96.0.10:80".to_owned();
        Dial { netns: pod.ns.path(), cgroup: pod.cgroup_path().map(Into::into), uid: APP_UID, want: format!("out {to}"), to }
    }

    /// Another host dialling `pod`'s app port: its proxy's inbound listener.
    fn inbound(node: &Node, pod: &Pod) -> Self {
        let to = format!("{}:8080", pod.ip);
        Dial { netns: node.ns.path(), cgroup: None, uid: 0, want: format!("in {to}"), to }
    }

    fn run(&self) -> String {
        let mut cmd = Command::new(tests::netprobe());
        cmd.args(["dial", &self.to]);
        enter_maybe_cgroup(&mut cmd, &self.netns, self.cgroup.as_deref(), self.uid).unwrap();
        let out = cmd.output().expect("netprobe");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    dials: u64,
    refused: Vec<String>,
    escaped: Vec<String>,
    wrong: Vec<String>,
}

#[test]
fn a_workload_rolled_from_fsm_init_to_the_agent_pod_by_pod_loses_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start("kind: MeshConfig\nspec: {}\n").unwrap();
    // Two workloads of two pods each, all made by fsm-init.
    let mut pods: Vec<Pod> = (0..4).map(|_| pod(&node, dir.path(), true)).collect();
    let in_service = |pods: &[Pod]| -> Vec<Dial> { pods.iter().flat_map(|p| [Dial::outbound(p), Dial::inbound(&node, p)]).collect() };
    // The dials in service, with a generation: a client that starts a
    // round of a generation has finished its rounds of the ones before.
    let dials = Arc::new(Mutex::new((0u64, in_service(&pods))));
    let started: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let (dials, started, tally, stop) = (dials.clone(), started.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (generation, round) = dials.lock().unwrap().clone();
                    started[i].store(generation, Ordering::SeqCst);
                    for d in round {
                        let got = d.run();
                        let mut t = tally.lock().unwrap();
                        t.dials += 1;
                        let what = format!("{} -> {}: {got}", d.netns.display(), d.to);
                        if got == d.want {
                        } else if got.starts_with("error") {
                            t.refused.push(what);
                        } else if got.starts_with("app ") || got.starts_with("direct ") {
                            t.escaped.push(what);
                        } else {
                            t.wrong.push(what);
                        }
                    }
                }
            })
        })
        .collect();
    // Puts `pods` in service, and waits until both clients dial only them.
    let serve = |pods: &[Pod]| {
        let generation = {
            let mut d = dials.lock().unwrap();
            *d = (d.0 + 1, in_service(pods));
            d.0
        };
        let all_started = || started.iter().all(|s| s.load(Ordering::SeqCst) >= generation);
        assert!(tests::eventually(std::time::Duration::from_secs(60), all_started), "the clients stopped");
    };

    // The rollout, pod by pod: the new pod (no fsm-init: the agent's) goes
    // into service, then an old one comes out of service and is deleted.
    for _ in 0..4 {
        let new = pod(&node, dir.path(), false);
        pods.push(new);
        serve(&pods);
        let old = pods.remove(0);
        serve(&pods);
        let (ok, out) = node.cli(&["remove", &old.name]);
        assert!(ok, "{out}");
        drop(old);
    }
    serve(&pods);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let t = tally.lock().unwrap();
    println!("{} dials: {} refused, {} escaped, {} wrong", t.dials, t.refused.len(), t.escaped.len(), t.wrong.len());
    assert!(t.dials >= 150, "too few dials to tell: {}", t.dials);
    assert!(
        t.refused.is_empty() && t.escaped.is_empty() && t.wrong.is_empty(),
        "refused {:?}\nescaped {:?}\nwrong {:?}",
        t.refused,
        t.escaped,
        t.wrong
    );
    let status = node.status();
    let dataplanes: Vec<&str> = status["pods"].as_array().unwrap().iter().map(|p| p["dataplane"].as_str().unwrap()).collect();
    assert_eq!(dataplanes, ["ebpf"; 4], "every pod moved to the agent");
}
