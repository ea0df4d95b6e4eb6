//! The test's stand-ins for a pod's processes:
//!
//! - `serve PORT TAG`: answers every connection with `TAG <local addr>`
//!   (PORT on 0.0.0.0, or ADDR:PORT: `[::]:PORT` is dual-stack). Addresses
//!   are printed as the connection's family has them: an IPv4 connection
//!   that a dual-stack listener accepted prints its IPv4 address.
//! - `proxy PORT TAG`: an unmodified proxy: answers `TAG <SO_ORIGINAL_DST>`
//!   (`IP6T_SO_ORIGINAL_DST` on an IPv6 connection, as Envoy asks), or
//!   `TAG none:<errno>`, then echoes lines until EOF.
//! - `proxy-asked PORT TAG`: `proxy`, but it asks `SO_ORIGINAL_DST` only
//!   once the client has sent a line: a proxy slow to ask.
//! - `ask-after-flood VICTIM TARGET N`: connects to VICTIM (a `proxy-asked`
//!   listener), then sends N TCP SYNs to TARGET from raw sockets, each from
//!   another source address and port (that nobody answers), then sends a
//!   line and prints the first line VICTIM answers.
//! - `http PORT TAG`: an HTTP/1.1 server whose every response (header
//!   `server: netprobe`) has the body `TAG <local addr>`.
//! - `dial ADDR [--bind PORT] [--hold SECS] [--delay-ms MS] [--fastopen]
//!   [--socket-first MS] [--ask]`: connects (from source PORT; with TCP Fast Open:
//!   `sendto(MSG_FASTOPEN)` carrying a first line, no `connect()`; with
//!   --socket-first, the socket is made MS before it connects), (waits MS),
//!   prints the first line it gets; with --hold, keeps pinging for SECS and
//!   prints `held ok N` or `held broken: ...`; with --ask, then prints
//!   `asked ORIG` (its own socket's `SO_ORIGINAL_DST`) or `asked none:ERRNO`.
//! - `connrate`, `pingpong`, `burst`, `stream`: load generators for the
//!   bench and the fast-path tests (see each function).
//! - `sockopts`: prints what a set of getsockopt calls return, to compare a
//!   run inside an enrolled pod with one outside.
//! - `dns-serve ADDR:PORT ANSWER`: a DNS server on UDP ADDR:PORT that
//!   answers every A query with address ANSWER (and AAAA with none).
//! - `dns-query ADDR:PORT NAME [--connected]`: sends an A query for NAME
//!   from a UDP socket (IPv6 for a bracketed ADDR), with `sendto` or, with
//!   --connected, `connect` and `send`; prints `answer A from SRC` (the
//!   reply's source as `recvfrom` reports it; with --connected also `peer
//!   P`, `getpeername`'s), or `error: ...` after 2 seconds without one.
//! - `resolve RESOLV_CONF UID NAME` (as root): glibc's resolver with
//!   RESOLV_CONF as `/etc/resolv.conf` (bound over it in a mount namespace
//!   of its own), as UID: execs `getent ahostsv4 NAME`.
//! - `peek ADDR PORT`: what a process of the pod that is not its proxy
//!   could learn: dials ADDR (if redirected, its peer is a hand-over
//!   address), listens on that peer's IP at PORT itself, connects there and
//!   asks `SO_ORIGINAL_DST` on the socket it accepted; prints `peek IP
//!   answered ORIG` or `peek IP refused ERRNO`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

/// p50 and p99 of microsecond samples.
fn percentiles(mut v: Vec<u64>) -> (u64, u64) {
    v.sort_unstable();
    let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    (at(0.50), at(0.99))
}

