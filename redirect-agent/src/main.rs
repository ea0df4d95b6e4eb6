//! `redirect-agent`: the node agent and its command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use redirect_agent::{
    agent::{self, AgentOptions},
    cni::pods::PodSource,
    control::{Check, Client, Explanation, Query},
    daemon,
    dataplane::{Choice, Dataplane},
    ebpf::pins::{self, Pins},
    ipv6::Ipv6Mode,
    pod::{self, EnrollRequest},
    render,
    repair::RepairMode,
    settings::ProxySettings,
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

/// The proxy's ports and UID.
#[derive(clap::Args, Clone, Copy)]
struct ProxyArgs {
    /// The proxy's outbound listener port.
    #[arg(long, default_value_t = defaults::OUTBOUND_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    outbound_port: u16,
    /// The proxy's inbound listener port.
    #[arg(long, default_value_t = defaults::INBOUND_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    inbound_port: u16,
    /// The UID the proxy runs as; its connections are not redirected.
    #[arg(long, default_value_t = defaults::PROXY_UID)]
    proxy_uid: u32,
}

/// A pod's annotations.
#[derive(clap::Args)]
struct AnnotationArgs {
    /// A pod annotation, KEY=VALUE (repeatable), e.g.
    /// flomesh.io/outbound-port-exclusion-list=8080,9090.
    #[arg(long = "annotation", value_parser = pod::parse_annotation)]
    annotations: Vec<(String, String)>,
    /// Take the annotations from a pod manifest (`kubectl get pod -o
    /// yaml`), and, for `enroll`, what FSM injected into its spec: a pod
    /// whose fsm-init serves it is only recorded, one without FSM's
    /// `sidecar` container is refused.
    #[arg(long)]
    pod_manifest: Option<PathBuf>,
}

impl AnnotationArgs {
    /// The annotations (the manifest's, then `--annotation`'s), and the
    /// manifest's spec, if it has one.
    fn collect(self) -> anyhow::Result<pod::Manifest> {
        let mut manifest = match &self.pod_manifest {
            Some(path) => pod::manifest_from_file(path)?,
            None => Default::default(),
        };
        manifest.annotations.extend(self.annotations);
        Ok(manifest)
    }
}

/// What fsm-init's rules are made from.
#[derive(clap::Args)]
struct RuleArgs {
    /// FSM MeshConfig (default: FSM's defaults).
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    #[command(flatten)]
    annotations: AnnotationArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// The ip6tables variant (IPv6 pods; FSM has none).
    #[arg(long)]
    ipv6: bool,
    /// The pod IP for localProxyMode PodIP (default: `$POD_IP` for the
    /// shell, as fsm-init; read from the netns when applying).
    #[arg(long)]
    pod_ip: Option<std::net::IpAddr>,
}

