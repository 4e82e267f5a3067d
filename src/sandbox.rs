//! A private systemd *user* manager with its own journald, for integration
//! tests and local runs on machines whose PID 1 is not systemd (containers,
//! CI, build VMs).
//!
//! The manager runs as root in a private mount namespace with a tmpfs on
//! `/run/systemd` and its own cgroup subtree, and exposes the same
//! `org.freedesktop.systemd1` API as a production system manager.
//!
//! Never a system instance: `systemd --system` runs `systemd-tmpfiles
//! --remove` at boot and wipes the real `/tmp`, even in a mount namespace.
//! Only processes this module started are ever signalled, by PID.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Default parent of sandbox directories. Not under /tmp: workloads run
/// with `PrivateTmp=yes` and must see binaries placed in the sandbox.
pub const DEFAULT_BASE: &str = "/run/prism-sandbox";

/// Runs inside `unshare --mount --propagation private`; `$1` is the sandbox
/// directory. Ends by exec'ing the user manager, keeping this PID.
const START_SCRIPT: &str = r#"set -e
SBX=$1
echo $$ > "$SBX/pid"
# A host of its own (a UTS namespace): its name.
if [ -n "$2" ]; then echo "$2" > /proc/sys/kernel/hostname; fi
name=$(basename "$SBX")
hier=""
for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
  [ -d "$h" ] && hier="$hier $h"
done
[ -z "$hier" ] && hier=/sys/fs/cgroup
for h in $hier; do
  mkdir -p "$h/$name/init.scope"
  echo $$ > "$h/$name/init.scope/cgroup.procs"
done
echo "$hier" > "$SBX/cgroup-hierarchies"
# /run a mount point, as on every systemd host (a tmpfs there): units with
# ProtectProc=, ProcSubset=, ProtectKernelTunables= or ProtectControlGroups=
# would otherwise get an empty tmpfs over /run, hiding their binaries
# (203/EXEC) and the notify socket.
mount --bind /run /run
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system /run/systemd/journal
# Units' PrivateTmp= directories (systemd-private-*) land in the sandbox,
# not in the host's /tmp and /var/tmp, and go with it.
mkdir -p "$SBX/tmp" "$SBX/var-tmp"
chmod 1777 "$SBX/tmp" "$SBX/var-tmp"
mount --bind "$SBX/tmp" /tmp
mount --bind "$SBX/var-tmp" /var/tmp
# The nodes a system manager creates at boot; units' mount namespaces
# (DynamicUser, ProtectSystem, PrivateTmp...) mask paths with them.
mkdir -p /run/systemd/inaccessible
cd /run/systemd/inaccessible
mkdir -m 0 dir
install -m 0 /dev/null reg
mkfifo -m 0 fifo
mknod -m 0 chr c 0 0
mknod -m 0 blk b 0 0
cd /
mkdir -p "$SBX/log" /run/log
mount --bind "$SBX/log" /run/log
/lib/systemd/systemd-journald >"$SBX/journald.out" 2>&1 &
echo $! > "$SBX/journald.pid"
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
mkdir -p "$SBX/run" "$SBX/home"
# Traversable, not listable: workloads running as dynamic users must reach
# the manager's notify socket ($XDG_RUNTIME_DIR/systemd/notify).
chmod 711 "$SBX/run"
export XDG_RUNTIME_DIR=$SBX/run HOME=$SBX/home
unset DBUS_SESSION_BUS_ADDRESS
exec /lib/systemd/systemd --user --log-target=journal
"#;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("a sandbox systemd manager needs root (running as uid {uid})")]
    NotRoot { uid: u32 },
    #[error("{what} not found at {path}; install systemd")]
    Missing { what: &'static str, path: String },
    #[error("sandbox at {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sandbox manager at {dir} did not come up within {after:?}: {log}")]
    NotReady {
        dir: PathBuf,
        after: Duration,
        log: String,
    },
}

