//! What FSM's injector put into a pod, and whom that leaves the pod's
//! interception to: the agent, the pod's own fsm-init, or FSM.
//!
//! FSM's injector (every release) adds the Pipy container `sidecar`, and,
//! depending on `spec.traffic.interceptionMode`, the init container
//! `fsm-init`, whose iptables rules intercept the pod by themselves. The
//! agent must never run beside them: its programs and fsm-init's NAT
//! disagree on some connections (in `localProxyMode: PodIP`, the proxy's
//! connections to 127.0.0.1 would be rewritten twice), so a pod that has
//! fsm-init is left to it, and only recorded. A pod without `sidecar` has
//! nothing to receive its traffic (FSM's NodeLevel mode injects none):
//! enrolling it would cut it off.
//!
//! `fsm-init` may carry our guard (`deploy/fsm-init-guard/`, for FSM
//! releases that always inject it): then the agent intercepts the pod and
//! marks its network namespace, and the guarded fsm-init steps aside; where
//! the agent did not (not installed on the node, failed, down), the guard
//! finds no mark and fsm-init applies its rules as before.

use k8s_openapi::api::core::v1::Pod as ApiPod;

use crate::config::InterceptionMode;

/// FSM's name for the proxy container (`constants.SidecarContainerName`).
pub const SIDECAR: &str = "sidecar";
/// FSM's name for the iptables init container (`constants.InitContainerName`).
pub const FSM_INIT: &str = "fsm-init";

/// What the guard writes before fsm-init's script, with which it is
/// recognised. The admission policy in `deploy/fsm-init-guard/` puts
/// [`GUARD`] there; a test holds the two equal.
pub const GUARD_COMMENT: &str = "# fsm-redirect guard: fsm-init steps aside where the agent intercepts this pod";
/// The mark the agent leaves in a guarded pod's network namespace once it
/// intercepts it: the alias (`ifalias`) of its `lo`, which every container
/// of the pod reads at `/sys/class/net/lo/ifalias` (its sysfs is its
/// netns's) and no unprivileged process can set.
pub const GUARD_MARK: &str = "fsm-redirect";
/// The annotation the admission policy puts on a pod whose fsm-init it
/// guarded: the plugin's crate holds it, as the plugin reads it.
pub use redirect_cni::wire::GUARD_ANNOTATION;
/// The guard: POSIX sh, builtins only (`read`, `[`, `echo`), as fsm-init's
/// image (Alpine with iptables) has nothing else to rely on.
pub const GUARD: &str = concat!(
    "# fsm-redirect guard: fsm-init steps aside where the agent intercepts this pod\n",
    "if read -r mark 2>/dev/null </sys/class/net/lo/ifalias && [ \"$mark\" = fsm-redirect ]; then\n",
    "  echo 'fsm-init: fsm-redirect intercepts this pod; no iptables rules'; exit 0\n",
    "fi\n",
);

/// fsm-init in a pod's spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsmInit {
    Absent,
    /// As FSM injects it: its rules will intercept the pod.
    Present,
    /// With our guard: its rules intercept the pod only where the agent
    /// left no mark.
    Guarded,
}

/// What FSM's injector put into a pod's spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Injection {
    /// It has the `sidecar` container.
    pub sidecar: bool,
    pub fsm_init: FsmInit,
}

impl Injection {
    /// Read from the pod's spec (a pod without one has neither container).
    pub fn of_pod(pod: &ApiPod) -> Self {
        let spec = pod.spec.as_ref();
        let sidecar = spec.is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR));
        let fsm_init = match spec.and_then(|s| s.init_containers.as_ref()).and_then(|i| i.iter().find(|c| c.name == FSM_INIT)) {
            None => FsmInit::Absent,
            Some(c) if c.args.iter().flatten().chain(c.command.iter().flatten()).any(|a| a.contains(GUARD_COMMENT)) => FsmInit::Guarded,
            Some(_) => FsmInit::Present,
        };
        Injection { sidecar, fsm_init }
    }
}

/// Who intercepts a meshed pod's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// The agent, with the dataplane it chooses. `guarded`: the pod's
    /// fsm-init carries the guard, which needs the agent's mark.
    Agent { guarded: bool },
    /// The pod's own fsm-init: the agent records the pod, installs nothing.
    FsmInit,
    /// Neither: the agent leaves the pod alone, for the reason given.
    Nobody(String),
}

