//! The four `flomesh.io/...` pod annotations that add to the global lists.

use std::collections::BTreeMap;

use super::{Cidr, ConfigError, Port};

pub const OUTBOUND_PORT_EXCLUSION: &str = "flomesh.io/outbound-port-exclusion-list";
pub const INBOUND_PORT_EXCLUSION: &str = "flomesh.io/inbound-port-exclusion-list";
pub const OUTBOUND_IP_RANGE_EXCLUSION: &str = "flomesh.io/outbound-ip-range-exclusion-list";
pub const OUTBOUND_IP_RANGE_INCLUSION: &str = "flomesh.io/outbound-ip-range-inclusion-list";

/// A pod's interception annotations, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodAnnotations {
    pub outbound_port_exclusions: Vec<Port>,
    pub inbound_port_exclusions: Vec<Port>,
    pub outbound_ip_range_exclusions: Vec<Cidr>,
    pub outbound_ip_range_inclusions: Vec<Cidr>,
}

/// Comma-separated values, spaces around them ignored, empty items skipped
/// (`"8080, 9090,"`), as FSM splits them.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl PodAnnotations {
    /// Reads the four annotations out of all of a pod's annotations; the
    /// others are ignored. One bad item refuses the whole pod, as FSM's
    /// injector refuses to inject it.
    pub fn from_map(annotations: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| annotations.get(key).map(String::as_str).unwrap_or("");
        let ports = |key: &str| items(get(key)).map(|s| Port::parse(key, s)).collect::<Result<Vec<_>, _>>();
        let cidrs = |key: &str| items(get(key)).map(|s| Cidr::parse(key, s)).collect::<Result<Vec<_>, _>>();
        Ok(PodAnnotations {
            outbound_port_exclusions: ports(OUTBOUND_PORT_EXCLUSION)?,
            inbound_port_exclusions: ports(INBOUND_PORT_EXCLUSION)?,
            outbound_ip_range_exclusions: cidrs(OUTBOUND_IP_RANGE_EXCLUSION)?,
            outbound_ip_range_inclusions: cidrs(OUTBOUND_IP_RANGE_INCLUSION)?,
        })
    }

    /// Refuses annotations whose lists hold more than `max` entries each:
    /// the node's policy maps are shared by every pod (64 Ki CIDRs, 64 Ki
    /// ports), and one pod's annotations must not fill them for the others.
    /// Names the annotation, its count and the limit.
    pub fn within(&self, max: u32) -> Result<(), ConfigError> {
        let counts = [
            (OUTBOUND_PORT_EXCLUSION, self.outbound_port_exclusions.len()),
            (INBOUND_PORT_EXCLUSION, self.inbound_port_exclusions.len()),
            (OUTBOUND_IP_RANGE_EXCLUSION, self.outbound_ip_range_exclusions.len()),
            (OUTBOUND_IP_RANGE_INCLUSION, self.outbound_ip_range_inclusions.len()),
        ];
        match counts.into_iter().find(|(_, n)| *n > max as usize) {
            Some((key, n)) => Err(ConfigError::invalid(
                key,
                format!("{n} entries"),
                format!("is more than this node's limit of {max} per annotation (redirect-agent run --max-annotation-entries)"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_comma_separated_lists_with_spaces() {
        let a = PodAnnotations::from_map(&map(&[
            (OUTBOUND_PORT_EXCLUSION, "8080,9090"),
            (INBOUND_PORT_EXCLUSION, " 7000 "),
            (OUTBOUND_IP_RANGE_EXCLUSION, "10.0.0.0/8, 1.1.1.1/32"),
            (OUTBOUND_IP_RANGE_INCLUSION, ""),
            ("unrelated", "x"),
        ]))
        .unwrap();
        assert_eq!(a.outbound_port_exclusions.iter().map(|p| p.get()).collect::<Vec<_>>(), [8080, 9090]);
        assert_eq!(a.inbound_port_exclusions[0].get(), 7000);
        assert_eq!(a.outbound_ip_range_exclusions.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), ["10.0.0.0/8", "1.1.1.1/32"]);
        assert!(a.outbound_ip_range_inclusions.is_empty());
    }

    #[test]
    fn one_bad_item_refuses_the_pod_and_names_annotation_and_value() {
        let err = PodAnnotations::from_map(&map(&[(OUTBOUND_PORT_EXCLUSION, "8080,0")])).unwrap_err();
        assert_eq!(err.to_string(), format!("{OUTBOUND_PORT_EXCLUSION}: \"0\" is not a port number (1-65535)"));
        let err = PodAnnotations::from_map(&map(&[(OUTBOUND_IP_RANGE_INCLUSION, "10.0.0.0/8,banana")])).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{OUTBOUND_IP_RANGE_INCLUSION}: \"banana\"")), "{err}");
    }

    #[test]
    fn a_list_longer_than_the_nodes_limit_is_refused_by_name_and_count() {
        let ports: Vec<String> = (1..=300).map(|p| p.to_string()).collect();
        let a = PodAnnotations::from_map(&map(&[(INBOUND_PORT_EXCLUSION, &ports.join(","))])).unwrap();
        let err = a.within(256).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{INBOUND_PORT_EXCLUSION}: \"300 entries\" is more than this node's limit of 256")), "{err}");
        assert!(a.within(300).is_ok());
    }
}
