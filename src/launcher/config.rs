//! Configuration: command-line flags over an optional TOML file over
//! defaults, validated before anything is bound. Every error names the
//! setting, as a flag and as a file key.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

pub use crate::settings::{ConfigError, Tls};
use crate::{
    auth::{Role, dial::Address},
    model::{IsolationLevel, Policy, ProbeDefaults, ProcessType, validate::DEFAULT_BINARY_DIRS},
    serve::flags::{DaemonDefaults, DaemonFile, DaemonFlags, TlsFile},
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
    /// prism-admin to register with, as host:port or a URL. Without it the
    /// launcher runs standalone and takes assignments directly.
    #[arg(long, value_name = "HOST:PORT")]
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
    /// Binaries under it may run (as --allow-binary-dir); manifests are not read.
    #[arg(long, value_name = "DIR", hide = true, help_heading = LEGACY)]
    pub patterns_dir: Option<PathBuf>,
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
    /// `--patterns-dir D`, added to the binary allowlist.
    pub binary_dir: Option<PathBuf>,
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
            binary_dir: None,
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
            (
                "patterns-dir",
                self.patterns_dir.is_some(),
                "--allow-binary-dir",
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
    admin_endpoint: Option<String>,
    launcher_id: Option<String>,
    listen: Option<String>,
    socket: Option<String>,
    operator_group: Option<String>,
    trust_domain: Option<String>,
    max_processes: Option<i64>,
    capabilities: Option<Vec<String>>,
    region: Option<String>,
    state_dir: Option<PathBuf>,
    systemd: Option<String>,
    binary_dirs: Option<Vec<PathBuf>>,
    allow_dynamic_linker_env: Option<bool>,
    default_isolation: Option<String>,
    reconcile_interval: Option<String>,
    circuit_cooldown: Option<String>,
    credentials_dir: Option<PathBuf>,
    insecure: Option<bool>,
    heartbeat_interval: Option<String>,
    advertise_address: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<crate::logging::LogFormat>,
    #[serde(default)]
    probe: ProbeFile,
    #[serde(default)]
    tls: TlsFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    interval: Option<String>,
    timeout: Option<String>,
    failure_threshold: Option<i64>,
}

impl FileConfig {
    /// The settings both daemons share, taken out.
    fn daemon(&mut self) -> DaemonFile {
        DaemonFile {
            listen: self.listen.take(),
            socket: self.socket.take(),
            operator_group: self.operator_group.take(),
            trust_domain: self.trust_domain.take(),
            insecure: self.insecure.take(),
            metrics_listen: self.metrics_listen.take(),
            log_format: self.log_format.take(),
            tls: std::mem::take(&mut self.tls),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The admin, if any: its socket, or host and port (TLS whenever
    /// `tls` is configured).
    pub admin_endpoint: Option<Address>,
    pub launcher_id: String,
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub operator_group: String,
    pub trust_domain: String,
    pub max_processes: usize,
    pub capabilities: BTreeSet<ProcessType>,
    pub region: String,
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
    /// Things to tell the operator once logging is up (the pattern-launcher
    /// deprecation notice, what its flags do now).
    pub notices: Vec<String>,
}

impl Args {
    /// Merge with the config file (if any) and defaults, and validate.
    pub fn resolve(mut self) -> Result<Config, ConfigError> {
        self.refuse_old_flags()?;
        let legacy = std::mem::take(&mut self.translated);
        self.resolve_with(&legacy).map_err(|e| legacy.rename(e))
    }

    fn resolve_with(self, legacy: &Translated) -> Result<Config, ConfigError> {
        let mut file: FileConfig = self.daemon.read_file()?;
        let served = self.daemon.resolve(
            file.daemon(),
            DaemonDefaults {
                socket: DEFAULT_SOCKET,
                listen: legacy.default_listen,
                insecure_listens: true,
            },
        )?;
        let (tls, access, listen, insecure) =
            (served.tls, served.access, served.listen, served.insecure);

        let admin_endpoint = match self.admin_endpoint.or(file.admin_endpoint) {
            None => None,
            Some(e) => {
                Some(Address::parse(&e).or_else(|r| bad("admin-endpoint", "admin_endpoint", r))?)
            }
        };
        // The admin accepts only the certificate of the launcher it means.
        let cert_id = match &tls {
            None => None,
            Some(tls) => {
                let must = format!(
                    "a launcher's must name spiffe://{}/launcher/<id>",
                    access.trust_domain
                );
                Some(access.own_role(tls, &must, |r| match r {
                    Role::Launcher(id) => Some(id.clone()),
                    _ => None,
                })?)
            }
        };
        let launcher_id = self
            .launcher_id
            .or(file.launcher_id)
            .or(cert_id.clone())
            .unwrap_or_else(hostname);
        if let Some(id) = cert_id.filter(|id| *id != launcher_id) {
            return bad(
                "launcher-id",
                "launcher_id",
                format!("{launcher_id:?} is not the launcher its certificate names ({id:?})"),
            );
        }
        if !is_token(&launcher_id) {
            return bad(
                "launcher-id",
                "launcher_id",
                format!("{launcher_id:?} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"),
            );
        }
        let max_processes = match self.max_processes {
            Some(s) => s.parse::<i64>().or_else(|_| {
                bad(
                    "max-processes",
                    "max_processes",
                    format!("{s:?} is not a number"),
                )
            })?,
            None => file.max_processes.unwrap_or(legacy.default_max_processes),
        };
        if !(1..=10_000).contains(&max_processes) {
            return bad(
                "max-processes",
                "max_processes",
                format!("{max_processes} is outside 1..=10000"),
            );
        }

        let capability_names = self.capabilities.or(file.capabilities).unwrap_or_else(|| {
            legacy
                .default_capabilities
                .iter()
                .map(ProcessType::to_string)
                .collect()
        });
        let mut capabilities = BTreeSet::new();
        for name in &capability_names {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let Some(ty) = ProcessType::named(name) else {
                return bad(
                    "capabilities",
                    "capabilities",
                    format!(
                        "unknown process type {name:?} (expected {})",
                        ProcessType::expected()
                    ),
                );
            };
            capabilities.insert(ty);
        }
        if capabilities.is_empty() {
            return bad("capabilities", "capabilities", "names no process type");
        }

        let region = self
            .region
            .or(file.region)
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        if !is_token(&region) {
            return bad(
                "region",
                "region",
                format!("{region:?} is not a valid region name"),
            );
        }

        let state_dir = self
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return bad(
                "state-dir",
                "state_dir",
                format!("{} is not absolute", state_dir.display()),
            );
        }
        let credentials_dir = self
            .credentials_dir
            .or(file.credentials_dir)
            .unwrap_or_else(|| PathBuf::from(crate::systemd::DEFAULT_CREDENTIALS_DIR));
        if !credentials_dir.is_absolute() {
            return bad(
                "credentials-dir",
                "credentials_dir",
                format!("{} is not absolute", credentials_dir.display()),
            );
        }

        let systemd: Target = self
            .systemd
            .or(file.systemd)
            .unwrap_or_else(|| "system".to_owned())
            .parse()
            .or_else(|r| bad("systemd", "systemd", r))?;

        let mut binary_dirs = if !self.binary_dirs.is_empty() {
            self.binary_dirs
        } else {
            file.binary_dirs
                .unwrap_or_else(|| DEFAULT_BINARY_DIRS.iter().map(PathBuf::from).collect())
        };
        binary_dirs.extend(legacy.binary_dir.clone());
        let mut policy = Policy::with_binary_dirs(binary_dirs)
            .or_else(|e| bad("allow-binary-dir", "binary_dirs", e.reason))?;
        policy.allow_dynamic_linker_env =
            self.allow_dynamic_linker_env || file.allow_dynamic_linker_env.unwrap_or(false);
        if let Some(level) = self.default_isolation.or(file.default_isolation) {
            policy.default_isolation = level
                .parse::<IsolationLevel>()
                .or_else(|r| bad("default-isolation", "default_isolation", r))?;
        }

        let duration =
            |flag: &str, key: &str, value: Option<String>, default: Duration, min: Duration| {
                match value {
                    None => Ok(default),
                    Some(v) => {
                        let d = parse_duration(&v).or_else(|r| bad(flag, key, r))?;
                        if d < min || d > Duration::from_secs(24 * 3600) {
                            bad(flag, key, format!("{v} is outside {min:?}..=24h"))
                        } else {
                            Ok(d)
                        }
                    }
                }
            };
        let defaults = ProbeDefaults::default();
        let probe_interval = duration(
            "probe-interval",
            "probe.interval",
            self.probe_interval.or(file.probe.interval),
            defaults.interval,
            Duration::from_millis(100),
        )?;
        let probe_timeout = duration(
            "probe-timeout",
            "probe.timeout",
            self.probe_timeout.or(file.probe.timeout),
            defaults.timeout,
            Duration::from_millis(10),
        )?;
        let threshold = match self.probe_failure_threshold {
            Some(s) => s.parse::<i64>().or_else(|_| {
                bad(
                    "probe-failure-threshold",
                    "probe.failure_threshold",
                    format!("{s:?} is not a number"),
                )
            })?,
            None => file
                .probe
                .failure_threshold
                .unwrap_or(i64::from(defaults.failure_threshold)),
        };
        if !(1..=100).contains(&threshold) {
            return bad(
                "probe-failure-threshold",
                "probe.failure_threshold",
                format!("{threshold} is outside 1..=100"),
            );
        }
        policy.probe_defaults = ProbeDefaults {
            interval: probe_interval,
            timeout: probe_timeout,
            failure_threshold: threshold as u32,
        };
        let reconcile_interval = duration(
            "reconcile-interval",
            "reconcile_interval",
            self.reconcile_interval.or(file.reconcile_interval),
            Duration::from_secs(60),
            Duration::from_secs(1),
        )?;
        let circuit_cooldown = duration(
            "circuit-cooldown",
            "circuit_cooldown",
            self.circuit_cooldown.or(file.circuit_cooldown),
            Duration::from_secs(60),
            Duration::from_millis(100),
        )?;

        if let Some(admin) = &admin_endpoint {
            match (admin, &tls) {
                (Address::Tcp { .. }, Some(t)) if t.client_ca.is_none() => {
                    return bad(
                        "tls-ca",
                        "tls.ca",
                        format!(
                            "the link to the admin at {admin} needs a CA to verify the admin's certificate with"
                        ),
                    );
                }
                (Address::Tcp { https: true, .. }, None) => {
                    return bad(
                        "admin-endpoint",
                        "admin_endpoint",
                        format!(
                            "{admin} asks for TLS; configure --tls-cert, --tls-key and --tls-ca"
                        ),
                    );
                }
                (Address::Tcp { .. }, None) if !admin.is_local() && !insecure => {
                    return bad(
                        "admin-endpoint",
                        "admin_endpoint",
                        format!(
                            "plaintext to {admin} on another host would let anyone on the path \
                             act as the admin; configure TLS, or pass --insecure"
                        ),
                    );
                }
                _ => {}
            }
        }
        let heartbeat_interval = duration(
            "heartbeat-interval",
            "heartbeat_interval",
            self.heartbeat_interval.or(file.heartbeat_interval),
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?;
        let advertise_address = match self.advertise_address.or(file.advertise_address) {
            Some(a) => {
                Address::parse(&a).or_else(|r| bad("advertise-address", "advertise_address", r))?;
                a
            }
            None => match (listen, &access.socket) {
                (Some(l), _) if l.ip().is_unspecified() => format!("{}:{}", hostname(), l.port()),
                (Some(l), _) => l.to_string(),
                (None, Some(path)) => format!("unix:{}", path.display()),
                // Refused above: something is always served.
                (None, None) => String::new(),
            },
        };
        Ok(Config {
            admin_endpoint,
            launcher_id,
            listen,
            socket: access.socket,
            operator_group: access.operator_group,
            trust_domain: access.trust_domain,
            max_processes: max_processes as usize,
            capabilities,
            region,
            state_dir,
            systemd,
            policy,
            credentials_dir,
            reconcile_interval,
            circuit_cooldown,
            tls,
            insecure,
            heartbeat_interval,
            advertise_address,
            metrics_listen: served.metrics_listen,
            log_format: served.log_format,
            notices: legacy.notices.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        let mut full = vec!["prism-launcher"];
        full.extend_from_slice(list);
        Args::try_parse_from(full).expect("parses")
    }

    #[test]
    fn the_packaged_configuration_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/etc/launcher.toml");
        let c = args(&["--config", path])
            .resolve()
            .expect("packaging/etc/launcher.toml");
        assert_eq!(c.listen, None, "the local socket only");
        assert_eq!(c.socket, Some(PathBuf::from(DEFAULT_SOCKET)));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.capabilities.len(), 4);
    }

    #[test]
    fn plaintext_tcp_needs_insecure() {
        let c = args(&[]).resolve().unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.advertise_address, format!("unix:{DEFAULT_SOCKET}"));
        let e = args(&["--listen", "127.0.0.1:7070"]).resolve().unwrap_err();
        assert!(e.setting.starts_with("--listen"), "{e}");
        assert!(e.reason.contains("--insecure"), "{e}");
        let c = args(&["--listen", "127.0.0.1:7070", "--insecure"])
            .resolve()
            .unwrap();
        assert_eq!(c.max_processes, 50);
        assert_eq!(c.capabilities.len(), 4);
        assert_eq!(c.systemd, Target::System);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.policy.probe_defaults, ProbeDefaults::default());
        assert!(args(&["--insecure"]).resolve().unwrap().insecure);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--max-processes", "0"], "--max-processes (max_processes)"),
            (
                &["--max-processes", "ten"],
                "--max-processes (max_processes)",
            ),
            (
                &["--capabilities", "pattern,daemon"],
                "--capabilities (capabilities)",
            ),
            (&["--listen", "nowhere"], "--listen (listen)"),
            (&["--listen", ":99999"], "--listen (listen)"),
            (
                &["--admin-endpoint", "admin"],
                "--admin-endpoint (admin_endpoint)",
            ),
            (
                &["--admin-endpoint", "ftp://admin:1"],
                "--admin-endpoint (admin_endpoint)",
            ),
            (&["--launcher-id", "a b"], "--launcher-id (launcher_id)"),
            (&["--state-dir", "relative"], "--state-dir (state_dir)"),
            (&["--systemd", "nope"], "--systemd (systemd)"),
            (
                &["--allow-binary-dir", "bin"],
                "--allow-binary-dir (binary_dirs)",
            ),
            (
                &["--default-isolation", "total"],
                "--default-isolation (default_isolation)",
            ),
            (
                &["--probe-interval", "10 parsecs"],
                "--probe-interval (probe.interval)",
            ),
            (
                &["--probe-failure-threshold", "0"],
                "--probe-failure-threshold (probe.failure_threshold)",
            ),
            (&["--tls-cert", "/nonexistent"], "--tls-key (tls.key)"),
            (
                &["--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"],
                "--tls-cert (tls.cert)",
            ),
            (&["--config", "/nonexistent.toml"], "--config"),
            (&["--socket", "launcher.sock"], "--socket (socket)"),
            (
                &["--listen", "none", "--socket", "none"],
                "--listen (listen)",
            ),
            (&["--trust-domain", "a/b"], "--trust-domain (trust_domain)"),
            (
                &["--operator-group", "a b"],
                "--operator-group (operator_group)",
            ),
            (
                &["--admin-endpoint", "https://admin:8981"],
                "--admin-endpoint (admin_endpoint)",
            ),
            (
                &["--admin-endpoint", "unix:relative.sock"],
                "--admin-endpoint (admin_endpoint)",
            ),
        ];
        for (flags, setting) in cases {
            let mut all = vec!["--listen", "127.0.0.1:7070", "--insecure"];
            all.extend_from_slice(flags);
            // Later flags win, so a case's own --listen overrides.
            let e = args(&all).resolve().unwrap_err();
            assert_eq!(e.setting, *setting, "{flags:?}: {e}");
        }
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("launcher.toml");
        std::fs::write(
            &file,
            r#"
listen = "127.0.0.1:7171"
insecure = true
max_processes = 7
capabilities = ["pattern", "utility"]
region = "eu-1"
admin_endpoint = "admin.example:8981"
[probe]
interval = "500ms"
failure_threshold = 2
"#,
        )
        .unwrap();
        let path = file.display().to_string();
        let c = args(&["--config", &path, "--max-processes", "9"])
            .resolve()
            .unwrap();
        assert_eq!(c.listen.unwrap().port(), 7171);
        assert_eq!(c.max_processes, 9);
        assert_eq!(c.region, "eu-1");
        assert_eq!(
            c.admin_endpoint.unwrap().to_string(),
            "http://admin.example:8981"
        );
        assert_eq!(c.capabilities.len(), 2);
        assert_eq!(c.policy.probe_defaults.interval, Duration::from_millis(500));
        assert_eq!(c.policy.probe_defaults.failure_threshold, 2);

        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nmax_procs = 3\n").unwrap();
        let e = args(&["--config", &path]).resolve().unwrap_err();
        assert_eq!(e.setting, "--config");
        assert!(e.reason.contains("max_procs"), "{e}");
    }

    #[test]
    fn durations_and_addresses() {
        use crate::settings::{parse_endpoint, parse_listen};
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_listen(":7070").unwrap().to_string(), "0.0.0.0:7070");
        assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(parse_endpoint("admin:8981").unwrap(), "http://admin:8981");
        assert_eq!(
            parse_endpoint("https://admin:8981/").unwrap(),
            "https://admin:8981"
        );
    }

    #[test]
    fn repeated_allow_binary_dir_appends() {
        let args = Args::try_parse_from([
            "prism-launcher",
            "--listen",
            "127.0.0.1:1",
            "--insecure",
            "--allow-binary-dir",
            "/a",
            "--allow-binary-dir",
            "/b",
        ])
        .unwrap();
        let c = args.resolve().unwrap();
        assert_eq!(
            c.policy.binary_dirs,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }
}
