//! The node's object: the kernel half of the dataplane that every pod's
//! cgroup runs. The cgroup hooks' programs (connect, getsockopt, the UDP
//! ones) are loaded once per node and attached to every pod's cgroup: they
//! read their pod from the cgroup's storage (`POD_OF_CGROUP`), which the
//! agent writes at attach. The programs whose hook has no cgroup storage
//! (sk_lookup on the pod's netns, sk_msg on its sockhash) and sockops,
//! whose sockhash is the pod's own, are in the pod's object (`pod.rs`),
//! loaded per pod with `POD_ID` set at load time: a small object of their
//! own, because the loader reads and links a whole object for each pod.
//! Every instance of both shares the pinned maps of `maps.rs`.
//!
//! - `connect4` and `connect6` decide each TCP `connect()` (the outbound
//!   table; an IPv4-mapped destination as IPv4) and rewrite redirected ones
//!   to <an address of the pod's own>:<proxy port>, the address naming
//!   where it left the original destination (`redirect_common::handover`).
//! - `getsockopt` answers the proxy's `SO_ORIGINAL_DST` (IPv4) and
//!   `IP6T_SO_ORIGINAL_DST` (IPv6) from those, and leaves every other call
//!   exactly as the kernel answered.
//! - `sendmsg4/6`, `recvmsg4/6`, `getpeername4/6` (and connect4/6 for UDP)
//!   send the pod's DNS for 127.0.0.153:53 to the sidecar's local DNS proxy
//!   where the MeshConfig turns it on, as fsm-init's DNAT rule does.
#![no_std]
// The one atomic fetch-and-add of the hand-over (connect.rs).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![no_main]

mod connect;
mod dns;
mod fields;
mod instance;
mod maps;
mod policy;
mod sockopt;

use instance::own_pod_id;

/// The pod of a shared program (a cgroup hook's): the one the agent wrote
/// into the storage of the cgroup it runs for (0 until the agent has
/// written it: no pod, whose config no lookup finds).
///
/// # Safety
/// Only in a program whose links have storage: the kernel makes it at
/// attach for a program that uses the map, and a link given another
/// program in place keeps what it was made with. A pod's links made for
/// programs of its own (an earlier release's) have none: those get the
/// `_own` programs, which read `POD_ID` and never touch the map.
#[inline(always)]
unsafe fn storage_pod_id() -> u32 {
    // SAFETY: the caller's; the helper's pointer is valid for this run.
    unsafe { *maps::POD_OF_CGROUP.get() }
}
