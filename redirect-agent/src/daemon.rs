//! `redirect-agent run`: the agent's event loop. Serves the control socket,
//! follows MeshConfig file changes and pod address changes, and prints the
//! programs' decision logs. Stopping it (Ctrl-C, SIGTERM, SIGKILL) leaves
//! every pod intercepted: links and maps are pinned.

use std::{os::fd::AsFd as _, os::unix::fs::PermissionsExt as _, time::Duration};

use anyhow::Context as _;
use redirect_cni::wire::{CniReply, CniRequest};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal), caught from
/// the moment this is made: one that arrives before `wait` is awaited is
/// kept, not fatal, so that whatever was set up by then is cleaned up.
pub struct Termination([tokio::signal::unix::Signal; 3]);

impl Termination {
    /// Must run inside the runtime.
    pub fn catch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
        let [a, b, c] = kinds.map(signal);
        Ok(Termination([a.context("catching SIGINT")?, b.context("catching SIGTERM")?, c.context("catching SIGHUP")?]))
    }

    /// Completes at the first of the signals (at once if one came already).
    pub async fn wait(&mut self) {
        let [a, b, c] = &mut self.0;
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = c.recv() => {}
        }
    }
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP.
pub async fn termination() {
    match Termination::catch() {
        Ok(mut t) => t.wait().await,
        Err(e) => {
            log::error!("{e:#}: stop the agent with SIGKILL");
            std::future::pending().await
        }
    }
}

use crate::{
    agent::{Agent, AgentOptions, Refresh},
    cni::pods::PodSource,
    control::{Reply, Request, Response},
    kubernetes::{self, KubernetesOptions, MeshConfigSeen, Watches},
    state::State,
};

type Job = (Request, oneshot::Sender<Response>);

/// How often the MeshConfig file is looked at.
const TICK: Duration = Duration::from_secs(1);

/// The longest request line: an enrolment with a few thousand CIDRs in its
/// annotations fits many times over.
pub const MAX_REQUEST: usize = 4 << 20;

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How the daemon runs, beside the agent's own options.
pub struct DaemonOptions {
    /// How often pods' addresses, interfaces and routes are re-read (and
    /// missing programs re-attached).
    pub refresh: Duration,
    /// Serve Prometheus text on this address (`/metrics`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Watch the node's pods and FSM's MeshConfig in the Kubernetes API.
    pub kubernetes: Option<KubernetesOptions>,
    /// What becomes of meshed pods that started around the plugin (with
    /// `kubernetes`).
    pub repair: crate::repair::RepairMode,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions { refresh: Duration::from_secs(5), metrics_listen: None, kubernetes: None, repair: Default::default() }
    }
}

/// How long a starting agent waits for the API's first answers, which
/// come in milliseconds where the API is up. Then it serves all the same:
/// its control socket answers, and it applies what the API says when it
/// comes (a node booting before its control plane answers); meanwhile a
/// meshed pod's ADD waits for it (`Agent::cni_add`), pods of excluded
/// namespaces never needed it.
const FIRST_LIST: Duration = Duration::from_secs(2);

/// How long a CNI ADD waits for the pod to reach the agent's watch.
const POD_ARRIVAL: Duration = Duration::from_secs(5);

