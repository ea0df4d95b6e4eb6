//! The test's stand-ins for a pod's processes:
//!
//! - `serve PORT TAG`: answers every connection with `TAG <local addr>`.
//! - `proxy PORT TAG`: an unmodified proxy: answers `TAG <SO_ORIGINAL_DST>`
//!   (or `TAG none:<errno>`), then echoes lines until EOF.
//! - `dial ADDR [--bind PORT] [--hold SECS]`: connects, prints the first
//!   line it gets; with --hold, keeps pinging for SECS and prints
//!   `held ok N` or `held broken: ...`.
//! - `sockopts`: prints what a set of getsockopt calls return, to compare a
//!   run inside an enrolled pod with one outside.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::FromRawFd as _,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["serve", port, tag] => serve(port.parse().unwrap(), tag, false),
        ["proxy", port, tag] => serve(port.parse().unwrap(), tag, true),
        ["dial", addr, rest @ ..] => dial(addr.parse().unwrap(), rest),
        ["sockopts"] => sockopts(),
        _ => Err(format!("usage: netprobe serve|proxy|dial|sockopts ... (got {a:?})")),
    };
    if let Err(e) = result {
        println!("error: {e}");
        std::process::exit(1);
    }
}

fn serve(port: u16, tag: &str, proxy: bool) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind {port}: {e}"))?;
    println!("listening");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let tag = tag.to_owned();
        std::thread::spawn(move || {
            let line = if proxy {
                match redirect_agent::original_dst::original_dst(&s) {
                    Ok(orig) => format!("{tag} {orig}"),
                    Err(e) => format!("{tag} none:{}", e.raw_os_error().unwrap_or(0)),
                }
            } else {
                format!("{tag} {}", s.local_addr().unwrap())
            };
            let _ = writeln!(s, "{line}");
            // Echo until the client closes.
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut buf = String::new();
            while r.read_line(&mut buf).map(|n| n > 0).unwrap_or(false) {
                let _ = s.write_all(buf.as_bytes());
                buf.clear();
            }
        });
    }
    Ok(())
}

/// Timeouts stretch under `REDIRECT_TEST_TIME_SCALE` (emulated VMs).
fn secs(n: u64) -> Duration {
    let scale: u64 = std::env::var("REDIRECT_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    Duration::from_secs(n * scale.max(1))
}

fn connect(addr: SocketAddr, bind: Option<u16>) -> Result<TcpStream, String> {
    let Some(port) = bind else {
        return TcpStream::connect_timeout(&addr, secs(3)).map_err(|e| format!("connect: {e}"));
    };
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), 4);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        if libc::bind(fd, (&raw const sa).cast(), 16) != 0 {
            return Err(format!("bind :{port}: {}", std::io::Error::last_os_error()));
        }
        let SocketAddr::V4(v4) = addr else { return Err("IPv4 only".into()) };
        sa.sin_port = v4.port().to_be();
        sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        if libc::connect(fd, (&raw const sa).cast(), 16) != 0 {
            return Err(format!("connect: {}", std::io::Error::last_os_error()));
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

fn dial(addr: SocketAddr, rest: &[&str]) -> Result<(), String> {
    let mut bind = None;
    let mut hold = None;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or("flag without value")?;
        match *flag {
            "--bind" => bind = Some(v.parse().map_err(|_| "bad --bind")?),
            "--hold" => hold = Some(v.parse::<u64>().map_err(|_| "bad --hold")?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let s = connect(addr, bind)?;
    s.set_read_timeout(Some(secs(3))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    r.read_line(&mut first).map_err(|e| format!("read: {e}"))?;
    println!("{}", first.trim());
    let _ = std::io::stdout().flush();
    if let Some(secs) = hold {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut n = 0;
        let mut w = s;
        while Instant::now() < end {
            let mut line = String::new();
            if w.write_all(b"ping\n").is_err() || r.read_line(&mut line).map(|n| n == 0).unwrap_or(true) || line != "ping\n" {
                println!("held broken after {n} round trips");
                return Ok(());
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("held ok {n}");
    }
    Ok(())
}

/// getsockopt into a buffer of `cap` bytes: (return code or -errno, length, FNV hash of the bytes).
fn getsockopt(fd: i32, level: i32, name: i32, cap: usize) -> (i32, u32, u64) {
    let mut buf = vec![0u8; cap];
    let mut len = cap as libc::socklen_t;
    // SAFETY: buf has `cap` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    let rc = if rc == 0 { 0 } else { -std::io::Error::last_os_error().raw_os_error().unwrap_or(0) };
    let hash = buf[..(len as usize).min(cap)].iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
    (rc, len, hash)
}

fn sockopts() -> Result<(), String> {
    // SAFETY: plain socket calls.
    unsafe {
        let tcp = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let groups: Vec<libc::gid_t> = (10_000..12_000).collect();
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        let mut pair = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr());
        let results = [
            ("SO_RCVBUF in 8 KiB", getsockopt(tcp, libc::SOL_SOCKET, libc::SO_RCVBUF, 8192)),
            ("SO_RCVBUF in 4 B", getsockopt(tcp, libc::SOL_SOCKET, libc::SO_RCVBUF, 4)),
            // TCP_INFO's bytes change between calls (timers): rc and length only.
            ("TCP_INFO", without_bytes(getsockopt(tcp, libc::IPPROTO_TCP, libc::TCP_INFO, 512))),
            ("SO_PEERGROUPS (8000 B, more than a page)", getsockopt(pair[0], libc::SOL_SOCKET, libc::SO_PEERGROUPS, 16384)),
            ("SO_PEERGROUPS too small", getsockopt(pair[0], libc::SOL_SOCKET, libc::SO_PEERGROUPS, 64)),
            ("SO_ORIGINAL_DST, not redirected", getsockopt(tcp, 0, 80, 16)),
            ("unknown option of a made-up level", getsockopt(tcp, 0x1234, 1, 6000)),
        ];
        for (name, (rc, len, hash)) in results {
            println!("{name}: rc={rc} len={len} hash={hash:x}");
        }
    }
    Ok(())
}

fn without_bytes((rc, len, _): (i32, u32, u64)) -> (i32, u32, u64) {
    (rc, len, 0)
}
