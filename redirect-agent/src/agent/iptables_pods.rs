//! Pods served by fsm-init's iptables rules, applied in their netns by the
//! agent (no init container): iptables always, ip6tables where the pod's
//! IPv6 is intercepted.

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;
use redirect_common::maps::PodId;

use super::handler::{Install, PodHandler};
use crate::{
    config::{LocalProxyMode, PodPolicy},
    iptables::{self, Family, PodIp, rules::Form},
    pod::Pod,
};

/// The `iptables-restore` inputs last applied to a pod: iptables', and
/// ip6tables' where its IPv6 is intercepted.
type Applied = (String, Option<String>);

#[derive(Default)]
pub struct IptablesPods {
    applied: HashMap<PodId, Applied>,
}

impl IptablesPods {
    /// Forgets what was applied, so that the next install writes every
    /// pod's rules again (repairs rules changed behind the agent's back).
    pub fn forget_applied(&mut self) {
        self.applied.clear();
    }
}

impl PodHandler for IptablesPods {
    fn install(&mut self, cx: &Install<'_>) -> anyhow::Result<()> {
        let Install { id, pod, net, settings, ipv6, .. } = cx;
        let policy = PodPolicy::merge(cx.mesh, &pod.lists);
        let input = |family: Family| -> anyhow::Result<String> {
            let pod_ip = net.pod_ip(family == Family::V6);
            if policy.local_proxy_mode == LocalProxyMode::PodIP {
                net.pod_ip_for_local_proxy(family == Family::V6, &pod.name)?;
            }
            Ok(iptables::rules::restore_input(&policy, settings, family, pod_ip.map_or(PodIp::ShellVariable, PodIp::Addr), Form::Fsm))
        };
        let wanted = (input(Family::V4)?, if *ipv6 { Some(input(Family::V6)?) } else { None });
        let applied = self.applied.get(id);
        let result = (|| {
            if applied.map(|a| &a.0) != Some(&wanted.0) {
                iptables::apply::apply(&pod.netns, Family::V4, &wanted.0)
                    .with_context(|| format!("pod {}: applying iptables rules", pod.name))?;
            }
            if applied.map(|a| &a.1) != Some(&wanted.1) {
                match &wanted.1 {
                    Some(rules) => iptables::apply::apply(&pod.netns, Family::V6, rules),
                    None => iptables::apply::remove(&pod.netns, Family::V6),
                }
                .with_context(|| format!("pod {}: applying ip6tables rules", pod.name))?;
            }
            anyhow::Ok(())
        })();
        match result {
            Ok(()) => self.applied.insert(*id, wanted),
            // What the netns holds is unknown now: the next install (the
            // refresh's retry) writes both families again.
            Err(e) => {
                self.applied.remove(id);
                return Err(e);
            }
        };
        Ok(())
    }

    fn uninstall(&mut self, id: PodId, pod: &Pod) -> anyhow::Result<()> {
        let applied = self.applied.remove(&id);
        iptables::apply::remove(&pod.netns, Family::V4)?;
        // Unknown (not applied by this run): ip6tables may hold some.
        if applied.is_none_or(|(_, v6)| v6.is_some()) {
            iptables::apply::remove(&pod.netns, Family::V6)?;
        }
        Ok(())
    }

    fn attached(&self, id: PodId) -> bool {
        self.applied.contains_key(&id)
    }

    fn ipv6(&self, id: PodId) -> bool {
        self.applied.get(&id).is_some_and(|(_, v6)| v6.is_some())
    }
}

/// Removes our rules from the netns of a pod this run did not apply (an
/// agent that is not running is uninstalled).
pub fn remove_rules(name: &str, netns: &Path) -> anyhow::Result<()> {
    iptables::apply::remove(netns, Family::V4)?;
    // Whether its IPv6 was intercepted is not recorded: where ip6tables
    // itself is missing, there is nothing to remove.
    if let Err(e) = iptables::apply::remove(netns, Family::V6) {
        log::warn!("pod {name}: removing ip6tables rules: {e:#}");
    }
    Ok(())
}
