//! fsm-init's `iptables-restore --noflush` script, in the format and rule
//! order of FSM's own example (chain names `fsm_PROXY_*`), with two fixes
//! over the original: `multiport` takes at most 15 ports, so longer lists
//! are split over several rules; and an `ip6tables` variant exists for
//! IPv6 pods (each family gets only its own CIDRs).

use std::{fmt::Write as _, net::IpAddr};

use crate::{
    config::{LocalProxyMode, PodPolicy, Port, Sourced},
    settings::ProxySettings,
};

pub const INBOUND: &str = "fsm_PROXY_INBOUND";
pub const IN_REDIRECT: &str = "fsm_PROXY_IN_REDIRECT";
pub const OUTBOUND: &str = "fsm_PROXY_OUTBOUND";
pub const OUT_REDIRECT: &str = "fsm_PROXY_OUT_REDIRECT";
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTBOUND, OUT_REDIRECT];

/// `multiport` accepts at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn holds(self, ip: &IpAddr) -> bool {
        matches!((self, ip), (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)))
    }
}

/// The pod IP of the `PodIP`-mode DNAT rule.
#[derive(Clone, Copy, Debug)]
pub enum PodIp {
    /// `$POD_IP` (`$POD_IPV6` in the ip6tables variant), expanded by the
    /// shell that runs the script, as fsm-init does.
    ShellVariable,
    Addr(IpAddr),
}

fn multiport(out: &mut String, op: &str, chain: &str, ports: &[Sourced<Port>]) {
    let ports: Vec<String> = ports.iter().map(|p| p.value.to_string()).collect();
    for chunk in ports.chunks(MULTIPORT_MAX) {
        let _ = writeln!(out, "{op} {chain} -p tcp --match multiport --dports {} -j RETURN", chunk.join(","));
    }
}

/// The input of `iptables-restore --noflush` (or `ip6tables-restore`).
pub fn restore_input(policy: &PodPolicy, s: &ProxySettings, family: Family, pod_ip: PodIp) -> String {
    let lo = family.loopback();
    let uid = s.proxy_uid;
    let mut o = String::new();
    o.push_str("# FSM sidecar interception rules\n*nat\n");
    for chain in CHAINS {
        let _ = writeln!(o, ":{chain} - [0:0]");
    }
    // 1. Static inbound rules.
    let _ = writeln!(o, "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-port {}", s.inbound_port);
    let _ = writeln!(o, "-A PREROUTING -p tcp -j {INBOUND}");
    for port in redirect_common::defaults::PROXY_ADMIN_PORTS {
        let _ = writeln!(o, "-A {INBOUND} -p tcp --dport {port} -j RETURN");
    }
    let _ = writeln!(o, "-A {INBOUND} -p tcp -j {IN_REDIRECT}");
    // 2. Excluded interfaces, inbound.
    for iface in &policy.network_interface_exclusions {
        let _ = writeln!(o, "-I {INBOUND} -i {} -j RETURN", iface.value);
    }
    // 3. Excluded inbound ports.
    multiport(&mut o, "-I", INBOUND, &policy.inbound_port_exclusions);
    // 4. Static outbound rules.
    let _ = writeln!(o, "-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-port {}", s.outbound_port);
    // FSM's dead rule (after an unconditional REDIRECT), kept for fidelity.
    let _ = writeln!(o, "-A {OUT_REDIRECT} -p tcp --dport 15000 -j ACCEPT");
    let _ = writeln!(o, "-A OUTPUT -p tcp -j {OUTBOUND}");
    let _ = writeln!(o, "-A {OUTBOUND} -o lo ! -d {lo} -m owner --uid-owner {uid} -j {IN_REDIRECT}");
    let _ = writeln!(o, "-A {OUTBOUND} -o lo -m owner ! --uid-owner {uid} -j RETURN");
    let _ = writeln!(o, "-A {OUTBOUND} -m owner --uid-owner {uid} -j RETURN");
    let _ = writeln!(o, "-A {OUTBOUND} -d {lo} -j RETURN");
    // IPv6 link-local destinations stay direct: a proxy could not dial
    // them back (conntrack's answer has no interface). Ours, not FSM's:
    // FSM has no IPv6 rules.
    if family == Family::V6 {
        let _ = writeln!(o, "-A {OUTBOUND} -d fe80::/10 -j RETURN");
    }
    // 5. PodIP mode: the proxy's connections to loopback go to the pod IP.
    if policy.local_proxy_mode == LocalProxyMode::PodIP {
        let ip = match pod_ip {
            PodIp::ShellVariable if family == Family::V6 => "$POD_IPV6".to_owned(),
            PodIp::ShellVariable => "$POD_IP".to_owned(),
            PodIp::Addr(a) => a.to_string(),
        };
        let _ = writeln!(o, "-I OUTPUT -p tcp -o lo -d {lo} -m owner --uid-owner {uid} -j DNAT --to-destination {ip}");
    }
    // 6. Excluded interfaces, outbound.
    for iface in &policy.network_interface_exclusions {
        let _ = writeln!(o, "-A {OUTBOUND} -o {} -j RETURN", iface.value);
    }
    // 7. Excluded CIDRs.
    for cidr in policy.outbound_ip_range_exclusions.iter().filter(|c| family.holds(&c.value.net.addr())) {
        let _ = writeln!(o, "-A {OUTBOUND} -d {} -j RETURN", cidr.value);
    }
    // 8. Excluded outbound ports.
    multiport(&mut o, "-A", OUTBOUND, &policy.outbound_port_exclusions);
    // 9. Inclusion list, or everything else.
    // A non-empty inclusion list limits both families, even where it has
    // no CIDR of this family (then nothing of this family is redirected).
    if policy.outbound_ip_range_inclusions.is_empty() {
        let _ = writeln!(o, "-A {OUTBOUND} -j {OUT_REDIRECT}");
    } else {
        for cidr in policy.outbound_ip_range_inclusions.iter().filter(|c| family.holds(&c.value.net.addr())) {
            let _ = writeln!(o, "-A {OUTBOUND} -d {} -j {OUT_REDIRECT}", cidr.value);
        }
        let _ = writeln!(o, "-A {OUTBOUND} -j RETURN");
    }
    o.push_str("COMMIT\n");
    o
}

