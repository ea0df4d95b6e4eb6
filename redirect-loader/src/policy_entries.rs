//! A pod's policy in map terms: the MeshConfig's lists and the pod's own
//! (annotations, addresses, interfaces, routes) as the entries of each
//! policy map, each family's into its own maps. Pure: computed and tested
//! without a kernel (`maps` writes them).

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use redirect_common::maps::{Ip6, List, PolicyAddr, PolicyAddr6, PolicyId, PolicyIface, PolicyPort, direction};

use redirect_config::{Cidr, InterfaceName, MeshConfig, Port, annotations::PodAnnotations};
use redirect_node::netns::PodNet;

/// What is written for one pod, in map terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotEntries {
    pub local_addrs: Vec<[u8; 4]>,
    pub local_addrs6: Vec<Ip6>,
    pub excluded_cidrs: Vec<([u8; 4], u8)>,
    pub excluded_cidrs6: Vec<(Ip6, u8)>,
    pub included_cidrs: Vec<([u8; 4], u8)>,
    pub included_cidrs6: Vec<(Ip6, u8)>,
    pub excluded_ports: Vec<u16>,
    pub inbound_excluded_ports: Vec<u16>,
    /// Interfaces of the pod in `networkInterfaceExclusionList`, by index.
    pub excluded_ifaces: Vec<u32>,
    /// The pod's routes: (destination, prefix, device excluded).
    pub routes: Vec<([u8; 4], u8, bool)>,
    pub routes6: Vec<(Ip6, u8, bool)>,
    /// The inclusion list is non-empty (in any family): only its CIDRs are
    /// redirected, and an IPv6-only list redirects no IPv4 destination.
    pub inclusion: bool,
    /// The pod's IPv6 is intercepted (`pod_flags::IPV6`; own slot only).
    pub ipv6: bool,
    /// Its UDP to 127.0.0.153:53 goes to the local DNS proxy
    /// (`pod_flags::DNS_PROXY`; own slot only).
    pub dns_proxy: bool,
}

/// One entry of a policy slot in its map: the one table that `write`,
/// `delete` and the read-back of `read_slots` all go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    Local(PolicyAddr),
    Local6(PolicyAddr6),
    Cidr { included: bool, key: PolicyAddr, len: u8 },
    Cidr6 { included: bool, key: PolicyAddr6, len: u8 },
    Port(PolicyPort),
    Iface(PolicyIface),
    Route { key: PolicyAddr, len: u8, excluded: bool },
    Route6 { key: PolicyAddr6, len: u8, excluded: bool },
}

impl SlotEntries {
    /// Whether `list` has an entry a lookup could match (see
    /// `redirect_common::maps::List`).
    pub fn holds(&self, list: List) -> bool {
        match list {
            List::ExcludedCidrs => !self.excluded_cidrs.is_empty(),
            List::IncludedCidrs => !self.included_cidrs.is_empty(),
            List::ExcludedCidrs6 => !self.excluded_cidrs6.is_empty(),
            List::IncludedCidrs6 => !self.included_cidrs6.is_empty(),
            List::OutboundPorts => !self.excluded_ports.is_empty(),
            List::InboundPorts => !self.inbound_excluded_ports.is_empty(),
            List::ExcludedRoutes => self.routes.iter().any(|(_, _, excluded)| *excluded),
            List::ExcludedRoutes6 => self.routes6.iter().any(|(_, _, excluded)| *excluded),
            List::ExcludedIfaces => !self.excluded_ifaces.is_empty(),
        }
    }