/// Runs until `stop` completes (or an uninstall request).
pub async fn run(opts: AgentOptions, daemon: DaemonOptions, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let sock = State::socket(&opts.state_dir);
    std::fs::create_dir_all(&opts.state_dir)?;
    raise_file_limit();
    let opts_bpffs_dir = opts.bpffs_dir.clone();
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        anyhow::bail!("another agent is already running (it answers on {})", sock.display());
    }
    let _ = std::fs::remove_file(&sock);
    let mut opts = opts;
    let watches = match &daemon.kubernetes {
        Some(k) => {
            let mut w = kubernetes::start(k).await?;
            opts.pods = PodSource::Api(w.pods.clone());
            opts.mesh_object = Some(format!("{}/{}", k.fsm_namespace, k.mesh_config_name));
            if !kubernetes::first_mesh_config(&mut w.mesh_config, FIRST_LIST).await.listed() {
                log::warn!("FSM's MeshConfig was not listed within {FIRST_LIST:?}: starting with the lists applied last");
            }
            if tokio::time::timeout(FIRST_LIST, w.pods.wait_until_ready()).await.is_err() {
                log::warn!("the node's pods were not listed within {FIRST_LIST:?}: reconciling once they are");
            }
            Some(w)
        }
        None => None,
    };
    let pods = opts.pods.clone();
    // Watched before the agent checks its entry at start: a rewrite by the
    // primary CNI after that check went unseen until the next refresh
    // (seen under emulation).
    let conf_dir = opts.cni_install.as_ref().map(|c| watch_conf_dir(&c.conf_dir)).transpose().unwrap_or_else(|e| {
        log::warn!("watching the CNI conf dir: {e:#}; the entry is checked at each refresh only");
        None
    });
    let mut agent = Agent::start(opts)?;
    let (pods_changed, mut mesh_config) = match watches {
        Some(Watches { pods: _, pods_changed, mesh_config, client }) => {
            agent.set_repair(crate::repair::Repairer::new(daemon.repair, client));
            (Some(pods_changed), Some(mesh_config))
        }
        None => (None, None),
    };
    if let Some(rx) = &mut mesh_config {
        apply_mesh_config(&mut agent, &rx.borrow_and_update());
    }
    agent.sync_pods();
    agent.prepare_ahead();
    let listener = bind_control_socket(&sock)?;
    log::info!("agent ready: {} pod(s) enrolled, control socket {}", agent.status().pods.len(), sock.display());

    let (tx, mut rx) = mpsc::channel::<Job>(16);
    // Each pod's network, followed as it changes (the refresh stays for
    // what announces nothing).
    let (mut net_events, mut net_changed) = crate::netns::NetEvents::new();
    net_events.sync(&agent.watched_netns());
    let (snapshot, snapshot_rx) = tokio::sync::watch::channel(std::sync::Arc::new(agent.metrics_snapshot()));
    if let Some(addr) = daemon.metrics_listen {
        crate::metrics::spawn(addr, crate::ebpf::pins::Pins::new(&opts_bpffs_dir), snapshot_rx)?;
    }
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, tx.clone(), pods.clone()));
                }
                // Out of file descriptors (EMFILE), say: clients are turned
                // away while it lasts, never for good.
                Err(e) => {
                    log::warn!("control socket: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    // Only readiness is awaited here; reading goes through the decision log.
    let logs = match agent.decision_log() {
        Some(log) => {
            let fd = log.as_fd().try_clone_to_owned()?;
            // SAFETY: `fd` is our own descriptor, owned by the AsyncFd.
            Some(
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .map_err(|e| anyhow::anyhow!("watching the decision log: {e}"))?,
            )
        }
        None => None,
    };
    let mut tick = tokio::time::interval(TICK);
    tokio::pin!(stop);
    let mut refresh = tokio::time::interval(daemon.refresh);
    // A refresh that outlasts the interval is not followed by another at once.
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await;
    let mut refreshing: Option<Refresh> = None;
    loop {
        tokio::select! {
            // Requests first: a refresh goes on between them, one pod at a time.
            biased;
            Some((request, reply)) = rx.recv() => {
                let uninstall = matches!(request, Request::Uninstall);
                if uninstall {
                    let _ = std::fs::remove_file(&sock);
                    let result = agent.uninstall();
                    let _ = reply.send(respond(result.map(|()| Reply::Uninstalled)));
                    return Ok(());
                }
                let _ = reply.send(handle(&mut agent, request));
                // The loop shares its thread with the clients' tasks: let
                // them write this answer now, before what follows a job
                // (0.25 ms on a node of 140 pods) and rather than after
                // every job already queued (a burst of CNI ADDs) is done.
                tokio::task::yield_now().await;
                agent.prepare_ahead();
                // Once the jobs queued are done (a burst of ADDs): the new
                // pods' watches (0.1 ms a pod on a node of 140: a
                // socket made in each netns) and the metrics. A pod's
                // network changes once its containers run, later.
                if rx.is_empty() {
                    net_events.sync(&agent.watched_netns());
                    publish(&snapshot, &agent);
                }
            }
            guard = readable(&conf_dir) => {
                let mut guard = guard?;
                // What changed does not matter: the entry is checked whole.
                if let Some(inotify) = &conf_dir {
                    while inotify.get_ref().0.read_events().is_ok_and(|e| !e.is_empty()) {}
                }
                guard.clear_ready();
                agent.ensure_cni_entry();
            }
            guard = readable(&logs) => {
                let mut guard = guard?;
                if let Some(log) = agent.decision_log() {
                    log.print_pending();
                }
                guard.clear_ready();
            }
            Some(id) = net_changed.recv() => agent.refresh_pod(id),
            _ = tick.tick() => {
                net_events.sync(&agent.watched_netns());
                agent.watch_listeners();
                agent.prepare_ahead();
                publish(&snapshot, &agent);
                match agent.reload_if_changed() {
                    Ok(true) => log::info!("MeshConfig changed: every pod's lists updated"),
                    Ok(false) => {}
                    Err(e) => log::error!("MeshConfig change refused, previous lists kept: {e:#}"),
                }
            }
            _ = refresh.tick(), if refreshing.is_none() => refreshing = agent.begin_refresh(),
            () = notified(&pods_changed) => agent.sync_pods(),
            Ok(()) = changed(&mut mesh_config) => {
                if let Some(rx) = &mut mesh_config {
                    apply_mesh_config(&mut agent, &rx.borrow_and_update());
                }
            }
            () = &mut stop => break,
            () = std::future::ready(()), if refreshing.is_some() => {
                if let Some(r) = &mut refreshing && agent.refresh_next(r) {
                    refreshing = None;
                }
                // Lets the clients' tasks read what came meanwhile.
                tokio::task::yield_now().await;
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    log::info!("agent stopped; interception continues from the pinned programs");
    Ok(())
}

/// Hands the metrics endpoint the agent's snapshot, if it changed.
fn publish(snapshot: &tokio::sync::watch::Sender<std::sync::Arc<crate::metrics::Snapshot>>, agent: &Agent) {
    let now = agent.metrics_snapshot();
    snapshot.send_if_modified(|current| {
        let changed = **current != now;
        if changed {
            *current = std::sync::Arc::new(now);
        }
        changed
    });
}

/// Raises the soft limit of open files to the hard one: each client,
/// enrolment and netns visit takes descriptors, and a container starts at
/// 1024.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => log::info!("open files: limit raised from {soft} to {hard}"),
            Err(e) => log::warn!("open files: can't raise the limit from {soft} to {hard}: {e}"),
        },
        _ => {}
    }
}

/// The control socket, root's only: mode 0600 in a directory of mode 0700
/// (so there is no moment at which another user could connect), and each
/// peer's credentials are checked again on accept (`serve`). It is bound
/// under a temporary name and renamed once it is 0600: a client that finds
/// the socket (the CNI plugin, a readiness probe) never finds it with the
/// umask's mode.
fn bind_control_socket(sock: &std::path::Path) -> anyhow::Result<UnixListener> {
    let dir = sock.parent().context("the control socket has no directory")?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod 0700 {}", dir.display()))?;
    let name = sock.file_name().context("the control socket has no file name")?.to_string_lossy();
    let binding = sock.with_file_name(format!(".{name}.binding"));
    let _ = std::fs::remove_file(&binding);
    let listener = UnixListener::bind(&binding).with_context(|| format!("binding {}", binding.display()))?;
    std::fs::set_permissions(&binding, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", binding.display()))?;
    std::fs::rename(&binding, sock).with_context(|| format!("renaming {} to {}", binding.display(), sock.display()))?;
    Ok(listener)
}

/// A change among the node's pods; never, without the API.
async fn notified(pods_changed: &Option<std::sync::Arc<tokio::sync::Notify>>) {
    match pods_changed {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// A change of the API's MeshConfig; never, without the API.
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<MeshConfigSeen>>) -> Result<(), tokio::sync::watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

fn apply_mesh_config(agent: &mut Agent, seen: &MeshConfigSeen) {
    match agent.apply_api_mesh_config(seen) {
        Ok(true) => log::info!("MeshConfig changed in the API: every pod's lists updated"),
        Ok(false) => {}
        Err(e) => log::error!("MeshConfig change refused, previous lists kept: {e:#}"),
    }
}

/// Readiness of an optional descriptor (the decision log, the conf dir's
/// inotify); never where there is none.
async fn readable<T: std::os::fd::AsRawFd>(fd: &Option<AsyncFd<T>>) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, T>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// An inotify on the CNI conf dir: a file written, moved in or out,
/// created or removed there (the primary CNI rewriting its conflist, as
/// Calico and Cilium do at their restarts) has the entry checked at once,
/// not at the next refresh, when pods made meanwhile would have started
/// without the plugin.
fn watch_conf_dir(dir: &std::path::Path) -> anyhow::Result<AsyncFd<ConfDirWatch>> {
    use nix::sys::inotify::{AddWatchFlags as W, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    inotify
        .add_watch(dir, W::IN_CLOSE_WRITE | W::IN_MOVED_TO | W::IN_MOVED_FROM | W::IN_CREATE | W::IN_DELETE)
        .with_context(|| format!("inotify on {}", dir.display()))?;
    // SAFETY: the descriptor is the inotify's own, owned by the AsyncFd.
    unsafe { AsyncFd::register_with_interest(ConfDirWatch(inotify), tokio::io::Interest::READABLE) }.context("registering the inotify")
}

/// The conf dir's inotify, as tokio takes it.
struct ConfDirWatch(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for ConfDirWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn respond(result: anyhow::Result<Reply>) -> Response {
    match result {
        Ok(reply) => Response::Ok(reply),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}

fn handle(agent: &mut Agent, request: Request) -> Response {
    respond(match request {
        Request::Enroll { pod } => agent.enroll(pod).map(|(id, dataplane)| Reply::Enrolled { id, dataplane }),
        Request::Remove { name } => agent.remove(&name).map(|()| {
            log::info!("pod {name} removed");
            Reply::Removed
        }),
        Request::Status => Ok(Reply::Status(Box::new(agent.status()))),
        Request::Reload { path } => agent.reload(path).map(|degraded| Reply::Reloaded { degraded }),
        Request::Explain { pod, query } => agent.view().explain(&pod, query).map(|e| Reply::Explanation(Box::new(e))),
        Request::Diagnose { pod } => agent.view().diagnose(pod.as_deref()).map(|checks| Reply::Checks { checks }),
        Request::Cni(CniRequest::CniAdd { add }) => agent.cni_add(add).map(|added| Reply::Cni(CniReply::CniAdded(added))),
        Request::Cni(CniRequest::CniDel { container_id }) => {
            agent.cni_del(&container_id).map(|removed| Reply::Cni(CniReply::CniDeleted { removed }))
        }
        Request::Cni(CniRequest::CniCheck { container_id, pod }) => {
            agent.cni_check(&container_id, &pod).map(|()| Reply::Cni(CniReply::CniChecked))
        }
        Request::Cni(CniRequest::CniGc { valid }) => agent.cni_gc(&valid).map(|removed| Reply::Cni(CniReply::CniCollected { removed })),
        Request::Uninstall => unreachable!("handled by the loop"),
    })
}

/// Serves one client: requests from root (or the agent's own user) only,
/// each line at most `MAX_REQUEST` bytes, sent within `READ_TIMEOUT`.
async fn serve(stream: UnixStream, jobs: mpsc::Sender<Job>, pods: PodSource) {
    let own = nix::unistd::geteuid().as_raw();
    let peer = stream.peer_cred().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let refused = match peer {
        Ok(uid) if uid == 0 || uid == own => None,
        Ok(uid) => Some(format!("permission denied: the control socket serves root only, not uid {uid}")),
        Err(e) => Some(format!("permission denied: the peer's credentials can't be read ({e})")),
    };
    if let Some(why) = refused {
        log::warn!("control socket: {why}");
        let _ = write.write_all(line(&Response::Error(why)).as_bytes()).await;
        return;
    }
    let mut reader = BufReader::new(read);
    loop {
        let mut buf = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let response = match tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) => Response::Error(format!("no complete request within {} s: closing", READ_TIMEOUT.as_secs())),
            Ok(Ok(_)) if buf.len() > MAX_REQUEST => Response::Error(format!("request larger than {MAX_REQUEST} bytes: closing")),
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&buf) {
                Ok(request) => {
                    // Waited for here, not in the agent's loop, which
                    // goes on serving meanwhile.
                    if let Request::Cni(CniRequest::CniAdd { add }) = &request {
                        pods.wait_for(&add.pod, POD_ARRIVAL).await;
                    }
                    let (tx, rx) = oneshot::channel();
                    if jobs.send((request, tx)).await.is_err() {
                        return;
                    }
                    rx.await.unwrap_or(Response::Error("the agent is stopping".into()))
                }
                Err(e) => Response::Error(format!("bad request: {e}")),
            },
        };
        let close = matches!(&response, Response::Error(e) if e.ends_with(": closing"));
        if write.write_all(line(&response).as_bytes()).await.is_err() || close {
            return;
        }
    }
}

fn line(response: &Response) -> String {
    let mut out = serde_json::to_string(response).unwrap_or_default();
    out.push('\n');
    out
}
