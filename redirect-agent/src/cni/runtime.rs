//! Where the node's container runtime looks for CNI: its plugins' bin dirs
//! and its conf dir, read from its own configuration (containerd's
//! `config.toml`, CRI-O's `crio.conf` and `crio.conf.d/`). The agent chains
//! its plugin only where the runtime will find both: an entry whose binary
//! the runtime can't find fails every pod's ADD on the node, and a conflist
//! it does not read intercepts nothing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use toml::Value;

/// What one runtime's configuration says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeCni {
    /// `containerd` or `CRI-O`.
    pub runtime: &'static str,
    /// The file (or files) it was read from.
    pub source: String,
    pub bin_dirs: Vec<PathBuf>,
    pub conf_dir: PathBuf,
}

impl RuntimeCni {
    /// CRI-O's CNI dirs where its files say nothing.
    fn crio_defaults(source: String) -> Self {
        RuntimeCni { runtime: "CRI-O", source, bin_dirs: vec![DEFAULT_BIN.into()], conf_dir: DEFAULT_CONF.into() }
    }
}

const DEFAULT_BIN: &str = "/opt/cni/bin";
const DEFAULT_CONF: &str = "/etc/cni/net.d";

/// Reads a runtime's configuration: a containerd `config.toml`, or CRI-O's
/// `crio.conf` or its directory (`/etc/crio`: `crio.conf`, then
/// `crio.conf.d/*.conf` in order, later files overriding). `None` where
/// nothing is there (that runtime is not on the node).
pub fn read(path: &Path) -> anyhow::Result<Option<RuntimeCni>> {
    if path.is_dir() {
        return read_crio_dir(path);
    }
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
    let doc: Value = toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
    if doc.get("crio").is_some() {
        let mut cni = RuntimeCni::crio_defaults(path.display().to_string());
        crio(&doc, &mut cni);
        return Ok(Some(cni));
    }
    Ok(Some(containerd(&doc, path)))
}

/// containerd: version 3 (containerd 2) `plugins."io.containerd.cri.v1.runtime".cni`
/// with `bin_dirs` (or the older `bin_dir`), version 2 (containerd 1.x)
/// `plugins."io.containerd.grpc.v1.cri".cni`, version 1 `plugins.cri.cni`;
/// containerd's defaults where the file says nothing.
fn containerd(doc: &Value, path: &Path) -> RuntimeCni {
    let plugins = doc.get("plugins");
    let cni = ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri", "cri"]
        .iter()
        .find_map(|p| plugins.and_then(|ps| ps.get(p)).and_then(|p| p.get("cni")));
    let strings = |v: Option<&Value>| -> Option<Vec<PathBuf>> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(PathBuf::from).collect())
    };
    let bin_dirs = strings(cni.and_then(|c| c.get("bin_dirs")))
        .or_else(|| cni.and_then(|c| c.get("bin_dir")).and_then(Value::as_str).map(|d| vec![PathBuf::from(d)]))
        .unwrap_or_else(|| vec![DEFAULT_BIN.into()]);
    let conf_dir = cni.and_then(|c| c.get("conf_dir")).and_then(Value::as_str).unwrap_or(DEFAULT_CONF).into();
    RuntimeCni { runtime: "containerd", source: path.display().to_string(), bin_dirs, conf_dir }
}

/// CRI-O: `[crio.network]` `network_dir` and `plugin_dirs`.
fn crio(doc: &Value, cni: &mut RuntimeCni) {
    let network = doc.get("crio").and_then(|c| c.get("network"));
    if let Some(dirs) = network.and_then(|n| n.get("plugin_dirs")).and_then(Value::as_array) {
        cni.bin_dirs = dirs.iter().filter_map(Value::as_str).map(PathBuf::from).collect();
    }
    if let Some(dir) = network.and_then(|n| n.get("network_dir")).and_then(Value::as_str) {
        cni.conf_dir = dir.into();
    }
}

fn read_crio_dir(dir: &Path) -> anyhow::Result<Option<RuntimeCni>> {
    let mut files: Vec<PathBuf> = vec![dir.join("crio.conf")];
    if let Ok(entries) = std::fs::read_dir(dir.join("crio.conf.d")) {
        let mut drop_ins: Vec<PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect();
        drop_ins.sort();
        files.extend(drop_ins);
    }
    let mut cni = RuntimeCni::crio_defaults(String::new());
    let mut read = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let doc: Value = toml::from_str(&text).with_context(|| format!("{}: not TOML", file.display()))?;
        crio(&doc, &mut cni);
        read.push(file.display().to_string());
    }
    if read.is_empty() {
        return Ok(None);
    }
    cni.source = read.join(", ");
    Ok(Some(cni))
}

