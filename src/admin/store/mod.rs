//! The admin's durable state behind a trait: SQLite embedded by default
//! ([`SqliteStore`], one admin), PostgreSQL for several admins sharing one
//! database ([`PgStore`], one of them leading). Both run the same SQL
//! ([`sql`]) on their own embedded migrations.

mod postgres;
mod sql;
mod sqlite;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;

pub use postgres::PgStore;
pub use sql::{HISTORY_KEEP, HISTORY_MAX_AGE_MS};
pub use sqlite::SqliteStore;

use crate::pb::prism::{self as pb, admin::v1 as apb};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    /// A write by an admin that does not hold the lease at its epoch:
    /// another admin leads now (or this one never did).
    #[error("this admin does not lead (its epoch {epoch} is not the lease's): nothing was written")]
    NotLeader { epoch: i64 },
}

/// Where the admin keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// `admin.db` in this directory (the default).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://…`), shared by several admins.
    Postgres(String),
}

impl Database {
    /// The database named by a URL: `postgres://` or `postgresql://`, or
    /// `sqlite:` followed by a directory.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|e| format!("{}: {e}", redact_url(url)))?;
            Ok(Self::Postgres(url.to_owned()))
        } else if let Some(dir) = url.strip_prefix("sqlite:") {
            let dir = std::path::PathBuf::from(dir.trim_start_matches("//"));
            if !dir.is_absolute() {
                return Err(format!("{url}: the SQLite directory must be absolute"));
            }
            Ok(Self::Sqlite(dir))
        } else {
            Err(format!(
                "{}: expected postgres://… (or postgresql://…) or sqlite:/directory",
                redact_url(url)
            ))
        }
    }

    /// Open it, applying pending migrations.
    pub async fn open(&self, options: &StoreOptions) -> Result<Arc<dyn AdminStore>, StoreError> {
        Ok(match self {
            Self::Sqlite(dir) => Arc::new(SqliteStore::open(dir).await?),
            Self::Postgres(url) => Arc::new(PgStore::connect(url, options).await?),
        })
    }

    /// For logs: a URL without its password.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("SQLite in {}", dir.display()),
            Self::Postgres(url) => format!("PostgreSQL at {}", redact_url(url)),
        }
    }
}

/// A URL with any password (in its user part or its query) replaced, fit
/// for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}{path}")
                }
                _ => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{out}?{}", pairs.join("&"));
    }
    out
}

/// How a shared database is used.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a connection or a statement may take before it fails.
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

/// An admin that asks for the leadership: a unique instance id and the
/// address other admins forward to while it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub holder: String,
    pub address: String,
}

/// The lease as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub address: String,
    pub epoch: i64,
    /// Left until it expires, by the database's clock.
    pub remaining: Duration,
}