#[derive(Subcommand)]
enum IptablesCommand {
    /// Print the script fsm-init runs (`iptables-restore --noflush <<EOF ... EOF`).
    Print {
        /// Print only the iptables-restore input.
        #[arg(long)]
        restore_input: bool,
        /// Chain names: FSM's generator's (`FSM_PROXY_*`, every FSM
        /// release) or the troubleshooting page's example (`fsm_PROXY_*`).
        #[arg(long, value_enum, default_value_t)]
        form: redirect_agent::iptables::rules::Form,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Apply the rules inside a network namespace (idempotent).
    Apply {
        #[arg(long)]
        netns: PathBuf,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Remove the rules from a network namespace.
    Remove {
        #[arg(long)]
        netns: PathBuf,
        /// The ip6tables rules.
        #[arg(long)]
        ipv6: bool,
    },
}

/// Where the node's pods and FSM's MeshConfig come from on Kubernetes.
#[derive(clap::Args)]
struct KubernetesArgs {
    /// Watch this node's pods and FSM's MeshConfig in the Kubernetes API
    /// (in-cluster credentials, or --kubeconfig): meshed pods are enrolled
    /// by the CNI plugin or, if they run already, by reconciling; changed
    /// annotations and MeshConfig apply live.
    #[arg(long, requires = "node_name")]
    kubernetes: bool,
    /// A kubeconfig file instead of in-cluster credentials.
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (spec.nodeName), e.g. from the downward API.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// FSM's namespace, where its MeshConfig is.
    #[arg(long, default_value = "fsm-system", env = "FSM_NAMESPACE")]
    fsm_namespace: String,
    /// The name of FSM's MeshConfig.
    #[arg(long, default_value = "fsm-mesh-config")]
    mesh_config_name: String,
}

impl KubernetesArgs {
    fn options(self) -> Option<redirect_agent::kubernetes::KubernetesOptions> {
        self.kubernetes.then(|| redirect_agent::kubernetes::KubernetesOptions {
            kubeconfig: self.kubeconfig,
            node_name: self.node_name.unwrap_or_default(),
            fsm_namespace: self.fsm_namespace,
            mesh_config_name: self.mesh_config_name,
        })
    }
}

// `run`'s options make its variant large; the command is parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the node agent (until Ctrl-C or SIGTERM; interception goes on
    /// after it stops).
    Run {
        /// FSM MeshConfig, as `kubectl get meshconfig fsm-mesh-config -o yaml`
        /// (or -o json) prints it. Re-read when it changes. Without it: the
        /// file of the previous run, or FSM's defaults.
        #[arg(long, conflicts_with = "kubernetes")]
        mesh_config: Option<PathBuf>,
        #[command(flatten)]
        proxy: ProxyArgs,
        #[command(flatten)]
        kubernetes: KubernetesArgs,
        /// Log every interception decision the kernel takes.
        #[arg(long)]
        log_decisions: bool,
        /// Splice local hops (app <-> its proxy over loopback) with
        /// sockmap/sk_msg, skipping TCP/IP for their data (eBPF dataplane).
        /// Changing it and restarting the agent applies it to running pods:
        /// open connections move to TCP, never the other way.
        #[arg(long, value_enum, default_value = "off")]
        fast_path: Switch,
        /// eBPF, fsm-init's iptables rules, or eBPF where the kernel and the
        /// pod allow it and iptables elsewhere.
        #[arg(long, value_enum, default_value = "auto")]
        dataplane: Choice,
        /// Whose IPv6 connections are intercepted (as the ip6tables variant
        /// of fsm-init's rules would): pods with a global IPv6 address
        /// (auto), every pod (on), none (off: fsm-init's IPv4-only
        /// behaviour). IPv4-mapped destinations are IPv4 and always are.
        /// The proxy must then listen on [::]:15001 and [::]:15003 too.
        #[arg(long, value_enum, default_value = "auto")]
        ipv6: Ipv6Mode,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9901); off by default.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Seconds between re-reads of pods' addresses, interfaces and
        /// routes (missing programs are re-attached then too); changes the
        /// kernel announces are followed at once besides.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        refresh_interval: u64,
        /// The most entries each of a pod's four list annotations may hold;
        /// a pod with more is refused at enrolment (the node's policy maps
        /// are shared by every pod).
        #[arg(long, default_value_t = redirect_agent::settings::DEFAULT_MAX_ANNOTATION_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
        max_annotation_entries: u32,
        /// The node's pods, on a node without the API (else --kubernetes):
        /// a PodList in JSON, as `kubectl get pods -A -o json
        /// --field-selector spec.nodeName=NODE` prints it, read at each CNI
        /// ADD and refresh. Pods with FSM's `fsm-proxy-uuid` label are
        /// enrolled (by the CNI plugin, or found running by reconciling);
        /// without a pod source the plugin's pods are left alone.
        #[arg(long, conflicts_with = "kubernetes")]
        pods_file: Option<PathBuf>,
        /// The kubelet's --cgroup-root: pods' cgroups are found below it
        /// (kubepods/…/pod<UID> or kubepods.slice/…-pod<UID>.slice).
        #[arg(long, default_value = "/")]
        kubelet_cgroup_root: String,
        /// Install the CNI plugin: chain it at the end of the primary
        /// network configuration in this directory (the runtime's CNI conf
        /// dir, e.g. /etc/cni/net.d), restore the entry at each refresh if
        /// the primary CNI rewrote the file; `uninstall` takes it out.
        #[arg(long)]
        cni_conf_dir: Option<PathBuf>,
        /// Where the plugin's binary is copied with --cni-conf-dir (the
        /// runtime's CNI bin dir).
        #[arg(long, default_value = "/opt/cni/bin", requires = "cni_conf_dir")]
        cni_bin_dir: PathBuf,
        /// Namespaces whose pods the mesh never holds: the plugin passes
        /// their ADDs without asking the agent, so that an agent that is
        /// down or behind holds none of them back (default: kube-system and
        /// --fsm-namespace). Comma-separated; "" for none.
        #[arg(long, value_delimiter = ',', requires = "cni_conf_dir")]
        cni_exclude_namespaces: Option<Vec<String>>,
        /// The plugin's `failOpen`: meshed pods start, unintercepted, when
        /// the agent can't be reached or refuses them (reconciling enrolls
        /// them later and `status` marks them "started unintercepted").
        /// Off: their ADD fails and the kubelet retries.
        #[arg(long, requires = "cni_conf_dir")]
        cni_fail_open: bool,
        /// The container runtime's own configuration, to check that it
        /// looks for CNI where --cni-conf-dir and --cni-bin-dir say
        /// (containerd's config.toml, or CRI-O's /etc/crio or a crio.conf);
        /// repeatable, absent ones skipped. Where none agrees, the plugin is
        /// not chained (an entry whose binary the runtime can't find would
        /// fail every pod's ADD) and `diagnose` says why.
        #[arg(long, requires = "cni_conf_dir")]
        cni_runtime_config: Vec<PathBuf>,
        /// A meshed pod that started around the plugin (its ADD missed) is
        /// enrolled where it runs; connections it opened before stay
        /// direct while they last. Beyond that: `label` it
        /// (fsm-redirect/started-unintercepted=true), `evict` it (its
        /// controller replaces it; PodDisruptionBudgets respected) or
        /// `delete` it. Needs --kubernetes and, beyond in-place, the RBAC
        /// verbs in deploy/repair/.
        #[arg(long, value_enum, default_value_t = RepairMode::InPlace, requires = "kubernetes")]
        repair: RepairMode,
    },
    /// Why a connection is (or is not) intercepted: the verdict and the rule,
    /// from the configured lists and from the kernel's state.
    Explain {
        pod: String,
        /// Outbound: the destination a process of the pod dials
        /// (10.96.0.10:80, [fd00::10]:80, [::ffff:10.96.0.10]:80).
        #[arg(long, required_unless_present = "inbound")]
        to: Option<std::net::SocketAddr>,
        /// Outbound: the UID of the dialling process.
        #[arg(long, default_value_t = 0)]
        uid: u32,
        /// Outbound UDP to --to (the local DNS proxy's rule: 127.0.0.153:53).
        #[arg(long, requires = "to")]
        udp: bool,
        /// Inbound: a connection from elsewhere to the pod's --port.
        #[arg(long, requires = "port", conflicts_with = "to")]
        inbound: bool,
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Inbound: the interface it arrives on.
        #[arg(long, requires = "inbound")]
        iface: Option<String>,
        /// Inbound: it arrives over IPv6.
        #[arg(long = "ipv6", requires = "inbound")]
        inbound_ipv6: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run the troubleshooting checks (all pods, or one): agent, programs,
    /// lists in the kernel, proxy listeners. Exits non-zero if one fails.
    Diagnose {
        pod: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Enroll a pod with the running agent.
    Enroll {
        /// A name unique on the node, e.g. `namespace/pod`.
        name: String,
        /// The pod's network namespace (e.g. /var/run/netns/X, /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
        /// The pod's cgroup v2 group, absolute or relative to the cgroup2 mount
        /// (needed by the eBPF dataplane).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[command(flatten)]
        annotations: AnnotationArgs,
        /// Override the agent's --dataplane for this pod (`fsm-init`: its own
        /// fsm-init serves it, the agent only records it). A pod whose
        /// fsm-init serves it (its manifest, or fsm-init's rules in its
        /// netns) gets `fsm-init` whatever is asked.
        #[arg(long, value_enum)]
        dataplane: Option<Dataplane>,
        /// Override the agent's --fast-path for this pod.
        #[arg(long, value_enum)]
        fast_path: Option<Switch>,
        /// Override the agent's --ipv6 for this pod.
        #[arg(long, value_enum)]
        ipv6: Option<Ipv6Mode>,
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
    /// fsm-init's iptables rules for a pod, from the same MeshConfig and
    /// annotations the eBPF path reads: print, apply or remove them.
    Iptables {
        #[command(subcommand)]
        action: IptablesCommand,
    },
    /// Remove every trace of the agent: programs, links, maps, pins, state.
    Uninstall,
    /// Start the agent with a sandboxed demo pod (see README; built with
    /// the `sandbox` feature, as `cargo xtask run` does).
    #[cfg(feature = "sandbox")]
    Demo {
        #[arg(long)]
        log_decisions: bool,
    },
    #[cfg(feature = "sandbox")]
    #[command(hide = true)]
    DemoProxy {
        #[arg(long)]
        listen: SocketAddr,
    },
    #[cfg(feature = "sandbox")]
    #[command(hide = true)]
    DemoApp {
        #[arg(long)]
        to: SocketAddr,
    },
}

impl Command {
    /// The agent itself (and the demo that runs it), not a CLI call.
    fn is_long_running(&self) -> bool {
        match self {
            Command::Run { .. } => true,
            #[cfg(feature = "sandbox")]
            Command::Demo { .. } => true,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if !cli.command.is_long_running() {
        // A CLI whose output goes to `head` should end quietly, not panic.
        // SAFETY: restoring the default disposition of SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
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
        Command::Run {
            mesh_config,
            proxy: ProxyArgs { outbound_port, inbound_port, proxy_uid },
            kubernetes,
            log_decisions,
            fast_path,
            dataplane,
            ipv6,
            metrics_listen,
            refresh_interval,
            max_annotation_entries,
            pods_file,
            kubelet_cgroup_root,
            cni_conf_dir,
            cni_bin_dir,
            cni_exclude_namespaces,
            cni_fail_open,
            cni_runtime_config,
            repair,
        } => {
            let exclude_namespaces = cni_exclude_namespaces
                .unwrap_or_else(|| vec!["kube-system".to_owned(), kubernetes.fsm_namespace.clone()])
                .into_iter()
                .filter(|ns| !ns.is_empty())
                .collect();
            let opts = AgentOptions {
                state_dir: cli.state_dir.clone(),
                bpffs_dir: cli.bpffs_dir.clone(),
                mesh_config,
                settings: ProxySettings {
                    outbound_port,
                    inbound_port,
                    proxy_uid,
                    log_decisions,
                    inbound: true,
                    fast_path: fast_path == Switch::On,
                    ipv6,
                    max_annotation_entries,
                },
                dataplane,
                pods: pods_file.map_or(PodSource::None, PodSource::File),
                kubelet_cgroup_root,
                cni_install: cni_conf_dir.map(|conf_dir| redirect_agent::cni::install::CniInstall {
                    conf_dir,
                    bin_dir: cni_bin_dir,
                    socket: redirect_agent::state::State::socket(&cli.state_dir),
                    exclude_namespaces,
                    fail_open: cni_fail_open,
                    runtime_configs: cni_runtime_config,
                }),
                // On Kubernetes the agent runs in a container.
                mount_bpffs: !kubernetes.kubernetes,
                // Filled in where the agent reads the API.
                mesh_object: None,
            };
            let daemon_opts = daemon::DaemonOptions {
                refresh: std::time::Duration::from_secs(refresh_interval),
                metrics_listen,
                kubernetes: kubernetes.options(),
                repair,
            };
            runtime()?.block_on(daemon::run(opts, daemon_opts, daemon::termination()))
        }
        Command::Enroll { name, netns, cgroup, annotations, dataplane, fast_path, ipv6 } => {
            let fast_path = fast_path.map(|s| s == Switch::On);
            let manifest = annotations.collect()?;
            let request = EnrollRequest {
                name,
                netns,
                cgroup,
                annotations: manifest.annotations,
                injection: manifest.injection,
                dataplane,
                fast_path,
                ipv6,
                container_id: None,
                started_unintercepted: false,
            };
            request.validate()?;
            let (id, dataplane) = Client::new(dir).enroll(request)?;
            println!("enrolled as pod {id} ({} dataplane)", dataplane.name());
            Ok(())
        }
        Command::Remove { name } => {
            Client::new(dir).remove(&name)?;
            println!("removed {name}");
            Ok(())
        }
        Command::Status { output } => {
            let status = Client::new(dir).status()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print!("{}", render::status(&status)),
            }
            Ok(())
        }
        Command::Reload { mesh_config } => {
            let degraded = Client::new(dir).reload(mesh_config)?;
            if degraded.is_empty() {
                println!("reloaded");
                return Ok(());
            }
            // The reasons mostly start with the pod's name already.
            let list: Vec<String> = degraded
                .iter()
                .map(|d| if d.why.contains(&d.pod) { format!("  {}", d.why) } else { format!("  pod {}: {}", d.pod, d.why) })
                .collect();
            anyhow::bail!(
                "reloaded, except for {} degraded pod(s), which keep their previous lists and are retried at each refresh:\n{}",
                degraded.len(),
                list.join("\n")
            )
        }
        Command::Iptables { action } => iptables_command(action),
        Command::Explain { pod, to, uid, udp, inbound, port, iface, inbound_ipv6, output } => {
            let query = match (to, inbound) {
                (Some(to), false) if udp => Query::Udp { to },
                (Some(to), false) => Query::Outbound { to, uid },
                _ => Query::Inbound { port: port.expect("clap requires --port"), iface, ipv6: inbound_ipv6 },
            };
            let e: Explanation = Client::new(dir).explain(pod, query)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
                Output::Table => print!("{}", render::explanation(&e)),
            }
            Ok(())
        }
        Command::Diagnose { pod, output } => {
            let checks: Vec<Check> = match Client::new(dir).diagnose(pod) {
                Ok(checks) => checks,
                Err(e) => vec![Check {
                    pod: "-".into(),
                    check: "the agent is running".into(),
                    pass: false,
                    detail: format!("{e:#}"),
                    fix: Some("start it: `redirect-agent run --mesh-config FILE`".into()),
                }],
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
                Output::Table => print!("{}", render::checks(&checks)),
            }
            let failed = checks.iter().filter(|c| !c.pass).count();
            if failed > 0 {
                anyhow::bail!("{failed} check(s) failed");
            }
            Ok(())
        }
        Command::Uninstall => {
            // A running agent removes everything and stops; otherwise do it here.
            if Client::new(dir).uninstall().is_err() {
                agent::uninstall(&Pins::new(&cli.bpffs_dir), dir)?;
            }
            println!("uninstalled: no programs, links, maps or state left");
            Ok(())
        }
        #[cfg(feature = "sandbox")]
        Command::Demo { log_decisions } => runtime()?.block_on(redirect_agent::demo::run(log_decisions)),
        #[cfg(feature = "sandbox")]
        Command::DemoProxy { listen } => redirect_agent::demo::proxy(listen),
        #[cfg(feature = "sandbox")]
        Command::DemoApp { to } => redirect_agent::demo::app(to),
    }
}

fn iptables_command(action: IptablesCommand) -> anyhow::Result<()> {
    use redirect_agent::{
        config::{MeshConfig, PodPolicy, annotations::PodAnnotations},
        iptables::{Family, PodIp, apply, rules},
    };
    let family = |ipv6| if ipv6 { Family::V6 } else { Family::V4 };
    // The same parsing and validation as `run` and `enroll`.
    let build = |args: RuleArgs| -> anyhow::Result<_> {
        let mesh = match &args.mesh_config {
            Some(path) => MeshConfig::load(path)?,
            None => MeshConfig::fsm_default(),
        };
        let policy = PodPolicy::merge(&mesh, &PodAnnotations::from_map(&args.annotations.collect()?.annotations)?);
        let settings = ProxySettings {
            outbound_port: args.proxy.outbound_port,
            inbound_port: args.proxy.inbound_port,
            proxy_uid: args.proxy.proxy_uid,
            ..ProxySettings::default()
        };
        Ok((policy, settings, family(args.ipv6), args.pod_ip))
    };
    match action {
        IptablesCommand::Print { restore_input, form, rules: args } => {
            let (policy, settings, family, pod_ip) = build(args)?;
            let ip = pod_ip.map_or(PodIp::ShellVariable, PodIp::Addr);
            if restore_input {
                print!("{}", rules::restore_input(&policy, &settings, family, ip, form));
            } else {
                print!("{}", rules::fsm_init_script(&policy, &settings, family, ip, form));
            }
        }
        IptablesCommand::Apply { netns, rules: args } => {
            let (policy, settings, family, pod_ip) = build(args)?;
            let ip = match pod_ip.or(redirect_agent::netns::pod_net(&netns)?.pod_ip(family == Family::V6)) {
                Some(ip) => PodIp::Addr(ip),
                None if policy.local_proxy_mode == redirect_agent::config::LocalProxyMode::PodIP => {
                    anyhow::bail!("localProxyMode PodIP: {} has no {family:?} pod IP; give --pod-ip", netns.display())
                }
                None => PodIp::ShellVariable,
            };
            apply::apply(&netns, family, &rules::restore_input(&policy, &settings, family, ip, rules::Form::Fsm))?;
            println!("applied fsm-init's rules in {}", netns.display());
        }
        IptablesCommand::Remove { netns, ipv6 } => {
            apply::remove(&netns, family(ipv6))?;
            println!("removed fsm-init's rules from {}", netns.display());
        }
    }
    Ok(())
}
