//! How the process runs: arguments, environment, ports, isolation,
//! restarts, health checks, resources, and what fits one exec.

use super::*;

/// The wire field a launcher-set environment variable is made from.
pub(super) fn field_of_variable(name: &str) -> String {
    match name {
        "PRISM_PATTERN_SETTINGS" => "config.pattern.settings".into(),
        "PRISM_PATTERN_SLOTS" => "config.pattern.slots".into(),
        "PRISM_DRIVER_OPTIONS" => "config.backend.driver_options".into(),
        "PRISM_UTILITY_SETTINGS" => "config.utility.settings".into(),
        "PRISM_TARGET_PROCESSES" => "config.utility.target_processes".into(),
        "PRISM_PARTITION_RANGES" => "config.proxy.partition_ranges".into(),
        "PRISM_CREDENTIALS" => "config".into(),
        name if !name.starts_with(RESERVED_ENV_PREFIX) && !RESERVED_ENV.contains(&name) => {
            format!("config.env.{name}")
        }
        _ => "config".into(),
    }
}

/// An assignment that could never be executed (E2BIG at every start) is
/// refused here, naming the field it grew from, instead of being held and
/// failing forever. Checks what the unit would really pass: the JSON of
/// settings, options and slots, the joined lists.
pub(crate) fn check_exec_size(p: &ManagedProcess) -> Result<()> {
    let environment = p.environment();
    let binary = p.binary.as_os_str().len();
    let strings = std::iter::once(("config.binary".to_owned(), binary))
        .chain(
            p.args
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("config.args[{i}]"), a.len())),
        )
        .chain(environment.iter().map(|assignment| {
            let name = assignment.split_once('=').map_or("", |(k, _)| k);
            (field_of_variable(name), assignment.len())
        }));
    let mut total = 0usize;
    for (field, len) in strings {
        if len > MAX_EXEC_STRING_BYTES {
            return err(
                field,
                format!(
                    "becomes a {len}-byte argument or environment string; Linux executes none \
                     over {MAX_EXEC_STRING_BYTES} bytes (E2BIG)"
                ),
            );
        }
        // The string, its NUL and its pointer.
        total += len + 1 + std::mem::size_of::<usize>();
    }
    if total > MAX_EXEC_BYTES {
        return err(
            "config",
            format!(
                "arguments and environment come to {total} bytes, over the {MAX_EXEC_BYTES} bytes \
                 a process can be started with"
            ),
        );
    }
    Ok(())
}

pub(super) fn check_args(args: &[String]) -> Result<Vec<String>> {
    if args.len() > MAX_ARGS {
        return err(
            "config.args",
            format!("{} arguments, over the limit of {MAX_ARGS}", args.len()),
        );
    }
    let total: usize = args.iter().map(String::len).sum();
    if total > MAX_ARGS_BYTES {
        return err(
            "config.args",
            format!("{total} bytes in all, over the limit of {MAX_ARGS_BYTES}"),
        );
    }
    for (i, arg) in args.iter().enumerate() {
        let field = format!("config.args[{i}]");
        if arg.contains('\0') {
            return err(field, "contains NUL");
        }
        if arg.contains('\n') || arg.contains('\r') {
            return err(field, "contains a newline");
        }
    }
    Ok(args.to_vec())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn check_env(
    env: &HashMap<String, String>,
    policy: &Policy,
) -> Result<BTreeMap<String, String>> {
    if env.len() > MAX_ENV {
        return err(
            "config.env",
            format!("{} variables, over the limit of {MAX_ENV}", env.len()),
        );
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if total > MAX_ENV_BYTES {
        return err(
            "config.env",
            format!("{total} bytes in all, over the limit of {MAX_ENV_BYTES}"),
        );
    }
    // Sorted, so errors and the resulting unit are deterministic.
    let sorted: BTreeMap<String, String> = env.clone().into_iter().collect();
    for (key, value) in &sorted {
        let field = format!("config.env.{key}");
        if key.contains('\0') {
            return err("config.env", "a key contains NUL");
        }
        if key.contains('\n') {
            return err("config.env", "a key contains a newline");
        }
        if !is_env_key(key) {
            return err(field, "key must match [A-Za-z_][A-Za-z0-9_]*");
        }
        if key.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENV.contains(&key.as_str()) {
            return err(field, "reserved: the launcher sets this variable itself");
        }
        if key.starts_with("LD_") && !policy.allow_dynamic_linker_env {
            return err(
                field,
                "dynamic-linker variables (LD_*) would load code of the assigner's choosing into \
                 the binary; this launcher refuses them (allow_dynamic_linker_env)",
            );
        }
        check_text(&field, value, MAX_ENV_BYTES)?;
    }
    Ok(sorted)
}

pub(super) fn check_port(field: &str, port: i32) -> Result<u16> {
    if (1..=65535).contains(&port) {
        Ok(port as u16)
    } else {
        err(field, format!("{port} is outside 1..65535"))
    }
}

pub(super) fn check_optional_port(field: &str, port: i32) -> Result<Option<u16>> {
    if port == 0 {
        Ok(None)
    } else {
        check_port(field, port).map(Some)
    }
}

pub(super) fn check_isolation(
    config: &pb::ProcessConfig,
    policy: &Policy,
) -> Result<IsolationLevel> {
    let parse = |field: &str, s: &str| -> Result<Option<IsolationLevel>> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse()
                .map(Some)
                .map_err(|e| ValidationError::new(field, e))
        }
    };
    let general = parse("config.isolation_level", &config.isolation_level)?;
    let pattern = match &config.pattern {
        Some(p) => parse("config.pattern.isolation_level", &p.isolation_level)?,
        None => None,
    };
    match (general, pattern) {
        (Some(a), Some(b)) if a != b => err(
            "config.isolation_level",
            format!("{a} disagrees with config.pattern.isolation_level {b}"),
        ),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Ok(policy.default_isolation),
    }
}

