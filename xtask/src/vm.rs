//! `cargo xtask vm-test`: the privileged integration tests inside Debian's
//! cloud kernels under qemu, and a table kernel × test → pass, fail, or
//! skipped because the kernel lacks a named feature.
//!
//! Per kernel: the `linux-image-*-cloud-amd64` package is fetched with
//! `apt-get download` from a private sources list (the system's apt
//! configuration is not touched) into a cache; its vmlinuz and the modules
//! the tests need (veth, netfilter) go into an initramfs with busybox, the
//! host's iproute2 and iptables (with their libraries), and the test
//! binaries; a busybox `init` mounts what a node has (proc, sys, cgroup2,
//! bpffs, tmpfs), runs every test binary and prints one verdict line per
//! test on the serial console. A guest that panics, hangs or goes quiet
//! fails that kernel with its console log, and the run goes on.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::test::CNI_BIN_DIR;
use anyhow::{Context as _, bail};

const CACHE: &str = "/var/cache/fsm-redirect-vm";

/// Kernel short name → (Debian suite, metapackage version pattern).
pub const KERNELS: [(&str, &str); 3] = [("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];

/// Modules the tests load in the guest (dependencies come with modprobe).
const MODULES: &[&str] = &[
    "veth",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_redir",
    "nft_nat",
    "nft_ct",
    "nf_nat",
    "nf_conntrack",
    "xt_owner",
    "xt_multiport",
    "xt_REDIRECT",
    "xt_nat",
    "xt_tcpudp",
    "xt_comment",
    // The CNI tests' primary network: the bridge plugin.
    "bridge",
];

/// How long the guest may stay silent, and may run at all.
const QUIET_LIMIT: Duration = Duration::from_secs(240);
const RUN_LIMIT: Duration = Duration::from_secs(1500);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skipped(String),
}

pub struct KernelRun {
    pub kernel: String,
    pub release: String,
    pub results: BTreeMap<String, Outcome>,
    /// Why the whole kernel failed (panic, stall, no verdict), with the log path.
    pub broken: Option<String>,
    /// Whether the guest's init ran (its first line reached the console).
    pub reached_init: bool,
    /// Whether it oopsed on an int3 under TCG (see `vm_test`).
    pub tcg_int3: bool,
    /// Why the kernel was booted a second time, if it was.
    pub rebooted: Option<String>,
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stderr(Stdio::piped()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt(args: &[&str]) -> anyhow::Result<String> {
    let apt_dir = Path::new(CACHE).join("apt");
    let opts = [
        format!("Dir::Etc::sourcelist={}", apt_dir.join("sources.list").display()),
        "Dir::Etc::sourceparts=/dev/null".into(),
        format!("Dir::State::Lists={}", apt_dir.join("lists").display()),
        format!("Dir::Cache={}", apt_dir.join("cache").display()),
        "Acquire::Languages=none".into(),
        "APT::Sandbox::User=root".into(),
    ];
    let mut cmd = Command::new(args[0]);
    for o in &opts {
        cmd.args(["-o", o]);
    }
    cmd.args(&args[1..]);
    run(&mut cmd)
}

/// The kernel package of `suite`, downloaded once into the cache; returns
/// the directory it is unpacked in.
fn fetch_kernel(name: &str, suite: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(CACHE).join(format!("kernel-{name}"));
    if dir.join("ok").exists() {
        return Ok(dir);
    }
    let apt_dir = Path::new(CACHE).join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt_dir.join(d))?;
    }
    let lists: String = KERNELS
        .iter()
        .map(|(_, s)| format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {s} main\n"))
        .collect();
    let sources = apt_dir.join("sources.list");
    if std::fs::read_to_string(&sources).ok().as_deref() != Some(lists.as_str())
        || !apt_dir.join("lists").read_dir()?.any(|e| e.is_ok_and(|e| e.path().is_file()))
    {
        std::fs::write(&sources, &lists)?;
        eprintln!("vm-test: refreshing the private package lists ({CACHE}/apt)");
        apt(&["apt-get", "update", "-qq"])?;
    }
    // linux-image-cloud-amd64 of the suite depends on the versioned image.
    let version_line = apt(&["apt-cache", "madison", "linux-image-cloud-amd64"])?;
    let version = version_line
        .lines()
        .find(|l| l.contains(&format!(" {suite}/")))
        .and_then(|l| l.split('|').nth(1))
        .map(str::trim)
        .with_context(|| format!("no linux-image-cloud-amd64 in {suite}"))?
        .to_owned();
    let depends = apt(&["apt-cache", "depends", &format!("linux-image-cloud-amd64={version}")])?;
    let image = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("linux-image-cloud-amd64={version}: no image dependency"))?
        .to_owned();
    let debs = Path::new(CACHE).join("debs");
    std::fs::create_dir_all(&debs)?;
    eprintln!("vm-test: downloading {image} ({suite})");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && apt-get -o Dir::Etc::sourcelist={}/sources.list -o Dir::Etc::sourceparts=/dev/null -o Dir::State::Lists={}/lists -o Dir::Cache={}/cache -o APT::Sandbox::User=root download {image}",
        debs.display(),
        apt_dir.display(),
        apt_dir.display(),
        apt_dir.display()
    )))?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{image}_"))))
        .context("downloaded package not found")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::write(dir.join("ok"), image)?;
    Ok(dir)
}

