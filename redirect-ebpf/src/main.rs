//! The kernel half of the dataplane. One instance of these programs is
//! loaded per enrolled pod, with `POD_ID` set at load time, and attached to
//! the pod's cgroup; all instances share the pinned maps of `maps.rs`.
//!
//! - `connect4` and `connect6` decide each TCP `connect()` (the outbound
//!   table; an IPv4-mapped destination as IPv4) and rewrite redirected ones
//!   to <an address of the pod's own>:<proxy port>, the address naming
//!   where it left the original destination (`redirect_common::handover`).
//! - `sk_lookup` (on the pod's network namespace) decides each arriving
//!   connection (the inbound table) and hands redirected ones to the
//!   proxy's inbound listener.
//! - `getsockopt` answers the proxy's `SO_ORIGINAL_DST` (IPv4) and
//!   `IP6T_SO_ORIGINAL_DST` (IPv6) from those, and leaves every other call
//!   exactly as the kernel answered.
//! - `sendmsg4/6`, `recvmsg4/6`, `getpeername4/6` (and connect4/6 for UDP)
//!   send the pod's DNS for 127.0.0.153:53 to the sidecar's local DNS proxy
//!   where the MeshConfig turns it on, as fsm-init's DNAT rule does.
//! - `sockops` registers the proxy's inbound listener and, with `sk_msg`,
//!   is the fast path of local hops (fast_path.rs); attached only while a
//!   pod needs it.
#![no_std]
// The one atomic fetch-and-add of the hand-over (connect.rs).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![no_main]

mod connect;
mod dns;
mod fast_path;
mod fields;
mod maps;
mod policy;
mod sk_lookup;
mod sockops;
mod sockopt;

use aya_ebpf::Global;

/// The pod this program instance serves; set by the agent at load time.
#[unsafe(no_mangle)]
static POD_ID: Global<u32> = Global::new(0);

/// Set by the agent on kernels whose `bpf_sk_lookup` has `ingress_ifindex`
/// (5.17 and later).
#[unsafe(no_mangle)]
static HAS_INGRESS_IFINDEX: Global<u8> = Global::new(0);

#[inline(always)]
fn pod_id() -> u32 {
    POD_ID.load()
}

// Only for the BPF target: checked for the host (`cargo clippy
// --workspace`), the crate gets std's, through its dependencies.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
