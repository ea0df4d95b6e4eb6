//! cgroup v2: where it is mounted and which group is a pod's.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The cgroup2 mount point, read from /proc/mounts (hybrid layouts mount it
/// at /sys/fs/cgroup/unified, pure v2 ones at /sys/fs/cgroup).
///
/// Read once per process: /proc/mounts grows with every pod's netns mount,
/// and each enrolment resolves every enrolled pod's cgroup, so reading it
/// each time made a burst of enrolments quadratic in the file.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    mount().map(Path::to_owned)
}

fn mount() -> anyhow::Result<&'static Path> {
    // Only a found mount is kept; a failed read is tried again next call
    // (`OnceLock::get_or_try_init` is not stable).
    static MOUNT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(mount) = MOUNT.get() {
        return Ok(mount);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mount = parse_cgroup2_mount(&mounts).context("no cgroup2 file system is mounted (the eBPF dataplane needs cgroup v2)")?;
    Ok(MOUNT.get_or_init(|| mount))
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// Resolves a pod's cgroup, given absolute or relative to the cgroup2 mount,
/// and checks that it is a directory of the cgroup2 hierarchy.
pub fn resolve(path: &Path) -> anyhow::Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let full = below(&mount, path);
    if !full.join("cgroup.procs").is_file() {
        bail!("cgroup {}: no such cgroup (no {}/cgroup.procs)", path.display(), full.display());
    }
    // `..` and symbolic links resolved: one group, one path, so that
    // nesting and duplicates can be told by comparing paths. The mount
    // followed by plain names is that already: cgroup2 (kernfs) holds no
    // symbolic links, and the resolving costs more than the rest of the
    // check, which runs for every enrolled pod at each enrolment.
    let full = match plain_below(&full, &mount) {
        Some(plain) => plain,
        None => full.canonicalize().with_context(|| format!("cgroup {}: resolving", path.display()))?,
    };
    if !full.starts_with(&mount) {
        bail!("cgroup {}: not under the cgroup2 mount {}", path.display(), mount.display());
    }
    Ok(full)
}

/// A cgroup's path as `resolve` gave it when it was recorded, without
/// looking at the file system again (None where it can't be told so: not
/// plain names below the mount, which `resolve` then checks).
pub fn as_recorded(path: &Path) -> Option<PathBuf> {
    plain_below(path, mount().ok()?).or_else(|| resolve(path).ok())
}

/// `path`, absolute or relative to the cgroup2 `mount`, as an absolute path.
fn below(mount: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_owned() } else { mount.join(path) }
}

/// `path` (absolute, or relative to `mount`) without its repeated and
/// trailing slashes and its `.`, if it is `mount` followed by plain names
/// only (no `..`). Read as bytes: this runs for every enrolled pod at each
/// enrolment, and `Path::components` took most of that check's time on a
/// node of 140 pods.
fn plain_below(path: &Path, mount: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    fn names(path: &[u8]) -> impl Iterator<Item = &[u8]> {
        path.split(|b| *b == b'/').filter(|n| !n.is_empty() && *n != b".")
    }
    let (path, mount) = (path.as_os_str().as_bytes(), mount.as_os_str().as_bytes());
    let mut rest = names(path);
    // An absolute path names the mount's names first (`/a/bc` is not
    // below `/a/b`).
    if path.starts_with(b"/") {
        for name in names(mount) {
            if rest.next()? != name {
                return None;
            }
        }
    }
    let mut plain = Vec::with_capacity(mount.len() + path.len() + 1);
    for name in names(mount).chain(rest.by_ref()) {
        if name == b".." {
            return None;
        }
        plain.push(b'/');
        plain.extend_from_slice(name);
    }
    if plain.is_empty() {
        plain.push(b'/');
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(plain)))
}

/// Whether the group at `inner` is `outer` or below it, both as `resolve`
/// gives them (plain names, no trailing slash): compared as bytes, as
/// `plain_below` reads them, once for every enrolled pod.
fn within(inner: &Path, outer: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let outer = outer.as_os_str().as_bytes();
    inner.as_os_str().as_bytes().strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/") || outer == b"/")
}

