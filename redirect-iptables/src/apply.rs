//! Applying and removing the rules inside a pod's network namespace.
//!
//! Idempotent: applying replaces what an earlier apply left (the jumps from
//! PREROUTING/OUTPUT, the PodIP and DNS DNAT rules, the four chains) in the
//! same transaction, so running it twice leaves one copy of each rule. The
//! chains of an earlier apply in another form (an agent that wrote
//! `fsm_PROXY_*`) go in that transaction too.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    Family,
    rules::{Form, dns_rule, every_chain},
};

fn in_netns(netns: &Path, program: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    redirect_node::netns::command_in(&mut cmd, netns)?;
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

/// Whether a rule of PREROUTING or OUTPUT, as `iptables -S` prints it after
/// `-A CHAIN `, is one of ours: a jump to our chains (of any form), the
/// PodIP-mode DNAT of the proxy's loopback connections, the local DNS
/// proxy's DNAT.
pub fn is_ours(rule: &str) -> bool {
    let dns_to = dns_rule().rsplit(' ').next().map(str::to_owned).unwrap_or_default();
    every_chain().any(|c| rule.ends_with(&format!("-j {c}")))
        || (rule.contains("-o lo") && rule.contains("--uid-owner") && rule.contains("-j DNAT"))
        || (rule.contains("-p udp") && rule.contains("-j DNAT") && rule.ends_with(&format!("--to-destination {dns_to}")))
}

/// Rules of a built-in chain that are ours (`is_ours`).
fn our_rules(netns: &Path, family: Family, chain: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let out = nat(netns, family, &["-S", chain])?;
    if !out.status.success() {
        bail!("{} -t nat -S {chain}: {}", family.iptables(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("-A {chain} ")))
        .filter(|rule| is_ours(rule))
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
        for chain in every_chain() {
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

/// Replaces the pod's rules with `restore_input` (from
/// `rules::restore_input`) in one `iptables-restore` transaction: the
/// chains' declarations flush them, the jumps and DNAT rule of the previous
/// apply are deleted, the new rules added, all committed at once. Either
/// the new rules are in place or the old ones still are: the pod is never
/// without rules, at a change or at an agent's start.
pub fn apply(netns: &Path, family: Family, restore_input: &str) -> anyhow::Result<()> {
    let mut deletions = String::new();
    let mut jumped: Vec<String> = Vec::new();
    for chain in ["PREROUTING", "OUTPUT"] {
        for rule in our_rules(netns, family, chain)? {
            deletions.push_str(&format!("-D {chain} {}\n", rule.join(" ")));
            if let [.., j, target] = rule.as_slice()
                && j == "-j"
            {
                jumped.push(target.clone());
            }
        }
    }
    // The chains of another form that an earlier apply jumped to: all four
    // declared (so that they are there, flushed: no chain refers to another
    // any more) and deleted after the jumps.
    let declared = |c: &str| restore_input.lines().any(|l| l.strip_prefix(':').and_then(|l| l.split_whitespace().next()) == Some(c));
    let stale: Vec<&str> = Form::ALL
        .iter()
        .map(|f| f.chains().all())
        .filter(|chains| chains.iter().all(|c| !declared(c)) && chains.iter().any(|c| jumped.iter().any(|j| j == c)))
        .flatten()
        .collect();
    for chain in &stale {
        deletions.insert_str(0, &format!(":{chain} - [0:0]\n"));
        deletions.push_str(&format!("-X {chain}\n"));
    }
    let input = replacing(restore_input, &deletions);
    let program = format!("{}-restore", family.iptables());
    let mut cmd = in_netns(netns, &program)?;
    cmd.args(["-w", "--noflush"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {program} (is iptables installed?)"))?;
    let written = child.stdin.take().expect("piped").write_all(input.as_bytes());
    let out = child.wait_with_output().with_context(|| format!("waiting for {program}"))?;
    // One that stops before reading all of its input (refusing at once:
    // the xtables lock, a missing module) closes the pipe: its own message
    // says why, not the broken pipe.
    if let Err(e) = written
        && out.status.success()
    {
        return Err(e).with_context(|| format!("writing the rules to {program}"));
    }
    if !out.status.success() {
        bail!("{program} refused the rules (the previous ones stay): {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `restore_input` with `deletions` after the chain declarations, before
/// the first rule: inside the same `*nat` ... `COMMIT`.
fn replacing(restore_input: &str, deletions: &str) -> String {
    let at = restore_input.lines().take_while(|l| !l.starts_with('-')).map(|l| l.len() + 1).sum::<usize>();
    let at = at.min(restore_input.len());
    format!("{}{deletions}{}", &restore_input[..at], &restore_input[at..])
}

/// `iptables-save -t nat` of the pod, for people and diagnostics.
pub fn save(netns: &Path, family: Family) -> anyhow::Result<String> {
    save_with(netns, &format!("{}-save", family.iptables()))
}

/// `PROGRAM -t nat` (an `*-save`) in the pod's netns.
pub fn save_with(netns: &Path, program: &str) -> anyhow::Result<String> {
    let mut cmd = in_netns(netns, program)?;
    cmd.args(["-t", "nat"]);
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn deletions_go_between_the_declarations_and_the_rules() {
        let input = "# c\n*nat\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n";
        assert_eq!(
            super::replacing(input, "-D OUTPUT -p tcp -j A\n"),
            "# c\n*nat\n:A - [0:0]\n-D OUTPUT -p tcp -j A\n-A A -j RETURN\nCOMMIT\n"
        );
        assert_eq!(super::replacing(input, ""), input);
    }
}
