//! fsm-init's `iptables-restore --noflush` script, as FSM's own generator
//! writes it (`pkg/injector/iptables.go`, `GenerateIptablesCommands`): its
//! chain names (`FSM_PROXY_*`, every release since v1.0), static rules and
//! order, byte for byte (golden files from FSM's generator at v1.0.0,
//! v1.4.16 and v1.5.1 hold it so). The form of FSM's troubleshooting page
//! (`fsm_PROXY_*`, which no release emits) stays available. Two fixes over
//! the original: `multiport` takes at most 15 ports, so longer lists are
//! split over several rules (FSM writes one rule, which iptables refuses);
//! and an `ip6tables` variant exists for IPv6 pods (each family gets only
//! its own CIDRs).
//!
//! The local DNS proxy's rule (`spec.sidecar.localDNSProxy.enable`) is
//! written wherever the MeshConfig turns the proxy on, in FSM's place: FSM
//! v1.0 to v1.4.16 write it, later releases dropped it along with sending
//! pods' DNS to 127.0.0.153, where it is harmless.

use std::{fmt::Write as _, net::IpAddr};

use redirect_common::defaults::{DNS_PORT, LOCAL_DNS_PROXY_IP, LOCAL_DNS_PROXY_PORT};

use redirect_config::{LocalProxyMode, PodPolicy, Port, Sourced, settings::ProxySettings};

/// Whose chain names the rules use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// FSM's generator, every release since v1.0: `FSM_PROXY_*`.
    #[default]
    Fsm,
    /// The example of FSM's troubleshooting page: `fsm_PROXY_*`.
    Seed,
}

/// The four chains of one form, in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chains {
    pub inbound: &'static str,
    pub in_redirect: &'static str,
    pub outbound: &'static str,
    pub out_redirect: &'static str,
}

impl Chains {
    pub const fn all(self) -> [&'static str; 4] {
        [self.inbound, self.in_redirect, self.outbound, self.out_redirect]
    }
}

impl Form {
    pub const ALL: [Form; 2] = [Form::Fsm, Form::Seed];

    pub const fn chains(self) -> Chains {
        match self {
            Form::Fsm => Chains {
                inbound: "FSM_PROXY_INBOUND",
                in_redirect: "FSM_PROXY_IN_REDIRECT",
                outbound: "FSM_PROXY_OUTBOUND",
                out_redirect: "FSM_PROXY_OUT_REDIRECT",
            },
            Form::Seed => Chains {
                inbound: "fsm_PROXY_INBOUND",
                in_redirect: "fsm_PROXY_IN_REDIRECT",
                outbound: "fsm_PROXY_OUTBOUND",
                out_redirect: "fsm_PROXY_OUT_REDIRECT",
            },
        }
    }
}

/// The chains of every form: what the agent's own rules may have been
/// written with (an agent of another release), and takes away.
pub fn every_chain() -> impl Iterator<Item = &'static str> {
    Form::ALL.into_iter().flat_map(|f| f.chains().all())
}

/// FSM's DNS rule (`iptablesDNSOutboundStaticRules`), for `localDNSProxy`.
pub fn dns_rule() -> String {
    let ip = std::net::Ipv4Addr::from(LOCAL_DNS_PROXY_IP);
    format!("-A OUTPUT -p udp -d {ip} --dport {DNS_PORT} -j DNAT --to-destination {ip}:{LOCAL_DNS_PROXY_PORT}")
}

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

/// `multiport` accepts at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

fn multiport(out: &mut String, op: &str, chain: &str, ports: &[Sourced<Port>]) {
    let ports: Vec<String> = ports.iter().map(|p| p.value.to_string()).collect();
    for chunk in ports.chunks(MULTIPORT_MAX) {
        let _ = writeln!(out, "{op} {chain} -p tcp --match multiport --dports {} -j RETURN", chunk.join(","));
    }
}

