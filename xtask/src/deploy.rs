//! The Kubernetes manifests in deploy/, checked offline: every object
//! against the API's schemas (the PyPI package `kubernetes-validate`, in a
//! venv outside the repository, as Envoy's), every file listed by its
//! kustomization, and the uninstall DaemonSet mounting what the agent's
//! does.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

const VENV: &str = "/var/cache/fsm-redirect-test/kubernetes-validate-venv";
const VERSION: &str = "1.37.0";
/// The Kubernetes versions whose schemas the manifests must satisfy: 1.30
/// is the first with `securityContext.appArmorProfile`, 1.37 the newest
/// that kubernetes-validate 1.37.0 ships.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];
/// The optional directories that need a newer Kubernetes, and its versions
/// they are held to: the fsm-init guard is a MutatingAdmissionPolicy, GA
/// (`admissionregistration.k8s.io/v1`) from 1.36.
const NEWER: [(&str, [&str; 2]); 1] = [("fsm-init-guard", ["1.36.0", "1.37.0"])];

/// The versions `manifest` is validated for.
fn versions_for(manifest: &Path) -> [&'static str; 2] {
    NEWER.iter().find(|(dir, _)| manifest.parent().and_then(Path::file_name).is_some_and(|d| d == *dir)).map_or(KUBERNETES, |(_, v)| *v)
}

/// The validator, installed first if missing.
fn ensure_validator() -> anyhow::Result<PathBuf> {
    let bin = Path::new(VENV).join("bin/kubernetes-validate");
    let installed = Command::new(&bin).arg("--version").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == VERSION);
    if installed {
        return Ok(bin);
    }
    crate::tools::pip_install_into_venv(VENV, "kubernetes-validate", VERSION, "kubernetes-validate")?;
    Ok(bin)
}

/// `deploy/`'s checks; each failure names the file and what is wrong.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let deploy = root.join("deploy");
    let manifests = manifests(&deploy)?;
    for dir in manifests.iter().filter_map(|m| m.parent()).collect::<BTreeSet<_>>() {
        kustomization_lists_all(dir)?;
    }
    same_host_mounts(&deploy.join("daemonset.yaml"), &deploy.join("uninstall/daemonset.yaml"))?;
    let validator = ensure_validator()?;
    let versions: BTreeSet<&str> = manifests.iter().flat_map(|m| versions_for(m)).collect();
    for version in &versions {
        let these: Vec<PathBuf> = manifests.iter().filter(|m| versions_for(m).contains(version)).cloned().collect();
        validate(&validator, version, &these)?;
    }
    eprintln!(
        "xtask: deploy/: {} manifests valid for Kubernetes {} ({} from {}) ({:.1} s)",
        manifests.len(),
        KUBERNETES.join(" and "),
        NEWER.map(|(dir, _)| dir).join(", "),
        NEWER[0].1[0],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Kubernetes objects under `dir`: every YAML file but kustomize's.
fn manifests(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(manifests(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") && !is_kustomization(&path) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn is_kustomization(path: &Path) -> bool {
    path.file_stem().is_some_and(|s| s == "kustomization")
}

/// Runs the validator on `manifests`; an object of a kind it has no schema
/// for (a misspelt `kind`) only warns there, and fails here.
fn validate(validator: &Path, kubernetes: &str, manifests: &[PathBuf]) -> anyhow::Result<()> {
    let out = Command::new(validator)
        .args(["--strict", "--quiet", "--kubernetes-version", kubernetes])
        .args(manifests)
        .output()
        .with_context(|| format!("running {}", validator.display()))?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || report.contains("WARN") || report.contains("ERROR") {
        bail!("deploy/: manifests not valid for Kubernetes {kubernetes} (kubernetes-validate --strict):\n{}", report.trim());
    }
    Ok(())
}

fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))
}

/// A manifest left out of `resources` would never be applied (nor deleted),
/// and a listed one that is missing breaks `kubectl apply -k`.
fn kustomization_lists_all(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("kustomization.yaml");
    let listed: BTreeSet<String> = read_yaml(&file)?
        .get("resources")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: no `resources` list", file.display()))?
        .iter()
        .map(|r| r.as_str().map(str::to_owned).with_context(|| format!("{}: `resources` holds a non-string", file.display())))
        .collect::<anyhow::Result<_>>()?;
    let present: BTreeSet<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml") && !is_kustomization(p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    // Subdirectories are kustomizations of their own (uninstall/), listed
    // or not as their purpose says.
    let listed_files: BTreeSet<String> = listed.iter().filter(|r| !dir.join(r).is_dir()).cloned().collect();
    if listed_files != present {
        let missing: Vec<_> = present.difference(&listed_files).collect();
        let extra: Vec<_> = listed_files.difference(&present).collect();
        bail!("{}: `resources` does not match the directory: not listed {missing:?}, listed but absent {extra:?}", file.display());
    }
    Ok(())
}

