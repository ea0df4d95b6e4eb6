//! Pod instances verified ahead of need. Loading a pod's programs (the
//! verifier's pass over each of them, and the instance's maps) is most of
//! what a CNI ADD waits for; the pod id baked into an instance is known
//! before the pod (`State::next_ids`), so a worker thread loads the
//! instances of the next few ids while the agent waits for work, and an
//! enrolment that finds its id ready only attaches. One that doesn't (a
//! burst larger than the pool) loads its own, as before.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, mpsc},
};

use redirect_common::maps::PodId;

use super::{pins::Pins, programs::Prepared};

/// How many instances are kept ready.
pub const AHEAD: usize = 4;

pub struct Prewarm {
    /// Ids for the worker to prepare, in order.
    ask: mpsc::Sender<PodId>,
    ready: Arc<Mutex<BTreeMap<PodId, Prepared>>>,
    /// Asked for and not taken or dropped since.
    asked: BTreeSet<PodId>,
}

impl Prewarm {
    pub fn start(pins: Pins) -> Self {
        let (ask, asks) = mpsc::channel::<PodId>();
        let ready: Arc<Mutex<BTreeMap<PodId, Prepared>>> = Arc::default();
        let done = ready.clone();
        // Ends when the sender goes (with the agent).
        std::thread::Builder::new()
            .name("prewarm".into())
            .spawn(move || {
                for id in asks {
                    match Prepared::new(&pins, id) {
                        Ok(p) => {
                            done.lock().unwrap_or_else(|e| e.into_inner()).insert(id, p);
                        }
                        // The enrolment loads its own, and reports why.
                        Err(e) => log::debug!("preparing programs for pod id {id}: {e:#}"),
                    }
                }
            })
            .expect("spawning the prewarm thread");
        Prewarm { ask, ready, asked: BTreeSet::new() }
    }

    /// The instance prepared for `id`, if it is ready.
    pub fn take(&mut self, id: PodId) -> Option<Prepared> {
        self.asked.remove(&id);
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }

    /// Keeps instances for exactly `next` (the ids the next enrolments
    /// will get): asks for the missing ones, drops the others.
    pub fn want(&mut self, next: &[PodId]) {
        let wanted: BTreeSet<PodId> = next.iter().copied().collect();
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| wanted.contains(id));
        self.asked.retain(|id| wanted.contains(id));
        for id in next {
            if self.asked.insert(*id) {
                let _ = self.ask.send(*id);
            }
        }
    }

    /// How many are ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
