//! The Prometheus endpoint (`--metrics-listen`), served apart from the
//! agent's loop, which serves CNI ADDs: on a thread of its own, from a
//! snapshot the loop hands over ([`Snapshot`]: which pods, a few totals)
//! and from the kernel's maps, which it opens from their pins itself. A
//! scrape, however large the maps, never waits for the loop nor holds it
//! up. At most [`MAX_CONNECTIONS`] are served at once, each dropped after
//! [`READ_TIMEOUT`] without a request; one beyond that is closed as soon as
//! it is accepted: a thousand idle connections hold a few dozen of the
//! agent's file descriptors for seconds, not a thousand for good.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use redirect_common::maps::{PodId, counter, names};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{Semaphore, watch},
};

use crate::{
    dataplane::Dataplane,
    ebpf::{
        maps::{FILLABLE, fill},
        pins::Pins,
    },
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the metrics need of the agent, handed over by its loop whenever it
/// changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The enrolled pods: id, name, dataplane.
    pub pods: Vec<(PodId, String, Dataplane)>,
    pub degraded: usize,
    pub removed_gone: u64,
    pub refused_over_limit: u64,
    /// Whether the eBPF dataplane runs (its maps are pinned).
    pub ebpf: bool,
}

/// Binds `addr` and serves it from a thread of its own. The bind is tried
/// again every few seconds while it fails (a port another process holds):
/// the agent goes on serving pods meanwhile, never exits for it.
pub fn spawn(addr: SocketAddr, pins: Pins, snapshot: watch::Receiver<Arc<Snapshot>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("the metrics thread's runtime")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(serve(addr, Arc::new(pins), snapshot)))
        .context("starting the metrics thread")?;
    Ok(())
}

async fn serve(addr: SocketAddr, pins: Arc<Pins>, snapshot: watch::Receiver<Arc<Snapshot>>) {
    let listener = loop {
        match listen(addr) {
            Ok(l) => break l,
            Err(e) => {
                log::error!("--metrics-listen {addr}: {e}; trying again in 10 s (pods are served meanwhile)");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    log::info!("Prometheus metrics on http://{addr}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Over the limit: closed at once.
                let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
                let (pins, snapshot) = (pins.clone(), snapshot.clone());
                tokio::spawn(async move {
                    answer(stream, &pins, &snapshot).await;
                    drop(permit);
                });
            }
            // Out of file descriptors, say: the next accept may do.
            Err(e) => {
                log::warn!("metrics endpoint: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The listening socket, with a backlog of 4096 (the kernel's usual
/// `somaxconn`): a burst of connections waits there for its accept (and
/// close), not in SYN retries.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// One HTTP/1.1 exchange: `GET /metrics`, or 404; then the connection
/// closes.
async fn answer(mut stream: tokio::net::TcpStream, pins: &Pins, snapshot: &watch::Receiver<Arc<Snapshot>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(head, Ok(true)) {
        return;
    }
    let wanted = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?");
    let (status, body) = if wanted {
        let snapshot = snapshot.borrow().clone();
        let pins = pins.clone();
        // Reading the maps is syscalls: off the connection's task.
        match tokio::task::spawn_blocking(move || render(&snapshot, &pins)).await {
            Ok(text) => ("200 OK", text),
            Err(_) => ("500 Internal Server Error", String::new()),
        }
    } else {
        ("404 Not Found", String::new())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

/// The Prometheus text: the counters per pod and the maps' fill levels,
/// read from the pins now, and the snapshot's totals.
pub fn render(s: &Snapshot, pins: &Pins) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP fsm_redirect_events_total Interception decisions and answers, per pod, from the kernel.");
    let _ = writeln!(o, "# TYPE fsm_redirect_events_total counter");
    if s.ebpf {
        match counters(pins) {
            Ok(read) => {
                for (id, name, _) in s.pods.iter().filter(|(_, _, d)| *d == Dataplane::Ebpf) {
                    for slot in 0..counter::SLOTS {
                        if let Some(event) = counter::name(slot) {
                            let _ =
                                writeln!(o, "fsm_redirect_events_total{{pod=\"{}\",event=\"{event}\"}} {}", escape(name), read(*id, slot));
                        }
                    }
                }
            }
            Err(e) => log::warn!("metrics: reading the counters: {e:#}"),
        }
        let _ = writeln!(o, "# HELP fsm_redirect_map_entries Entries in use per kernel map.");
        let _ = writeln!(o, "# TYPE fsm_redirect_map_entries gauge");
        for m in fill(pins) {
            let _ = writeln!(o, "fsm_redirect_map_entries{{map=\"{}\"}} {}", m.map, m.entries);
        }
        let _ = writeln!(o, "# HELP fsm_redirect_map_capacity Capacity per kernel map.");
        let _ = writeln!(o, "# TYPE fsm_redirect_map_capacity gauge");
        for (map, capacity) in FILLABLE {
            let _ = writeln!(o, "fsm_redirect_map_capacity{{map=\"{map}\"}} {capacity}");
        }
    }
    let _ = writeln!(o, "# HELP fsm_redirect_pods_degraded Pods whose last install failed (previous state kept, retried).");
    let _ = writeln!(o, "# TYPE fsm_redirect_pods_degraded gauge");
    let _ = writeln!(o, "fsm_redirect_pods_degraded {}", s.degraded);
    let _ = writeln!(o, "# HELP fsm_redirect_pods_removed_netns_gone_total Pods removed because their netns was gone.");
    let _ = writeln!(o, "# TYPE fsm_redirect_pods_removed_netns_gone_total counter");
    let _ = writeln!(o, "fsm_redirect_pods_removed_netns_gone_total {}", s.removed_gone);
    let _ = writeln!(
        o,
        "# HELP fsm_redirect_enrolments_refused_over_limit_total Enrolments refused for annotations over --max-annotation-entries."
    );
    let _ = writeln!(o, "# TYPE fsm_redirect_enrolments_refused_over_limit_total counter");
    let _ = writeln!(o, "fsm_redirect_enrolments_refused_over_limit_total {}", s.refused_over_limit);
    let _ = writeln!(o, "# HELP fsm_redirect_pods Enrolled pods per dataplane.");
    let _ = writeln!(o, "# TYPE fsm_redirect_pods gauge");
    for dp in Dataplane::ALL {
        let n = s.pods.iter().filter(|(_, _, d)| *d == dp).count();
        let _ = writeln!(o, "fsm_redirect_pods{{dataplane=\"{}\"}} {n}", dp.name());
    }
    o
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The pinned per-CPU `COUNTERS`, as a reader of (pod, slot) summed over
/// CPUs.
fn counters(pins: &Pins) -> anyhow::Result<impl Fn(PodId, u32) -> u64> {
    let data = aya::maps::MapData::from_pin(pins.map(names::COUNTERS)).context("COUNTERS")?;
    let map: aya::maps::PerCpuArray<aya::maps::MapData, u64> = aya::maps::Map::from_map_data(data)?.try_into()?;
    Ok(move |pod: PodId, slot: u32| map.get(&counter::index(pod, slot), 0).map(|v| v.iter().sum()).unwrap_or(0))
}
