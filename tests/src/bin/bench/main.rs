//! `cargo xtask bench [--smoke]`: eBPF against iptables against no
//! interception, measured side by side in one run on this machine.
//!
//! - connection rate and connect-to-first-byte latency (p50, p99) for a
//!   client in a pod: direct to the proxy port (the floor), through the
//!   iptables dataplane, through the eBPF dataplane; with 0/100/1,000/10,000
//!   excluded CIDRs and 0/1,000 excluded ports; and per address family
//!   (IPv4, IPv4-mapped, IPv6), each against its own direct path, with what
//!   each program costs a connection of that family;
//! - the time to apply a changed exclusion list to 100 running pods, with a
//!   client dialling through the change and counting failed or mis-steered
//!   connections;
//! - request/response latency (64 B, 1 KiB, 16 KiB) and bulk throughput of
//!   a long-lived connection through the local proxy hop: plain loopback,
//!   iptables, eBPF, eBPF with the sockmap fast path, for each placement of
//!   the client and the proxy on the CPUs (`long_lived`);
//! - kernel map memory (memlock) per map, per pod and per connection, and
//!   the agent's resident memory with 100 pods;
//! - the CNI plugin: ADD to enrolled, per pod one at a time and with 110
//!   pods (kubelet's default maximum per node) added at once.
//!
//! Writes `bench.md` and `bench.json` to the output directory, and with
//! `--png` the scaling curves as `bench.png`. `--only connection-rate`
//! (with the families and the programs' cost), `long-lived`, `apply` (with
//! memory) or `cni` runs one section alone. Benchmarks
//! are not tests: `--smoke` only checks that every part runs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tests::{APP_UID, Node, Pod};

mod interrupt;
mod long_lived;
mod plot;

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Runs netprobe inside the pod (its netns and cgroup) as the app's UID.
fn probe(pod: &Pod, args: &[&str]) -> anyhow::Result<String> {
    probe_on(pod, args, None)
}

/// [`probe`] on one CPU (`cpu`), or wherever the scheduler puts it (None).
fn probe_on(pod: &Pod, args: &[&str], cpu: Option<usize>) -> anyhow::Result<String> {
    interrupt::check()?;
    let mut c = Command::new(tests::netprobe());
    c.args(args);
    if let Some(cpu) = cpu {
        let set = long_lived::cpu_set(Some(cpu))?;
        // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs
        // between fork and exec here.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
            });
        }
    }
    redirect_agent::sandbox::enter_maybe_cgroup(&mut c, &pod.ns.path(), pod.cgroup_path(), APP_UID)?;
    let out = c.output()?;
    // A netprobe ended by the same Ctrl-C reports as interrupted, not as failed.
    interrupt::check()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || text.starts_with("error") {
        bail!("netprobe {args:?}: {text}");
    }
    Ok(text)
}

/// `v` in ascending order.
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

#[derive(serde::Serialize, Clone, Copy)]
struct Rate {
    per_sec: f64,
    /// Median over rounds of this rate / the floor's rate in the same round.
    ratio: f64,
    /// First and third quartile of those per-round ratios: how far one
    /// round can be trusted on this machine.
    ratio_q1: f64,
    ratio_q3: f64,
    p50_us: f64,
    p99_us: f64,
    errors: f64,
}

impl Rate {
    /// `0.97 [0.93–1.01]`: median and quartiles of the per-round ratios.
    fn ratios(&self) -> String {
        format!("{:.2} [{:.2}–{:.2}]", self.ratio, self.ratio_q1, self.ratio_q3)
    }
}

/// Connection rates of several targets, measured in interleaved rounds so
/// that drift on a shared machine hits every target alike (the order turns
/// each round, so none always runs first). Per target: the total rate, its
/// ratio to the first target (the floor) as the median (and quartiles) of
/// the per-round ratios, and the median over rounds of p50 and p99.
fn connrates(targets: &[(&Pod, &str)], rounds: usize, slice_ms: u64) -> anyhow::Result<Vec<Rate>> {
    let slice = slice_ms.to_string();
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (pod, to) = targets[i];
            lines[i].push(probe(pod, &["connrate", to, &slice])?);
        }
    }
    let median = |v: Vec<f64>| sorted(v)[rounds / 2];
    let rate = |l: &String| field(l, "connections") / field(l, "seconds");
    Ok(lines
        .iter()
        .map(|ls| {
            let sum = |k: &str| ls.iter().map(|l| field(l, k)).sum::<f64>();
            let ratios = sorted(ls.iter().zip(&lines[0]).map(|(l, floor)| rate(l) / rate(floor)).collect());
            Rate {
                per_sec: sum("connections") / sum("seconds"),
                ratio: ratios[rounds / 2],
                ratio_q1: ratios[rounds / 4],
                ratio_q3: ratios[rounds * 3 / 4],
                p50_us: median(ls.iter().map(|l| field(l, "p50_us")).collect()),
                p99_us: median(ls.iter().map(|l| field(l, "p99_us")).collect()),
                errors: sum("errors"),
            }
        })
        .collect())
}

