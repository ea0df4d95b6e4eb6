//! The effective lists of one pod: the MeshConfig's global lists merged with
//! the pod's annotations and de-duplicated as FSM's injector does
//! (`pkg/injector/exclusions.go`: ports global first, then the pod's; CIDRs
//! the pod's first, then global; each value once, first occurrence kept),
//! every entry labelled with where it came from. The order is what
//! fsm-init's script lists, byte for byte; verdicts do not depend on it.

use super::{Cidr, InterfaceName, LocalProxyMode, MeshConfig, Port, annotations::PodAnnotations};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// `fsm-mesh-config`'s `spec.traffic`.
    MeshConfig,
    /// One of the pod's `flomesh.io/...` annotations.
    Annotation,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodPolicy {
    pub outbound_ip_range_exclusions: Vec<Sourced<Cidr>>,
    pub outbound_ip_range_inclusions: Vec<Sourced<Cidr>>,
    pub outbound_port_exclusions: Vec<Sourced<Port>>,
    pub inbound_port_exclusions: Vec<Sourced<Port>>,
    pub network_interface_exclusions: Vec<Sourced<InterfaceName>>,
    pub local_proxy_mode: LocalProxyMode,
    /// The MeshConfig's `localDNSProxy.enable`.
    pub local_dns_proxy: bool,
}

/// FSM's `MergePortExclusionLists` (global first, then the pod's) and
/// `MergeIPRangeLists` (`pod_first`): a value that is already there is
/// dropped. CIDRs compare by their text, as FSM's string set does.
fn merge<T: Clone, K: Eq + std::hash::Hash>(global: &[T], pod: &[T], pod_first: bool, key: impl Fn(&T) -> K) -> Vec<Sourced<T>> {
    let mut seen = std::collections::HashSet::new();
    let global = global.iter().map(|v| (v, Source::MeshConfig));
    let pod = pod.iter().map(|v| (v, Source::Annotation));
    let tagged: Box<dyn Iterator<Item = _>> = if pod_first { Box::new(pod.chain(global)) } else { Box::new(global.chain(pod)) };
    // Linear in the list length: MeshConfigs carry 10,000-entry lists.
    tagged.filter(|(value, _)| seen.insert(key(value))).map(|(value, source)| Sourced { value: value.clone(), source }).collect()
}

impl PodPolicy {
    pub fn merge(mesh: &MeshConfig, pod: &PodAnnotations) -> Self {
        let by_text = |c: &Cidr| c.text.clone();
        PodPolicy {
            outbound_ip_range_exclusions: merge(&mesh.outbound_ip_range_exclusions, &pod.outbound_ip_range_exclusions, true, by_text),
            outbound_ip_range_inclusions: merge(&mesh.outbound_ip_range_inclusions, &pod.outbound_ip_range_inclusions, true, by_text),
            outbound_port_exclusions: merge(&mesh.outbound_port_exclusions, &pod.outbound_port_exclusions, false, |p| *p),
            inbound_port_exclusions: merge(&mesh.inbound_port_exclusions, &pod.inbound_port_exclusions, false, |p| *p),
            network_interface_exclusions: merge(&mesh.network_interface_exclusions, &[], false, Clone::clone),
            local_proxy_mode: mesh.local_proxy_mode,
            local_dns_proxy: mesh.local_dns_proxy,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::annotations::*;

    #[test]
    fn merges_as_fsms_injector_without_duplicates() {
        let mesh = MeshConfig::parse(
            "spec:\n  traffic:\n    outboundPortExclusionList: [6379, 7070]\n    outboundIPRangeExclusionList: [1.1.1.1/32, 2.2.2.2/24]\n",
        )
        .unwrap();
        let ann: BTreeMap<String, String> = [
            (OUTBOUND_PORT_EXCLUSION.to_string(), "8080,6379,8080".to_string()),
            (OUTBOUND_IP_RANGE_EXCLUSION.to_string(), "2.2.2.2/24,3.3.3.0/24".to_string()),
        ]
        .into();
        let p = PodPolicy::merge(&mesh, &PodAnnotations::from_map(&ann).unwrap());
        let ports: Vec<_> = p.outbound_port_exclusions.iter().map(|s| (s.value.get(), s.source)).collect();
        assert_eq!(ports, [(6379, Source::MeshConfig), (7070, Source::MeshConfig), (8080, Source::Annotation)]);
        let cidrs: Vec<_> = p.outbound_ip_range_exclusions.iter().map(|s| (s.value.text.as_str(), s.source)).collect();
        // MergeIPRangeLists: the pod's first.
        assert_eq!(cidrs, [("2.2.2.2/24", Source::Annotation), ("3.3.3.0/24", Source::Annotation), ("1.1.1.1/32", Source::MeshConfig)]);
    }
}
