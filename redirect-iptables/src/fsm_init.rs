//! Finding fsm-init's own rules in a pod's network namespace, for a pod
//! whose spec the agent does not know (enrolled by hand without
//! `--pod-manifest`), and for `diagnose` of the pods fsm-init serves.
//!
//! fsm-init runs whichever `iptables-restore` its image has: nf_tables or
//! legacy. Both are read, without creating anything, and without a process
//! where there is nothing to read (this runs at each refresh for a pod
//! enrolled without its spec): a `nat` table of either backend is asked
//! of the kernel first (nf_tables: a netlink dump of the namespace's IPv4
//! tables; legacy: `/proc/net/ip_tables_names`); only where one exists is
//! its `*-save` run for the chain names. `iptables-legacy-save -t nat`
//! must not run otherwise: it would instantiate the legacy nat table in the
//! namespace, and with it NAT and conntrack for every connection of the pod.

use std::path::Path;

use anyhow::Context as _;

/// The chain every fsm-init script declares first: FSM's name since v1.0
/// (`FSM_PROXY_*`), and the forms its troubleshooting page shows
/// (`fsm_PROXY_*`, and OSM's `PROXY_*`).
pub const INBOUND_CHAINS: [&str; 3] = ["FSM_PROXY_INBOUND", "fsm_PROXY_INBOUND", "PROXY_INBOUND"];

/// fsm-init's inbound chain in an `iptables-save` text, if declared there.
fn declared(save: &str) -> Option<&'static str> {
    INBOUND_CHAINS
        .into_iter()
        .find(|chain| save.lines().any(|l| l.strip_prefix(':').and_then(|l| l.split_whitespace().next()) == Some(chain)))
}

/// Where fsm-init's rules are in the pod's netns: the chain found and the
/// backend holding it (`None`: neither backend has them).
pub fn found(netns: &Path) -> anyhow::Result<Option<String>> {
    let (nft, legacy) = redirect_node::netns::in_netns(netns, || Ok((nft_tables()?.iter().any(|t| t == "nat"), legacy_nat_table()?)))?;
    if nft && let Some(chain) = declared(&crate::apply::save_with(netns, "iptables-save")?) {
        return Ok(Some(format!("{chain} (iptables, nf_tables)")));
    }
    if legacy && let Some(chain) = declared(&crate::apply::save_with(netns, "iptables-legacy-save")?) {
        return Ok(Some(format!("{chain} (iptables-legacy)")));
    }
    Ok(None)
}

/// Whether this thread's netns has a legacy (x_tables) nat table: listed in
/// its `/proc/net/ip_tables_names` once something made one.
fn legacy_nat_table() -> anyhow::Result<bool> {
    match std::fs::read_to_string("/proc/thread-self/net/ip_tables_names") {
        Ok(names) => Ok(names.lines().any(|l| l.trim() == "nat")),
        // No ip_tables module: no legacy table anywhere.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).context("reading /proc/net/ip_tables_names"),
    }
}

/// The nf_tables tables of family `ip` in this thread's netns, by name
/// (`NFT_MSG_GETTABLE`, dumped over nfnetlink; what `nft list tables ip`
/// prints, and where iptables-nft keeps `nat`).
fn nft_tables() -> anyhow::Result<Vec<String>> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    /// `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE`, and its answer's
    /// `NFT_MSG_NEWTABLE`.
    const GETTABLE: u16 = 10 << 8 | 1;
    const NEWTABLE: u16 = 10 << 8;
    const NLM_F_REQUEST_DUMP: u16 = 0x1 | 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NFPROTO_IPV4: u8 = 2;
    const NFTA_TABLE_NAME: u16 = 1;
    let mut socket = Socket::new(NETLINK_NETFILTER).context("nfnetlink: opening a socket")?;
    socket.bind_auto().context("nfnetlink: binding")?;
    socket.connect(&SocketAddr::new(0, 0)).context("nfnetlink: connecting")?;
    // struct nlmsghdr, then struct nfgenmsg { family, version, res_id }.
    let mut request = Vec::with_capacity(20);
    request.extend_from_slice(&20u32.to_ne_bytes());
    request.extend_from_slice(&GETTABLE.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST_DUMP.to_ne_bytes());
    request.extend_from_slice(&[0; 8]);
    request.extend_from_slice(&[NFPROTO_IPV4, 0, 0, 0]);
    socket.send(&request, 0).context("nfnetlink: asking for the tables")?;
    let mut tables = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full().context("nfnetlink: reading the answer")?;
        let mut rest = &datagram[..];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let message = rest.get(16..len).context("nfnetlink: a truncated message")?;
            match kind {
                NLMSG_DONE => return Ok(tables),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(message.get(..4).context("nfnetlink: a truncated error")?.try_into().unwrap());
                    anyhow::bail!("nfnetlink: listing the tables: {}", std::io::Error::from_raw_os_error(-errno));
                }
                NEWTABLE => tables.extend(attribute(message.get(4..).unwrap_or_default(), NFTA_TABLE_NAME)),
                _ => {}
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// A string attribute of type `kind` among netlink attributes.
fn attribute(mut attrs: &[u8], kind: u16) -> Option<String> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let value = attrs.get(4..len)?;
        if this == kind {
            return Some(String::from_utf8_lossy(value).trim_end_matches('\0').to_owned());
        }
        attrs = attrs.get(len.next_multiple_of(4)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{attribute, declared};

    #[test]
    fn reads_a_string_attribute_among_others() {
        // NFTA_TABLE_FLAGS (u32), then NFTA_TABLE_NAME "nat\0" (padded).
        let attrs = [8, 0, 2, 0, 0, 0, 0, 0, 8, 0, 1, 0, b'n', b'a', b't', 0];
        assert_eq!(attribute(&attrs, 1).as_deref(), Some("nat"));
        assert_eq!(attribute(&attrs, 3), None);
        assert_eq!(attribute(&attrs[..10], 1), None, "truncated");
    }

    #[test]
    fn finds_the_chain_fsm_init_declares_and_nothing_else() {
        let fsm = "*nat\n:PREROUTING ACCEPT [0:0]\n:FSM_PROXY_INBOUND - [0:0]\n-A PREROUTING -p tcp -j FSM_PROXY_INBOUND\nCOMMIT\n";
        assert_eq!(declared(fsm), Some("FSM_PROXY_INBOUND"));
        assert_eq!(declared(":fsm_PROXY_INBOUND - [0:0]\n"), Some("fsm_PROXY_INBOUND"));
        assert_eq!(declared(":PROXY_INBOUND - [0:0]\n"), Some("PROXY_INBOUND"));
        for none in ["*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", ":MY_FSM_PROXY_INBOUND - [0:0]\n", "-A X -j FSM_PROXY_INBOUND\n", ""] {
            assert_eq!(declared(none), None, "{none:?}");
        }
    }
}
