//! Property tests over what users and clients send the agent: MeshConfig
//! YAML/JSON, pod annotations and control requests. Whatever arrives, the
//! parsers never panic; what they refuse is named by field and value; what
//! they accept is valid by the same rules an independent oracle applies.
//! CI runs each property's default number of cases (256), seeded afresh.

use std::collections::BTreeMap;

use proptest::prelude::*;
use redirect_agent::{
    config::{ConfigError, MeshConfig, annotations::PodAnnotations},
    control::Request,
};

/// The lists of `spec.traffic` and what each holds.
const LISTS: [(&str, Kind); 5] = [
    ("outboundIPRangeExclusionList", Kind::Cidr),
    ("outboundIPRangeInclusionList", Kind::Cidr),
    ("outboundPortExclusionList", Kind::Port),
    ("inboundPortExclusionList", Kind::Port),
    ("networkInterfaceExclusionList", Kind::Iface),
];

/// The annotations and what each holds.
const ANNOTATIONS: [(&str, Kind); 4] = [
    ("flomesh.io/outbound-port-exclusion-list", Kind::Port),
    ("flomesh.io/inbound-port-exclusion-list", Kind::Port),
    ("flomesh.io/outbound-ip-range-exclusion-list", Kind::Cidr),
    ("flomesh.io/outbound-ip-range-inclusion-list", Kind::Cidr),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Port,
    Cidr,
    Iface,
}

impl Kind {
    /// The oracle: whether `text` is a valid value of this kind, by the
    /// documented rules (docs/configuration.md), written apart from the
    /// parsers under test.
    fn valid(self, text: &str) -> bool {
        let t = text.trim();
        match self {
            Kind::Port => t.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)),
            Kind::Cidr => t.contains('/') && t.parse::<ipnet::IpNet>().is_ok(),
            Kind::Iface => {
                let name = text.strip_suffix('+').unwrap_or(text);
                text.len() <= 15
                    && !name.is_empty()
                    && name != "."
                    && name != ".."
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            }
        }
    }
}

/// Values that are often almost right: valid ones, near misses, shell and
/// YAML syntax, and plain noise.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..70000).prop_map(|p| p.to_string()),
        (any::<[u8; 4]>(), 0u8..40).prop_map(|(a, l)| format!("{}.{}.{}.{}/{l}", a[0], a[1], a[2], a[3])),
        (any::<[u16; 8]>(), 0u8..140).prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv6Addr::from(a))),
        any::<[u8; 4]>().prop_map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
        "[a-z]{1,6}[0-9]{0,3}\\+?",
        Just("$(reboot)".to_owned()),
        Just("eth0;rm -rf /".to_owned()),
        Just("`id`".to_owned()),
        "[ -~]{0,20}",
        "\\PC{0,12}",
    ]
}

/// `text` as a YAML double-quoted scalar.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

proptest! {
    // Failures are printed with their minimal input, not saved into the
    // source tree.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_meshconfig_is_parsed_or_refused_by_name(text in "\\PC{0,200}") {
        if let Err(e) = MeshConfig::parse(&text) {
            let ConfigError::Invalid { field, .. } = &e else { panic!("{e}") };
            prop_assert!(!field.is_empty());
            // A document that is no MeshConfig is named by its size, never by its text.
            if field == "MeshConfig" {
                prop_assert!(e.to_string().contains("a document of"), "{}", e);
            }
        }
    }

    #[test]
    fn meshconfig_lists_hold_only_valid_values_and_a_refusal_names_the_entry(
        entries in proptest::collection::vec((0usize..LISTS.len(), value()), 0..8)
    ) {
        let mut lists: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (i, v) in &entries {
            lists.entry(LISTS[*i].0).or_default().push(v.clone());
        }
        let mut yaml = String::from("kind: MeshConfig\nspec:\n  traffic:\n");
        for (name, values) in &lists {
            let items: Vec<String> = values.iter().map(|v| quoted(v)).collect();
            yaml.push_str(&format!("    {name}: [{}]\n", items.join(", ")));
        }
        // Every bad entry, as the refusal would name it.
        let bad: Vec<(String, String)> = LISTS
            .iter()
            .flat_map(|(name, kind)| {
                let values = lists.get(name).cloned().unwrap_or_default();
                values
                    .into_iter()
                    .enumerate()
                    .filter(move |(_, v)| !kind.valid(v))
                    .map(move |(i, v)| (format!("spec.traffic.{name}[{i}]"), v.trim().to_owned()))
            })
            .collect();
        match MeshConfig::parse(&yaml) {
            Ok(_) => prop_assert!(bad.is_empty(), "accepted {:?}", bad),
            Err(ConfigError::Invalid { field, value, .. }) => {
                let named = (field.clone(), value.trim().to_owned());
                prop_assert!(bad.contains(&named), "refused {} {:?}; bad: {:?}\n{}", field, value, bad, yaml);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    #[test]
    fn annotations_hold_only_valid_values_and_a_refusal_names_the_annotation_and_value(
        entries in proptest::collection::vec((0usize..ANNOTATIONS.len(), proptest::collection::vec(value(), 1..4)), 0..4)
    ) {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (i, items) in &entries {
            // Commas inside a value would split it: not this property's business.
            let items: Vec<String> = items.iter().map(|v| v.replace(',', "")).collect();
            map.insert(ANNOTATIONS[*i].0.to_owned(), items.join(","));
        }
        let bad = ANNOTATIONS.iter().any(|(key, kind)| {
            map.get(*key).is_some_and(|v| v.split(',').any(|item| !item.trim().is_empty() && !kind.valid(item)))
        });
        match PodAnnotations::from_map(&map) {
            Ok(_) => prop_assert!(!bad, "accepted {:?}", map),
            Err(ConfigError::Invalid { field, value, .. }) => {
                prop_assert!(bad, "refused valid annotations {:?}", map);
                let (_, kind) = ANNOTATIONS.iter().find(|(k, _)| *k == field).expect("names an annotation");
                prop_assert!(map[&field].contains(value.trim()), "{} {}", field, value);
                prop_assert!(!kind.valid(&value), "{} {}", field, value);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    #[test]
    fn any_control_request_line_is_read_or_refused_without_panicking(line in "\\PC{0,300}") {
        if let Ok(Request::Enroll { pod }) = serde_json::from_str::<Request>(&line) {
            let _ = pod.validate();
        }
    }

    #[test]
    fn enroll_requests_with_any_annotations_are_validated_without_panicking(
        name in "[ -~]{0,20}",
        annotations in proptest::collection::btree_map("[a-z./-]{0,40}", "\\PC{0,40}", 0..6)
    ) {
        let json = serde_json::json!({
            "request": "enroll",
            "pod": { "name": name, "netns": "/var/run/netns/x", "annotations": annotations },
        });
        let request: Request = serde_json::from_value(json).expect("a well-formed request");
        let Request::Enroll { pod } = request else { panic!() };
        if let Err(ConfigError::Invalid { field, .. }) = pod.validate() {
            prop_assert!(!field.is_empty());
        }
    }
}
