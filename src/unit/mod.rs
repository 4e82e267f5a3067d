//! Pure translation of a [`ManagedProcess`] into a transient systemd unit.
//!
//! Every systemd property the launcher sets is chosen here, one function per
//! concern, each with the reason for the choice. Nothing here does I/O or
//! knows D-Bus types: the systemd client turns [`PropValue`]s into variants.

mod name;
pub mod props;
#[cfg(test)]
pub(crate) mod tests;
pub mod update;

use std::time::Duration;

pub use name::*;

use crate::model::{IsolationLevel, ManagedProcess, Probe, Resources, Secret};

/// The unit's `KillMode`: SIGTERM to the main process only, SIGKILL to what
/// is left. The workload's main process owns its graceful shutdown, as under
/// the old pattern-launcher, which signalled the process it started.
pub const KILL_MODE: &str = "mixed";

/// A D-Bus property value, independent of any D-Bus library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropValue {
    Str(String),
    Bool(bool),
    U32(u32),
    U64(u64),
    StrList(Vec<String>),
    /// `aay`: a list of byte strings.
    BytesList(Vec<Vec<u8>>),
    /// `a(sasb)`: path, argv, ignore-failure.
    Exec(Vec<ExecCommand>),
    I32(i32),
    /// `(bas)`: an allow list (true) or a deny list (false) of names, as
    /// `SystemCallFilter` and `RestrictAddressFamilies` take them.
    NameList(bool, Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCommand {
    pub path: String,
    pub argv: Vec<String>,
    pub ignore_failure: bool,
}

/// A secret handed to the unit as a systemd credential. The systemd client
/// stores it in a root-only file and passes it with `LoadCredential=`
/// (see `systemd::credentials` for why not `SetCredential=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// File name under `$CREDENTIALS_DIRECTORY`.
    pub id: String,
    pub value: Secret,
}

/// Everything needed to create one transient unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: String,
    /// Properties in the order they are sent.
    pub properties: Vec<(&'static str, PropValue)>,
    pub credentials: Vec<Credential>,
}

