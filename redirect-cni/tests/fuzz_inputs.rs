//! Property tests of what reaches the plugin from the runtime: the network
//! configuration on stdin and the environment (`CNI_ARGS` above all, which
//! runtimes fill from pod metadata). Whatever arrives, nothing panics; a
//! refusal is a CNI error with the spec's code and a message naming what
//! was wrong; what is read is what was sent (an independent oracle).
//! Run in CI at proptest's default of 256 cases each, seeded afresh.

use std::collections::BTreeMap;

use proptest::prelude::*;
use redirect_cni::spec::{self, Command, Env, NetConf, SUPPORTED_VERSIONS, code};
use support::arbitrary_json::json_value;

mod support {
    pub(crate) mod arbitrary_json;
}

/// The environment of an ADD with `args` as `CNI_ARGS`.
fn env_with_args(args: &str) -> Result<Env, spec::CniError> {
    let vars: BTreeMap<&str, String> = [
        ("CNI_COMMAND", "ADD".to_owned()),
        ("CNI_CONTAINERID", "c0ffee".to_owned()),
        ("CNI_NETNS", "/var/run/netns/x".to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_ARGS", args.to_owned()),
    ]
    .into();
    Env::from_vars(|k| vars.get(k).cloned())
}

/// A value a runtime may put in `CNI_ARGS` (no separator in it).
fn arg_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._/:@+-]{0,40}"
}

proptest! {
    #[test]
    fn any_bytes_on_stdin_are_read_or_refused_with_the_specs_code(stdin in prop::collection::vec(any::<u8>(), 0..300)) {
        match NetConf::parse(&stdin) {
            Ok(conf) => prop_assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str())),
            Err(e) => {
                prop_assert!([code::DECODE_FAILURE, code::INCOMPATIBLE_VERSION].contains(&e.code), "{e:?}");
                prop_assert!(!e.msg.is_empty());
            }
        }
        // VERSION answers whatever it is given.
        let info: serde_json::Value = serde_json::from_str(&spec::version_info(&stdin)).unwrap();
        prop_assert!(info["supportedVersions"].as_array().is_some_and(|v| v.len() == SUPPORTED_VERSIONS.len()));
    }

    #[test]
    fn any_configuration_object_is_read_or_refused_by_its_version(version in "[0-9.]{0,6}", extra in json_value(), prev in json_value()) {
        let conf = serde_json::json!({"cniVersion": version, "name": "k8s-pod-network", "type": "fsm-redirect-cni",
                                      "extra": extra, "prevResult": prev});
        match NetConf::parse(conf.to_string().as_bytes()) {
            Ok(_) => prop_assert!(SUPPORTED_VERSIONS.contains(&version.as_str())),
            // A prevResult of another shape than an object may be refused
            // as undecodable; a version it doesn't speak, by name.
            Err(e) => prop_assert!(
                e.code == code::DECODE_FAILURE || (e.code == code::INCOMPATIBLE_VERSION && e.msg.contains(&format!("{version:?}"))),
                "{e:?}"
            ),
        }
    }

    #[test]
    fn add_passes_any_previous_result_on_unchanged_but_for_its_version(
        version in prop::sample::select(SUPPORTED_VERSIONS.to_vec()),
        prev in prop::collection::btree_map("[a-zA-Z]{1,10}", json_value(), 0..6),
    ) {
        let prev = serde_json::Value::Object(prev.into_iter().collect());
        let conf = serde_json::json!({"cniVersion": version, "name": "n", "type": "fsm-redirect-cni", "prevResult": prev});
        let conf = NetConf::parse(conf.to_string().as_bytes()).unwrap();
        let out: serde_json::Value = serde_json::from_str(&spec::pass_through(&conf).unwrap()).unwrap();
        let mut expected = prev.clone();
        expected["cniVersion"] = version.into();
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn any_cni_args_are_read_or_refused_naming_the_pair(args in "\\PC{0,120}") {
        match env_with_args(&args) {
            Ok(env) => {
                prop_assert_eq!(env.command, Command::Add);
                for (k, v) in &env.args {
                    prop_assert!(args.contains(&format!("{k}={v}")), "{k}={v} not in {args:?}");
                }
            }
            Err(e) => {
                prop_assert_eq!(e.code, code::INVALID_ENV);
                prop_assert!(e.msg.starts_with("CNI_ARGS: "), "{}", e.msg);
            }
        }
    }

    #[test]
    fn the_pod_a_runtime_names_in_cni_args_is_the_pod_read(
        namespace in arg_value(),
        name in arg_value(),
        uid in arg_value(),
        others in prop::collection::vec(("[A-Z_]{1,12}", arg_value()), 0..4),
    ) {
        let mut pairs: Vec<String> = others.iter().filter(|(k, _)| !k.starts_with("K8S_POD_")).map(|(k, v)| format!("{k}={v}")).collect();
        pairs.extend([format!("K8S_POD_NAMESPACE={namespace}"), format!("K8S_POD_NAME={name}"), format!("K8S_POD_UID={uid}")]);
        pairs.insert(0, "IgnoreUnknown=1".into());
        let env = env_with_args(&pairs.join(";")).unwrap();
        let pod = env.kubernetes_pod();
        if [&namespace, &name, &uid].iter().any(|v| v.is_empty()) {
            prop_assert!(pod.is_none(), "{pod:?}");
        } else {
            let pod = pod.unwrap();
            prop_assert_eq!((pod.namespace, pod.name, pod.uid), (namespace, name, uid));
        }
    }
}
