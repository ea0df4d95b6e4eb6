//! Upgrades: an agent whose programs differ from those its pods run (an
//! earlier release's) gives every pod its own in place (`BPF_LINK_UPDATE`,
//! each pod's entries written first), while the pods' clients dial; an
//! earlier release whose programs are this one's (a commit that moved them
//! without changing an instruction) has none swapped; the same agent
//! restarting changes nothing. The earlier release is built from
//! git by `./x test` (`xtask/src/previous.rs`).

use std::{path::PathBuf, process::Stdio, time::Duration};

use redirect_agent::ebpf::{link, pins::Pins, programs::PROGRAMS};
use tests::{APP_UID, Node, Pod, eventually, scaled};

const NO_LISTS: &str = "kind: MeshConfig\nspec: {}\n";

/// The program each of the pod's links runs now, by link pin (`None`: no
/// such link).
fn programs_of(node: &Node, pod: &Pod) -> Vec<(&'static str, Option<u32>)> {
    let id = pod_id(node, pod);
    let pins = Pins::new(&node.bpffs_dir);
    PROGRAMS
        .iter()
        .map(|(pin, _, _)| {
            let prog = link::get(&pins.link(id, pin)).ok().and_then(|fd| link::info(std::os::fd::AsFd::as_fd(&fd)).ok()).map(|i| i.prog_id);
            (*pin, prog)
        })
        .collect()
}

fn pod_id(node: &Node, pod: &Pod) -> u32 {
    let status = node.status();
    let entry = status["pods"].as_array().unwrap().iter().find(|p| p["name"] == pod.name.as_str()).cloned();
    entry.unwrap_or_else(|| panic!("{} not enrolled: {status}", pod.name))["id"].as_u64().unwrap() as u32
}

#[test]
fn the_same_agent_restarting_leaves_every_link_on_its_program() {
    let mut node = Node::start(NO_LISTS).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let before = programs_of(&node, &pod);
    assert!(before.iter().all(|(_, p)| p.is_some()), "{before:?}");
    node.kill_agent();
    node.start_agent().unwrap();
    assert_eq!(programs_of(&node, &pod), before, "{}", node.agent_log());
    assert!(!node.agent_log().contains("replacing them in place"), "{}", node.agent_log());
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
}

/// A cgroup/connect4 program that lets every connect through unchanged
/// (`r0 = 1; exit`): what a pod's link runs if another release's (or a
/// broken) program is on it.
fn pass_through_connect4(pins: &Pins) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u64 = 18;
    const BPF_CGROUP_INET4_CONNECT: u64 = 10;
    // It reads the cgroup's storage, as the agent's shared programs do: the
    // kernel gives a link made with storage only a program that uses it.
    let storage = link::get(&pins.map(redirect_common::maps::names::POD_OF_CGROUP)).unwrap();
    // struct bpf_insn: code, regs (dst | src << 4), off, imm (little-endian).
    let insns: [u64; 6] = [
        // r1 = the map (ld_imm64, BPF_PSEUDO_MAP_FD), two slots
        0x18 | (0x11 << 8) | ((storage.as_raw_fd() as u64) << 32),
        0,
        // r2 = 0; call bpf_get_local_storage
        0xb7 | (2 << 8),
        0x85 | (81 << 32),
        // r0 = 1 (let the connect go on, where it was going); exit
        0xb7 | (1 << 32),
        0x95,
    ];
    let license = c"GPL";
    // { prog_type, insn_cnt }, insns, license, ..., at 68: expected_attach_type
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_CGROUP_SOCK_ADDR | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[8] = BPF_CGROUP_INET4_CONNECT << 32;
    // Before 5.11 a program's memory counts against RLIMIT_MEMLOCK (EPERM
    // at the default; aya raises it for the agent the same way).
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit; failing leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    // SAFETY: a zero-padded bpf_attr; the kernel reads what it points at now.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_PROG_LOAD: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor the kernel just gave us.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// A pod whose connect4 link was given another program while the agent
/// was away (an older release's): before, a restarting agent left it
/// there (programs were replaced only with a map layout), and the pod's
/// connections escaped for good.
#[test]
fn a_link_running_another_program_is_given_this_agents_at_the_next_start() {
    let mut node = Node::start(NO_LISTS).unwrap();
    let pod = Pod::create(&node).unwrap();
    node.enroll(&pod, &[]).unwrap();
    let id = node.status()["pods"][0]["id"].as_u64().unwrap() as u32;
    node.kill_agent();
    let other = pass_through_connect4(&Pins::new(&node.bpffs_dir));
    let connect4 = link::get(&Pins::new(&node.bpffs_dir).link(id, "connect4")).unwrap();
    link::update(std::os::fd::AsFd::as_fd(&connect4), std::os::fd::AsFd::as_fd(&other)).unwrap();
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "direct 10.96.0.10:80", "the other program lets it through");
    node.start_agent().unwrap();
    assert!(node.agent_log().contains("run other programs than this agent's (pod 1: connect4)"), "{}", node.agent_log());
    assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80", "{}", node.agent_log());
}

