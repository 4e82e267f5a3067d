//! The one validation gate: `ManagedProcess::try_from((wire, &policy))`,
//! a pure conversion, and the host's step after it
//! ([`ManagedProcess::on_host`]: the binary on this host's disk).
//!
//! Every check names the wire field it rejects, so an operator can fix the
//! request without reading code. The gate runs before anything touches
//! systemd or the state directory.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use prost::Message;

use super::types::*;
use crate::pb::prism as pb;

/// Largest accepted assignment, encoded.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Upper bound of process ids and namespaces, in bytes.
pub const MAX_ID_BYTES: usize = 128;
pub const MAX_ARGS: usize = 256;
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
pub const MAX_ENV: usize = 256;
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Entries in any other map (settings, options, slots, credentials).
pub const MAX_MAP_ENTRIES: usize = 256;
/// Bytes of one credential (systemd accepts up to 1 MiB; we stay well below).
pub const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;
/// Linux refuses to exec a program one of whose arguments or environment
/// strings is `MAX_ARG_STRLEN` (32 pages, 128 KiB) or longer (E2BIG).
pub const MAX_EXEC_STRING_BYTES: usize = 128 * 1024 - 1;
/// All arguments and environment strings together, as the kernel counts
/// them (bytes, NUL and pointer each). Linux allows a quarter of the stack
/// limit (2 MiB under the usual 8 MiB); this leaves room for what systemd
/// adds (`INVOCATION_ID`, `CREDENTIALS_DIRECTORY`, …).
pub const MAX_EXEC_BYTES: usize = 1024 * 1024;
const MAX_TOKEN_BYTES: usize = 128;
const MAX_TEXT_BYTES: usize = 1024;
const MAX_STOP_TIMEOUT_SECS: i32 = 3600;

/// Directories that may hold workload binaries when none are configured.
pub const DEFAULT_BINARY_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/local/bin",
    "/usr/lib/prism",
    "/opt/prism/bin",
];

/// Variables starting with this are set by the launcher only.
pub const RESERVED_ENV_PREFIX: &str = "PRISM_";

/// Further variables the launcher (or systemd) sets itself; an assignment may not.
pub const RESERVED_ENV: &[&str] = &[
    "PORT",
    "HEALTH_PORT",
    "LOG_LEVEL",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The launcher's rules for what an assignment may ask for.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Absolute directories; a binary must resolve inside one of them.
    pub binary_dirs: Vec<PathBuf>,
    /// Applied when an assignment names no isolation level.
    pub default_isolation: IsolationLevel,
    /// Applied to probe settings an assignment leaves at 0.
    pub probe_defaults: ProbeDefaults,
    /// [`ManagedProcess::on_host`] checks the binary against this host's
    /// allowlist and filesystem. The admin turns it off: each launcher
    /// checks its own host.
    pub check_binary_on_host: bool,
    /// Accept dynamic-linker variables (`LD_PRELOAD`, `LD_LIBRARY_PATH`,
    /// `LD_AUDIT`, every `LD_*`) in an assignment's environment: they load
    /// code of the assigner's choosing into an allowlisted binary.
    pub allow_dynamic_linker_env: bool,
}

/// Launcher-wide defaults of a health check (upstream: 10 s, 5 s, 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeDefaults {
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

impl Default for ProbeDefaults {
    fn default() -> Self {
        Self {
            interval: HealthCheck::DEFAULT_INTERVAL,
            timeout: HealthCheck::DEFAULT_TIMEOUT,
            failure_threshold: HealthCheck::DEFAULT_FAILURE_THRESHOLD,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            binary_dirs: DEFAULT_BINARY_DIRS.iter().map(PathBuf::from).collect(),
            default_isolation: IsolationLevel::default(),
            probe_defaults: ProbeDefaults::default(),
            check_binary_on_host: true,
            allow_dynamic_linker_env: false,
        }
    }
}

impl Policy {
    /// Everything but the host-specific binary checks (for the admin).
    pub fn structural() -> Self {
        Self {
            check_binary_on_host: false,
            // Each launcher decides by its own configuration.
            allow_dynamic_linker_env: true,
            ..Self::default()
        }
    }
}

