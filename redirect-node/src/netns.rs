//! Network namespaces of pods, given as a path (`/var/run/netns/NAME`,
//! `/proc/PID/ns/net`, a CNI's bind mount).

use std::{
    fs::File,
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use ipnet::{IpNet, Ipv6Net};
use nix::sched::{CloneFlags, setns};

mod entrant;
mod events;
mod listening;
mod rtnl;
pub use events::NetEvents;
pub use listening::{Listening, duplicate as duplicate_listeners, listening};

/// Opens `path` and checks that it is a network namespace.
pub fn open(path: &Path) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd as _;
    let file = File::open(path).with_context(|| format!("netns {}: can't open", path.display()))?;
    // NS_GET_NSTYPE (`_IO(0xb7, 0x3)`, kernel 4.11): the namespace's type.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without an argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind == libc::CLONE_NEWNET {
        return Ok(file);
    }
    // Another type, a file that is not a namespace (ENOTTY), or a kernel
    // older than the ioctl: setns() with the type in a throwaway thread is
    // the check that works everywhere, and says why. It costs a thread, at
    // every enrolment: the ioctl answers first where it can.
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
/// threads never change namespace. The thread is kept between calls
/// (`entrant`); a call made while it serves another gets a thread of its
/// own.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let ns = File::open(path).with_context(|| format!("netns {}: can't open", path.display()))?;
    let shown = path.display().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let job: entrant::Job = Box::new(move |go_back| {
        let entered = || {
            setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("netns {shown}: not a network namespace"))?;
            f()
        };
        // Caught, so that the kept thread goes on (and back home).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(entered))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("netns thread panicked")));
        go_back();
        let _ = tx.send(result);
    });
    match entrant::run(job, rx) {
        entrant::Ran::Done(result) => result,
        entrant::Ran::Lost => Err(anyhow::anyhow!("the netns thread ended before answering")),
        entrant::Ran::Busy(job, rx) => {
            // A thread of its own ends where it is.
            std::thread::spawn(move || job(&mut || {})).join().map_err(|_| anyhow::anyhow!("netns thread panicked"))?;
            rx.recv().map_err(|_| anyhow::anyhow!("netns thread ended before answering"))?
        }
    }
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

/// The main table's unicast routes of both families, named by their
/// interface (`ifaces`, name and index), in the kernel's order, from a
/// dump of every route (`rtnl::routes`). Also returns whether the
/// hand-over prefix is routed locally to `lo` (index `lo`), in the local
/// table.
fn routes_of(dumped: &[rtnl::DumpedRoute], ifaces: &[(String, u32)], lo: Option<u32>) -> (Vec<Route>, bool) {
    use netlink_packet_route::route::RouteType;
    const RT_TABLE_MAIN: u32 = 254;
    let handover = IpNet::V6(handover_net());
    let handover_route = dumped.iter().any(|r| {
        r.table == u32::from(rtnl::RT_TABLE_LOCAL) && r.kind == RouteType::Local && r.net == handover && r.oif.is_some() && r.oif == lo
    });
    let name = |index: u32| ifaces.iter().find(|(_, i)| *i == index).map(|(n, _)| n.clone());
    let routes = dumped
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && r.kind == RouteType::Unicast)
        .filter_map(|r| Some(Route { net: r.net, iface: name(r.oif?)? }))
        .collect();
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
        // This thread is in the pod's namespace: so is the socket.
        let dumped = rtnl::routes().context("reading the pod's routes")?;
        let lo = net.ifindex("lo");
        (net.routes, net.handover_route) = routes_of(&dumped, &net.ifaces, lo);
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

/// Sets the alias of the pod's `lo` (empty: none), which its containers
/// read at `/sys/class/net/lo/ifalias` (the fsm-init guard's mark:
/// `crate::injection` in the agent).
pub fn set_lo_alias(path: &Path, alias: &'static str) -> anyhow::Result<()> {
    rtnl::set_lo_alias(path, alias)
}

