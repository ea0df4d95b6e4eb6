//! Names, sizes and layouts of the maps the eBPF programs and the agent
//! share. Every map is pinned under the agent's bpffs directory by its name,
//! so a restarted or upgraded agent finds the same state.
//!
//! Policy maps are keyed by a [`PolicyId`], not by the pod. The MeshConfig's
//! lists are stored once, in a slot of their own that every pod points to
//! ([`PodConfig::mesh_policy`]): 10,000 CIDRs cost 10,000 entries however many
//! pods run. A pod's own slot ([`PodConfig::policy`]) holds what is the pod's
//! alone: its annotations' entries, its addresses, interfaces and routes.
//! Each owner has two slots (generations): the agent writes a change into the
//! idle one, then switches [`PodConfig`] in one map update, then clears the
//! old one. A connection sees one whole policy, old or new, never half of
//! each.

use bytemuck::{Pod, Zeroable};

pub use crate::addr::Ip6;

/// An IPv4 address as it sits in a packet: network byte order.
pub type Ipv4Be = [u8; 4];

/// Which pod a program instance serves. The agent loads one instance of the
/// programs per pod with this baked in as the global `POD_ID`.
pub type PodId = u32;

/// A pod's policy slot: `pod_id * 2 + generation`.
pub type PolicyId = u32;

/// The policy slot of `pod`'s generation 0 or 1.
pub const fn policy_id(pod: PodId, generation: u32) -> PolicyId {
    pod.wrapping_mul(2).wrapping_add(generation & 1)
}

/// The owner of the MeshConfig's slots (never a pod id).
pub const MESH_OWNER: PodId = 0x7fff_ffff;

/// The maps' names: the name of each pin, and of each map in the object.
pub mod names {
    /// Each pod's [`PodConfig`](super::PodConfig).
    pub const POD_CONFIG: &str = "POD_CONFIG";
    /// Each policy slot's local IPv4 addresses.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// Each policy slot's local IPv6 addresses.
    pub const LOCAL_ADDRS6: &str = "LOCAL_ADDRS6";
    /// Excluded IPv4 CIDRs (LPM).
    pub const EXCLUDED_CIDRS: &str = "EXCLUDED_CIDRS";
    /// Excluded IPv6 CIDRs (LPM).
    pub const EXCLUDED_CIDRS6: &str = "EXCLUDED_CIDRS6";
    /// The inclusion list's IPv4 CIDRs (LPM).
    pub const INCLUDED_CIDRS: &str = "INCLUDED_CIDRS";
    /// The inclusion list's IPv6 CIDRs (LPM).
    pub const INCLUDED_CIDRS6: &str = "INCLUDED_CIDRS6";
    /// Excluded ports, both directions.
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    /// Excluded interfaces of the pods, by index.
    pub const EXCLUDED_IFACES: &str = "EXCLUDED_IFACES";
    /// The pods' IPv4 routes, where one goes through an excluded device (LPM).
    pub const IFACE_ROUTES: &str = "IFACE_ROUTES";
    /// The pods' IPv6 routes, likewise.
    pub const IFACE_ROUTES6: &str = "IFACE_ROUTES6";
    /// The proxies' inbound listening sockets (sockhash).
    pub const PROXY_LISTENERS: &str = "PROXY_LISTENERS";
    /// The proxies' own outgoing sockets (socket-local storage: each
    /// entry lives and dies with its socket).
    pub const PROXY_DIALLED: &str = "PROXY_DIALLED";
    /// The per-CPU event counters.
    pub const COUNTERS: &str = "COUNTERS";
    /// The IPv4 outbound hand-over, a region per pod (array:
    /// `crate::handover::per_pod`).
    pub const HANDOVER_POD: &str = "HANDOVER_POD";
    /// The IPv6 outbound hand-over, a region per pod (array).
    pub const HANDOVER6_POD: &str = "HANDOVER6_POD";
    /// Each region's counters of `HANDOVER_POD` and `HANDOVER6_POD`.
    pub const HANDOVER_SEQ: &str = "HANDOVER_SEQ";
    /// The IPv4 outbound hand-over of kernels before 5.12 and of earlier
    /// releases, one ring for the node (array: `crate::handover::node_wide`).
    pub const HANDOVER: &str = "HANDOVER";
    /// The IPv6 one (LRU).
    pub const HANDOVER6: &str = "HANDOVER6";
    /// The decision log's ring buffer (`crate::decision_log`).
    pub const DECISIONS: &str = "DECISIONS";
    /// The fast path's decision per local socket (LRU).
    pub const FAST_PATH_STATE: &str = "FAST_PATH_STATE";
    /// The pod IPs of pods in `localProxyMode: PodIP`.
    pub const POD_IPS: &str = "POD_IPS";
    /// Each pod cgroup's id of its pod, for the node's shared programs
    /// (cgroup storage: one value per cgroup that a program using it is
    /// attached to, made by the kernel at the first attach, keyed by the
    /// cgroup's id alone so that every hook of the cgroup reads the same).
    /// Its layout is fixed for good: a link keeps the storage it was
    /// attached with when it is given a later release's program in place.
    pub const POD_OF_CGROUP: &str = "POD_OF_CGROUP";
    /// Per pod, not shared: a pod's local sockets for the fast path (see
    /// [`super::fast_path`]). Pinned in the pod's own directory.
    pub const FAST_PATH: &str = "FAST_PATH";
    /// UDP sockets whose DNS went to the local DNS proxy (socket-local
    /// storage, as `PROXY_DIALLED`).
    pub const DNS_REDIRECTED: &str = "DNS_REDIRECTED";
    /// Every map that is shared between program instances (all but the
    /// per-instance `.rodata` that holds `POD_ID`, and `FAST_PATH`).
    pub const SHARED: [&str; 24] = [
        COUNTERS,
        POD_CONFIG,
        LOCAL_ADDRS,
        LOCAL_ADDRS6,
        EXCLUDED_CIDRS,
        EXCLUDED_CIDRS6,
        INCLUDED_CIDRS,
        INCLUDED_CIDRS6,
        EXCLUDED_PORTS,
        EXCLUDED_IFACES,
        IFACE_ROUTES,
        IFACE_ROUTES6,
        PROXY_LISTENERS,
        HANDOVER_POD,
        HANDOVER6_POD,
        HANDOVER_SEQ,
        HANDOVER,
        HANDOVER6,
        PROXY_DIALLED,
        DNS_REDIRECTED,
        DECISIONS,
        FAST_PATH_STATE,
        POD_IPS,
        POD_OF_CGROUP,
    ];
}

