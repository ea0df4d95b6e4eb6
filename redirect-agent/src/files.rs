//! Files replaced whole: written beside their target under a hidden name,
//! then renamed over it, so that a reader (a container runtime reading its
//! conflist, an agent starting from its state) finds the old file or the
//! new one, never part of one. What must also survive a crash of the node
//! is flushed to disk first ([`Survives`]).

use std::path::Path;

use anyhow::Context as _;

/// What a replaced file must outlive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Survives {
    /// A crash of the node: flushed before the rename, and the rename
    /// flushed after it. For what the next boot reads (the runtime its
    /// conflist and the plugin; the agent the MeshConfig it last had).
    NodeCrash,
    /// A crash of the agent, not of the node: no flush (the page cache
    /// outlives the process), and the old file swapped out rather than
    /// renamed over ([`swap_in`]). For what describes this boot's kernel
    /// objects only: the pods enrolled, whose netns and pinned programs a
    /// reboot takes with it. Two flushes at every enrolment held a burst of
    /// pod starts for nothing (0.3 ms each at the median on this
    /// workplace's disk, 4 ms at the tail).
    AgentCrash,
}

/// Replaces `path` with `bytes` in one rename. The temporary name starts
/// with a dot and has no `.conf`, `.conflist` or `.json` ending, so that a
/// CNI runtime listing the directory meanwhile passes it by.
pub(crate) fn replace(path: &Path, bytes: &[u8], survives: Survives) -> anyhow::Result<()> {
    replace_checked(path, survives, |tmp| std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display())), || Ok(()))
}

/// Replaces `path` in one rename with the file that `make` writes at the
/// temporary path it is given (`std::fs::copy`, say, which keeps the
/// source's permissions, as a binary needs). On failure the temporary is
/// removed and `path` is left as it was.
pub(crate) fn replace_with(path: &Path, make: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    replace_checked(path, Survives::NodeCrash, make, || Ok(()))
}

/// [`replace_with`], where `still` is asked right before the rename whether
/// to go on (it fails when what the new file was made from changed
/// meanwhile: another writer's new version must not be replaced by one
/// made from its old one).
pub(crate) fn replace_checked(
    path: &Path,
    survives: Survives,
    make: impl FnOnce(&Path) -> anyhow::Result<()>,
    still: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).with_context(|| format!("{}: no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{name}.fsm-redirect-tmp"));
    let durable = survives == Survives::NodeCrash;
    let result = make(&tmp).and_then(|()| if durable { flush(&tmp) } else { Ok(()) }).and_then(|()| still()).and_then(|()| {
        let renamed = if durable { std::fs::rename(&tmp, path) } else { swap_in(&tmp, path) };
        renamed.with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename itself, on disk: the directory's entry.
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if durable => flush(dir),
        _ => Ok(()),
    }
}

/// Puts `tmp` in place of `path` in one step, as a rename does, where the
/// file at `path` needs no guard against a crash of the node: the two are
/// exchanged (`renameat2(RENAME_EXCHANGE)`, Linux 3.15) and the old one,
/// now at `tmp`, removed. ext4 starts writing out a file renamed over
/// another (`auto_da_alloc`, its guard against an empty file after a
/// crash): 250 µs at the median on this workplace's disk, at every
/// enrolment, against 50 µs for the exchange and the removal. Where there
/// is no file to exchange with (the first write; a directory in the way,
/// which a rename refuses) or the file system can't exchange: a rename.
fn swap_in(tmp: &Path, path: &Path) -> std::io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        return std::fs::rename(tmp, path);
    }
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from, to) = (c(tmp)?, c(path)?);
    // SAFETY: two NUL-terminated paths that outlive the call. A raw
    // syscall: musl (the static image) has no renameat2 wrapper everywhere.
    let exchanged =
        unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_EXCHANGE) }
            == 0;
    if !exchanged {
        return std::fs::rename(tmp, path);
    }
    // The old file: a failure to remove it leaves a temporary that the
    // next write truncates, never the state.
    let _ = std::fs::remove_file(tmp);
    Ok(())
}

fn flush(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("flushing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-net.conflist");
        std::fs::write(&path, b"old").unwrap();
        replace(&path, b"new", Survives::AgentCrash).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("10-net.conflist")]);
    }

    #[test]
    fn a_file_for_this_boot_is_swapped_in_or_renamed_where_there_is_none_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for bytes in [&b"first"[..], b"second", b"third"] {
            replace(&path, bytes, Survives::AgentCrash).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        }
    }

    #[test]
    fn a_failed_rename_keeps_what_was_there_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way: rename(2) can't replace it with a file.
        let path = dir.path().join("state.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("kept"), b"x").unwrap();
        for survives in [Survives::NodeCrash, Survives::AgentCrash] {
            assert!(format!("{:#}", replace(&path, b"new", survives).unwrap_err()).contains("renaming"));
            assert!(path.join("kept").is_file());
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_copied_binary_keeps_its_mode_and_a_failed_copy_keeps_the_old_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("built"), dir.path().join("fsm-redirect-cni"));
        std::fs::write(&source, b"new binary").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&target, b"old binary").unwrap();
        fn copy(from: &Path) -> impl FnOnce(&Path) -> anyhow::Result<()> + '_ {
            move |tmp| std::fs::copy(from, tmp).map(drop).context("copying")
        }
        assert!(replace_with(&target, copy(&dir.path().join("missing"))).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old binary");
        replace_with(&target, copy(&source)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new binary");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o755);
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("built"), std::ffi::OsString::from("fsm-redirect-cni")]);
    }
}
