//! The user-space side of the one decision: answers
//! `redirect_common::decision::OutboundLists` from a pod's configured
//! policy, so `explain` and the tests run the very function the kernel runs.

use std::net::IpAddr;

use redirect_common::{
    addr::Family,
    decision::{AddrLists, InboundLists, PodLists},
};

use crate::{
    config::{Cidr, PodPolicy, Sourced},
    netns::PodNet,
};

pub(crate) struct PolicyLists<'a> {
    pub policy: &'a PodPolicy,
    pub net: &'a PodNet,
    pub proxy_uid: u32,
    /// The pod's IPv6 is intercepted (its `--ipv6` switch, resolved).
    pub ipv6: bool,
}

impl PolicyLists<'_> {
    fn iface_excluded(&self, name: &str) -> bool {
        self.policy.network_interface_exclusions.iter().any(|i| i.value.matches(name))
    }
}

fn contains(cidrs: &[Sourced<Cidr>], addr: IpAddr) -> bool {
    cidrs.iter().any(|c| c.value.net.contains(&addr))
}

impl InboundLists for PolicyLists<'_> {
    fn inbound_port_excluded(&self, port: u16) -> bool {
        self.policy.inbound_port_exclusions.iter().any(|p| p.value.get() == port)
    }

    fn interface_excluded(&self, ifindex: u32) -> bool {
        self.net.ifaces.iter().any(|(name, index)| *index == ifindex && self.iface_excluded(name))
    }

    fn ipv6_intercepted(&self) -> bool {
        self.ipv6
    }
}

impl PodLists for PolicyLists<'_> {
    fn proxy_uid(&self) -> u32 {
        self.proxy_uid
    }

    fn port_excluded(&self, port: u16) -> bool {
        self.policy.outbound_port_exclusions.iter().any(|p| p.value.get() == port)
    }

    fn inclusion_enabled(&self) -> bool {
        !self.policy.outbound_ip_range_inclusions.is_empty()
    }
}

impl<A: Family> AddrLists<A> for PolicyLists<'_> {
    fn intercepted(&self) -> bool {
        !A::IS_V6 || self.ipv6
    }

    fn is_local_addr(&self, addr: A) -> bool {
        self.net.addrs.contains(&addr.ip())
    }

    /// The longest matching route of the pod's main table decides.
    fn routed_via_excluded_iface(&self, addr: A) -> bool {
        self.net.route_for(addr.ip()).is_some_and(|r| self.iface_excluded(&r.iface))
    }

    fn cidr_excluded(&self, addr: A) -> bool {
        contains(&self.policy.outbound_ip_range_exclusions, addr.ip())
    }

    fn cidr_included(&self, addr: A) -> bool {
        contains(&self.policy.outbound_ip_range_inclusions, addr.ip())
    }
}

#[cfg(test)]
mod tests {
    use redirect_common::decision::{OutboundRule, decide_connect};

    use super::*;
    use crate::config::{MeshConfig, annotations::PodAnnotations};

