//! Builds the eBPF object (redirect-ebpf) with the pinned nightly so that the
//! agent can embed it: the agent binary is all a node needs.
use anyhow::{Context as _, anyhow};

#[path = "../xtask/src/toolchain_file.rs"]
mod toolchain_file;

fn main() -> anyhow::Result<()> {
    let path = "../redirect-ebpf/rust-toolchain.toml";
    println!("cargo::rerun-if-changed={path}");
    // The programs are built from redirect-common too (the decision table,
    // map layouts, the hand-over): aya-build watches redirect-ebpf alone,
    // and a change there alone would leave a stale object embedded.
    println!("cargo::rerun-if-changed=../redirect-common");
    let text = std::fs::read_to_string(path).context(path)?;
    // The one place the eBPF toolchain is named: `channel = "..."` there.
    let channel = toolchain_file::channel(&text).ok_or_else(|| anyhow!("{path}: no `channel = \"...\"` line"))?.to_owned();
    let package = aya_build::Package { name: "redirect-ebpf", root_dir: "../redirect-ebpf", ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&channel))
}
