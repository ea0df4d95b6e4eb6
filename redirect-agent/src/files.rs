//! Files replaced whole: written beside their target under a hidden name,
//! flushed to disk, then renamed over it, so that a reader (a container
//! runtime reading its conflist, an agent starting from its state) finds
//! the old file or the new one, never part of one, also after a crash of
//! the node.

use std::path::Path;

use anyhow::Context as _;

/// Replaces `path` with `bytes` in one rename. The temporary name starts
/// with a dot and has no `.conf`, `.conflist` or `.json` ending, so that a
/// CNI runtime listing the directory meanwhile passes it by.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_with(path, |tmp| std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display())))
}

/// Replaces `path` in one rename with the file that `make` writes at the
/// temporary path it is given (`std::fs::copy`, say, which keeps the
/// source's permissions, as a binary needs). On failure the temporary is
/// removed and `path` is left as it was.
pub(crate) fn replace_with(path: &Path, make: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    replace_checked(path, make, || Ok(()))
}

/// [`replace_with`], where `still` is asked right before the rename whether
/// to go on (it fails when what the new file was made from changed
/// meanwhile: another writer's new version must not be replaced by one
/// made from its old one).
pub(crate) fn replace_checked(
    path: &Path,
    make: impl FnOnce(&Path) -> anyhow::Result<()>,
    still: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).with_context(|| format!("{}: no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{name}.fsm-redirect-tmp"));
    let result = make(&tmp)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all().with_context(|| format!("flushing {}", tmp.display())))
        .and_then(|()| still())
        .and_then(|()| std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename itself, on disk: the directory's entry.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("flushing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-net.conflist");
        std::fs::write(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("10-net.conflist")]);
    }

    #[test]
    fn a_failed_rename_keeps_what_was_there_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way: rename(2) can't replace it with a file.
        let path = dir.path().join("state.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("kept"), b"x").unwrap();
        assert!(format!("{:#}", replace(&path, b"new").unwrap_err()).contains("renaming"));
        assert!(path.join("kept").is_file());
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
