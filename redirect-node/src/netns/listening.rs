//! Which TCP sockets listen on a port in a pod's namespace: how the agent
//! tells that a pod's proxy is up (`diagnose`, the listener watch), and
//! takes a duplicate of its listening socket for `PROXY_LISTENERS`
//! ([`duplicate`]).
//!
//! Two ways to ask, same answer. sock_diag first: the kernel then walks its
//! listening sockets only. `/proc/net/tcp` walks every socket of the
//! namespace, established ones included, which costs milliseconds per pod at
//! each refresh on a busy node. But sock_diag's TCP half is `tcp_diag`,
//! which Debian builds as a module that the kernel loads on the first
//! request: where the module is not installed (our VM images), the kernel
//! answers ENOENT, and we read `/proc/net/tcp`.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;

/// A TCP socket listening in a pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    pub inode: u64,
    /// Bound to the wildcard address (0.0.0.0 or [::]), so it accepts
    /// connections to any local address.
    pub wildcard: bool,
    /// An AF_INET6 socket (a `[::]` one may be dual-stack).
    pub v6: bool,
}

/// The TCP sockets listening on `port` in the namespace.
pub fn listening(path: &Path, port: u16) -> anyhow::Result<Vec<Listening>> {
    super::in_netns(path, move || here(port))
}

/// The TCP sockets listening on `port` in this thread's namespace.
fn here(port: u16) -> anyhow::Result<Vec<Listening>> {
    static SAID: AtomicBool = AtomicBool::new(false);
    sock_diag(port).or_else(|e| {
        if !SAID.swap(true, Ordering::Relaxed) {
            log::info!("{e:#}: reading /proc/net/tcp instead (slower on a busy node; `modprobe tcp_diag` avoids it)");
        }
        proc_net_tcp(port)
    })
}

/// Asks the kernel's sock_diag for the listeners on `port`, and for nothing
/// else.
fn sock_diag(port: u16) -> anyhow::Result<Vec<Listening>> {
    use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_sock_diag::{
        SockDiagMessage,
        constants::{AF_INET, AF_INET6, IPPROTO_TCP},
        inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    };
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("sock_diag: opening a netlink socket")?;
    socket.bind_auto().context("sock_diag: binding the netlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("sock_diag: connecting the netlink socket")?;
    let mut found = Vec::new();
    for (family, v6) in [(AF_INET, false), (AF_INET6, true)] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let socket_id = if v6 { SocketId::new_v6() } else { SocketId::new_v4() };
        let request =
            InetRequest { family, protocol: IPPROTO_TCP, extensions: ExtensionFlags::empty(), states: StateFlags::LISTEN, socket_id };
        let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0).context("sock_diag: asking for listening sockets")?;
        'dump: loop {
            let (datagram, _) = socket.recv_from_full().context("sock_diag: reading the answer")?;
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest).context("sock_diag: parsing the answer")?;
                let len = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) if r.header.socket_id.source_port == port => {
                        let addr = r.header.socket_id.source_address;
                        found.push(Listening { inode: u64::from(r.header.inode), wildcard: addr.is_unspecified(), v6 });
                    }
                    NetlinkPayload::Done(_) => break 'dump,
                    // A kernel without IPv6 has no AF_INET6 sockets to list.
                    NetlinkPayload::Error(e) if v6 && e.code.is_some() => break 'dump,
                    NetlinkPayload::Error(e) if e.code.is_some() => anyhow::bail!("sock_diag: {e}"),
                    _ => {}
                }
                if len == 0 || len > rest.len() {
                    break;
                }
                rest = &rest[len..];
            }
        }
    }
    Ok(found)
}

/// Reads the listeners on `port` from `/proc/net/tcp{,6}`.
fn proc_net_tcp(port: u16) -> anyhow::Result<Vec<Listening>> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/thread-self/net/tcp", false), ("/proc/thread-self/net/tcp6", true)] {
        match std::fs::read_to_string(file) {
            Ok(text) => found.extend(parse_proc_net_tcp(&text, port, v6)),
            // A kernel without IPv6 has no tcp6 file.
            Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {file}")),
        }
    }
    Ok(found)
}

/// Rows of /proc/net/tcp{,6} in state LISTEN (0A) on `port`.
fn parse_proc_net_tcp(text: &str, port: u16, v6: bool) -> Vec<Listening> {
    let mut found = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
        let Some((addr, lport)) = local.rsplit_once(':') else { continue };
        if *state == "0A"
            && u16::from_str_radix(lport, 16).ok() == Some(port)
            && let Ok(inode) = inode.parse::<u64>()
        {
            found.push(Listening { inode, wildcard: addr.bytes().all(|b| b == b'0'), v6 });
        }
    }
    found
}

