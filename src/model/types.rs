//! Domain types of a managed process.

use std::{collections::BTreeMap, fmt, path::PathBuf, str::FromStr, time::Duration};

/// The four kinds of process a launcher runs (ADR-057).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcessType {
    Pattern,
    Proxy,
    Backend,
    Utility,
}

impl ProcessType {
    pub const ALL: [ProcessType; 4] = [Self::Pattern, Self::Proxy, Self::Backend, Self::Utility];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pattern => "pattern",
            Self::Proxy => "proxy",
            Self::Backend => "backend",
            Self::Utility => "utility",
        }
    }

    /// The type of this exact name (not the wire's empty default).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// "pattern, proxy, backend or utility", for errors.
    pub fn expected() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
        let (last, rest) = names.split_last().expect("four types");
        format!("{} or {last}", rest.join(", "))
    }
}

impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the wire form. The empty string is `pattern`, as upstream defines it.
impl FromStr for ProcessType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Ok(Self::Pattern),
            _ => Self::named(s).ok_or_else(|| {
                format!("unknown process type {s:?} (expected {})", Self::expected())
            }),
        }
    }
}

/// How strongly a process is separated from its neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IsolationLevel {
    /// One shared dynamic user per process type.
    None,
    /// One dynamic user and one slice per namespace (the upstream default).
    #[default]
    Namespace,
    /// One dynamic user per process, plus private /tmp and /dev.
    Session,
}

impl IsolationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Namespace => "namespace",
            Self::Session => "session",
        }
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IsolationLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "namespace" => Ok(Self::Namespace),
            "session" => Ok(Self::Session),
            other => Err(format!(
                "unknown isolation level {other:?} (expected none, namespace or session)"
            )),
        }
    }
}

/// A value that must never be logged or shown: credentials, connection strings.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself; call only where it is handed to systemd.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A backend reference held by a pattern slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotBackend {
    pub backend_type: String,
    pub connection_string: Option<Secret>,
    pub credentials: BTreeMap<String, Secret>,
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternConfig {
    pub pattern_type: String,
    pub slots: BTreeMap<String, SlotBackend>,
    pub settings: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub admin_endpoint: String,
    pub control_port: u16,
    pub data_port: u16,
    pub proxy_id: Option<String>,
    pub partition_ranges: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub backend_type: String,
    pub connection_string: Secret,
    pub credentials: BTreeMap<String, Secret>,
    pub driver_options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UtilityConfig {
    pub utility_type: String,
    pub settings: BTreeMap<String, String>,
    pub target_processes: Vec<String>,
}

/// The type-specific payload; its variant *is* the process type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    Pattern(PatternConfig),
    Proxy(ProxyConfig),
    Backend(BackendConfig),
    Utility(UtilityConfig),
}

impl ProcessKind {
    pub fn process_type(&self) -> ProcessType {
        match self {
            Self::Pattern(_) => ProcessType::Pattern,
            Self::Proxy(_) => ProcessType::Proxy,
            Self::Backend(_) => ProcessType::Backend,
            Self::Utility(_) => ProcessType::Utility,
        }
    }
}

/// When systemd restarts the process (systemd `Restart=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartMode {
    #[default]
    OnFailure,
    Always,
    OnAbnormal,
    No,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnFailure => "on-failure",
            Self::Always => "always",
            Self::OnAbnormal => "on-abnormal",
            Self::No => "no",
        }
    }
}

impl FromStr for RestartMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "on-failure" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            "on-abnormal" => Ok(Self::OnAbnormal),
            "no" => Ok(Self::No),
            other => Err(format!(
                "unknown restart policy {other:?} (expected on-failure, always, on-abnormal or no)"
            )),
        }
    }
}

/// Restarts and the circuit breaker (systemd's start limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub delay: Duration,
    /// Starts allowed within `window` before the circuit opens.
    pub max_starts: u32,
    pub window: Duration,
    /// The delay grows to this in `steps` restarts in a row, if set.
    pub max_delay: Option<Duration>,
    pub steps: u32,
}

impl RestartPolicy {
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_STARTS: u32 = 5;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
    pub const DEFAULT_STEPS: u32 = 5;

    /// The delay before the `n`th restart in a row (from 0): systemd's
    /// curve, geometric from `delay` to `max_delay` over `steps` restarts.
    pub fn delay_of(&self, n: u32) -> Duration {
        let Some(max) = self.max_delay.filter(|m| *m > self.delay) else {
            return self.delay;
        };
        if self.steps == 0 || n >= self.steps {
            return max;
        }
        let (lo, hi) = (self.delay.as_secs_f64(), max.as_secs_f64());
        Duration::from_secs_f64(lo * (hi / lo).powf(f64::from(n) / f64::from(self.steps)))
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            delay: Self::DEFAULT_DELAY,
            max_starts: Self::DEFAULT_MAX_STARTS,
            window: Self::DEFAULT_WINDOW,
            max_delay: None,
            steps: 0,
        }
    }
}

/// How the launcher judges liveness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    None,
    Http {
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
    Grpc {
        port: u16,
    },
    /// sd_notify `WATCHDOG=1` pings; systemd kills and restarts on silence.
    Watchdog {
        timeout: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(10);
    pub const DEFAULT_HTTP_PATH: &'static str = "/health";
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            probe: Probe::None,
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
        }
    }
}

/// Sandboxing beyond what every unit gets, chosen per assignment because
/// it breaks some workloads.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SandboxOptions {
    /// systemd `MemoryDenyWriteExecute=`: breaks JIT compilers.
    pub memory_deny_write_execute: bool,
}