/// Refuses a cgroup that would take in more than one pod: the cgroup2 root
/// (the whole node), or a group nested with an enrolled pod's (either way).
/// `enrolled`: each pod's cgroup as recorded (`as_recorded`); only one that
/// overlaps is looked at on the file system (is it still there?), as this
/// runs at every enrolment for every pod of the node.
pub fn refuse_overlap<'a>(new: &Path, enrolled: impl IntoIterator<Item = (&'a str, PathBuf)>) -> anyhow::Result<()> {
    if cgroup2_mount().is_ok_and(|m| m == new) {
        bail!("cgroup {}: the cgroup2 root holds every process of the node, not one pod", new.display());
    }
    let still_there = |other: &Path| other.join("cgroup.procs").is_file();
    for (name, other) in enrolled {
        if other == new && still_there(&other) {
            bail!("cgroup {}: already enrolled as pod {name}", new.display());
        }
        if within(&other, new) && still_there(&other) {
            bail!(
                "cgroup {}: holds the cgroup of pod {name} ({}); a pod's cgroup must not contain another's",
                new.display(),
                other.display()
            );
        }
        if within(new, &other) && still_there(&other) {
            bail!(
                "cgroup {}: inside the cgroup of pod {name} ({}); a pod's cgroup must not contain another's",
                new.display(),
                other.display()
            );
        }
    }
    Ok(())
}

/// Whether `path` names a cgroup directory, absolute or relative to the
/// cgroup2 mount, in any hierarchy.
pub fn exists(path: &Path) -> bool {
    if path.is_absolute() {
        return path.join("cgroup.procs").is_file();
    }
    cgroup2_mount().is_ok_and(|m| m.join(path).join("cgroup.procs").is_file())
}

/// The cgroup v2 group of process `pid`, as a path under the cgroup2
/// mount (from the `0::` line of /proc/PID/cgroup). That line is relative
/// to the reader's cgroup namespace: an agent in a container of its own
/// (on Kubernetes, cgroup v2) reads a pod's process as
/// `/../../kubepods/…`, which is resolved from where its own namespace
/// starts in the node's hierarchy (`own_namespace_root`).
pub fn of_process(pid: u32) -> Option<PathBuf> {
    let mount = cgroup2_mount().ok()?;
    let rel = group_line(pid)?;
    if !rel.starts_with("/..") {
        return Some(mount.join(rel.trim_start_matches('/')));
    }
    let mut path = own_namespace_root(&mount)?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if part == ".." {
            path.pop();
        } else {
            path.push(part);
        }
    }
    Some(mount.join(path))
}

/// The `0::` line of /proc/PID/cgroup.
fn group_line(pid: impl std::fmt::Display) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// Where the agent's cgroup namespace starts, relative to the cgroup2
/// mount: its own group, found in the mounted hierarchy by its pid, less
/// what /proc/self/cgroup says below the namespace's root. Found once.
fn own_namespace_root(mount: &Path) -> Option<PathBuf> {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let pid = std::process::id();
        let (own, _) = groups_below(mount).find(|(_, pids)| pids.contains(&pid))?;
        let below = group_line("self")?;
        let mut root = own.strip_prefix(mount).ok()?.to_owned();
        for _ in below.split('/').filter(|p| !p.is_empty()) {
            root.pop();
        }
        Some(root)
    })
    .clone()
}

/// Each group of the tree at `root` (itself included) with the processes
/// its `cgroup.procs` lists, read as the walk reaches it; groups that
/// can't be read (gone meanwhile) are passed by.
pub fn groups_below(root: &Path) -> impl Iterator<Item = (PathBuf, Vec<u32>)> {
    let mut dirs = vec![root.to_owned()];
    std::iter::from_fn(move || {
        let dir = dirs.pop()?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        Some((dir, procs.lines().filter_map(|l| l.trim().parse().ok()).collect()))
    })
}

/// Every process in `cgroup` and its descendants.
pub fn processes_below(cgroup: &Path) -> Vec<u32> {
    groups_below(cgroup).flat_map(|(_, pids)| pids).collect()
}

pub fn open(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("cgroup {}: can't open", path.display()))
}

