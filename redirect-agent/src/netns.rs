//! Network namespaces of pods, given as a path (`/var/run/netns/NAME`,
//! `/proc/PID/ns/net`, a CNI's bind mount).

use std::{
    fs::File,
    net::Ipv4Addr,
    path::Path,
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

/// Opens `path` and checks that it is a network namespace.
pub fn open(path: &Path) -> anyhow::Result<File> {
    let file = File::open(path).with_context(|| format!("netns {}: can't open", path.display()))?;
    // NS_GET_NSTYPE is newer than some kernels we serve; setns() with the
    // type in a throwaway thread is the check that works everywhere.
    let probe = file.try_clone()?;
    std::thread::spawn(move || setns(&probe, CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| anyhow::anyhow!("netns check thread panicked"))?
        .map_err(|e| anyhow::anyhow!("netns {}: not a network namespace ({e})", path.display()))?;
    Ok(file)
}

/// Runs `f` on a thread that has entered the namespace; the agent's own
/// threads never change namespace.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = open(path)?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// The pod's own IPv4 addresses outside 127.0.0.0/8: connections to them
/// are routed through `lo`.
pub fn local_ipv4_addrs(path: &Path) -> anyhow::Result<Vec<Ipv4Addr>> {
    in_netns(path, || {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
            let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
                continue;
            };
            let ip = addr.ip();
            if !ip.is_loopback() && !out.contains(&ip) {
                out.push(ip);
            }
        }
        out.sort();
        Ok(out)
    })
}

/// Makes `cmd` run inside the network namespace at `path` (and nothing
/// else changes: same cgroup, same user).
pub fn command_in(cmd: &mut std::process::Command, path: &Path) -> anyhow::Result<()> {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let ns = open(path)?;
    // SAFETY: setns is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
