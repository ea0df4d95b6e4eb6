//! The shared maps. Sizes and layouts come from `redirect_common::maps`,
//! where each map's behaviour when full is written down.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use redirect_common::{
    handover::{Handover, Handover6},
    maps::{
        ConnKey, ConnKey6, ListenerKey, OrigDst, OrigDst6, PodConfig, PodId, PodIps, PolicyAddr, PolicyAddr6, PolicyIface, PolicyPort,
        capacity, counter,
    },
};

/// `BPF_F_NO_PREALLOC`: required by LPM tries.
const NO_PREALLOC: u32 = 1;

#[map]
pub static POD_CONFIG: HashMap<PodId, PodConfig> = HashMap::with_max_entries(capacity::PODS, 0);

/// The pod IPs of pods in `localProxyMode: PodIP` (none for the others).
#[map]
pub static POD_IPS: HashMap<PodId, PodIps> = HashMap::with_max_entries(capacity::PODS, 0);

#[map]
pub static LOCAL_ADDRS: HashMap<PolicyAddr, u8> = HashMap::with_max_entries(capacity::LOCAL_ADDRS, 0);

#[map]
pub static LOCAL_ADDRS6: HashMap<PolicyAddr6, u8> = HashMap::with_max_entries(capacity::LOCAL_ADDRS, 0);

#[map]
pub static EXCLUDED_CIDRS: LpmTrie<PolicyAddr, u8> = LpmTrie::with_max_entries(capacity::CIDRS, NO_PREALLOC);

#[map]
pub static EXCLUDED_CIDRS6: LpmTrie<PolicyAddr6, u8> = LpmTrie::with_max_entries(capacity::CIDRS, NO_PREALLOC);

#[map]
pub static INCLUDED_CIDRS: LpmTrie<PolicyAddr, u8> = LpmTrie::with_max_entries(capacity::CIDRS, NO_PREALLOC);

#[map]
pub static INCLUDED_CIDRS6: LpmTrie<PolicyAddr6, u8> = LpmTrie::with_max_entries(capacity::CIDRS, NO_PREALLOC);

#[map]
pub static EXCLUDED_PORTS: HashMap<PolicyPort, u8> = HashMap::with_max_entries(capacity::PORTS, 0);

/// Original destinations of redirected connections, by the slot their
/// redirect address names (`redirect_common::handover`).
#[map]
pub static HANDOVER: Array<Handover> = Array::with_max_entries(capacity::HANDOVER_SLOTS, 0);

/// Original destinations of redirected IPv6 connections, by the cookie
/// their redirect address carries (`redirect_common::handover`).
#[map]
pub static HANDOVER6: LruHashMap<u64, Handover6> = LruHashMap::with_max_entries(capacity::HANDOVER6, 0);

#[map]
pub static EXCLUDED_IFACES: HashMap<PolicyIface, u8> = HashMap::with_max_entries(capacity::IFACES, 0);

/// Routes of the pod's main table: value 1 where the device is excluded.
#[map]
pub static IFACE_ROUTES: LpmTrie<PolicyAddr, u8> = LpmTrie::with_max_entries(capacity::ROUTES, NO_PREALLOC);

#[map]
pub static IFACE_ROUTES6: LpmTrie<PolicyAddr6, u8> = LpmTrie::with_max_entries(capacity::ROUTES, NO_PREALLOC);

/// Each pod's proxy listening sockets on the inbound port, per family.
#[map]
pub static PROXY_LISTENERS: SockHash<ListenerKey> = SockHash::with_max_entries(capacity::LISTENERS, 0);

/// Inbound connection steered to the proxy (client's 4-tuple + pod) → the
/// address the client dialled, from its SYN on. sk_lookup also runs for
/// stray segments of connections already gone (a late FIN or ACK); their
/// entries, like those of closed connections, age out of this LRU. No
/// entry is ever wrong: the value is the key's own destination, which a
/// later connection with the same 4-tuple shares.
#[map]
pub static INBOUND_ORIG: LruHashMap<ConnKey, OrigDst> = LruHashMap::with_max_entries(capacity::INBOUND_CONNECTIONS, 0);

/// `INBOUND_ORIG` for connections that arrived over IPv6.
#[map]
pub static INBOUND_ORIG6: LruHashMap<ConnKey6, OrigDst6> = LruHashMap::with_max_entries(capacity::INBOUND_CONNECTIONS, 0);

/// Event counters per pod (see `redirect_common::maps::counter`), per CPU so
/// that counting never contends.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::PODS * counter::SLOTS, 0);

#[inline(always)]
pub fn count(id: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter::index(crate::pod_id(), id)) {
        // SAFETY: a per-CPU slot: no other CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// This instance's pod's local sockets on the fast path, by their own
/// 4-tuple. Not shared: each pod's instance has its own, pinned in the
/// pod's directory, with this instance's sk_msg program attached.
#[map]
pub static FAST_PATH: SockHash<ConnKey> = SockHash::with_max_entries(capacity::FAST_PATH_SOCKETS, 0);

/// Fast-path decision of each local socket (`redirect_common::maps::fast_path`).
#[map]
pub static FAST_PATH_STATE: LruHashMap<ConnKey, u8> = LruHashMap::with_max_entries(capacity::FAST_PATH_DECISIONS, 0);
