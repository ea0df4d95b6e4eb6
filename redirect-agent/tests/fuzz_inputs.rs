//! Property tests over what users, clients and the node send the agent:
//! MeshConfig YAML/JSON, pod annotations, control requests, the primary
//! CNI's conflist it rewrites and its own state file (which another release
//! may have written). Whatever arrives, the parsers never panic; what they
//! refuse is named by field and value; what they accept is valid by the
//! same rules an independent oracle applies. CI runs each property's
//! default number of cases (256; 64 for those that write files), seeded
//! afresh. The plugin's side is `redirect-cni/tests/fuzz_inputs.rs`; the
//! /proc parsers' are unit properties beside them.

use std::collections::BTreeMap;

use proptest::prelude::*;
use redirect_agent::{
    cni::install::{Chained, CniInstall},
    config::{ConfigError, MeshConfig, annotations::PodAnnotations},
    control::Request,
    state::State,
};

// The plugin's generator of JSON of any shape.
#[path = "../../redirect-cni/tests/support/arbitrary_json.rs"]
mod arbitrary_json;
use arbitrary_json::json_value;

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

/// A plugin of a primary CNI's conflist: a type and settings of any shape.
fn plugin() -> impl Strategy<Value = serde_json::Value> {
    ("[a-z-]{1,12}", proptest::collection::btree_map("[a-zA-Z]{1,10}", json_value(), 0..4)).prop_map(|(kind, settings)| {
        let mut p: serde_json::Map<String, serde_json::Value> = settings.into_iter().collect();
        p.insert("type".into(), kind.into());
        serde_json::Value::Object(p)
    })
}

fn install(dir: &std::path::Path) -> CniInstall {
    CniInstall {
        conf_dir: dir.join("net.d"),
        bin_dir: dir.join("bin"),
        socket: "/run/fsm-redirect/agent.sock".into(),
        exclude_namespaces: vec!["kube-system".into()],
        fail_open: false,
        runtime_configs: vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    // Chaining puts the entry last, once, and leaves every plugin of the
    // primary CNI as it was, in order; again, it changes nothing;
    // uninstalling gives back the primary's plugins. Any version the plugin
    // does not speak is refused by name, and the file is left untouched.
    #[test]
    fn chaining_into_any_conflist_keeps_the_primarys_plugins_and_uninstall_gives_them_back(
        version in prop_oneof![Just("1.0.0".to_owned()), Just("0.4.0".to_owned()), Just("1.1.0".to_owned()), "[0-9.]{0,6}"],
        plugins in proptest::collection::vec(plugin(), 1..5),
        extra in proptest::collection::btree_map("[a-z]{1,8}", json_value(), 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        std::fs::create_dir_all(&install.conf_dir).unwrap();
        let mut conf: serde_json::Map<String, serde_json::Value> = extra.into_iter().collect();
        conf.insert("cniVersion".into(), version.clone().into());
        conf.insert("name".into(), "k8s-pod-network".into());
        conf.insert("plugins".into(), plugins.clone().into());
        let path = install.conf_dir.join("10-primary.conflist");
        let original = serde_json::to_vec(&conf).unwrap();
        std::fs::write(&path, &original).unwrap();
        let theirs: Vec<&serde_json::Value> = plugins.iter().filter(|p| p["type"] != "fsm-redirect-cni").collect();
        match install.ensure_chained() {
            Ok(chained) => {
                prop_assert!(redirect_cni::spec::SUPPORTED_VERSIONS.contains(&version.as_str()));
                prop_assert!(matches!(chained, Chained::Added(_) | Chained::Updated(_)), "{chained:?}");
                let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let list = written["plugins"].as_array().unwrap();
                prop_assert_eq!(list.last(), Some(&install.entry()));
                prop_assert_eq!(list[..list.len() - 1].iter().collect::<Vec<_>>(), theirs.clone());
                for (k, v) in &conf {
                    if k != "plugins" {
                        prop_assert_eq!(&written[k], v, "{}", k);
                    }
                }
                prop_assert_eq!(install.ensure_chained().unwrap(), Chained::Already);
                install.uninstall().unwrap();
                let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                prop_assert_eq!(back["plugins"].as_array().unwrap().iter().collect::<Vec<_>>(), theirs);
            }
            Err(e) => {
                prop_assert!(!redirect_cni::spec::SUPPORTED_VERSIONS.contains(&version.as_str()), "{e:#}");
                prop_assert!(format!("{e:#}").contains(&format!("{version:?}")), "{e:#}");
                prop_assert_eq!(std::fs::read(&path).unwrap(), original);
            }
        }
    }

    // Whatever is in the state file (another release's, a hand edit, a
    // torn disk), the agent gets a state: every pod entry is either read
    // or kept as it was to be written back, and nothing is lost.
    #[test]
    fn any_state_file_gives_a_state_and_every_pod_entry_is_read_or_kept(
        pods in proptest::collection::btree_map(1u32..4096, json_value(), 0..5),
        last_id in json_value(),
        cni in json_value(),
        garbage in proptest::option::of("\\PC{0,40}"),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let pods: serde_json::Map<String, serde_json::Value> = pods.into_iter().map(|(id, v)| (id.to_string(), v)).collect();
        let file = serde_json::json!({"pods": pods, "last_id": last_id, "cni": cni, "settings": {}});
        let text = garbage.clone().unwrap_or_else(|| file.to_string());
        std::fs::write(State::file(dir.path()), &text).unwrap();
        let state = State::load(dir.path()).expect("a state, whatever the file").expect("the file is there");
        if state.ids_unknown {
            prop_assert!(garbage.is_some() || serde_json::from_str::<State>(&text).is_err());
            prop_assert!(dir.path().join("state.json.unreadable").exists());
        } else {
            prop_assert_eq!(state.pods.len() + state.unreadable.len(), pods.len());
            let written = serde_json::to_value(&state).unwrap();
            for (id, u) in &state.unreadable {
                prop_assert_eq!(&written["pods"][id.to_string()], &u.entry);
            }
        }
    }
}
