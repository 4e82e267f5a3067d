//! [`Systemd`] over D-Bus with zbus: one long-lived connection, supervised
//! and re-established after any loss, a timeout on every call, and unit
//! state from signals only — never by polling every unit.

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

/// Run until shutdown: connect, serve signals, and reconnect after a loss.
async fn supervise(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Policy::new(inner.opts.backoff_min, inner.opts.backoff_max));
    let mut ever_connected = false;
    loop {
        let attempt = tokio::select! {
            r = tokio::time::timeout(inner.opts.call_timeout, Session::open(&inner.opts)) => r,
            _ = shutdown.changed() => break,
        };
        let session = match attempt {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                inner.set_error(e.to_string());
                wait_or_shutdown(backoff.next_wait(), &mut shutdown).await;
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
            Err(_) => {
                inner.set_error("connection attempt timed out".to_owned());
                wait_or_shutdown(backoff.next_wait(), &mut shutdown).await;
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        if ever_connected {
            inner
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(target = %inner.opts.target, "reconnected to systemd ({})", inner.opts.target);
        } else {
            tracing::debug!(target = %inner.opts.target, "connected to systemd");
        }
        ever_connected = true;
        let Session {
            conn,
            mut signals,
            mut owner_changes,
            owner,
        } = session;
        inner.conn.send_replace(Some(conn.clone()));
        inner.state.send_replace(ConnectionState::Connected);

        // Listing after subscribing: every change after this list arrives
        // as a signal, so consumers can take the list as the whole truth.
        match inner.list_units().await {
            Ok(units) => inner.hub.emit(UnitEvent::Resynced { units }),
            Err(e) => tracing::warn!(error = %e, "listing units after connecting failed: {e}"),
        }

        let reason = loop {
            tokio::select! {
                msg = signals.next() => match msg {
                    Some(Ok(msg)) => inner.dispatch(&msg),
                    Some(Err(e)) => tracing::debug!(error = %e, "undecodable message"),
                    None => break "connection closed".to_owned(),
                },
                change = next_owner_change(&mut owner_changes, owner.as_deref()) => {
                    break format!("systemd's bus name changed owner ({change})");
                }
                _ = shutdown.changed() => break "shutdown".to_owned(),
            }
        };
        inner.conn.send_replace(None);
        inner.hub.disconnected();
        if *shutdown.borrow() {
            break;
        }
        tracing::warn!(target = %inner.opts.target, "lost systemd ({reason}); reconnecting");
        inner.set_error(reason);
        inner.state.send_replace(ConnectionState::Disconnected);
        drop(conn);
        wait_or_shutdown(backoff.next_wait(), &mut shutdown).await;
        if *shutdown.borrow() {
            break;
        }
    }
    inner.conn.send_replace(None);
    inner.state.send_replace(ConnectionState::Closed);
}

async fn wait_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Resolves when systemd's bus name passes to anyone but `owner` (the
/// manager restarted or re-executed). Changes to `owner` itself are the
/// acquisition we already know of, queued before we asked.
async fn next_owner_change(stream: &mut Option<MessageStream>, owner: Option<&str>) -> String {
    match stream {
        Some(s) => loop {
            match s.next().await {
                Some(Ok(msg)) => {
                    if let Ok((_, _, new)) = msg.body().deserialize::<(String, String, String)>() {
                        if Some(new.as_str()) == owner {
                            continue;
                        }
                        return if new.is_empty() {
                            "released".to_owned()
                        } else {
                            format!("new owner {new}")
                        };
                    }
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        },
        None => std::future::pending().await,
    }
}

/// One established connection with its signal streams.
struct Session {
    conn: Connection,
    signals: MessageStream,
    owner_changes: Option<MessageStream>,
    /// The unique bus name of the manager we talk to (bus connections).
    owner: Option<String>,
}

impl Session {
    async fn open(opts: &Options) -> zbus::Result<Self> {
        let builder = match &opts.target {
            Target::System => zbus::connection::Builder::system(),
            Target::User => zbus::connection::Builder::session(),
            Target::Bus(addr) => zbus::connection::Builder::address(addr.as_str()),
            Target::Private(addr) => super::private::connect(addr).await?,
        };
        // Signals are consumed by one task without blocking, but a burst
        // (1000 units changing at once) must not overflow the queue.
        let conn = builder
            .max_queued(std::num::NonZeroUsize::new(65536).expect("non-zero"))
            .build()
            .await?;
        // Subscribe to signals before anything can happen that we must see.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(DEST)
            .build()?;
        let signals = MessageStream::for_match_rule(
            rule,
            &conn,
            Some(std::num::NonZeroUsize::new(65536).expect("non-zero")),
        )
        .await?;
        let owner_changes = if conn.is_bus() {
            let rule = MatchRule::builder()
                .msg_type(MessageType::Signal)
                .sender("org.freedesktop.DBus")
                .interface("org.freedesktop.DBus")
                .member("NameOwnerChanged")
                .add_arg(DEST)
                .build()?;
            Some(MessageStream::for_match_rule(rule, &conn, None).await?)
        } else {
            None
        };
        // The first call carries arguments: on a fresh private-socket
        // connection an argument-less first call sometimes gets no reply.
        conn.call_method(
            Some(DEST),
            MANAGER_PATH,
            Some(PROPS_IFACE),
            "Get",
            &(MANAGER_IFACE, "Version"),
        )
        .await?;
        // Without a subscriber systemd sends no unit signals on the bus.
        conn.call_method(
            Some(DEST),
            MANAGER_PATH,
            Some(MANAGER_IFACE),
            "Subscribe",
            &(),
        )
        .await?;
        let owner = if conn.is_bus() {
            let reply = conn
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "GetNameOwner",
                    &(DEST,),
                )
                .await?;
            Some(reply.body().deserialize::<String>()?)
        } else {
            None
        };
        Ok(Self {
            conn,
            signals,
            owner_changes,
            owner,
        })
    }
}

fn variant(v: Variant<'static>) -> OwnedVariant {
    OwnedVariant::try_from(v).expect("variants without file descriptors always convert")
}

fn to_variant(value: &PropValue) -> OwnedVariant {
    match value {
        PropValue::Str(s) => variant(Variant::from(s.clone())),
        PropValue::Bool(b) => variant(Variant::from(*b)),
        PropValue::U32(n) => variant(Variant::from(*n)),
        PropValue::U64(n) => variant(Variant::from(*n)),
        PropValue::StrList(list) => variant(Variant::from(list.clone())),
        PropValue::BytesList(list) => variant(Variant::from(list.clone())),
        PropValue::I32(n) => variant(Variant::from(*n)),
        PropValue::NameList(allow, names) => variant(Variant::from((*allow, names.clone()))),
        PropValue::Exec(cmds) => {
            let cmds: Vec<(String, Vec<String>, bool)> = cmds
                .iter()
                .map(|c| (c.path.clone(), c.argv.clone(), c.ignore_failure))
                .collect();
            variant(Variant::from(cmds))
        }
    }
}

/// A job systemd created, and the connection epoch it belongs to.
struct Job {
    path: String,
    epoch: u64,
}

type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

impl Inner {
    fn set_error(&self, e: String) {
        *self.last_error.lock().expect("poisoned") = e;
    }

    fn unavailable(&self) -> SystemdError {
        SystemdError::Unavailable {
            target: self.opts.target.to_string(),
            reason: self.last_error.lock().expect("poisoned").clone(),
        }
    }

    async fn connection(&self, timeout: Duration) -> Result<Connection, SystemdError> {
        let mut rx = self.conn.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(conn)) => Ok(conn.clone().expect("waited for Some")),
            _ => Err(self.unavailable()),
        }
    }

    /// One method call with the in-flight bound and the call deadline.
    async fn call<B>(
        &self,
        method: &'static str,
        unit: &str,
        path: &str,
        interface: &str,
        body: &B,
    ) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::wire::DynamicType + Sync,
    {
        let timeout = self.opts.call_timeout;
        let work = async {
            let conn = self.connection(timeout).await?;
            let _permit = self
                .in_flight
                .acquire()
                .await
                .expect("semaphore never closed");
            conn.call_method(Some(DEST), path, Some(interface), method, body)
                .await
                .map_err(|e| map_error(method, unit, e, self))
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SystemdError::Timeout {
                what: method,
                unit: unit.to_owned(),
                after: timeout,
            }),
        };
        // Typed answers (UnitExists, NoSuchUnit) are outcomes, not errors.
        if let Err(
            SystemdError::Timeout { .. }
            | SystemdError::Unavailable { .. }
            | SystemdError::Refused { .. }
            | SystemdError::Dbus { .. },
        ) = &result
        {
            self.call_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn manager_call<B>(
        &self,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::wire::DynamicType + Sync,
    {
        self.call(method, unit, MANAGER_PATH, MANAGER_IFACE, body)
            .await
    }

    /// A call that creates a job; the job is tied to the connection it was
    /// created on, so its end can never be confused with a later manager's.
    async fn job_call<B>(
        &self,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<Job, SystemdError>
    where
        B: serde::Serialize + zbus::wire::DynamicType + Sync,
    {
        let epoch = self.hub.epoch();
        let reply = self.manager_call(method, unit, body).await?;
        let path: OwnedObjectPath = decode(method, unit, &reply)?;
        Ok(Job {
            path: path.as_str().to_owned(),
            epoch,
        })
    }

    /// Wait for a job's end within `deadline`.
    async fn wait_job(
        &self,
        job: &Job,
        unit: &str,
        deadline: Duration,
    ) -> Result<String, SystemdError> {
        let rx = self.hub.watch_job(&job.path, job.epoch);
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(JobOutcome::Finished(result))) => Ok(result),
            Ok(Ok(JobOutcome::Disconnected)) | Ok(Err(_)) => Err(self.unavailable()),
            Err(_) => {
                self.hub.unwatch_job(&job.path);
                Err(SystemdError::Timeout {
                    what: "job",
                    unit: unit.to_owned(),
                    after: deadline,
                })
            }
        }
    }

    async fn get_unit(&self, unit: &str) -> Result<String, SystemdError> {
        let reply = self.manager_call("GetUnit", unit, &(unit,)).await?;
        let path: OwnedObjectPath = decode("GetUnit", unit, &reply)?;
        Ok(path.as_str().to_owned())
    }

    async fn get_all(
        &self,
        unit: &str,
        path: &str,
        interface: &str,
    ) -> Result<HashMap<String, OwnedVariant>, SystemdError> {
        let reply = self
            .call("GetAll", unit, path, PROPS_IFACE, &(interface,))
            .await?;
        decode("GetAll", unit, &reply)
    }

    async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let path = self.get_unit(unit).await?;
        let mut status = UnitStatus::new(unit);
        status.merge(&self.get_all(unit, &path, UNIT_IFACE).await?);
        status.merge(&self.get_all(unit, &path, SERVICE_IFACE).await?);
        Ok(status)
    }

    async fn list_units(&self) -> Result<Vec<UnitSummary>, SystemdError> {
        let states: Vec<&str> = Vec::new();
        let reply = self
            .manager_call(
                "ListUnitsByPatterns",
                "prism-<type>-*.service",
                &(states, unit::SERVICE_PATTERNS.to_vec()),
            )
            .await?;
        let rows: Vec<ListedUnit> =
            decode("ListUnitsByPatterns", "prism-<type>-*.service", &reply)?;
        Ok(rows
            .into_iter()
            .map(|r| UnitSummary {
                name: r.0,
                description: r.1,
                load_state: r.2,
                active_state: r.3,
                sub_state: r.4,
                has_job: r.7 != 0,
            })
            .collect())
    }

    /// Route one systemd signal.
    fn dispatch(&self, msg: &zbus::Message) {
        let header = msg.header();
        let (Some(member), Some(path)) = (header.member(), header.path()) else {
            return;
        };
        match member.as_str() {
            "JobRemoved" => {
                if let Ok((_, job, unit, result)) = msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                {
                    self.hub.job_removed(job.as_str(), &unit, &result);
                }
            }
            "UnitRemoved" => {
                if let Ok((unit, _)) = msg.body().deserialize::<(String, OwnedObjectPath)>()
                    && is_prism_service(&unit)
                {
                    self.hub.unit_removed(&unit);
                }
            }
            "PropertiesChanged" => {
                let Some(label) = path.as_str().strip_prefix(UNIT_PATH_PREFIX) else {
                    return;
                };
                // Cheap filter before decoding: "prism-" is "prism_2d" as a label.
                if !label.starts_with("prism_2d") {
                    return;
                }
                let Some(unit) = unit::bus_label_unescape(label) else {
                    return;
                };
                if !is_prism_service(&unit) {
                    return;
                }
                if let Ok((_, changed, _)) =
                    msg.body()
                        .deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                {
                    self.hub.properties_changed(&unit, &changed);
                }
            }
            _ => {}
        }
    }

    /// Wait until `unit` is unloaded, helping it along: a failed unit stays
    /// loaded until its failure is reset. Returns the last state of it seen
    /// in `events` meanwhile: systemd may signal the final properties (exit
    /// code and status) after the job's end.
    async fn wait_unloaded(
        &self,
        unit: &str,
        events: &mut broadcast::Receiver<UnitEvent>,
    ) -> Result<Option<UnitStatus>, SystemdError> {
        let deadline = tokio::time::Instant::now() + self.opts.call_timeout;
        let mut seen: Option<UnitStatus> = None;
        let note = |event: UnitEvent, seen: &mut Option<UnitStatus>| match event {
            UnitEvent::Changed(s) if s.name == unit => {
                *seen = Some(*s);
                false
            }
            UnitEvent::Removed { unit: u } => u == unit,
            _ => false,
        };
        loop {
            match self.get_unit(unit).await {
                Err(SystemdError::NoSuchUnit { .. }) => {
                    // What was signalled before it went.
                    while let Ok(event) = events.try_recv() {
                        note(event, &mut seen);
                    }
                    return Ok(seen);
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            match self.manager_call("ResetFailedUnit", unit, &(unit,)).await {
                Ok(_) | Err(SystemdError::NoSuchUnit { .. }) => {}
                Err(e) => return Err(e),
            }
            // Wait for the removal signal, then check again.
            let removed = async {
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            if note(event, &mut seen) {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                    }
                }
            };
            let step = deadline.saturating_duration_since(tokio::time::Instant::now());
            if step.is_zero() {
                return Err(SystemdError::Timeout {
                    what: "unload",
                    unit: unit.to_owned(),
                    after: self.opts.call_timeout,
                });
            }
            let _ = tokio::time::timeout(step.min(Duration::from_millis(500)), removed).await;
        }
    }

    async fn finish_start(&self, unit: &str, job: &Job) -> Result<(), SystemdError> {
        let result = self.wait_job(job, unit, self.opts.start_timeout).await?;
        if result == "done" {
            return Ok(());
        }
        let status = match self.unit_status(unit).await {
            Ok(s) => s,
            Err(_) => self
                .hub
                .last_known(unit)
                .unwrap_or_else(|| UnitStatus::new(unit)),
        };
        Err(SystemdError::StartFailed {
            unit: unit.to_owned(),
            job_result: result,
            status: Box::new(status),
        })
    }
}

fn decode<T>(method: &'static str, unit: &str, reply: &zbus::Message) -> Result<T, SystemdError>
where
    T: for<'d> serde::Deserialize<'d> + zbus::wire::Type,
{
    reply
        .body()
        .deserialize::<T>()
        .map_err(|source| SystemdError::Dbus {
            method,
            unit: unit.to_owned(),
            source,
        })
}

/// D-Bus errors that mean the manager is briefly away (re-executing,
/// reloading, restarting), not that it refused: the call may be retried.
const TRANSIENT_ERRORS: &[&str] = &[
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoServer",
    "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.TimedOut",
];

/// Well-known D-Bus error names become typed outcomes.
fn map_error(method: &'static str, unit: &str, e: zbus::Error, inner: &Inner) -> SystemdError {
    let unit = unit.to_owned();
    let transient = |name: &str, message: &str| SystemdError::Unavailable {
        target: inner.opts.target.to_string(),
        reason: format!("{method} for unit {unit}: {name}: {message}"),
    };
    match e {
        zbus::Error::MethodError(name, message, _) if TRANSIENT_ERRORS.contains(&name.as_str()) => {
            transient(name.as_str(), message.as_deref().unwrap_or_default())
        }
        zbus::Error::FDO(fdo)
            if TRANSIENT_ERRORS.contains(&zbus::DBusError::name(&*fdo).as_str()) =>
        {
            transient(zbus::DBusError::name(&*fdo).as_str(), &fdo.to_string())
        }
        zbus::Error::MethodError(name, message, _) => match name.as_str() {
            "org.freedesktop.systemd1.UnitExists" => SystemdError::UnitExists { unit },
            "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.DBus.Error.UnknownObject" => {
                SystemdError::NoSuchUnit { unit }
            }
            other => SystemdError::Refused {
                method,
                unit,
                name: other.to_owned(),
                message: message.unwrap_or_default(),
            },
        },
        zbus::Error::FDO(fdo) => match *fdo {
            zbus::fdo::Error::UnknownObject(_) => SystemdError::NoSuchUnit { unit },
            other => SystemdError::Refused {
                method,
                unit,
                name: zbus::DBusError::name(&other).to_string(),
                message: other.to_string(),
            },
        },
        zbus::Error::InputOutput(_) | zbus::Error::Connection(..) => {
            inner.set_error(e.to_string());
            inner.unavailable()
        }
        source => SystemdError::Dbus {
            method,
            unit,
            source,
        },
    }
}

#[async_trait]
impl Systemd for DbusSystemd {
    #[tracing::instrument(skip_all, fields(unit = %spec.name))]
    async fn start_transient(&self, spec: &UnitSpec) -> Result<(), SystemdError> {
        let inner = &self.inner;
        let unit = spec.name.as_str();
        let mut props: Vec<(&str, OwnedVariant)> = spec
            .properties
            .iter()
            .map(|(name, value)| (*name, to_variant(value)))
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
        inner.hub.seed(unit, spec);
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

    async fn list(&self) -> Result<Vec<UnitSummary>, SystemdError> {
        self.inner.list_units().await
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let status = self.inner.unit_status(unit).await?;
        self.inner.hub.remember(&status);
        Ok(status)
    }

    fn events(&self) -> broadcast::Receiver<UnitEvent> {
        self.inner.hub.subscribe()
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
