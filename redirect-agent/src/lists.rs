//! The user-space side of the one decision: answers
//! `redirect_common::decision::OutboundLists` from a pod's configured
//! policy, so `explain` and the tests run the very function the kernel runs.

use std::net::{IpAddr, Ipv4Addr};

use redirect_common::decision::{InboundLists, OutboundLists};

use crate::{config::PodPolicy, netns::PodNet};

pub struct PolicyLists<'a> {
    pub policy: &'a PodPolicy,
    pub net: &'a PodNet,
    pub proxy_uid: u32,
}

impl PolicyLists<'_> {
    fn iface_excluded(&self, name: &str) -> bool {
        self.policy.network_interface_exclusions.iter().any(|i| i.value.as_str() == name)
    }
}

impl InboundLists for PolicyLists<'_> {
    fn inbound_port_excluded(&self, port: u16) -> bool {
        self.policy.inbound_port_exclusions.iter().any(|p| p.value.get() == port)
    }

    fn interface_excluded(&self, ifindex: u32) -> bool {
        self.net.ifaces.iter().any(|(name, index)| *index == ifindex && self.iface_excluded(name))
    }
}

fn contains(cidrs: &[crate::config::Sourced<crate::config::Cidr>], addr: u32) -> bool {
    let ip = IpAddr::V4(Ipv4Addr::from(addr));
    cidrs.iter().any(|c| c.value.net.contains(&ip))
}

impl OutboundLists for PolicyLists<'_> {
    fn proxy_uid(&self) -> u32 {
        self.proxy_uid
    }

    fn is_local_addr(&self, addr: u32) -> bool {
        self.net.addrs.contains(&Ipv4Addr::from(addr))
    }

    /// The longest matching route of the pod's main table decides.
    fn routed_via_excluded_iface(&self, addr: u32) -> bool {
        let ip = Ipv4Addr::from(addr);
        self.net
            .routes
            .iter()
            .filter(|r| {
                let mask = if r.prefix_len == 0 { 0 } else { u32::MAX << (32 - r.prefix_len) };
                u32::from(ip) & mask == u32::from(r.dst) & mask
            })
            .max_by_key(|r| r.prefix_len)
            .is_some_and(|r| self.iface_excluded(&r.iface))
    }

    fn cidr_excluded(&self, addr: u32) -> bool {
        contains(&self.policy.outbound_ip_range_exclusions, addr)
    }

    fn port_excluded(&self, port: u16) -> bool {
        self.policy.outbound_port_exclusions.iter().any(|p| p.value.get() == port)
    }

    fn inclusion_enabled(&self) -> bool {
        !self.policy.outbound_ip_range_inclusions.is_empty()
    }

    fn cidr_included(&self, addr: u32) -> bool {
        contains(&self.policy.outbound_ip_range_inclusions, addr)
    }
}

#[cfg(test)]
mod tests {
    use redirect_common::decision::{Outbound, OutboundRule, decide_outbound};

    use super::*;
    use crate::config::{MeshConfig, annotations::PodAnnotations};

    fn decide(mesh: &str, local: &[Ipv4Addr], dst: [u8; 4], port: u16, uid: u32) -> OutboundRule {
        let policy = PodPolicy::merge(&MeshConfig::parse(mesh).unwrap(), &PodAnnotations::default());
        let net = PodNet {
            addrs: local.to_vec(),
            ifaces: vec![("lo".into(), 1), ("eth0".into(), 2), ("net1".into(), 3)],
            routes: vec![
                crate::netns::Route { dst: Ipv4Addr::UNSPECIFIED, prefix_len: 0, iface: "eth0".into() },
                crate::netns::Route { dst: Ipv4Addr::new(192, 168, 0, 0), prefix_len: 16, iface: "net1".into() },
                crate::netns::Route { dst: Ipv4Addr::new(192, 168, 7, 0), prefix_len: 24, iface: "eth0".into() },
            ],
        };
        let lists = PolicyLists { policy: &policy, net: &net, proxy_uid: 1500 };
        decide_outbound(&Outbound { dst: u32::from_be_bytes(dst), dst_port: port, uid }, &lists)
    }

    #[test]
    fn the_outbound_table_row_by_row() {
        use OutboundRule::*;
        let pod = [Ipv4Addr::new(10, 0, 0, 2)];
        let none = "spec: {}";
        assert_eq!(decide(none, &pod, [10, 0, 0, 2], 8080, 1500), ProxyToLocal);
        assert_eq!(decide(none, &pod, [127, 0, 0, 5], 8080, 1500), ProxyToLocal);
        assert_eq!(decide(none, &pod, [127, 0, 0, 1], 8080, 1500), ProxyUid);
        assert_eq!(decide(none, &pod, [0, 0, 0, 0], 8080, 1500), ProxyUid);
        assert_eq!(decide(none, &pod, [10, 0, 0, 2], 8080, 0), AppToLocal);
        assert_eq!(decide(none, &pod, [127, 0, 0, 1], 8080, 0), AppToLocal);
        assert_eq!(decide(none, &pod, [10, 96, 0, 10], 80, 1500), ProxyUid);
        assert_eq!(decide(none, &pod, [10, 96, 0, 10], 80, 0), Default);
        let excl = "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.96.0.0/16]\n    outboundPortExclusionList: [6379]\n";
        assert_eq!(decide(excl, &pod, [10, 96, 0, 10], 80, 0), ExcludedCidr);
        assert_eq!(decide(excl, &pod, [10, 97, 0, 10], 6379, 0), ExcludedPort);
        assert_eq!(decide(excl, &pod, [10, 97, 0, 10], 80, 0), Default);
        let incl = "spec:\n  traffic:\n    outboundIPRangeInclusionList: [10.96.0.0/16]\n";
        assert_eq!(decide(incl, &pod, [10, 96, 0, 10], 80, 0), Included);
        assert_eq!(decide(incl, &pod, [10, 97, 0, 10], 80, 0), NotIncluded);
        let ifx = "spec:\n  traffic:\n    networkInterfaceExclusionList: [net1]\n";
        assert_eq!(decide(ifx, &pod, [192, 168, 1, 1], 80, 0), ExcludedInterface);
        // A longer route through a device that is not excluded wins.
        assert_eq!(decide(ifx, &pod, [192, 168, 7, 1], 80, 0), Default);
        assert_eq!(decide(none, &pod, [192, 168, 1, 1], 80, 0), Default);
        assert_eq!(Included.verdict(), redirect_common::decision::Verdict::RedirectOutbound);
        assert_eq!(ProxyToLocal.verdict(), redirect_common::decision::Verdict::RedirectInbound);
    }
}
