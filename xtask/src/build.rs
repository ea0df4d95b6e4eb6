//! `cargo xtask build`: the eBPF object and the agent that embeds it
//! (release).

use crate::process::cargo;

pub fn build() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "redirect-agent"])
}

/// The agent with the demo (`redirect-agent demo`) built in.
pub fn build_with_demo() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "redirect-agent", "--features", "sandbox"])
}
