//! Network namespaces of pods, given as a path (`/var/run/netns/NAME`,
//! `/proc/PID/ns/net`, a CNI's bind mount).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sched::{CloneFlags, setns};

mod events;
mod listening;
mod rtnl;
pub use events::NetEvents;
pub use listening::{Listening, duplicate as duplicate_listeners, listening};

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

/// What tells network namespaces apart, whatever path names them: the
/// nsfs device and inode (`ip netns identify` compares the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    /// The namespace's inode number (what a netns bpf_link reports).
    pub fn ino(self) -> u64 {
        self.ino
    }
}

/// The identity of the namespace at `path`.
pub fn identity(path: &Path) -> anyhow::Result<Identity> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).with_context(|| format!("netns {}: can't stat", path.display()))?;
    Ok(Identity { dev: m.dev(), ino: m.ino() })
}

/// The processes whose network namespace is `ns` (a scan of /proc; a
/// process that exits meanwhile is skipped).
pub fn processes_in(ns: Identity) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| identity(Path::new(&format!("/proc/{pid}/ns/net"))).is_ok_and(|i| i == ns))
        .collect();
    pids.sort_unstable();
    pids
}

/// Refuses the node's own network namespace (init's, and the agent's: on a
/// node the agent runs with the host network): interception there would
/// redirect, or lock out, the whole node.
pub fn refuse_host(path: &Path) -> anyhow::Result<()> {
    let new = identity(path)?;
    for host in ["/proc/1/ns/net", "/proc/self/ns/net"] {
        if identity(Path::new(host)).is_ok_and(|h| h == new) {
            bail!("netns {}: the node's own network namespace ({host}), not a pod's", path.display());
        }
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the namespace; the agent's own
/// threads never change namespace.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
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

/// A route of the pod's main table, either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub net: IpNet,
    pub iface: String,
}

/// What the agent needs to know of a pod's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNet {
    /// Its own addresses, both families, but for loopback (IPv6
    /// link-local ones too: connections to them stay in the pod too).
    pub addrs: Vec<IpAddr>,
    /// Interfaces by name and index.
    pub ifaces: Vec<(String, u32)>,
    /// The main table's unicast routes, both families, in the kernel's order.
    pub routes: Vec<Route>,
    /// The IPv6 hand-over prefix is routed to `lo`
    /// (`redirect_common::handover::NET6`).
    pub handover_route: bool,
}

impl PodNet {
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        self.ifaces.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }

    /// The pod IP of a family: its first global address of that family
    /// (what `localProxyMode: PodIP` and the ip6tables variant name).
    pub fn pod_ip(&self, v6: bool) -> Option<IpAddr> {
        self.addrs.iter().copied().find(|a| match a {
            IpAddr::V4(_) => !v6,
            IpAddr::V6(a) => v6 && !is_link_local(a),
        })
    }

    /// The pod IP of a family, which `localProxyMode: PodIP` needs on both
    /// dataplanes (the target of the proxy's loopback connections).
    pub fn pod_ip_for_local_proxy(&self, v6: bool, pod: &str) -> anyhow::Result<IpAddr> {
        self.pod_ip(v6).ok_or_else(|| {
            anyhow::anyhow!(
                "pod {pod}: localProxyMode PodIP needs a pod IP of each family it intercepts, and its netns has no {} one",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
    }

    /// Whether the pod has a global IPv6 address (what `--ipv6 auto` asks).
    pub fn has_global_v6(&self) -> bool {
        self.pod_ip(true).is_some()
    }

    /// The route the kernel takes to `addr`: the longest matching prefix,
    /// the first of equally long ones.
    pub fn route_for(&self, addr: IpAddr) -> Option<&Route> {
        self.routes.iter().filter(|r| r.net.contains(&addr)).fold(None, |best: Option<&Route>, r| match best {
            Some(b) if b.net.prefix_len() >= r.net.prefix_len() => Some(b),
            _ => Some(r),
        })
    }
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Parses /proc/net/route: `Iface Destination Gateway Flags RefCnt Use
/// Metric Mask ...`, addresses as little-endian hex. It holds the main
/// table only.
fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the address as a native integer.
            let net = Ipv4Net::new(Ipv4Addr::from(dst.to_ne_bytes()), mask.count_ones() as u8).ok()?;
            Some(Route { net: IpNet::V4(net), iface: f[0].to_owned() })
        })
        .collect()
}

/// `RTF_REJECT`, `RTF_CACHE`, `RTF_LOCAL` (include/uapi/linux/ipv6_route.h, route.h).
const RTF_REJECT: u32 = 0x0200;
const RTF_CACHE: u32 = 0x0100_0000;
const RTF_LOCAL: u32 = 0x8000_0000;