/// The input of `iptables-restore --noflush` (or `ip6tables-restore`).
pub fn restore_input(policy: &PodPolicy, s: &ProxySettings, family: Family, pod_ip: PodIp, form: Form) -> String {
    let Chains { inbound, in_redirect, outbound, out_redirect } = form.chains();
    let lo = family.loopback();
    let uid = s.proxy_uid;
    let mut o = String::new();
    o.push_str("# FSM sidecar interception rules\n*nat\n");
    for chain in form.chains().all() {
        let _ = writeln!(o, ":{chain} - [0:0]");
    }
    // 1. Static inbound rules.
    let _ = writeln!(o, "-A {in_redirect} -p tcp -j REDIRECT --to-port {}", s.inbound_port);
    let _ = writeln!(o, "-A PREROUTING -p tcp -j {inbound}");
    for port in redirect_common::defaults::PROXY_ADMIN_PORTS {
        let _ = writeln!(o, "-A {inbound} -p tcp --dport {port} -j RETURN");
    }
    let _ = writeln!(o, "-A {inbound} -p tcp -j {in_redirect}");
    // 2. Excluded interfaces, inbound.
    for iface in &policy.network_interface_exclusions {
        let _ = writeln!(o, "-I {inbound} -i {} -j RETURN", iface.value);
    }
    // 3. Excluded inbound ports.
    multiport(&mut o, "-I", inbound, &policy.inbound_port_exclusions);
    // 4. Static outbound rules.
    let _ = writeln!(o, "-A {out_redirect} -p tcp -j REDIRECT --to-port {}", s.outbound_port);
    // FSM's dead rule (after an unconditional REDIRECT), kept for fidelity.
    let _ = writeln!(o, "-A {out_redirect} -p tcp --dport 15000 -j ACCEPT");
    let _ = writeln!(o, "-A OUTPUT -p tcp -j {outbound}");
    let _ = writeln!(o, "-A {outbound} -o lo ! -d {lo} -m owner --uid-owner {uid} -j {in_redirect}");
    let _ = writeln!(o, "-A {outbound} -o lo -m owner ! --uid-owner {uid} -j RETURN");
    let _ = writeln!(o, "-A {outbound} -m owner --uid-owner {uid} -j RETURN");
    let _ = writeln!(o, "-A {outbound} -d {lo} -j RETURN");
    // IPv6 link-local destinations stay direct: a proxy could not dial
    // them back (conntrack's answer has no interface). Ours, not FSM's:
    // FSM has no IPv6 rules.
    if family == Family::V6 {
        let _ = writeln!(o, "-A {outbound} -d fe80::/10 -j RETURN");
    }
    // 5. The local DNS proxy (IPv4 only, as its address).
    if policy.local_dns_proxy && family == Family::V4 {
        let _ = writeln!(o, "{}", dns_rule());
    }
    // 6. PodIP mode: the proxy's connections to loopback go to the pod IP.
    if policy.local_proxy_mode == LocalProxyMode::PodIP {
        let ip = match pod_ip {
            PodIp::ShellVariable if family == Family::V6 => "$POD_IPV6".to_owned(),
            PodIp::ShellVariable => "$POD_IP".to_owned(),
            PodIp::Addr(a) => a.to_string(),
        };
        let _ = writeln!(o, "-I OUTPUT -p tcp -o lo -d {lo} -m owner --uid-owner {uid} -j DNAT --to-destination {ip}");
    }
    // 7. Excluded interfaces, outbound.
    for iface in &policy.network_interface_exclusions {
        let _ = writeln!(o, "-A {outbound} -o {} -j RETURN", iface.value);
    }
    // 8. Excluded CIDRs.
    for cidr in policy.outbound_ip_range_exclusions.iter().filter(|c| family.holds(&c.value.net.addr())) {
        let _ = writeln!(o, "-A {outbound} -d {} -j RETURN", cidr.value);
    }
    // 9. Excluded outbound ports.
    multiport(&mut o, "-A", outbound, &policy.outbound_port_exclusions);
    // 10. Inclusion list, or everything else.
    // A non-empty inclusion list limits both families, even where it has
    // no CIDR of this family (then nothing of this family is redirected).
    if policy.outbound_ip_range_inclusions.is_empty() {
        let _ = writeln!(o, "-A {outbound} -j {out_redirect}");
    } else {
        for cidr in policy.outbound_ip_range_inclusions.iter().filter(|c| family.holds(&c.value.net.addr())) {
            let _ = writeln!(o, "-A {outbound} -d {} -j {out_redirect}", cidr.value);
        }
        let _ = writeln!(o, "-A {outbound} -j RETURN");
    }
    o.push_str("COMMIT\n");
    o
}

