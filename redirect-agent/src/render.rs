//! The CLI's tables: `status`, `explain` and `diagnose` as people read them
//! (`--output json` prints the control types themselves).

use std::fmt::Write as _;

use crate::{
    control::{Check, Explanation, Status},
    dataplane::Dataplane,
};

/// The pods table, then each eBPF pod's counters that moved and the fill
/// of the kernel maps.
pub fn status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "MeshConfig: {}   ports: outbound {} inbound {}   proxy UID {}",
        s.mesh_source
            .as_ref()
            .map_or_else(|| s.mesh_config.as_ref().map_or("FSM defaults".into(), |p| p.display().to_string()), |m| m.describe()),
        s.settings.outbound_port,
        s.settings.inbound_port,
        s.settings.proxy_uid,
    );
    if let Some(why) = &s.ebpf_unavailable {
        let _ = writeln!(o, "eBPF dataplane unavailable: {why}");
    }
    if let Some(why) = &s.cgroup_sockets_unreliable {
        let _ = writeln!(o, "BACKSTOP {why}: eBPF pods have fsm-init's rules too");
    }
    let _ = writeln!(
        o,
        "{:<4} {:<28} {:<9} {:<9} {:<8} {:<5} {:<22} {:>6} {:>6} {:>6}",
        "ID", "POD", "DATAPLANE", "ATTACHED", "SOCKOPS", "IPV6", "ADDRESSES", "X-CIDR", "I-CIDR", "X-PORT"
    );
    for p in &s.pods {
        let _ = writeln!(
            o,
            "{:<4} {:<28} {:<9} {:<9} {:<8} {:<5} {:<22} {:>6} {:>6} {:>6}",
            p.id,
            p.name,
            p.dataplane.name(),
            if p.attached { "yes" } else { "NO" },
            match p.dataplane {
                Dataplane::Iptables | Dataplane::FsmInit => "-",
                Dataplane::Ebpf if p.sockops => "yes",
                Dataplane::Ebpf => "no",
            },
            if p.ipv6 { "on" } else { "off" },
            p.local_addrs.join(","),
            p.excluded_cidrs,
            p.included_cidrs,
            p.excluded_ports
        );
    }
    for p in &s.pods {
        if p.dataplane == Dataplane::FsmInit {
            let _ = writeln!(
                o,
                "{} is served by its own fsm-init ({}): the agent installs nothing in it",
                p.name,
                if p.attached { "its rules are in place" } else { "its rules are not seen yet: its init container has not run" }
            );
        }
        if let Some(why) = &p.degraded {
            let _ = writeln!(o, "DEGRADED {}: {why} (previous state kept, retried at each refresh)", p.name);
        }
        if p.started_unintercepted {
            let _ = writeln!(
                o,
                "{} started unintercepted: enrolled when found running (reconciling); connections opened before are not intercepted, restart the pod to have all",
                p.name
            );
        }
    }
    if s.removed_netns_gone > 0 {
        let _ = writeln!(o, "pods removed because their netns was gone: {}", s.removed_netns_gone);
    }
    for p in &s.unreadable_pods {
        let _ = writeln!(
            o,
            "UNREADABLE pod {} (id {}): recorded in a form this agent can't read ({}); left as it is in the kernel and the state",
            p.name, p.id, p.why
        );
    }
    for problem in &s.state_problems {
        let _ = writeln!(o, "STATE {problem}");
    }
    for p in s.pods.iter().filter(|p| !p.counters.is_empty()) {
        let nonzero: Vec<String> = p.counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "counters {}: {}", p.name, if nonzero.is_empty() { "none yet".into() } else { nonzero.join(" ") });
    }
    if !s.maps.is_empty() {
        let fill: Vec<String> = s.maps.iter().map(|m| format!("{} {}/{}", m.map, m.entries, m.capacity)).collect();
        let _ = writeln!(o, "maps: {}", fill.join(", "));
    }
    o
}