/// Connects to `addr` again and again for `millis`, reading the first line
/// each time; prints `connections=N seconds=S p50_us=.. p99_us=..
/// errors=E wrong=W` (connect-to-first-byte latency; `wrong`: first lines
/// other than `expect`).
fn connrate(addr: SocketAddr, millis: u64, expect: Option<&str>) -> Result<(), String> {
    let end = Instant::now() + Duration::from_millis(millis);
    let start = Instant::now();
    let (mut lat, mut errors, mut wrong) = (Vec::new(), 0u64, 0u64);
    let mut buf = [0u8; 256];
    while Instant::now() < end {
        let t = Instant::now();
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                use std::io::Read as _;
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        lat.push(t.elapsed().as_micros() as u64);
                        let got = String::from_utf8_lossy(&buf[..n]);
                        if expect.is_some_and(|e| got.trim() != e) {
                            wrong += 1;
                        }
                    }
                    _ => errors += 1,
                }
                close_without_time_wait(&s);
            }
            Err(_) => errors += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = lat.len();
    let (p50, p99) = percentiles(lat);
    println!("connections={n} seconds={secs:.3} p50_us={p50} p99_us={p99} errors={errors} wrong={wrong}");
    Ok(())
}

/// Makes the coming close an abortive one (RST, SO_LINGER 0), so the
/// client keeps no TIME_WAIT socket. Without it a load generator measures
/// its own port exhaustion: TIME_WAIT sockets of a connection to a
/// non-loopback address (the iptables path: the socket sees the service IP)
/// can't be reused under the default `tcp_tw_reuse=2`, and ~14k of them
/// (the even half of the ephemeral range) stop new connects within
/// seconds; seen here: 10k conn/s down to 300/s after 2 s. Loopback ones
/// (direct and eBPF) are reused. Every path closes the same way.
fn close_without_time_wait(s: &TcpStream) {
    let abort = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &abort);
}

/// One connection, `n` request/response round trips of `size`-byte lines
/// through whatever answers (the proxy echoes); prints rtt percentiles and
/// rate.
fn pingpong(addr: SocketAddr, n: usize, size: usize) -> Result<(), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).ok();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut first = String::new();
    r.read_line(&mut first).map_err(|e| e.to_string())?;
    let msg = format!("{}\n", "x".repeat(size.max(1) - 1));
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let mut line = String::new();
    for _ in 0..n {
        let t = Instant::now();
        w.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(lat);
    println!("round_trips={n} seconds={secs:.3} p50_us={p50} p99_us={p99} mib_per_s={:.1}", (n * 2 * msg.len()) as f64 / secs / 1048576.0);
    Ok(())
}

/// `conns` connections on each of `threads` threads, each writing `lines`
/// numbered lines at once (one write each, before reading anything: the
/// first ones race the peer's accept), then reading the greeting and the
/// echo of every line. Prints `connections=N ok=M misordered=K errors=E`;
/// a connection is misordered when its echo differs from what was sent.
fn burst(addr: SocketAddr, threads: usize, conns: usize, lines: usize) -> Result<(), String> {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut ok, mut misordered, mut errors) = (0u64, 0u64, 0u64);
                for c in 0..conns {
                    let sent: Vec<String> = (0..lines).map(|i| format!("{t}.{c}.{i} {}\n", "y".repeat(i % 97))).collect();
                    let result = (|| -> std::io::Result<bool> {
                        let mut s = TcpStream::connect_timeout(&addr, secs(3))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(secs(5)))?;
                        for line in &sent {
                            s.write_all(line.as_bytes())?;
                        }
                        let mut r = BufReader::new(s);
                        let mut got = String::new();
                        r.read_line(&mut got)?;
                        let mut same = true;
                        for line in &sent {
                            got.clear();
                            r.read_line(&mut got)?;
                            same &= got == *line;
                        }
                        Ok(same)
                    })();
                    match result {
                        Ok(true) => ok += 1,
                        Ok(false) => misordered += 1,
                        Err(_) => errors += 1,
                    }
                }
                (ok, misordered, errors)
            })
        })
        .collect();
    let (mut ok, mut misordered, mut errors) = (0, 0, 0);
    for w in workers {
        let (o, m, e) = w.join().map_err(|_| "worker panicked")?;
        (ok, misordered, errors) = (ok + o, misordered + m, errors + e);
    }
    println!("connections={} ok={ok} misordered={misordered} errors={errors}", threads * conns);
    Ok(())
}