impl Policy {
    /// A policy with the given allowlist. Directories must be absolute.
    pub fn with_binary_dirs<I, P>(dirs: I) -> Result<Self>
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        let binary_dirs: Vec<PathBuf> = dirs.into_iter().map(Into::into).collect();
        for dir in &binary_dirs {
            if !dir.is_absolute() || has_dot_components(dir) {
                return Err(ValidationError::new(
                    "binary_dirs",
                    format!("{} is not an absolute, normalised directory", dir.display()),
                ));
            }
        }
        Ok(Self {
            binary_dirs,
            ..Self::default()
        })
    }
}

/// An assignment was rejected; `field` is the wire path of the culprit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ValidationError>;

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(ValidationError::new(field, reason))
}

impl TryFrom<(pb::ProcessAssignment, &Policy)> for ManagedProcess {
    type Error = ValidationError;

    fn try_from((wire, policy): (pb::ProcessAssignment, &Policy)) -> Result<Self> {
        let size = wire.encoded_len();
        if size > MAX_MESSAGE_BYTES {
            return err(
                "assignment",
                format!("{size} bytes encoded, over the limit of {MAX_MESSAGE_BYTES}"),
            );
        }
        let id = check_id("process_id", &wire.process_id)?;
        let process_type: ProcessType = wire
            .process_type
            .parse()
            .map_err(|e| ValidationError::new("process_type", e))?;
        let namespace = if wire.namespace.is_empty() {
            String::new()
        } else {
            check_id("namespace", &wire.namespace)?
        };
        if wire.version < 0 {
            return err("version", format!("{} is negative", wire.version));
        }
        let Some(config) = wire.config else {
            return err("config", "missing");
        };

        let (binary, executable) = check_binary(&config.binary)?;
        let args = check_args(&config.args)?;
        let env = check_env(&config.env, policy)?;
        let port = check_optional_port("config.port", config.port)?;
        let health_port = check_optional_port("config.health_port", config.health_port)?;
        let log_level = match config.log_level.as_str() {
            "" => None,
            level => Some(check_token("config.log_level", level)?),
        };

        let kind = check_payload(process_type, &config)?;
        let isolation = check_isolation(&config, policy)?;
        let restart = check_restart(config.restart_policy.as_ref())?;
        // A probe reaches only ports of this assignment, never another
        // service on the host.
        let mut own_ports: Vec<u16> = port.into_iter().chain(health_port).collect();
        if let ProcessKind::Proxy(p) = &kind {
            own_ports.extend([p.control_port, p.data_port]);
        }
        let health = check_health(
            config.health_check.as_ref(),
            health_port,
            &own_ports,
            &policy.probe_defaults,
        )?;
        let resources = check_resources(config.resources.as_ref())?;
        let stop_timeout = match config.graceful_timeout_seconds {
            0 => ManagedProcess::DEFAULT_STOP_TIMEOUT,
            s if (1..=MAX_STOP_TIMEOUT_SECS).contains(&s) => Duration::from_secs(s as u64),
            s => {
                return err(
                    "config.graceful_timeout_seconds",
                    format!("{s} is outside 1..={MAX_STOP_TIMEOUT_SECS} (0 means 30)"),
                );
            }
        };
        // A watchdog is fed through sd_notify, so it implies the notify protocol.
        let notify_ready = config.notify_ready || matches!(health.probe, Probe::Watchdog { .. });

        let process = ManagedProcess {
            id,
            namespace,
            version: wire.version,
            binary,
            executable,
            args,
            env,
            port,
            health_port,
            log_level,
            kind,
            isolation,
            restart,
            health,
            resources,
            sandbox: SandboxOptions {
                memory_deny_write_execute: config
                    .sandbox
                    .as_ref()
                    .is_some_and(|s| s.memory_deny_write_execute),
            },
            stop_timeout,
            notify_ready,
        };
        check_exec_size(&process)?;
        Ok(process)
    }
}

/// The wire field a launcher-set environment variable is made from.
fn field_of_variable(name: &str) -> String {
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

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

/// Ids and namespaces: `[A-Za-z0-9._:@-]{1,128}`.
fn check_id(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return err(field, "empty");
    }
    if value.len() > MAX_ID_BYTES {
        return err(
            field,
            format!("{} bytes, over the limit of {MAX_ID_BYTES}", value.len()),
        );
    }
    if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
        return err(
            field,
            format!("character {c:?} is not allowed (allowed: A-Z a-z 0-9 . _ : @ -)"),
        );
    }
    Ok(value.to_owned())
}