impl UnitSpec {
    /// The value of a property, if set.
    pub fn get(&self, name: &str) -> Option<&PropValue> {
        self.properties
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    pub fn slice(&self) -> Option<&str> {
        match self.get(props::SLICE) {
            Some(PropValue::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// A daemon of prismctl's local stack (the admin, the launcher) as a
/// transient unit. Its name is outside the workload pattern, so the
/// launcher never manages it.
pub fn daemon(name: &str, description: &str, argv: Vec<String>, identifier: &str) -> UnitSpec {
    UnitSpec {
        name: name.into(),
        properties: vec![
            (props::DESCRIPTION, s(description)),
            (
                props::EXEC_START,
                PropValue::Exec(vec![ExecCommand {
                    path: argv[0].clone(),
                    argv,
                    ignore_failure: false,
                }]),
            ),
            // READY=1 once it listens (and, for the launcher, has reconciled).
            (props::TYPE, s("notify")),
            (props::RESTART, s("on-failure")),
            (props::SYSLOG_IDENTIFIER, s(identifier)),
            (props::STANDARD_ERROR, s("journal")),
            // Stopping the launcher never stops workloads: they are units of
            // their own.
            (props::KILL_MODE, s(KILL_MODE)),
            (props::TIMEOUT_STOP_USEC, usec(Duration::from_secs(10))),
        ],
        credentials: vec![],
    }
}

pub type Props = Vec<(&'static str, PropValue)>;

fn usec(d: Duration) -> PropValue {
    PropValue::U64(d.as_micros().try_into().unwrap_or(u64::MAX))
}

fn s(v: impl Into<String>) -> PropValue {
    PropValue::Str(v.into())
}

/// The translation: one unit per process.
pub fn translate(p: &ManagedProcess) -> UnitSpec {
    let credentials = credentials(p);
    let mut props = Props::new();
    identity(p, &mut props);
    command(p, &mut props);
    props.push((props::ENVIRONMENT, PropValue::StrList(p.environment())));
    restarts(p, &mut props);
    stopping(p, &mut props);
    watchdog(p, &mut props);
    logging(p, &mut props);
    resources(p, &mut props);
    isolation(p, &mut props);
    UnitSpec {
        name: unit_name(p.process_type(), &p.id),
        properties: props,
        credentials,
    }
}

/// The properties as a manager of `version` (0: unknown, assume current)
/// takes them: those newer than it are left out (it would refuse the whole
/// unit). A growing restart delay without `RestartSteps=` (systemd < 254)
/// gets its longest delay as `RestartUSec=`: systemd restarts it after that
/// at the latest, even while the launcher is down, and the launcher restarts
/// it sooner, along the curve (`launcher::pace`).
pub fn for_manager<'a>(
    properties: &'a [(&'static str, PropValue)],
    version: u32,
) -> impl Iterator<Item = (&'static str, &'a PropValue)> {
    let ceiling = if props::has_restart_steps(version) {
        None
    } else {
        properties
            .iter()
            .find(|(name, _)| *name == props::RESTART_MAX_DELAY_USEC)
            .map(|(_, value)| value)
    };
    properties
        .iter()
        .filter(move |(name, _)| props::supported(name, version))
        .map(move |(name, value)| match ceiling {
            Some(max) if *name == props::RESTART_USEC => (*name, max),
            _ => (*name, value),
        })
}

/// The restart properties of `p` as a manager of `version` takes them.
pub fn restart_properties(p: &ManagedProcess, version: u32) -> Props {
    let mut props = Props::new();
    restarts(p, &mut props);
    for_manager(&props, version)
        .map(|(name, value)| (name, value.clone()))
        .collect()
}

/// Order the unit after the units of the processes it depends on, held by
/// the same launcher: `(unit, bind)`. systemd starts it once their start
/// jobs are done (for `Type=notify`, once they sent READY=1), pulls them in
/// if they are not running (`Wants=`), and with `bind` stops it whenever
/// they stop (`BindsTo=`).
pub fn order_after(spec: &mut UnitSpec, dependencies: &[(String, bool)]) {
    if dependencies.is_empty() {
        return;
    }
    let units = |bind: bool| -> Vec<String> {
        dependencies
            .iter()
            .filter(|(_, b)| *b == bind)
            .map(|(u, _)| u.clone())
            .collect()
    };
    let all = dependencies.iter().map(|(u, _)| u.clone()).collect();
    spec.properties
        .push((props::AFTER, PropValue::StrList(all)));
    for (name, bind) in [(props::WANTS, false), (props::BINDS_TO, true)] {
        let list = units(bind);
        if !list.is_empty() {
            spec.properties.push((name, PropValue::StrList(list)));
        }
    }
}

fn identity(p: &ManagedProcess, props: &mut Props) {
    // What `systemctl status` shows, and how the reconciler reads back id and version.
    props.push((props::DESCRIPTION, s(description(p))));
    // Per-type (and per-namespace) slices group accounting and spread load
    // over sub-slices, which makes systemd measurably faster at scale.
    props.push((
        props::SLICE,
        s(slice_name(p.process_type(), &p.namespace, p.isolation)),
    ));
}

fn command(p: &ManagedProcess, props: &mut Props) {
    // The checked (canonical) file is executed; argv[0] stays the path as
    // assigned, which multi-call binaries dispatch on.
    let path = p.executable.display().to_string();
    let argv0 = p.binary.display().to_string();
    // systemd expands `$VAR` and `${VAR}` in ExecStart's arguments (and
    // word-splits a bare `$VAR`); `$$` is its literal `$`. Arguments reach
    // the program exactly as assigned.
    let literal = |a: &str| a.replace('$', "$$");
    let mut argv = Vec::with_capacity(p.args.len() + 1);
    argv.push(literal(&argv0));
    argv.extend(p.args.iter().map(|a| literal(a)));
    // The binary is executed directly with its argv: there is never a shell.
    props.push((
        props::EXEC_START,
        PropValue::Exec(vec![ExecCommand {
            path,
            argv,
            ignore_failure: false,
        }]),
    ));
    // `exec` fails the start job when the binary cannot be executed, instead
    // of `simple`'s false success; `notify` waits for the process's READY=1.
    let ty = if p.notify_ready { "notify" } else { "exec" };
    props.push((props::TYPE, s(ty)));
}

/// Connection strings and credentials: files under `$CREDENTIALS_DIRECTORY`.
fn credentials(p: &ManagedProcess) -> Vec<Credential> {
    p.secrets()
        .into_iter()
        .map(|(id, value)| Credential {
            id,
            value: value.clone(),
        })
        .collect()
}

fn restarts(p: &ManagedProcess, props: &mut Props) {
    let r = &p.restart;
    // systemd restarts the process itself, even while the launcher is down.
    props.push((props::RESTART, s(r.mode.as_str())));
    props.push((props::RESTART_USEC, usec(r.delay)));
    if let Some(max) = r.max_delay {
        // Restarts in a row wait longer each time, geometrically up to
        // `max` (systemd 254+; an older manager is not sent these).
        props.push((props::RESTART_STEPS, PropValue::U32(r.steps)));
        props.push((props::RESTART_MAX_DELAY_USEC, usec(max)));
    }
    // The circuit breaker: more than max_starts starts within the window and
    // systemd leaves the unit `failed` instead of restarting it again.
    props.push((props::START_LIMIT_BURST, PropValue::U32(r.max_starts)));
    props.push((props::START_LIMIT_INTERVAL_USEC, usec(r.window)));
}

fn stopping(p: &ManagedProcess, props: &mut Props) {
    // SIGTERM first; SIGKILL once the graceful timeout (upstream: 30 s) ends.
    props.push((props::TIMEOUT_STOP_USEC, usec(p.stop_timeout)));
    props.push((props::KILL_MODE, s(KILL_MODE)));
}

fn watchdog(p: &ManagedProcess, props: &mut Props) {
    if let Probe::Watchdog { timeout } = p.health.probe {
        // systemd kills and restarts a process that stops pinging WATCHDOG=1.
        props.push((props::WATCHDOG_USEC, usec(timeout)));
    }
}

fn logging(p: &ManagedProcess, props: &mut Props) {
    // `journalctl -t <process id>` finds a process's output.
    props.push((props::SYSLOG_IDENTIFIER, s(p.id.clone())));
    // Explicit, so the manager's defaults cannot send output elsewhere.
    props.push((props::STANDARD_OUTPUT, s("journal")));
    props.push((props::STANDARD_ERROR, s("journal")));
    // Journal fields that select a process's logs on any host, including
    // where the unit-name fields are not recorded (nested user managers).
    props.push((
        props::LOG_EXTRA_FIELDS,
        PropValue::BytesList(vec![
            format!("PRISM_PROCESS_ID={}", p.id).into_bytes(),
            format!("PRISM_PROCESS_TYPE={}", p.process_type()).into_bytes(),
            format!("PRISM_NAMESPACE={}", p.namespace).into_bytes(),
        ]),
    ));
    // journald keeps a rate-limit bucket per unit: a tighter one for a
    // noisy process keeps it from flooding (and rotating away) the
    // others' logs. Unset, journald's RateLimitIntervalSec/Burst apply.
    if let Some(interval) = p.logs.interval {
        props.push((props::LOG_RATE_LIMIT_INTERVAL_USEC, usec(interval)));
    }
    if let Some(burst) = p.logs.burst {
        props.push((props::LOG_RATE_LIMIT_BURST, PropValue::U32(burst)));
    }
}

fn resources(p: &ManagedProcess, props: &mut Props) {
    // Accounting on, so health reports carry memory, CPU and task counts.
    props.push((props::MEMORY_ACCOUNTING, PropValue::Bool(true)));
    props.push((props::CPU_ACCOUNTING, PropValue::Bool(true)));
    props.push((props::TASKS_ACCOUNTING, PropValue::Bool(true)));
    props.extend(resource_limits(&p.resources));
    if let Some(policy) = p.resources.oom_policy {
        // After a kernel OOM kill inside the unit: stop it (and let its
        // restart policy act), carry on, or kill the rest of it.
        props.push((props::OOM_POLICY, s(policy.as_str())));
    }
}

/// The cgroup limits and weights an assignment sets: exactly what systemd
/// can change on a running unit (`SetUnitProperties`, see [`limits_update`]).
fn resource_limits(r: &Resources) -> Props {
    let mut props = Props::new();
    if let Some(bytes) = r.memory_max_bytes {
        // Hard cap: the kernel OOM-kills the unit beyond it.
        props.push((props::MEMORY_MAX, PropValue::U64(bytes)));
    }
    if let Some(bytes) = r.memory_high_bytes {
        // Soft limit: beyond it the kernel throttles and reclaims, never kills.
        props.push((props::MEMORY_HIGH, PropValue::U64(bytes)));
    }
    if let Some(millis) = r.cpu_millis {
        // CPU time per wall-clock second: 1000 millis = 1 s/s = one core.
        props.push((
            props::CPU_QUOTA_PER_SEC_USEC,
            PropValue::U64(u64::from(millis) * 1000),
        ));
    }
    // Shares under contention only; no cap while the CPU or disk is idle.
    if let Some(weight) = r.cpu_weight {
        props.push((props::CPU_WEIGHT, PropValue::U64(u64::from(weight))));
    }
    if let Some(weight) = r.io_weight {
        props.push((props::IO_WEIGHT, PropValue::U64(u64::from(weight))));
    }
    if let Some(tasks) = r.tasks_max {
        // Bounds fork bombs and thread leaks.
        props.push((props::TASKS_MAX, PropValue::U64(tasks)));
    }
    props
}

/// What to set on a running unit to take it from `old`'s limits to `new`'s:
/// each changed limit, and a dropped one back to systemd's default
/// (infinity, or the unset weight). `None` when that is not possible: a
/// dropped `TasksMax` would have to return to the manager's
/// `DefaultTasksMax`, which only a new unit gets.
pub fn limits_update(old: &Resources, new: &Resources) -> Option<Props> {
    if old.tasks_max.is_some() && new.tasks_max.is_none() {
        return None;
    }
    let before = resource_limits(old);
    let after = resource_limits(new);
    let mut update: Props = after
        .iter()
        .filter(|prop| !before.contains(prop))
        .cloned()
        .collect();
    for (name, _) in &before {
        if !after.iter().any(|(n, _)| n == name) {
            // u64::MAX is "infinity" for the limits and "unset" for weights.
            update.push((name, PropValue::U64(u64::MAX)));
        }
    }
    Some(update)
}

fn isolation(p: &ManagedProcess, props: &mut Props) {
    // Workloads never run as root: a dynamic user, allocated by systemd and
    // shared according to the isolation level (see `dynamic_user`).
    props.push((props::DYNAMIC_USER, PropValue::Bool(true)));
    props.push((props::USER, s(dynamic_user(p))));
    // No setuid escalation back to root.
    props.push((props::NO_NEW_PRIVILEGES, PropValue::Bool(true)));
    // The OS is read-only to the workload.
    props.push((props::PROTECT_SYSTEM, s("strict")));
    // `read-only`, not `yes`: homes stay readable for configuration, and
    // `yes` fails in nested managers (exit 226/NAMESPACE).
    props.push((props::PROTECT_HOME, s("read-only")));
    // No shared /tmp between units (DynamicUser implies it; said explicitly).
    props.push((props::PRIVATE_TMP, PropValue::Bool(true)));
    if p.isolation == IsolationLevel::Session {
        // Session isolation also hides physical devices.
        props.push((props::PRIVATE_DEVICES, PropValue::Bool(true)));
    }
    hardening(&p.sandbox, props);
}

/// The names of the properties [`hardening`] may set, opt-ins included
/// (for measuring their cost).
pub fn hardening_properties() -> Vec<&'static str> {
    let mut props = Props::new();
    let all = crate::model::SandboxOptions {
        memory_deny_write_execute: true,
    };
    hardening(&all, &mut props);
    props.into_iter().map(|(name, _)| name).collect()
}

/// What every long-running network service tolerates, at every isolation
/// level (`systemd-analyze security` scores in the README).
fn hardening(sandbox: &crate::model::SandboxOptions, props: &mut Props) {
    // The kernel is not the workload's to tune, load into, read the logs
    // of, or set the clock of; the cgroup tree and hostname are read-only.
    for name in [
        props::PROTECT_KERNEL_TUNABLES,
        props::PROTECT_KERNEL_MODULES,
        props::PROTECT_KERNEL_LOGS,
        props::PROTECT_CONTROL_GROUPS,
        props::PROTECT_CLOCK,
        props::PROTECT_HOSTNAME,
    ] {
        props.push((name, PropValue::Bool(true)));
    }
    // Other users' processes are invisible in /proc, and /proc holds
    // processes only (no /proc/sys, /proc/kcore...).
    props.push((props::PROTECT_PROC, s("invisible")));
    props.push((props::PROC_SUBSET, s("pid")));
    // No new namespaces of any kind (a flag set of those allowed: none).
    props.push((props::RESTRICT_NAMESPACES, PropValue::U64(0)));
    props.push((props::RESTRICT_REALTIME, PropValue::Bool(true)));
    props.push((props::RESTRICT_SUID_SGID, PropValue::Bool(true)));
    props.push((props::LOCK_PERSONALITY, PropValue::Bool(true)));
    // Native system calls only, and only those a service needs; a call
    // outside the set fails with EPERM rather than killing the process.
    props.push((
        props::SYSTEM_CALL_ARCHITECTURES,
        PropValue::StrList(vec!["native".into()]),
    ));
    props.push((
        props::SYSTEM_CALL_FILTER,
        PropValue::NameList(true, vec!["@system-service".into()]),
    ));
    props.push((props::SYSTEM_CALL_ERROR_NUMBER, PropValue::I32(EPERM)));
    // Sockets: local, IPv4 and IPv6; no netlink, packet or others.
    props.push((
        props::RESTRICT_ADDRESS_FAMILIES,
        PropValue::NameList(
            true,
            ["AF_UNIX", "AF_INET", "AF_INET6"]
                .map(String::from)
                .to_vec(),
        ),
    ));
    // No capabilities at all, even for a binary that would gain some.
    props.push((props::CAPABILITY_BOUNDING_SET, PropValue::U64(0)));
    // Files the workload creates are its own.
    props.push((props::UMASK, PropValue::U32(0o077)));
    if sandbox.memory_deny_write_execute {
        // Opt-in: no memory both writable and executable. JIT compilers
        // (JVM, V8, .NET, LuaJIT, PCRE's JIT) need such memory.
        props.push((props::MEMORY_DENY_WRITE_EXECUTE, PropValue::Bool(true)));
    }
}

/// `EPERM`, what a filtered system call returns.
const EPERM: i32 = 1;
