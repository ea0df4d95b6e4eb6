//! Finding a pod's proxy listening socket on the inbound port, for proxies
//! that were already listening when the pod was enrolled or when sockops
//! was attached again (later ones are registered by the sockops program
//! when they call listen()).
//!
//! A socket is found by inode in the pod's /proc/net/tcp and tcp6, its owner
//! among the processes of the pod's cgroup, and duplicated into the agent
//! with pidfd_getfd (Linux 5.6) so that it can be put into the sockhash.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

/// A duplicate of each socket listening on `port` in the pod, with whether
/// it is an AF_INET6 one (at most one of each family).
pub fn find(netns: &Path, cgroup: &Path, port: u16) -> anyhow::Result<Vec<(bool, OwnedFd)>> {
    let mut wanted: Vec<(String, bool)> =
        crate::netns::listening(netns, port)?.into_iter().map(|l| (format!("socket:[{}]", l.inode), l.v6)).collect();
    let mut found = Vec::new();
    for pid in crate::cgroup::processes_below(cgroup) {
        if wanted.is_empty() {
            break;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(i) = wanted.iter().position(|(w, _)| target.as_os_str() == w.as_str()) else { continue };
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let (_, v6) = wanted.swap_remove(i);
            // One socket per family: another of the same family (a second
            // process sharing the port) would only replace it.
            wanted.retain(|(_, other)| *other != v6);
            found.push((v6, dup_from(pid, num)?));
        }
    }
    Ok(found)
}

fn dup_from(pid: u32, fd: i32) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain syscalls; every returned descriptor is owned at once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_open({pid})"));
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        use std::os::fd::AsRawFd as _;
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if dup < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_getfd({pid}, {fd})"));
        }
        Ok(OwnedFd::from_raw_fd(dup as i32))
    }
}
