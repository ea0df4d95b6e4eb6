//! The decision log's user-space half: reads the records that connect4 and
//! connect6 put into the pinned `DECISIONS` ring buffer
//! (`redirect_common::decision_log`) and prints them through the agent's
//! log.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use redirect_common::{decision_log::DecisionRecord, maps::names};

/// Where the records appear in the agent's log (`RUST_LOG=decision=info`).
pub const LOG_TARGET: &str = "decision";

pub struct DecisionLog {
    ring: RingBuf<MapData>,
}

impl DecisionLog {
    /// Takes the ring buffer out of the agent's own instance of the object.
    pub fn open(object: &mut Ebpf) -> anyhow::Result<Self> {
        let map = object.take_map(names::DECISIONS).ok_or_else(|| anyhow!("map {} missing from the eBPF object", names::DECISIONS))?;
        let ring = RingBuf::try_from(map).with_context(|| format!("opening the decision log ({})", names::DECISIONS))?;
        Ok(DecisionLog { ring })
    }

    /// Prints every record waiting in the ring buffer.
    pub fn print_pending(&mut self) {
        while let Some(item) = self.ring.next() {
            match item.get(..size_of::<DecisionRecord>()) {
                Some(bytes) => log::info!(target: LOG_TARGET, "{}", bytemuck::pod_read_unaligned::<DecisionRecord>(bytes)),
                None => log::warn!(target: LOG_TARGET, "a record of {} bytes, not a decision: dropped", item.len()),
            }
        }
    }
}

/// Readable when records wait (for the agent's loop to wake on).
impl AsFd for DecisionLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