/// Runs and nanoseconds, by kernel program name.
type ProgramStats = BTreeMap<String, (u64, u64)>;

/// Run count and total run time of our programs (every pod's instance),
/// by kernel program name.
fn program_stats() -> anyhow::Result<ProgramStats> {
    let mut by_name = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info?;
        let name = info.name_as_str().unwrap_or("").to_owned();
        if name.starts_with("redirect_") {
            let e: &mut (u64, u64) = by_name.entry(name).or_default();
            e.0 += info.run_count();
            e.1 += info.run_time().as_nanos() as u64;
        }
    }
    Ok(by_name)
}

/// A program's name as the kernel keeps it (15 characters: connect4 and
/// connect6 are both `redirect_connec`), as the tables show it.
fn label(name: &str) -> &str {
    match name {
        "redirect_connec" => "connect4 / connect6",
        "redirect_getsoc" => "getsockopt",
        "redirect_sk_loo" => "sk_lookup",
        "redirect_sockop" => "sockops",
        "redirect_getpee" => "getpeername4 / getpeername6",
        other => other,
    }
}

/// Connections made through `pod` (eBPF) to `to` in `millis`, and the runs
/// and nanoseconds each program spent meanwhile.
fn program_cost(pod: &Pod, to: &str, millis: u64) -> anyhow::Result<(f64, ProgramStats)> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
    let before = program_stats()?;
    let line = probe(pod, &["connrate", to, &millis.to_string()])?;
    let after = program_stats()?;
    let delta = after
        .into_iter()
        .map(|(name, (runs, ns))| {
            let (r0, n0) = before.get(&name).copied().unwrap_or_default();
            (name, (runs - r0, ns - n0))
        })
        .filter(|(_, (runs, _))| *runs > 0)
        .collect();
    Ok((field(&line, "connections"), delta))
}

/// IPv6 neighbour entries made since boot, on every CPU together (the
/// allocations column of `/proc/net/stat/ndisc_cache`, one line per CPU).
fn nd_entries_made() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/stat/ndisc_cache").context("/proc/net/stat/ndisc_cache")?;
    text.lines()
        .skip(1)
        .map(|l| {
            let allocs = l.split_whitespace().nth(1).context("/proc/net/stat/ndisc_cache: no allocs column")?;
            u64::from_str_radix(allocs, 16).with_context(|| format!("/proc/net/stat/ndisc_cache: allocs {allocs:?}"))
        })
        .sum()
}

fn mesh(cidrs: usize, ports: usize) -> String {
    // Exclusions that never match the benchmark's destination (10.96.0.10:80).
    let c: Vec<String> = (0..cidrs).map(|i| format!("10.{}.{}.{}/32", 200 + i / 65536, (i / 256) % 256, i % 256)).collect();
    let p: Vec<String> = (0..ports).map(|i| (20000 + i).to_string()).collect();
    format!(
        "kind: MeshConfig\nspec:\n  traffic:\n    outboundIPRangeExclusionList: [{}]\n    outboundPortExclusionList: [{}]\n",
        c.join(", "),
        p.join(", ")
    )
}