/// Capacities. A full policy map makes the agent refuse the change (the
/// previous policy stays); a full connection map evicts its least recently
/// used entry, and the proxy then gets the kernel's own `SO_ORIGINAL_DST`
/// answer (ENOENT) for that one connection instead of a wrong address (so
/// does an overwritten `HANDOVER` slot: see [`crate::handover`]).
pub mod capacity {
    /// Pods per node.
    pub const PODS: u32 = 4096;
    /// Local addresses of all pods, per family.
    pub const LOCAL_ADDRS: u32 = 16 * 1024;
    /// CIDRs of all policy slots, per list and family.
    pub const CIDRS: u32 = 64 * 1024;
    /// Excluded ports of all policy slots, both directions.
    pub const PORTS: u32 = 64 * 1024;
    /// Regions of the per-pod outbound hand-over (a power of two; see
    /// [`crate::handover::per_pod`]): pods have one each while the node
    /// has at most this many meshed pods.
    pub const HANDOVER_REGIONS: u32 = 256;
    /// Slots per region, either family: a pod's connection keeps its
    /// hand-over for this many later redirected connects of the same pod
    /// (a power of two).
    pub const HANDOVER_REGION_SLOTS: u32 = 2 * 1024;
    /// Slots of the node-wide outbound hand-over (a power of two; see
    /// [`crate::handover::node_wide`]). A slot is reused by the next redirected
    /// connection whose socket cookie names it, about every 256Ki cookies
    /// handed out on the node.
    pub const HANDOVER_SLOTS: u32 = 256 * 1024;
    /// Redirected IPv6 connections whose original destination a proxy may
    /// still ask for, node-wide ([`crate::handover`]): the least recently
    /// used entry goes first, about 64Ki redirected IPv6 connections later.
    pub const HANDOVER6: u32 = 64 * 1024;
    /// The proxies' inbound listening sockets: one per pod and family.
    pub const LISTENERS: u32 = 2 * PODS;
    /// Excluded interfaces of all pods.
    pub const IFACES: u32 = 4 * 1024;
    /// Routes of the pods' network namespaces (for outbound interface
    /// exclusions).
    pub const ROUTES: u32 = 16 * 1024;
    /// The pods a node holds with every list at its quota: Kubernetes'
    /// default `--max-pods`. More fit where lists are shorter; a pod that
    /// finds a map full is refused (or degraded) by name.
    pub const PODS_AT_QUOTA: u32 = 110;
    /// A pod's own addresses, per family: a pod whose namespace holds more
    /// is refused by name (the node's pods share `LOCAL_ADDRS`, and a pod
    /// with NET_ADMIN could otherwise fill it for all).
    pub const ADDRS_PER_POD: u32 = 64;
    /// A pod's routes, per family (kept only where an interface is
    /// excluded), as `ADDRS_PER_POD`.
    pub const ROUTES_PER_POD: u32 = 128;
    const _: () = assert!(PODS_AT_QUOTA * ADDRS_PER_POD <= LOCAL_ADDRS);
    const _: () = assert!(PODS_AT_QUOTA * ROUTES_PER_POD <= ROUTES);
    /// Local sockets on the fast path, per pod (each local connection is two
    /// sockets). A full map leaves new local connections on the TCP path.
    pub const FAST_PATH_SOCKETS: u32 = 8 * 1024;
    /// Fast-path decisions of local sockets, node-wide. An evicted entry
    /// sends that socket's later messages the TCP way (always safe).
    pub const FAST_PATH_DECISIONS: u32 = 64 * 1024;
    /// Bytes of the decision log's ring buffer, node-wide (a power of two
    /// of pages): about 2,000 records. When the agent reads them slower
    /// than pods connect, the newest records are dropped, never a
    /// connection.
    pub const DECISIONS_BYTES: u32 = 128 * 1024;
}

