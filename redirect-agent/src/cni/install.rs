//! Installing the plugin on a node: its binary into the CNI bin dir, and its
//! entry at the end of the primary network's conflist in the CNI conf dir
//! (the file the runtime reads: the lexically first `.conf`, `.conflist`
//! or `.json`, as libcni and containerd pick it). The agent checks the entry
//! at each refresh: a primary CNI that rewrites its file (Calico and
//! Cilium do, at their own restarts) would drop it, and with it the
//! interception of every pod created afterwards.

use std::path::{Path, PathBuf};

use crate::files::Survives;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The plugin's binary name, which is its `type` in a conflist.
pub const PLUGIN_TYPE: &str = "fsm-redirect-cni";

/// Where the plugin goes, recorded in the state file so that `uninstall`
/// can take it out again, and the settings of its entry, which the agent
/// owns (an entry edited by hand is put back as the agent has it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CniInstall {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The control socket the entry names.
    pub socket: PathBuf,
    /// Namespaces whose pods' ADDs the plugin passes without the agent.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// The entry's `failOpen`.
    #[serde(default)]
    pub fail_open: bool,
    /// The runtime's own configuration (containerd's `config.toml`,
    /// CRI-O's `/etc/crio`), whose CNI dirs these must be.
    #[serde(default)]
    pub runtime_configs: Vec<PathBuf>,
}

/// What `ensure_chained` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chained {
    /// The entry was there as the agent has it.
    Already,
    /// The entry was there with other settings: rewritten in this file.
    Updated(PathBuf),
    /// The entry was missing (the primary CNI rewrote its file, or it is
    /// the first time): put at the end of this file.
    Added(PathBuf),
}

impl CniInstall {
    /// Copies the plugin binary (`source`) into the bin dir, replacing it
    /// in one rename, so that a runtime never runs half a file.
    pub fn install_binary(&self, source: &Path) -> anyhow::Result<()> {
        let target = self.bin_dir.join(PLUGIN_TYPE);
        crate::files::replace_with(&target, |tmp| {
            std::fs::copy(source, tmp).map(drop).with_context(|| format!("copying {} to {}", source.display(), tmp.display()))
        })
        .with_context(|| format!("installing {}", target.display()))
    }

    /// Puts the entry at the end of the primary conflist if it is not
    /// there as it should be. Refuses a conflist of a CNI version the
    /// plugin does not speak: the runtime would fail every ADD of it. A
    /// file the primary CNI changes while the entry is being written is
    /// read again (a few times), never replaced by its older version.
    pub fn ensure_chained(&self) -> anyhow::Result<Chained> {
        let mut tries = 0;
        loop {
            match self.try_chain() {
                Err(e) if e.downcast_ref::<ChangedMeanwhile>().is_some() && tries < 5 => tries += 1,
                other => return other,
            }
        }
    }

    /// Refuses dirs the node's runtime does not use (where its
    /// configuration says so; a runtime whose configuration is not there
    /// is taken to use the DaemonSet's).
    fn runtime_agrees(&self) -> anyhow::Result<()> {
        let mut refusals = Vec::new();
        for path in &self.runtime_configs {
            let Some(runtime) = super::runtime::read(path)? else { continue };
            match super::runtime::check(&runtime, &self.bin_dir, &self.conf_dir) {
                Ok(()) => return Ok(()),
                Err(e) => refusals.push(format!("{e:#}")),
            }
        }
        if refusals.is_empty() { Ok(()) } else { bail!("{}", refusals.join("; ")) }
    }

    fn try_chain(&self) -> anyhow::Result<Chained> {
        self.runtime_agrees()?;
        let path = primary_conf(&self.conf_dir)?;
        let original = std::fs::read(&path).with_context(|| format!("{}: can't read", path.display()))?;
        let conf: Value =
            serde_json::from_slice(&original).with_context(|| format!("{}: not a JSON network configuration", path.display()))?;
        let entry = self.entry();
        let mut list = as_conflist(conf)?;
        let version = list["cniVersion"].as_str().unwrap_or_default();
        if !super::spec::SUPPORTED_VERSIONS.contains(&version) {
            bail!(
                "{}: cniVersion {version:?}, which fsm-redirect-cni does not speak ({}): not chained",
                path.display(),
                super::spec::SUPPORTED_VERSIONS.join(", ")
            );
        }
        let plugins = list["plugins"].as_array_mut().expect("made by as_conflist");
        if plugins.last() == Some(&entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
            return Ok(Chained::Already);
        }
        let had = plugins.iter().any(is_ours);
        plugins.retain(|p| !is_ours(p));
        plugins.push(entry);
        let file = write_conflist(&path, &list, &original)?;
        Ok(if had { Chained::Updated(file) } else { Chained::Added(file) })
    }

    /// The plugin's entry.
    pub fn entry(&self) -> Value {
        let mut entry = json!({
            "type": PLUGIN_TYPE,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "socket": self.socket,
            "excludeNamespaces": self.exclude_namespaces,
        });
        if self.fail_open {
            entry["failOpen"] = true.into();
        }
        entry
    }

