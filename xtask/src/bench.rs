//! `cargo xtask bench`: the bench binary (eBPF vs iptables vs no
//! interception), its tables in target/bench.

use std::{path::Path, process::Command};

use crate::{
    process::{cargo, require_root, run},
    tools::apt_install,
};

pub fn bench(smoke: bool, png: bool, rounds: Option<String>, only: Option<String>) -> anyhow::Result<()> {
    require_root("bench")?;
    // Smoke mode checks that every section runs, not its figures: the
    // debug build that `test` made does (a release build of the agent and
    // its Kubernetes client costs CI minutes). Figures come from release.
    let profile = if smoke { "debug" } else { "release" };
    if smoke {
        cargo(&["build", "--bins"])?;
    } else {
        cargo(&["build", "--release", "--bins"])?;
    }
    // Where cargo put it: `CARGO_TARGET_DIR` if set (before, this ran
    // target/release/bench whatever it was, and failed).
    let mut cmd = Command::new(crate::process::target_dir().join(profile).join("bench"));
    let out = crate::process::target_dir().join("bench");
    cmd.arg("--out").arg(&out);
    if let Some(rounds) = rounds {
        cmd.args(["--rounds", &rounds]);
    }
    if let Some(only) = only {
        cmd.args(["--only", &only]);
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