/// memlock of a pinned map, as the kernel accounts it (fdinfo).
fn memlock(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map = aya::maps::MapData::from_pin(path).with_context(|| path.display().to_string())?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()).context("no memlock in fdinfo")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    interrupt::install()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let png = args.iter().any(|a| a == "--png");
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&out_dir)?;
    // Each round gives every path one slice; more rounds narrow the
    // quartiles of the per-round ratios (`--rounds N`, default 10).
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(n) if n >= 4 => n,
            _ => bail!("--rounds: expected a number of rounds ≥ 4, got {}", args.get(i + 1).map_or("nothing", String::as_str)),
        },
        None => 10,
    };
    let slice_ms: u64 = if smoke { 20 } else { 200 };
    let sizes: &[(usize, usize)] =
        if smoke { &[(0, 0), (100, 0)] } else { &[(0, 0), (100, 0), (1000, 0), (10000, 0), (0, 1000), (10000, 1000)] };
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim().to_owned();
    let mut md = format!(
        "# Benchmarks ({} mode), kernel {kernel}, {} CPUs\n\n",
        if smoke { "smoke" } else { "full" },
        std::thread::available_parallelism()?.get()
    );
    let mut json = BTreeMap::new();

    // `--only SECTION`: one section alone.
    let only = match args.iter().position(|a| a == "--only") {
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some(s @ ("connection-rate" | "long-lived" | "apply" | "cni")) => Some(s),
            other => bail!("--only: expected connection-rate, long-lived, apply or cni, got {}", other.unwrap_or("nothing")),
        },
        None => None,
    };
    let want = |section: &str| only.is_none_or(|o| o == section);
    if want("connection-rate") || want("long-lived") {
        // 1. Connection rate and latency.
        let node = Node::start(&mesh(0, 0))?;
        let plain = Pod::create(&node)?;
        let ipt = Pod::create(&node)?;
        let bpf = Pod::create(&node)?;
        let fast = Pod::create(&node)?;
        node.enroll_with(&ipt, &[], &["--dataplane", "iptables"])?;
        node.enroll_with(&bpf, &[], &["--dataplane", "ebpf", "--fast-path", "off"])?;
        node.enroll_with(&fast, &[], &["--dataplane", "ebpf", "--fast-path", "on"])?;
        if want("connection-rate") {
            md.push_str("## Connection rate and connect-to-first-byte latency\n\nA client in a pod opens, reads one line, closes (abortively, SO_LINGER 0, on every path: TIME_WAIT sockets of the iptables path, whose sockets see the service IP, are not reused by default and exhaust the client's ports within seconds), for ");
            let _ = writeln!(
                md,
                "{:.1} s per cell, in {rounds} rounds interleaved between the paths (× direct: the median of the {rounds} per-round ratios, in brackets their first and third quartile). *direct*: to 127.0.0.1:15001, no interception (the floor); *iptables* / *eBPF* / *eBPF+fast path*: to 10.96.0.10:80, redirected to the same kind of proxy.\n",
                (rounds as u64 * slice_ms) as f64 / 1000.0
            );
            md.push_str("| excluded CIDRs | excluded ports | direct conn/s | iptables conn/s (× direct) | eBPF conn/s (× direct) | eBPF+fast path conn/s (× direct) | p50 µs direct / iptables / eBPF / +fast | p99 µs direct / iptables / eBPF / +fast |\n|---:|---:|---:|---:|---:|---:|---|---|\n");
            let mut rows = Vec::new();
            let mut curves: Vec<plot::Curve> = ["iptables", "eBPF", "eBPF + fast path"]
                .into_iter()
                .map(|name| plot::Curve { name, ratio: Vec::new(), p50_us: Vec::new() })
                .collect();
            for &(cidrs, ports) in sizes {
                interrupt::check()?;
                node.set_mesh_config(&mesh(cidrs, ports));
                let r = connrates(
                    &[(&plain, "127.0.0.1:15001"), (&ipt, "10.96.0.10:80"), (&bpf, "10.96.0.10:80"), (&fast, "10.96.0.10:80")],
                    rounds,
                    slice_ms,
                )?;
                let (d, i, e, f) = (r[0], r[1], r[2], r[3]);
                let _ = writeln!(
                    md,
                    "| {cidrs} | {ports} | {:.0} | {:.0} {} | {:.0} {} | {:.0} {} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} / {:.0} |",
                    d.per_sec,
                    i.per_sec,
                    i.ratios(),
                    e.per_sec,
                    e.ratios(),
                    f.per_sec,
                    f.ratios(),
                    d.p50_us,
                    i.p50_us,
                    e.p50_us,
                    f.p50_us,
                    d.p99_us,
                    i.p99_us,
                    e.p99_us,
                    f.p99_us
                );
                rows.push(
            serde_json::json!({"excluded_cidrs": cidrs, "excluded_ports": ports, "direct": d, "iptables": i, "ebpf": e, "ebpf_fast_path": f,
            "iptables_ratio": i.ratio, "ebpf_ratio": e.ratio, "ebpf_fast_path_ratio": f.ratio}),
        );
                if ports == 0 {
                    for (curve, r) in curves.iter_mut().zip([i, e, f]) {
                        curve.ratio.push((cidrs, r.ratio));
                        curve.p50_us.push((cidrs, r.p50_us));
                    }
                }
                eprintln!(
                    "bench: {cidrs} CIDRs, {ports} ports: direct {:.0}/s, iptables {:.0}/s, eBPF {:.0}/s, eBPF+fast path {:.0}/s",
                    d.per_sec, i.per_sec, e.per_sec, f.per_sec
                );
            }
            json.insert("connection_rate", serde_json::Value::Array(rows));
            if png {
                let title = format!("Connection rate and latency against list size (0 excluded ports), kernel {kernel}");
                plot::draw(&out_dir.join("bench.png"), &title, &curves)?;
                md.push_str("\n![scaling curves](bench.png)\n");
            }

            // What the eBPF path adds per connection, program by program (the
            // kernel's own run-time statistics, on only for this measurement).
            let (conns, cost) = program_cost(&bpf, "10.96.0.10:80", if smoke { 200 } else { 2000 })?;
            md.push_str("\n### Cost per connection of each program (eBPF, kernel run-time statistics)\n\n| program | runs per connection | ns per run | ns per connection |\n|---|---:|---:|---:|\n");
            let mut total = 0.0;
            for (name, (runs, ns)) in &cost {
                let (per_conn_runs, per_run, per_conn) = (*runs as f64 / conns, *ns as f64 / (*runs).max(1) as f64, *ns as f64 / conns);
                total += per_conn;
                let _ = writeln!(md, "| {} | {per_conn_runs:.1} | {per_run:.0} | {per_conn:.0} |", label(name));
            }
            let _ = writeln!(
                md,
                "| all | | | {total:.0} |\n\n({conns:.0} connections through the eBPF path, with the kernel's BPF run-time statistics enabled.)"
            );
            json.insert("program_cost_ns_per_connection", serde_json::json!({"connections": conns, "total": total,
        "programs": cost.iter().map(|(n, (runs, ns))| (n.clone(), serde_json::json!({"runs": runs, "ns": ns}))).collect::<BTreeMap<_, _>>()}));

            // 1b. By address family, on dual-stack pods whose proxy listens on
            // [::] (both families), no lists: each family against its own direct
            // path to the same proxy.
            let plain6 = Pod::dual_stack(&node)?;
            let ipt6 = Pod::dual_stack(&node)?;
            let bpf6 = Pod::dual_stack(&node)?;
            node.set_mesh_config(&mesh(0, 0));
            node.enroll_with(&ipt6, &[], &["--dataplane", "iptables"])?;
            node.enroll_with(&bpf6, &[], &["--dataplane", "ebpf"])?;
            let families = [
                ("IPv4", "127.0.0.1:15001", "10.96.0.10:80"),
                ("IPv4-mapped (an IPv6 socket)", "[::ffff:127.0.0.1]:15001", "[::ffff:10.96.0.10]:80"),
                ("IPv6", "[::1]:15001", "[fd00:96::10]:80"),
            ];
            md.push_str("\n### By address family (no lists)\n\nDual-stack pods, the proxy listening on `[::]` (both families); each family against its own direct path to the same proxy, in interleaved rounds as above. iptables: `iptables` for IPv4 and IPv4-mapped, `ip6tables` for IPv6.\n\n| family | direct path | direct conn/s | iptables conn/s (× direct) | eBPF conn/s (× direct) | p50 µs direct / iptables / eBPF | p99 µs direct / iptables / eBPF |\n|---|---|---:|---:|---:|---|---|\n");
            let mut by_family = Vec::new();
            for (family, direct, service) in families {
                interrupt::check()?;
                let r = connrates(&[(&plain6, direct), (&ipt6, service), (&bpf6, service)], rounds, slice_ms)?;
                let (d, i, e) = (r[0], r[1], r[2]);
                let _ = writeln!(
                    md,
                    "| {family} | `{direct}` | {:.0} | {:.0} {} | {:.0} {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
                    d.per_sec,
                    i.per_sec,
                    i.ratios(),
                    e.per_sec,
                    e.ratios(),
                    d.p50_us,
                    i.p50_us,
                    e.p50_us,
                    d.p99_us,
                    i.p99_us,
                    e.p99_us
                );
                by_family.push(serde_json::json!({"family": family, "direct_path": direct, "direct": d, "iptables": i, "ebpf": e, "iptables_ratio": i.ratio, "ebpf_ratio": e.ratio}));
                eprintln!("bench: {family}: direct {:.0}/s, iptables {:.0}/s, eBPF {:.0}/s", d.per_sec, i.per_sec, e.per_sec);
            }
            json.insert("connection_rate_by_family", serde_json::Value::Array(by_family));
            md.push_str("\nWhat the eBPF programs cost a connection of each family (kernel run-time statistics; from Linux 5.12 each family hands its destination over through the pod's own region of an array, taking its slot with one atomic fetch-and-add: one word for IPv4 and IPv4-mapped, three for IPv6; before 5.12 IPv6 goes through an LRU hash keyed by the socket cookie):\n\n| family | program | runs per connection | ns per run | ns per connection |\n|---|---|---:|---:|---:|\n");
            let mut family_cost = BTreeMap::new();
            let mut neighbours = Vec::new();
            for (family, _, service) in families {
                let made = nd_entries_made()?;
                let (conns, cost) = program_cost(&bpf6, service, if smoke { 200 } else { 2000 })?;
                neighbours.push((family, (nd_entries_made()? - made) as f64 / conns.max(1.0)));
                let mut total = 0.0;
                for (name, (runs, ns)) in &cost {
                    let per_conn = *ns as f64 / conns;
                    total += per_conn;
                    let _ = writeln!(
                        md,
                        "| {family} | {} | {:.1} | {:.0} | {per_conn:.0} |",
                        label(name),
                        *runs as f64 / conns,
                        *ns as f64 / (*runs).max(1) as f64
                    );
                }
                let _ = writeln!(md, "| {family} | all | | | {total:.0} |");
                family_cost.insert(family, serde_json::json!({"connections": conns, "total_ns_per_connection": total}));
            }
            // Each redirected IPv6 connection goes to an address of its own
            // (the hand-over), and IPv6 keys its neighbour entries on `lo` by
            // address where IPv4 keeps one: an entry made per connection,
            // freed a minute after it was last used.
            md.push_str("\nIPv6 neighbour entries the kernel made per connection of the eBPF path (`/proc/net/stat/ndisc_cache`, allocations during the cost runs above): each redirected IPv6 connection goes to an address of its own, and IPv6 keys its neighbour entries on `lo` by address (IPv4 keeps one for all of loopback). An unused entry is freed after `gc_stale_time` (60 s), at the table's next sweep.\n\n| family | neighbour entries per connection |\n|---|---:|\n");
            for (family, per_conn) in &neighbours {
                let _ = writeln!(md, "| {family} | {per_conn:.2} |");
            }
            json.insert(
                "ipv6_neighbours_per_connection",
                serde_json::json!(neighbours.iter().map(|(f, n)| (f.to_string(), *n)).collect::<BTreeMap<_, _>>()),
            );
            json.insert("program_cost_by_family", serde_json::to_value(family_cost)?);
            drop((plain6, ipt6, bpf6));
        }

        // 2. Long-lived connections through the local proxy hop, with and
        // without the fast path, against plain loopback.
        if want("long-lived") {
            use long_lived::{FAST_PATH, IPTABLES, PLAIN, Path, REDIRECT};
            let paths = [
                Path { name: PLAIN, pod: &plain, to: "127.0.0.1:15001" },
                Path { name: IPTABLES, pod: &ipt, to: "10.96.0.10:80" },
                Path { name: REDIRECT, pod: &bpf, to: "10.96.0.10:80" },
                Path { name: FAST_PATH, pod: &fast, to: "10.96.0.10:80" },
            ];
            json.insert("long_lived", long_lived::measure(&mut md, &paths, rounds, smoke)?);
        }
        drop((plain, ipt, bpf, fast));
        drop(node);
    }

    if want("apply") {
        // 3. A changed list applied to 100 running pods.
        let pods_n = if smoke { 10 } else { 100 };
        let node = Node::start(&mesh(0, 0))?;
        let watched = Pod::create(&node)?;
        node.enroll_with(&watched, &[], &["--dataplane", "ebpf"])?;
        let mut pods = Vec::new();
        for _ in 1..pods_n {
            interrupt::check()?;
            let p = Pod::bare(&node)?;
            node.enroll_with(&p, &[], &["--dataplane", "ebpf"])?;
            pods.push(p);
        }
        let rss = node.agent_pid().map(rss_kib).unwrap_or(0);
        // A client dials through the change and checks every destination.
        let mut client = Command::new(tests::netprobe());
        client.args(["connrate", "10.96.0.10:80", "3000", "out 10.96.0.10:80"]);
        redirect_agent::sandbox::enter_maybe_cgroup(&mut client, &watched.ns.path(), watched.cgroup_path(), APP_UID)?;
        let client = client.stdout(std::process::Stdio::piped()).spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        let mut apply = BTreeMap::new();
        for (cidrs, ports) in [(1000, 1000), (10000, 0), (0, 0)] {
            std::fs::write(&node.mesh_config, mesh(cidrs, ports))?;
            let t = Instant::now();
            let (ok, out) = node.cli(&["reload"]);
            let secs = t.elapsed().as_secs_f64();
            if !ok {
                bail!("reload: {out}");
            }
            apply.insert(format!("{cidrs} CIDRs + {ports} ports"), secs);
        }
        let line = String::from_utf8_lossy(&client.wait_with_output()?.stdout).trim().to_owned();
        md.push_str(&format!(
            "\n## Applying a changed list to {pods_n} running pods (eBPF)\n\n| new list | time to apply to every pod |\n|---|---:|\n"
        ));
        for (what, secs) in &apply {
            let _ = writeln!(md, "| {what} | {:.0} ms |", secs * 1000.0);
        }
        let _ = writeln!(
            md,
            "\nA client in one pod dialled throughout: {} connections, {} failed, {} given a wrong destination. (iptables: fsm-init applies lists once, at pod start; a changed list means restarting every pod.)",
            field(&line, "connections"),
            field(&line, "errors"),
            field(&line, "wrong")
        );
        json.insert("apply_to_pods", serde_json::json!({"pods": pods_n, "seconds": apply, "client": {"connections": field(&line, "connections"), "errors": field(&line, "errors"), "wrong": field(&line, "wrong")}}));

        // 4. Memory.
        md.push_str("\n## Memory\n\n| kernel map | capacity | memlock KiB | bytes per entry |\n|---|---:|---:|---:|\n");
        let status = node.status();
        let mut mem = BTreeMap::new();
        for m in status["maps"].as_array().cloned().unwrap_or_default() {
            let name = m["map"].as_str().unwrap_or("").to_owned();
            let cap = m["capacity"].as_u64().unwrap_or(1).max(1);
            let bytes = memlock(&node.bpffs_dir.join("maps").join(&name)).unwrap_or(0);
            let _ = writeln!(md, "| {name} | {cap} | {} | {:.0} |", bytes / 1024, bytes as f64 / cap as f64);
            mem.insert(name, serde_json::json!({"capacity": cap, "memlock_bytes": bytes}));
        }
        // The outbound hand-over: fixed arrays, however many pods and
        // connections (redirect_common::handover): the per-pod ones, and
        // the node-wide one kernels before 5.12 write.
        for (name, cap) in [
            (
                redirect_common::maps::names::HANDOVER_POD,
                redirect_common::maps::capacity::HANDOVER_REGIONS * redirect_common::maps::capacity::HANDOVER_REGION_SLOTS,
            ),
            (
                redirect_common::maps::names::HANDOVER6_POD,
                redirect_common::maps::capacity::HANDOVER_REGIONS * redirect_common::maps::capacity::HANDOVER_REGION_SLOTS,
            ),
            (redirect_common::maps::names::HANDOVER, redirect_common::maps::capacity::HANDOVER_SLOTS),
        ] {
            let bytes = memlock(&node.bpffs_dir.join("maps").join(name)).unwrap_or(0);
            let _ = writeln!(md, "| {name} | {cap} | {} | {:.0} |", bytes / 1024, bytes as f64 / f64::from(cap));
            mem.insert(name.into(), serde_json::json!({"capacity": cap, "memlock_bytes": bytes}));
        }
        // Each pod's own fast-path sockhash (buckets preallocated, sockets
        // allocated as they join).
        let pod_dirs = std::fs::read_dir(node.bpffs_dir.join("pods"))?.filter_map(Result::ok);
        if let Some(pin) = pod_dirs.map(|d| d.path().join("fast_path")).find(|p| p.exists()) {
            let bytes = memlock(&pin).unwrap_or(0);
            let cap = redirect_common::maps::capacity::FAST_PATH_SOCKETS;
            let _ = writeln!(md, "| FAST_PATH (per pod) | {cap} | {} | {:.0} |", bytes / 1024, bytes as f64 / f64::from(cap));
            mem.insert("FAST_PATH (per pod)".into(), serde_json::json!({"capacity": cap, "memlock_bytes": bytes}));
        }
        let _ = writeln!(md, "\nAgent resident memory with {pods_n} enrolled pods: {} KiB.", rss);
        json.insert("memory", serde_json::json!({"maps": mem, "agent_rss_kib_with_pods": rss, "pods": pods_n}));
        drop(pods);
        drop(watched);
        drop(node);
    }

    // 5. CNI ADD -> enrolled.
    if want("cni") {
        interrupt::check()?;
        let adds = cni_adds(if smoke { 3 } else { 30 }, if smoke { 10 } else { 110 }, if smoke { 2 } else { BURSTS })?;
        md.push_str(
        "\n## CNI ADD to enrolled (`fsm-redirect-cni`, eBPF)\n\n| | pods | p50 ms | p99 ms | all done in ms |\n|---|---:|---:|---:|---:|\n",
    );
        let floor = AddTimes::median_of(&adds.floors);
        let burst = AddTimes::median_of(&adds.bursts);
        let spread = |rounds: &[AddTimes]| {
            let totals = sorted(rounds.iter().map(|r| r.total_ms).collect());
            format!("{:.0} [{:.0}–{:.0}]", totals[totals.len() / 2], totals[0], totals[totals.len() - 1])
        };
        let _ = writeln!(
            md,
            "| all at once, not meshed (the floor) | {} | {:.1} | {:.1} | {} |",
            floor.pods,
            floor.p50_ms,
            floor.p99_ms,
            spread(&adds.floors)
        );
        let _ = writeln!(md, "| all at once | {} | {:.1} | {:.1} | {} |", burst.pods, burst.p50_ms, burst.p99_ms, spread(&adds.bursts));
        for (what, r) in [("one at a time, not meshed (the floor)", &adds.one_floor), ("one at a time, after the burst", &adds.one)] {
            let _ = writeln!(md, "| {what} | {} | {:.1} | {:.1} | {:.0} |", r.pods, r.p50_ms, r.p99_ms, r.total_ms);
        }
        let ratios = sorted(adds.bursts.iter().zip(&adds.floors).map(|(b, f)| b.total_ms / f.total_ms).collect());
        let _ = writeln!(
            md,
            "\nAll at once: {} bursts, each after a burst of the floor, the pods removed (CNI DEL) between them; the rows give the median burst's p50 and p99 and the bursts' median [least–most] time until the last answer. The burst took {:.1}× its floor (median of the {} per-burst ratios; {:.1}–{:.1}). One at a time: {} ADDs, so p99 is the slowest.",
            adds.bursts.len(),
            ratios[ratios.len() / 2],
            ratios.len(),
            ratios[0],
            ratios[ratios.len() - 1],
            adds.one.pods,
        );
        let _ = writeln!(
            md,
            "\nEach ADD: the plugin started as a runtime starts it, the agent reading the pods file, finding the pod's kubelet cgroup, attaching the node's shared programs and the pod's own (sk_lookup, sockops, sk_msg: loaded and verified ahead for the next {} pod ids by one worker per CPU, else now), writing its id and entries, and answering. The floors: the same pods, which the pods file does not mesh yet, answered without enrolling (what starting the plugins and one answer each cost). One at a time: {} ms apart, as a rollout adds pods, on the node holding the burst's pods (each refresh re-reads them one at a time between requests).",
            redirect_agent::ebpf::prewarm::AHEAD,
            ONE_AT_A_TIME_GAP.as_millis()
        );
        json.insert(
            "cni_add",
            serde_json::json!({"all_at_once_not_meshed": adds.floors.iter().map(AddTimes::json).collect::<Vec<_>>(),
        "all_at_once": adds.bursts.iter().map(AddTimes::json).collect::<Vec<_>>(),
        "one_at_a_time_not_meshed": adds.one_floor.json(), "one_at_a_time": adds.one.json()}),
        );
    }

    std::fs::write(out_dir.join("bench.md"), &md)?;
    std::fs::write(out_dir.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{md}");
    eprintln!("bench: wrote {}/bench.md and bench.json", out_dir.display());
    Ok(())
}