/// Short identifiers such as pattern_type or log_level.
fn check_token(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return err(field, "required");
    }
    if value.len() > MAX_TOKEN_BYTES {
        return err(field, format!("longer than {MAX_TOKEN_BYTES} bytes"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return err(field, format!("character {c:?} is not allowed"));
    }
    Ok(value.to_owned())
}

/// Free text that ends up in the environment: no control characters but tab.
fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return err(field, format!("longer than {max} bytes"));
    }
    if value.contains('\0') {
        return err(field, "contains NUL");
    }
    if value.contains('\n') || value.contains('\r') {
        return err(field, "contains a newline");
    }
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return err(field, format!("contains control character {c:?}"));
    }
    Ok(())
}

fn has_dot_components(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || path.to_string_lossy().contains("//")
}

fn inside_allowlist(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .any(|d| path.parent().is_some_and(|p| p.starts_with(d)))
}

/// The path as assigned, and the file to execute (see
/// [`ManagedProcess::executable`]).
fn check_binary(binary: &str) -> Result<(PathBuf, PathBuf)> {
    const F: &str = "config.binary";
    if binary.is_empty() {
        return err(F, "required");
    }
    check_text(F, binary, 4096)?;
    let path = PathBuf::from(binary);
    if !path.is_absolute() {
        return err(F, format!("{binary:?} is not an absolute path"));
    }
    if has_dot_components(&path) || binary.ends_with('/') {
        return err(F, format!("{binary:?} is not a normalised path"));
    }
    Ok((path.clone(), path))
}

impl ManagedProcess {
    /// The host's step, apart from the pure conversion: with
    /// `policy.check_binary_on_host`, the binary against this host's
    /// allowlist and filesystem ([`check_binary_on_host`]), and the file
    /// to execute resolved. Run at assignment, and before each start of a
    /// process held from an earlier run.
    pub fn on_host(mut self, policy: &Policy) -> Result<Self> {
        if policy.check_binary_on_host {
            self.executable = check_binary_on_host(&self.binary, policy)?;
        }
        Ok(self)
    }
}