/// A running sandbox manager. Dropping it stops the manager, its journald
/// and everything they started, and removes the directory (set
/// `PRISM_SANDBOX_KEEP=1` to keep it for a post-mortem).
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    child: Option<Child>,
    manager_pid: Option<u32>,
    journald_pid: Option<u32>,
    keep_dir: bool,
    /// Left running on drop (see [`Sandbox::detach`]).
    detached: bool,
    /// The host the manager (and so every unit) runs on, when not this
    /// one: a network namespace, and a host name of its own.
    host: Option<(PathBuf, String)>,
}

fn uid() -> u32 {
    // /proc/self is owned by the process's uid.
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

/// Is `pid` still running (not gone, not a zombie)?
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Sandbox {
    /// Whether this process may start a sandbox manager.
    pub fn preflight() -> Result<(), SandboxError> {
        let uid = uid();
        if uid != 0 {
            return Err(SandboxError::NotRoot { uid });
        }
        for (what, path) in [
            ("systemd", "/lib/systemd/systemd"),
            ("systemd-journald", "/lib/systemd/systemd-journald"),
            ("unshare", "/usr/bin/unshare"),
        ] {
            if !Path::new(path).exists() {
                return Err(SandboxError::Missing {
                    what,
                    path: path.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Start a fresh sandbox in a new directory under `base`.
    pub fn start(base: &Path) -> Result<Self, SandboxError> {
        Self::preflight()?;
        sweep_stale(base);
        let io_err = |dir: &Path| {
            let dir = dir.to_owned();
            move |source| SandboxError::Io { dir, source }
        };
        fs::create_dir_all(base).map_err(io_err(base))?;
        let dir = tempfile_dir(base).map_err(io_err(base))?;
        // Traversable by workloads' dynamic users (they run binaries from
        // here); the runtime directory below stays 0700.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_err(&dir))?;
        let mut sandbox = Self {
            dir,
            child: None,
            manager_pid: None,
            journald_pid: None,
            keep_dir: std::env::var_os("PRISM_SANDBOX_KEEP").is_some(),
            detached: false,
            host: None,
        };
        sandbox.boot()?;
        Ok(sandbox)
    }

    /// Start a sandbox in exactly `dir` (for long-lived local stacks). The
    /// directory's name also names its cgroup, so make it distinctive.
    pub fn start_in(dir: &Path) -> Result<Self, SandboxError> {
        Self::start_on_host(dir, None)
    }

    /// [`Self::start_in`], the manager and its units on a host of
    /// `devstack::net`: in the network namespace at `netns`, with a UTS
    /// namespace of its own named `hostname`.
    pub fn start_on_host(dir: &Path, host: Option<(&Path, &str)>) -> Result<Self, SandboxError> {
        Self::preflight()?;
        let io_err = |source| SandboxError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err)?;
        let mut sandbox = Self {
            dir: dir.to_owned(),
            child: None,
            manager_pid: None,
            journald_pid: None,
            keep_dir: false,
            detached: false,
            host: host.map(|(ns, name)| (ns.to_owned(), name.to_owned())),
        };
        sandbox.boot()?;
        Ok(sandbox)
    }

    /// The sandbox already running in `dir`, if any.
    pub fn attach(dir: &Path) -> Option<Self> {
        let name = dir.file_name()?.to_string_lossy().into_owned();
        let manager_pid =
            read_pid(&dir.join("pid")).filter(|p| alive(*p) && in_cgroup(*p, &name))?;
        let sandbox = Self {
            dir: dir.to_owned(),
            child: None,
            manager_pid: Some(manager_pid),
            journald_pid: read_pid(&dir.join("journald.pid")).filter(|p| in_cgroup(*p, &name)),
            keep_dir: false,
            detached: false,
            host: None,
        };
        sandbox.private_socket().exists().then_some(sandbox)
    }

    /// Leave the manager running after this handle is gone; stop it later
    /// through [`Sandbox::attach`].
    pub fn detach(mut self) {
        self.detached = true;
        // Not reaped by us: the manager outlives this process.
        self.child = None;
    }

    fn boot(&mut self) -> Result<(), SandboxError> {
        let dir = self.dir.clone();
        let io_err = |source| SandboxError::Io {
            dir: dir.clone(),
            source,
        };
        let script = self.dir.join("start.sh");
        fs::write(&script, START_SCRIPT).map_err(io_err)?;
        let out = fs::File::create(self.dir.join("manager.out")).map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        // Leftovers of a previous manager in this directory would look ready.
        for f in ["pid", "journald.pid", "run/bus", "run/systemd/private"] {
            let _ = fs::remove_file(self.dir.join(f));
        }
        let mut command = match &self.host {
            Some((ns, _)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("setsid");
                c
            }
            None => Command::new("setsid"),
        };
        command.args(["unshare", "--mount", "--propagation", "private"]);
        if self.host.is_some() {
            command.arg("--uts");
        }
        let hostname = self.host.as_ref().map_or("", |(_, name)| name.as_str());
        let child = command
            .arg("/bin/bash")
            .arg(&script)
            .arg(&self.dir)
            .arg(hostname)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err)?;
        self.child = Some(child);
        let ready_after = Duration::from_secs(15);
        let private = self.private_socket();
        let bus = self.bus_socket();
        let pid_file = self.dir.join("pid");
        let ready = wait_until(ready_after, || {
            if let Some(c) = self.child.as_mut()
                && matches!(c.try_wait(), Ok(Some(_)))
            {
                return true;
            }
            pid_file.exists() && private.exists() && bus.exists()
        });
        // The script execs into the manager, so the child's PID is the
        // manager's; the PID file confirms it.
        self.manager_pid = read_pid(&pid_file).or(self.child.as_ref().map(Child::id));
        self.journald_pid = read_pid(&self.dir.join("journald.pid"));
        let running = self.manager_pid.is_some_and(alive);
        if !(ready && running && private.exists() && bus.exists()) {
            let log = fs::read_to_string(self.dir.join("manager.out")).unwrap_or_default();
            let journald = fs::read_to_string(self.dir.join("journald.out")).unwrap_or_default();
            self.shutdown();
            return Err(SandboxError::NotReady {
                dir: self.dir.clone(),
                after: ready_after,
                log: format!("{log}{journald}").trim().to_owned(),
            });
        }
        // A user manager makes its notify socket 0755, as its units share
        // its user; a system manager's is 0777. Workloads here run as
        // dynamic users and must reach it for READY=1 and WATCHDOG=1.
        let notify = self.runtime_dir().join("systemd/notify");
        if wait_until(ready_after, || notify.exists()) {
            let _ = fs::set_permissions(&notify, fs::Permissions::from_mode(0o777));
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `$XDG_RUNTIME_DIR` of the sandbox manager.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn bus_socket(&self) -> PathBuf {
        self.runtime_dir().join("bus")
    }

    pub fn private_socket(&self) -> PathBuf {
        self.runtime_dir().join("systemd/private")
    }

    /// D-Bus address of the bus that carries the sandbox's systemd1.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    /// D-Bus address of the manager's private peer-to-peer socket.
    pub fn private_address(&self) -> String {
        format!("unix:path={}", self.private_socket().display())
    }

    /// The sandbox journal, for `journalctl -D`.
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.join("log/journal")
    }

    pub fn manager_pid(&self) -> Option<u32> {
        self.manager_pid
    }

    /// `systemctl --user` aimed at this manager.
    pub fn systemctl(&self) -> Command {
        self.user_command("systemctl")
    }

    /// `<program> --user --no-pager` (systemctl, systemd-analyze, busctl)
    /// aimed at this manager.
    pub fn user_command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("--user")
            .arg("--no-pager")
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus_address());
        c
    }

    /// `journalctl` over this sandbox's journal.
    pub fn journalctl(&self) -> Command {
        let mut c = Command::new("journalctl");
        c.arg("-D").arg(self.journal_dir()).arg("--no-pager");
        c
    }

    /// Stop the manager (every transient unit goes with it) and start a new
    /// one in the same directory, at the same addresses.
    pub fn restart_manager(&mut self) -> Result<(), SandboxError> {
        self.shutdown();
        self.boot()
    }

    /// Stop the manager, its journald and anything left in its cgroups.
    fn shutdown(&mut self) {
        let pid = self
            .manager_pid
            .take()
            .or(self.child.as_ref().map(Child::id));
        if let Some(pid) = pid.filter(|p| alive(*p)) {
            // The manager stops every unit on exit.
            let _ = self
                .systemctl()
                .arg("exit")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !wait_until(Duration::from_secs(15), || !alive(pid)) {
                signal(pid, "TERM");
                if !wait_until(Duration::from_secs(5), || !alive(pid)) {
                    signal(pid, "KILL");
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            // Reap it; it has exited or been killed above, so this is brief.
            if !wait_until(Duration::from_secs(5), || {
                !matches!(child.try_wait(), Ok(None))
            }) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = self.journald_pid.take()
            && alive(pid)
        {
            signal(pid, "TERM");
            if !wait_until(Duration::from_secs(5), || !alive(pid)) {
                signal(pid, "KILL");
            }
        }
        self.remove_cgroups();
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = self.dir.file_name().map(PathBuf::from).unwrap_or_default();
        // Written by the start script; a stale sandbox may have lost it.
        let hierarchies =
            fs::read_to_string(self.dir.join("cgroup-hierarchies")).unwrap_or_else(|_| {
                "/sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup".into()
            });
        hierarchies
            .split_whitespace()
            .map(|h| Path::new(h).join(&name))
            .filter(|p| p.starts_with("/sys/fs/cgroup") && p.exists())
            .collect()
    }

    /// Kill stragglers inside the sandbox's own cgroups (nothing else), then
    /// remove the cgroup directories deepest first.
    fn remove_cgroups(&self) {
        for root in self.cgroup_dirs() {
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            for _ in 0..50 {
                let mut pids = Vec::new();
                for d in &dirs {
                    if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                    }
                }
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    signal(pid, "KILL");
                }
                thread::sleep(Duration::from_millis(20));
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in &dirs {
                for _ in 0..50 {
                    match fs::remove_dir(d) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }
}

/// Clean up after sandboxes whose owner died without dropping them (a test
/// run killed with SIGKILL): their directories are named `sbx-<owner pid>-…`.
/// Only processes inside the dead sandbox's own cgroup are signalled.
pub fn sweep_stale(base: &Path) {
    let owner_dead = |name: &str| {
        name.strip_prefix("sbx-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !alive(pid))
    };
    let mut names: Vec<String> = Vec::new();
    for dir in [
        base,
        Path::new("/sys/fs/cgroup/unified"),
        Path::new("/sys/fs/cgroup/systemd"),
        Path::new("/sys/fs/cgroup"),
    ] {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if owner_dead(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    for name in names {
        let dir = base.join(&name);
        let stale = Sandbox {
            manager_pid: read_pid(&dir.join("pid")).filter(|p| in_cgroup(*p, &name)),
            journald_pid: read_pid(&dir.join("journald.pid")).filter(|p| in_cgroup(*p, &name)),
            dir,
            child: None,
            keep_dir: false,
            detached: false,
            host: None,
        };
        // Drop stops what is left and removes the cgroups and directory.
        drop(stale);
    }
}

/// Stop whatever still runs in the cgroup subtrees named `name` (a
/// sandbox whose directory is gone: only its cgroups say what it ran), and
/// remove them. Only processes inside those cgroups are signalled.
pub fn sweep_cgroups(name: &str) {
    if name.is_empty() || name.contains('/') {
        return;
    }
    let stale = Sandbox {
        dir: Path::new("/nonexistent").join(name),
        child: None,
        manager_pid: None,
        journald_pid: None,
        keep_dir: true,
        detached: false,
        host: None,
    };
    // Drop kills what is left in the cgroups and removes them.
    drop(stale);
}

/// Is `pid` a member of the cgroup subtree named `name`?
fn in_cgroup(pid: u32, name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
        c.lines()
            .any(|l| l.contains(&format!("/{name}/")) || l.ends_with(&format!("/{name}")))
    })
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A new, uniquely named directory under `base`.
fn tempfile_dir(base: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    for n in 0..10_000u32 {
        let nanos = crate::clock::since_epoch().subsec_nanos();
        let dir = base.join(format!("sbx-{pid}-{:x}", nanos ^ n));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free sandbox directory name",
    ))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.shutdown();
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