/// cgroup limits and weights; `None` leaves systemd's default (unlimited,
/// weight 100).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Resources {
    /// `MemoryMax=`: the hard cap, beyond which the kernel OOM-kills.
    pub memory_max_bytes: Option<u64>,
    /// `MemoryHigh=`: the soft limit, beyond which the kernel throttles and
    /// reclaims but never kills.
    pub memory_high_bytes: Option<u64>,
    /// Thousandths of a CPU: 1000 is one full core.
    pub cpu_millis: Option<u32>,
    /// `CPUWeight=`, 1..=10000.
    pub cpu_weight: Option<u32>,
    /// `IOWeight=`, 1..=10000.
    pub io_weight: Option<u32>,
    pub tasks_max: Option<u64>,
    /// `OOMPolicy=`.
    pub oom_policy: Option<OomPolicy>,
}

/// What systemd does when the kernel OOM-kills a task of the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomPolicy {
    /// Log it and keep the unit running.
    Continue,
    /// Stop the unit cleanly; its restart policy applies (`Result=oom-kill`).
    Stop,
    /// Kill every remaining process of the unit.
    Kill,
}

impl OomPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Stop => "stop",
            Self::Kill => "kill",
        }
    }
}

impl FromStr for OomPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "continue" => Ok(Self::Continue),
            "stop" => Ok(Self::Stop),
            "kill" => Ok(Self::Kill),
            other => Err(format!(
                "unknown OOM policy {other:?} (expected stop, continue or kill)"
            )),
        }
    }
}

/// A process another one needs running first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub id: String,
    /// Stop with it (systemd `BindsTo=`), not just start after it (`Wants=`).
    pub bind: bool,
}

/// Where prism-admin may place a process (launchers ignore it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PlacementRules {
    /// Spread with the other processes of this group.
    pub spread_group: Option<String>,
    /// The most of `spread_group` on one launcher (1 unless set).
    pub max_per_launcher: u32,
    /// Launcher labels that must all match.
    pub require_labels: BTreeMap<String, String>,
    /// Launcher labels preferred, the more matched the better.
    pub prefer_labels: BTreeMap<String, String>,
}

/// A process's life while its launcher is cut off from every admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OnDisconnect {
    /// The launcher stops it once no admin has answered for this long.
    pub stop_after: Option<Duration>,
    /// prism-admin runs it elsewhere once its launcher has been silent
    /// this long (prism-admin checks it leaves no overlap).
    pub replace_after: Option<Duration>,
    /// It may run twice for a while: replacement needs no `stop_after`.
    pub at_least_once: bool,
}

impl OnDisconnect {
    /// The shortest silence after which a copy elsewhere cannot overlap the
    /// one its cut-off launcher stops: that launcher stops it `stop_after`
    /// after the last answer it had, which is no later than the admins'
    /// last heartbeat from it; the stop itself takes up to `grace`; a
    /// heartbeat may be acknowledged an `interval` after it was recorded
    /// (or a leader failing over judges silence from a record up to an
    /// interval old); and a deposed leader may act for up to a `lease`.
    pub fn margin(
        stop_after: Duration,
        grace: Duration,
        interval: Duration,
        lease: Duration,
    ) -> Duration {
        stop_after + grace + interval + lease
    }
}

/// The journal's rate limit on a process's output; `None` leaves
/// journald's own (`RateLimitIntervalSec=`, `RateLimitBurst=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogLimits {
    pub interval: Option<Duration>,
    pub burst: Option<u32>,
}

/// A validated process assignment: everything needed to run it as a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedProcess {
    /// `[A-Za-z0-9._:@-]{1,128}`.
    pub id: String,
    /// Empty when the process belongs to no namespace.
    pub namespace: String,
    pub version: i64,
    /// As assigned: absolute, inside the allowlist, an executable regular
    /// file. Also the program's `argv[0]`.
    pub binary: PathBuf,
    /// The file the unit executes: `binary`'s canonical path once checked
    /// on this host, so re-pointing a symlink later changes nothing that
    /// runs; `binary` itself after a structural check only.
    pub executable: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub port: Option<u16>,
    pub health_port: Option<u16>,
    pub log_level: Option<String>,
    pub kind: ProcessKind,
    pub isolation: IsolationLevel,
    pub restart: RestartPolicy,
    pub health: HealthCheck,
    pub resources: Resources,
    pub sandbox: SandboxOptions,
    /// The journal's rate limit on its output (the launcher's default filled in).
    pub logs: LogLimits,
    /// Spread and affinity, for prism-admin.
    pub placement: PlacementRules,
    /// What must run first.
    pub depends_on: Vec<Dependency>,
    /// While its launcher is cut off from every admin.
    pub on_disconnect: OnDisconnect,
    /// Time between SIGTERM and SIGKILL on stop.
    pub stop_timeout: Duration,
    /// The process reports readiness with sd_notify.
    pub notify_ready: bool,
}

impl ManagedProcess {
    pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn process_type(&self) -> ProcessType {
        self.kind.process_type()
    }

    /// The ids of the processes it depends on.
    pub fn dependency_ids(&self) -> Vec<String> {
        self.depends_on.iter().map(|d| d.id.clone()).collect()
    }

    /// Whether it depends on process `id`.
    pub fn depends_on(&self, id: &str) -> bool {
        self.depends_on.iter().any(|d| d.id == id)
    }
}