pub(super) fn millis(
    field: &str,
    value: i64,
    default: Duration,
    min_ms: i64,
    max_ms: i64,
) -> Result<Duration> {
    match value {
        0 => Ok(default),
        v if (min_ms..=max_ms).contains(&v) => Ok(Duration::from_millis(v as u64)),
        v => err(field, format!("{v} is outside {min_ms}..={max_ms}")),
    }
}

pub(super) fn check_restart(policy: Option<&pb::RestartPolicy>) -> Result<RestartPolicy> {
    let Some(p) = policy else {
        return Ok(RestartPolicy::default());
    };
    let f = "config.restart_policy";
    let mut policy = RestartPolicy {
        mode: p
            .policy
            .parse()
            .map_err(|e| ValidationError::new(format!("{f}.policy"), e))?,
        delay: millis(
            &format!("{f}.delay_ms"),
            p.delay_ms,
            RestartPolicy::DEFAULT_DELAY,
            1,
            3_600_000,
        )?,
        max_starts: match p.max_restarts {
            0 => RestartPolicy::DEFAULT_MAX_STARTS,
            n if (1..=10_000).contains(&n) => n as u32,
            n => {
                return err(
                    format!("{f}.max_restarts"),
                    format!("{n} is outside 1..=10000"),
                );
            }
        },
        window: match p.window_seconds {
            0 => RestartPolicy::DEFAULT_WINDOW,
            s if (1..=86_400).contains(&s) => Duration::from_secs(s as u64),
            s => {
                return err(
                    format!("{f}.window_seconds"),
                    format!("{s} is outside 1..=86400"),
                );
            }
        },
        max_delay: None,
        steps: 0,
    };
    if p.max_delay_ms != 0 {
        let max = millis(
            &format!("{f}.max_delay_ms"),
            p.max_delay_ms,
            Duration::ZERO,
            1,
            3_600_000,
        )?;
        if max < policy.delay {
            return err(
                format!("{f}.max_delay_ms"),
                format!(
                    "{} is below delay_ms {}: the delay grows from delay_ms to it",
                    p.max_delay_ms,
                    policy.delay.as_millis()
                ),
            );
        }
        policy.max_delay = Some(max);
        policy.steps = match p.steps {
            0 => RestartPolicy::DEFAULT_STEPS,
            n if (1..=1000).contains(&n) => n as u32,
            n => return err(format!("{f}.steps"), format!("{n} is outside 1..=1000")),
        };
    } else if p.steps != 0 {
        return err(
            format!("{f}.steps"),
            "steps towards max_delay_ms: set max_delay_ms too",
        );
    }
    Ok(policy)
}