#[cfg(test)]
mod proc_mounts {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        // The first cgroup2 line's mount point, its spaces as the kernel
        // escapes them (`\040`); none where no line is of type cgroup2.
        #[test]
        fn the_first_cgroup2_mount_is_found_among_any_other_lines(
            before in prop::collection::vec(("[a-z0-9]{1,8}", "/[a-z/]{0,20}", prop::sample::select(vec!["cgroup", "tmpfs", "proc", "bpf"])), 0..6),
            cgroup2 in prop::option::of("/[a-z][a-z ]{0,20}"),
            noise in "\\PC{0,40}",
        ) {
            let mut text: String = before.iter().map(|(d, m, t)| format!("{d} {m} {t} rw,nosuid 0 0\n")).collect();
            if let Some(dir) = &cgroup2 {
                text += &format!("cgroup2 {} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n", dir.replace(' ', "\\040"));
            }
            let found = parse_cgroup2_mount(&text);
            prop_assert_eq!(found.clone(), cgroup2.as_ref().map(PathBuf::from));
            text += &noise;
            prop_assert_eq!(parse_cgroup2_mount(&text).is_some(), found.is_some() || noise.split_whitespace().nth(2) == Some("cgroup2"));
        }

        // The bytes' reading of a path below the mount is what the path's
        // components say (`Path::components` drops `.` and repeated
        // slashes): a normalized path, or none where a `..` or another
        // directory comes in between.
        #[test]
        fn a_plain_path_below_the_mount_reads_as_its_components_say(
            mount in prop::sample::select(vec!["/", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/", "/cg"]),
            base in prop::sample::select(vec!["", "/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/cg", "/cg2", "/cg/."]),
            names in prop::collection::vec(prop::sample::select(vec!["", ".", "..", "kubepods", "pod1", "unified2", "cg", "a.b"]), 0..6),
            lead in prop::sample::select(vec!["", "/", "x/", "../"]),
            relative: bool,
        ) {
            let path = if relative { format!("{lead}{}", names.join("/")) } else { format!("{base}/{lead}{}", names.join("/")) };
            let (path, mount) = (Path::new(&path), Path::new(mount));
            use std::path::Component;
            let full = below(mount, path);
            let oracle = (full.starts_with(mount) && full.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))))
                .then(|| full.components().collect::<PathBuf>());
            prop_assert_eq!(plain_below(path, mount), oracle);
        }

        // Nesting told from the bytes of two plain paths is what their
        // components say.
        #[test]
        fn nesting_read_as_bytes_is_nesting_by_components(
            a in prop::collection::vec(prop::sample::select(vec!["k", "kubepods", "kube", "pods", "p1"]), 0..4),
            b in prop::collection::vec(prop::sample::select(vec!["k", "kubepods", "kube", "pods", "p1"]), 0..4),
        ) {
            let (a, b) = (PathBuf::from(format!("/{}", a.join("/"))), PathBuf::from(format!("/{}", b.join("/"))));
            prop_assert_eq!(within(&a, &b), a.starts_with(&b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(parse_cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_cgroup2_mount("sysfs /sys sysfs rw 0 0\n"), None);
    }

    #[test]
    fn only_plain_names_below_the_mount_skip_resolving() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let plain = |p: &str| plain_below(Path::new(p), mount);
        assert_eq!(plain("/sys/fs/cgroup/unified//kubepods/pod1/"), Some(PathBuf::from("/sys/fs/cgroup/unified/kubepods/pod1")));
        assert_eq!(plain("/sys/fs/cgroup/unified"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(plain("/sys/fs/cgroup/unified/kubepods/../pod1"), None);
        assert_eq!(plain("/sys/fs/cgroup/unified/./pod1"), Some(PathBuf::from("/sys/fs/cgroup/unified/pod1")));
        // Outside the mount, or reaching it through a link or `..`.
        assert_eq!(plain("/sys/fs/cgroup/unified2/pod1"), None);
        assert_eq!(plain("/cg/pod1"), None);
        assert_eq!(plain("/sys/fs/cgroup/x/../unified/pod1"), None);
    }
}
