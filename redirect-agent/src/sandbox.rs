//! Throwaway pods for the demo and the tests: a named network namespace and
//! a cgroup v2 group, each removed when dropped (also when a test fails),
//! a way to start a process inside both, as a given UID, and children
//! killed on drop. Built with the `sandbox` feature only: the agent a node
//! runs has none of it.

use std::{
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stderr(Stdio::piped()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `ip netns add NAME`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_owned() };
        ns.exec(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `sysctl -w` each setting inside the namespace.
    pub fn sysctls(&self, settings: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("ip").args(["netns", "exec", &self.name, "sysctl", "-qw"]).args(settings).output()?;
        if !out.status.success() {
            bail!("sysctl {settings:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A private bpffs mounted at a fresh directory, unmounted and removed on
/// drop: the demo's and the tests' pins never touch /sys/fs/bpf.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn mount(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting a bpffs at {}", path.display()))?;
        Ok(Bpffs { path: path.to_owned() })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A veth pair between two namespaces with an address on each end.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) -> anyhow::Result<()> {
    ip(&["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name])?;
    a.exec(&["addr", "add", a_addr, "dev", a_if])?;
    b.exec(&["addr", "add", b_addr, "dev", b_if])?;
    a.exec(&["link", "set", a_if, "up"])?;
    b.exec(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A cgroup v2 group under the cgroup2 mount, removed on drop (its
/// processes are killed first: a cgroup with members can't be removed).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let path = crate::cgroup::cgroup2_mount()?.join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    pub fn kill_all(&self) {
        let kill = self.path.join("cgroup.kill");
        if std::fs::write(&kill, "1").is_err() {
            // Before 5.14 there is no cgroup.kill: signal each member.
            if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Makes `cmd` start inside `netns` and `cgroup`, as `uid` (gid the same).
pub fn enter(cmd: &mut Command, netns: &Path, cgroup: &Path, uid: u32) -> anyhow::Result<()> {
    enter_maybe_cgroup(cmd, netns, Some(cgroup), uid)
}

/// Makes `cmd` start inside `netns` only, as root: a node's server, or a
/// host process that is not in the pod's cgroup.
pub fn enter_netns(cmd: &mut Command, netns: &Path) -> anyhow::Result<()> {
    enter_maybe_cgroup(cmd, netns, None, 0)
}

/// Child processes, killed (and reaped) on drop.
#[derive(Default)]
pub struct Children(Vec<std::process::Child>);

impl Children {
    pub fn push(&mut self, child: std::process::Child) {
        self.0.push(child);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// As `enter`, where the cgroup is optional (machines without cgroup v2).
pub fn enter_maybe_cgroup(cmd: &mut Command, netns: &Path, cgroup: Option<&Path>, uid: u32) -> anyhow::Result<()> {
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let procs = cgroup.map(|c| CString::new(c.join("cgroup.procs").as_os_str().as_encoded_bytes())).transpose()?;
    // SAFETY: only async-signal-safe calls (open, write, close, setns,
    // setgroups, setgid, setuid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd as _;
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if uid != 0 && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
