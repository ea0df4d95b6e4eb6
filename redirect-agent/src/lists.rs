//! The user-space side of the one decision: answers
//! `redirect_common::decision::OutboundLists` from a pod's configured
//! policy, so `explain` and the tests run the very function the kernel runs.

use std::net::{IpAddr, Ipv4Addr};

use redirect_common::decision::OutboundLists;

use crate::config::PodPolicy;

pub struct PolicyLists<'a> {
    pub policy: &'a PodPolicy,
    pub local_addrs: &'a [Ipv4Addr],
    pub proxy_uid: u32,
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
        self.local_addrs.contains(&Ipv4Addr::from(addr))
    }

    fn routed_via_excluded_iface(&self, _addr: u32) -> bool {
        // Same as the kernel side until routes through excluded interfaces
        // are tracked (see redirect-ebpf/src/policy.rs).
        false
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
        let lists = PolicyLists { policy: &policy, local_addrs: local, proxy_uid: 1500 };
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
        assert_eq!(Included.verdict(), redirect_common::decision::Verdict::RedirectOutbound);
        assert_eq!(ProxyToLocal.verdict(), redirect_common::decision::Verdict::RedirectInbound);
    }
}