/// Per-pod, per-CPU event counters: `COUNTERS[pod * counter::SLOTS + id]`.
/// Each decision counts once under the rule that took it (all families
/// together); the `IPV6`/`MAPPED` counters say how many of them were IPv6
/// or IPv4-mapped.
pub mod counter {
    use crate::decision::{InboundRule, OutboundRule};

    /// Counter slots per pod.
    pub const SLOTS: u32 = 27;
    /// 0..=10: the outbound rule that decided a `connect()` (its row number).
    pub const fn outbound(rule: OutboundRule) -> u32 {
        rule as u32
    }
    /// 11..=15: the inbound rule that decided an arriving connection.
    pub const fn inbound(rule: InboundRule) -> u32 {
        11 + rule as u32
    }
    /// An inbound connection refused because no proxy listened.
    pub const INBOUND_NO_PROXY: u32 = 16;
    /// A local socket joined the fast path.
    pub const FAST_PATH_SOCKETS: u32 = 17;
    /// A message went straight to the peer socket (fast path).
    pub const FAST_PATH_MESSAGES: u32 = 18;
    /// A local connection's socket left (or never took) the fast path: the
    /// peer was not there at its first message, or was gone, or the switch
    /// was off.
    pub const FAST_PATH_LEFT: u32 = 19;
    /// `SO_ORIGINAL_DST` answered for the proxy (IPv4, and IPv4-mapped).
    pub const ORIGINAL_DST_ANSWERED: u32 = 20;
    /// `IP6T_SO_ORIGINAL_DST` answered for the proxy (IPv6).
    pub const ORIGINAL_DST_ANSWERED_IPV6: u32 = 21;
    /// Of the outbound decisions: an IPv6 socket dialling an IPv4-mapped
    /// address (decided as IPv4).
    pub const OUTBOUND_MAPPED: u32 = 22;
    /// Of the outbound decisions: IPv6 destinations.
    pub const OUTBOUND_IPV6: u32 = 23;
    /// Of the inbound decisions: connections that arrived over IPv6.
    pub const INBOUND_IPV6: u32 = 24;
    /// UDP to 127.0.0.153:53 sent to the local DNS proxy (`crate::dns`):
    /// each datagram, and each connected socket's `connect()`.
    pub const DNS_REDIRECTED: u32 = 25;
    /// Replies from the DNS proxy shown as coming from port 53.
    pub const DNS_REPLIES: u32 = 26;

