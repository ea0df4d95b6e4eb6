//! `redirect-agent demo`: a newcomer's first minute. Starts the agent on
//! FSM's default MeshConfig in its own state and bpffs directories, makes a
//! sandboxed pod (its own netns and cgroup), runs a small proxy in it on
//! 15001 as UID 1500 that prints the original destination of what it
//! receives, and an app that dials 10.96.0.10:80 every two seconds. The
//! service address exists only inside the demo's namespaces. Ctrl-C removes
//! the pod, the agent's pins and state, and every other trace.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    agent::AgentOptions,
    control::Client,
    pod::EnrollRequest,
    sandbox::{Bpffs, Cgroup, Children, Netns, enter, veth},
    settings::ProxySettings,
};

const SERVICE: &str = "10.96.0.10:80";

pub async fn run(log_decisions: bool) -> anyhow::Result<()> {
    // Before anything is made: a Ctrl-C during set-up (from `./x run` too,
    // which gets it as well) must not kill the demo before it cleans up.
    let mut stop = crate::daemon::Termination::catch()?;
    let tag = format!("fsm-demo-{}", std::process::id());
    let state_dir = PathBuf::from(format!("/run/{tag}"));
    // Declared first, dropped last: the namespaces, cgroup and bpffs outlive
    // the processes and programs in them.
    let bpffs = Bpffs::mount(&PathBuf::from(format!("/run/{tag}-bpffs")))?;
    let bpffs_dir = bpffs.path.join("fsm-redirect");
    let pod_ns = Netns::create(&tag)?;
    let svc_ns = Netns::create(&format!("{tag}-svc"))?;
    let cgroup = Cgroup::create(&tag)?;
    veth(&pod_ns, "eth0", "10.244.1.5/24", &svc_ns, "eth0", "10.244.1.1/24")?;
    svc_ns.exec(&["addr", "add", "10.96.0.10/32", "dev", "eth0"])?;
    pod_ns.exec(&["route", "add", "default", "via", "10.244.1.1"])?;

    let settings = ProxySettings { log_decisions, ..ProxySettings::default() };
    let opts = AgentOptions {
        state_dir: state_dir.clone(),
        bpffs_dir: bpffs_dir.clone(),
        mesh_config: None,
        settings,
        dataplane: crate::dataplane::Choice::Auto,
        pods: crate::cni::pods::PodSource::None,
        kubelet_cgroup_root: "/".into(),
        cni_install: None,
        mount_bpffs: true,
        mesh_object: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(crate::daemon::run(opts, crate::daemon::DaemonOptions::default(), async move {
        let _ = stop_rx.await;
    }));
    let result = demo(&pod_ns, &cgroup, &state_dir, &mut stop).await;
    // Whatever happened: remove every trace of the agent.
    let _ = tokio::task::spawn_blocking({
        let dir = state_dir.clone();
        move || Client::new(&dir).uninstall()
    })
    .await;
    let _ = stop_tx.send(());
    let _ = agent.await;
    let _ = crate::agent::uninstall(&crate::ebpf::pins::Pins::new(&bpffs_dir), &state_dir);
    drop(cgroup);
    drop((pod_ns, svc_ns, bpffs));
    println!("demo: removed the pod, its namespaces, cgroup, programs and pins");
    result
}

async fn demo(pod_ns: &Netns, cgroup: &Cgroup, state_dir: &std::path::Path, stop: &mut crate::daemon::Termination) -> anyhow::Result<()> {
    let sock = crate::state::State::socket(state_dir);
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = EnrollRequest {
        name: "demo/app".into(),
        netns: pod_ns.path(),
        cgroup: Some(cgroup.path.clone()),
        annotations: Default::default(),
        dataplane: None,
        fast_path: None,
        ipv6: None,
        container_id: None,
        started_unintercepted: false,
        injection: None,
    };
    let dir = state_dir.to_owned();
    let (id, dataplane) = tokio::task::spawn_blocking(move || Client::new(&dir).enroll(request)).await??;
    println!(
        "demo: pod demo/app enrolled as pod {id} ({} dataplane); netns {}, cgroup {}",
        dataplane.name(),
        pod_ns.path().display(),
        cgroup.path.display()
    );

    let me = std::env::current_exe()?;
    let mut proxy = Command::new(&me);
    proxy.args(["demo-proxy", "--listen", "0.0.0.0:15001"]);
    enter(&mut proxy, &pod_ns.path(), &cgroup.path, redirect_common::defaults::PROXY_UID)?;
    let mut app = Command::new(&me);
    app.args(["demo-app", "--to", SERVICE]);
    enter(&mut app, &pod_ns.path(), &cgroup.path, 1000)?;
    let mut children = Children::default();
    children.push(proxy.spawn().context("starting the demo proxy")?);
    children.push(app.spawn().context("starting the demo app")?);
    println!("demo: the app (uid 1000) dials {SERVICE}; the proxy (uid 1500) listens on 15001. Ctrl-C to stop and clean up.");
    stop.wait().await;
    Ok(())
}

/// The demo's proxy: accepts, asks `SO_ORIGINAL_DST`, prints and answers.
pub fn proxy(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        let peer = stream.peer_addr()?;
        let line = match crate::original_dst::original_dst(&stream) {
            Ok(orig) => format!("proxy: intercepted {peer} -> original destination {orig}"),
            Err(e) => format!("proxy: {peer} connected but SO_ORIGINAL_DST failed: {e}"),
        };
        println!("{line}");
        let _ = writeln!(stream, "{line}");
    }
    Ok(())
}

/// The demo's app: dials `to` every two seconds and prints the answer.
pub fn app(to: SocketAddr) -> anyhow::Result<()> {
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(stream) => {
                let mut answer = String::new();
                let _ = BufReader::new(stream).read_line(&mut answer);
                println!("app: connect({to}) answered: {}", answer.trim());
            }
            Err(e) => println!("app: connect({to}) failed: {e}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
