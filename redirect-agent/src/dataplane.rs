//! Which dataplane serves a pod: eBPF, fsm-init's iptables rules applied
//! by the agent, or (the agent's choice) eBPF where the kernel and the pod
//! allow it (`ebpf::probe`), iptables elsewhere; or the pod's own fsm-init
//! (`crate::injection`), beside which the agent installs nothing. The agent
//! says which it chose and why.

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Ebpf,
    Iptables,
    /// The rules of the pod's own `fsm-init` init container, as FSM
    /// injected it: the agent only records the pod.
    #[serde(rename = "fsm-init")]
    #[value(name = "fsm-init")]
    FsmInit,
}

impl Dataplane {
    /// Its name, as the command line and the JSON outputs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Ebpf => "ebpf",
            Dataplane::Iptables => "iptables",
            Dataplane::FsmInit => "fsm-init",
        }
    }

    /// Every dataplane, for per-dataplane figures.
    pub const ALL: [Dataplane; 3] = [Dataplane::Ebpf, Dataplane::Iptables, Dataplane::FsmInit];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Ebpf,
    Iptables,
    /// eBPF where the kernel and the pod allow it, iptables elsewhere.
    Auto,
}
