//! [`Systemd`] over D-Bus with zbus: one long-lived connection, supervised
//! and re-established after any loss, a timeout on every call, and unit
//! state from signals only — never by polling every unit.
//!
//! - `session`: the connection and its supervision;
//! - `calls`: method calls, jobs, and waiting for them;
//! - `signals`: routing systemd's signals to the event hub;
//! - `wire`: D-Bus encoding of properties, replies and errors.

mod calls;
mod session;
mod signals;
mod wire;

use session::supervise;
use wire::{to_variant, variant};

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, broadcast, watch};
use zbus::{
    Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Variant,
    message::Type as MessageType,
};

use super::{
    ConnectionState, CredentialStore, Stopped, Systemd, SystemdError, Target, UnitEvent,
    UnitStatus, UnitSummary, Whom,
    credentials::DEFAULT_CREDENTIALS_DIR,
    events::{Hub, JobOutcome, is_prism_service},
};
use crate::backoff::{Backoff, Policy};
use crate::unit::{self, PropValue, UnitSpec};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";
const SIGKILL: i32 = 9;

/// How the client behaves; the defaults suit a production host.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    /// Deadline of every D-Bus call.
    pub call_timeout: Duration,
    /// Deadline of a start job (for `Type=notify`, the wait for READY=1).
    pub start_timeout: Duration,
    /// Where credential files are kept (root-only).
    pub credentials_dir: PathBuf,
    /// Calls in flight at once; the system bus allows 128 pending replies
    /// per connection.
    pub max_in_flight: usize,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            target: Target::System,
            call_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(120),
            credentials_dir: PathBuf::from(DEFAULT_CREDENTIALS_DIR),
            max_in_flight: 64,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

struct Inner {
    opts: Options,
    conn: watch::Sender<Option<Connection>>,
    state: watch::Sender<ConnectionState>,
    last_error: Mutex<String>,
    hub: Hub,
    in_flight: Semaphore,
    creds: CredentialStore,
    call_errors: std::sync::atomic::AtomicU64,
    reconnects: std::sync::atomic::AtomicU64,
    /// The manager's major version, once connected (0 before).
    version: std::sync::atomic::AtomicU32,
}

/// The D-Bus implementation of [`Systemd`]. Dropping it closes the
/// connection and stops reconnecting.
pub struct DbusSystemd {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
}

impl Drop for DbusSystemd {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl DbusSystemd {
    /// Start the client and wait (up to the call timeout) for the first
    /// connection. The client keeps reconnecting on its own afterwards.
    pub async fn connect(opts: Options) -> Result<Self, SystemdError> {
        let timeout = opts.call_timeout;
        let client = Self::spawn(opts);
        client.wait_connected(timeout).await?;
        Ok(client)
    }

    /// Start the client without waiting; calls wait for the connection.
    pub fn spawn(opts: Options) -> Self {
        let creds = CredentialStore::new(opts.credentials_dir.clone());
        let inner = Arc::new(Inner {
            in_flight: Semaphore::new(opts.max_in_flight.max(1)),
            opts,
            conn: watch::channel(None).0,
            state: watch::channel(ConnectionState::Connecting).0,
            last_error: Mutex::new("not connected yet".to_owned()),
            hub: Hub::default(),
            creds,
            call_errors: Default::default(),
            reconnects: Default::default(),
            version: Default::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(supervise(inner.clone(), rx));
        Self { inner, shutdown }
    }

    /// Wait until connected, or fail with the last connection error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), SystemdError> {
        self.inner.connection(timeout).await.map(drop)
    }

    /// Watch connection state changes.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    pub fn credentials(&self) -> &CredentialStore {
        &self.inner.creds
    }

    /// Read every property of one interface of a unit (for inspection).
    pub async fn unit_properties(
        &self,
        unit: &str,
        interface: &str,
    ) -> Result<HashMap<String, OwnedVariant>, SystemdError> {
        let path = self.inner.get_unit(unit).await?;
        self.inner.get_all(unit, &path, interface).await
    }
}

#[async_trait]
impl Systemd for DbusSystemd {
    #[tracing::instrument(skip_all, fields(unit = %spec.name))]
    async fn start_transient(&self, spec: &UnitSpec) -> Result<(), SystemdError> {
        let inner = &self.inner;
        let unit = spec.name.as_str();
        // As the manager takes them: properties newer than it left out
        // (it would refuse the whole unit; it says which at connect).
        let version = inner.version.load(std::sync::atomic::Ordering::Relaxed);
        let mut props: Vec<(&str, OwnedVariant)> =
            crate::unit::for_manager(&spec.properties, version)
                .map(|(name, value)| (name, to_variant(value)))
                .collect();
        let generation = if spec.credentials.is_empty() {
            None
        } else {
            let generation = inner
                .creds
                .write(unit, &spec.credentials)
                .map_err(|source| SystemdError::Credentials {
                    unit: unit.to_owned(),
                    source,
                })?;
            props.push((
                crate::unit::props::LOAD_CREDENTIAL,
                variant(Variant::from(generation.files.clone())),
            ));
            Some(generation)
        };
        // Restart= and StartLimitBurst= never change, so systemd does not
        // signal them; the hub learns them from the spec.
        inner.hub.seed(unit, &spec.properties);
        let aux: Vec<(String, Vec<(String, OwnedVariant)>)> = Vec::new();
        let job = match inner
            .job_call("StartTransientUnit", unit, &(unit, "fail", props, aux))
            .await
        {
            Ok(job) => job,
            Err(e) => {
                if let Some(g) = &generation {
                    inner.creds.discard(g);
                }
                return Err(e);
            }
        };
        if let Some(g) = &generation
            && let Err(e) = inner.creds.prune(unit, g)
        {
            tracing::warn!(error = %e, "could not remove older credential files of {unit}: {e}");
        }
        inner.finish_start(unit, &job).await
    }

