//! `redirect-agent`: the node agent and its command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use redirect_agent::{
    agent::{self, AgentOptions},
    control::{self, Request},
    daemon, demo,
    ebpf::{maps::ProxySettings, pins::{self, Pins}},
    pod::{self, PodSpec},
    state,
};
use redirect_common::defaults;

/// Intercepts the TCP traffic of FSM mesh pods with eBPF, as fsm-init's
/// iptables rules do, without an init container per pod.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Where the agent keeps its state and control socket.
    #[arg(long, global = true, env = "REDIRECT_STATE_DIR", default_value = state::DEFAULT_DIR)]
    state_dir: PathBuf,
    /// Where the agent pins its maps and links (on a bpffs).
    #[arg(long, global = true, env = "REDIRECT_BPFFS_DIR", default_value = pins::DEFAULT_ROOT)]
    bpffs_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (until Ctrl-C or SIGTERM; interception goes on
    /// after it stops).
    Run {
        /// FSM MeshConfig, as `kubectl get meshconfig fsm-mesh-config -o yaml`
        /// (or -o json) prints it. Re-read when it changes. Without it: the
        /// file of the previous run, or FSM's defaults.
        #[arg(long)]
        mesh_config: Option<PathBuf>,
        /// The proxy's outbound listener port.
        #[arg(long, default_value_t = defaults::OUTBOUND_PORT, value_parser = clap::value_parser!(u16).range(1..))]
        outbound_port: u16,
        /// The proxy's inbound listener port.
        #[arg(long, default_value_t = defaults::INBOUND_PORT, value_parser = clap::value_parser!(u16).range(1..))]
        inbound_port: u16,
        /// The UID the proxy runs as; its connections are not redirected.
        #[arg(long, default_value_t = defaults::PROXY_UID)]
        proxy_uid: u32,
        /// Log every interception decision the kernel takes.
        #[arg(long)]
        log_decisions: bool,
    },
    /// Enroll a pod with the running agent.
    Enroll {
        /// A name unique on the node, e.g. `namespace/pod`.
        name: String,
        /// The pod's network namespace (e.g. /var/run/netns/X, /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
        /// The pod's cgroup v2 group, absolute or relative to the cgroup2 mount.
        #[arg(long)]
        cgroup: PathBuf,
        /// A pod annotation, KEY=VALUE (repeatable), e.g.
        /// flomesh.io/outbound-port-exclusion-list=8080,9090.
        #[arg(long = "annotation", value_parser = pod::parse_annotation)]
        annotations: Vec<(String, String)>,
        /// Take the annotations from a pod manifest (`kubectl get pod -o yaml`).
        #[arg(long)]
        pod_manifest: Option<PathBuf>,
    },
    /// Stop intercepting a pod.
    Remove { name: String },
    /// Show the enrolled pods.
    Status {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Re-read the MeshConfig now (optionally from another file).
    Reload {
        #[arg(long)]
        mesh_config: Option<PathBuf>,
    },
    /// Remove every trace of the agent: programs, links, maps, pins, state.
    Uninstall,
    /// Start the agent with a sandboxed demo pod (see README).
    Demo {
        #[arg(long)]
        log_decisions: bool,
    },
    #[command(hide = true)]
    DemoProxy {
        #[arg(long)]
        listen: SocketAddr,
    },
    #[command(hide = true)]
    DemoApp {
        #[arg(long)]
        to: SocketAddr,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = &cli.state_dir;
    match cli.command {
        Command::Run { mesh_config, outbound_port, inbound_port, proxy_uid, log_decisions } => {
            let opts = AgentOptions {
                state_dir: cli.state_dir.clone(),
                bpffs_dir: cli.bpffs_dir.clone(),
                mesh_config,
                settings: ProxySettings { outbound_port, inbound_port, proxy_uid, log_decisions },
            };
            runtime()?.block_on(daemon::run(opts, daemon::termination()))
        }
        Command::Enroll { name, netns, cgroup, annotations, pod_manifest } => {
            let mut all = match &pod_manifest {
                Some(path) => pod::annotations_from_file(path)?,
                None => Default::default(),
            };
            all.extend(annotations);
            let spec = PodSpec { name, netns, cgroup, annotations: all };
            spec.validate()?;
            let answer = control::call(dir, &Request::Enroll { pod: spec })?;
            println!("enrolled as pod {}", answer["id"]);
            Ok(())
        }
        Command::Remove { name } => {
            control::call(dir, &Request::Remove { name: name.clone() })?;
            println!("removed {name}");
            Ok(())
        }
        Command::Status { output } => {
            let status = control::call(dir, &Request::Status)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print_status(&serde_json::from_value(status)?),
            }
            Ok(())
        }
        Command::Reload { mesh_config } => {
            control::call(dir, &Request::Reload { path: mesh_config })?;
            println!("reloaded");
            Ok(())
        }
        Command::Uninstall => {
            // A running agent removes everything and stops; otherwise do it here.
            match control::call(dir, &Request::Uninstall) {
                Ok(_) => {}
                Err(_) => agent::uninstall(&Pins::new(&cli.bpffs_dir), dir)?,
            }
            println!("uninstalled: no programs, links, maps or state left");
            Ok(())
        }
        Command::Demo { log_decisions } => runtime()?.block_on(demo::run(log_decisions)),
        Command::DemoProxy { listen } => demo::proxy(listen),
        Command::DemoApp { to } => demo::app(to),
    }
}

fn print_status(s: &agent::Status) {
    println!(
        "MeshConfig: {}   ports: outbound {} inbound {}   proxy UID {}   tracked connections: {}",
        s.mesh_config.as_ref().map_or("FSM defaults".into(), |p| p.display().to_string()),
        s.settings.outbound_port,
        s.settings.inbound_port,
        s.settings.proxy_uid,
        s.tracked_connections
    );
    println!("{:<4} {:<28} {:<9} {:<22} {:>6} {:>6} {:>6}", "ID", "POD", "ATTACHED", "ADDRESSES", "X-CIDR", "I-CIDR", "X-PORT");
    for p in &s.pods {
        println!(
            "{:<4} {:<28} {:<9} {:<22} {:>6} {:>6} {:>6}",
            p.id,
            p.name,
            if p.attached { "yes" } else { "NO" },
            p.local_addrs.join(","),
            p.excluded_cidrs,
            p.included_cidrs,
            p.excluded_ports
        );
    }
}