/// One connection, `mib` MiB each way: a writer thread streams a pattern
/// while this one reads the echo back and checks every byte. Prints
/// `bytes=N seconds=S mib_per_s=R intact=true|false`.
fn stream(addr: SocketAddr, mib: usize) -> Result<(), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut r = BufReader::with_capacity(1 << 16, s.try_clone().unwrap());
    let mut first = String::new();
    r.read_line(&mut first).map_err(|e| e.to_string())?;
    // 64 KiB lines of a pattern that shifts with the line number.
    let line = |n: usize| -> Vec<u8> {
        let mut v: Vec<u8> = (0..65535).map(|i| b'a' + ((i + n) % 26) as u8).collect();
        v.push(b'\n');
        v
    };
    let total = mib * 16;
    let mut w = s;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for n in 0..total {
            w.write_all(&line(n))?;
        }
        Ok(())
    });
    let mut intact = true;
    let mut buf = Vec::with_capacity(1 << 16);
    for n in 0..total {
        buf.clear();
        r.read_until(b'\n', &mut buf).map_err(|e| e.to_string())?;
        intact &= buf == line(n);
    }
    writer.join().map_err(|_| "writer panicked")?.map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    println!("bytes={} seconds={secs:.3} mib_per_s={:.1} intact={intact}", total << 16, mib as f64 / secs);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["serve", port, tag] => serve(bind_addr(port), tag, Serve::Local),
        ["proxy", port, tag] => serve(bind_addr(port), tag, Serve::Proxy),
        ["proxy-asked", port, tag] => serve(bind_addr(port), tag, Serve::ProxyWhenAsked),
        ["ask-when-told", addr] => ask_when_told(addr.parse().unwrap()),
        ["connect-flood", addr, n] => connect_flood(addr.parse().unwrap(), n.parse().unwrap()),
        ["ask-after-flood", victim, target, n] => ask_after_flood(victim.parse().unwrap(), target.parse().unwrap(), n.parse().unwrap()),
        ["http", port, tag] => http(bind_addr(port), tag),
        ["dial", addr, rest @ ..] => dial(addr.parse().unwrap(), rest),
        ["sockopts"] => sockopts(),
        ["peek", addr, port] => peek(addr.parse().unwrap(), port.parse().unwrap()),
        ["connrate", addr, millis] => connrate(addr.parse().unwrap(), millis.parse().unwrap(), None),
        ["connrate", addr, millis, expect] => connrate(addr.parse().unwrap(), millis.parse().unwrap(), Some(expect)),
        ["pingpong", addr, n] => pingpong(addr.parse().unwrap(), n.parse().unwrap(), 1024),
        ["pingpong", addr, n, size] => pingpong(addr.parse().unwrap(), n.parse().unwrap(), size.parse().unwrap()),
        ["burst", addr, threads, conns, lines] => {
            burst(addr.parse().unwrap(), threads.parse().unwrap(), conns.parse().unwrap(), lines.parse().unwrap())
        }
        ["stream", addr, mib] => stream(addr.parse().unwrap(), mib.parse().unwrap()),
        ["resolve", conf, uid, name] => resolve(conf, uid.parse().unwrap(), name),
        ["dns-serve", addr, answer] => dns_serve(addr.parse().unwrap(), answer.parse().unwrap()),
        ["dns-query", addr, name, rest @ ..] => dns_query(addr.parse().unwrap(), name, rest == ["--connected"]),
        _ => Err(format!("usage: netprobe serve|proxy|dial|sockopts ... (got {a:?})")),
    };
    if let Err(e) = result {
        println!("error: {e}");
        std::process::exit(1);
    }
}

