//! `cargo xtask image`: the agent's container image, made on this machine
//! without pulling a base image: the agent and the CNI plugin built static
//! (musl), the host's iptables with their libraries
//! (`rootfs`), as an OCI archive (`oci`), then checked by running its
//! commands in a chroot of its file system (`image_check`).
//!
//! target/image/fsm-redirect-agent.tar is the archive to load into the
//! nodes' runtimes; target/image/rootfs.tar is the same file system for
//! deploy/image/Containerfile (buildah, docker).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{image_check, oci, rootfs::Rootfs};

/// Static binaries: the plugin runs on the host, whatever its C library.
const TARGET: &str = "x86_64-unknown-linux-musl";
/// The name the manifests in deploy/ use (`fsm-redirect-agent:dev`), as
/// the kubelet and containerd normalize it.
pub const NAME: &str = "docker.io/library/fsm-redirect-agent:dev";
pub const ENTRYPOINT: [&str; 1] = ["redirect-agent"];
pub const CMD: [&str; 1] = ["--help"];

pub fn image(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`cargo xtask image` checks the image in a chroot: run it as root");
    }
    let started = Instant::now();
    let bins = build()?;
    let built = started.elapsed();
    let fs = Rootfs::for_agent(&bins.join("redirect-agent"), &bins.join("fsm-redirect-cni"))?;
    let layer = fs.to_tar()?;
    let settings = oci::Settings { name: NAME, path: crate::rootfs::PATH, entrypoint: &ENTRYPOINT, cmd: &CMD };
    let archive = oci::archive(&layer, &settings)?;
    let out = root.join("target/image");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (archive_path, rootfs_path) = (out.join("fsm-redirect-agent.tar"), out.join("rootfs.tar"));
    std::fs::write(&archive_path, &archive).with_context(|| format!("writing {}", archive_path.display()))?;
    std::fs::write(&rootfs_path, &layer).with_context(|| format!("writing {}", rootfs_path.display()))?;
    let assembled = started.elapsed();
    image_check::check(&archive)?;
    let mib = |n: usize| n as f64 / (1024.0 * 1024.0);
    println!(
        "image {NAME}: {} ({:.1} MiB; {} entries, {:.1} MiB unpacked); built in {:.0} s, assembled in {:.0} s, checked in {:.0} s",
        archive_path.display(),
        mib(archive.len()),
        fs.len(),
        mib(layer.len()),
        built.as_secs_f64(),
        (assembled - built).as_secs_f64(),
        (started.elapsed() - assembled).as_secs_f64()
    );
    println!("load it on a node: ctr -n k8s.io image import {} (or podman load -i)", archive_path.display());
    Ok(())
}

/// Builds the two binaries for musl; returns their directory.
fn build() -> anyhow::Result<std::path::PathBuf> {
    let has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == TARGET));
    if !has_target {
        crate::process::run(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    // ring (rustls's crypto, for the API server) compiles C: Debian's musl
    // wrapper around gcc, which cc-rs does not look for by that name.
    if !crate::process::have("musl-gcc") {
        crate::tools::apt_install(&["musl-tools"])?;
    }
    crate::process::run(crate::process::cargo_command().env(format!("CC_{}", TARGET.replace('-', "_")), "musl-gcc").args([
        "build",
        "--release",
        "--target",
        TARGET,
        "-p",
        "redirect-agent",
        "-p",
        "redirect-cni",
        "--bin",
        "redirect-agent",
        "--bin",
        "fsm-redirect-cni",
    ]))?;
    let target_dir = crate::process::target_dir();
    let dir = target_dir.join(TARGET).join("release");
    for bin in ["redirect-agent", "fsm-redirect-cni"] {
        if !crate::rootfs::is_static(&dir.join(bin))? {
            bail!("{}: not statically linked", dir.join(bin).display());
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// deploy/image/Containerfile builds the same image for buildah and
    /// docker: its settings are this module's.
    #[test]
    fn containerfile_matches() {
        let path = crate::process::workspace_root().join("deploy/image/Containerfile");
        let text = std::fs::read_to_string(&path).unwrap();
        let list = |items: &[&str]| format!("[{}]", items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", "));
        for line in [
            "FROM scratch".to_owned(),
            "ADD rootfs.tar /".to_owned(),
            format!("ENV PATH={}", crate::rootfs::PATH),
            format!("ENTRYPOINT {}", list(&ENTRYPOINT)),
            format!("CMD {}", list(&CMD)),
        ] {
            assert!(text.lines().any(|l| l == line), "{}: no line {line:?}", path.display());
        }
    }
}
