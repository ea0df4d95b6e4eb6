//! Which dataplane serves a pod: eBPF, fsm-init's iptables rules, or (the
//! agent's choice) eBPF where the kernel and the pod allow it
//! (`ebpf::probe`), iptables elsewhere. The agent says which it chose and
//! why.

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Ebpf,
    Iptables,
}

impl Dataplane {
    /// Its name, as the command line and the JSON outputs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Ebpf => "ebpf",
            Dataplane::Iptables => "iptables",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Ebpf,
    Iptables,
    /// eBPF where the kernel and the pod allow it, iptables elsewhere.
    Auto,
}