/// Parses /proc/net/ipv6_route: `dst dst_len src src_len next_hop metric
/// refcnt use flags iface`, in hex. It holds every table: the main table's
/// unicast routes are those neither local, nor reject (the unreachable
/// default), nor cached, nor multicast. Also returns whether the hand-over
/// prefix is routed locally to `lo`.
fn parse_routes6(text: &str) -> (Vec<Route>, bool) {
    let handover = handover_net();
    let mut handover_route = false;
    let mut routes = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dst), Some(len), Some(flags), Some(iface)) = (f.first(), f.get(1), f.get(8), f.get(9)) else { continue };
        let (Ok(dst), Ok(len), Ok(flags)) = (u128::from_str_radix(dst, 16), u8::from_str_radix(len, 16), u32::from_str_radix(flags, 16))
        else {
            continue;
        };
        let Ok(net) = Ipv6Net::new(Ipv6Addr::from(dst), len) else { continue };
        if flags & RTF_LOCAL != 0 {
            handover_route |= net == handover && *iface == "lo";
            continue;
        }
        if flags & (RTF_REJECT | RTF_CACHE) != 0 || dst >> 120 == 0xff {
            continue;
        }
        routes.push(Route { net: IpNet::V6(net), iface: (*iface).to_owned() });
    }
    (routes, handover_route)
}

/// The IPv6 hand-over prefix (`redirect_common::handover::NET6`).
pub fn handover_net() -> Ipv6Net {
    let mut octets = [0u8; 16];
    octets[..8].copy_from_slice(&redirect_common::handover::NET6);
    Ipv6Net::new(Ipv6Addr::from(octets), redirect_common::handover::NET6_PREFIX_LEN).expect("a /64")
}

/// Reads addresses, interfaces and routes of the namespace in one visit.
pub fn pod_net(path: &Path) -> anyhow::Result<PodNet> {
    in_netns(path, || {
        let mut net = PodNet::default();
        for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
            let Some(address) = ifa.address.as_ref() else { continue };
            let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(a), _) => IpAddr::V4(a.ip()),
                (_, Some(a)) => IpAddr::V6(a.ip()),
                _ => continue,
            };
            if !ip.is_loopback() && !net.addrs.contains(&ip) {
                net.addrs.push(ip);
            }
        }
        net.addrs.sort();
        for iface in nix::net::if_::if_nameindex().context("if_nameindex")?.iter() {
            net.ifaces.push((iface.name().to_string_lossy().into_owned(), iface.index()));
        }
        // /proc/thread-self/net is this thread's (the pod's) namespace.
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").context("reading the pod's routes")?;
        net.routes = parse_routes(&routes);
        // Absent where the kernel or the namespace has no IPv6.
        if let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/ipv6_route") {
            let (routes6, handover_route) = parse_routes6(&text);
            net.routes.extend(routes6);
            net.handover_route = handover_route;
        }
        Ok(net)
    })
}

/// Routes the IPv6 hand-over prefix to `lo` in the pod's network namespace
/// (present: idempotent), or takes that route away (absent: nothing to do).
/// A `local` route in the local table, as the kernel's own for the pod's
/// addresses: every address of the prefix is the pod's, like 127.0.0.0/8.
pub fn set_handover_route(path: &Path, present: bool) -> anyhow::Result<()> {
    rtnl::set_local_route(path, handover_net(), present)
}

/// Leaves (or takes away) the mark a guarded fsm-init looks for before it
/// applies its rules (`crate::injection::GUARD`): the alias of the pod's
/// `lo`, which its containers read at `/sys/class/net/lo/ifalias`.
pub fn set_guard_mark(path: &Path, present: bool) -> anyhow::Result<()> {
    rtnl::set_lo_alias(path, if present { crate::injection::GUARD_MARK } else { "" })
}

