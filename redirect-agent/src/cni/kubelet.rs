//! Where the kubelet puts a pod's cgroup. It makes the pod-level group
//! before it asks the runtime for the sandbox, so at CNI ADD the group
//! exists while no process is in it yet; every container's group is made
//! below it later, and inherits the programs attached to it. The QoS class
//! that chooses the parent is not among CNI's arguments: every candidate
//! is tried. (kubelet: `pod_container_manager_linux.go`,
//! `cgroup_manager_linux.go`, `qos_container_manager_linux.go`.)

use std::path::{Path, PathBuf};

/// The pod-level group of pod `uid` relative to the cgroup2 mount, for
/// both of kubelet's cgroup drivers and the three QoS classes, under
/// kubelet's `--cgroup-root` (`/` by default).
pub fn pod_cgroup_candidates(cgroup_root: &str, uid: &str) -> Vec<PathBuf> {
    let root: Vec<&str> = cgroup_root.split('/').filter(|p| !p.is_empty()).collect();
    let mut paths = Vec::new();
    for qos in [None, Some("burstable"), Some("besteffort")] {
        let pod = format!("pod{uid}");
        let parts: Vec<&str> = root.iter().copied().chain(["kubepods"]).chain(qos).chain([pod.as_str()]).collect();
        paths.push(PathBuf::from(parts.join("/")));
        paths.push(systemd(&parts));
    }
    paths
}

/// kubelet's systemd driver: each part's '-' becomes '_', and each level is
/// a slice named by every part so far joined with '-'
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`).
fn systemd(parts: &[&str]) -> PathBuf {
    let mut path = PathBuf::new();
    let mut name = String::new();
    for part in parts {
        if !name.is_empty() {
            name.push('-');
        }
        name.push_str(&part.replace('-', "_"));
        path.push(format!("{name}.slice"));
    }
    path
}

/// The pod's group under the cgroup2 mount `mount`, if the kubelet made it.
/// A UID that could step out of the hierarchy is refused.
pub fn find_pod_cgroup(mount: &Path, cgroup_root: &str, uid: &str) -> anyhow::Result<PathBuf> {
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        anyhow::bail!("K8S_POD_UID {uid:?}: not a pod UID");
    }
    let candidates = pod_cgroup_candidates(cgroup_root, uid);
    let found: Vec<PathBuf> = candidates.iter().map(|p| mount.join(p)).filter(|p| p.is_dir()).collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!(
            "pod UID {uid}: no kubelet pod cgroup under {} with cgroup root {cgroup_root:?}; tried {}",
            mount.display(),
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
        many => anyhow::bail!("pod UID {uid}: more than one pod cgroup: {many:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_drivers_and_every_qos_class_are_candidates() {
        let c = pod_cgroup_candidates("/", "8f2a-11");
        assert!(c.contains(&PathBuf::from("kubepods/burstable/pod8f2a-11")));
        assert!(c.contains(&PathBuf::from("kubepods/pod8f2a-11")));
        assert!(c.contains(&PathBuf::from("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f2a_11.slice")));
        assert!(c.contains(&PathBuf::from("kubepods.slice/kubepods-pod8f2a_11.slice")));
        assert_eq!(c.len(), 6);
        // A --cgroup-root of /kubelet (CNI's CONVENTIONS.md example).
        let c = pod_cgroup_candidates("/kubelet", "8f2a-11");
        assert!(c.contains(&PathBuf::from("kubelet/kubepods/besteffort/pod8f2a-11")));
        assert!(c.contains(&PathBuf::from(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod8f2a_11.slice"
        )));
    }

    #[test]
    fn the_one_existing_group_is_found_and_a_bad_uid_is_refused() {
        let mount = tempfile::tempdir().unwrap();
        let uid = "0b4c-77";
        let e = find_pod_cgroup(mount.path(), "/", uid).unwrap_err().to_string();
        assert!(e.contains("no kubelet pod cgroup"), "{e}");
        // Every path tried, in full.
        assert!(e.contains("kubepods/besteffort/pod0b4c-77") && e.contains("kubepods.slice/kubepods-pod0b4c_77.slice"), "{e}");
        let group = mount.path().join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b4c_77.slice");
        std::fs::create_dir_all(&group).unwrap();
        assert_eq!(find_pod_cgroup(mount.path(), "/", uid).unwrap(), group);
        assert!(find_pod_cgroup(mount.path(), "/", "../x").is_err());
        assert!(find_pod_cgroup(mount.path(), "/", "").is_err());
    }
}
