//! The one validation gate: `ManagedProcess::try_from((wire, &policy))`,
//! a pure conversion, and the host's step after it
//! ([`ManagedProcess::on_host`]: the binary on this host's disk).
//!
//! Every check names the wire field it rejects, so an operator can fix the
//! request without reading code. The gate runs before anything touches
//! systemd or the state directory.
//!
//! - `payload`: the type-specific configuration and its secrets;
//! - `runtime`: arguments, environment, ports, isolation, restarts,
//!   health checks, resources, and what fits one exec;
//! - `host`: the binary's path, and the host's step on it.

mod host;
mod payload;
mod runtime;

pub use host::check_binary_on_host;
pub(crate) use runtime::check_exec_size;
pub use runtime::is_env_key;

use host::*;
use payload::*;
use runtime::*;

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
    /// Applied to journal rate limits an assignment leaves at 0.
    pub log_defaults: LogLimits,
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
            log_defaults: LogLimits::default(),
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
        let logs = check_logs(config.logs.as_ref(), policy.log_defaults)?;
        let placement = check_placement(config.placement.as_ref())?;
        let depends_on = check_dependencies(&id, &config.depends_on)?;
        let on_disconnect = check_on_disconnect(config.on_disconnect.as_ref())?;
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
            logs,
            placement,
            depends_on,
            on_disconnect,
            stop_timeout,
            notify_ready,
        };
        check_exec_size(&process)?;
        Ok(process)
    }
}

/// The ids a stored (already validated) assignment depends on.
pub fn dependencies_of(spec: &pb::ProcessAssignment) -> Vec<String> {
    spec.config
        .as_ref()
        .map(|c| c.depends_on.iter().map(|d| d.process_id.clone()).collect())
        .unwrap_or_default()
}

/// Whether a stored (already validated) assignment depends on `id`.
pub fn depends_on(spec: &pb::ProcessAssignment, id: &str) -> bool {
    spec.config
        .as_ref()
        .is_some_and(|c| c.depends_on.iter().any(|d| d.process_id == id))
}

/// A dependency cycle through `id` if it depended on `deps`, where
/// `deps_of` gives the dependencies of every other process: the path from
/// `id` back to itself. Visits only what `id` reaches.
pub fn find_cycle(
    id: &str,
    deps: &[String],
    deps_of: impl Fn(&str) -> Vec<String>,
) -> Option<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    // Depth first, keeping the path: (node, its dependencies left).
    let mut path: Vec<(String, Vec<String>)> = vec![(id.to_owned(), deps.to_vec())];
    while let Some((_, left)) = path.last_mut() {
        let Some(next) = left.pop() else {
            path.pop();
            continue;
        };
        if next == id {
            let mut cycle: Vec<String> = path.iter().map(|(n, _)| n.clone()).collect();
            cycle.push(next);
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            let further = deps_of(&next);
            path.push((next, further));
        }
    }
    None
}

/// The placement rules of a stored (already validated) assignment.
pub fn placement_of(spec: &pb::ProcessAssignment) -> PlacementRules {
    spec.config
        .as_ref()
        .and_then(|c| check_placement(c.placement.as_ref()).ok())
        .unwrap_or_default()
}

/// A character process ids and namespaces may hold.
pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

/// Ids and namespaces: `[A-Za-z0-9._:@-]{1,128}`.
pub(super) fn check_id(field: &str, value: &str) -> Result<String> {
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
pub(super) fn check_token(field: &str, value: &str) -> Result<String> {
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
pub(super) fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
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