/// Whether the pod's `lo` carries the guard's mark.
pub fn guard_mark(path: &Path) -> anyhow::Result<bool> {
    Ok(rtnl::lo_alias(path)?.as_deref() == Some(crate::injection::GUARD_MARK))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A line of /proc/net/route as the kernel prints it.
    fn route_line(iface: &str, net: Ipv4Net) -> String {
        let hex = |a: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(a.octets()));
        format!("{iface}\t{}\t00000000\t0001\t0\t0\t0\t{}\t0\t0\t0", hex(net.network()), hex(net.netmask()))
    }

    /// A line of /proc/net/ipv6_route as the kernel prints it (main table,
    /// unicast).
    fn route6_line(iface: &str, net: Ipv6Net) -> String {
        format!(
            "{:032x} {:02x} {:032x} 00 {:032x} 00000100 00000001 00000000 00000001 {iface:>8}",
            u128::from(net.network()),
            net.prefix_len(),
            0,
            0
        )
    }

    proptest! {
        // What the kernel prints is read back; anything else in the file
        // (a line cut short, another format) is passed by, never a panic.
        #[test]
        fn proc_net_route_gives_back_the_routes_printed_and_skips_the_rest(
            routes in prop::collection::vec(("[a-z][a-z0-9]{0,7}", any::<u32>(), 0u8..=32), 0..8),
            noise in prop::collection::vec("\\PC{0,60}", 0..4),
        ) {
            let nets: Vec<(String, Ipv4Net)> =
                routes.iter().map(|(i, a, l)| (i.clone(), Ipv4Net::new(Ipv4Addr::from(*a), *l).unwrap().trunc())).collect();
            let mut text = String::from("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n");
            for (iface, net) in &nets {
                text += &route_line(iface, *net);
                text.push('\n');
            }
            let parsed = parse_routes(&text);
            prop_assert_eq!(parsed.iter().map(|r| (r.iface.clone(), r.net)).collect::<Vec<_>>(),
                            nets.iter().map(|(i, n)| (i.clone(), IpNet::V4(*n))).collect::<Vec<_>>());
            for line in &noise {
                let _ = parse_routes(&format!("{text}{line}\n"));
                let _ = parse_routes6(line);
            }
        }

        #[test]
        fn proc_net_ipv6_route_gives_back_the_unicast_routes_printed(
            routes in prop::collection::vec(("[a-z][a-z0-9]{0,7}", 0u128..(0xff << 120), 0u8..=128), 0..8),
        ) {
            let nets: Vec<(String, Ipv6Net)> =
                routes.iter().map(|(i, a, l)| (i.clone(), Ipv6Net::new(Ipv6Addr::from(*a), *l).unwrap().trunc())).collect();
            let text: String = nets.iter().map(|(i, n)| route6_line(i, *n) + "\n").collect();
            let (parsed, handover) = parse_routes6(&text);
            prop_assert!(!handover);
            prop_assert_eq!(parsed.iter().map(|r| (r.iface.clone(), r.net)).collect::<Vec<_>>(),
                            nets.iter().map(|(i, n)| (i.clone(), IpNet::V6(*n))).collect::<Vec<_>>());
        }
    }

    #[test]
    fn reads_proc_net_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0101F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
net1\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let r = parse_routes(text);
        let route = |net: &str, iface: &str| Route { net: net.parse().unwrap(), iface: iface.into() };
        assert_eq!(r, [route("0.0.0.0/0", "eth0"), route("10.244.1.0/24", "eth0"), route("192.168.0.0/16", "net1")]);
    }

    #[test]
    fn reads_proc_net_ipv6_route_main_table_unicast_only() {
        // From a pod netns: a connected /64, a default route, the local
        // table's entries (loopback, its own address, the hand-over
        // prefix), the unreachable default of the null table, multicast.
        let text = "\
fd000001000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001       a6
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000001000000000000000000000001 00000400 00000001 00000000 00000003       a6
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
fd000001000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       a6
fd3ca7e152b900010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 80000001       lo
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001       a6
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let (routes, handover) = parse_routes6(text);
        let route = |net: &str| Route { net: net.parse().unwrap(), iface: "a6".into() };
        assert_eq!(routes, [route("fd00:1::/64"), route("::/0")]);
        assert!(handover);
        assert!(!parse_routes6(&text.replace("fd3ca7e152b90001", "fd3ca7e152b90002")).1, "another prefix is not ours");
    }

    #[test]
    fn the_route_taken_is_the_longest_match_of_the_family() {
        let net = PodNet {
            routes: ["0.0.0.0/0 eth0", "192.168.0.0/16 net1", "192.168.7.0/24 eth0", "::/0 eth0", "fd00:5::/64 net1"]
                .iter()
                .map(|r| {
                    let (n, i) = r.split_once(' ').unwrap();
                    Route { net: n.parse().unwrap(), iface: i.into() }
                })
                .collect(),
            ..PodNet::default()
        };
        let via = |a: &str| net.route_for(a.parse().unwrap()).map(|r| r.iface.as_str());
        assert_eq!(via("192.168.1.1"), Some("net1"));
        assert_eq!(via("192.168.7.1"), Some("eth0"));
        assert_eq!(via("10.0.0.1"), Some("eth0"));
        assert_eq!(via("fd00:5::9"), Some("net1"));
        assert_eq!(via("fd00:6::9"), Some("eth0"));
    }
}
