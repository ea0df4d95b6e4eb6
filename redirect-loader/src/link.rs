//! cgroup bpf_links, created and pinned directly with the bpf() syscall.
//!
//! aya 0.16 can turn connect4 and sockops links into pinnable `FdLink`s but
//! not cgroup/sockopt ones; doing all three the same way keeps one path.
//! A cgroup link is always multi-attach (the kernel ignores no flags here:
//! it wants 0), so other programs on the pod's cgroup or its parents keep
//! running beside ours.

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_link_type`.
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_NETNS: u32 = 5;

/// `enum bpf_attach_type` values of the hooks we use.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum AttachType {
    CgroupSockOps = 3,
    CgroupInet4Connect = 10,
    CgroupInet6Connect = 11,
    CgroupUdp4Sendmsg = 14,
    CgroupUdp6Sendmsg = 15,
    CgroupUdp4Recvmsg = 19,
    CgroupUdp6Recvmsg = 20,
    CgroupGetsockopt = 21,
    CgroupInet4Getpeername = 29,
    CgroupInet6Getpeername = 30,
    /// Attached to a sockhash, with `BPF_PROG_ATTACH`.
    SkMsgVerdict = 7,
    /// Attached to a network namespace, not a cgroup.
    SkLookup = 36,
}

pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zero-padded bpf_attr of 64 bytes, large enough for
    // both commands; the kernel checks the unused tail is zero.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc as i32) }
}

/// `BPF_LINK_CREATE` of `prog` on `target` (a cgroup, or a network
/// namespace for `SkLookup`).
pub fn create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach: AttachType) -> std::io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    // { prog_fd: u32, target_fd: u32 }, { attach_type: u32, flags: u32 }
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
    attr[1] = attach as u32 as u64;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_ATTACH` of `prog` to `target` (a sockhash for sk_msg): the
/// target holds the program from then on. Sockmap links only exist from
/// Linux 6.10; this works on every kernel we support.
pub fn prog_attach(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach: AttachType) -> std::io::Result<()> {
    let mut attr = [0u64; 8];
    // { target_fd: u32, attach_bpf_fd: u32 }, { attach_type: u32, attach_flags: u32 }
    attr[0] = u64::from(target.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32);
    attr[1] = attach as u32 as u64;
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// `BPF_OBJ_PIN`: a link stays attached (a map stays) as long as the pin
/// exists.
pub fn pin(link: impl AsFd, path: &Path) -> anyhow::Result<()> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 8];
    // { pathname: u64, bpf_fd: u32, file_flags: u32 }
    attr[0] = name.as_ptr() as u64;
    attr[1] = u64::from(link.as_fd().as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

/// `BPF_OBJ_GET`: a descriptor of a pinned object (here: a program).
pub fn get(path: &Path) -> anyhow::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 8];
    // { pathname: u64, bpf_fd: u32, file_flags: u32 }
    attr[0] = name.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE`: the link runs `prog` from now on, in place of its
/// program, with no moment in between where neither runs (cgroup links
/// from Linux 5.7, network namespace links from 5.8).
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut attr = [0u64; 8];
    // { link_fd: u32, new_prog_fd: u32 }, { flags: u32, old_prog_fd: u32 }
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What the kernel says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// The link's id: the same link for as long as it lives, whatever
    /// program `update` gives it.
    pub id: u32,
    /// The program it runs.
    pub prog_id: u32,
    /// What a cgroup or network namespace link is attached to: the cgroup's
    /// id (its directory's inode number) or the namespace's inode number. 0:
    /// its target is gone (the cgroup removed, the namespace freed), and the
    /// link with it. `None`: another kind of link.
    pub target: Option<u64>,
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a link.
pub fn info(link: BorrowedFd<'_>) -> std::io::Result<Info> {
    // struct bpf_link_info { u32 type, id, prog_id; union (8-aligned, at
    // offset 16) { cgroup: { u64 cgroup_id; u32 attach_type }, netns: {
    // u32 netns_ino; u32 attach_type }, ... } }
    let mut info = [0u64; 8];
    let mut attr = [0u64; 8];
    // { bpf_fd: u32, info_len: u32 }, { info: u64 }
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let target = match info[0] as u32 {
        BPF_LINK_TYPE_CGROUP => Some(info[2]),
        BPF_LINK_TYPE_NETNS => Some(info[2] & 0xffff_ffff),
        _ => None,
    };
    Ok(Info { id: (info[0] >> 32) as u32, prog_id: info[1] as u32, target })
}

/// [`Info::target`] of a link.
pub fn target_id(link: BorrowedFd<'_>) -> std::io::Result<Option<u64>> {
    info(link).map(|i| i.target)
}
