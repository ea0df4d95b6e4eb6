//! The Prometheus endpoint (`--metrics-listen`), served apart from the
//! agent's loop, which serves CNI ADDs: on a thread of its own, from a
//! snapshot the loop hands over ([`Snapshot`]: which pods, a few totals)
//! and from the kernel's maps, which it opens from their pins itself. A
//! scrape, however large the maps, never waits for the loop nor holds it
//! up. At most [`MAX_CONNECTIONS`] are served at once, each dropped after
//! [`READ_TIMEOUT`] without a request; one beyond that is closed as soon as
//! it is accepted: a thousand idle connections hold a few dozen of the
//! agent's file descriptors for seconds, not a thousand for good.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
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
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(2);

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
pub(crate) fn spawn(addr: SocketAddr, pins: Pins, snapshot: watch::Receiver<Arc<Snapshot>>) -> anyhow::Result<()> {
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
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    pod: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataplaneLabels {
    dataplane: &'static str,
}

/// A gauge set to `value` (the registry is made for one scrape).
fn gauge_at(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

/// A counter at `value`: the kernel's and the agent's counts, read now.
fn counter_at(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// The metrics in OpenMetrics text (`prometheus-client`, which Prometheus
/// scrapes as it scrapes its own text format): the counters per pod and
/// the maps' fill levels, read from the pins now, and the snapshot's
/// totals. A registry per scrape: every value is read fresh, nothing is
/// kept between scrapes.
pub(crate) fn render(s: &Snapshot, pins: &Pins) -> String {
    let mut registry = Registry::default();
    if s.ebpf {
        let events = Family::<EventLabels, Counter>::default();
        match counters(pins) {
            Ok(read) => {
                for (id, name, _) in s.pods.iter().filter(|(_, _, d)| *d == Dataplane::Ebpf) {
                    for slot in 0..counter::SLOTS {
                        if let Some(event) = counter::name(slot) {
                            events.get_or_create(&EventLabels { pod: name.clone(), event }).inc_by(read(*id, slot));
                        }
                    }
                }
            }
            Err(e) => log::warn!("metrics: reading the counters: {e:#}"),
        }
        registry.register("fsm_redirect_events", "Interception decisions and answers, per pod, from the kernel", events);
        let entries = Family::<MapLabels, Gauge>::default();
        for m in fill(pins) {
            entries.get_or_create(&MapLabels { map: m.map }).set(i64::try_from(m.entries).unwrap_or(i64::MAX));
        }
        registry.register("fsm_redirect_map_entries", "Entries in use per kernel map", entries);
        let capacity = Family::<MapLabels, Gauge>::default();
        for (map, cap) in FILLABLE {
            capacity.get_or_create(&MapLabels { map: map.into() }).set(i64::from(cap));
        }
        registry.register("fsm_redirect_map_capacity", "Capacity per kernel map", capacity);
    }
    registry.register(
        "fsm_redirect_pods_degraded",
        "Pods whose last install failed (previous state kept, retried)",
        gauge_at(s.degraded as u64),
    );
    registry.register("fsm_redirect_pods_removed_netns_gone", "Pods removed because their netns was gone", counter_at(s.removed_gone));
    registry.register(
        "fsm_redirect_enrolments_refused_over_limit",
        "Enrolments refused for annotations over --max-annotation-entries",
        counter_at(s.refused_over_limit),
    );
    let pods = Family::<DataplaneLabels, Gauge>::default();
    for dp in Dataplane::ALL {
        let n = s.pods.iter().filter(|(_, _, d)| *d == dp).count();
        pods.get_or_create(&DataplaneLabels { dataplane: dp.name() }).set(n as i64);
    }
    registry.register("fsm_redirect_pods", "Enrolled pods per dataplane", pods);
    let mut text = String::new();
    // Writing into a String can't fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The pinned per-CPU `COUNTERS`, as a reader of (pod, slot) summed over
/// CPUs.
fn counters(pins: &Pins) -> anyhow::Result<impl Fn(PodId, u32) -> u64> {
    let data = aya::maps::MapData::from_pin(pins.map(names::COUNTERS)).context("COUNTERS")?;
    let map: aya::maps::PerCpuArray<aya::maps::MapData, u64> = aya::maps::Map::from_map_data(data)?.try_into()?;
    Ok(move |pod: PodId, slot: u32| map.get(&counter::index(pod, slot), 0).map(|v| v.iter().sum()).unwrap_or(0))
}
