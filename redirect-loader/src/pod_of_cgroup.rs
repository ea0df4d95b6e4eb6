//! Which pod a cgroup is, for the node's shared programs: the pod id in the
//! cgroup's storage (`POD_OF_CGROUP`, see `redirect_common::maps::names`).
//!
//! The kernel makes a cgroup's storage when the first program that uses the
//! map is attached to it, zeroed (no pod), and keeps it while the cgroup
//! lives. So the agent writes the id as soon as the storage exists: before
//! any link is changed where it exists already (a pod enrolled again under
//! a new id must never run a moment under the old one), else right after
//! the first link, which is one whose program does nothing without a pod
//! (see `programs::Prepared::attach`).

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};

use anyhow::Context as _;
use redirect_common::maps::{PodId, names};

use crate::{link, pins::Pins};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// Update flags: the element must exist (storage is never made from user
/// space).
const BPF_EXIST: u64 = 2;

/// The pinned map.
pub struct PodOfCgroup(OwnedFd);

impl PodOfCgroup {
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        link::get(&pins.map(names::POD_OF_CGROUP)).map(PodOfCgroup)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The pod written into `cgroup`'s storage (its id), if the cgroup has
    /// storage.
    pub fn get(&self, cgroup: u64) -> Option<PodId> {
        let mut value: PodId = 0;
        let mut attr = self.attr(&cgroup, &mut value);
        link::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
    }

    /// Writes `pod` into `cgroup`'s storage (which must exist).
    pub fn set(&self, cgroup: u64, pod: PodId) -> anyhow::Result<()> {
        let mut value = pod;
        let mut attr = self.attr(&cgroup, &mut value);
        attr[3] = BPF_EXIST;
        link::bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
            .map(drop)
            .with_context(|| format!("writing pod {pod} into the storage of cgroup {cgroup}"))
    }

    fn attr(&self, key: &u64, value: &mut PodId) -> [u64; 8] {
        let mut attr = [0u64; 8];
        // { map_fd: u32, pad }, { key: u64 }, { value: u64 }, { flags: u64 }
        attr[0] = u64::from(self.0.as_raw_fd() as u32);
        attr[1] = std::ptr::from_ref(key) as u64;
        attr[2] = std::ptr::from_mut(value) as u64;
        attr
    }
}