    /// Takes the entry out of the primary conflist and the binary out of
    /// the bin dir; what is already gone is fine.
    pub fn uninstall(&self) -> anyhow::Result<()> {
        if let Ok(path) = primary_conf(&self.conf_dir) {
            let mut conf = read_json(&path)?;
            if let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut)
                && plugins.iter().any(is_ours)
            {
                plugins.retain(|p| !is_ours(p));
                write_json(&path, &conf)?;
            }
        }
        match std::fs::remove_file(self.bin_dir.join(PLUGIN_TYPE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("removing the plugin binary"),
            _ => Ok(()),
        }
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The file the runtime reads: the lexically first network configuration.
pub fn primary_conf(conf_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("CNI conf dir {}", conf_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "conf" || x == "conflist" || x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("CNI conf dir {}: no network configuration yet (the primary CNI writes one)", conf_dir.display()))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("{}: can't read", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: not a JSON network configuration", path.display()))
}

/// A conflist as it is, or a single plugin's `.conf` made one.
fn as_conflist(conf: Value) -> anyhow::Result<Value> {
    if conf.get("plugins").is_some_and(Value::is_array) {
        return Ok(conf);
    }
    let Some(obj) = conf.as_object().filter(|o| o.contains_key("type")) else {
        bail!("not a network configuration: neither `plugins` nor `type`");
    };
    let mut plugin = obj.clone();
    let version = plugin.remove("cniVersion").unwrap_or_else(|| "1.0.0".into());
    let name = plugin.remove("name").unwrap_or_else(|| "k8s-pod-network".into());
    Ok(json!({"cniVersion": version, "name": name, "plugins": [plugin]}))
}

/// The primary CNI wrote its file between our read and our write.
#[derive(Debug)]
struct ChangedMeanwhile;

impl std::fmt::Display for ChangedMeanwhile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file changed while the entry was written")
    }
}

impl std::error::Error for ChangedMeanwhile {}

/// Writes `list` for the runtime in place of `path` (a `.conf` becomes the
/// `.conflist` of the same name, which sorts at the same place), if `path`
/// still holds `read` right before the rename. Returns the file written.
fn write_conflist(path: &Path, list: &Value, read: &[u8]) -> anyhow::Result<PathBuf> {
    let target = if path.extension().is_some_and(|x| x == "conflist") { path.to_owned() } else { path.with_extension("conflist") };
    let bytes = serde_json::to_vec_pretty(list)?;
    crate::files::replace_checked(
        &target,
        Survives::NodeCrash,
        |tmp| std::fs::write(tmp, &bytes).with_context(|| format!("writing {}", tmp.display())),
        || if std::fs::read(path).ok().as_deref() == Some(read) { Ok(()) } else { Err(ChangedMeanwhile.into()) },
    )?;
    if target != path {
        std::fs::remove_file(path).with_context(|| format!("removing {} (now {})", path.display(), target.display()))?;
    }
    Ok(target)
}

/// One rename: a runtime reads the old file or the new one.
fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    crate::files::replace(path, &serde_json::to_vec_pretty(value)?, Survives::NodeCrash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path) -> CniInstall {
        let (conf_dir, bin_dir) = (dir.join("net.d"), dir.join("bin"));
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::create_dir_all(&bin_dir).unwrap();
        CniInstall {
            conf_dir,
            bin_dir,
            socket: "/run/fsm-redirect/agent.sock".into(),
            exclude_namespaces: vec!["kube-system".into(), "fsm-system".into()],
            fail_open: false,
            runtime_configs: Vec::new(),
        }
    }