/// `lib/modules` of an unpacked kernel package (`usr/lib/modules` where
/// /usr is merged, as from trixie on).
fn modules_dir(kernel_dir: &Path) -> PathBuf {
    let merged = kernel_dir.join("usr/lib/modules");
    if merged.exists() { merged } else { kernel_dir.join("lib/modules") }
}

fn release_of(kernel_dir: &Path) -> anyhow::Result<String> {
    let modules = modules_dir(kernel_dir);
    let entry = std::fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(Result::ok)
        .next()
        .with_context(|| format!("nothing in {}", modules.display()))?;
    Ok(entry.file_name().to_string_lossy().into_owned())
}

/// Where `tool` is on the host.
fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let out = run(Command::new("sh").arg("-c").arg(format!("command -v {tool}")))?;
    Ok(PathBuf::from(out.trim()))
}

/// Shared libraries a host binary needs (ldd), and the dynamic loader.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // None for a static binary, for which ldd fails.
    let out = run(Command::new("ldd").arg(bin)).unwrap_or_default();
    Ok(crate::rootfs::parse_ldd(&out))
}

fn copy_into(root: &Path, src: &Path, dst: &str) -> anyhow::Result<()> {
    let target = root.join(dst.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap())?;
    std::fs::copy(src, &target).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// `copy_into` for the project's debug builds, without their debug
/// information (a test binary shrinks from about 70 MB to a tenth): the
/// whole image is unpacked into the guest's memory.
fn copy_stripped(root: &Path, src: &Path, dst: &str) -> anyhow::Result<()> {
    copy_into(root, src, dst)?;
    run(Command::new("strip").arg("--strip-debug").arg(root.join(dst.trim_start_matches('/')))).map(drop)
}

/// Prints the skip log's lines as verdicts, then empties it.
const SKIPS_SAID: &str = "while read -r line; do echo \"redirect-skip $line\"; done < /tmp/skips; : > /tmp/skips\n";

/// The guest's init: mounts, modules, the tests, verdict lines, power off.
fn init_script(test_bins: &[String], release: &str) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/bin:/sbin\n\
         mkdir -p /proc /sys /dev /tmp /run /var /etc\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; ln -s /run /var/run\n\
         mkdir -p /sys/fs/cgroup /sys/fs/bpf; mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf\n\
         mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\n\
         echo 'root:x:0:0::/:/bin/sh' > /etc/passwd; echo 'root:x:0:' > /etc/group\n\
         ip link set lo up\n",
    );
    s.push_str(&format!("echo redirect-vm: kernel $(uname -r) expected {release}\n"));
    for m in MODULES {
        s.push_str(&format!("modprobe {m} 2>/dev/null\n"));
    }
    // And every other netfilter module shipped (iptables-nft needs counters,
    // matches and targets that differ between kernel versions).
    s.push_str("for m in $(find /lib/modules -name '*.ko'); do m=${m##*/}; modprobe ${m%.ko} 2>/dev/null; done\necho redirect-vm: $(lsmod | wc -l) modules loaded\n");
    s.push_str("export REDIRECT_TEST_TIME_SCALE=10 REDIRECT_SKIP_LOG=/tmp/skips RUST_BACKTRACE=0 REDIRECT_ENVOY=/usr/local/bin/envoy\n: > /tmp/skips\ncd /t/deps\n");
    for bin in test_bins {
        // Two tests at a time, one per vCPU (QEMU runs them on two host
        // threads, TCG too): libtest prints each verdict line whole when it
        // runs tests in parallel.
        s.push_str(&format!("./{bin} --test-threads 2 2>&1 | while read -r line; do echo \"redirect-out {bin} $line\"; done\n"));
        // A skipped test passes as far as libtest can tell: its skips are
        // said after each binary, so that a guest that breaks later has
        // not lost them (its table would call them passed).
        s.push_str(SKIPS_SAID);
    }
    // Second pass: a node without cgroup v2, where the agent must fall back.
    s.push_str("umount /sys/fs/cgroup\n");
    for bin in test_bins.iter().filter(|b| b.starts_with("iptables-")) {
        s.push_str(&format!(
            "./{bin} --test-threads 1 --ignored --exact without_cgroup_v2_the_agent_falls_back_to_iptables 2>&1 | while read -r line; do echo \"redirect-out {bin} $line\"; done\n"
        ));
    }
    s.push_str(SKIPS_SAID);
    s.push_str("echo redirect-vm: done\npoweroff -f\n");
    s
}

