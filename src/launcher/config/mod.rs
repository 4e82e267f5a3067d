//! Configuration: command-line flags over an optional TOML file over
//! defaults, validated before anything is bound. Every error names the
//! setting, as a flag and as a file key.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use clap::Parser;
use serde::Deserialize;

pub use crate::settings::{ConfigError, Tls};
use crate::{
    auth::{Role, dial::Address},
    model::{IsolationLevel, Policy, ProbeDefaults, ProcessType, validate::DEFAULT_BINARY_DIRS},
    serve::flags::{DaemonDefaults, DaemonFile, DaemonFlags, Served},
    settings::{bad, hostname, is_token, parse_duration},
    systemd::Target,
};

/// The TCP listener with TLS (or `--insecure`); otherwise the launcher
/// serves only its local socket.
pub const DEFAULT_LISTEN: &str = ":7070";
pub const DEFAULT_SOCKET: &str = crate::protocol::LAUNCHER_SOCKET;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/prism-launcher";
pub const DEFAULT_MAX_PROCESSES: i64 = 50;
pub const DEFAULT_REGION: &str = "local";

/// prism-launcher's command line (ADR-057's flags plus the launcher's own).
#[derive(Parser, Debug, Default)]
#[command(
    name = "prism-launcher",
    version,
    about = "Runs Prism processes (patterns, proxies, backends, utilities) as transient systemd units",
    args_override_self = true,
    mut_arg("listen", |a| a.help("gRPC over TCP on this address, or `none` [default: :7070 with TLS or --insecure; none otherwise]")),
    mut_arg("socket", |a| a.help("gRPC on this Unix socket, or `none`; callers are known by their uid [default: /run/prism-launcher/launcher.sock]")),
    mut_arg("insecure", |a| a.help("Serve TCP peers without client certificates, trusting each of them with every role, and allow plaintext to an admin on another host")),
)]
pub struct Args {
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// prism-admin to register with, as host:port or a URL; several,
    /// comma-separated, for admins that share a database (any of them
    /// will do; the launcher moves to the next when its admin fails).
    /// Without it the launcher runs standalone and takes assignments
    /// directly.
    #[arg(long, value_name = "HOST:PORT[,…]")]
    pub admin_endpoint: Option<String>,
    /// This launcher's id [default: the one its certificate names, else the
    /// host name].
    #[arg(long, value_name = "ID")]
    pub launcher_id: Option<String>,
    /// Most processes held at once [default: 50].
    #[arg(long, value_name = "N")]
    pub max_processes: Option<String>,
    /// Process types this launcher runs [default: pattern,proxy,backend,utility].
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    pub capabilities: Option<Vec<String>>,
    /// Region advertised to the admin [default: local].
    #[arg(long)]
    pub region: Option<String>,
    /// A label advertised to the admin, which places processes that
    /// require or prefer it (e.g. zone=eu-1a, disk=ssd); repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Desired state lives here [default: /var/lib/prism-launcher].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// systemd manager: system, user, bus:<d-bus address> or
    /// private:<d-bus address> [default: system].
    #[arg(long, value_name = "TARGET")]
    pub systemd: Option<String>,
    /// A directory workload binaries may come from; repeat for several
    /// [default: /usr/bin, /usr/local/bin, /usr/lib/prism, /opt/prism/bin].
    #[arg(long = "allow-binary-dir", value_name = "DIR")]
    pub binary_dirs: Vec<PathBuf>,
    /// Accept LD_* (dynamic-linker) variables in assignments' environment.
    #[arg(long)]
    pub allow_dynamic_linker_env: bool,
    /// Isolation of assignments that name none: none, namespace or session
    /// [default: namespace].
    #[arg(long, value_name = "LEVEL")]
    pub default_isolation: Option<String>,
    /// Default probe interval, e.g. 10s or 500ms [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub probe_interval: Option<String>,
    /// Default probe timeout [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub probe_timeout: Option<String>,
    /// Default consecutive probe failures before a process is unhealthy [default: 3].
    #[arg(long, value_name = "N")]
    pub probe_failure_threshold: Option<String>,
    /// Journal rate-limit window of each process's output, unless its
    /// assignment sets one (LogRateLimitIntervalSec=) [default: journald's,
    /// RateLimitIntervalSec=30s].
    #[arg(long, value_name = "DURATION")]
    pub log_rate_limit_interval: Option<String>,
    /// Messages each process may log per window, unless its assignment sets
    /// it (LogRateLimitBurst=) [default: journald's, RateLimitBurst=10000].
    #[arg(long, value_name = "N")]
    pub log_rate_limit_burst: Option<String>,
    /// Full reconciliation at least this often [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub reconcile_interval: Option<String>,
    /// Wait before retrying a process whose circuit opened [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub circuit_cooldown: Option<String>,
    /// Root-only directory for workload credentials [default: /run/prism-launcher/credentials].
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Heartbeat interval towards the admin, until the admin says otherwise
    /// [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// The host:port the admin dials to reach this launcher [default: the
    /// listen address, or the host name and port when listening on all
    /// interfaces].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_address: Option<String>,