/// The shell script fsm-init runs: the restore input in a here-document.
/// Unquoted, as fsm-init's, so that the shell expands `$POD_IP`; nothing
/// else in it can be expanded, because every value is validated to have
/// no shell syntax (`InterfaceName`, `Cidr`, `Port`).
pub fn fsm_init_script(policy: &PodPolicy, s: &ProxySettings, family: Family, pod_ip: PodIp, form: Form) -> String {
    format!("{}-restore --noflush <<EOF\n{}EOF\n", family.iptables(), restore_input(policy, s, family, pod_ip, form))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use redirect_config::{MeshConfig, annotations::PodAnnotations};

    fn policy(mesh: &str, annotations: &BTreeMap<String, String>) -> PodPolicy {
        PodPolicy::merge(&MeshConfig::parse(mesh).unwrap(), &PodAnnotations::from_map(annotations).unwrap())
    }

    fn script(mesh: &str, annotations: &[(&str, &str)], family: Family, form: Form) -> String {
        let map = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        fsm_init_script(&policy(mesh, &map), &ProxySettings::default(), family, PodIp::ShellVariable, form)
    }

    #[test]
    fn the_seed_example_byte_for_byte() {
        let want = include_str!("../tests/golden/seed-net1-net2.sh");
        let got = script("spec:\n  traffic:\n    networkInterfaceExclusionList: [net1, net2]\n", &[], Family::V4, Form::Seed);
        assert_eq!(got, want);
    }

    /// A case of `tests/golden/fsm/cases.json`: the inputs FSM's generator
    /// was given, as a MeshConfig and annotations.
    fn case(c: &serde_json::Value, dns: bool) -> (String, BTreeMap<String, String>) {
        let mut mesh = format!(
            "spec:\n  sidecar:\n    localProxyMode: {}\n    localDNSProxy: {{enable: {dns}}}\n  traffic:\n",
            if c["podIP"] == true { "PodIP" } else { "Localhost" }
        );
        for list in [
            "networkInterfaceExclusionList",
            "outboundIPRangeExclusionList",
            "outboundIPRangeInclusionList",
            "outboundPortExclusionList",
            "inboundPortExclusionList",
        ] {
            if let Some(items) = c[list].as_array() {
                mesh.push_str(&format!("    {list}: {}\n", serde_json::to_string(items).unwrap()));
            }
        }
        let annotations = serde_json::from_value(c["annotations"].clone()).unwrap_or_default();
        (mesh, annotations)
    }

    #[test]
    fn every_fsm_release_byte_for_byte_from_fsms_own_generator() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fsm");
        let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
        assert!(cases.len() >= 4);
        for c in &cases {
            let name = c["name"].as_str().unwrap();
            let dns = c["localDNSProxy"] == true;
            let golden = |version: &str| std::fs::read_to_string(dir.join(version).join(format!("{name}.sh"))).unwrap();
            let ours = |dns: bool| {
                let (mesh, annotations) = case(c, dns);
                fsm_init_script(&policy(&mesh, &annotations), &ProxySettings::default(), Family::V4, PodIp::ShellVariable, Form::Fsm)
            };
            // v1.0.0 to v1.4.16 write the DNS rule when the proxy is on.
            for version in ["v1.0.0", "v1.4.16"] {
                assert_eq!(ours(dns), golden(version), "{version} {name}");
            }
            // v1.4.17 and later never do; ours does where it is on (FSM's
            // place, harmless there), and is FSM's text where it is off.
            assert_eq!(ours(false), golden("v1.5.1"), "v1.5.1 {name}");
            assert_eq!(ours(true).replace(&format!("{}\n", dns_rule()), ""), golden("v1.5.1"), "v1.5.1 {name}, DNS proxy on");
        }
    }

    #[test]
    fn the_ip6tables_variant_with_every_list() {
        let mesh = "spec:\n  sidecar:\n    localProxyMode: PodIP\n    localDNSProxy: {enable: true}\n  traffic:\n    outboundIPRangeExclusionList: [1.1.1.1/32, 2.2.2.2/24, fd00::/8]\n    outboundIPRangeInclusionList: [10.96.0.0/12, fd00:96::/32]\n    outboundPortExclusionList: [6379, 7070]\n    inboundPortExclusionList: [9090]\n    networkInterfaceExclusionList: [net1]\n";
        let ann = [
            ("flomesh.io/outbound-port-exclusion-list", "8080,6379"),
            ("flomesh.io/inbound-port-exclusion-list", "9091"),
            ("flomesh.io/outbound-ip-range-exclusion-list", "3.3.3.0/24,fd01::/16"),
            ("flomesh.io/outbound-ip-range-inclusion-list", "10.244.0.0/16"),
        ];
        assert_eq!(script(mesh, &ann, Family::V6, Form::Fsm), include_str!("../tests/golden/all-lists-v6.sh"));
    }

    #[test]
    fn long_port_lists_are_split_at_15_per_multiport_rule() {
        let ports: Vec<String> = (1..=33).map(|p| (9000 + p).to_string()).collect();
        let mesh = format!("spec:\n  traffic:\n    outboundPortExclusionList: [{}]\n", ports.join(", "));
        let got = script(&mesh, &[], Family::V4, Form::Fsm);
        let rules: Vec<&str> = got.lines().filter(|l| l.contains("multiport")).collect();
        assert_eq!(rules.len(), 3, "{got}");
        assert_eq!(rules[0], format!("-A FSM_PROXY_OUTBOUND -p tcp --match multiport --dports {} -j RETURN", ports[..15].join(",")));
        assert_eq!(rules[2], format!("-A FSM_PROXY_OUTBOUND -p tcp --match multiport --dports {} -j RETURN", ports[30..].join(",")));
    }
}