/// Builds the initramfs for one kernel.
fn initramfs(kernel_dir: &Path, release: &str, bins: &TestBins, work: &Path) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    copy_into(&root, Path::new("/bin/busybox"), "/bin/busybox")?;
    // iproute2 and iptables (nft backend, and legacy as some fsm-init
    // images run it) from the host, with their libraries.
    let xtables = std::fs::canonicalize("/usr/sbin/iptables").context("iptables is not installed")?;
    let legacy = Path::new("/usr/sbin/xtables-legacy-multi");
    let mut host_bins = vec![(PathBuf::from("/usr/sbin/ip"), "/usr/sbin/ip".to_owned())];
    host_bins.push((xtables.clone(), format!("/usr/sbin/{}", xtables.file_name().unwrap().to_string_lossy())));
    host_bins.push((legacy.to_owned(), legacy.display().to_string()));
    // The real clients and proxies of the tests (getent: glibc's resolver).
    for tool in ["curl", "haproxy", "getent"] {
        let path = which(tool)?;
        host_bins.push((path.clone(), path.display().to_string()));
    }
    host_bins.push((bins.envoy.clone(), "/usr/local/bin/envoy".to_owned()));
    for (src, dst) in &host_bins {
        copy_into(&root, src, dst)?;
        for lib in libraries(src)? {
            copy_into(&root, &lib, &lib.display().to_string())?;
        }
    }
    for name in ["iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"] {
        std::os::unix::fs::symlink(xtables.file_name().unwrap(), root.join("usr/sbin").join(name))?;
    }
    for name in ["iptables-legacy", "iptables-legacy-restore", "iptables-legacy-save"] {
        std::os::unix::fs::symlink(legacy.file_name().unwrap(), root.join("usr/sbin").join(name))?;
    }
    let xt_dir = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for entry in std::fs::read_dir(xt_dir)?.filter_map(Result::ok) {
        copy_into(&root, &entry.path(), &entry.path().display().to_string())?;
    }
    // Modules: netfilter, veth; decompressed, with a fresh modules.dep.
    let mods_src = modules_dir(kernel_dir).join(release);
    let mods_dst = root.join("lib/modules").join(release);
    for sub in [
        "kernel/net/netfilter",
        "kernel/net/ipv4/netfilter",
        "kernel/net/ipv6/netfilter",
        "kernel/drivers/net/veth.ko",
        "kernel/lib",
        "kernel/net/bridge",
        "kernel/net/802",
        "kernel/net/llc",
    ] {
        // Modules may be compressed (veth.ko.xz from 6.x).
        for suffix in ["", ".xz", ".zst"] {
            let sub = format!("{sub}{suffix}");
            let src = mods_src.join(&sub);
            if src.exists() {
                std::fs::create_dir_all(mods_dst.join(&sub).parent().unwrap())?;
                run(Command::new("cp").arg("-r").arg(&src).arg(mods_dst.join(&sub)))?;
            }
        }
    }
    for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        if mods_src.join(f).exists() {
            std::fs::copy(mods_src.join(f), mods_dst.join(f))?;
        }
    }
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . -name '*.ko.xz' -exec xz -d {{}} + ; find . -name '*.ko.zst' -exec zstd -q --rm -d {{}} + ; true",
        mods_dst.display()
    )))?;
    run(Command::new("depmod").arg("-b").arg(&root).arg(release))?;
    // The project's binaries.
    for bin in &bins.tests {
        copy_stripped(&root, bin, &format!("/t/deps/{}", bin.file_name().unwrap().to_string_lossy()))?;
    }
    // The system's CA roots, as a node has them: the Kubernetes client
    // loads them wherever a kubeconfig names no CA of its own (the tests'
    // fake API server's), and fails to start without any.
    let roots = Path::new("/etc/ssl/certs/ca-certificates.crt");
    copy_into(&root, roots, &roots.display().to_string()).context("the CA roots (Debian's ca-certificates)")?;
    // The CNI tests' chain: Debian's plugins (static Go binaries) where the
    // tests look for them, ours next to the test binaries' directory.
    for plugin in ["bridge", "host-local", "loopback"] {
        let src = Path::new(CNI_BIN_DIR).join(plugin);
        copy_into(&root, &src, &src.display().to_string())?;
    }
    for bin in [&bins.netprobe, &bins.agent, &bins.cni_plugin] {
        copy_stripped(&root, bin, &format!("/t/{}", bin.file_name().unwrap().to_string_lossy()))?;
        for lib in libraries(bin)? {
            copy_into(&root, &lib, &lib.display().to_string())?;
        }
    }
    for bin in &bins.tests {
        for lib in libraries(bin)? {
            copy_into(&root, &lib, &lib.display().to_string())?;
        }
    }
    let names: Vec<String> = bins.tests.iter().map(|b| b.file_name().unwrap().to_string_lossy().into_owned()).collect();
    std::fs::write(root.join("init"), init_script(&names, release))?;
    run(Command::new("chmod").arg("+x").arg(root.join("init")))?;
    let image = work.join("initramfs.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        root.display(),
        image.display()
    )))?;
    Ok(image)
}