/// A DNS message: a query for `name` (type A), or, with `answer`, the
/// response to `query` (its id and question) holding it.
mod dns_wire {
    pub fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    /// The response to `query` (None: not a query with one question).
    pub fn response(query: &[u8], answer: std::net::Ipv4Addr) -> Option<Vec<u8>> {
        if query.len() < 12 || query[4..6] != [0, 1] {
            return None;
        }
        let mut end = 12;
        while *query.get(end)? != 0 {
            end += 1 + usize::from(query[end]);
        }
        let question = query.get(12..end + 5)?;
        let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
        let a = qtype == 1;
        let mut m = query[..2].to_vec();
        m.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
        m.extend_from_slice(question);
        if a {
            m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
            m.extend_from_slice(&answer.octets());
        }
        Some(m)
    }

    /// The first A record of a response with id `id`.
    pub fn first_a(response: &[u8], id: u16) -> Option<std::net::Ipv4Addr> {
        if response.len() < 12 || response[..2] != id.to_be_bytes() || response[6..8] == [0, 0] {
            return None;
        }
        let rdata = response.len().checked_sub(4)?;
        Some(std::net::Ipv4Addr::new(response[rdata], response[rdata + 1], response[rdata + 2], response[rdata + 3]))
    }
}

fn resolve(conf: &str, uid: u32, name: &str) -> Result<(), String> {
    use std::{ffi::CString, os::unix::process::CommandExt as _};
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let (conf, target) = (CString::new(conf).unwrap(), c"/etc/resolv.conf");
    // A machine without the file (a test VM) gets an empty one to bind over.
    if !std::path::Path::new("/etc/resolv.conf").exists() {
        std::fs::write("/etc/resolv.conf", "").map_err(|e| format!("creating /etc/resolv.conf: {e}"))?;
    }
    // SAFETY: plain syscalls with valid, NUL-terminated paths.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os("unshare"));
        }
        if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(os("making / private"));
        }
        if libc::mount(conf.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
            return Err(os("binding the resolv.conf"));
        }
        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
            return Err(os("dropping to the uid"));
        }
    }
    Err(format!("exec getent: {}", std::process::Command::new("getent").args(["ahostsv4", name]).exec()))
}

fn dns_serve(addr: SocketAddr, answer: std::net::Ipv4Addr) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"))?;
    println!("listening");
    std::io::stdout().flush().unwrap();
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if let Some(reply) = dns_wire::response(&buf[..n], answer) {
            let _ = socket.send_to(&reply, from);
        }
    }
}

fn dns_query(to: SocketAddr, name: &str, connected: bool) -> Result<(), String> {
    let local: SocketAddr = if to.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
    let socket = std::net::UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(secs(2))).unwrap();
    let id = (std::process::id() & 0xffff) as u16;
    let query = dns_wire::query(id, name);
    if connected {
        socket.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
        socket.send(&query).map_err(|e| format!("send: {e}"))?;
    } else {
        socket.send_to(&query, to).map_err(|e| format!("sendto {to}: {e}"))?;
    }
    let mut buf = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("recvfrom: {e}"))?;
    let answer = dns_wire::first_a(&buf[..n], id).ok_or("not an answer to the query")?;
    if connected {
        let peer = socket.peer_addr().map_err(|e| e.to_string())?;
        println!("answer {answer} from {from} peer {peer}");
    } else {
        println!("answer {answer} from {from}");
    }
    Ok(())
}

fn peek(addr: SocketAddr, port: u16) -> Result<(), String> {
    let first = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let via = first.peer_addr().map_err(|e| e.to_string())?.ip();
    let listener = TcpListener::bind((via, port)).map_err(|e| format!("bind {via}:{port}: {e}"))?;
    let _client = TcpStream::connect((via, port)).map_err(|e| format!("connect {via}:{port}: {e}"))?;
    let (accepted, _) = listener.accept().map_err(|e| e.to_string())?;
    match redirect_agent::original_dst::original_dst_any(&accepted) {
        Ok(orig) => println!("peek {via} answered {orig}"),
        Err(e) => println!("peek {via} refused {}", e.raw_os_error().unwrap_or(0)),
    }
    drop(first);
    Ok(())
}