/// The pause before each of the one-at-a-time ADDs.
const ONE_AT_A_TIME_GAP: Duration = Duration::from_millis(300);

/// Latencies of CNI ADDs, from starting the plugin to its answer.
struct AddTimes {
    pods: usize,
    p50_ms: f64,
    p99_ms: f64,
    total_ms: f64,
}

impl AddTimes {
    fn of(mut ms: Vec<f64>, total_ms: f64) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        AddTimes { pods: ms.len(), p50_ms: at(0.5), p99_ms: at(0.99), total_ms }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"pods": self.pods, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "total_ms": self.total_ms})
    }

    /// The round whose last answer came at the median time.
    fn median_of(rounds: &[AddTimes]) -> &AddTimes {
        let mut by_total: Vec<&AddTimes> = rounds.iter().collect();
        by_total.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
        by_total[by_total.len() / 2]
    }
}

/// How many bursts of ADDs, and of their floor: one moved by a third and
/// more from run to run on this workplace's two shared CPUs.
const BURSTS: usize = 5;

/// The CNI section's three measures.
struct CniAdds {
    /// `all` pods at once that the pods file does not mesh, each round.
    floors: Vec<AddTimes>,
    /// The same `all` pods at once, meshed, each round (after that
    /// round's floor; removed again before the next).
    bursts: Vec<AddTimes>,
    /// `one` more pods not meshed, one after the other (the floor of one).
    one_floor: AddTimes,
    /// The same `one` pods meshed, one after the other, on the node
    /// holding the burst.
    one: AddTimes,
}