/// The alias of the pod's `lo`, if it has one.
pub fn lo_alias(path: &Path) -> anyhow::Result<Option<String>> {
    rtnl::lo_alias(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A process's own namespaces are open to it: no privilege needed.
    #[test]
    fn a_network_namespace_opens_and_another_kind_or_a_plain_file_is_refused_by_name() {
        assert!(open(Path::new("/proc/self/ns/net")).is_ok());
        for other in ["/proc/self/ns/uts", "/proc/self/ns/mnt", "/proc/self/status"] {
            let e = format!("{:#}", open(Path::new(other)).unwrap_err());
            assert!(e.contains(&format!("netns {other}: not a network namespace")), "{e}");
        }
        let e = format!("{:#}", open(Path::new("/nonexistent/netns")).unwrap_err());
        assert!(e.contains("netns /nonexistent/netns: can't open"), "{e}");
    }

    /// The kept thread (`entrant`) runs each call in the namespace it
    /// names, goes back to the node's after it (it would otherwise hold a
    /// gone pod's namespace), and goes on after a call that panicked;
    /// calls made at once each get their namespace. Needs CAP_SYS_ADMIN.
    #[test]
    fn each_call_runs_in_its_namespace_and_the_kept_thread_goes_back_after_it() {
        use std::os::fd::AsRawFd as _;
        // A namespace held by a descriptor only: made on a thread that ends.
        let made = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare (CAP_SYS_ADMIN)");
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let pod_path = std::path::PathBuf::from(format!("/proc/self/fd/{}", made.as_raw_fd()));
        let node_path = Path::new("/proc/self/ns/net");
        let here = || identity(Path::new("/proc/thread-self/ns/net"));
        let (pod, node) = (identity(&pod_path).unwrap(), identity(node_path).unwrap());
        assert_ne!(pod, node);
        let kept_thread_ns = || {
            entrant::while_idle(|| {
                let task = std::fs::read_dir("/proc/self/task")
                    .unwrap()
                    .map(|t| t.unwrap().path())
                    .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "netns"))
                    .expect("the kept thread");
                identity(&task.join("ns/net")).unwrap()
            })
        };
        for _ in 0..3 {
            assert_eq!(in_netns(&pod_path, here).unwrap(), pod);
            assert_eq!(kept_thread_ns(), node, "back in the node's namespace after a call");
        }
        let e = in_netns(&pod_path, || -> anyhow::Result<()> { panic!("a call that panics") }).unwrap_err();
        assert!(format!("{e}").contains("panicked"), "{e}");
        assert_eq!(kept_thread_ns(), node);
        assert_eq!(in_netns(&pod_path, here).unwrap(), pod);
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..8)
                .map(|i| {
                    let path = if i % 2 == 0 { pod_path.clone() } else { node_path.to_owned() };
                    s.spawn(move || (i, in_netns(&path, here).unwrap()))
                })
                .collect();
            for call in calls {
                let (i, ns) = call.join().unwrap();
                assert_eq!(ns, if i % 2 == 0 { pod } else { node });
            }
        });
    }

    fn dumped(table: u32, kind: netlink_packet_route::route::RouteType, net: &str, oif: Option<u32>) -> rtnl::DumpedRoute {
        rtnl::DumpedRoute { table, kind, net: net.parse().unwrap(), oif }
    }

    #[test]
    fn the_main_tables_unicast_routes_are_kept_with_their_interface_and_the_hand_over_route_is_seen() {
        use netlink_packet_route::route::RouteType::{Broadcast, Local, Multicast, Unicast, Unreachable};
        let ifaces = [("lo".to_owned(), 1), ("eth0".to_owned(), 2), ("net1".to_owned(), 3)];
        // What a pod's namespace dumps: its main table, its local table
        // (loopback, its own addresses, broadcast, the hand-over prefix),
        // IPv6 multicast, the unreachable default of the null table.
        let dump = [
            dumped(254, Unicast, "0.0.0.0/0", Some(2)),
            dumped(254, Unicast, "10.244.1.0/24", Some(2)),
            dumped(254, Unicast, "192.168.0.0/16", Some(3)),
            dumped(255, Local, "127.0.0.0/8", Some(1)),
            dumped(255, Broadcast, "10.244.1.255/32", Some(2)),
            dumped(254, Unicast, "fd00:1::/64", Some(2)),
            dumped(254, Unicast, "::/0", Some(2)),
            dumped(255, Local, "fd00:1::2/128", Some(2)),
            dumped(255, Local, "fd3c:a7e1:52b9:1::/64", Some(1)),
            dumped(255, Multicast, "ff00::/8", Some(2)),
            dumped(0, Unreachable, "::/0", Some(1)),
            // A route of another table (policy routing is not mirrored),
            // and one whose interface is gone meanwhile.
            dumped(100, Unicast, "10.9.0.0/16", Some(3)),
            dumped(254, Unicast, "10.8.0.0/16", Some(9)),
        ];
        let (routes, handover) = routes_of(&dump, &ifaces, Some(1));
        let route = |net: &str, iface: &str| Route { net: net.parse().unwrap(), iface: iface.into() };
        assert_eq!(
            routes,
            [
                route("0.0.0.0/0", "eth0"),
                route("10.244.1.0/24", "eth0"),
                route("192.168.0.0/16", "net1"),
                route("fd00:1::/64", "eth0"),
                route("::/0", "eth0")
            ]
        );
        assert!(handover);
        let elsewhere: Vec<_> = dump
            .iter()
            .map(|r| {
                if r.net == "fd3c:a7e1:52b9:1::/64".parse().unwrap() {
                    dumped(255, Local, "fd3c:a7e1:52b9:2::/64", Some(1))
                } else {
                    r.clone()
                }
            })
            .collect();
        assert!(!routes_of(&elsewhere, &ifaces, Some(1)).1, "another prefix is not ours");
        assert!(!routes_of(&dump, &ifaces, Some(2)).1, "on another device than lo");
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