    /// Every counter's name in `status` and the metrics, by slot.
    pub const fn name(id: u32) -> Option<&'static str> {
        if id <= 10 {
            return Some(OutboundRule::ALL[id as usize].counter_name());
        }
        if id <= 15 {
            return Some(InboundRule::ALL[(id - 11) as usize].counter_name());
        }
        Some(match id {
            INBOUND_NO_PROXY => "inbound_refused_no_proxy",
            FAST_PATH_SOCKETS => "fast_path_sockets",
            FAST_PATH_MESSAGES => "fast_path_messages",
            FAST_PATH_LEFT => "fast_path_sockets_left",
            ORIGINAL_DST_ANSWERED => "original_dst_answered",
            ORIGINAL_DST_ANSWERED_IPV6 => "original_dst_answered_ipv6",
            OUTBOUND_MAPPED => "outbound_ipv4_mapped",
            OUTBOUND_IPV6 => "outbound_ipv6",
            INBOUND_IPV6 => "inbound_ipv6",
            DNS_REDIRECTED => "dns_redirected",
            DNS_REPLIES => "dns_replies",
            _ => return None,
        })
    }

    /// The slot of counter `id` of `pod` in `COUNTERS`.
    pub const fn index(pod: super::PodId, id: u32) -> u32 {
        pod.wrapping_mul(SLOTS).wrapping_add(id)
    }
}

/// Per-pod settings, keyed by [`PodId`] in `POD_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PodConfig {
    /// The pod's own active slot.
    pub policy: PolicyId,
    /// The MeshConfig's active slot.
    pub mesh_policy: PolicyId,
    /// The UID the proxy runs as.
    pub proxy_uid: u32,
    /// The proxy's outbound listener port.
    pub outbound_port: u16,
    /// The proxy's inbound listener port.
    pub inbound_port: u16,
    /// [`pod_flags`].
    pub flags: u32,
}

/// Bits of [`PodConfig::flags`](super::PodConfig::flags).
pub mod pod_flags {
    /// The inclusion list of the active policy is non-empty.
    pub const INCLUSION: u32 = 1 << 0;
    /// Put a record of every outbound decision into the decision log
    /// (`crate::decision_log`).
    pub const LOG_DECISIONS: u32 = 1 << 1;
    /// Steer inbound connections to the proxy's inbound listener.
    pub const INBOUND: u32 = 1 << 2;
    /// Splice local connections (see [`super::fast_path`]).
    pub const FAST_PATH: u32 = 1 << 3;
    /// Intercept the pod's IPv6 connections (its `--ipv6` switch; IPv4 and
    /// IPv4-mapped ones always are). Set only once the hand-over route
    /// ([`crate::handover::NET6`]) is in the pod's network namespace.
    pub const IPV6: u32 = 1 << 4;
    /// Bits 5..23: which lists of the two slots hold entries
    /// ([`super::PodConfig::slots_with`]).
    pub const LISTS_SHIFT: u32 = 5;
    /// Send the pod's UDP to 127.0.0.153:53 to the sidecar's local DNS
    /// proxy (`crate::dns`): the MeshConfig's `localDNSProxy.enable`.
    pub const DNS_PROXY: u32 = 1 << 24;
}

/// A list of a policy slot. The agent records in [`PodConfig::flags`]
/// which lists of the pod's two slots hold entries, in the same map update
/// that points the pod at them, and the programs skip looking up a list the
/// agent wrote empty: it could not match, and every lookup is work done on
/// every `connect()` (the bench measures the programs' cost per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum List {
    /// `EXCLUDED_CIDRS`.
    ExcludedCidrs = 0,
    /// `INCLUDED_CIDRS`.
    IncludedCidrs = 1,
    /// `EXCLUDED_PORTS`, outbound.
    OutboundPorts = 2,
    /// `EXCLUDED_PORTS`, inbound.
    InboundPorts = 3,
    /// `IFACE_ROUTES` has a route whose device is excluded (own slot only).
    ExcludedRoutes = 4,
    /// `EXCLUDED_IFACES` (own slot only).
    ExcludedIfaces = 5,
    /// `EXCLUDED_CIDRS6`.
    ExcludedCidrs6 = 6,
    /// `INCLUDED_CIDRS6`.
    IncludedCidrs6 = 7,
    /// `IFACE_ROUTES6` has a route whose device is excluded (own slot only).
    ExcludedRoutes6 = 8,
}

impl List {
    /// Every list.
    pub const ALL: [List; 9] = [
        List::ExcludedCidrs,
        List::IncludedCidrs,
        List::OutboundPorts,
        List::InboundPorts,
        List::ExcludedRoutes,
        List::ExcludedIfaces,
        List::ExcludedCidrs6,
        List::IncludedCidrs6,
        List::ExcludedRoutes6,
    ];