    #[tracing::instrument(skip(self))]
    async fn stop(&self, unit: &str, grace: Duration) -> Result<Stopped, SystemdError> {
        let inner = &self.inner;
        let mut events = inner.hub.subscribe();
        let job = match inner.job_call("StopUnit", unit, &(unit, "replace")).await {
            Ok(job) => job,
            Err(SystemdError::NoSuchUnit { .. }) => {
                let _ = inner.creds.remove(unit);
                return Ok(Stopped::default());
            }
            Err(e) => return Err(e),
        };
        let mut killed = false;
        match inner.wait_job(&job, unit, grace).await {
            Ok(_) => {}
            Err(SystemdError::Timeout { .. }) => {
                // The graceful period is over: SIGKILL every process.
                killed = true;
                tracing::info!(
                    unit,
                    "graceful stop of {unit} timed out after {grace:?}; sending SIGKILL"
                );
                let rx = inner.hub.watch_job(&job.path, job.epoch);
                match inner
                    .manager_call("KillUnit", unit, &(unit, "all", SIGKILL))
                    .await
                {
                    Ok(_) | Err(SystemdError::NoSuchUnit { .. }) => {}
                    Err(e) => return Err(e),
                }
                match tokio::time::timeout(inner.opts.call_timeout, rx).await {
                    Ok(Ok(JobOutcome::Finished(_))) => {}
                    Ok(_) => return Err(inner.unavailable()),
                    Err(_) => {
                        inner.hub.unwatch_job(&job.path);
                        return Err(SystemdError::Timeout {
                            what: "stop after SIGKILL",
                            unit: unit.to_owned(),
                            after: inner.opts.call_timeout,
                        });
                    }
                }
            }
            Err(e) => return Err(e),
        }
        // The exit usually precedes the job's end on the wire, but not
        // always: whichever of the state known then and the state
        // signalled until the unit went says how the process exited.
        let last = inner.hub.last_known(unit);
        let later = inner.wait_unloaded(unit, &mut events).await?;
        if let Err(e) = inner.creds.remove(unit) {
            tracing::warn!(unit, "could not remove credential files of {unit}: {e}");
        }
        let ran = later
            .as_ref()
            .filter(|s| s.exec_main_code != 0)
            .or(last.as_ref().filter(|s| s.exec_main_code != 0));
        Ok(Stopped {
            was_loaded: true,
            killed,
            exit_status: ran.map(|s| s.exec_main_status),
            exit_code: ran.map(|s| s.exec_main_code),
        })
    }

    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        let job = self
            .inner
            .job_call("RestartUnit", unit, &(unit, "replace"))
            .await?;
        self.inner.finish_start(unit, &job).await
    }

    async fn kill(&self, unit: &str, whom: Whom, signal: i32) -> Result<(), SystemdError> {
        self.inner
            .manager_call("KillUnit", unit, &(unit, whom.as_str(), signal))
            .await
            .map(drop)
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.inner
            .manager_call("ResetFailedUnit", unit, &(unit,))
            .await
            .map(drop)
    }

    async fn start_existing(&self, unit: &str) -> Result<(), SystemdError> {
        let job = self
            .inner
            .job_call("StartUnit", unit, &(unit, "fail"))
            .await?;
        self.inner.finish_start(unit, &job).await
    }

    async fn set_properties(
        &self,
        unit: &str,
        properties: &[(&'static str, crate::unit::PropValue)],
    ) -> Result<(), SystemdError> {
        let props: Vec<(&str, OwnedVariant)> = properties
            .iter()
            .map(|(name, value)| (*name, to_variant(value)))
            .collect();
        self.inner
            .manager_call("SetUnitProperties", unit, &(unit, true, props))
            .await?;
        // The description is constant to D-Bus (never signalled).
        self.inner.hub.seed(unit, properties);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UnitSummary>, SystemdError> {
        // Each list also corrects state that changed unsignalled.
        let seen = self.inner.hub.mark();
        let units = self.inner.list_units().await?;
        self.inner.hub.listed(&units, seen);
        Ok(units)
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let seen = self.inner.hub.mark();
        let status = self.inner.unit_status(unit).await?;
        self.inner.hub.refreshed(&status, seen);
        Ok(status)
    }

    fn events(&self) -> broadcast::Receiver<UnitEvent> {
        self.inner.hub.subscribe()
    }

    fn manager_version(&self) -> u32 {
        self.inner
            .version
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn connection_state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    fn sweep_credentials(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> std::io::Result<Vec<String>> {
        let creds = &self.inner.creds;
        let mut swept = Vec::new();
        for unit in creds.units()? {
            if !keep.contains(&unit) {
                creds.remove(&unit)?;
                swept.push(unit);
            }
        }
        Ok(swept)
    }

    fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.call_errors.load(Relaxed),
            self.inner.reconnects.load(Relaxed),
        )
    }
}
