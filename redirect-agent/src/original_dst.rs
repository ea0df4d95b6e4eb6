//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, as a proxy asks it.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
};

pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    // SAFETY: a zeroed sockaddr_in is valid; the kernel writes at most len.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            redirect_common::SOL_IP,
            redirect_common::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port)))
}