pub(super) fn check_health(
    check: Option<&pb::HealthCheck>,
    health_port: Option<u16>,
    own_ports: &[u16],
    defaults: &ProbeDefaults,
) -> Result<HealthCheck> {
    let f = "config.health_check";
    let default_check = pb::HealthCheck::default();
    let c = check.unwrap_or(&default_check);
    let port = || -> Result<u16> {
        match check_optional_port(&format!("{f}.port"), c.port)?.or(health_port) {
            Some(p) if !own_ports.contains(&p) => err(
                format!("{f}.port"),
                format!(
                    "{p} is not a port of this assignment (config.port, config.health_port, \
                     or a proxy's control and data ports): a probe reaches only its own process"
                ),
            ),
            Some(p) => Ok(p),
            None => err(
                format!("{f}.port"),
                format!(
                    "a {:?} probe needs a port: set it or config.health_port",
                    c.kind
                ),
            ),
        }
    };
    let probe = match c.kind.as_str() {
        "" if health_port.is_none() && c.port == 0 => Probe::None,
        "" | "http" => {
            let path = if c.path.is_empty() {
                HealthCheck::DEFAULT_HTTP_PATH.to_owned()
            } else {
                check_text(&format!("{f}.path"), &c.path, MAX_TEXT_BYTES)?;
                if !c.path.starts_with('/') || c.path.contains(' ') {
                    return err(
                        format!("{f}.path"),
                        "must start with / and contain no spaces",
                    );
                }
                c.path.clone()
            };
            Probe::Http {
                port: port()?,
                path,
            }
        }
        "tcp" => Probe::Tcp { port: port()? },
        "grpc" => Probe::Grpc { port: port()? },
        "watchdog" => Probe::Watchdog {
            timeout: millis(
                &format!("{f}.watchdog_ms"),
                c.watchdog_ms,
                HealthCheck::DEFAULT_WATCHDOG,
                100,
                3_600_000,
            )?,
        },
        "none" => Probe::None,
        other => {
            return err(
                format!("{f}.kind"),
                format!(
                    "unknown probe kind {other:?} (expected http, tcp, grpc, watchdog or none)"
                ),
            );
        }
    };
    let interval = millis(
        &format!("{f}.interval_ms"),
        c.interval_ms,
        defaults.interval,
        100,
        3_600_000,
    )?;
    let timeout = millis(
        &format!("{f}.timeout_ms"),
        c.timeout_ms,
        defaults.timeout,
        10,
        600_000,
    )?;
    let failure_threshold = match c.failure_threshold {
        0 => defaults.failure_threshold,
        n if (1..=100).contains(&n) => n as u32,
        n => {
            return err(
                format!("{f}.failure_threshold"),
                format!("{n} is outside 1..=100"),
            );
        }
    };
    Ok(HealthCheck {
        probe,
        interval,
        timeout,
        failure_threshold,
    })
}

pub(super) fn check_resources(r: Option<&pb::ResourceLimits>) -> Result<Resources> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    let f = "config.resources";
    let positive = |field: &str, v: i64| -> Result<Option<u64>> {
        match v {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v as u64)),
            v => err(format!("{f}.{field}"), format!("{v} is negative")),
        }
    };
    let ranged = |field: &str, v: i32, max: i32| -> Result<Option<u32>> {
        match v {
            0 => Ok(None),
            n if (1..=max).contains(&n) => Ok(Some(n as u32)),
            n => err(format!("{f}.{field}"), format!("{n} is outside 1..={max}")),
        }
    };
    let memory_max_bytes = positive("memory_max_bytes", r.memory_max_bytes)?;
    let memory_high_bytes = positive("memory_high_bytes", r.memory_high_bytes)?;
    if let (Some(high), Some(max)) = (memory_high_bytes, memory_max_bytes)
        && high > max
    {
        return err(
            format!("{f}.memory_high_bytes"),
            format!(
                "{high} is above memory_max_bytes {max}: the soft limit must not exceed the hard one"
            ),
        );
    }
    Ok(Resources {
        memory_max_bytes,
        memory_high_bytes,
        cpu_millis: ranged("cpu_millis", r.cpu_millis, 1_000_000)?,
        cpu_weight: ranged("cpu_weight", r.cpu_weight, 10_000)?,
        io_weight: ranged("io_weight", r.io_weight, 10_000)?,
        tasks_max: positive("tasks_max", r.tasks_max)?,
        oom_policy: match r.oom_policy.as_str() {
            "" => None,
            p => Some(
                p.parse()
                    .map_err(|e| ValidationError::new(format!("{f}.oom_policy"), e))?,
            ),
        },
    })
}

/// The journal rate limit: the assignment's, else the launcher's default.
pub(super) fn check_logs(l: Option<&pb::LogLimits>, defaults: LogLimits) -> Result<LogLimits> {
    let default = pb::LogLimits::default();
    let l = l.unwrap_or(&default);
    let f = "config.logs";
    let interval = match l.rate_limit_interval_ms {
        0 => defaults.interval,
        v if (1..=86_400_000).contains(&v) => Some(Duration::from_millis(v as u64)),
        v => {
            return err(
                format!("{f}.rate_limit_interval_ms"),
                format!("{v} is outside 1..=86400000"),
            );
        }
    };
    let burst = match l.rate_limit_burst {
        0 => defaults.burst,
        n if n > 0 => Some(n as u32),
        n => return err(format!("{f}.rate_limit_burst"), format!("{n} is negative")),
    };
    Ok(LogLimits { interval, burst })
}

/// Labels a placement rule matches: as many as a launcher may register.
const MAX_PLACEMENT_LABELS: usize = 32;
const MAX_LABEL_KEY_BYTES: usize = 64;
const MAX_LABEL_VALUE_BYTES: usize = 256;