/// The host's part of the binary check, run at assignment and again before
/// each start of a process held from an earlier run: inside the allowlist
/// (after resolving symlinks), an executable regular file, and nothing on
/// the way to it writable by anyone but root. Returns the canonical path.
pub fn check_binary_on_host(path: &Path, policy: &Policy) -> Result<PathBuf> {
    const F: &str = "config.binary";
    let binary = path.display().to_string();
    let allowed = || {
        policy
            .binary_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !inside_allowlist(path, &policy.binary_dirs) {
        return err(
            F,
            format!(
                "{binary:?} is outside the allowed directories ({})",
                allowed()
            ),
        );
    }
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return err(F, format!("{binary:?} does not exist"));
        }
        Err(e) => return err(F, format!("{binary:?} cannot be read: {e}")),
    };
    if !meta.is_file() {
        return err(F, format!("{binary:?} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return err(F, format!("{binary:?} is not executable"));
    }
    // A symlink inside the allowlist must not lead outside it.
    let canonical = fs::canonicalize(path)
        .map_err(|e| ValidationError::new(F, format!("{binary:?} cannot be resolved: {e}")))?;
    let Some(dir) = policy
        .binary_dirs
        .iter()
        .filter_map(|d| fs::canonicalize(d).ok())
        .find(|d| canonical.parent().is_some_and(|p| p.starts_with(d)))
    else {
        return err(
            F,
            format!(
                "{binary:?} resolves to {} outside the allowed directories ({})",
                canonical.display(),
                allowed()
            ),
        );
    };
    check_ownership(&binary, &canonical, &dir)?;
    Ok(canonical)
}

/// Who may replace what runs: the owner of the file and of every
/// directory above it. Only root (or the launcher's own user, which is
/// root-equivalent to it) may; group and others may write none of them.
/// Above the allowlisted directory, a sticky directory such as `/tmp` may be
/// writable by all: nobody can rename another user's entry in it.
fn check_ownership(binary: &str, canonical: &Path, allowed_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    const F: &str = "config.binary";
    let me = crate::host::own_uid().unwrap_or(0);
    let mut checked = Some(canonical);
    while let Some(path) = checked {
        let meta = fs::metadata(path).map_err(|e| {
            ValidationError::new(F, format!("{} cannot be read: {e}", path.display()))
        })?;
        let what = if path == canonical {
            format!("{binary:?} ({})", canonical.display())
        } else {
            format!("directory {}", path.display())
        };
        if meta.uid() != 0 && meta.uid() != me {
            return err(
                F,
                format!(
                    "{what} is owned by uid {}; only root may own a binary the launcher runs and \
                     the directories above it",
                    meta.uid()
                ),
            );
        }
        let mode = meta.mode();
        let sticky_above = mode & 0o1000 != 0 && !path.starts_with(allowed_dir);
        if mode & 0o022 != 0 && !sticky_above {
            return err(
                F,
                format!(
                    "{what} is writable by {} (mode {:04o}); only its owner may write a binary the \
                     launcher runs and the directories above it",
                    if mode & 0o002 != 0 {
                        "others"
                    } else {
                        "its group"
                    },
                    mode & 0o7777
                ),
            );
        }
        checked = path.parent();
    }
    Ok(())
}

fn check_args(args: &[String]) -> Result<Vec<String>> {
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

fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_env(env: &HashMap<String, String>, policy: &Policy) -> Result<BTreeMap<String, String>> {
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

fn check_port(field: &str, port: i32) -> Result<u16> {
    if (1..=65535).contains(&port) {
        Ok(port as u16)
    } else {
        err(field, format!("{port} is outside 1..65535"))
    }
}

fn check_optional_port(field: &str, port: i32) -> Result<Option<u16>> {
    if port == 0 {
        Ok(None)
    } else {
        check_port(field, port).map(Some)
    }
}

fn check_map(field: &str, map: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if map.len() > MAX_MAP_ENTRIES {
        return err(
            field,
            format!("{} entries, over the limit of {MAX_MAP_ENTRIES}", map.len()),
        );
    }
    let sorted: BTreeMap<String, String> = map.clone().into_iter().collect();
    for (key, value) in &sorted {
        if key.is_empty() {
            return err(field, "empty key");
        }
        check_text(field, key, MAX_TOKEN_BYTES)?;
        if value.contains('\0') {
            return err(format!("{field}.{key}"), "contains NUL");
        }
    }
    Ok(sorted)
}

/// Credential names become file names under `$CREDENTIALS_DIRECTORY`.
fn check_credentials(
    field: &str,
    map: &HashMap<String, String>,
) -> Result<BTreeMap<String, Secret>> {
    if map.len() > MAX_MAP_ENTRIES {
        return err(
            field,
            format!("{} entries, over the limit of {MAX_MAP_ENTRIES}", map.len()),
        );
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let valid = !key.is_empty()
            && key.len() <= 64
            && !key.starts_with('.')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return err(
                format!("{field}.{key}"),
                "credential name must match [A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}",
            );
        }
        if key == "connection_string" {
            return err(
                format!("{field}.{key}"),
                "reserved: the connection string is passed under this name",
            );
        }
        if value.len() > MAX_CREDENTIAL_BYTES {
            return err(
                format!("{field}.{key}"),
                format!("longer than {MAX_CREDENTIAL_BYTES} bytes"),
            );
        }
        out.insert(key.clone(), Secret::new(value.clone()));
    }
    Ok(out)
}

fn check_connection_string(field: &str, value: &str) -> Result<Secret> {
    if value.is_empty() {
        return err(field, "required");
    }
    check_text(field, value, MAX_TEXT_BYTES * 4)?;
    Ok(Secret::new(value))
}

/// Exactly one payload, and the one matching `process_type`.
fn check_payload(ty: ProcessType, config: &pb::ProcessConfig) -> Result<ProcessKind> {
    let present: Vec<&str> = [
        ("pattern", config.pattern.is_some()),
        ("proxy", config.proxy.is_some()),
        ("backend", config.backend.is_some()),
        ("utility", config.utility.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let expected = ty.as_str();
    if let Some(other) = present.iter().find(|p| **p != expected) {
        return err(
            format!("config.{other}"),
            format!("a {other} payload was sent for a process of type {expected}"),
        );
    }
    match ty {
        ProcessType::Pattern => {
            let Some(p) = &config.pattern else {
                return err("config.pattern", "missing for process type pattern");
            };
            Ok(ProcessKind::Pattern(check_pattern(p)?))
        }
        ProcessType::Proxy => {
            let Some(p) = &config.proxy else {
                return err("config.proxy", "missing for process type proxy");
            };
            Ok(ProcessKind::Proxy(ProxyConfig {
                admin_endpoint: {
                    let f = "config.proxy.admin_endpoint";
                    if p.admin_endpoint.is_empty() {
                        return err(f, "required");
                    }
                    check_text(f, &p.admin_endpoint, MAX_TEXT_BYTES)?;
                    if p.admin_endpoint.contains(' ') {
                        return err(f, "contains a space");
                    }
                    p.admin_endpoint.clone()
                },
                control_port: check_port("config.proxy.control_port", p.control_port)?,
                data_port: check_port("config.proxy.data_port", p.data_port)?,
                proxy_id: match p.proxy_id.as_str() {
                    "" => None,
                    id => Some(check_id("config.proxy.proxy_id", id)?),
                },
                partition_ranges: {
                    if let Some((i, r)) =
                        p.partition_ranges.iter().enumerate().find(|(_, r)| **r < 0)
                    {
                        return err(
                            format!("config.proxy.partition_ranges[{i}]"),
                            format!("{r} is negative"),
                        );
                    }
                    p.partition_ranges.clone()
                },
            }))
        }
        ProcessType::Backend => {
            let Some(b) = &config.backend else {
                return err("config.backend", "missing for process type backend");
            };
            Ok(ProcessKind::Backend(BackendConfig {
                backend_type: check_token("config.backend.backend_type", &b.backend_type)?,
                connection_string: check_connection_string(
                    "config.backend.connection_string",
                    &b.connection_string,
                )?,
                credentials: check_credentials("config.backend.credentials", &b.credentials)?,
                driver_options: check_map("config.backend.driver_options", &b.driver_options)?,
            }))
        }
        ProcessType::Utility => {
            let Some(u) = &config.utility else {
                return err("config.utility", "missing for process type utility");
            };
            let mut targets = Vec::with_capacity(u.target_processes.len());
            for (i, t) in u.target_processes.iter().enumerate() {
                targets.push(check_id(
                    &format!("config.utility.target_processes[{i}]"),
                    t,
                )?);
            }
            Ok(ProcessKind::Utility(UtilityConfig {
                utility_type: check_token("config.utility.utility_type", &u.utility_type)?,
                settings: check_map("config.utility.settings", &u.settings)?,
                target_processes: targets,
            }))
        }
    }
}

fn check_pattern(p: &pb::PatternProcessConfig) -> Result<PatternConfig> {
    let pattern_type = check_token("config.pattern.pattern_type", &p.pattern_type)?;
    if p.slots.len() > MAX_MAP_ENTRIES {
        return err("config.pattern.slots", "too many slots");
    }
    let mut slots = BTreeMap::new();
    for (name, slot) in &p.slots {
        let field = format!("config.pattern.slots.{name}");
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !valid {
            return err(field, "slot name must match [A-Za-z0-9_-]{1,64}");
        }
        let connection_string = match slot.connection_string.as_str() {
            "" => None,
            s => Some(check_connection_string(
                &format!("{field}.connection_string"),
                s,
            )?),
        };
        slots.insert(
            name.clone(),
            SlotBackend {
                backend_type: check_token(&format!("{field}.backend_type"), &slot.backend_type)?,
                connection_string,
                credentials: check_credentials(&format!("{field}.credentials"), &slot.credentials)?,
                options: check_map(&format!("{field}.options"), &slot.options)?,
            },
        );
    }
    Ok(PatternConfig {
        pattern_type,
        slots,
        settings: check_map("config.pattern.settings", &p.settings)?,
    })
}

fn check_isolation(config: &pb::ProcessConfig, policy: &Policy) -> Result<IsolationLevel> {
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

fn millis(
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

fn check_restart(policy: Option<&pb::RestartPolicy>) -> Result<RestartPolicy> {
    let Some(p) = policy else {
        return Ok(RestartPolicy::default());
    };
    let f = "config.restart_policy";
    Ok(RestartPolicy {
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
    })
}

fn check_health(
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

fn check_resources(r: Option<&pb::ResourceLimits>) -> Result<Resources> {
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
    Ok(Resources {
        memory_max_bytes: positive("memory_max_bytes", r.memory_max_bytes)?,
        cpu_millis: match r.cpu_millis {
            0 => None,
            n if (1..=1_000_000).contains(&n) => Some(n as u32),
            n => {
                return err(
                    format!("{f}.cpu_millis"),
                    format!("{n} is outside 1..=1000000"),
                );
            }
        },
        tasks_max: positive("tasks_max", r.tasks_max)?,
    })
}
