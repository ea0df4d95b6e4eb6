//! The bpffs layout, one directory per agent (bpfman's habit): a restarted
//! agent finds everything here, and `uninstall` removes exactly this.
//!
//! ```text
//! <root>/maps/<MAP_NAME>            every shared map
//! <root>/pods/<pod id>/<program>    the pod's links (connect4, getsockopt, sk_lookup;
//!                                   sockops while needed), its sockops program
//!                                   (sockops_program) and its fast-path sockhash
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use redirect_common::maps::PodId;

pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/fsm-redirect";
const STANDARD_BPFFS: &str = "/sys/fs/bpf";

pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let st = nix::sys::statfs::statfs(path).with_context(|| format!("bpffs {}: can't stat", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn pod_dir(&self, pod: PodId) -> PathBuf {
        self.root.join("pods").join(pod.to_string())
    }

    pub fn link(&self, pod: PodId, program: &str) -> PathBuf {
        self.pod_dir(pod).join(program)
    }

    /// Creates the directories, checking that the root is on a bpffs. The
    /// standard bpffs at /sys/fs/bpf is mounted if it isn't (as Cilium and
    /// bpfman do); anywhere else the user must have mounted one.
    /// `may_mount`: mount a bpffs at /sys/fs/bpf if none is there; not in
    /// a container (`run --kubernetes`), whose mount would go, with every
    /// pin, when the container does.
    pub fn prepare(&self, may_mount: bool) -> anyhow::Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent)? && parent == Path::new(STANDARD_BPFFS) {
            if !may_mount {
                bail!(
                    "{STANDARD_BPFFS}: not a BPF file system. On Kubernetes the node must have mounted its own (systemd does at boot; \
                     else `mount -t bpf bpf {STANDARD_BPFFS}` on the node), which the DaemonSet mounts into the agent's container: \
                     one mounted in the container would take the pins with it when the container goes"
                );
            }
            nix::mount::mount(Some("bpf"), STANDARD_BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                .with_context(|| format!("mounting a bpffs at {STANDARD_BPFFS}"))?;
        }
        if !is_bpffs(parent)? {
            bail!("bpffs {}: not a BPF file system (mount one with `mount -t bpf bpf {}`)", parent.display(), parent.display());
        }
        for dir in [self.root.join("maps"), self.root.join("pods")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Unpins maps that no program of this agent uses (an older agent's,
    /// say `ORIG_DST` before the outbound hand-over moved into the redirect
    /// address, or `INBOUND_ORIG` before inbound answers came from the
    /// socket): their memory goes once the last program still holding them
    /// is detached. Returns whether there were any: then the pods still run
    /// an older agent's programs.
    pub fn remove_unknown_maps(&self, known: &[&str]) -> anyhow::Result<bool> {
        let dir = self.root.join("maps");
        let mut removed = false;
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| known.contains(&n)) {
                log::info!("unpinning {}, which this agent does not use", path.display());
                std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Pod ids that have a directory of links.
    pub fn pinned_pods(&self) -> anyhow::Result<Vec<PodId>> {
        let dir = self.root.join("pods");
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            if let Some(id) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes every pin (links first, so that nothing runs against maps
    /// that are going away) and the directory itself.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        for pod in self.pinned_pods()? {
            remove_dir(&self.pod_dir(pod))?;
        }
        remove_dir(&self.root.join("pods"))?;
        remove_dir(&self.root.join("maps"))?;
        std::fs::remove_dir(&self.root).with_context(|| format!("removing {}", self.root.display()))
    }
}

/// Removes a directory of pins (bpffs has no recursive removal).
pub fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}