    /// Every map entry of these lists in `slot`.
    pub(super) fn entries(&self, slot: PolicyId) -> impl Iterator<Item = Entry> + '_ {
        let v4 = move |addr| PolicyAddr { policy: slot, addr };
        let v6 = move |addr| PolicyAddr6 { policy: slot, addr };
        fn cidrs(slot: PolicyId, included: bool, list: &[([u8; 4], u8)]) -> impl Iterator<Item = Entry> + '_ {
            list.iter().map(move |(addr, len)| Entry::Cidr { included, key: PolicyAddr { policy: slot, addr: *addr }, len: *len })
        }
        fn cidrs6(slot: PolicyId, included: bool, list: &[(Ip6, u8)]) -> impl Iterator<Item = Entry> + '_ {
            list.iter().map(move |(addr, len)| Entry::Cidr6 { included, key: PolicyAddr6 { policy: slot, addr: *addr }, len: *len })
        }
        fn ports(slot: PolicyId, direction: u16, list: &[u16]) -> impl Iterator<Item = Entry> + '_ {
            list.iter().map(move |port| Entry::Port(PolicyPort { policy: slot, port: *port, direction }))
        }
        self.local_addrs
            .iter()
            .map(move |a| Entry::Local(v4(*a)))
            .chain(self.local_addrs6.iter().map(move |a| Entry::Local6(v6(*a))))
            .chain(cidrs(slot, false, &self.excluded_cidrs))
            .chain(cidrs(slot, true, &self.included_cidrs))
            .chain(cidrs6(slot, false, &self.excluded_cidrs6))
            .chain(cidrs6(slot, true, &self.included_cidrs6))
            .chain(ports(slot, direction::OUTBOUND, &self.excluded_ports))
            .chain(ports(slot, direction::INBOUND, &self.inbound_excluded_ports))
            .chain(self.excluded_ifaces.iter().map(move |ifindex| Entry::Iface(PolicyIface { policy: slot, ifindex: *ifindex })))
            .chain(self.routes.iter().map(move |(a, len, excluded)| Entry::Route { key: v4(*a), len: *len, excluded: *excluded }))
            .chain(self.routes6.iter().map(move |(a, len, excluded)| Entry::Route6 { key: v6(*a), len: *len, excluded: *excluded }))
    }

    /// Puts an entry read back from the maps into its list.
    pub(super) fn add(&mut self, e: Entry) {
        match e {
            Entry::Local(k) => self.local_addrs.push(k.addr),
            Entry::Local6(k) => self.local_addrs6.push(k.addr),
            Entry::Cidr { included: false, key, len } => self.excluded_cidrs.push((key.addr, len)),
            Entry::Cidr { included: true, key, len } => self.included_cidrs.push((key.addr, len)),
            Entry::Cidr6 { included: false, key, len } => self.excluded_cidrs6.push((key.addr, len)),
            Entry::Cidr6 { included: true, key, len } => self.included_cidrs6.push((key.addr, len)),
            Entry::Port(p) if p.direction == direction::INBOUND => self.inbound_excluded_ports.push(p.port),
            Entry::Port(p) => self.excluded_ports.push(p.port),
            Entry::Iface(i) => self.excluded_ifaces.push(i.ifindex),
            Entry::Route { key, len, excluded } => self.routes.push((key.addr, len, excluded)),
            Entry::Route6 { key, len, excluded } => self.routes6.push((key.addr, len, excluded)),
        }
    }

    /// Every list in the order the translation writes them (sorted).
    pub(super) fn sort(&mut self) {
        self.local_addrs.sort();
        self.local_addrs6.sort();
        self.excluded_cidrs.sort();
        self.included_cidrs.sort();
        self.excluded_cidrs6.sort();
        self.included_cidrs6.sort();
        self.excluded_ports.sort();
        self.inbound_excluded_ports.sort();
        self.excluded_ifaces.sort();
        self.routes.sort();
        self.routes6.sort();
    }
}

/// A pod's policy in map terms: the MeshConfig's part (shared by every pod)
/// and the pod's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodEntries {
    pub mesh: SlotEntries,
    pub own: SlotEntries,
}

impl PodEntries {
    /// The MeshConfig's part, once for every pod.
    pub fn mesh(mesh: &MeshConfig) -> SlotEntries {
        SlotEntries::lists(
            &mesh.outbound_ip_range_exclusions,
            &mesh.outbound_ip_range_inclusions,
            &mesh.outbound_port_exclusions,
            &mesh.inbound_port_exclusions,
        )
    }

    /// The pod's own part: its annotations' entries (an entry the MeshConfig
    /// has too is harmless: the programs look in both slots), its addresses,
    /// excluded interfaces and routes, and whether its IPv6 is intercepted.
    /// Linear in the pod's own lists, so a MeshConfig change costs little
    /// per pod however long its lists are.
    pub fn own(mesh: &MeshConfig, pod: &PodAnnotations, net: &PodNet, ipv6: bool) -> SlotEntries {
        let mut own = SlotEntries::lists(
            &pod.outbound_ip_range_exclusions,
            &pod.outbound_ip_range_inclusions,
            &pod.outbound_port_exclusions,
            &pod.inbound_port_exclusions,
        );
        own.pod_net(&mesh.network_interface_exclusions, net);
        own.inclusion = !mesh.outbound_ip_range_inclusions.is_empty() || !pod.outbound_ip_range_inclusions.is_empty();
        own.ipv6 = ipv6;
        own.dns_proxy = mesh.local_dns_proxy;
        own
    }

