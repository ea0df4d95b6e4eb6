//! Whose IPv6 is intercepted: the `--ipv6` switch (the agent's, and a pod's
//! own at enrolment) and what it means for one pod.
//!
//! fsm-init's rules are IPv4 only: a dual-stack pod's IPv6 connections pass
//! them untouched (`off` keeps exactly that). With IPv6 intercepted, a pod
//! gets what the ip6tables variant of the rules does (`redirect-agent
//! iptables print --ipv6`), on either dataplane. IPv4-mapped destinations
//! (`::ffff:a.b.c.d`) are IPv4 connections and intercepted whatever the
//! switch says, as fsm-init's iptables rules catch them.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    /// Pods that have a global IPv6 address (a dual-stack pod).
    #[default]
    Auto,
    /// Every pod (one without IPv6 in its network namespace is refused).
    On,
    /// None: fsm-init's exact behaviour.
    Off,
}

impl Ipv6Mode {
    /// Whether a pod's IPv6 is intercepted now, given whether its network
    /// has a global IPv6 address (`auto` follows addresses that come and go:
    /// the agent re-reads them).
    pub fn intercepts(self, has_global_v6: bool) -> bool {
        match self {
            Ipv6Mode::Auto => has_global_v6,
            Ipv6Mode::On => true,
            Ipv6Mode::Off => false,
        }
    }
}