/// The longest `on_disconnect` duration: a week.
pub const MAX_DISCONNECT_MS: i64 = 7 * 24 * 3600 * 1000;

pub(super) fn check_on_disconnect(d: Option<&pb::OnDisconnect>) -> Result<OnDisconnect> {
    let Some(d) = d else {
        return Ok(OnDisconnect::default());
    };
    let f = "config.on_disconnect";
    let duration = |name: &str, ms: Option<i64>| -> Result<Option<Duration>> {
        match ms {
            None => Ok(None),
            Some(ms) if ms <= 0 => err(
                format!("{f}.{name}"),
                format!(
                    "{ms} is not positive (leave it out for never; a process keeps running by \
                     default)"
                ),
            ),
            Some(ms) if !(1000..=MAX_DISCONNECT_MS).contains(&ms) => err(
                format!("{f}.{name}"),
                format!("{ms} is outside 1000..={MAX_DISCONNECT_MS} (1 s to 7 days)"),
            ),
            Some(ms) => Ok(Some(Duration::from_millis(ms as u64))),
        }
    };
    let stop_after = duration("stop_after_ms", d.stop_after_ms)?;
    let replace_after = duration("replace_after_ms", d.replace_after_ms)?;
    if replace_after.is_some() && stop_after.is_none() && !d.at_least_once {
        return err(
            format!("{f}.replace_after_ms"),
            format!(
                "a copy elsewhere while its launcher still runs this one would run it twice: set \
                 {f}.stop_after_ms (replace_after_ms must then exceed stop_after_ms + the \
                 graceful stop + one heartbeat interval + the admins' lease), or \
                 {f}.at_least_once"
            ),
        );
    }
    Ok(OnDisconnect {
        stop_after,
        replace_after,
        at_least_once: d.at_least_once,
    })
}

pub(super) fn check_placement(p: Option<&pb::PlacementRules>) -> Result<PlacementRules> {
    let Some(p) = p else {
        return Ok(PlacementRules::default());
    };
    let f = "config.placement";
    let spread_group = match p.spread_group.as_str() {
        "" => None,
        g => Some(super::check_id(&format!("{f}.spread_group"), g)?),
    };
    let max_per_launcher = match (p.max_per_launcher, &spread_group) {
        (0, _) => 1,
        (n, Some(_)) if (1..=10_000).contains(&n) => n as u32,
        (n, Some(_)) => {
            return err(
                format!("{f}.max_per_launcher"),
                format!("{n} is outside 1..=10000"),
            );
        }
        (_, None) => {
            return err(
                format!("{f}.max_per_launcher"),
                "limits processes of a spread_group per launcher: name the group",
            );
        }
    };
    let labels = |field: &str, map: &HashMap<String, String>| -> Result<BTreeMap<String, String>> {
        let field = format!("{f}.{field}");
        if map.len() > MAX_PLACEMENT_LABELS {
            return err(
                field,
                format!(
                    "{} labels, over the limit of {MAX_PLACEMENT_LABELS}",
                    map.len()
                ),
            );
        }
        let sorted: BTreeMap<String, String> = map.clone().into_iter().collect();
        for (k, v) in &sorted {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES || !k.chars().all(is_id_char) {
                return err(
                    format!("{field}.{k}"),
                    format!("a label key is 1..={MAX_LABEL_KEY_BYTES} of [A-Za-z0-9._:@-]"),
                );
            }
            check_text(&format!("{field}.{k}"), v, MAX_LABEL_VALUE_BYTES)?;
        }
        Ok(sorted)
    };
    Ok(PlacementRules {
        spread_group,
        max_per_launcher,
        require_labels: labels("require_labels", &p.require_labels)?,
        prefer_labels: labels("prefer_labels", &p.prefer_labels)?,
    })
}

/// The most dependencies one process may name.
const MAX_DEPENDENCIES: usize = 32;

pub(super) fn check_dependencies(id: &str, deps: &[pb::Dependency]) -> Result<Vec<Dependency>> {
    if deps.len() > MAX_DEPENDENCIES {
        return err(
            "config.depends_on",
            format!(
                "{} dependencies, over the limit of {MAX_DEPENDENCIES}",
                deps.len()
            ),
        );
    }
    let mut out: Vec<Dependency> = Vec::with_capacity(deps.len());
    for (i, d) in deps.iter().enumerate() {
        let field = format!("config.depends_on[{i}].process_id");
        let dep = super::check_id(&field, &d.process_id)?;
        if dep == id {
            return err(field, "a process cannot depend on itself");
        }
        if out.iter().any(|o| o.id == dep) {
            return err(field, format!("{dep} is named twice"));
        }
        out.push(Dependency {
            id: dep,
            bind: d.bind,
        });
    }
    Ok(out)
}