/// Paths compared as the runtime would use them: trailing slashes and `.`
/// do not count.
fn same(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| p.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect::<PathBuf>();
    norm(a) == norm(b)
}

/// Refuses, with why, where the runtime would not find the plugin in
/// `bin_dir` or the conflist in `conf_dir`.
pub fn check(runtime: &RuntimeCni, bin_dir: &Path, conf_dir: &Path) -> anyhow::Result<()> {
    if !runtime.bin_dirs.iter().any(|d| same(d, bin_dir)) {
        anyhow::bail!(
            "{} ({}) looks for CNI plugins in {}, not in --cni-bin-dir {}: not chained (every ADD of the node would fail to find the plugin)",
            runtime.runtime,
            runtime.source,
            runtime.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            bin_dir.display()
        );
    }
    if !same(&runtime.conf_dir, conf_dir) {
        anyhow::bail!(
            "{} ({}) reads its network configuration from {}, not from --cni-conf-dir {}: not chained",
            runtime.runtime,
            runtime.source,
            runtime.conf_dir.display(),
            conf_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_each_containerd_version_and_its_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let v3 = file(
            dir.path(),
            "v3.toml",
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['/home/kubernetes/bin', '/opt/cni/bin']\nconf_dir = '/etc/cni/net.d'\n",
        );
        let cni = read(&v3).unwrap().unwrap();
        assert_eq!(cni.bin_dirs, [PathBuf::from("/home/kubernetes/bin"), PathBuf::from("/opt/cni/bin")]);
        let v2 = file(
            dir.path(),
            "v2.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/usr/lib/cni\"\nconf_dir = \"/etc/cni/net.d\"\n",
        );
        assert_eq!(read(&v2).unwrap().unwrap().bin_dirs, [PathBuf::from("/usr/lib/cni")]);
        let bare = file(dir.path(), "bare.toml", "version = 2\n");
        let cni = read(&bare).unwrap().unwrap();
        assert_eq!(
            (cni.runtime, cni.bin_dirs, cni.conf_dir),
            ("containerd", vec![PathBuf::from(DEFAULT_BIN)], PathBuf::from(DEFAULT_CONF))
        );
        assert_eq!(read(&dir.path().join("absent.toml")).unwrap(), None);
        let broken = file(dir.path(), "broken.toml", "version = \n");
        assert!(format!("{:#}", read(&broken).unwrap_err()).contains("not TOML"));
    }

    #[test]
    fn reads_crio_with_its_drop_ins_in_order() {
        let dir = tempfile::tempdir().unwrap();
        file(dir.path(), "crio.conf", "[crio.network]\nnetwork_dir = \"/etc/cni/net.d/\"\nplugin_dirs = [\"/opt/cni/bin/\"]\n");
        file(dir.path(), "crio.conf.d/10-a.conf", "[crio.network]\nplugin_dirs = [\"/var/lib/cni/bin\", \"/usr/libexec/cni\"]\n");
        file(dir.path(), "crio.conf.d/20-b.conf", "[crio.runtime]\nlog_level = \"info\"\n");
        let cni = read(dir.path()).unwrap().unwrap();
        assert_eq!(cni.runtime, "CRI-O");
        assert_eq!(cni.bin_dirs, [PathBuf::from("/var/lib/cni/bin"), PathBuf::from("/usr/libexec/cni")]);
        assert_eq!(cni.conf_dir, PathBuf::from("/etc/cni/net.d/"));
        check(&cni, Path::new("/usr/libexec/cni"), Path::new("/etc/cni/net.d")).unwrap();
        let e = check(&cni, Path::new("/opt/cni/bin"), Path::new("/etc/cni/net.d")).unwrap_err().to_string();
        assert!(e.contains("looks for CNI plugins in /var/lib/cni/bin, /usr/libexec/cni, not in --cni-bin-dir /opt/cni/bin"), "{e}");
        assert!(e.contains("crio.conf") && e.contains("10-a.conf"), "the files it was read from: {e}");
        let e = check(&cni, Path::new("/var/lib/cni/bin"), Path::new("/etc/kubernetes/cni/net.d")).unwrap_err().to_string();
        assert!(e.contains("reads its network configuration from /etc/cni/net.d/"), "{e}");
        assert_eq!(read(&dir.path().join("none")).unwrap(), None);
    }
}