/// Connects to `addr`, says `connected`, and once a line comes on stdin
/// sends `ask` and prints the answer (a `proxy-asked` listener's: where
/// the connection was going, as `SO_ORIGINAL_DST` tells it then).
fn ask_when_told(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(secs(10))).unwrap();
    println!("connected");
    let _ = std::io::stdout().flush();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).map_err(|e| format!("stdin: {e}"))?;
    s.write_all(b"ask\n").map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    println!("{}", line.trim());
    Ok(())
}

/// `n` connects to `addr`, each on a socket of its own closed at once
/// (whatever the connect gave: refused where nothing listens). Each one
/// that is redirected writes a hand-over slot.
fn connect_flood(addr: SocketAddr, n: u32) -> Result<(), String> {
    let mut refused = 0;
    for _ in 0..n {
        let s =
            socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
        if s.connect(&addr.into()).is_err() {
            refused += 1;
        }
    }
    println!("connects={n} refused={refused}");
    Ok(())
}

fn ask_after_flood(victim: SocketAddr, target: std::net::SocketAddrV4, n: u32) -> Result<(), String> {
    let mut s = TcpStream::connect(victim).map_err(|e| format!("connect {victim}: {e}"))?;
    s.set_read_timeout(Some(secs(10))).unwrap();
    let sent = syn_flood(target, n)?;
    s.write_all(b"ask\n").map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    println!("sent {sent} SYNs");
    println!("{}", line.trim());
    Ok(())
}

/// Sends `n` SYNs to `target`, from 10.250.0.0/16 (addresses nobody here
/// has: the SYN-ACKs go nowhere), each from its own address and port.
/// Returns how many the kernel took.
fn syn_flood(target: std::net::SocketAddrV4, n: u32) -> Result<u32, String> {
    // SAFETY: a raw socket we own; every buffer passed is valid for its length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
        }
        let dst = target.ip().octets();
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst) },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        for i in 0..n {
            let src = [10, 250, (i >> 8 & 0xff) as u8, (i & 0xff) as u8];
            let sport = 1024 + (i >> 16) as u16;
            let packet = syn_packet(src, dst, sport, target.port(), i);
            let rc =
                libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, (&raw const to).cast(), size_of::<libc::sockaddr_in>() as u32);
            if rc > 0 {
                sent += 1;
            }
        }
        libc::close(fd);
        Ok(sent)
    }
}

/// An IPv4 packet holding a TCP SYN (the kernel fills in the IP checksum).
fn syn_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // The checksum over the pseudo-header (addresses, protocol, length) and the segment.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| b.chunks(2).for_each(|w| sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])));
    add(&src);
    add(&dst);
    add(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    add(&p[20..]);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[36..38].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

/// `PORT` (on 0.0.0.0) or `ADDR:PORT`.
fn bind_addr(arg: &str) -> SocketAddr {
    arg.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], arg.parse::<u16>().unwrap())))
}

/// An address as its connection's family has it: an IPv4 connection that a
/// dual-stack listener accepted holds it IPv4-mapped.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// What a `serve` listener answers a connection with.
#[derive(Clone, Copy, PartialEq)]
enum Serve {
    /// Its local address.
    Local,
    /// Its `SO_ORIGINAL_DST`, at once.
    Proxy,
    /// Its `SO_ORIGINAL_DST`, once the client has sent a line.
    ProxyWhenAsked,
}

fn serve(addr: SocketAddr, tag: &str, mode: Serve) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let tag = tag.to_owned();
        std::thread::spawn(move || {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut buf = String::new();
            if mode == Serve::ProxyWhenAsked && !r.read_line(&mut buf).is_ok_and(|n| n > 0) {
                return;
            }
            let line = if mode == Serve::Local {
                format!("{tag} {}", canonical(s.local_addr().unwrap()))
            } else {
                match redirect_agent::original_dst::original_dst_any(&s) {
                    Ok(orig) => format!("{tag} {orig}"),
                    Err(e) => format!("{tag} none:{}", e.raw_os_error().unwrap_or(0)),
                }
            };
            let _ = writeln!(s, "{line}");
            // Echo until the client closes.
            buf.clear();
            while r.read_line(&mut buf).map(|n| n > 0).unwrap_or(false) {
                let _ = s.write_all(buf.as_bytes());
                buf.clear();
            }
        });
    }
    Ok(())
}

