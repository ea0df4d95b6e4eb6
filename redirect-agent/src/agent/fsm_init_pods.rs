//! Pods served by their own fsm-init (`crate::injection`): the agent
//! installs nothing in them and removes nothing from them; it only notes
//! when fsm-init's rules are in place (after the pod's init containers ran,
//! some time after its CNI ADD), for `status` and the CNI CHECK.

use std::collections::HashSet;

use redirect_common::maps::PodId;

use super::handler::{Install, PodHandler};
use crate::pod::Pod;

#[derive(Default)]
pub struct FsmInitPods {
    /// Pods whose fsm-init rules were seen in their netns.
    seen: HashSet<PodId>,
}

impl PodHandler for FsmInitPods {
    /// Looks for fsm-init's rules until they are seen (each refresh). Not
    /// at a CNI ADD (`find_listener` false: no process of the pod has run,
    /// fsm-init neither), which would pay for an `iptables-save` in vain.
    fn install(&mut self, cx: &Install<'_>) -> anyhow::Result<()> {
        if cx.find_listener && !self.seen.contains(&cx.id) && crate::iptables::fsm_init::found(&cx.pod.netns)?.is_some() {
            self.seen.insert(cx.id);
        }
        Ok(())
    }

    /// fsm-init's rules are the pod's own: they stay.
    fn uninstall(&mut self, id: PodId, _pod: &Pod) -> anyhow::Result<()> {
        self.seen.remove(&id);
        Ok(())
    }

    fn attached(&self, id: PodId) -> bool {
        self.seen.contains(&id)
    }

    /// FSM's rules are IPv4 only.
    fn ipv6(&self, _id: PodId) -> bool {
        false
    }
}
