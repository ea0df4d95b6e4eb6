//! Applying and removing the rules inside a pod's network namespace.
//!
//! Idempotent: applying first removes what an earlier apply left (the jumps
//! from PREROUTING/OUTPUT, the PodIP DNAT rule, the four chains), so
//! running it twice leaves one copy of each rule.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

use super::{Family, rules::CHAINS};

fn in_netns(netns: &Path, program: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    crate::netns::command_in(&mut cmd, netns)?;
    Ok(cmd)
}

fn output(mut cmd: Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?} (is iptables installed?)"))
}

fn nat(netns: &Path, family: Family, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = in_netns(netns, family.iptables())?;
    cmd.args(["-w", "-t", "nat"]).args(args);
    output(cmd)
}

/// Rules of a built-in chain that are ours: jumps to our chains, and the
/// PodIP-mode DNAT of the proxy's loopback connections.
fn our_rules(netns: &Path, family: Family, chain: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let out = nat(netns, family, &["-S", chain])?;
    if !out.status.success() {
        bail!("{} -t nat -S {chain}: {}", family.iptables(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("-A {chain} ")))
        .filter(|rule| {
            CHAINS.iter().any(|c| rule.ends_with(&format!("-j {c}")))
                || (rule.contains("-o lo") && rule.contains("--uid-owner") && rule.contains("-j DNAT"))
        })
        .map(|rule| rule.split_whitespace().map(str::to_owned).collect())
        .collect())
}

/// Removes every rule and chain an apply made. Nothing there: nothing done.
pub fn remove(netns: &Path, family: Family) -> anyhow::Result<()> {
    for chain in ["PREROUTING", "OUTPUT"] {
        for rule in our_rules(netns, family, chain)? {
            let mut args = vec!["-D", chain];
            args.extend(rule.iter().map(String::as_str));
            let out = nat(netns, family, &args)?;
            if !out.status.success() {
                bail!("deleting {}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
    }
    for flag in ["-F", "-X"] {
        for chain in CHAINS {
            if nat(netns, family, &["-S", chain])?.status.success() {
                let out = nat(netns, family, &[flag, chain])?;
                if !out.status.success() {
                    bail!("{flag} {chain}: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
    }
    Ok(())
}

/// Replaces the pod's rules with `restore_input` (from `rules::restore_input`).
pub fn apply(netns: &Path, family: Family, restore_input: &str) -> anyhow::Result<()> {
    remove(netns, family)?;
    let program = format!("{}-restore", family.iptables());
    let mut cmd = in_netns(netns, &program)?;
    cmd.args(["-w", "--noflush"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {program} (is iptables installed?)"))?;
    child.stdin.take().unwrap().write_all(restore_input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        // Leave nothing half-applied.
        let _ = remove(netns, family);
        bail!("{program} refused the rules: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `iptables-save -t nat` of the pod, for people and diagnostics.
pub fn save(netns: &Path, family: Family) -> anyhow::Result<String> {
    let mut cmd = in_netns(netns, &format!("{}-save", family.iptables()))?;
    cmd.args(["-t", "nat"]);
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