    fn plugins(path: &Path) -> Vec<String> {
        read_json(path).unwrap()["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn the_entry_goes_last_in_the_primary_conflist_once_and_comes_back_after_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let i = install(dir.path());
        let primary = i.conf_dir.join("10-calico.conflist");
        let original = r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"portmap"}]}"#;
        std::fs::write(&primary, original).unwrap();
        std::fs::write(i.conf_dir.join("99-other.conflist"), original).unwrap();
        let source = dir.path().join("plugin");
        std::fs::write(&source, "#!/bin/sh\n").unwrap();

        i.install_binary(&source).unwrap();
        assert_eq!(i.ensure_chained().unwrap(), Chained::Added(primary.clone()));
        assert!(i.bin_dir.join(PLUGIN_TYPE).exists());
        assert_eq!(plugins(&primary), ["calico", "portmap", PLUGIN_TYPE]);
        assert_eq!(plugins(&i.conf_dir.join("99-other.conflist")), ["calico", "portmap"], "not the primary one");
        assert_eq!(i.ensure_chained().unwrap(), Chained::Already, "already there: untouched");
        assert_eq!(read_json(&primary).unwrap()["plugins"][2]["excludeNamespaces"], json!(["kube-system", "fsm-system"]));

        // The primary CNI writes its file again, without us.
        std::fs::write(&primary, original).unwrap();
        assert_eq!(i.ensure_chained().unwrap(), Chained::Added(primary.clone()));
        assert_eq!(plugins(&primary), ["calico", "portmap", PLUGIN_TYPE]);

        // Settings the agent owns, edited by hand (or changed with the
        // agent's options): the entry is updated, not missing.
        let failing_open = CniInstall { fail_open: true, ..i.clone() };
        assert_eq!(failing_open.ensure_chained().unwrap(), Chained::Updated(primary.clone()));
        assert_eq!(read_json(&primary).unwrap()["plugins"][2]["failOpen"], true);
        assert_eq!(i.ensure_chained().unwrap(), Chained::Updated(primary.clone()));
        assert_eq!(plugins(&primary), ["calico", "portmap", PLUGIN_TYPE]);

        i.uninstall().unwrap();
        assert_eq!(plugins(&primary), ["calico", "portmap"]);
        assert!(!i.bin_dir.join(PLUGIN_TYPE).exists());
        i.uninstall().unwrap();
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_conflist_and_nothing_is_written_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let i = install(dir.path());
        assert!(i.ensure_chained().unwrap_err().to_string().contains("no network configuration yet"));
        let conf = i.conf_dir.join("10-bridge.conf");
        std::fs::write(&conf, r#"{"cniVersion":"1.0.0","name":"net","type":"bridge","bridge":"cni0"}"#).unwrap();
        let written = i.conf_dir.join("10-bridge.conflist");
        assert_eq!(i.ensure_chained().unwrap(), Chained::Added(written.clone()));
        assert!(!conf.exists());
        let list = read_json(&written).unwrap();
        assert_eq!((list["cniVersion"].as_str(), list["name"].as_str()), (Some("1.0.0"), Some("net")));
        assert_eq!(list["plugins"][0], json!({"type": "bridge", "bridge": "cni0"}));
        assert_eq!(plugins(&written), ["bridge", PLUGIN_TYPE]);
        std::fs::write(i.conf_dir.join("00-broken.conflist"), "{").unwrap();
        assert!(i.ensure_chained().unwrap_err().to_string().contains("00-broken.conflist"));
    }

    #[test]
    fn the_entry_goes_only_where_the_runtime_looks() {
        let dir = tempfile::tempdir().unwrap();
        let mut i = install(dir.path());
        std::fs::write(i.conf_dir.join("10-net.conflist"), r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#).unwrap();
        let containerd = dir.path().join("config.toml");
        std::fs::write(&containerd, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/home/kubernetes/bin\"\n")
            .unwrap();
        i.runtime_configs = vec![dir.path().join("crio-absent"), containerd.clone()];
        let e = i.ensure_chained().unwrap_err().to_string();
        assert!(e.contains("containerd") && e.contains("looks for CNI plugins in /home/kubernetes/bin"), "{e}");
        assert_eq!(plugins(&i.conf_dir.join("10-net.conflist")), ["bridge"], "not chained");
        let conf = i.conf_dir.display().to_string();
        std::fs::write(
            &containerd,
            format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"{}\"\nconf_dir = \"{conf}\"\n",
                i.bin_dir.display()
            ),
        )
        .unwrap();
        assert!(matches!(i.ensure_chained().unwrap(), Chained::Added(_)));
    }

    #[test]
    fn a_change_the_primary_cni_made_meanwhile_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-calico.conflist");
        let (read, theirs) = (br#"{"cniVersion":"1.0.0","plugins":[]}"#, br#"{"cniVersion":"1.0.0","plugins":[{"type":"calico"}]}"#);
        // Read, then the primary CNI writes its new version: ours, made
        // from the old one, is not renamed over it.
        std::fs::write(&path, theirs).unwrap();
        let e = write_conflist(&path, &json!({"plugins": []}), read).unwrap_err();
        assert!(e.downcast_ref::<ChangedMeanwhile>().is_some(), "{e:#}");
        assert_eq!(std::fs::read(&path).unwrap(), theirs);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
        write_conflist(&path, &json!({"plugins": [{"type": "calico"}]}), theirs).unwrap();
    }

    #[test]
    fn a_conflist_of_a_version_the_plugin_does_not_speak_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let i = install(dir.path());
        let primary = i.conf_dir.join("10-net.conflist");
        let future = r#"{"cniVersion":"1.2.0","name":"net","plugins":[{"type":"bridge"}]}"#;
        std::fs::write(&primary, future).unwrap();
        let e = i.ensure_chained().unwrap_err().to_string();
        assert!(e.contains("cniVersion \"1.2.0\", which fsm-redirect-cni does not speak") && e.contains("not chained"), "{e}");
        assert_eq!(std::fs::read_to_string(&primary).unwrap(), future);
        std::fs::write(&primary, future.replace("1.2.0", "1.1.0")).unwrap();
        assert_eq!(i.ensure_chained().unwrap(), Chained::Added(primary.clone()));
    }
}
