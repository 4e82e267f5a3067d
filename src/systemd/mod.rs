//! The systemd boundary: a domain-level trait ([`Systemd`]) and its D-Bus
//! implementation ([`DbusSystemd`], over zbus).
//!
//! The rest of the launcher holds an `Arc<dyn Systemd>`; pure logic can be
//! tested against a fake, while integration tests drive a real manager.

mod credentials;
mod dbus;
mod events;
pub mod memory;
mod private;
mod status;

use std::{fmt, time::Duration};

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use credentials::{CredentialStore, DEFAULT_CREDENTIALS_DIR};
pub use dbus::{DbusSystemd, Options};
pub use memory::MemorySystemd;
pub use status::{UnitStatus, UnitSummary};

use crate::unit::UnitSpec;

/// Which systemd manager to talk to, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The system manager on the system bus (honours `DBUS_SYSTEM_BUS_ADDRESS`).
    System,
    /// The calling user's manager on the session bus (honours
    /// `DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`).
    User,
    /// A manager reachable on the bus at this D-Bus address.
    Bus(String),
    /// A manager's private peer-to-peer socket (`unix:path=…/systemd/private`).
    Private(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::User => f.write_str("user"),
            Self::Bus(a) => write!(f, "bus:{a}"),
            Self::Private(a) => write!(f, "private:{a}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `system`, `user`, `bus:<d-bus address>` or `private:<d-bus address>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Self::System),
            "user" => Ok(Self::User),
            _ => {
                if let Some(a) = s.strip_prefix("bus:").filter(|a| !a.is_empty()) {
                    Ok(Self::Bus(a.to_owned()))
                } else if let Some(a) = s.strip_prefix("private:").filter(|a| !a.is_empty()) {
                    Ok(Self::Private(a.to_owned()))
                } else {
                    Err(format!(
                        "{s:?} is not a systemd target (expected system, user, \
                         bus:<d-bus address> or private:<d-bus address>)"
                    ))
                }
            }
        }
    }
}

/// Whether the client currently holds a working connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Lost; reconnecting with backoff.
    Disconnected,
    /// The client was shut down.
    Closed,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Closed => "closed",
        }
    }
}

/// What happened to launcher-owned units, as systemd's signals tell it.
#[derive(Clone, Debug)]
pub enum UnitEvent {
    /// A unit's state changed; the status merges every property seen so far.
    Changed(Box<UnitStatus>),
    /// systemd unloaded the unit (it is gone).
    Removed { unit: String },
    /// The connection was (re-)established: this is what the manager holds
    /// now. Consumers must treat it as the whole truth; anything not listed
    /// is gone (a manager restart drops every transient unit).
    Resynced { units: Vec<UnitSummary> },
    /// The connection was lost; a `Resynced` follows once it is back.
    Disconnected,
}

/// How a unit's process ended, when stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// The unit existed when asked to stop.
    pub was_loaded: bool,
    /// SIGKILL had to be sent after the graceful timeout.
    pub killed: bool,
    /// `ExecMainStatus`: the exit code, or the signal number if killed.
    pub exit_status: Option<i32>,
    /// `ExecMainCode`: 1 exited, 2 killed, 3 dumped core (CLD_* codes).
    pub exit_code: Option<i32>,
}

/// Errors at the systemd boundary, each naming the unit involved.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `org.freedesktop.systemd1.UnitExists`: the name is taken. Nothing was
    /// changed; this is the idempotency signal, not a failure to retry.
    #[error("unit {unit} already exists")]
    UnitExists { unit: String },
    /// `org.freedesktop.systemd1.NoSuchUnit`.
    #[error("unit {unit} does not exist")]
    NoSuchUnit { unit: String },
    /// The start job ended in something other than `done`.
    #[error("unit {unit} failed to start: job {job_result}, {}", .status.describe_failure())]
    StartFailed {
        unit: String,
        job_result: String,
        status: Box<UnitStatus>,
    },
    /// A call or job wait ran past its deadline.
    #[error("{what} for unit {unit} timed out after {after:?}")]
    Timeout {
        what: &'static str,
        unit: String,
        after: Duration,
    },
    /// No connection to systemd (it is being re-established).
    #[error("systemd ({target}) is unreachable: {reason}")]
    Unavailable { target: String, reason: String },
    /// systemd refused the call.
    #[error("systemd refused {method} for unit {unit}: {name}: {message}")]
    Refused {
        method: &'static str,
        unit: String,
        name: String,
        message: String,
    },
    /// Launcher-side credential files could not be written or removed.
    #[error("credentials of unit {unit}: {source}")]
    Credentials {
        unit: String,
        #[source]
        source: std::io::Error,
    },
    #[error("D-Bus error during {method} for unit {unit}: {source}")]
    Dbus {
        method: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
}

impl SystemdError {
    /// The manager was briefly away (re-exec, reconnect) or slow: the same
    /// call may succeed if retried. Everything else is an answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

/// Which processes of a unit a signal goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whom {
    Main,
    All,
}

impl Whom {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::All => "all",
        }
    }
}

/// The launcher's view of a systemd manager.
#[async_trait]
pub trait Systemd: Send + Sync + 'static {
    /// Create and start a transient unit, and wait for its start job.
    /// `Ok` means the job finished `done` (for `Type=exec` the binary was
    /// executed; for `Type=notify` it sent READY=1).
    async fn start_transient(&self, spec: &UnitSpec) -> Result<(), SystemdError>;

    /// Stop a unit: SIGTERM, then SIGKILL after `grace` at the latest. When
    /// this returns the unit is unloaded. Stopping a unit that does not
    /// exist succeeds with `was_loaded: false`.
    async fn stop(&self, unit: &str, grace: Duration) -> Result<Stopped, SystemdError>;

    /// Restart a running unit gracefully (stop, then start) and wait for it.
    async fn restart(&self, unit: &str) -> Result<(), SystemdError>;

    /// Send a signal to the unit's processes.
    async fn kill(&self, unit: &str, whom: Whom, signal: i32) -> Result<(), SystemdError>;

    /// Clear a failed unit and its start-limit counter.
    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError>;

    /// Start an existing (loaded, inactive or failed) unit again.
    async fn start_existing(&self, unit: &str) -> Result<(), SystemdError>;

    /// Change properties of a loaded unit until it is unloaded
    /// (`SetUnitProperties` with `runtime`), all or none: systemd checks
    /// every property before it applies any. Its processes keep running.
    /// systemd changes only cgroup limits and the description this way.
    async fn set_properties(
        &self,
        unit: &str,
        properties: &[(&'static str, crate::unit::PropValue)],
    ) -> Result<(), SystemdError>;

    /// Every workload service (`prism-<type>-*.service`), from one call.
    async fn list(&self) -> Result<Vec<UnitSummary>, SystemdError>;

    /// The full status of one unit.
    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError>;

    /// Unit events from now on. A receiver that lags must resynchronise
    /// with [`Systemd::list`].
    fn events(&self) -> broadcast::Receiver<UnitEvent>;

    fn connection_state(&self) -> ConnectionState;

    /// The manager's major version (252 for "252.38-1~deb12u1"); 0 when
    /// not known yet. Properties newer than it are not sent.
    fn manager_version(&self) -> u32 {
        0
    }

    /// Cumulative (failed or timed-out calls, reconnections), for metrics.
    fn stats(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Remove the credential files of every unit not in `keep` (units
    /// that no longer exist: a crash between a stop and its cleanup);
    /// returns the units swept.
    fn sweep_credentials(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> std::io::Result<Vec<String>> {
        let _ = keep;
        Ok(Vec::new())
    }
}