    // pattern-launcher's flags, accepted when invoked by that name (see
    // `legacy`); shown only in its --help.
    /// gRPC port on all interfaces (as --listen :PORT) [default: 8982].
    #[arg(long, value_name = "PORT", hide = true, help_heading = LEGACY)]
    pub grpc_port: Option<String>,
    /// Isolation of assignments that name none (as --default-isolation).
    #[arg(long, value_name = "LEVEL", hide = true, help_heading = LEGACY)]
    pub isolation: Option<String>,
    /// Metrics port on 127.0.0.1 (as --metrics-listen 127.0.0.1:PORT).
    #[arg(long, value_name = "PORT", hide = true, help_heading = LEGACY)]
    pub metrics_port: Option<String>,
    /// Ignored: health is grpc.health.v1 on the gRPC port.
    #[arg(long, value_name = "PORT", hide = true, help_heading = LEGACY)]
    pub health_port: Option<String>,
    /// Pattern manifests: each DIR/*/manifest.yaml is a pattern launched by
    /// name; DIR joins the binary allowlist [default: none; ./patterns
    /// when invoked as pattern-launcher].
    #[arg(long, value_name = "DIR")]
    pub patterns_dir: Option<PathBuf>,
    /// Ports for patterns launched by name, as GRPC_PORT and HEALTH_PORT =
    /// GRPC_PORT + 1 [default: 50051-51050].
    #[arg(long, value_name = "LOW-HIGH")]
    pub pattern_ports: Option<String>,
    /// Serve pattern-launcher's API (prism.launcher.PatternLauncher) too
    /// [default: only when invoked as pattern-launcher].
    #[arg(long)]
    pub pattern_launcher_api: bool,
    /// What pattern-launcher's name and flags amount to, filled in by the
    /// `legacy` pre-pass; by default prism-launcher's own defaults.
    #[arg(skip)]
    pub translated: Translated,
}

/// What the pattern-launcher pre-pass (`legacy`) made of the old name and
/// flags that is not a new flag: its defaults, an extra allowlisted
/// directory, notices, and which new flags stand for old ones (errors
/// about them name the old flag).
#[derive(Clone, Debug)]
pub struct Translated {
    /// The patterns directory when none is given, if it exists.
    pub default_patterns_dir: Option<&'static str>,
    /// Serve pattern-launcher's API.
    pub pattern_launcher_api: bool,
    pub default_listen: &'static str,
    pub default_max_processes: i64,
    pub default_capabilities: Vec<ProcessType>,
    /// (new flag, old flag it was given as), e.g. ("listen", "grpc-port").
    pub given_as: Vec<(&'static str, &'static str)>,
    /// Logged once logging is up.
    pub notices: Vec<String>,
}

impl Default for Translated {
    fn default() -> Self {
        Self {
            default_patterns_dir: None,
            pattern_launcher_api: false,
            default_listen: DEFAULT_LISTEN,
            default_max_processes: DEFAULT_MAX_PROCESSES,
            default_capabilities: ProcessType::ALL.to_vec(),
            given_as: Vec::new(),
            notices: Vec::new(),
        }
    }
}

