//! Ctrl-C (or SIGTERM) stops the bench cleanly: the signal only raises a
//! flag, the next step sees it and returns an error, and the fixtures'
//! `Drop` removes the network namespaces, cgroups and pins as on any
//! failure. (By default the signal would end the process before any `Drop`
//! runs and leave all of them behind.) The netprobe children and the agent
//! get the terminal's SIGINT themselves and end at once.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn raise_flag(_: nix::libc::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn install() -> anyhow::Result<()> {
    let action = SigAction::new(SigHandler::Handler(raise_flag), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

/// Err once the bench was asked to stop.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}
