//! The previous release's agent, for the upgrade test
//! (`tests/tests/upgrade.rs`): the tree before the newest commit that
//! changed the eBPF programs (their crate, or `redirect-common`, which they
//! are built from too), taken from git and built into
//! `target/previous-release/COMMIT/` (kept: later runs reuse it), then
//! staged beside the test binaries as `redirect-agent-previous`, with the
//! commit in `previous-release`. Where git has no such commit (a shallow
//! clone, a tree outside git) the test skips, saying so.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::process::{cargo_command, run};

/// Builds (once) and stages the previous release's agent into `staged`.
pub fn stage(root: &Path, staged: &Path) -> anyhow::Result<()> {
    let commit = match previous_commit(root) {
        Ok(commit) => commit,
        Err(e) => {
            println!("xtask: no previous release to upgrade from ({e:#}): the upgrade test skips");
            return Ok(());
        }
    };
    let target = crate::process::target_dir();
    let dir = target.join("previous-release").join(&commit[..12]);
    let bin = dir.join("target/debug/redirect-agent");
    if !bin.exists() {
        let started = std::time::Instant::now();
        let src = dir.join("src");
        if src.exists() {
            std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
        }
        std::fs::create_dir_all(&src)?;
        let archive =
            Command::new("git").current_dir(root).args(["archive", "--format=tar", &commit]).output().context("running git archive")?;
        if !archive.status.success() {
            bail!("git archive {commit}: {}", String::from_utf8_lossy(&archive.stderr));
        }
        let mut untar = Command::new("tar").arg("-x").arg("-C").arg(&src).stdin(std::process::Stdio::piped()).spawn()?;
        std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &archive.stdout)?;
        drop(untar.stdin.take());
        if !untar.wait()?.success() {
            bail!("unpacking {commit} into {}", src.display());
        }
        run(cargo_command().current_dir(&src).env("CARGO_TARGET_DIR", dir.join("target")).args([
            "build",
            "-p",
            "redirect-agent",
            "--bin",
            "redirect-agent",
        ]))
        .with_context(|| format!("building the previous release ({commit})"))?;
        println!("xtask: previous release {} built in {:.0} s", &commit[..12], started.elapsed().as_secs_f64());
    }
    let to = staged.join("redirect-agent-previous");
    std::fs::copy(&bin, &to).with_context(|| format!("copying {} to {}", bin.display(), to.display()))?;
    std::fs::write(staged.join("previous-release"), &commit)?;
    Ok(())
}

/// The parent of the newest commit that changed the programs: theirs or
/// the shared crate's sources, where the decision, the map layouts and the
/// hand-over are (a change there alone changes the object too).
fn previous_commit(root: &Path) -> anyhow::Result<String> {
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git").current_dir(root).args(args).output().context("running git")?;
        if !out.status.success() {
            bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let changed = git(&["rev-list", "-1", "HEAD", "--", "redirect-ebpf/src", "redirect-common/src"])?;
    if changed.is_empty() {
        bail!("no commit changed redirect-ebpf/src or redirect-common/src");
    }
    git(&["rev-parse", "--verify", &format!("{changed}^")])
}
