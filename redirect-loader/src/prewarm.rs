//! Pods' own programs verified ahead of need (sk_lookup, sockops, sk_msg:
//! the cgroup hooks' are the node's, loaded once, `programs::Shared`).
//! Loading them (the pod's object, the instance's maps, a verifier pass
//! each: 1.1-1.3 ms in all on 6.18) is still most of what a CNI ADD does in
//! the agent;
//! the pod id baked into an instance is known before the pod
//! (`State::next_ids`), so worker threads, one per CPU, load the instances
//! of the next few ids while the agent waits for work, and an enrolment
//! that finds its id ready only attaches. One whose id a worker
//! is loading waits for that worker rather than loading it a second time;
//! one whose id no worker has started (a burst larger than the pool) loads
//! its own, as before.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
};

use redirect_common::maps::PodId;

use crate::{pins::Pins, programs::Prepared};

/// How many instances are kept ready: the first pods of a burst of pod
/// starts only attach. Each holds its sockhash (8,192 buckets of 16 bytes:
/// 128 KiB of kernel memory) and three programs. 16 were tried: a burst of
/// 110 ADDs on 2 CPUs went from 240-290 ms to about 215 in two runs (within
/// what a burst moves between runs), and the kernel matrix under emulation,
/// where each agent start verifies them all, took 857 s for 6.12 against
/// 786 s with 4 (one run each): not worth CI's time.
pub const AHEAD: usize = 4;

/// At most this many workers, whatever the CPUs: each instance is one CPU
/// busy for a millisecond or two (the object, its maps, three verifier
/// passes), and the node runs pods.
const MAX_WORKERS: usize = 4;

pub struct Prewarm {
    /// Ids for the workers to prepare, in order.
    ask: mpsc::Sender<PodId>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    slots: Mutex<Slots>,
    /// Signalled each time a worker finishes an id, ready or failed.
    finished: Condvar,
}

#[derive(Default)]
struct Slots {
    /// Asked for and neither taken nor dropped since.
    wanted: BTreeSet<PodId>,
    /// Being loaded by a worker now.
    loading: BTreeSet<PodId>,
    ready: BTreeMap<PodId, Prepared>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Prewarm {
    pub fn start(pins: Pins) -> Self {
        let (ask, asks) = mpsc::channel::<PodId>();
        let asks = Arc::new(Mutex::new(asks));
        let shared: Arc<Shared> = Arc::default();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS);
        for n in 0..workers {
            let (asks, shared, pins) = (asks.clone(), shared.clone(), pins.clone());
            // Each ends when the sender goes (with the agent).
            std::thread::Builder::new()
                .name(format!("prewarm-{n}"))
                .spawn(move || work(&asks, &shared, &pins))
                .expect("spawning a prewarm thread");
        }
        Prewarm { ask, shared }
    }

    /// The instance prepared for `id`: at once if it is ready, after the
    /// worker loading it finishes if one is, else none.
    pub fn take(&mut self, id: PodId) -> Option<Prepared> {
        let mut slots = self.shared.slots();
        loop {
            if let Some(p) = slots.ready.remove(&id) {
                slots.wanted.remove(&id);
                return Some(p);
            }
            if !slots.loading.contains(&id) {
                // A worker that comes to it later skips it.
                slots.wanted.remove(&id);
                return None;
            }
            slots = self.shared.finished.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The ids whose instances are ready (whole, verified).
    pub fn ready(&self) -> Vec<PodId> {
        self.shared.slots().ready.keys().copied().collect()
    }

    /// Keeps instances for exactly `next` (the ids the next enrolments
    /// will get): asks for the missing ones, drops the others.
    pub fn want(&mut self, next: &[PodId]) {
        let wanted: BTreeSet<PodId> = next.iter().copied().collect();
        let mut slots = self.shared.slots();
        slots.ready.retain(|id, _| wanted.contains(id));
        slots.wanted.retain(|id| wanted.contains(id));
        for id in next {
            if slots.wanted.insert(*id) {
                let _ = self.ask.send(*id);
            }
        }
    }
}

/// Niceness of the workers: ahead-of-need work yields the CPU to the
/// enrolment at hand (the agent's loop, the CNI plugin's process) rather
/// than delaying it by a verifier's pass.
const NICE: i32 = 10;

/// One worker: loads each id asked for that is still wanted and that no
/// other worker has loaded or is loading.
fn work(asks: &Mutex<mpsc::Receiver<PodId>>, shared: &Shared, pins: &Pins) {
    // On Linux a thread's niceness is its own (setpriority on its tid).
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: a plain syscall on this thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) } != 0 {
        log::debug!("prewarm: setting niceness {NICE}: {}", std::io::Error::last_os_error());
    }
    loop {
        let Ok(id) = asks.lock().unwrap_or_else(|e| e.into_inner()).recv() else { return };
        {
            let mut slots = shared.slots();
            if !slots.wanted.contains(&id) || slots.ready.contains_key(&id) || !slots.loading.insert(id) {
                continue;
            }
        }
        let _loading = Loading { shared, id };
        let prepared = Prepared::new(pins, id);
        let mut slots = shared.slots();
        match prepared {
            // Dropped if it stopped being wanted meanwhile.
            Ok(p) if slots.wanted.contains(&id) => {
                slots.ready.insert(id, p);
            }
            Ok(_) => {}
            // The enrolment loads its own, and reports why.
            Err(e) => log::debug!("preparing programs for pod id {id}: {e:#}"),
        }
    }
}

/// An id a worker is loading. Dropped when the worker is done with it, also
/// by a panic: an enrolment waiting for it (`Prewarm::take`) must never
/// wait for an id no worker will finish.
struct Loading<'a> {
    shared: &'a Shared,
    id: PodId,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.shared.slots().loading.remove(&self.id);
        self.shared.finished.notify_all();
    }
}
