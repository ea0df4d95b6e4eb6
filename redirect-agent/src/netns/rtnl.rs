//! What the agent changes in a pod's network itself, over rtnetlink (the
//! `netlink-packet-route` crate's messages), instead of running iproute2's
//! `ip` in the namespace: the IPv6 hand-over route and the fsm-init
//! guard's mark on `lo`. A node needs no `ip` binary for the agent.
//!
//! Each call opens a socket in the pod's namespace (a netlink socket stays
//! in the namespace it was made in), sends one request and reads until the
//! kernel's answer: its acknowledgement, its error, or the end of a dump.

use std::{io, path::Path};

use anyhow::Context as _;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The kernel's `local` routing table.
const RT_TABLE_LOCAL: u8 = 255;

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
