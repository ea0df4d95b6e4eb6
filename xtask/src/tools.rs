//! What the build needs on the machine (the pinned nightly with rust-src,
//! bpf-linker and the LLVM it links against, iproute2, iptables): installed
//! when missing, or one message saying what to do.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    process::{cargo_command, run, succeeds},
    toolchain_file,
};

/// bpf-linker and the LLVM it is built against; the nightly in
/// redirect-ebpf/rust-toolchain.toml uses the same LLVM major.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: u32 = 22;

/// The eBPF toolchain channel, from its one place.
fn ebpf_channel(root: &Path) -> anyhow::Result<String> {
    let file = root.join("redirect-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    toolchain_file::channel(&text).map(str::to_owned).with_context(|| format!("{}: no channel", file.display()))
}

pub fn ensure_tools(root: &Path) -> anyhow::Result<()> {
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
        run(cargo_command().env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")).args([
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

/// A fresh virtualenv at `venv` holding `package==version` from PyPI
/// (python3-venv installed first where missing). `what` names it in the
/// messages.
pub fn pip_install_into_venv(venv: &str, package: &str, version: &str, what: &str) -> anyhow::Result<()> {
    if !succeeds(Command::new("python3").args(["-m", "venv", "--help"])) {
        apt_install(&["python3", "python3-venv"])?;
    }
    eprintln!("xtask: installing {what} (PyPI {package} {version}) into {venv}");
    if let Some(parent) = Path::new(venv).parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::process::run(Command::new("python3").args(["-m", "venv", "--clear", venv]))?;
    crate::process::run(Command::new(Path::new(venv).join("bin/pip")).args(["install", "--quiet", &format!("{package}=={version}")]))
        .with_context(|| format!("installing {package} {version} from PyPI"))
}

pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!("missing packages {packages:?} and no apt-get to install them: install them, then rerun");
    }
    eprintln!("xtask: installing {packages:?} with apt-get");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive"))
}
