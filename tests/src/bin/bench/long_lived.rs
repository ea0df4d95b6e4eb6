//! Request/response and bulk transfer over one long-lived connection
//! through the local proxy hop, on every path that carries its bytes the
//! same way (plain loopback to the proxy, the iptables and eBPF redirects)
//! and on the fast path, which splices them.
//!
//! Where the client and the proxy run is stated and varied on purpose: on
//! one CPU a round trip is two context switches; on two it is two wakeups
//! of another CPU, which cost more or less depending on whether that CPU
//! sleeps. Left to the scheduler, one path's round got one placement and
//! the next path's the other: an earlier run put plain loopback at 9.4
//! MiB/s and the eBPF redirect (the same kind of connection once
//! established) at 13.6, where they must agree. So each placement is
//! measured apart, every path in every round (the order turning each
//! round), and each path is given as the median and quartiles of its
//! per-round ratio to plain loopback in the same round.

use std::fmt::Write as _;

use anyhow::bail;
use nix::sched::{CpuSet, sched_setaffinity};
use tests::Pod;

use crate::{field, sorted};

/// One way from the client to the proxy.
pub struct Path<'a> {
    pub name: &'static str,
    pub pod: &'a Pod,
    pub to: &'static str,
}

/// Where the client (a process of the pod, as the app) and the pod's
/// other processes (the proxy among them) run.
#[derive(Clone, Copy, Debug)]
enum Placement {
    OneCpu,
    TwoCpus,
    Unpinned,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::OneCpu => "client and proxy on CPU 0",
            Placement::TwoCpus => "client on CPU 0, proxy on CPU 1",
            Placement::Unpinned => "unpinned (the scheduler's choice)",
        }
    }

    /// The CPU of the client and of the proxy (None: any).
    fn cpus(self) -> (Option<usize>, Option<usize>) {
        match self {
            Placement::OneCpu => (Some(0), Some(0)),
            Placement::TwoCpus => (Some(0), Some(1)),
            Placement::Unpinned => (None, None),
        }
    }

    /// The placements this machine can give (two CPUs needs two).
    fn all() -> Vec<Placement> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        [Placement::OneCpu, Placement::TwoCpus, Placement::Unpinned]
            .into_iter()
            .filter(|p| cpus >= 2 || !matches!(p, Placement::TwoCpus))
            .collect()
    }
}

/// Every CPU, or only `cpu`.
pub fn cpu_set(cpu: Option<usize>) -> anyhow::Result<CpuSet> {
    let mut set = CpuSet::new();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    for c in cpu.map_or(0..all, |c| c..c + 1) {
        set.set(c)?;
    }
    Ok(set)
}

/// Pins every thread of every process in the pod's network namespace (its
/// app, its proxy) to `cpu`, or lets them run anywhere again. Threads the
/// proxy starts later inherit it.
fn place_pod(pod: &Pod, cpu: Option<usize>) -> anyhow::Result<()> {
    let set = cpu_set(cpu)?;
    let ns = redirect_agent::netns::identity(&pod.ns.path())?;
    for pid in redirect_agent::netns::processes_in(ns) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for tid in tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            // A thread that ended meanwhile is no matter.
            let _ = sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
        }
    }
    Ok(())
}

/// One path's figures over the rounds of one cell.
#[derive(serde::Serialize)]
struct Figures {
    path: &'static str,
    p50_us: f64,
    p99_us: f64,
    mib_per_s: f64,
    /// Median and quartiles of the per-round ratio of MiB/s to plain
    /// loopback's in the same round.
    ratio: [f64; 3],
    /// MiB/s of each round.
    #[serde(skip)]
    rounds: Vec<f64>,
}

fn median_q(v: Vec<f64>) -> [f64; 3] {
    let v = sorted(v);
    let n = v.len();
    [v[n / 2], v[n / 4], v[n * 3 / 4]]
}

/// `rounds` interleaved rounds of `args` (one run per path per round),
/// client and pods placed as `placement` says.
fn cell(paths: &[Path], placement: Placement, rounds: usize, args: impl Fn(&str) -> Vec<String>) -> anyhow::Result<Vec<Figures>> {
    let (client_cpu, pod_cpu) = placement.cpus();
    for p in paths {
        place_pod(p.pod, pod_cpu)?;
    }
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let a = args(paths[i].to);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let line = crate::probe_on(paths[i].pod, &a, client_cpu)?;
            if line.contains("intact=false") {
                bail!("{} through {}: data corrupted: {line}", a[0], paths[i].to);
            }
            lines[i].push(line);
        }
    }
    let rate = |l: &String| field(l, "mib_per_s");
    Ok(paths
        .iter()
        .zip(&lines)
        .map(|(p, ls)| Figures {
            path: p.name,
            p50_us: median_q(ls.iter().map(|l| field(l, "p50_us")).collect())[0],
            p99_us: median_q(ls.iter().map(|l| field(l, "p99_us")).collect())[0],
            mib_per_s: median_q(ls.iter().map(rate).collect())[0],
            ratio: median_q(ls.iter().zip(&lines[0]).map(|(l, plain)| rate(l) / rate(plain)).collect()),
            rounds: ls.iter().map(rate).collect(),
        })
        .collect())
}

