//! The admin's durable state behind a trait: SQLite by default
//! ([`SqliteStore`]); another database implements [`AdminStore`] without
//! touching the rest.

mod sqlite;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

pub use sqlite::SqliteStore;

use crate::pb::prism as pb;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    pub at_ms: i64,
    pub event: String,
    pub version: i64,
    pub launcher_id: String,
    pub detail: String,
}

/// Everything, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub launchers: Vec<LauncherRecord>,
    pub processes: Vec<ProcessRecord>,
    pub health: BTreeMap<String, HealthRecord>,
}

/// A batch of liveness and health reports, and the status changes they
/// showed, written together (one transaction, one sync) once a second.
#[derive(Debug, Default)]
pub struct HeartbeatBatch {
    /// launcher → (last heartbeat ms, resources)
    pub launchers: HashMap<String, (i64, Option<pb::LauncherResourceUsage>)>,
    /// process → its latest health
    pub health: HashMap<String, HealthRecord>,
    /// (process, event), oldest first.
    pub history: Vec<(String, HistoryEvent)>,
}

impl HeartbeatBatch {
    pub fn is_empty(&self) -> bool {
        self.launchers.is_empty() && self.health.is_empty() && self.history.is_empty()
    }
}

#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    async fn load(&self) -> Result<Snapshot, StoreError>;
    async fn upsert_launcher(&self, launcher: &LauncherRecord) -> Result<(), StoreError>;
    async fn set_draining(&self, id: &str, draining: bool) -> Result<(), StoreError>;
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
}