    pub fn new(mesh: &MeshConfig, pod: &PodAnnotations, net: &PodNet, ipv6: bool) -> Self {
        PodEntries { mesh: Self::mesh(mesh), own: Self::own(mesh, pod, net, ipv6) }
    }
}

pub(super) fn ip6(a: &Ipv6Addr) -> Ip6 {
    Ip6::from_octets(a.octets())
}

impl SlotEntries {
    /// Refuses, by count and cap, a pod whose namespace holds more
    /// addresses or routes than a pod may put into the node's maps
    /// (`capacity::ADDRS_PER_POD`, `ROUTES_PER_POD`).
    pub fn within_pod_caps(&self) -> anyhow::Result<()> {
        use redirect_common::maps::capacity::{ADDRS_PER_POD, ROUTES_PER_POD};
        let counts = [
            ("IPv4 addresses", self.local_addrs.len(), ADDRS_PER_POD),
            ("IPv6 addresses", self.local_addrs6.len(), ADDRS_PER_POD),
            ("IPv4 routes", self.routes.len(), ROUTES_PER_POD),
            ("IPv6 routes", self.routes6.len(), ROUTES_PER_POD),
        ];
        for (what, n, cap) in counts {
            if n > cap as usize {
                anyhow::bail!("its network namespace holds {n} {what}, over the {cap} a pod may have (the node's pods share the maps)");
            }
        }
        Ok(())
    }