/// Whose the pod's interception is, under the MeshConfig's mode, from what
/// its spec holds (`None`: not known, as for a pod enrolled by hand without
/// its manifest; the agent then looks for fsm-init's rules in its netns).
pub fn serving(mode: Option<InterceptionMode>, injection: Option<&Injection>) -> Serving {
    if let Some(why) = mode.and_then(InterceptionMode::held_by_fsm) {
        return Serving::Nobody(why.into());
    }
    match injection {
        None => Serving::Agent { guarded: false },
        Some(i) if !i.sidecar => {
            Serving::Nobody(format!("its spec has no `{SIDECAR}` container to receive its traffic (FSM's proxy is not in the pod)"))
        }
        Some(Injection { fsm_init: FsmInit::Present, .. }) => Serving::FsmInit,
        Some(Injection { fsm_init: FsmInit::Guarded, .. }) => Serving::Agent { guarded: true },
        Some(Injection { fsm_init: FsmInit::Absent, .. }) => Serving::Agent { guarded: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &[&str], init: &[(&str, &str)]) -> ApiPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>(),
                "initContainers": init.iter().map(|(n, script)| serde_json::json!({"name": n, "command": ["/bin/sh"], "args": ["-c", script]})).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn reads_the_sidecar_and_fsm_init_with_or_without_the_guard() {
        let script = "iptables-restore --noflush <<EOF\n*nat\nCOMMIT\nEOF\n";
        let cases = [
            (pod(&["app", "sidecar"], &[("fsm-init", script)]), Injection { sidecar: true, fsm_init: FsmInit::Present }),
            (
                pod(&["app", "sidecar"], &[("fsm-init", &format!("{GUARD}{script}"))]),
                Injection { sidecar: true, fsm_init: FsmInit::Guarded },
            ),
            (pod(&["app", "sidecar"], &[("wait-db", "sleep 1")]), Injection { sidecar: true, fsm_init: FsmInit::Absent }),
            (pod(&["app"], &[]), Injection { sidecar: false, fsm_init: FsmInit::Absent }),
            (pod(&["sidecar-of-mine", "app"], &[]), Injection { sidecar: false, fsm_init: FsmInit::Absent }),
        ];
        for (pod, want) in cases {
            assert_eq!(Injection::of_pod(&pod), want);
        }
        let no_spec: ApiPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(Injection::of_pod(&no_spec), Injection { sidecar: false, fsm_init: FsmInit::Absent });
    }

    #[test]
    fn fsm_init_keeps_its_pods_fsms_own_modes_keep_theirs_and_no_sidecar_means_nobody() {
        let with = |fsm_init| Injection { sidecar: true, fsm_init };
        use InterceptionMode as M;
        for mode in [None, Some(M::Iptables), Some(M::PodLevel), Some(M::None)] {
            assert_eq!(serving(mode, Some(&with(FsmInit::Present))), Serving::FsmInit, "{mode:?}");
            assert_eq!(serving(mode, Some(&with(FsmInit::Guarded))), Serving::Agent { guarded: true }, "{mode:?}");
            assert_eq!(serving(mode, Some(&with(FsmInit::Absent))), Serving::Agent { guarded: false }, "{mode:?}");
            assert_eq!(serving(mode, None), Serving::Agent { guarded: false }, "{mode:?}: spec unknown");
            let no_sidecar = serving(mode, Some(&Injection { sidecar: false, fsm_init: FsmInit::Absent }));
            assert!(matches!(&no_sidecar, Serving::Nobody(why) if why.contains("no `sidecar` container")), "{no_sidecar:?}");
        }
        for mode in [M::Ebpf, M::NodeLevel] {
            for injection in [None, Some(with(FsmInit::Absent)), Some(with(FsmInit::Guarded))] {
                let s = serving(Some(mode), injection.as_ref());
                assert!(matches!(&s, Serving::Nobody(why) if why.contains(mode.name())), "{mode:?}: {s:?}");
            }
        }
    }

    /// The admission policy of `deploy/fsm-init-guard` writes this guard,
    /// recognises a guarded fsm-init by its comment, and annotates the pod
    /// as the plugin reads it.
    #[test]
    fn the_admission_policy_writes_this_guard_and_annotation() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fsm-init-guard/policy.yaml");
        let policy: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mutations = &policy["spec"]["mutations"];
        let patch = mutations[1]["jsonPatch"]["expression"].as_str().unwrap();
        let written = patch.split(r#"""""#).nth(1).expect("the guard in a triple-quoted CEL string");
        assert_eq!(written, GUARD);
        let condition = policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
        let recognised = condition.split("contains('").nth(1).and_then(|c| c.split('\'').next()).unwrap();
        assert!(GUARD_COMMENT.starts_with(recognised) && condition.contains("!c.args[1].contains("), "{condition}");
        let apply = mutations[0]["applyConfiguration"]["expression"].as_str().unwrap();
        assert!(apply.contains(&format!("\"{}\": \"{}\"", GUARD_ANNOTATION.0, GUARD_ANNOTATION.1)), "{apply}");
    }

    #[test]
    fn the_guard_is_posix_sh_that_steps_aside_only_on_the_mark() {
        assert!(GUARD.starts_with(GUARD_COMMENT), "the comment recognises the guard");
        assert!(GUARD.contains(&format!("= {GUARD_MARK} ]")), "the guard looks for the agent's mark");
        // Run by a real sh against a file standing in for lo's ifalias.
        let dir = tempfile::tempdir().unwrap();
        let alias = dir.path().join("ifalias");
        let guard = GUARD.replace("/sys/class/net/lo/ifalias", alias.to_str().unwrap());
        let run = |content: Option<&str>| {
            match content {
                Some(c) => std::fs::write(&alias, c).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&alias);
                }
            }
            let out = std::process::Command::new("sh").arg("-c").arg(format!("{guard}echo rules applied\n")).output().unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(out.stderr.is_empty(), "the guard writes nothing to stderr: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run(Some("fsm-redirect\n")), "fsm-init: fsm-redirect intercepts this pod; no iptables rules\n");
        for other in [None, Some(""), Some("\n"), Some("fsm-redirect-not\n"), Some("uplink\n")] {
            assert_eq!(run(other), "rules applied\n", "{other:?}");
        }
    }
}