/// The uninstall pod must see the host where the agent saw it: the state
/// file records the CNI directories by the agent's paths, and the pins,
/// rules and socket are found at the same places.
fn same_host_mounts(agent: &Path, uninstall: &Path) -> anyhow::Result<()> {
    let (a, u) = (host_mounts(agent, "containers")?, host_mounts(uninstall, "initContainers")?);
    if a != u {
        bail!("{} mounts the host differently from {}:\n  agent:     {a:?}\n  uninstall: {u:?}", uninstall.display(), agent.display());
    }
    Ok(())
}

/// (host path, mount path, propagation) of the first container of
/// `containers` in a DaemonSet.
fn host_mounts(file: &Path, containers: &str) -> anyhow::Result<BTreeSet<(String, String, String)>> {
    let ds = read_yaml(file)?;
    let spec = &ds["spec"]["template"]["spec"];
    let field = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let host_path = |volume: &str| {
        spec["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == volume).map(|v| field(&v["hostPath"], "path"))
    };
    let mounts =
        spec[containers][0]["volumeMounts"].as_array().with_context(|| format!("{}: no {containers}[0].volumeMounts", file.display()))?;
    mounts
        .iter()
        .map(|m| {
            let name = field(m, "name");
            let host = host_path(&name).with_context(|| format!("{}: volume {name:?} is mounted but not declared", file.display()))?;
            Ok((host, field(m, "mountPath"), field(m, "mountPropagation")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The validator turns away what the API server would: a misspelt
    /// field and a misspelt kind (which it only warns about).
    #[test]
    fn validation_fails_on_broken_manifests() {
        let root = crate::process::workspace_root();
        let validator = ensure_validator().unwrap();
        let good = std::fs::read_to_string(root.join("deploy/daemonset.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("field.yaml", good.replacen("hostNetwork:", "hostNetwrok:", 1), "'hostNetwrok' was unexpected"),
            ("kind.yaml", good.replacen("kind: DaemonSet", "kind: DaemonSett", 1), "Couldn't find schema for kind DaemonSett"),
        ];
        for (name, text, expected) in cases {
            assert_ne!(text, good, "{name}: the replacement changed nothing");
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = validate(&validator, KUBERNETES[1], &[path]).expect_err(name);
            assert!(format!("{err:#}").contains(expected), "{name}: {err:#}");
        }
        let path = dir.path().join("good.yaml");
        std::fs::write(&path, good).unwrap();
        validate(&validator, KUBERNETES[1], &[path]).unwrap();
    }

    /// The fsm-init guard's policy is a kind 1.30 does not have: it is held
    /// to the versions that do, and the others to both.
    #[test]
    fn the_fsm_init_guard_is_validated_for_the_kubernetes_that_has_it() {
        let root = crate::process::workspace_root();
        let policy = root.join("deploy/fsm-init-guard/policy.yaml");
        assert_eq!(versions_for(&policy), ["1.36.0", "1.37.0"]);
        assert_eq!(versions_for(&root.join("deploy/daemonset.yaml")), KUBERNETES);
        let validator = ensure_validator().unwrap();
        let err = validate(&validator, KUBERNETES[0], std::slice::from_ref(&policy)).unwrap_err();
        assert!(format!("{err:#}").contains("MutatingAdmissionPolicy"), "{err:#}");
        validate(&validator, "1.36.0", &[policy]).unwrap();
    }

    #[test]
    fn uninstall_mounts_must_match_the_agent() {
        let root = crate::process::workspace_root();
        let agent = root.join("deploy/daemonset.yaml");
        let text = std::fs::read_to_string(root.join("deploy/uninstall/daemonset.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let moved = dir.path().join("uninstall.yaml");
        std::fs::write(&moved, text.replacen("mountPath: /etc/cni/net.d", "mountPath: /host/etc/cni/net.d", 1)).unwrap();
        let err = same_host_mounts(&agent, &moved).unwrap_err();
        assert!(format!("{err:#}").contains("mounts the host differently"), "{err:#}");
    }
}
