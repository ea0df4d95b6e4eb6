//! `cargo xtask vm-test`: the integration tests inside Debian's cloud
//! kernels under qemu (the machinery is `vm`'s); prints and writes the
//! kernel × test table.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use crate::{
    process::{cargo, cargo_command, have, require_root, succeeds},
    test::ensure_test_tools,
    tools::apt_install,
    vm,
};

pub fn vm_test(root: &Path, kernels: &[String]) -> anyhow::Result<()> {
    require_root("vm-test")?;
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("depmod", "kmod"),
        ("cpio", "cpio"),
        ("strip", "binutils"),
    ] {
        if !have(tool) {
            apt_install(&[package])?;
        }
    }
    // The initramfs needs a static busybox (Debian's `busybox` is dynamic).
    if !Path::new("/bin/busybox").exists() || !succeeds(Command::new("sh").arg("-c").arg("ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'"))
    {
        apt_install(&["busybox-static"])?;
    }
    let bins = build_test_bins(root, ensure_test_tools()?)?;
    let runs = vm::vm_test(kernels, &bins)?;
    let table = vm::table(&runs);
    println!("{table}");
    let path = root.join("target/vm-matrix.md");
    std::fs::write(&path, &table)?;
    eprintln!("vm-test: table written to {}", path.display());
    let count = |what: fn(&vm::Outcome) -> bool| -> usize { runs.iter().map(|r| r.results.values().filter(|o| what(o)).count()).sum() };
    let failed = count(|o| *o == vm::Outcome::Fail);
    let passed = count(|o| *o == vm::Outcome::Pass);
    let skipped = count(|o| matches!(o, vm::Outcome::Skipped(_)));
    let broken = runs.iter().filter(|r| r.broken.is_some()).count();
    println!("vm: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 || broken > 0 {
        bail!("vm-test: {failed} test(s) failed, {broken} kernel(s) broken");
    }
    Ok(())
}

/// The integration test binaries (tests crate), netprobe and the agent.
fn build_test_bins(root: &Path, envoy: PathBuf) -> anyhow::Result<vm::TestBins> {
    cargo(&["build", "--bins"])?;
    // The very invocation `./x test` builds with (same packages, so the same
    // features): its binaries are reused, not built a second time (that
    // took minutes and gigabytes of disk in CI).
    let out = cargo_command()
        .args(["test", "--lib", "--bins", "--tests", "--no-run", "--message-format=json"])
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
            && msg["manifest_path"].as_str().is_some_and(|m| Path::new(m).ends_with("tests/Cargo.toml"))
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
    Ok(vm::TestBins {
        tests,
        netprobe: target.join("netprobe"),
        agent: target.join("redirect-agent"),
        cni_plugin: target.join("fsm-redirect-cni"),
        envoy,
    })
}
