//! Builds the eBPF object (redirect-ebpf) with the pinned nightly so that the
//! agent can embed it: the agent binary is all a node needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let toolchain_file = "../redirect-ebpf/rust-toolchain.toml";
    println!("cargo::rerun-if-changed={toolchain_file}");
    let text = std::fs::read_to_string(toolchain_file).context(toolchain_file)?;
    // The one place the eBPF toolchain is named: `channel = "..."` there.
    let channel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .ok_or_else(|| anyhow!("{toolchain_file}: no `channel = \"...\"` line"))?
        .to_owned();
    let package = aya_build::Package {
        name: "redirect-ebpf",
        root_dir: "../redirect-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&channel))
}
