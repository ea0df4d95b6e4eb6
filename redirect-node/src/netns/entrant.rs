//! The thread that enters pods' network namespaces for the agent, kept
//! from one call to the next.
//!
//! A thread made for each call waited, in a burst of pod starts, behind
//! every runnable process (a hundred CNI plugins) before its first
//! instruction: the scheduler puts a new thread after the tasks already
//! there, and a woken one near the front. Three such threads per CNI ADD
//! left half of the node's two CPUs idle while the burst went on.

use std::{
    fs::File,
    sync::{Mutex, mpsc},
};

use nix::sched::{CloneFlags, setns};

/// A call: enters its namespace, runs, calls the function it is given (the
/// kept thread's way back to the node's namespace: before the caller hears
/// of the result, so that it finds the thread home), sends its result.
pub(super) type Job = Box<dyn FnOnce(&mut dyn FnMut()) + Send>;

/// The kept thread's queue; `None` until first used, or after the thread
/// ended (it could not go back to the node's namespace).
static ENTRANT: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// What became of a call given to the kept thread.
pub(super) enum Ran<T> {
    /// What the job sent.
    Done(T),
    /// The thread serves another call meanwhile, or can't be made: the job
    /// back, for a thread of the caller's own, as every call had before.
    Busy(Job, mpsc::Receiver<T>),
    /// The thread ended in the job without sending (only an abort does:
    /// the job catches its panics).
    Lost,
}

/// Runs `job` on the kept thread, which returns to the node's namespace
/// after it, and waits for what it sends on `done`'s sender.
pub(super) fn run<T>(job: Job, done: mpsc::Receiver<T>) -> Ran<T> {
    let Ok(mut entrant) = ENTRANT.try_lock() else { return Ran::Busy(job, done) };
    let mut job = job;
    // A thread that ended (its queue closed) is made again, once.
    for _ in 0..2 {
        let sender = match entrant.as_ref() {
            Some(sender) => sender,
            None => match start() {
                Some(sender) => entrant.insert(sender),
                None => break,
            },
        };
        match sender.send(job) {
            Ok(()) => {
                return match done.recv() {
                    Ok(result) => Ran::Done(result),
                    Err(mpsc::RecvError) => {
                        *entrant = None;
                        Ran::Lost
                    }
                };
            }
            Err(mpsc::SendError(back)) => {
                job = back;
                *entrant = None;
            }
        }
    }
    Ran::Busy(job, done)
}

/// The thread, in the namespace of the process (the node's, for the agent).
fn start() -> Option<mpsc::Sender<Job>> {
    let home = File::open("/proc/thread-self/ns/net").ok()?;
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            for job in rx {
                let mut home_again = true;
                job(&mut || home_again = setns(&home, CloneFlags::CLONE_NEWNET).is_ok());
                // Never left in a pod's namespace: a thread that can't go
                // back ends, and the next call makes another.
                if !home_again {
                    log::error!("the netns thread could not return to the node's network namespace: it ends");
                    return;
                }
            }
        })
        .ok()?;
    Some(tx)
}

/// Runs `f` while the kept thread serves no call (and is home).
#[cfg(test)]
pub(super) fn while_idle<R>(f: impl FnOnce() -> R) -> R {
    let _held = ENTRANT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f()
}