impl Lease {
    pub fn held_by(&self, me: &Candidate) -> bool {
        self.holder == me.holder
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LauncherRecord {
    pub id: String,
    pub address: String,
    pub region: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub process_types: Vec<String>,
    pub max_processes: u32,
    pub metadata: BTreeMap<String, String>,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub draining: bool,
    pub resources: Option<pb::LauncherResourceUsage>,
}

/// Where a desired process stands with respect to its launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementState {
    /// Placed on `launcher_id`; the launcher should run it.
    Placed,
    /// Being revoked from `launcher_id`.
    Revoking,
}

impl PlacementState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Revoking => "revoking",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "placed" => Some(Self::Placed),
            "revoking" => Some(Self::Revoking),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProcessRecord {
    pub spec: pb::ProcessAssignment,
    pub launcher_id: Option<String>,
    pub state: PlacementState,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl ProcessRecord {
    pub fn id(&self) -> &str {
        &self.spec.process_id
    }

    pub fn version(&self) -> i64 {
        self.spec.version
    }

    pub fn process_type(&self) -> &str {
        if self.spec.process_type.is_empty() {
            "pattern"
        } else {
            &self.spec.process_type
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthRecord {
    pub health: pb::ProcessHealth,
    pub reported_at_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryEvent {
    pub at_ms: i64,
    pub event: String,
    pub version: i64,
    pub launcher_id: String,
    pub detail: String,
    /// The event watchers see, written with it (its revision taken at
    /// commit); None for history only watchers are not told of.
    pub watched: Option<apb::Event>,
}

/// Everything, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub launchers: Vec<LauncherRecord>,
    pub processes: Vec<ProcessRecord>,
    pub health: BTreeMap<String, HealthRecord>,
    /// The revision of the last event written: the snapshot reflects
    /// every event up to it and none after.
    pub revision: i64,
}

/// The event log's bounds: the oldest revision kept (None: none kept) and
/// the last revision written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBounds {
    pub oldest: Option<i64>,
    pub head: i64,
}

/// What this process knows of the event log it writes: the last revision
/// it committed, the newest events it committed (while someone watches),
/// and a wake-up for whoever streams them.
#[derive(Debug, Default)]
pub struct Written {
    head: std::sync::atomic::AtomicI64,
    notify: tokio::sync::Notify,
    /// Processes whose history grew since it was last trimmed (in the
    /// background, never on a write's path).
    grown: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Whether to keep `recent` (the event hub's tail follows the log).
    keep_recent: std::sync::atomic::AtomicBool,
    /// The newest events committed, by revision, at most [`RECENT`]: the
    /// tail hands them out without reading them back.
    recent: std::sync::Mutex<std::collections::BTreeMap<i64, apb::Event>>,
}

/// Committed events [`Written`] keeps for the tail.
const RECENT: usize = 4096;

impl Written {
    /// Events up to `head` are committed.
    pub fn committed(&self, head: i64) {
        self.head
            .fetch_max(head, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// `events`, numbered up to `head`, are committed.
    pub fn committed_events(&self, head: i64, events: &[&apb::Event]) {
        if self.keep_recent.load(std::sync::atomic::Ordering::Relaxed) {
            let first = head - events.len() as i64 + 1;
            let mut recent = self.recent.lock().expect("poisoned");
            for (revision, e) in (first..).zip(events) {
                let mut e = (*e).clone();
                e.revision = revision;
                recent.insert(revision, e);
            }
            while recent.len() > RECENT {
                recent.pop_first();
            }
        }
        self.committed(head);
    }

    /// Keep the events committed from now on (or stop, and forget them).
    pub fn keep_recent(&self, keep: bool) {
        self.keep_recent
            .store(keep, std::sync::atomic::Ordering::Relaxed);
        if !keep {
            self.recent.lock().expect("poisoned").clear();
        }
    }

    /// The events after `after` that this process committed, in order, at
    /// most `max`: None when the next one is not at hand (committed by
    /// another writer, forgotten, or its writer has not handed it over
    /// yet) and the log has to be read.
    pub fn recent_after(&self, after: i64, max: usize) -> Option<Vec<apb::Event>> {
        let recent = self.recent.lock().expect("poisoned");
        let mut out = Vec::new();
        for (revision, e) in recent.range(after + 1..) {
            if *revision != after + 1 + out.len() as i64 || out.len() == max {
                break;
            }
            out.push(e.clone());
        }
        (!out.is_empty() || after >= self.head()).then_some(out)
    }

    /// The last revision this process committed (or learned at load).
    pub fn head(&self) -> i64 {
        self.head.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The histories of `ids` grew (committed).
    pub fn grew<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut grown = self.grown.lock().expect("poisoned");
        for id in ids {
            if !grown.contains(id) {
                grown.insert(id.to_owned());
            }
        }
    }

    /// The histories grown since the last call, to trim.
    pub fn take_grown(&self) -> Vec<String> {
        self.grown.lock().expect("poisoned").drain().collect()
    }

    /// Resolves once events were committed since the last call (one
    /// waiter: the event hub's tail).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// A batch of liveness and health reports, and the status changes they
/// showed, written together (one transaction, one sync) once a second.
#[derive(Debug, Default)]
pub struct HeartbeatBatch {
    /// launcher → (last heartbeat ms, resources; `None` keeps those stored)
    pub launchers: HashMap<String, (i64, Option<pb::LauncherResourceUsage>)>,
    /// process → its latest health
    pub health: HashMap<String, HealthRecord>,
    /// (process, event), oldest first.
    pub history: Vec<(String, HistoryEvent)>,
    /// Events for watchers that are no process's history (launchers'
    /// liveness, a leader elected), oldest first.
    pub events: Vec<apb::Event>,
}

impl HeartbeatBatch {
    pub fn is_empty(&self) -> bool {
        self.launchers.is_empty()
            && self.health.is_empty()
            && self.history.is_empty()
            && self.events.is_empty()
    }

    /// Put back a batch that could not be written, under what arrived
    /// since: `self` is the newer.
    pub fn put_back(&mut self, older: HeartbeatBatch) {
        let newer = std::mem::replace(self, older);
        self.launchers.extend(newer.launchers);
        self.health.extend(newer.health);
        self.history.extend(newer.history);
        self.events.extend(newer.events);
    }
}

/// The admin's state. Writes are fenced: on a shared database, each one
/// commits only while this admin holds the lease at the epoch it was
/// given ([`StoreError::NotLeader`] otherwise, with nothing written).
#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    /// Take the lease for `me` for `ttl` (by the database's clock), or
    /// renew it if `me` holds it, and say who holds it afterwards. While
    /// `me` holds it, this store's writes carry its epoch. An embedded
    /// database has one admin, which always leads.
    async fn lead(&self, me: &Candidate, ttl: Duration) -> Result<Lease, StoreError>;
    /// Give the lease up, if `me` holds it, so that another admin leads at
    /// once (a leader that stops). Its writes are refused from then on.
    async fn resign(&self, me: &Candidate) -> Result<(), StoreError>;
    /// Whether the database is shared by several admins (leadership,
    /// forwarding) or embedded (one admin).
    fn shared(&self) -> bool;
    async fn load(&self) -> Result<Snapshot, StoreError>;
    /// Remove history older than `before_ms` (at start-up).
    async fn prune_history(&self, before_ms: i64) -> Result<(), StoreError>;
    /// Insert or replace a launcher, with the events that tell of it.
    async fn upsert_launcher(
        &self,
        launcher: &LauncherRecord,
        events: &[apb::Event],
    ) -> Result<(), StoreError>;
    async fn set_draining(
        &self,
        id: &str,
        draining: bool,
        events: &[apb::Event],
    ) -> Result<(), StoreError>;
    /// Insert or replace a process, with the history event that explains it,
    /// in one transaction.
    async fn put_process(
        &self,
        process: &ProcessRecord,
        event: &HistoryEvent,
    ) -> Result<(), StoreError>;
    /// Forget a process (its health too), recording why.
    async fn delete_process(&self, id: &str, event: &HistoryEvent) -> Result<(), StoreError>;
    async fn save_heartbeats(&self, batch: &HeartbeatBatch) -> Result<(), StoreError>;
    /// The latest `limit` events of a process, newest first.
    async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEvent>, StoreError>;
    /// Up to `limit` events with a revision greater than `after`, in order.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<apb::Event>, StoreError>;
    async fn event_bounds(&self) -> Result<EventBounds, StoreError>;
    /// Remove events beyond the newest `keep`, and those older than
    /// `before_ms`; how many went.
    async fn prune_events(&self, keep: i64, before_ms: i64) -> Result<u64, StoreError>;
    /// Trim the histories that grew since the last trim to their newest
    /// [`sql::HISTORY_KEEP`] events; how many events went.
    async fn trim_histories(&self) -> Result<u64, StoreError>;
    /// What this process committed to the event log.
    fn written(&self) -> &Written;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str) -> apb::Event {
        apb::Event {
            kind: kind.into(),
            ..Default::default()
        }
    }

    fn revisions(events: Option<Vec<apb::Event>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|e| e.revision).collect())
    }

    #[test]
    fn recent_events_are_handed_out_in_order_or_not_at_all() {
        let w = Written::default();
        // Not kept: only the head moves, and the log must be read.
        w.committed_events(2, &[&ev("a"), &ev("b")]);
        assert_eq!(revisions(w.recent_after(0, 10)), None);
        assert_eq!(revisions(w.recent_after(2, 10)), Some(vec![]));
        w.keep_recent(true);
        w.committed_events(4, &[&ev("c"), &ev("d")]);
        assert_eq!(revisions(w.recent_after(2, 10)), Some(vec![3, 4]));
        assert_eq!(revisions(w.recent_after(2, 1)), Some(vec![3]));
        // Committed before keeping: read from the log.
        assert_eq!(revisions(w.recent_after(1, 10)), None);
        // 6 handed over before 5 (two writers): 5 is read from the log, and
        // once 5 comes, the run is whole.
        w.committed_events(6, &[&ev("f")]);
        assert_eq!(revisions(w.recent_after(4, 10)), None);
        w.committed_events(5, &[&ev("e")]);
        assert_eq!(revisions(w.recent_after(4, 10)), Some(vec![5, 6]));
        assert_eq!(w.head(), 6);
        w.keep_recent(false);
        assert_eq!(revisions(w.recent_after(4, 10)), None);
    }
}
