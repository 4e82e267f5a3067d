//! Resolution: flags over the configuration file over defaults, one
//! concern at a time, each error naming its setting.

use super::*;

impl Args {
    /// Merge with the config file (if any) and defaults, and validate.
    pub fn resolve(mut self) -> Result<Config, ConfigError> {
        self.refuse_old_flags()?;
        let legacy = std::mem::take(&mut self.translated);
        self.resolve_with(&legacy).map_err(|e| legacy.rename(e))
    }

    fn resolve_with(mut self, legacy: &Translated) -> Result<Config, ConfigError> {
        let (shared, mut file): (DaemonFile, FileConfig) = self.daemon.read_file()?;
        let served = std::mem::take(&mut self.daemon).resolve(
            shared,
            DaemonDefaults {
                socket: DEFAULT_SOCKET,
                listen: legacy.default_listen,
                insecure_listens: true,
            },
        )?;
        let admin_endpoints = match self.admin_endpoint.take() {
            Some(flag) => crate::settings::OneOrMany::One(flag),
            None => file.admin_endpoint.take().unwrap_or_default(),
        }
        .items()
        .iter()
        .map(|e| Address::parse(e).or_else(|r| bad("admin-endpoint", "admin_endpoint", r)))
        .collect::<Result<Vec<Address>, ConfigError>>()?;
        let launcher_id = self.launcher_id(&mut file, &served)?;
        let (max_processes, capabilities, region) = self.capacity(&mut file, legacy)?;
        let labels = self.labels(&mut file)?;
        let (state_dir, credentials_dir, systemd) = self.host(&mut file)?;
        let patterns = self.patterns(&mut file, legacy)?;
        let policy = self.policy(&mut file, patterns.dir.as_deref())?;
        let reconcile_interval = duration(
            "reconcile-interval",
            "reconcile_interval",
            self.reconcile_interval
                .take()
                .or(file.reconcile_interval.take()),
            Duration::from_secs(60),
            Duration::from_secs(1),
        )?;
        let circuit_cooldown = duration(
            "circuit-cooldown",
            "circuit_cooldown",
            self.circuit_cooldown
                .take()
                .or(file.circuit_cooldown.take()),
            Duration::from_secs(60),
            Duration::from_millis(100),
        )?;
        served.check_transport()?;
        let (heartbeat_interval, advertise_address) =
            self.admin_link(&mut file, &served, &admin_endpoints)?;
        Ok(Config {
            admin_endpoints,
            launcher_id,
            listen: served.listen,
            socket: served.access.socket,
            operator_group: served.access.operator_group,
            trust_domain: served.access.trust_domain,
            max_processes,
            capabilities,
            region,
            labels,
            state_dir,
            systemd,
            policy,
            credentials_dir,
            reconcile_interval,
            circuit_cooldown,
            tls: served.tls,
            insecure: served.insecure,
            heartbeat_interval,
            advertise_address,
            metrics_listen: served.metrics_listen,
            log_format: served.log_format,
            patterns,
            notices: legacy.notices.clone(),
        })
    }

    /// Pattern manifests, the ports of patterns launched by name, and
    /// whether pattern-launcher's API is served.
    fn patterns(
        &mut self,
        file: &mut FileConfig,
        legacy: &Translated,
    ) -> Result<PatternsConfig, ConfigError> {
        let dir = match (self.patterns_dir.take(), file.patterns_dir.take()) {
            // A flag is taken from the working directory, as
            // pattern-launcher took it; a file key must be absolute.
            (Some(flag), _) => Some(absolute("patterns-dir", "patterns_dir", &flag)?),
            (None, Some(key)) if !key.is_absolute() => {
                return bad(
                    "patterns-dir",
                    "patterns_dir",
                    format!("{} is not absolute", key.display()),
                );
            }
            (None, Some(key)) => Some(absolute("patterns-dir", "patterns_dir", &key)?),
            (None, None) => match legacy.default_patterns_dir {
                Some(default) if std::path::Path::new(default).is_dir() => Some(absolute(
                    "patterns-dir",
                    "patterns_dir",
                    std::path::Path::new(default),
                )?),
                _ => None,
            },
        };
        if let Some(dir) = &dir
            && !dir.is_dir()
        {
            return bad(
                "patterns-dir",
                "patterns_dir",
                format!("{} is not a directory", dir.display()),
            );
        }
        let ports = match self.pattern_ports.take().or(file.pattern_ports.take()) {
            None => crate::launcher::patterns::ports::DEFAULT_RANGE,
            Some(text) => {
                port_range(&text).or_else(|r| bad("pattern-ports", "pattern_ports", r))?
            }
        };
        let api = self.pattern_launcher_api
            || file.pattern_launcher_api.unwrap_or(false)
            || legacy.pattern_launcher_api;
        Ok(PatternsConfig { dir, ports, api })
    }