/// Each pod with its own netns and kubelet-made cgroup, added through the
/// plugin binary with a `prevResult` as a bridge plugin would give it.
fn cni_adds(one: usize, all: usize, rounds: usize) -> anyhow::Result<CniAdds> {
    use serde_json::json;
    let mut kubelet = tests::Kubelet::new(tests::Driver::Cgroupfs);
    let dir = tempfile::tempdir()?;
    let pods_file = dir.path().join("pods.json");
    let node = Node::start_with(
        "kind: MeshConfig\nspec: {}\n",
        &["--pods-file", pods_file.to_str().unwrap(), "--kubelet-cgroup-root", &kubelet.root],
    )?;
    let socket = redirect_agent::state::State::socket(node.state_dir.path());
    let n = one + all;
    let mut sandboxes = Vec::new();
    let mut objects = Vec::new();
    for i in 0..n {
        interrupt::check()?;
        let uid = format!("be7c0000-0000-4000-8000-{i:012x}");
        kubelet.pod(&uid);
        let ns = redirect_agent::sandbox::Netns::create(&tests::unique("cb"))?;
        objects.push(json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"namespace": "bench", "name": format!("p{i}"), "uid": uid}}));
        sandboxes.push((format!("p{i}"), uid, ns));
    }
    // Meshed: FSM's injector labels the pods it injected.
    // The first `meshed` pods meshed, the others not.
    let write_pods = |meshed: usize| -> anyhow::Result<()> {
        let mut items = objects.clone();
        for o in items.iter_mut().take(meshed) {
            o["metadata"]["labels"] = json!({"fsm-proxy-uuid": "x"});
            o["spec"] = json!({"containers": [{"name": "app"}, {"name": "sidecar"}]});
        }
        Ok(std::fs::write(&pods_file, json!({"apiVersion": "v1", "kind": "PodList", "items": items}).to_string())?)
    };
    let spawn = |i: usize, command: &str| -> anyhow::Result<std::process::Child> {
        let (name, uid, ns) = &sandboxes[i];
        let conf = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "fsm-redirect-cni", "socket": socket,
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns.path()}],
                           "ips": [{"address": format!("10.250.{}.{}/16", i / 250, i % 250 + 2), "interface": 0}]}
        });
        let mut child = Command::new(tests::cni_plugin_bin())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("{i:064x}"))
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name};K8S_POD_UID={uid}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes())?;
        Ok(child)
    };
    let finish = |child: std::process::Child| -> anyhow::Result<()> {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("CNI ADD failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(())
    };
    // All at once: each waited for on its own thread, so that its time is
    // its own.
    let burst = || -> anyhow::Result<AddTimes> {
        let start = Instant::now();
        let times: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..all)
                .map(|i| {
                    let (spawn, finish) = (&spawn, &finish);
                    s.spawn(move || -> anyhow::Result<f64> {
                        let t = Instant::now();
                        finish(spawn(i, "ADD")?)?;
                        Ok(t.elapsed().as_secs_f64() * 1000.0)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect::<anyhow::Result<Vec<f64>>>()
        })?;
        Ok(AddTimes::of(times, start.elapsed().as_secs_f64() * 1000.0))
    };
    let enrolled = || node.status()["pods"].as_array().map_or(0, Vec::len);
    // One at a time, at a rollout's pace, not back to back: the agent
    // verifies the next pods' programs meanwhile (`ebpf::prewarm`).
    let one_at_a_time = || -> anyhow::Result<AddTimes> {
        let mut single = Vec::new();
        let start = Instant::now();
        for i in all..n {
            std::thread::sleep(ONE_AT_A_TIME_GAP);
            let t = Instant::now();
            finish(spawn(i, "ADD")?)?;
            single.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(AddTimes::of(single, start.elapsed().as_secs_f64() * 1000.0))
    };
    let (mut floors, mut bursts) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        interrupt::check()?;
        write_pods(0)?;
        floors.push(burst()?);
        if enrolled() != 0 {
            bail!("{} pods enrolled that the pods file does not mesh", enrolled());
        }
        write_pods(all)?;
        bursts.push(burst()?);
        if round + 1 < rounds {
            for i in 0..all {
                finish(spawn(i, "DEL")?)?;
            }
        }
    }
    // Starting the plugin and one answer each, one at a time: pods the
    // pods file does not mesh yet, beside the last burst's.
    let one_floor = one_at_a_time()?;
    if enrolled() != all {
        bail!("{} pods enrolled, {all} expected (the last burst's)", enrolled());
    }
    write_pods(n)?;
    let one = one_at_a_time()?;
    if enrolled() != n {
        bail!("{} of {n} pods enrolled", enrolled());
    }
    for i in 0..n {
        finish(spawn(i, "DEL")?)?;
    }
    drop(node);
    drop(sandboxes);
    Ok(CniAdds { floors, bursts, one_floor, one })
}