/// A duplicate of each socket listening on `port` in the pod, with whether
/// it is an AF_INET6 one (at most one of each family): for proxies that
/// were already listening when the pod was enrolled or when sockops was
/// attached again (later ones are registered by the sockops program when
/// they call listen()). A socket is found by inode (as [`listening`]
/// lists it), its owner among the processes of the pod's cgroup, and
/// duplicated into the agent with pidfd_getfd (Linux 5.6) so that it can
/// be put into the sockhash.
pub fn duplicate(netns: &Path, cgroup: &Path, port: u16) -> anyhow::Result<Vec<(bool, OwnedFd)>> {
    let mut wanted: Vec<(String, bool)> = listening(netns, port)?.into_iter().map(|l| (format!("socket:[{}]", l.inode), l.v6)).collect();
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        // The rows in LISTEN on the port are found, by inode; other states,
        // ports and lines that are not rows are not.
        #[test]
        fn proc_net_tcp_gives_the_listeners_on_the_port_and_nothing_else(
            rows in prop::collection::vec((any::<u32>(), any::<u16>(), prop::sample::select(vec!["0A", "01", "06"]), any::<u64>()), 0..10),
            port in any::<u16>(),
            noise in "\\PC{0,80}",
        ) {
            let mut text = String::from("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
            for (n, (addr, lport, state, inode)) in rows.iter().enumerate() {
                text += &format!("{n:4}: {addr:08X}:{lport:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000  1500        0 {inode} 1\n");
            }
            text += &noise;
            let found: Vec<u64> = parse_proc_net_tcp(&text, port, false).iter().map(|l| l.inode).collect();
            let expected: Vec<u64> = rows.iter().filter(|(_, p, s, _)| *p == port && *s == "0A").map(|r| r.3).collect();
            // The noise line may itself read as a row: only ever more.
            prop_assert!(found.starts_with(&expected), "{found:?} {expected:?}");
            prop_assert!(found.len() <= expected.len() + 1);
        }
    }

    fn inode(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        link.to_str().unwrap().trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap()
    }

    /// Both ways of asking, against real sockets: a bound listener, a
    /// connection on the same port (not a listener), a wildcard IPv6 one.
    #[test]
    fn both_ways_find_the_listeners_on_a_port_by_inode_and_tell_wildcard_from_bound() {
        type Way = fn(u16) -> anyhow::Result<Vec<Listening>>;
        let mut ways: Vec<(&str, Way)> = vec![("/proc/net/tcp", proc_net_tcp)];
        // sock_diag needs tcp_diag, which not every kernel has loaded; where
        // it answers, it must agree.
        match sock_diag(1) {
            Ok(_) => ways.push(("sock_diag", sock_diag)),
            Err(e) => eprintln!("sock_diag not available here ({e:#}): testing /proc/net/tcp only"),
        }
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = bound.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let any6 = std::net::TcpListener::bind("[::]:0").ok();
        for (name, way) in &ways {
            assert_eq!(way(port).unwrap(), vec![Listening { inode: inode(bound.as_raw_fd()), wildcard: false, v6: false }], "{name}");
            if let Some(any6) = &any6 {
                let port6 = any6.local_addr().unwrap().port();
                assert_eq!(way(port6).unwrap(), vec![Listening { inode: inode(any6.as_raw_fd()), wildcard: true, v6: true }], "{name}");
            }
        }
        drop(bound);
        for (name, way) in &ways {
            assert_eq!(way(port).unwrap(), vec![], "{name}: a closed listener is gone");
        }
    }

    #[test]
    fn reads_listen_rows_of_proc_net_tcp() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 101 1 0 100 0 0 10 0\n\
   1: 0100007F:3A9B 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 102 1 0 100 0 0 10 0\n\
   2: 0100007F:3A99 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1500        0 103 1 0 100 0 0 10 0\n";
        assert_eq!(parse_proc_net_tcp(tcp, 15001, false), vec![Listening { inode: 101, wildcard: true, v6: false }]);
        assert_eq!(parse_proc_net_tcp(tcp, 15003, false), vec![Listening { inode: 102, wildcard: false, v6: false }]);
        assert_eq!(parse_proc_net_tcp(tcp, 8080, false), vec![]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 104 1 0 100 0 0 10 0\n";
        assert_eq!(parse_proc_net_tcp(tcp6, 15001, true), vec![Listening { inode: 104, wildcard: true, v6: true }]);
    }
}
