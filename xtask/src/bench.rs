//! `cargo xtask bench`: the bench binary (eBPF vs iptables vs no
//! interception), its tables in target/bench.

use std::{path::Path, process::Command};

use crate::{
    process::{cargo, require_root, run},
    tools::apt_install,
};

pub fn bench(root: &Path, smoke: bool, png: bool, rounds: Option<String>) -> anyhow::Result<()> {
    require_root("bench")?;
    cargo(&["build", "--release", "--bins"])?;
    let mut cmd = Command::new(root.join("target/release/bench"));
    cmd.args(["--out", "target/bench"]);
    if let Some(rounds) = rounds {
        cmd.args(["--rounds", &rounds]);
    }
    if smoke {
        cmd.arg("--smoke");
    }
    if png {
        // The labels need a TrueType font; plotters brings none.
        if !Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
            apt_install(&["fonts-dejavu-core"])?;
        }
        cmd.arg("--png");
    }
    run(&mut cmd)
}