    /// The excluded CIDRs of a family.
    pub const fn excluded_cidrs(v6: bool) -> List {
        if v6 { List::ExcludedCidrs6 } else { List::ExcludedCidrs }
    }

    /// The included CIDRs of a family.
    pub const fn included_cidrs(v6: bool) -> List {
        if v6 { List::IncludedCidrs6 } else { List::IncludedCidrs }
    }

    /// The routes of a family (where one goes through an excluded device).
    pub const fn excluded_routes(v6: bool) -> List {
        if v6 { List::ExcludedRoutes6 } else { List::ExcludedRoutes }
    }

    /// Its bit in [`PodConfig::flags`] for the MeshConfig's slot or the
    /// pod's own.
    pub const fn flag(self, mesh: bool) -> u32 {
        1 << (pod_flags::LISTS_SHIFT + 2 * self as u32 + mesh as u32)
    }
}

impl PodConfig {
    /// The slots whose `list` a lookup must consult: the MeshConfig's, then
    /// the pod's own, each only if the agent wrote entries into it.
    #[inline(always)]
    pub fn slots_with(&self, list: List) -> [Option<PolicyId>; 2] {
        [(self.flags & list.flag(true) != 0).then_some(self.mesh_policy), (self.flags & list.flag(false) != 0).then_some(self.policy)]
    }
}

/// The fast path for local hops (app ↔ its proxy over loopback): both
/// sockets of a connection inside one pod sit in the pod's `FAST_PATH`
/// sockhash, and an sk_msg program hands each message straight to the peer
/// socket's receive queue, skipping TCP/IP.
///
/// Byte order is the one thing that must hold. A receiver reads what was
/// handed over directly before what came through TCP, so a connection may
/// go from the fast path to TCP (its earlier messages are read first) but
/// never from TCP to the fast path (a later message would overtake earlier
/// ones still queued). `FAST_PATH_STATE` holds each socket's decision,
/// taken at its first message and kept: a socket with no entry (never
/// joined, or evicted) always goes the TCP way.
pub mod fast_path {
    /// Joined at connection establishment; no message sent yet.
    pub const UNDECIDED: u8 = 0;
    /// The first message went to the peer directly: keep doing so.
    pub const SPLICED: u8 = 1;
    /// A message went through TCP: every later one must too.
    pub const TCP: u8 = 2;
}

/// Key of `LOCAL_ADDRS` (exact) and data of the LPM tries (`EXCLUDED_CIDRS`,
/// `INCLUDED_CIDRS`, `IFACE_ROUTES`). In the tries the prefix length is
/// `32 + cidr prefix`: the policy id always matches in full, then the
/// address bits. `IFACE_ROUTES` holds every route of the pod's main table
/// with value 1 where its device is excluded and 0 where not, so the longest
/// matching route decides, as the kernel's routing does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PolicyAddr {
    /// The policy slot.
    pub policy: PolicyId,
    /// The address.
    pub addr: Ipv4Be,
}

/// [`PolicyAddr`] for IPv6: key of `LOCAL_ADDRS6`, data of
/// `EXCLUDED_CIDRS6`, `INCLUDED_CIDRS6`, `IFACE_ROUTES6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PolicyAddr6 {
    /// The policy slot.
    pub policy: PolicyId,
    /// The address.
    pub addr: Ip6,
}

/// Prefix length of an LPM key whose CIDR has `cidr_prefix` bits.
pub const fn lpm_prefix_len(cidr_prefix: u8) -> u32 {
    32 + cidr_prefix as u32
}

/// Key of `EXCLUDED_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PolicyPort {
    /// The policy slot.
    pub policy: PolicyId,
    /// Host byte order.
    pub port: u16,
    /// [`direction`].
    pub direction: u16,
}

/// Directions of an excluded port ([`PolicyPort::direction`](super::PolicyPort::direction)).
pub mod direction {
    /// A destination port of connections the pod opens.
    pub const OUTBOUND: u16 = 0;
    /// A port of the pod that connections arrive at.
    pub const INBOUND: u16 = 1;
}

/// Key of `EXCLUDED_IFACES`: an interface of the pod's network namespace
/// (by index) that is in `networkInterfaceExclusionList`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PolicyIface {
    /// The policy slot.
    pub policy: PolicyId,
    /// The interface's index in the pod's network namespace.
    pub ifindex: u32,
}

