//! The shared maps. Sizes and layouts come from `redirect_common::maps`,
//! where each map's behaviour when full is written down.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use redirect_common::{
    handover::{
        node_wide::{Handover, Handover6},
        per_pod,
    },
    maps::{ConnKey, ListenerKey, PodConfig, PodId, PodIps, PolicyAddr, PolicyAddr6, PolicyIface, PolicyPort, capacity, counter},
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

/// Original destinations of redirected connections, by the slot their pod
/// and their redirect address name (`redirect_common::handover::per_pod`).
#[map]
pub static HANDOVER_POD: Array<per_pod::Slot> = Array::with_max_entries(capacity::HANDOVER_REGIONS * capacity::HANDOVER_REGION_SLOTS, 0);

/// The same for IPv6 connections.
#[map]
pub static HANDOVER6_POD: Array<per_pod::Slot6> = Array::with_max_entries(capacity::HANDOVER_REGIONS * capacity::HANDOVER_REGION_SLOTS, 0);

/// The next connection number of each region, IPv4 then IPv6
/// (`per_pod::counter`), taken by atomic fetch-and-add.
#[map]
pub static HANDOVER_SEQ: Array<u64> = Array::with_max_entries(2 * capacity::HANDOVER_REGIONS, 0);

/// The node-wide form (`redirect_common::handover::node_wide`): written on
/// kernels before 5.12, read everywhere (an earlier release's connect4
/// wrote it until an upgrade swapped the pod's programs).
#[map]
pub static HANDOVER: Array<Handover> = Array::with_max_entries(capacity::HANDOVER_SLOTS, 0);

/// The node-wide form's IPv6 connections, by the cookie their redirect
/// address carries.
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

/// The proxy's own outgoing TCP sockets, marked by connect4/connect6: an
/// accepted socket's `SO_ORIGINAL_DST` is its own local address (see
/// `redirect_common::handover::Record`), a dialled one's is not. Storage on
/// the socket itself: it goes with the socket, so nothing ages out and no
/// pod's traffic can crowd out another's.
#[btf_map]
pub static PROXY_DIALLED: SkStorage<u8> = SkStorage::new();

/// UDP sockets whose datagrams the local DNS proxy's rule sent to the
/// proxy (`dns.rs`): their replies are shown from port 53. On the socket,
/// as `PROXY_DIALLED`: it goes with it.
#[btf_map]
pub static DNS_REDIRECTED: SkStorage<u8> = SkStorage::new();

/// The decision log (`redirect_common::decision_log`).
#[map]
pub static DECISIONS: RingBuf = RingBuf::with_byte_size(capacity::DECISIONS_BYTES, 0);

/// Event counters per pod (see `redirect_common::maps::counter`), per CPU so
/// that counting never contends.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::PODS * counter::SLOTS, 0);

/// Counts event `id` of `pod`.
#[inline(always)]
pub fn count(pod: u32, id: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter::index(pod, id)) {
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

/// Marks the socket of this `connect()` as one the proxy dialled (see
/// `PROXY_DIALLED`). If the kernel can't allocate the mark, the socket
/// would be answered as an accepted one: its own address.
#[inline(always)]
pub fn mark_dialled(ctx: &aya_ebpf::programs::SockAddrContext) {
    let _ = PROXY_DIALLED.get_or_insert_ptr_mut(ctx, None);
}

/// Whether the proxy dialled `sk` itself.
#[inline(always)]
pub fn dialled(sk: *mut aya_ebpf::bindings::bpf_sock) -> bool {
    // aya-ebpf's SkStorage reads only from a connect's context: the helper
    // itself takes any socket of a getsockopt's context too.
    let map = core::ptr::from_ref(&PROXY_DIALLED).cast_mut().cast();
    // SAFETY: a lookup without creation; `sk` is the context's socket.
    !unsafe { aya_ebpf::helpers::bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.is_null()
}

/// `POD_OF_CGROUP` (`redirect_common::maps::names`): cgroup storage keyed by
/// the cgroup's id alone, which aya-ebpf's `CgroupStorage` (keyed by cgroup
/// and attach type, a value per hook) doesn't declare.
#[repr(transparent)]
pub struct PodOfCgroup(core::cell::UnsafeCell<aya_ebpf::bindings::bpf_map_def>);

// SAFETY: the kernel owns the definition once loaded; nothing writes it.
unsafe impl Sync for PodOfCgroup {}

impl PodOfCgroup {
    /// This run's cgroup's value: the storage of the cgroup the program is
    /// attached to (`bpf_get_local_storage`, never null in a cgroup hook).
    #[inline(always)]
    pub unsafe fn get(&self) -> *const u32 {
        // SAFETY: the map definition the loader relocated; flags must be 0.
        unsafe { aya_ebpf::helpers::bpf_get_local_storage(self.0.get().cast(), 0) }.cast()
    }
}

#[unsafe(link_section = "maps")]
#[unsafe(export_name = "POD_OF_CGROUP")]
pub static POD_OF_CGROUP: PodOfCgroup = PodOfCgroup(core::cell::UnsafeCell::new(aya_ebpf::bindings::bpf_map_def {
    type_: aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_CGROUP_STORAGE_DEPRECATED,
    key_size: core::mem::size_of::<u64>() as u32,
    value_size: core::mem::size_of::<u32>() as u32,
    max_entries: 0,
    map_flags: 0,
    id: 0,
    pinning: 0,
}));
