//! `cgroup/getsockopt`: answers `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the
//! proxy's accepted socket of a redirected connection, as iptables REDIRECT
//! plus conntrack would.
//!
//! Every other call must look exactly as if no program were attached. For
//! those we set `optlen` to 0, which tells the kernel to keep its own answer
//! untouched: nothing is copied back to the caller. Returning with `optlen`
//! as it came would copy the program's view back, and that view is wrong in
//! two cases: a value longer than a page (the program only sees the first
//! page; some kernels then truncate or EFAULT) and, before Linux 6.x, a call
//! the kernel failed (ERANGE for a too small buffer: the caller would get its
//! own buffer size back instead of the size it needs; seen on 5.10 by the
//! VM matrix). Merbridge once clamped every option on the node by getting
//! this wrong.

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use redirect_common::{
    SO_ORIGINAL_DST, SOL_IP, handover,
    maps::{ConnKey, OrigDst},
};

use crate::maps::{HANDOVER, INBOUND_ORIG};

/// Let the call return (0 would turn it into EPERM).
const CONTINUE: i32 = 1;
const AF_INET: u16 = 2;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;

#[cgroup_sockopt(getsockopt)]
pub fn redirect_getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: the kernel passes a valid bpf_sockopt for this hook.
    unsafe {
        if (*so).level == SOL_IP && (*so).optname == SO_ORIGINAL_DST && answer_original_dst(so) {
            return CONTINUE;
        }
        // Not ours: the kernel's answer stands, untouched.
        core::ptr::write_volatile(&raw mut (*so).optlen, 0);
    }
    CONTINUE
}

/// Whether the call was answered.
unsafe fn answer_original_dst(so: *mut aya_ebpf::bindings::bpf_sockopt) -> bool {
    // SAFETY (whole body): `so` is the context; `sk` is checked for null and
    // the optval window is bounds-checked before every write, as the
    // verifier demands.
    unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        if sk.is_null() {
            return false;
        }
        let local_addr = u32::from_be((*sk).src_ip4);
        let orig = match handover::slot_of(local_addr) {
            // Sent here by connect4: the slot its address names, if it still
            // holds this pod's connection. One 8-byte load (see handover.rs).
            Some(slot) => match HANDOVER.get_ptr(slot).map(|h| core::ptr::read_volatile(h).orig_for(crate::pod_id(), local_addr)) {
                Some(Some((addr, port))) => OrigDst { addr, port, _pad: 0 },
                _ => return false,
            },
            // Steered here by sk_lookup, if at all.
            None => {
                // dst_port: network order in the low 16 bits; read as the
                // 32-bit field that kernels before 5.18 define, which later
                // ones still allow.
                let dst_port_field = core::ptr::addr_of!((*sk).dst_port).cast::<u32>();
                let key = ConnKey {
                    pod: crate::pod_id(),
                    src_addr: (*sk).dst_ip4.to_ne_bytes(),
                    dst_addr: (*sk).src_ip4.to_ne_bytes(),
                    src_port: u16::from_be(*dst_port_field as u16),
                    dst_port: (*sk).src_port as u16,
                };
                match INBOUND_ORIG.get(&key) {
                    Some(orig) => *orig,
                    None => return false,
                }
            }
        };
        let optval = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let optval_end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        if optval.add(SOCKADDR_IN_LEN) > optval_end {
            // The caller's buffer is too small: the kernel's answer stands.
            return false;
        }
        // struct sockaddr_in { sa_family_t; in_port_t (BE); in_addr (BE); zero[8] }
        let family = AF_INET.to_ne_bytes();
        let port = orig.port.to_be_bytes();
        let bytes: [u8; SOCKADDR_IN_LEN] = [
            family[0], family[1], port[0], port[1], orig.addr[0], orig.addr[1], orig.addr[2],
            orig.addr[3], 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), optval, SOCKADDR_IN_LEN);
        // Two separate 4-byte stores: the verifier refuses the one 8-byte
        // store LLVM would merge them into.
        core::ptr::write_volatile(&raw mut (*so).optlen, SOCKADDR_IN_LEN as i32);
        core::ptr::write_volatile(&raw mut (*so).retval, 0);
        crate::maps::count(redirect_common::maps::counter::ORIGINAL_DST_ANSWERED);
        true
    }
}
