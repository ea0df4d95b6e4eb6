//! `SO_ORIGINAL_DST`, asked the way a proxy asks it: Envoy's
//! `original_dst` listener filter asks `SOL_IP`/`SO_ORIGINAL_DST` on an
//! IPv4 connection (also one a dual-stack listener accepted, whose
//! addresses are IPv4-mapped) and `SOL_IPV6`/`IP6T_SO_ORIGINAL_DST` on an
//! IPv6 one.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream},
    os::fd::AsRawFd as _,
};

use redirect_common::{IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6};

fn getsockopt<T>(stream: &TcpStream, level: i32, name: i32) -> io::Result<T> {
    // SAFETY: a zeroed sockaddr_in or sockaddr_in6 is valid; the kernel
    // writes at most `len` bytes.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    let rc = unsafe { libc::getsockopt(stream.as_raw_fd(), level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let a: libc::sockaddr_in = getsockopt(stream, SOL_IP, SO_ORIGINAL_DST)?;
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port)))
}

/// `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`.
pub fn original_dst6(stream: &TcpStream) -> io::Result<SocketAddrV6> {
    let a: libc::sockaddr_in6 = getsockopt(stream, SOL_IPV6, IP6T_SO_ORIGINAL_DST)?;
    Ok(SocketAddrV6::new(Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id))
}

/// The question for the connection's family, as Envoy picks it.
pub fn original_dst_any(stream: &TcpStream) -> io::Result<SocketAddr> {
    match stream.local_addr()? {
        SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => original_dst6(stream).map(SocketAddr::V6),
        _ => original_dst(stream).map(SocketAddr::V4),
    }
}