/// The shell script fsm-init runs: the restore input in a here-document.
/// Unquoted, as fsm-init's, so that the shell expands `$POD_IP`; nothing
/// else in it can be expanded, because every value is validated to have
/// no shell syntax (`InterfaceName`, `Cidr`, `Port`).
pub fn fsm_init_script(policy: &PodPolicy, s: &ProxySettings, family: Family, pod_ip: PodIp) -> String {
    format!("{}-restore --noflush <<EOF\n{}EOF\n", family.iptables(), restore_input(policy, s, family, pod_ip))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{MeshConfig, annotations::PodAnnotations};

    fn policy(mesh: &str, annotations: &[(&str, &str)]) -> PodPolicy {
        let map: BTreeMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PodPolicy::merge(&MeshConfig::parse(mesh).unwrap(), &PodAnnotations::from_map(&map).unwrap())
    }

    fn script(mesh: &str, annotations: &[(&str, &str)], family: Family) -> String {
        fsm_init_script(&policy(mesh, annotations), &ProxySettings::default(), family, PodIp::ShellVariable)
    }

    #[test]
    fn the_seed_example_byte_for_byte() {
        let want = include_str!("../../tests/golden/seed-net1-net2.sh");
        let got = script("spec:\n  traffic:\n    networkInterfaceExclusionList: [net1, net2]\n", &[], Family::V4);
        assert_eq!(got, want);
    }

    #[test]
    fn fsm_defaults_without_lists() {
        let got = script("kind: MeshConfig\nspec: {}\n", &[], Family::V4);
        assert_eq!(got, include_str!("../../tests/golden/defaults.sh"));
    }

    #[test]
    fn every_list_set() {
        let mesh = "spec:\n  sidecar:\n    localProxyMode: PodIP\n  traffic:\n    outboundIPRangeExclusionList: [1.1.1.1/32, 2.2.2.2/24, fd00::/8]\n    outboundIPRangeInclusionList: [10.96.0.0/12]\n    outboundPortExclusionList: [6379, 7070]\n    inboundPortExclusionList: [9090]\n    networkInterfaceExclusionList: [net1]\n";
        let ann = [
            ("flomesh.io/outbound-port-exclusion-list", "8080,6379"),
            ("flomesh.io/inbound-port-exclusion-list", "9091"),
            ("flomesh.io/outbound-ip-range-exclusion-list", "3.3.3.0/24"),
            ("flomesh.io/outbound-ip-range-inclusion-list", "10.244.0.0/16"),
        ];
        assert_eq!(script(mesh, &ann, Family::V4), include_str!("../../tests/golden/all-lists.sh"));
        assert_eq!(script(mesh, &ann, Family::V6), include_str!("../../tests/golden/all-lists-v6.sh"));
    }

    #[test]
    fn long_port_lists_are_split_at_15_per_multiport_rule() {
        let ports: Vec<String> = (1..=33).map(|p| (9000 + p).to_string()).collect();
        let mesh = format!("spec:\n  traffic:\n    outboundPortExclusionList: [{}]\n", ports.join(", "));
        let got = script(&mesh, &[], Family::V4);
        let rules: Vec<&str> = got.lines().filter(|l| l.contains("multiport")).collect();
        assert_eq!(rules.len(), 3, "{got}");
        assert_eq!(rules[0], format!("-A fsm_PROXY_OUTBOUND -p tcp --match multiport --dports {} -j RETURN", ports[..15].join(",")));
        assert_eq!(rules[2], format!("-A fsm_PROXY_OUTBOUND -p tcp --match multiport --dports {} -j RETURN", ports[30..].join(",")));
    }
}