/// Key of the fast path's maps: one connection, seen
/// from its client's side (source = the connecting socket), qualified by the
/// pod so that two pods' connections with the same 4-tuple at the same
/// moment never see each other's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConnKey {
    /// The pod.
    pub pod: PodId,
    /// The connecting side's address.
    pub src_addr: Ipv4Be,
    /// The accepting side's address.
    pub dst_addr: Ipv4Be,
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
}

/// The addresses the proxy's loopback connections go to in
/// `localProxyMode: PodIP` (fsm-init's `-j DNAT --to-destination $POD_IP`),
/// keyed by [`PodId`] in `POD_IPS`: present only for pods in that mode. An
/// all-zero address: none of that family (its loopback connections stay).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PodIps {
    /// The IPv4 pod IP.
    pub v4: Ipv4Be,
    /// The IPv6 pod IP, where the pod's IPv6 is intercepted.
    pub v6: Ip6,
}

/// Key of `PROXY_LISTENERS`: a pod's inbound listening socket of one
/// family. A dual-stack `[::]` listener is registered as IPv6 and serves
/// IPv4 connections too where no IPv4 listener is registered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ListenerKey {
    /// The pod.
    pub pod: PodId,
    /// 4 or 6.
    pub family: u32,
}

impl ListenerKey {
    #[inline(always)]
    /// The pod's IPv4 listener.
    pub const fn v4(pod: PodId) -> Self {
        ListenerKey { pod, family: 4 }
    }
    #[inline(always)]
    /// The pod's IPv6 (or dual-stack) listener.
    pub const fn v6(pod: PodId) -> Self {
        ListenerKey { pod, family: 6 }
    }
}

impl ConnKey {
    /// The same connection seen from its other end.
    #[inline(always)]
    pub const fn reversed(&self) -> ConnKey {
        ConnKey { pod: self.pod, src_addr: self.dst_addr, dst_addr: self.src_addr, src_port: self.dst_port, dst_port: self.src_port }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]` plain data without padding holes
    // (checked by bytemuck's derive).
    unsafe impl aya::Pod for PodConfig {}
    unsafe impl aya::Pod for PolicyAddr {}
    unsafe impl aya::Pod for PolicyAddr6 {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for PolicyPort {}
    unsafe impl aya::Pod for PolicyIface {}
    unsafe impl aya::Pod for PodIps {}
    unsafe impl aya::Pod for ConnKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_flags_are_distinct_and_clear_of_the_other_flags() {
        let others = pod_flags::INCLUSION | pod_flags::LOG_DECISIONS | pod_flags::INBOUND | pod_flags::FAST_PATH | pod_flags::IPV6;
        let mut seen = 0u32;
        for list in List::ALL {
            for mesh in [true, false] {
                let bit = list.flag(mesh);
                assert_eq!(bit.count_ones(), 1);
                assert_eq!(bit & (seen | others), 0, "{list:?} mesh={mesh}");
                seen |= bit;
            }
        }
    }

    #[test]
    fn only_slots_written_with_entries_are_consulted() {
        let mut c = PodConfig { policy: 7, mesh_policy: 9, ..PodConfig::default() };
        assert_eq!(c.slots_with(List::ExcludedCidrs), [None, None]);
        c.flags = List::ExcludedCidrs.flag(true) | List::OutboundPorts.flag(false);
        assert_eq!(c.slots_with(List::ExcludedCidrs), [Some(9), None]);
        assert_eq!(c.slots_with(List::OutboundPorts), [None, Some(7)]);
        assert_eq!(c.slots_with(List::InboundPorts), [None, None]);
    }

    #[test]
    fn every_counter_slot_has_one_name() {
        let mut names = [""; counter::SLOTS as usize];
        for (id, name) in names.iter_mut().enumerate() {
            *name = counter::name(id as u32).unwrap_or_else(|| panic!("slot {id} has no name"));
        }
        names.sort();
        assert!(names.windows(2).all(|w| w[0] != w[1]), "{names:?}");
        assert_eq!(counter::name(counter::SLOTS), None);
        use crate::decision::{InboundRule, OutboundRule};
        for rule in OutboundRule::ALL {
            assert_eq!(counter::name(counter::outbound(rule)), Some(rule.counter_name()));
        }
        for rule in InboundRule::ALL {
            assert_eq!(counter::name(counter::inbound(rule)), Some(rule.counter_name()));
        }
    }
}