/// Answers each HTTP/1.1 request (up to the blank line; no body) with
/// `TAG <local addr>`, then closes.
fn http(addr: SocketAddr, tag: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let body = format!("{tag} {}\n", canonical(s.local_addr().unwrap()));
        std::thread::spawn(move || {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(s, "HTTP/1.1 200 OK\r\nserver: netprobe\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        });
    }
    Ok(())
}

/// Timeouts stretch under `REDIRECT_TEST_TIME_SCALE` (emulated VMs).
fn secs(n: u64) -> Duration {
    let scale: u64 = std::env::var("REDIRECT_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    Duration::from_secs(n * scale.max(1))
}

/// A socket of `addr`'s family, bound to source port `bind` if given.
fn socket_for(addr: SocketAddr, bind: Option<u16>) -> Result<socket2::Socket, String> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    if let Some(port) = bind {
        s.set_reuse_address(true).map_err(|e| e.to_string())?;
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        s.bind(&any.into()).map_err(|e| format!("bind :{port}: {e}"))?;
    }
    Ok(s)
}

fn connect(addr: SocketAddr, bind: Option<u16>, socket_first: u64) -> Result<TcpStream, String> {
    let s = socket_for(addr, bind)?;
    std::thread::sleep(Duration::from_millis(socket_first));
    s.connect_timeout(&addr.into(), secs(3)).map_err(|e| format!("connect: {e}"))?;
    Ok(s.into())
}

/// TCP Fast Open: no `connect()`; the first `sendto(MSG_FASTOPEN)` starts
/// the connection (the kernel's connect hooks still run) and carries
/// `first` (in the SYN where the kernel may).
fn connect_fastopen(addr: SocketAddr, bind: Option<u16>, socket_first: u64, first: &[u8]) -> Result<TcpStream, String> {
    let s = socket_for(addr, bind)?;
    std::thread::sleep(Duration::from_millis(socket_first));
    let to: socket2::SockAddr = addr.into();
    // SAFETY: plain sendto on a descriptor we own, with a valid address.
    let rc = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            first.as_ptr().cast(),
            first.len(),
            libc::MSG_FASTOPEN,
            to.as_ptr().cast(),
            to.len(),
        )
    };
    if rc < 0 {
        return Err(format!("sendto(MSG_FASTOPEN): {}", std::io::Error::last_os_error()));
    }
    Ok(s.into())
}

fn dial(addr: SocketAddr, rest: &[&str]) -> Result<(), String> {
    let mut bind = None;
    let mut hold = None;
    let mut delay = 0;
    let mut fastopen = false;
    let mut ask = false;
    let mut socket_first = 0;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        if *flag == "--fastopen" || *flag == "--ask" {
            fastopen |= *flag == "--fastopen";
            ask |= *flag == "--ask";
            continue;
        }
        let v = it.next().ok_or("flag without value")?;
        match *flag {
            "--bind" => bind = Some(v.parse().map_err(|_| "bad --bind")?),
            "--hold" => hold = Some(v.parse::<u64>().map_err(|_| "bad --hold")?),
            "--delay-ms" => delay = v.parse::<u64>().map_err(|_| "bad --delay-ms")?,
            "--socket-first" => socket_first = v.parse::<u64>().map_err(|_| "bad --socket-first")?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let s = if fastopen { connect_fastopen(addr, bind, socket_first, b"fastopen\n")? } else { connect(addr, bind, socket_first)? };
    std::thread::sleep(Duration::from_millis(delay));
    s.set_read_timeout(Some(secs(3))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    r.read_line(&mut first).map_err(|e| format!("read: {e}"))?;
    println!("{}", first.trim());
    if ask {
        match redirect_agent::original_dst::original_dst_any(&s) {
            Ok(orig) => println!("asked {orig}"),
            Err(e) => println!("asked none:{}", e.raw_os_error().unwrap_or(0)),
        }
    }
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
