//! The decision log: for a pod whose decisions are logged
//! (`maps::pod_flags::LOG_DECISIONS`), connect4 and connect6 put one
//! [`DecisionRecord`] per `connect()` into the `DECISIONS` ring buffer, and
//! the agent prints it.
//!
//! A fixed record, formatted in user space, rather than a formatted log
//! call in the program (aya-log): the verifier walked a log call's
//! formatting code again for every path that reached it, about once per
//! rule of the table. That was about 53 of the 62 ms that verifying a
//! pod's programs took on kernel 6.18 (the programs are verified once per
//! pod; `docs/benchmarks.md`).

use core::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use bytemuck::{Pod, Zeroable};

use crate::{addr::Ip6, maps::PodId};

/// One outbound decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DecisionRecord {
    /// The pod that connected.
    pub pod: PodId,
    /// The UID of the process that called `connect()`.
    pub uid: u32,
    /// Where it was going (an IPv4 destination: in mapped form).
    pub dst: Ip6,
    /// Where it was sent instead, if `redirected`.
    pub to: Ip6,
    /// The destination port.
    pub dst_port: u16,
    /// The port it was sent to instead, if `redirected`.
    pub to_port: u16,
    /// The rule that decided (`decision::OutboundRule` as a number).
    pub rule: u8,
    /// 1: an IPv6 connection; 0: IPv4 (an IPv4 socket's, or an IPv6
    /// socket's to a mapped address).
    pub v6: u8,
    /// 1: sent to `to`:`to_port`; 0: left as it was.
    pub redirected: u8,
    /// Zero.
    pub _pad: u8,
}

impl DecisionRecord {
    /// An IPv4 connection's record; `to`: where it was sent instead.
    #[inline(always)]
    pub fn v4(pod: PodId, uid: u32, dst: u32, dst_port: u16, to: Option<(u32, u16)>, rule: u8) -> Self {
        let (to_addr, to_port) = to.unwrap_or((0, 0));
        DecisionRecord {
            pod,
            uid,
            dst: Ip6::mapped(dst),
            to: Ip6::mapped(to_addr),
            dst_port,
            to_port,
            rule,
            v6: 0,
            redirected: u8::from(to.is_some()),
            _pad: 0,
        }
    }

    /// An IPv6 connection's record; `to`: where it was sent instead.
    #[inline(always)]
    pub fn v6(pod: PodId, uid: u32, dst: Ip6, dst_port: u16, to: Option<(Ip6, u16)>, rule: u8) -> Self {
        let (to_addr, to_port) = to.unwrap_or((Ip6::UNSPECIFIED, 0));
        DecisionRecord { pod, uid, dst, to: to_addr, dst_port, to_port, rule, v6: 1, redirected: u8::from(to.is_some()), _pad: 0 }
    }
}

/// An address and port as the log shows them: `a.b.c.d:port`, `[v6]:port`.
struct Endpoint {
    addr: Ip6,
    port: u16,
    v6: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v6, self.addr.to_mapped_v4()) {
            (false, Some(v4)) => write!(f, "{}:{}", Ipv4Addr::from(v4), self.port),
            _ => write!(f, "[{}]:{}", Ipv6Addr::from(self.addr.octets()), self.port),
        }
    }
}

impl fmt::Display for DecisionRecord {
    /// `pod 3 uid 1000 -> 10.96.0.10:80 redirected to 127.0.0.6:15001 (rule 10)`,
    /// `pod 3 uid 1500 -> 10.97.0.10:80 direct (rule 3)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = self.v6 != 0;
        write!(f, "pod {} uid {} -> {} ", self.pod, self.uid, Endpoint { addr: self.dst, port: self.dst_port, v6 })?;
        if self.redirected != 0 {
            write!(f, "redirected to {} ", Endpoint { addr: self.to, port: self.to_port, v6 })?;
        } else {
            f.write_str("direct ")?;
        }
        write!(f, "(rule {})", self.rule)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString as _;

    use super::*;

    #[test]
    fn reads_as_the_log_line_of_each_family_and_verdict() {
        let ip4 = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        let ip6 = |s: &str| Ip6::from_octets(s.parse::<Ipv6Addr>().unwrap().octets());
        let redirected = DecisionRecord::v4(3, 1000, ip4("10.96.0.10"), 80, Some((ip4("127.0.0.6"), 15001)), 10);
        assert_eq!(redirected.to_string(), "pod 3 uid 1000 -> 10.96.0.10:80 redirected to 127.0.0.6:15001 (rule 10)");
        let direct = DecisionRecord::v4(3, 1500, ip4("10.97.0.10"), 80, None, 3);
        assert_eq!(direct.to_string(), "pod 3 uid 1500 -> 10.97.0.10:80 direct (rule 3)");
        let v6 = DecisionRecord::v6(4, 1000, ip6("fd00::10"), 443, Some((ip6("fd7f::1:2"), 15001)), 10);
        assert_eq!(v6.to_string(), "pod 4 uid 1000 -> [fd00::10]:443 redirected to [fd7f::1:2]:15001 (rule 10)");
        let v6_direct = DecisionRecord::v6(4, 1000, ip6("fe80::1"), 80, None, 4);
        assert_eq!(v6_direct.to_string(), "pod 4 uid 1000 -> [fe80::1]:80 direct (rule 4)");
        // An IPv6 connection to a mapped address is logged as IPv4 by
        // connect6 (`v4`); a v6 record keeps the IPv6 form.
        let mapped = DecisionRecord::v6(4, 1000, Ip6::mapped(ip4("10.0.0.1")), 80, None, 10);
        assert_eq!(mapped.to_string(), "pod 4 uid 1000 -> [::ffff:10.0.0.1]:80 direct (rule 10)");
    }
}