/// Whether a link or program pin of `pod` runs a program this release's
/// agent does not have (another build's: its tag differs), as the agent
/// finds at its start; read from the kernel's tags of this release's
/// programs (the probe's) and of those the pod runs.
fn runs_other_programs(node: &Node, pod: &Pod) -> bool {
    use std::os::fd::AsFd as _;
    let (_, ours) = redirect_agent::ebpf::probe::probe_ebpf().expect("this release's programs load");
    let loaded: std::collections::HashMap<u32, u64> =
        aya::programs::loaded_programs().filter_map(Result::ok).map(|p| (p.id(), p.tag())).collect();
    let pins = Pins::new(&node.bpffs_dir);
    let id = pod_id(node, pod);
    ours.iter().any(|(pin, tags)| {
        let path = pins.link(id, pin);
        // A link's program, or the program pinned there (sockops').
        let theirs = link::get(&path)
            .ok()
            .and_then(|fd| link::info(fd.as_fd()).ok())
            .and_then(|i| loaded.get(&i.prog_id).copied())
            .or_else(|| aya::programs::ProgramInfo::from_pin(&path).ok().map(|p| p.tag()));
        !theirs.is_some_and(|t| tags.contains(&t))
    })
}

/// The earlier release's agent and its commit, where `./x test` built it.
fn previous_release() -> Option<(PathBuf, String)> {
    let dir = PathBuf::from(std::env::var_os("REDIRECT_TEST_BINS")?);
    let commit = std::fs::read_to_string(dir.join("previous-release")).ok()?;
    Some((dir.join("redirect-agent-previous"), commit.trim().to_owned()))
}

#[test]
fn an_upgrade_gives_running_pods_this_releases_programs_while_they_dial_and_none_escapes() {
    if !tests::requires(tests::Feature::PreviousRelease) {
        return;
    }
    let (previous, commit) = previous_release().unwrap();
    let mut node = Node::start_program(Some(previous), NO_LISTS, &["--refresh-interval", "3600"]).unwrap();
    // The first dials over IPv6 (its hand-over changed form too).
    let mut pods = vec![Pod::dual_stack(&node).unwrap()];
    pods.extend((0..7).map(|_| Pod::create(&node).unwrap()));
    for pod in &pods {
        node.enroll(pod, &[]).unwrap();
    }
    let before: Vec<_> = pods.iter().map(|p| programs_of(&node, p)).collect();
    assert_eq!(pods[0].dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80", "under {commit}");
    // The previous release is the tree before the newest commit that
    // touched the programs' crates; a commit that moved them without
    // changing an instruction leaves nothing to swap.
    let differ = runs_other_programs(&node, &pods[0]);

    // Two pods dial all through the upgrade, one over IPv6, each connection
    // asking where it went.
    let millis = scaled(Duration::from_secs(8)).as_millis().to_string();
    let clients: Vec<_> = pods[..2]
        .iter()
        .zip(["[fd00:96::10]:80", "10.96.0.10:80"])
        .map(|(p, dst)| {
            let mut cmd = p.netprobe_cmd(&["connrate", dst, &millis, &format!("out {dst}")], APP_UID);
            cmd.stdout(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    // Both dialling before the old agent goes.
    let dialled =
        |p: &Pod| ["outbound_redirected", "outbound_ipv6"].iter().map(|c| node.counters(p).get(*c).copied().unwrap_or(0)).sum::<u64>();
    let at_start: Vec<u64> = pods[..2].iter().map(dialled).collect();
    let dialling = eventually(scaled(Duration::from_secs(10)), || pods[..2].iter().zip(&at_start).all(|(p, n)| dialled(p) > n + 100));
    assert!(dialling, "the clients did not start");
    node.kill_agent();
    node.agent_program = None;
    node.start_agent().unwrap();
    if differ {
        // Every link of every pod runs another program than before (this
        // release's), and the links this release added are there.
        let swapped = eventually(scaled(Duration::from_secs(20)), || {
            pods.iter()
                .zip(&before)
                .all(|(p, was)| programs_of(&node, p).iter().zip(was).all(|((_, now), (_, then))| now.is_some() && now != then))
        });
        assert!(swapped, "{:?}\n{}", pods.iter().map(|p| programs_of(&node, p)).collect::<Vec<_>>(), node.agent_log());
        let log = node.agent_log();
        let took = log.lines().find(|l| l.contains("programs replaced in")).unwrap_or_else(|| panic!("{log}"));
        println!("upgrade from {commit}: {}", took.split("] ").nth(1).unwrap_or(took));
    } else {
        // Its programs are this release's already: none is outdated (the
        // links may still get new instances, where a map's layout changed).
        assert!(!node.agent_log().contains("run other programs"), "{}", node.agent_log());
        println!("upgrade from {commit}: its programs are this release's, none swapped");
    }
    for client in clients {
        let out = client.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        println!("dialling through the upgrade: {}", text.trim());
        let field = |name: &str| -> u64 {
            text.split_whitespace().find_map(|f| f.strip_prefix(&format!("{name}="))).and_then(|v| v.parse().ok()).unwrap()
        };
        assert!(field("connections") > 0, "{text}");
        assert_eq!((field("errors"), field("wrong")), (0, 0), "escaped or failed: {text}");
    }
    for pod in &pods {
        assert_eq!(pod.dial("10.96.0.10:80", APP_UID), "out 10.96.0.10:80");
        assert_eq!(Pod::dial_from(&node.ns, &format!("{}:8080", pod.ip)), format!("in {}:8080", pod.ip));
    }
}
