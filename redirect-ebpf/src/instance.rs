//! What each object of this crate carries (the node's, `main.rs`, and the
//! pod's, `pod.rs`): the instance's globals, set by the agent at load time,
//! the license and the panic handler.

use aya_ebpf::Global;

/// The pod this program instance serves; 0 in the node's shared instance.
#[unsafe(no_mangle)]
static POD_ID: Global<u32> = Global::new(0);

/// Set by the agent on kernels whose `bpf_sk_lookup` has `ingress_ifindex`
/// (5.17 and later). Only sk_lookup reads it.
#[unsafe(no_mangle)]
pub static HAS_INGRESS_IFINDEX: Global<u8> = Global::new(0);

/// The pod of a program of a pod's own instance: sk_lookup, sockops,
/// sk_msg, and the cgroup hooks' `_own` programs.
#[inline(always)]
pub fn own_pod_id() -> u32 {
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
