//! The image's file system: the agent and the CNI plugin (static), and
//! the host's iptables and coreutils' sleep, with the shared libraries they load,
//! written as one tar layer. Every entry is root's, dated 1970, in path
//! order, so the same inputs give the same bytes (and image digest).

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the image's commands are, as its configuration's PATH.
pub const PATH: &str = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Debian's iptables: one binary per backend, named by its links. The
/// plain names are the nf_tables backend, Debian's default; the agent
/// runs `iptables`, `iptables-restore` and their ip6 twins.
const XTABLES_NFT: &str = "/usr/sbin/xtables-nft-multi";
const XTABLES_LEGACY: &str = "/usr/sbin/xtables-legacy-multi";
const NFT_NAMES: [&str; 12] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
];
const LEGACY_NAMES: [&str; 6] = [
    "iptables-legacy",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
];
/// The match and target modules iptables loads (dlopen) by name.
const XTABLES_MODULES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

enum Node {
    Dir { mode: u32 },
    File { source: PathBuf, mode: u32 },
    Symlink { target: PathBuf },
}

/// Paths inside the image (relative: `usr/sbin/ip`) and what they are.
#[derive(Default)]
pub struct Rootfs(BTreeMap<PathBuf, Node>);

impl Rootfs {
    /// The agent's image: `agent` and `cni` (static binaries) in
    /// /usr/local/bin, where the agent finds the plugin it installs.
    pub fn for_agent(agent: &Path, cni: &Path) -> anyhow::Result<Self> {
        let mut fs = Rootfs::default();
        for dir in ["dev", "etc", "proc", "run", "sys"] {
            fs.dir(Path::new(dir), 0o755);
        }
        fs.dir(Path::new("tmp"), 0o1777);
        // The runtimes' netns paths are /var/run/netns or /run/netns: one
        // mount serves both, as on the host.
        fs.symlink("var/run", "../run");
        for bin in [agent, cni] {
            fs.file(&Path::new("usr/local/bin").join(bin.file_name().context("a binary without a name")?), bin)?;
        }
        // iptables, for pods on the iptables dataplane and the agent's
        // `iptables` commands.
        for multi in [XTABLES_NFT, XTABLES_LEGACY] {
            fs.host_binary(Path::new(multi), Path::new(multi))?;
        }
        for name in NFT_NAMES {
            fs.symlink(&format!("usr/sbin/{name}"), "xtables-nft-multi");
        }
        for name in LEGACY_NAMES {
            fs.symlink(&format!("usr/sbin/{name}"), "xtables-legacy-multi");
        }
        let modules = std::fs::read_dir(XTABLES_MODULES).with_context(|| format!("reading {XTABLES_MODULES} (iptables' modules)"))?;
        for module in modules {
            let module = module?.path();
            // Aliases (libxt_state.so -> libxt_conntrack.so) stay links.
            match std::fs::read_link(&module) {
                Ok(target) => fs.add(module.strip_prefix("/")?, Node::Symlink { target }),
                Err(_) => fs.host_binary(&module, &module)?,
            }
        }
        // `sleep infinity` holds the uninstall DaemonSet's pods
        // (deploy/uninstall/daemonset.yaml).
        fs.host_binary(&host_command("sleep")?, Path::new("/usr/bin/sleep"))?;
        Ok(fs)
    }

    /// The CRI tests' sandbox (pause) image: a static busybox, which
    /// sleeps as the sandbox's process and runs the tests' app containers.
    pub fn for_pause(busybox: &Path) -> anyhow::Result<Self> {
        let mut fs = Rootfs::default();
        for dir in ["dev", "etc", "proc", "sys"] {
            fs.dir(Path::new(dir), 0o755);
        }
        fs.dir(Path::new("tmp"), 0o1777);
        fs.file(Path::new("bin/busybox"), busybox)?;
        Ok(fs)
    }

    fn dir(&mut self, path: &Path, mode: u32) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(parent, 0o755);
        }
        self.0.entry(path.to_owned()).or_insert(Node::Dir { mode });
    }

    fn add(&mut self, path: &Path, node: Node) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(parent, 0o755);
        }
        self.0.insert(path.to_owned(), node);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.add(Path::new(path), Node::Symlink { target: target.into() });
    }

    /// `source`'s content at `path`, with its permissions.
    fn file(&mut self, path: &Path, source: &Path) -> anyhow::Result<()> {
        let meta = std::fs::metadata(source).with_context(|| format!("{}: can't stat", source.display()))?;
        self.add(path, Node::File { source: source.to_owned(), mode: meta.permissions().mode() & 0o7777 });
        Ok(())
    }

    /// A dynamically linked host binary (or module) at `at` (absolute, as
    /// in the image), and each shared library it needs where the loader
    /// looks for it: the path `ldd` names.
    fn host_binary(&mut self, source: &Path, at: &Path) -> anyhow::Result<()> {
        self.file(at.strip_prefix("/")?, source)?;
        for lib in libraries(source)? {
            let real = std::fs::canonicalize(&lib).with_context(|| format!("{}: can't resolve", lib.display()))?;
            self.file(lib.strip_prefix("/")?, &real)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The layer: an uncompressed tar of every entry.
    pub fn to_tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, node) in &self.0 {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match node {
                Node::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_data(&mut header, path, std::io::empty())?;
                }
                Node::File { source, mode } => {
                    let file = std::fs::File::open(source).with_context(|| format!("opening {}", source.display()))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(file.metadata()?.len());
                    tar.append_data(&mut header, path, file).with_context(|| format!("adding {}", source.display()))?;
                }
                Node::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }
}

/// The host's `tool`, its links resolved.
fn host_command(tool: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("{tool} is not installed on this machine (the image takes it from the host)");
    }
    std::fs::canonicalize(&path).with_context(|| format!("resolving {path}"))
}

/// The shared libraries `bin` loads, and the dynamic loader, as `ldd`
/// names them.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd`'s output: each library and the loader.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Whether `bin` is statically linked: the CNI plugin is copied onto the
/// host and run there, whatever its C library.
pub fn is_static(bin: &Path) -> anyhow::Result<bool> {
    let out = Command::new("ldd").arg(bin).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(text.contains("statically linked") || text.contains("not a dynamic executable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f38)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f38)\n";
        assert_eq!(parse_ldd(text), [PathBuf::from("/lib/x86_64-linux-gnu/libmnl.so.0"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]);
    }

    #[test]
    fn parents_come_first_and_once() {
        let mut fs = Rootfs::default();
        fs.symlink("usr/sbin/iptables", "xtables-nft-multi");
        fs.dir(Path::new("tmp"), 0o1777);
        let tar = fs.to_tar().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            [("tmp".into(), 0o1777), ("usr".into(), 0o755), ("usr/sbin".into(), 0o755), ("usr/sbin/iptables".into(), 0o777)]
        );
    }
}