    /// This launcher's id: flag, file, its certificate, or the host name;
    /// with a certificate, the one it names.
    fn launcher_id(
        &mut self,
        file: &mut FileConfig,
        served: &Served,
    ) -> Result<String, ConfigError> {
        // The admin accepts only the certificate of the launcher it means.
        let cert_id = match &served.tls {
            None => None,
            Some(tls) => {
                let must = format!(
                    "a launcher's must name spiffe://{}/launcher/<id>",
                    served.access.trust_domain
                );
                Some(served.access.own_role(tls, &must, |r| match r {
                    Role::Launcher(id) => Some(id.clone()),
                    _ => None,
                })?)
            }
        };
        let launcher_id = self
            .launcher_id
            .take()
            .or(file.launcher_id.take())
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
        Ok(launcher_id)
    }

    /// How many processes, of which types, in which region.
    fn capacity(
        &mut self,
        file: &mut FileConfig,
        legacy: &Translated,
    ) -> Result<(usize, BTreeSet<ProcessType>, String), ConfigError> {
        let max_processes = match self.max_processes.take() {
            Some(s) => s.parse::<i64>().or_else(|_| {
                bad(
                    "max-processes",
                    "max_processes",
                    format!("{s:?} is not a number"),
                )
            })?,
            None => file
                .max_processes
                .take()
                .unwrap_or(legacy.default_max_processes),
        };
        if !(1..=10_000).contains(&max_processes) {
            return bad(
                "max-processes",
                "max_processes",
                format!("{max_processes} is outside 1..=10000"),
            );
        }

        let capability_names = self
            .capabilities
            .take()
            .or(file.capabilities.take())
            .unwrap_or_else(|| {
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
            .take()
            .or(file.region.take())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        if !is_token(&region) {
            return bad(
                "region",
                "region",
                format!("{region:?} is not a valid region name"),
            );
        }
        Ok((max_processes as usize, capabilities, region))
    }

    /// `--label KEY=VALUE`s (they replace the file's `labels`).
    fn labels(&mut self, file: &mut FileConfig) -> Result<BTreeMap<String, String>, ConfigError> {
        let labels = if self.labels.is_empty() {
            file.labels.take().unwrap_or_default()
        } else {
            let mut labels = BTreeMap::new();
            for l in std::mem::take(&mut self.labels) {
                let Some((k, v)) = l.split_once('=') else {
                    return bad("label", "labels", format!("{l:?} is not KEY=VALUE"));
                };
                labels.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            labels
        };
        // The admin's limits on registration metadata, and the keys the
        // launcher sets itself.
        use crate::admin::fleet::{
            MAX_LABEL_BYTES, MAX_METADATA_ENTRIES, MAX_METADATA_VALUE_BYTES,
        };
        if labels.len() > MAX_METADATA_ENTRIES - RESERVED_LABELS.len() {
            return bad(
                "label",
                "labels",
                format!(
                    "{} labels, over the limit of {}",
                    labels.len(),
                    MAX_METADATA_ENTRIES - RESERVED_LABELS.len()
                ),
            );
        }
        for (k, v) in &labels {
            if k.is_empty()
                || k.len() > MAX_LABEL_BYTES
                || !k.chars().all(crate::model::validate::is_id_char)
            {
                return bad(
                    "label",
                    "labels",
                    format!("{k:?}: a key is 1..={MAX_LABEL_BYTES} of [A-Za-z0-9._:@-]"),
                );
            }
            if RESERVED_LABELS.contains(&k.as_str()) {
                return bad(
                    "label",
                    "labels",
                    format!(
                        "{k:?} is set by the launcher itself ({})",
                        RESERVED_LABELS.join(", ")
                    ),
                );
            }
            if v.len() > MAX_METADATA_VALUE_BYTES || v.chars().any(char::is_control) {
                return bad(
                    "label",
                    "labels",
                    format!(
                        "{k}: a value is at most {MAX_METADATA_VALUE_BYTES} bytes, no control characters"
                    ),
                );
            }
        }
        Ok(labels)
    }

    /// Where desired state and credentials live, and which manager runs
    /// the units.
    fn host(&mut self, file: &mut FileConfig) -> Result<(PathBuf, PathBuf, Target), ConfigError> {
        let state_dir = self
            .state_dir
            .take()
            .or(file.state_dir.take())
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
            .take()
            .or(file.credentials_dir.take())
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
            .take()
            .or(file.systemd.take())
            .unwrap_or_else(|| "system".to_owned())
            .parse()
            .or_else(|r| bad("systemd", "systemd", r))?;
        Ok((state_dir, credentials_dir, systemd))
    }

    /// What assignments may ask for: binaries, environment, isolation, and
    /// the defaults of their health checks.
    fn policy(
        &mut self,
        file: &mut FileConfig,
        patterns_dir: Option<&std::path::Path>,
    ) -> Result<Policy, ConfigError> {
        let mut binary_dirs = if !self.binary_dirs.is_empty() {
            std::mem::take(&mut self.binary_dirs)
        } else {
            file.binary_dirs
                .take()
                .unwrap_or_else(|| DEFAULT_BINARY_DIRS.iter().map(PathBuf::from).collect())
        };
        // Pattern executables come from the patterns directory.
        binary_dirs.extend(patterns_dir.map(std::path::Path::to_path_buf));
        let mut policy = Policy::with_binary_dirs(binary_dirs)
            .or_else(|e| bad("allow-binary-dir", "binary_dirs", e.reason))?;
        policy.allow_dynamic_linker_env =
            self.allow_dynamic_linker_env || file.allow_dynamic_linker_env.unwrap_or(false);
        if let Some(level) = self
            .default_isolation
            .take()
            .or(file.default_isolation.take())
        {
            policy.default_isolation = level
                .parse::<IsolationLevel>()
                .or_else(|r| bad("default-isolation", "default_isolation", r))?;
        }

        let defaults = ProbeDefaults::default();
        let probe_interval = duration(
            "probe-interval",
            "probe.interval",
            self.probe_interval.take().or(file.probe.interval.take()),
            defaults.interval,
            Duration::from_millis(100),
        )?;
        let probe_timeout = duration(
            "probe-timeout",
            "probe.timeout",
            self.probe_timeout.take().or(file.probe.timeout.take()),
            defaults.timeout,
            Duration::from_millis(10),
        )?;
        let threshold = match self.probe_failure_threshold.take() {
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
        let (flag, key) = ("log-rate-limit-interval", "logs.rate_limit_interval");
        policy.log_defaults.interval = match self
            .log_rate_limit_interval
            .take()
            .or(file.logs.rate_limit_interval.take())
        {
            None => None,
            v => Some(duration(
                flag,
                key,
                v,
                Duration::ZERO,
                Duration::from_millis(1),
            )?),
        };
        let (flag, key) = ("log-rate-limit-burst", "logs.rate_limit_burst");
        let burst = match self.log_rate_limit_burst.take() {
            Some(s) => Some(
                s.parse::<i64>()
                    .or_else(|_| bad(flag, key, format!("{s:?} is not a number")))?,
            ),
            None => file.logs.rate_limit_burst,
        };
        policy.log_defaults.burst = match burst {
            None => None,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
            Some(n) => return bad(flag, key, format!("{n} is outside 1..={}", u32::MAX)),
        };
        Ok(policy)
    }

    /// The admin to register with, how it is reached, and the address it
    /// dials back.
    fn admin_link(
        &mut self,
        file: &mut FileConfig,
        served: &Served,
        admin_endpoints: &[Address],
    ) -> Result<(Duration, String), ConfigError> {
        for admin in admin_endpoints {
            match (admin, &served.tls) {
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
                (Address::Tcp { .. }, None) if !admin.is_local() && !served.insecure => {
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
            self.heartbeat_interval
                .take()
                .or(file.heartbeat_interval.take()),
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?;
        let advertise_address = match self
            .advertise_address
            .take()
            .or(file.advertise_address.take())
        {
            Some(a) => {
                Address::parse(&a).or_else(|r| bad("advertise-address", "advertise_address", r))?;
                a
            }
            None => match (served.listen, &served.access.socket) {
                (Some(l), _) if l.ip().is_unspecified() => format!("{}:{}", hostname(), l.port()),
                (Some(l), _) => l.to_string(),
                (None, Some(path)) => format!("unix:{}", path.display()),
                // Refused above: something is always served.
                (None, None) => String::new(),
            },
        };
        Ok((heartbeat_interval, advertise_address))
    }
}

/// A duration setting between `min` and a day, or `default` when unset.
fn duration(
    flag: &str,
    key: &str,
    value: Option<String>,
    default: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
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
}

/// Metadata keys the launcher registers itself (`region` is its own field,
/// and a label to placement rules).
pub const RESERVED_LABELS: [&str; 4] = ["hostname", "systemd", "tls", "region"];

/// `LOW-HIGH`, holding at least one pair.
fn port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("{text:?} is not a port range such as 50051-51050");
    let (low, high) = text.trim().split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low == 0 || high <= low {
        return Err(format!(
            "{text:?}: the range must hold at least two ports (GRPC_PORT and HEALTH_PORT), from 1"
        ));
    }
    Ok(low..=high)
}

/// Absolute and without `.`/`..` (the allowlist holds normalised paths).
fn absolute(flag: &str, key: &str, dir: &std::path::Path) -> Result<PathBuf, ConfigError> {
    let joined =
        std::path::absolute(dir).or_else(|e| bad(flag, key, format!("{}: {e}", dir.display())))?;
    Ok(crate::launcher::patterns::manifest::normalise(&joined))
}
