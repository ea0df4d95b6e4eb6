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
    let ns = File::open(path).with_context(|| format!("netns {}: can't open", path.display()))?;
    let shown = path.display().to_string();
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("netns {shown}: not a network namespace"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
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

/// A route of the pod's main table (IPv4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub iface: String,
}

/// What the agent needs to know of a pod's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNet {
    /// Its own IPv4 addresses outside 127.0.0.0/8.
    pub addrs: Vec<Ipv4Addr>,
    /// Interfaces by name and index.
    pub ifaces: Vec<(String, u32)>,
    pub routes: Vec<Route>,
}

impl PodNet {
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        self.ifaces.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }
}

/// Parses /proc/net/route: `Iface Destination Gateway Flags RefCnt Use
/// Metric Mask ...`, addresses as little-endian hex.
fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some(Route {
                // The kernel prints the address as a native integer.
                dst: Ipv4Addr::from(dst.to_ne_bytes()),
                prefix_len: mask.count_ones() as u8,
                iface: f[0].to_owned(),
            })
        })
        .collect()
}

/// Reads addresses, interfaces and routes of the namespace in one visit.
pub fn pod_net(path: &Path) -> anyhow::Result<PodNet> {
    in_netns(path, || {
        let mut net = PodNet::default();
        for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
            if let Some(ip) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()).map(|a| a.ip()) {
                if !ip.is_loopback() && !net.addrs.contains(&ip) {
                    net.addrs.push(ip);
                }
            }
        }
        net.addrs.sort();
        for iface in nix::net::if_::if_nameindex().context("if_nameindex")?.iter() {
            net.ifaces.push((iface.name().to_string_lossy().into_owned(), iface.index()));
        }
        // /proc/thread-self/net is this thread's (the pod's) namespace.
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").context("reading the pod's routes")?;
        net.routes = parse_routes(&routes);
        Ok(net)
    })
}

/// A TCP socket listening in a pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    pub inode: u64,
    /// Bound to the wildcard address (0.0.0.0 or [::]), so it accepts
    /// connections to any local address.
    pub wildcard: bool,
}

/// The TCP sockets listening on `port` in the namespace.
pub fn listening(path: &Path, port: u16) -> anyhow::Result<Vec<Listening>> {
    in_netns(path, move || {
        let mut found = Vec::new();
        for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            found.extend(parse_listening(&text, port));
        }
        Ok(found)
    })
}

/// Inodes of the TCP sockets listening on `port` in the namespace.
pub fn listening_inodes(path: &Path, port: u16) -> anyhow::Result<Vec<u64>> {
    Ok(listening(path, port)?.into_iter().map(|l| l.inode).collect())
}

/// Rows of /proc/net/tcp{,6} in state LISTEN (0A) on `port`.
fn parse_listening(text: &str, port: u16) -> Vec<Listening> {
    let mut found = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
        let Some((addr, lport)) = local.rsplit_once(':') else { continue };
        if *state == "0A"
            && u16::from_str_radix(lport, 16).ok() == Some(port)
            && let Ok(inode) = inode.parse::<u64>()
        {
            found.push(Listening { inode, wildcard: addr.bytes().all(|b| b == b'0') });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_wildcard_listeners_from_bound_ones() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 101 1 0 100 0 0 10 0\n\
   1: 0100007F:3A9B 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 102 1 0 100 0 0 10 0\n\
   2: 0100007F:3A99 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1500        0 103 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listening(tcp, 15001), vec![Listening { inode: 101, wildcard: true }]);
        assert_eq!(parse_listening(tcp, 15003), vec![Listening { inode: 102, wildcard: false }]);
        assert_eq!(parse_listening(tcp, 8080), vec![]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 104 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listening(tcp6, 15001), vec![Listening { inode: 104, wildcard: true }]);
    }

    #[test]
    fn reads_proc_net_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0101F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
net1\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let r = parse_routes(text);
        assert_eq!(r[0], Route { dst: Ipv4Addr::UNSPECIFIED, prefix_len: 0, iface: "eth0".into() });
        assert_eq!(r[1], Route { dst: Ipv4Addr::new(10, 244, 1, 0), prefix_len: 24, iface: "eth0".into() });
        assert_eq!(r[2], Route { dst: Ipv4Addr::new(192, 168, 0, 0), prefix_len: 16, iface: "net1".into() });
    }
}