pub struct TestBins {
    pub tests: Vec<PathBuf>,
    pub netprobe: PathBuf,
    pub agent: PathBuf,
    pub cni_plugin: PathBuf,
    /// The sidecar the real-proxy tests run.
    pub envoy: PathBuf,
}

/// Whether KVM works here (on some machines /dev/kvm exists and fails).
fn kvm_works(kernel: &Path, work: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let root = work.join("kvm-probe");
    let _ = std::fs::remove_dir_all(&root);
    if std::fs::create_dir_all(root.join("bin")).is_err() || copy_into(&root, Path::new("/bin/busybox"), "/bin/busybox").is_err() {
        return false;
    }
    let _ = std::fs::write(root.join("init"), "#!/bin/busybox sh\n/bin/busybox echo redirect-kvm-ok\n/bin/busybox poweroff -f\n");
    let _ = run(Command::new("chmod").arg("+x").arg(root.join("init")));
    let image = work.join("kvm-probe.gz");
    if run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        root.display(),
        image.display()
    )))
    .is_err()
    {
        return false;
    }
    let out = Command::new("timeout")
        .args(["60", "qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 panic=-1"])
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("redirect-kvm-ok"))
}

/// Boots one kernel and collects verdicts from its console.
fn boot(name: &str, kernel_dir: &Path, bins: &TestBins, accel: &str, work: &Path) -> anyhow::Result<KernelRun> {
    let release = release_of(kernel_dir)?;
    let image = initramfs(kernel_dir, &release, bins, work)?;
    let vmlinuz = kernel_dir.join("boot").join(format!("vmlinuz-{release}"));
    let log_path = work.join("console.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-m", "2048", "-smp", "2", "-nographic", "-no-reboot", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu")?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let mut results = BTreeMap::new();
    let mut broken = None;
    let start = Instant::now();
    let mut done = false;
    loop {
        match rx.recv_timeout(QUIET_LIMIT) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("Kernel panic") {
                    broken = Some("kernel panic".to_owned());
                    break;
                }
                if let Some(rest) = line.trim().strip_prefix("redirect-out ") {
                    // "<bin> test <name> ... ok"
                    if let Some((_, t)) = rest.split_once(" test ")
                        && let Some((test, verdict)) = t.rsplit_once(" ... ")
                    {
                        let outcome = match verdict.trim() {
                            "ok" => Outcome::Pass,
                            "ignored" => continue,
                            _ => Outcome::Fail,
                        };
                        results.insert(test.trim().to_owned(), outcome);
                    }
                }
                if let Some(rest) = line.trim().strip_prefix("redirect-skip ")
                    && let Some((test, feature)) = rest.split_once(' ')
                {
                    results.insert(test.to_owned(), Outcome::Skipped(feature.to_owned()));
                }
                if line.contains("redirect-vm: done") {
                    done = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                broken = Some(format!("no console output for {}s", QUIET_LIMIT.as_secs()));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if start.elapsed() > RUN_LIMIT {
            broken = Some(format!("still running after {}s", RUN_LIMIT.as_secs()));
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if broken.is_none() && !done {
        broken = Some("the guest stopped before the tests finished".to_owned());
    }
    std::fs::write(&log_path, &log)?;
    let broken = broken.map(|b| format!("{b} (console log: {})", log_path.display()));
    let reached_init = log.contains("redirect-vm: kernel");
    let tcg_int3 = accel == "tcg" && log.contains("Oops: int3");
    Ok(KernelRun { kernel: name.to_owned(), release, results, broken, reached_init, tcg_int3, rebooted: None })
}

pub fn vm_test(kernels: &[String], bins: &TestBins) -> anyhow::Result<Vec<KernelRun>> {
    let mut runs = Vec::new();
    let mut accel: Option<&str> = None;
    for name in kernels {
        let Some((_, suite)) = KERNELS.iter().find(|(k, _)| k == name) else {
            bail!("--kernels: unknown kernel {name:?} (known: {})", KERNELS.map(|k| k.0).join(", "));
        };
        let work = Path::new(CACHE).join(format!("run-{name}"));
        std::fs::create_dir_all(&work)?;
        let kernel_dir = fetch_kernel(name, suite)?;
        let release = release_of(&kernel_dir)?;
        let accel = *accel.get_or_insert_with(|| {
            let vmlinuz = kernel_dir.join("boot").join(format!("vmlinuz-{release}"));
            if kvm_works(&vmlinuz, &work) {
                "kvm"
            } else {
                eprintln!("vm-test: KVM does not work here; using TCG (slower)");
                "tcg"
            }
        });
        eprintln!("vm-test: booting {release} ({accel})");
        let started = Instant::now();
        let attempt = || {
            boot(name, &kernel_dir, bins, accel, &work).unwrap_or_else(|e| KernelRun {
                kernel: name.clone(),
                release: release.clone(),
                results: BTreeMap::new(),
                broken: Some(format!("{e:#}")),
                reached_init: false,
                tcg_int3: false,
                rebooted: None,
            })
        };
        let mut run = attempt();
        // A guest that broke before its init said a word ran none of the
        // project's code. One that oopsed on an int3 under TCG hit QEMU's
        // emulation of the kernel's own code patching (text_poke_bp: a
        // vCPU runs the int3 another vCPU has already replaced; 6.12 did
        // so once while booting, once in ip_rcv while a test connected),
        // which a real CPU and KVM don't do. Either gets one more boot,
        // and the table says so; anything else counts at once.
        if let Some(why) = run.broken.clone().filter(|_| !run.reached_init || run.tcg_int3) {
            std::fs::copy(work.join("console.log"), work.join("console-first-boot.log"))?;
            let what = if run.reached_init { "oopsed on an int3 of its code patching under TCG" } else { "broke before its init ran" };
            eprintln!("vm-test: {release} {what} ({why}); booting it once more");
            run = attempt();
            run.rebooted = Some(format!("its first boot {what}: {why}; log kept as console-first-boot.log"));
        }
        eprintln!("vm-test: {release}: {} verdicts in {:.0}s", run.results.len(), started.elapsed().as_secs_f64());
        runs.push(run);
    }
    Ok(runs)
}

/// The table, as Markdown: kernel columns, test rows.
pub fn table(runs: &[KernelRun]) -> String {
    let mut tests: Vec<&String> = runs.iter().flat_map(|r| r.results.keys()).collect();
    tests.sort();
    tests.dedup();
    let mut o = String::from("| test |");
    for r in runs {
        o.push_str(&format!(" {} ({}) |", r.kernel, r.release));
    }
    o.push_str("\n|---|");
    o.push_str(&"---|".repeat(runs.len()));
    o.push('\n');
    for t in tests {
        o.push_str(&format!("| {t} |"));
        for r in runs {
            let cell = match r.results.get(t) {
                Some(Outcome::Pass) => "pass".to_owned(),
                Some(Outcome::Fail) => "**FAIL**".to_owned(),
                Some(Outcome::Skipped(f)) => format!("skipped: needs {f}"),
                None if r.broken.is_some() => "not run".to_owned(),
                None => "missing".to_owned(),
            };
            o.push_str(&format!(" {cell} |"));
        }
        o.push('\n');
    }
    for r in runs.iter().filter(|r| r.broken.is_some()) {
        o.push_str(&format!("\n{} failed: {}\n", r.kernel, r.broken.as_deref().unwrap()));
    }
    for r in runs {
        if let Some(why) = &r.rebooted {
            o.push_str(&format!("\n{} was booted twice: {why}\n", r.kernel));
        }
    }
    o
}
