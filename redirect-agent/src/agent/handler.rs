//! What a dataplane does for a pod, the same four methods for both: the
//! agent picks the handler by the pod's dataplane once and calls it, instead
//! of matching on the dataplane at every step.

use redirect_common::maps::PodId;

use crate::{config::MeshConfig, netns::PodNet, pod::Pod, settings::ProxySettings};

/// Everything a handler needs to install one pod's policy.
pub struct Install<'a> {
    pub id: PodId,
    pub pod: &'a Pod,
    pub mesh: &'a MeshConfig,
    /// The pod's settings: the node's with its own switches.
    pub settings: ProxySettings,
    /// Its addresses, interfaces and routes, read now.
    pub net: PodNet,
    /// Whether its IPv6 is intercepted (`settings.ipv6`, resolved on `net`).
    pub ipv6: bool,
    /// Also look for a proxy that listened before it was enrolled (reads
    /// the pod's /proc/net/tcp, which walks the host's whole TCP table: at
    /// enrolment and refresh, not on every list change).
    pub find_listener: bool,
}

impl<'a> Install<'a> {
    /// The context for `pod`, its network read from its netns now.
    pub fn new(id: PodId, pod: &'a Pod, mesh: &'a MeshConfig, node: &ProxySettings, find_listener: bool) -> anyhow::Result<Self> {
        let net = crate::netns::pod_net(&pod.netns)?;
        let settings = pod.settings(node);
        let ipv6 = settings.ipv6.intercepts(net.has_global_v6());
        Ok(Install { id, pod, mesh, settings, net, ipv6, find_listener })
    }
}

pub trait PodHandler {
    /// Makes the kernel hold the pod's policy: writes only what changed,
    /// never pauses interception, and leaves the previous policy in place
    /// when it fails.
    fn install(&mut self, cx: &Install<'_>) -> anyhow::Result<()>;

    /// Takes away whatever `install` put in place, also after an
    /// interrupted one.
    fn uninstall(&mut self, id: PodId, pod: &Pod) -> anyhow::Result<()>;

    /// Whether the pod is intercepted now (programs attached, or rules
    /// applied).
    fn attached(&self, id: PodId) -> bool;

    /// Whether the pod's IPv6 is intercepted as last installed.
    fn ipv6(&self, id: PodId) -> bool;
}
