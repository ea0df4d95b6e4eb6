//! A pod's routes, and what the agent changes in its network itself, over
//! rtnetlink (the `netlink-packet-route` crate's messages), instead of
//! parsing `/proc/net/route` and `ipv6_route` and running iproute2's `ip`
//! in the namespace: the routes read, the IPv6 hand-over route and the
//! fsm-init guard's mark on `lo` written. A node needs no `ip` binary for
//! the agent.
//!
//! Each call opens a socket in the pod's namespace (a netlink socket stays
//! in the namespace it was made in), sends one request and reads until the
//! kernel's answer: its acknowledgement, its error, or the end of a dump.

use std::{io, net::IpAddr, path::Path};

use anyhow::Context as _;
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The kernel's `local` routing table.
pub(super) const RT_TABLE_LOCAL: u8 = 255;

/// Sends `message` with `flags` on a fresh socket of this thread's
/// namespace; the messages the kernel answers with, up to its ack (or the
/// end of a dump). The kernel's error comes back as the io::Error it is.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answers = Vec::new();
    let mut received = vec![0; 32 * 1024];
    loop {
        let size = socket.recv(&mut &mut received[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&received[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink answer: {e}")))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                // An ack (error 0), or the end of a dump.
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// A route as the kernel dumps it, reduced to what the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DumpedRoute {
    pub table: u32,
    pub kind: RouteType,
    pub net: IpNet,
    /// The interface it leaves by (a multipath route's first hop's).
    pub oif: Option<u32>,
}

impl DumpedRoute {
    fn of(route: RouteMessage) -> Option<Self> {
        let h = &route.header;
        let mut table = u32::from(h.table);
        let mut dst: Option<IpAddr> = None;
        let mut oif = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::MultiPath(hops) => oif = oif.or(hops.first().map(|h| h.interface_index)),
                _ => {}
            }
        }
        // No destination: the default route of its family.
        let dst = match (dst, h.address_family) {
            (Some(a), _) => a,
            (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let net = IpNet::new(dst, h.destination_prefix_length).ok()?;
        Some(DumpedRoute { table, kind: h.kind, net, oif })
    }
}

/// Every route of this thread's namespace, IPv4 then IPv6, each family in
/// the kernel's order (a namespace without IPv6 has none of it).
pub(super) fn routes() -> io::Result<Vec<DumpedRoute>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let answers = match request(RouteNetlinkMessage::GetRoute(query), NLM_F_REQUEST | NLM_F_DUMP) {
            Ok(a) => a,
            // A kernel or namespace without IPv6.
            Err(e) if family == AddressFamily::Inet6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => continue,
            Err(e) => return Err(e),
        };
        out.extend(answers.into_iter().filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => DumpedRoute::of(r),
            _ => None,
        }));
    }
    Ok(out)
}

/// `lo`'s index in this thread's namespace.
fn lo_index() -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex("lo").context("no lo in the pod's network namespace")
}

/// The hand-over route as `ip -6 route replace local <prefix> dev lo table
/// local` makes it.
fn handover_route(prefix: ipnet::Ipv6Net, lo: u32) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: AddressFamily::Inet6,
        destination_prefix_length: prefix.prefix_len(),
        table: RT_TABLE_LOCAL,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    route.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet6(prefix.network())), RouteAttribute::Oif(lo)];
    route
}

/// Puts `prefix` on `lo` as a local route in the local table of the netns
/// at `path` (present: replaced if it is there), or takes it away (absent:
/// nothing to do if it is not there).
pub(super) fn set_local_route(path: &Path, prefix: ipnet::Ipv6Net, present: bool) -> anyhow::Result<()> {
    super::in_netns(path, move || {
        let route = handover_route(prefix, lo_index()?);
        let result = if present {
            request(RouteNetlinkMessage::NewRoute(route), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
        } else {
            request(RouteNetlinkMessage::DelRoute(route), NLM_F_REQUEST | NLM_F_ACK)
        };
        match result {
            Ok(_) => Ok(()),
            // Deleting a route that is not there.
            Err(e) if !present && e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("{} local {prefix} dev lo table local", if present { "adding" } else { "removing" })),
        }
    })
    .with_context(|| format!("netns {}", path.display()))
}

/// Sets the alias of `lo` in the netns at `path` (empty: none).
pub(super) fn set_lo_alias(path: &Path, alias: &'static str) -> anyhow::Result<()> {
    super::in_netns(path, move || {
        let mut link = LinkMessage::default();
        link.header.index = lo_index()?;
        link.attributes = vec![LinkAttribute::IfAlias(alias.to_owned())];
        request(RouteNetlinkMessage::SetLink(link), NLM_F_REQUEST | NLM_F_ACK)
            .with_context(|| format!("setting lo's alias to {alias:?}"))?;
        Ok(())
    })
    .with_context(|| format!("netns {}", path.display()))
}

/// The alias of `lo` in the netns at `path`, if it has one.
pub(super) fn lo_alias(path: &Path) -> anyhow::Result<Option<String>> {
    super::in_netns(path, || {
        let mut link = LinkMessage::default();
        link.header.index = lo_index()?;
        let answers = request(RouteNetlinkMessage::GetLink(link), NLM_F_REQUEST).context("reading lo")?;
        Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => link.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => Some(alias),
                _ => None,
            }),
            _ => None,
        }))
    })
    .with_context(|| format!("netns {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dumped_route_names_its_table_destination_and_interface() {
        use netlink_packet_route::route::RouteNextHop;
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = 16;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet("10.96.0.0".parse().unwrap())), RouteAttribute::Oif(3)];
        let d = DumpedRoute::of(r.clone()).unwrap();
        assert_eq!((d.table, d.kind, d.net, d.oif), (254, RouteType::Unicast, "10.96.0.0/16".parse().unwrap(), Some(3)));
        // A table above 255 is in its attribute; no destination is the
        // default route; a multipath route leaves by its first hop.
        r.header.destination_prefix_length = 0;
        let hop = |i| {
            let mut h = RouteNextHop::default();
            h.interface_index = i;
            h
        };
        r.attributes = vec![RouteAttribute::Table(1000), RouteAttribute::MultiPath(vec![hop(7), hop(8)])];
        let d = DumpedRoute::of(r.clone()).unwrap();
        assert_eq!((d.table, d.net, d.oif), (1000, "0.0.0.0/0".parse().unwrap(), Some(7)));
        r.header.address_family = AddressFamily::Inet6;
        assert_eq!(DumpedRoute::of(r).unwrap().net, "::/0".parse::<IpNet>().unwrap());
    }

    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn the_hand_over_route_is_iproute2s_local_route_on_lo() {
        let prefix: ipnet::Ipv6Net = "fd3c:a7e1:52b9:1::/64".parse().unwrap();
        let route = handover_route(prefix, 1);
        assert_eq!(route.header.table, 255);
        assert_eq!(route.header.kind, RouteType::Local);
        assert_eq!(route.header.scope, RouteScope::Host);
        assert_eq!(route.header.destination_prefix_length, 64);
        let dst: Ipv6Addr = "fd3c:a7e1:52b9:1::".parse().unwrap();
        assert!(route.attributes.contains(&RouteAttribute::Destination(RouteAddress::Inet6(dst))));
        assert!(route.attributes.contains(&RouteAttribute::Oif(1)));
    }
}