impl Translated {
    /// An error about a new flag given as an old one names the old one
    /// (which has no configuration file key).
    fn rename(&self, mut e: ConfigError) -> ConfigError {
        for (new, old) in &self.given_as {
            if let Some(rest) = e.setting.strip_prefix(&format!("--{new}"))
                && (rest.is_empty() || rest.starts_with(' '))
            {
                e.setting = format!("--{old}");
            }
        }
        e
    }
}

impl Args {
    /// pattern-launcher's flags are taken by the pre-pass under that name;
    /// any left are errors naming their replacement.
    fn refuse_old_flags(&self) -> Result<(), ConfigError> {
        let given = [
            ("grpc-port", self.grpc_port.is_some(), "--listen ADDR"),
            ("isolation", self.isolation.is_some(), "--default-isolation"),
            (
                "metrics-port",
                self.metrics_port.is_some(),
                "--metrics-listen ADDR",
            ),
            (
                "health-port",
                self.health_port.is_some(),
                "nothing: health is grpc.health.v1 on the gRPC port",
            ),
        ];
        match given.iter().find(|(_, set, _)| *set) {
            Some((flag, _, instead)) => bad(
                flag,
                "",
                format!("is a pattern-launcher flag; prism-launcher takes {instead}"),
            ),
            None => Ok(()),
        }
    }
}

const LEGACY: &str = "pattern-launcher flags";

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    admin_endpoint: Option<crate::settings::OneOrMany>,
    launcher_id: Option<String>,
    max_processes: Option<i64>,
    capabilities: Option<Vec<String>>,
    region: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    state_dir: Option<PathBuf>,
    systemd: Option<String>,
    binary_dirs: Option<Vec<PathBuf>>,
    allow_dynamic_linker_env: Option<bool>,
    default_isolation: Option<String>,
    reconcile_interval: Option<String>,
    circuit_cooldown: Option<String>,
    credentials_dir: Option<PathBuf>,
    heartbeat_interval: Option<String>,
    advertise_address: Option<String>,
    patterns_dir: Option<PathBuf>,
    pattern_ports: Option<String>,
    pattern_launcher_api: Option<bool>,
    #[serde(default)]
    probe: ProbeFile,
    #[serde(default)]
    logs: LogsFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LogsFile {
    rate_limit_interval: Option<String>,
    rate_limit_burst: Option<i64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    interval: Option<String>,
    timeout: Option<String>,
    failure_threshold: Option<i64>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The admins, if any (any of them will do): each a socket, or host
    /// and port (TLS whenever `tls` is configured).
    pub admin_endpoints: Vec<Address>,
    pub launcher_id: String,
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub operator_group: String,
    pub trust_domain: String,
    pub max_processes: usize,
    pub capabilities: BTreeSet<ProcessType>,
    pub region: String,
    /// Registered with the admin in the launcher's metadata.
    pub labels: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    pub systemd: Target,
    pub policy: Policy,
    pub credentials_dir: PathBuf,
    pub reconcile_interval: Duration,
    pub circuit_cooldown: Duration,
    pub tls: Option<Tls>,
    pub insecure: bool,
    pub heartbeat_interval: Duration,
    /// What the launcher registers as its address.
    pub advertise_address: String,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: crate::logging::LogFormat,
    /// Pattern manifests, their ports, and pattern-launcher's API.
    pub patterns: PatternsConfig,
    /// Things to tell the operator once logging is up (the pattern-launcher
    /// deprecation notice, what its flags do now).
    pub notices: Vec<String>,
}

/// Patterns launched by name.
#[derive(Clone, Debug)]
pub struct PatternsConfig {
    /// Where `*/manifest.yaml` are read (absolute), if anywhere.
    pub dir: Option<PathBuf>,
    /// GRPC_PORT/HEALTH_PORT pairs come from here.
    pub ports: std::ops::RangeInclusive<u16>,
    /// Serve `prism.launcher.PatternLauncher`.
    pub api: bool,
}

mod resolve;
#[cfg(test)]
mod tests;
