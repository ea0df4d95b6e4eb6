//! Reads the `channel` of a `rust-toolchain.toml`. Shared, by path, with
//! redirect-loader's build script (which can't depend on xtask): the eBPF
//! toolchain is named in one place, redirect-ebpf/rust-toolchain.toml, and
//! read the same way by both.

/// The `channel = "..."` value of a rust-toolchain.toml's text.
pub(crate) fn channel(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.trim().strip_prefix("channel")).and_then(|rest| rest.split('"').nth(1))
}