fn ratio_text([m, q1, q3]: [f64; 3]) -> String {
    format!("{m:.2} [{q1:.2}–{q3:.2}]")
}

/// Measures and writes the section; `paths[0]` is plain loopback (the
/// reference) and the last the fast path.
pub fn measure(md: &mut String, paths: &[Path], rounds: usize, smoke: bool) -> anyhow::Result<serde_json::Value> {
    // Smoke mode checks that the section runs: four rounds do (quartiles
    // need four).
    let rounds = if smoke { rounds.min(4) } else { rounds };
    let n = if smoke { "200" } else { "2000" };
    let mib = if smoke { "4" } else { "64" };
    let _ = writeln!(
        md,
        "\n## Long-lived connections through the local proxy hop\n\nOne connection per run, {rounds} rounds interleaved between the paths (the order turning each round), for each placement of the client and the pod's processes (its proxy among them). × plain: the median of the per-round ratios of MiB/s to plain loopback in the same round, in brackets their first and third quartile. Request/response: {n} round trips, each one message written and its echo read. Bulk: {mib} MiB each way in 64 KiB writes, echoed and checked."
    );
    let mut out = Vec::new();
    for placement in Placement::all() {
        let _ = writeln!(
            md,
            "\n### {}\n\n| message | path | p50 µs | p99 µs | MiB/s | × plain |\n|---:|---|---:|---:|---:|---|",
            placement.label()
        );
        let mut gains = Vec::new();
        for size in [64usize, 1024, 16384] {
            let figures = cell(paths, placement, rounds, |to| vec!["pingpong".into(), to.into(), n.into(), size.to_string()])?;
            for f in &figures {
                let _ = writeln!(
                    md,
                    "| {size} B | {} | {:.0} | {:.0} | {:.1} | {} |",
                    f.path,
                    f.p50_us,
                    f.p99_us,
                    f.mib_per_s,
                    ratio_text(f.ratio)
                );
            }
            gains.push((format!("{size} B"), fast_gain(&figures)));
            out.push(
                serde_json::json!({"placement": placement.label(), "kind": "request_response", "message_bytes": size, "paths": figures}),
            );
        }
        let figures = cell(paths, placement, rounds, |to| vec!["stream".into(), to.into(), mib.into()])?;
        for f in &figures {
            let _ = writeln!(md, "| bulk | {} | | | {:.0} | {} |", f.path, f.mib_per_s, ratio_text(f.ratio));
        }
        gains.push(("bulk".into(), fast_gain(&figures)));
        out.push(serde_json::json!({"placement": placement.label(), "kind": "bulk", "mib_each_way": mib, "paths": figures}));
        let said: Vec<String> = gains.iter().map(|(what, g)| format!("{what} {}", g.map_or("—".into(), ratio_text))).collect();
        let _ =
            writeln!(md, "\nThe fast path against the eBPF redirect (per-round ratio of MiB/s, median [quartiles]): {}.", said.join(", "));
        eprintln!("bench: long-lived, {}: done", placement.label());
    }
    // Let the pods' processes run anywhere again.
    for p in paths {
        place_pod(p.pod, None)?;
    }
    Ok(serde_json::Value::Array(out))
}

/// The per-round ratio of the fast path's MiB/s to the eBPF redirect's in
/// the same round (median and quartiles): None without both paths.
fn fast_gain(figures: &[Figures]) -> Option<[f64; 3]> {
    let redirect = figures.iter().find(|f| f.path == REDIRECT)?;
    let fast = figures.iter().find(|f| f.path == FAST_PATH)?;
    Some(median_q(fast.rounds.iter().zip(&redirect.rounds).map(|(f, r)| f / r).collect()))
}

/// The paths' names, as `main` gives them.
pub const PLAIN: &str = "plain loopback to the proxy";
pub const IPTABLES: &str = "iptables redirect";
pub const REDIRECT: &str = "eBPF redirect";
pub const FAST_PATH: &str = "eBPF redirect + fast path";
