//! IPv6 address fields of the kernel's contexts (`bpf_sock_addr`,
//! `bpf_sk_lookup`, `bpf_sock`), read and written word by word at constant
//! offsets: the verifier refuses arithmetic on a context or socket pointer,
//! which a copy of the whole array may compile to.

use redirect_common::addr::Ip6;

#[inline(always)]
pub unsafe fn read_ip6(field: *const [u32; 4]) -> Ip6 {
    let w = field.cast::<u32>();
    // SAFETY: `field` points into a valid context or socket.
    unsafe {
        Ip6([
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
            core::ptr::read_volatile(w.add(2)),
            core::ptr::read_volatile(w.add(3)),
        ])
    }
}

#[inline(always)]
pub unsafe fn write_ip6(field: *mut [u32; 4], addr: Ip6) {
    let w = field.cast::<u32>();
    // SAFETY: `field` points into a valid, writable context field.
    unsafe {
        core::ptr::write_volatile(w, addr.0[0]);
        core::ptr::write_volatile(w.add(1), addr.0[1]);
        core::ptr::write_volatile(w.add(2), addr.0[2]);
        core::ptr::write_volatile(w.add(3), addr.0[3]);
    }
}
