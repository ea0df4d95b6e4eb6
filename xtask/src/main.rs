//! `cargo xtask build | run | test | bench | vm-test | image | deploy-check`:
//! the project's commands, one module each. Each first makes sure the
//! machine has what the build needs (`tools`) and installs what is missing,
//! or stops with one message saying what to do.

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod deploy;
mod envoy;
mod image;
mod image_check;
mod oci;
mod previous;
mod process;
mod rootfs;
mod run;
mod test;
mod toolchain_file;
mod tools;
mod vm;
mod vm_test;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object and the agent (release); the agent embeds the object.
    Build,
    /// Build, then start the agent with a sandboxed demo pod (root).
    Run {
        /// Print every interception decision the kernel takes.
        #[arg(long)]
        log_decisions: bool,
    },
    /// Unit tests and the privileged integration tests in the real kernel (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name).
        args: Vec<String>,
    },
    /// Benchmarks: eBPF vs iptables vs no interception, side by side
    /// (writes target/bench/bench.md and bench.json). Root.
    Bench {
        /// Only check that every part runs (short, as in CI).
        #[arg(long)]
        smoke: bool,
        /// Also draw the scaling curves (target/bench/bench.png).
        #[arg(long)]
        png: bool,
        /// Rounds per cell (each gives every path one run: 200 ms of
        /// connections, or one long-lived connection; default 10, at least
        /// 4); more rounds narrow the spread of the ratios. Passed on as
        /// given: the bench owns the default and the bound.
        #[arg(long)]
        rounds: Option<String>,
        /// One section alone: connection-rate, long-lived, apply or cni
        /// (passed on; the bench says what it takes).
        #[arg(long)]
        only: Option<String>,
    },
    /// The privileged integration tests inside Debian's cloud kernels under
    /// qemu; prints (and writes to target/vm-matrix.md) kernel × test.
    VmTest {
        /// Comma-separated: 5.10, 6.1, 6.12.
        #[arg(long, value_delimiter = ',', default_values_t = ["5.10".to_string(), "6.1".to_string(), "6.12".to_string()])]
        kernels: Vec<String>,
    },
    /// The agent's container image, from scratch (no base image pulled):
    /// target/image/fsm-redirect-agent.tar, an OCI archive. Root.
    Image,
    /// Check the Kubernetes manifests in deploy/ offline (`test` does too).
    DeployCheck,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = process::workspace_root();
    std::env::set_current_dir(&root)?;
    tools::ensure_tools(&root)?;
    match cli.command {
        Cmd::Build => build::build(),
        Cmd::Run { log_decisions } => run::demo(&root, log_decisions),
        Cmd::Test { args } => test::test(&args),
        Cmd::Bench { smoke, png, rounds, only } => bench::bench(smoke, png, rounds, only),
        Cmd::VmTest { kernels } => vm_test::vm_test(&root, &kernels),
        Cmd::Image => image::image(&root),
        Cmd::DeployCheck => deploy::check(&root),
    }
}