    /// The lists, each family's CIDRs into its own maps.
    fn lists(excluded: &[Cidr], included: &[Cidr], out_ports: &[Port], in_ports: &[Port]) -> Self {
        fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
            v.sort();
            v.dedup();
            v
        }
        let v4 = |cidrs: &[Cidr]| {
            sorted(
                cidrs
                    .iter()
                    .filter_map(|c| match c.net.trunc() {
                        IpNet::V4(n) => Some((n.addr().octets(), n.prefix_len())),
                        IpNet::V6(_) => None,
                    })
                    .collect(),
            )
        };
        let v6 = |cidrs: &[Cidr]| {
            sorted(
                cidrs
                    .iter()
                    .filter_map(|c| match c.net.trunc() {
                        IpNet::V6(n) => Some((ip6(&n.addr()), n.prefix_len())),
                        IpNet::V4(_) => None,
                    })
                    .collect(),
            )
        };
        let ports = |list: &[Port]| sorted(list.iter().map(|p| p.get()).collect());
        SlotEntries {
            excluded_cidrs: v4(excluded),
            included_cidrs: v4(included),
            excluded_cidrs6: v6(excluded),
            included_cidrs6: v6(included),
            excluded_ports: ports(out_ports),
            inbound_excluded_ports: ports(in_ports),
            ..SlotEntries::default()
        }
    }

    /// What belongs to the pod's network namespace: addresses, excluded
    /// interfaces by index, routes.
    fn pod_net(&mut self, excluded_ifaces: &[InterfaceName], net: &PodNet) {
        let excluded = |name: &str| excluded_ifaces.iter().any(|i| i.matches(name));
        // Two routes to one prefix (metrics): the kernel uses the first; so
        // do we (a stable sort keeps the kernel's order among equals). Only
        // routes matter when some device is excluded.
        fn routes<A: Ord + Copy>(mut r: Vec<(A, u8, bool)>) -> Vec<(A, u8, bool)> {
            r.sort_by_key(|(a, len, _)| (*a, *len));
            r.dedup_by_key(|(a, len, _)| (*a, *len));
            if r.iter().any(|(_, _, excluded)| *excluded) { r } else { Vec::new() }
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for r in &net.routes {
            match r.net.trunc() {
                IpNet::V4(n) => v4.push((n.addr().octets(), n.prefix_len(), excluded(&r.iface))),
                IpNet::V6(n) => v6.push((ip6(&n.addr()), n.prefix_len(), excluded(&r.iface))),
            }
        }
        self.routes = routes(v4);
        self.routes6 = routes(v6);
        let mut excluded_ifaces: Vec<u32> = net.ifaces.iter().filter(|(name, _)| excluded(name)).map(|(_, index)| *index).collect();
        excluded_ifaces.sort();
        self.excluded_ifaces = excluded_ifaces;
        for a in &net.addrs {
            match a {
                IpAddr::V4(a) => self.local_addrs.push(a.octets()),
                IpAddr::V6(a) => self.local_addrs6.push(ip6(a)),
            }
        }
        self.local_addrs.sort();
        self.local_addrs6.sort();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use redirect_common::maps::List;
    use redirect_node::netns::Route;

    fn ip6s(s: &str) -> Ip6 {
        ip6(&s.parse().unwrap())
    }

    #[test]
    fn each_family_goes_to_its_own_lists_truncated_and_once() {
        let mesh = MeshConfig::parse(
            "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.1.2.3/16, fd00:96::1/32, 10.1.0.0/16]\n    outboundIPRangeInclusionList: [fd00:97::/48]\n    networkInterfaceExclusionList: [net1]\n",
        )
        .unwrap();
        let pod = PodAnnotations::from_map(&BTreeMap::from([(
            "flomesh.io/outbound-ip-range-exclusion-list".to_owned(),
            "fd00:98::/32, 10.9.0.0/16".to_owned(),
        )]))
        .unwrap();
        let route = |net: &str, iface: &str| Route { net: net.parse().unwrap(), iface: iface.into() };
        let net = PodNet {
            addrs: ["10.244.1.2", "fd00:244:1::2", "fe80::2"].iter().map(|a| a.parse().unwrap()).collect(),
            ifaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("net1".into(), 3)],
            routes: vec![
                route("0.0.0.0/0", "eth0"),
                route("::/0", "eth0"),
                route("fd00:245:1::/64", "net1"),
                route("fd00:245:1::/64", "eth0"),
            ],
            handover_route: true,
        };
        let e = PodEntries::new(&mesh, &pod, &net, true);
        assert_eq!(e.mesh.excluded_cidrs, [([10, 1, 0, 0], 16)]);
        assert_eq!(e.mesh.excluded_cidrs6, [(ip6s("fd00:96::"), 32)]);
        assert_eq!((e.mesh.included_cidrs.len(), e.mesh.included_cidrs6.clone()), (0, vec![(ip6s("fd00:97::"), 48)]));
        assert_eq!(
            (e.own.excluded_cidrs.clone(), e.own.excluded_cidrs6.clone()),
            (vec![([10, 9, 0, 0], 16)], vec![(ip6s("fd00:98::"), 32)])
        );
        assert!(e.own.inclusion && e.own.ipv6, "an IPv6-only inclusion list limits both families");
        assert_eq!(e.own.local_addrs, [[10, 244, 1, 2]]);
        assert_eq!(e.own.local_addrs6, [ip6s("fd00:244:1::2"), ip6s("fe80::2")]);
        assert_eq!(e.own.excluded_ifaces, [3]);
        // IPv4: no route through net1, so none at all; IPv6: the first of
        // two routes to one prefix, as the kernel takes it.
        assert!(e.own.routes.is_empty());
        assert_eq!(e.own.routes6, [(ip6s("::"), 0, false), (ip6s("fd00:245:1::"), 64, true)]);
        assert!(e.own.holds(List::ExcludedRoutes6) && !e.own.holds(List::ExcludedRoutes));
        // Written and read back, each entry lands in the list it came from.
        let mut back = SlotEntries::default();
        for entry in e.own.entries(9) {
            back.add(entry);
        }
        back.sort();
        assert_eq!(back, SlotEntries { inclusion: false, ipv6: false, ..e.own.clone() });
    }

    #[test]
    fn an_interface_prefix_excludes_every_interface_it_starts() {
        let mesh = MeshConfig::parse("spec:\n  traffic:\n    networkInterfaceExclusionList: [net+]\n").unwrap();
        let route = |net: &str, iface: &str| Route { net: net.parse().unwrap(), iface: iface.into() };
        let net = PodNet {
            addrs: vec!["10.244.1.2".parse().unwrap()],
            ifaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("net1".into(), 3), ("net2".into(), 4), ("veth-net".into(), 5)],
            routes: vec![route("0.0.0.0/0", "eth0"), route("10.1.0.0/16", "net1"), route("10.2.0.0/16", "net2")],
            handover_route: false,
        };
        let e = PodEntries::new(&mesh, &PodAnnotations::default(), &net, false);
        assert_eq!(e.own.excluded_ifaces, [3, 4]);
        assert_eq!(e.own.routes, [([0, 0, 0, 0], 0, false), ([10, 1, 0, 0], 16, true), ([10, 2, 0, 0], 16, true)]);
    }
}