    /// The rule for a connect() to `to` ("ADDR:PORT", "[ADDR6]:PORT") of a
    /// pod with addresses 10.0.0.2 and fd00::2 and three routes per family.
    fn decide(mesh: &str, ipv6: bool, to: &str, uid: u32) -> OutboundRule {
        let policy = PodPolicy::merge(&MeshConfig::parse(mesh).unwrap(), &PodAnnotations::default());
        let route = |net: &str, iface: &str| crate::netns::Route { net: net.parse().unwrap(), iface: iface.into() };
        let net = PodNet {
            addrs: ["10.0.0.2", "fd00::2", "fe80::2"].iter().map(|a| a.parse().unwrap()).collect(),
            ifaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("net1".into(), 3)],
            routes: vec![
                route("0.0.0.0/0", "eth0"),
                route("192.168.0.0/16", "net1"),
                route("192.168.7.0/24", "eth0"),
                route("::/0", "eth0"),
                route("fd00:168::/32", "net1"),
                route("fd00:168:7::/48", "eth0"),
            ],
            handover_route: ipv6,
        };
        let lists = PolicyLists { policy: &policy, net: &net, proxy_uid: 1500, ipv6 };
        decide_connect(to.parse().unwrap(), uid, &lists)
    }

    #[test]
    fn the_outbound_table_row_by_row() {
        use OutboundRule::*;
        let none = "spec: {}";
        let row = |mesh, to, uid| decide(mesh, false, to, uid);
        assert_eq!(row(none, "10.0.0.2:8080", 1500), ProxyToLocal);
        assert_eq!(row(none, "127.0.0.5:8080", 1500), ProxyToLocal);
        assert_eq!(row(none, "127.0.0.1:8080", 1500), ProxyUid);
        assert_eq!(row(none, "0.0.0.0:8080", 1500), ProxyUid);
        assert_eq!(row(none, "10.0.0.2:8080", 0), AppToLocal);
        assert_eq!(row(none, "127.0.0.1:8080", 0), AppToLocal);
        assert_eq!(row(none, "10.96.0.10:80", 1500), ProxyUid);
        assert_eq!(row(none, "10.96.0.10:80", 0), Default);
        let excl =
            "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.96.0.0/16, fd00:96::/32]\n    outboundPortExclusionList: [6379]\n";
        assert_eq!(row(excl, "10.96.0.10:80", 0), ExcludedCidr);
        assert_eq!(row(excl, "10.97.0.10:6379", 0), ExcludedPort);
        assert_eq!(row(excl, "10.97.0.10:80", 0), Default);
        let incl = "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/16]\n";
        assert_eq!(row(incl, "10.96.0.10:80", 0), Included);
        assert_eq!(row(incl, "10.97.0.10:80", 0), NotIncluded);
        let ifx = "spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n";
        assert_eq!(row(ifx, "192.168.1.1:80", 0), ExcludedInterface);
        // A longer route through a device that is not excluded wins.
        assert_eq!(row(ifx, "192.168.7.1:80", 0), Default);
        assert_eq!(row(none, "192.168.1.1:80", 0), Default);
        assert_eq!(Included.verdict(), redirect_common::decision::Verdict::RedirectOutbound);
        assert_eq!(ProxyToLocal.verdict(), redirect_common::decision::Verdict::RedirectInbound);
    }

    #[test]
    fn an_ipv4_mapped_destination_is_decided_as_ipv4_whatever_the_ipv6_switch() {
        use OutboundRule::*;
        let excl = "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.96.0.0/16]\n    outboundPortExclusionList: [6379]\n";
        for ipv6 in [false, true] {
            let row = |to, uid| decide(excl, ipv6, to, uid);
            assert_eq!(row("[::ffff:10.97.0.10]:80", 0), Default);
            assert_eq!(row("[::ffff:10.96.0.10]:80", 0), ExcludedCidr);
            assert_eq!(row("[::ffff:10.97.0.10]:6379", 0), ExcludedPort);
            assert_eq!(row("[::ffff:10.97.0.10]:80", 1500), ProxyUid);
            assert_eq!(row("[::ffff:10.0.0.2]:8080", 1500), ProxyToLocal);
            assert_eq!(row("[::ffff:10.0.0.2]:8080", 0), AppToLocal);
            assert_eq!(row("[::ffff:127.0.0.1]:8080", 0), AppToLocal);
            assert_eq!(row("[::ffff:0.0.0.0]:8080", 1500), ProxyUid);
        }
    }

    #[test]
    fn ipv6_follows_the_same_table_when_intercepted_and_is_left_alone_when_not() {
        use OutboundRule::*;
        let none = "spec: {}";
        let row = |mesh, to, uid| decide(mesh, true, to, uid);
        assert_eq!(decide(none, false, "[fd00:96::10]:80", 0), Ipv6Off);
        assert_eq!(decide(none, false, "[::1]:8080", 1500), Ipv6Off);
        assert_eq!(row(none, "[fd00:96::10]:80", 0), Default);
        assert_eq!(row(none, "[fd00:96::10]:80", 1500), ProxyUid);
        assert_eq!(row(none, "[fd00::2]:8080", 1500), ProxyToLocal);
        assert_eq!(row(none, "[fe80::2]:8080", 1500), ProxyToLocal, "its own link-local address leaves via lo");
        assert_eq!(row(none, "[fd00::2]:8080", 0), AppToLocal);
        assert_eq!(row(none, "[::1]:8080", 0), AppToLocal);
        assert_eq!(row(none, "[::1]:8080", 1500), ProxyUid);
        assert_eq!(row(none, "[::]:8080", 1500), ProxyUid, ":: is ::1");
        assert_eq!(row(none, "[fe80::1]:80", 0), LinkLocal);
        let excl =
            "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.96.0.0/16, fd00:96::/32]\n    outboundPortExclusionList: [6379]\n";
        assert_eq!(row(excl, "[fd00:96::10]:80", 0), ExcludedCidr);
        assert_eq!(row(excl, "[fd00:97::10]:6379", 0), ExcludedPort);
        assert_eq!(row(excl, "[fd00:97::10]:80", 0), Default);
        // An inclusion list of IPv4 CIDRs only redirects no IPv6 destination.
        let incl = "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/16]\n";
        assert_eq!(row(incl, "[fd00:96::10]:80", 0), NotIncluded);
        let incl6 = "spec:\n  traffic:\n    outboundIPRangeInclusionList: [fd00:96::/32]\n";
        assert_eq!(row(incl6, "[fd00:96::10]:80", 0), Included);
        assert_eq!(row(incl6, "10.96.0.10:80", 0), NotIncluded);
        let ifx = "spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n";
        assert_eq!(row(ifx, "[fd00:168:1::1]:80", 0), ExcludedInterface);
        assert_eq!(row(ifx, "[fd00:168:7::1]:80", 0), Default);
    }
}
