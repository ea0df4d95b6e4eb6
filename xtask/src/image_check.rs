//! The image's commands run as a container would run them: its file system
//! unpacked from the archive (every digest checked on the way), each
//! command in a chroot of it with only the image's PATH. The iptables
//! rules the agent writes and the IPv6 route it sets go into a network
//! namespace made for the check, which ends with it; nothing is mounted.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{oci, rootfs};

pub fn check(archive: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("fsm-redirect-image-").tempdir().context("a directory for the image's file system")?;
    let root = dir.path();
    let layer = oci::layer_of(archive)?;
    let mut unpack = tar::Archive::new(layer.as_slice());
    unpack.set_preserve_permissions(true);
    unpack.unpack(root).with_context(|| format!("unpacking the image into {}", root.display()))?;

    expect(root, &["redirect-agent", "--version"], &[], "redirect-agent ")?;
    // VERSION reads no configuration: the plugin's own answer, in JSON.
    expect(root, &["fsm-redirect-cni"], &[("CNI_COMMAND", "VERSION")], "supportedVersions")?;
    expect(root, &["iptables", "--version"], &[], "(nf_tables)")?;
    expect(root, &["iptables-legacy-save", "--version"], &[], "(legacy)")?;

    // fsm-init's rules as the agent writes them, loaded by both backends
    // (every match and target module they use must load), then listed.
    let rules = output(root, &["redirect-agent", "iptables", "print", "--restore-input"], &[])?;
    let rules_file = root.join("tmp/rules");
    std::fs::write(&rules_file, &rules)?;
    let chroot = |cmd: &str| format!("env -i PATH={} chroot {} {cmd}", rootfs::PATH, root.display());
    let script = [
        chroot("ip link set lo up"),
        chroot("ip -6 route replace local fd00:fe::/64 dev lo table local"),
        chroot("ip -6 route show table local"),
        format!("{} < {}", chroot("iptables-restore"), rules_file.display()),
        chroot("iptables -t nat -S"),
        format!("{} < {}", chroot("iptables-legacy-restore"), rules_file.display()),
        chroot("iptables-legacy -t nat -S"),
    ]
    .join(" && ");
    let out = Command::new("unshare").args(["--net", "--", "sh", "-ec", &script]).output().context("running unshare")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let redirects = text.matches("-j REDIRECT --to-ports 15001").count();
    if !out.status.success() || redirects != 2 || !text.contains("fd00:fe::/64") {
        bail!("the image's iptables (nft and legacy) or ip failed in a fresh network namespace ({}):\n{text}", out.status);
    }
    eprintln!("xtask: image checked: redirect-agent, fsm-redirect-cni, iptables (nft, legacy), ip run from its file system");
    Ok(())
}

fn command(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root).args(args).env_clear().env("PATH", rootfs::PATH).envs(env.iter().copied()).stdin(Stdio::null());
    cmd
}

fn output(root: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = command(root, args, env).output().with_context(|| format!("running {args:?} in the image"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{args:?} in the image failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

fn expect(root: &Path, args: &[&str], env: &[(&str, &str)], wanted: &str) -> anyhow::Result<()> {
    let stdout = output(root, args, env)?;
    if !stdout.contains(wanted) {
        bail!("{args:?} in the image printed {stdout:?}, not {wanted:?}");
    }
    Ok(())
}
