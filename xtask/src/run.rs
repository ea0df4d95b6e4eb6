//! `cargo xtask run`: builds, then starts the agent with a sandboxed demo
//! pod.

use std::{path::Path, process::Command};

use crate::process::{require_root, run};

pub fn demo(root: &Path, log_decisions: bool) -> anyhow::Result<()> {
    require_root("run")?;
    crate::build::build_with_demo()?;
    let mut cmd = Command::new(root.join("target/release/redirect-agent"));
    cmd.arg("demo");
    if log_decisions {
        cmd.arg("--log-decisions");
    }
    // Ctrl-C in a terminal reaches the whole foreground group. The demo
    // catches it and cleans up; xtask ignores it and waits for that, so the
    // prompt comes back only once the demo's namespaces and cgroup are gone.
    // The demo inherits the ignoring until it catches the signal itself,
    // so a Ctrl-C at any moment of its start-up is not fatal either.
    // SAFETY: signal() with SIG_IGN; xtask has no threads here.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    run(&mut cmd)
}