/// The verdict, the entry that decided it, and whether the kernel agrees.
pub fn explanation(e: &Explanation) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "pod {} ({} dataplane): {:?}", e.pod, e.dataplane.name(), e.query);
    if let Some(note) = &e.note {
        let _ = writeln!(o, "note:    {note}");
    }
    let _ = writeln!(o, "verdict: {}  (rule {}: {})", e.config.verdict, e.config.rule, e.config.reason);
    if let Some(m) = &e.matched {
        let _ = writeln!(o, "matched: {m}");
    }
    let _ = match &e.kernel {
        Some(_) if e.agrees => writeln!(o, "kernel:  agrees (its maps give the same verdict and rule)"),
        Some(k) => {
            writeln!(o, "kernel:  DISAGREES: {} (rule {}: {}); run `redirect-agent diagnose {}`", k.verdict, k.rule, k.reason, e.pod)
        }
        None => writeln!(o, "kernel:  iptables rules; `redirect-agent diagnose` compares them with the lists"),
    };
    o
}

/// One line per check, its fix under a failed one.
pub fn checks(checks: &[Check]) -> String {
    let mut o = String::new();
    for c in checks {
        let _ = writeln!(o, "{} {:<24} {:<40} {}", if c.pass { "PASS" } else { "FAIL" }, c.pod, c.check, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(o, "     fix: {fix}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Decision, PodStatus, Query};

    fn pod(name: &str, dataplane: Dataplane, sockops: bool) -> PodStatus {
        PodStatus {
            id: 1,
            name: name.into(),
            dataplane,
            netns: "/run/netns/x".into(),
            cgroup: None,
            attached: true,
            sockops,
            ipv6: false,
            local_addrs: vec!["10.1.0.2".into()],
            excluded_cidrs: 0,
            included_cidrs: 0,
            excluded_ports: 0,
            counters: [("redirect_outbound".to_owned(), 3), ("direct_uid".to_owned(), 0)].into(),
            degraded: None,
            started_unintercepted: false,
        }
    }

    #[test]
    fn status_names_the_dataplane_and_only_counters_that_moved() {
        let s = Status {
            mesh_config: None,
            settings: Default::default(),
            dataplane: crate::dataplane::Choice::Auto,
            ebpf_unavailable: None,
            pods: vec![
                pod("ns/app", Dataplane::Ebpf, true),
                PodStatus {
                    counters: Default::default(),
                    degraded: Some("EXCLUDED_PORTS: map full".into()),
                    ..pod("ns/old", Dataplane::Iptables, false)
                },
            ],
            removed_netns_gone: 0,
            mesh_source: None,
            cgroup_sockets_unreliable: None,
            prewarmed: vec![],
            maps: vec![],
            unreadable_pods: vec![],
            state_problems: vec![],
        };
        let text = status(&s);
        let rows: Vec<Vec<&str>> = text.lines().skip(2).take(2).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0][1..5], ["ns/app", "ebpf", "yes", "yes"], "{text}");
        assert_eq!(rows[1][1..5], ["ns/old", "iptables", "yes", "-"], "{text}");
        assert!(text.contains("counters ns/app: redirect_outbound=3\n"), "{text}");
        assert!(!text.contains("counters ns/old"), "{text}");
        assert!(text.contains("DEGRADED ns/old: EXCLUDED_PORTS: map full"), "{text}");
        assert!(!text.contains("DEGRADED ns/app"), "{text}");
    }

    #[test]
    fn explanation_says_when_the_kernel_disagrees() {
        let decision = |verdict: &str, rule| Decision { verdict: verdict.into(), rule, reason: "r".into() };
        let mut e = Explanation {
            pod: "ns/app".into(),
            dataplane: Dataplane::Ebpf,
            query: Query::Inbound { port: 80, iface: None, ipv6: false },
            config: decision("redirect-inbound", 4),
            matched: None,
            note: None,
            kernel: Some(decision("redirect-inbound", 4)),
            agrees: true,
        };
        assert!(explanation(&e).contains("kernel:  agrees"));
        e.kernel = Some(decision("direct", 1));
        e.agrees = false;
        assert!(
            explanation(&e).contains("kernel:  DISAGREES: direct (rule 1: r); run `redirect-agent diagnose ns/app`"),
            "{}",
            explanation(&e)
        );
    }
}
