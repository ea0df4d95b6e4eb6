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
    run(&mut cmd)
}
