//! Changes of a pod's interfaces, addresses and routes, as the kernel
//! announces them: one rtnetlink socket per pod, opened in the pod's
//! network namespace and subscribed to its link, address and route groups
//! (IPv4 and IPv6). The agent reads a pod's network again as soon as one
//! speaks, instead of at its next refresh: a route added via an excluded
//! interface reaches `IFACE_ROUTES` within milliseconds, not up to
//! `--refresh-interval` later. The refresh stays, for what announces
//! nothing (a netns made again under the same path, a program detached).
//!
//! What a message says does not matter: the pod's network is read whole
//! (`pod_net`), so the messages are drained unparsed.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use redirect_common::maps::PodId;
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};

/// The groups a pod's socket joins.
const GROUPS: u32 =
    (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_IFADDR | libc::RTMGRP_IPV6_ROUTE) as u32;

/// The pods whose network is watched: a task per pod that sends the pod's
/// id whenever its socket has news.
pub struct NetEvents {
    watched: BTreeMap<PodId, (PathBuf, JoinHandle<()>)>,
    tx: mpsc::UnboundedSender<PodId>,
}

impl NetEvents {
    /// The watch, and where the ids of pods whose network changed arrive.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<PodId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (NetEvents { watched: BTreeMap::new(), tx }, rx)
    }

    /// Watches exactly `pods` (id, netns): new ones are opened, removed
    /// ones (or ones whose netns path changed) closed. A pod whose socket
    /// can't be opened (its netns is going) is logged and left to the
    /// refresh; it is tried again at the next call.
    pub fn sync(&mut self, pods: &[(PodId, PathBuf)]) {
        self.watched.retain(|id, (path, task)| {
            let keep = pods.iter().any(|(i, p)| i == id && p == path);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, path) in pods {
            if self.watched.contains_key(id) {
                continue;
            }
            match open(path) {
                // SAFETY: `fd` is our own descriptor, owned by the AsyncFd.
                Ok(fd) => match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                    Ok(fd) => {
                        let task = tokio::spawn(forward(*id, fd, self.tx.clone()));
                        self.watched.insert(*id, (path.clone(), task));
                    }
                    Err(e) => log::warn!("pod {id}: watching its network: {e}"),
                },
                Err(e) => log::debug!("pod {id}: watching its network: {e:#}; its refresh reads it"),
            }
        }
    }
}

impl Drop for NetEvents {
    fn drop(&mut self) {
        for (_, task) in self.watched.values() {
            task.abort();
        }
    }
}

/// Sends `id` each time the socket has messages, after draining them all
/// (a route change comes as several: one read of the pod's network serves
/// them together).
async fn forward(id: PodId, fd: AsyncFd<OwnedFd>, tx: mpsc::UnboundedSender<PodId>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(mut guard) = fd.readable().await else { return };
        let mut any = false;
        loop {
            // SAFETY: a read into our own buffer, of at most its length.
            let n = unsafe { libc::recv(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            match n {
                n if n > 0 => any = true,
                // ENOBUFS: messages were lost, which says the same: read it again.
                _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) => any = true,
                _ => break,
            }
        }
        guard.clear_ready();
        if any && tx.send(id).is_err() {
            return;
        }
    }
}

/// An rtnetlink socket in the netns at `path`, joined to [`GROUPS`],
/// non-blocking. A socket stays in the namespace it was made in.
fn open(path: &Path) -> anyhow::Result<OwnedFd> {
    super::in_netns(path, || {
        // SAFETY: plain syscalls; the descriptor is owned at once.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("socket(AF_NETLINK)");
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = GROUPS;
            let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            if libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) < 0 {
                return Err(std::io::Error::last_os_error()).context("binding the rtnetlink socket to its groups");
            }
            Ok(fd)
        }
    })
    .with_context(|| format!("netns {}", path.display()))
}
