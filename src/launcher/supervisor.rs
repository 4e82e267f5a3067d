//! The supervisor: the launcher's desired state in memory, and the
//! operations on it (assign, revoke, get, list).
//!
//! Concurrency: operations on one process id are serialised by a per-id
//! lock; the table itself is a short-held mutex, never held across an
//! await. Capacity is reserved in the table before anything slow happens,
//! so concurrent assignments can never overbook.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::sync::Notify;

pub use super::assign::{AssignOutcome, Assigned, Revoked};
use super::store::{Store, StoreError};
pub use super::table::{Entry, Table, UserCollision};
use crate::locks::KeyedLocks;
use crate::{
    health::{Phase, usage::UsageReader},
    model::{ManagedProcess, Policy, ProcessType, ValidationError},
    pb::prism as pb,
    systemd::{Systemd, SystemdError},
};

/// Why an operation was refused or failed; the gRPC layer maps each to a
/// status in one place.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(
        "namespace: {} and {} would run as the same dynamic user {}; this launcher refuses to \
         let them share it (rename one)",
        .0.owner, .0.holder, .0.user
    )]
    UserCollision(UserCollision),
    #[error(
        "process type {process_type} is not among this launcher's capabilities ({capabilities})"
    )]
    NotCapable {
        process_type: ProcessType,
        capabilities: String,
    },
    #[error(
        "all {max} process slots are in use ({used} of {max}); revoke a process or raise --max-processes"
    )]
    CapacityExhausted { used: usize, max: usize },
    #[error("process {id} is held at version {held}; version {requested} is older")]
    StaleVersion {
        id: String,
        held: i64,
        requested: i64,
    },
    #[error("no process {id} on this launcher")]
    NotFound { id: String },
    #[error("process {id} is being revoked; retry once that is done")]
    Revoking { id: String },
    #[error(
        "process {id} is needed by {} (their config.depends_on); revoke them first, or give \
         them a version without the dependency",
        .by.join(", ")
    )]
    Needed { id: String, by: Vec<String> },
    #[error("{field}: {reason}")]
    BadRequest { field: String, reason: String },
    /// Recorded, but systemd did not answer in time (re-executing,
    /// reconnecting): the launcher holds it and starts it once it does.
    #[error("process {id} is recorded and will start once systemd answers: {source}")]
    Pending {
        id: String,
        #[source]
        source: Box<SystemdError>,
    },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<super::table::DependencyError> for LauncherError {
    fn from(e: super::table::DependencyError) -> Self {
        Self::BadRequest {
            field: e.field,
            reason: e.reason,
        }
    }
}

pub struct Supervisor {
    pub(super) systemd: Arc<dyn Systemd>,
    pub(super) store: Arc<Store>,
    pub(super) policy: Policy,
    pub(super) capabilities: BTreeSet<ProcessType>,
    pub(super) max_processes: usize,
    pub(super) circuit_cooldown: Duration,
    pub(super) table: Mutex<Table>,
    pub(super) locks: KeyedLocks,
    pub(super) usage: UsageReader,
    /// Wakes the reconciler.
    pub(super) reconcile: Notify,
    /// Wakes the status reporter, and tells the admin link (an early
    /// heartbeat) and watchers that something changed.
    pub(super) changed: Changed,
    pub metrics: Arc<crate::metrics::LauncherMetrics>,
    /// When an admin last answered, and the newest admin epoch obeyed.
    pub contact: super::disconnect::Contact,
    /// Units nobody wants may be stopped. With an admin, only once its
    /// placement was applied: a launcher whose state was lost must not stop
    /// what the admin is about to hand back.
    pub(super) may_stop_undesired: std::sync::atomic::AtomicBool,
    /// Counts assignments, so a snapshot of the admin's placement is never
    /// applied to assignments made after it was asked for.
    assign_seq: std::sync::atomic::AtomicU64,
    me: Weak<Supervisor>,
}

pub const DEFAULT_REVOKE_GRACE: Duration = Duration::from_secs(30);

impl Supervisor {
    pub fn new(
        systemd: Arc<dyn Systemd>,
        store: Store,
        policy: Policy,
        capabilities: BTreeSet<ProcessType>,
        max_processes: usize,
        circuit_cooldown: Duration,
    ) -> Arc<Self> {
        let contact = super::disconnect::Contact::open(store.state_dir());
        Arc::new_cyclic(|me| Self {
            contact,
            systemd,
            store: Arc::new(store),
            policy,
            capabilities,
            max_processes,
            circuit_cooldown,
            table: Mutex::default(),
            locks: KeyedLocks::default(),
            usage: UsageReader::default(),
            reconcile: Notify::new(),
            changed: Changed::default(),
            metrics: Arc::default(),
            may_stop_undesired: std::sync::atomic::AtomicBool::new(true),
            assign_seq: std::sync::atomic::AtomicU64::new(0),
            me: me.clone(),
        })
    }

    /// What the admin placed here and this launcher holds (not being
    /// revoked), for its registration.
    /// The process is in the table (in any phase).
    pub fn holds(&self, id: &str) -> bool {
        self.table().entries.contains_key(id)
    }

    pub fn held(&self) -> Vec<pb::HeldProcess> {
        self.table()
            .entries
            .values()
            .filter(|e| e.phase != Phase::Revoking && e.placed_by_admin)
            .map(|e| pb::HeldProcess {
                process_id: e.process.id.clone(),
                version: e.process.version,
                recorded_at_ms: e.recorded_at_ms,
            })
            .collect()
    }

    /// The assignments of `ids` as held (secrets included), for handing
    /// back to an admin that lost them.
    pub fn assignments(&self, ids: &[String]) -> Vec<pb::ProcessAssignment> {
        let table = self.table();
        ids.iter()
            .filter_map(|id| table.entries.get(id))
            .filter(|e| e.phase != Phase::Revoking)
            .map(|e| e.wire.clone())
            .collect()
    }

    /// The latest assignment's sequence number.
    pub fn assign_seq(&self) -> u64 {
        self.assign_seq.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.assign_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// Whether units nobody wants may be stopped (see the field).
    pub fn allow_stopping_undesired(&self, allowed: bool) {
        self.may_stop_undesired
            .store(allowed, std::sync::atomic::Ordering::SeqCst);
    }

    /// This supervisor as an `Arc`, for tasks it spawns.
    pub(super) fn me(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    pub fn systemd(&self) -> &Arc<dyn Systemd> {
        &self.systemd
    }

    /// The policy assignments are converted with (at the edge).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn max_processes(&self) -> usize {
        self.max_processes
    }

    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("table poisoned")
    }

    /// Stop every probe task (the daemon is stopping; probes only read).
    pub fn stop_probes(&self) {
        for e in self.table().entries.values_mut() {
            e.stop_probe();
        }
    }

    /// Ask the reconciler for a pass soon (coalesced).
    pub fn request_reconcile(&self) {
        self.reconcile.notify_one();
    }

    /// Write a process's state file (it fsyncs) on a blocking thread,
    /// never on the runtime's workers.
    pub(super) async fn persist(
        &self,
        wire: pb::ProcessAssignment,
        revoked: bool,
        placed_by_admin: bool,
    ) -> Result<(), StoreError> {
        let id = wire.process_id.clone();
        self.on_store(&id, move |store| {
            store.save(&wire, revoked, placed_by_admin)
        })
        .await
    }

    /// Remove a process's state file, on a blocking thread.
    pub(super) async fn unpersist(&self, id: &str) -> Result<(), StoreError> {
        let owned = id.to_owned();
        self.on_store(id, move |store| store.remove(&owned)).await
    }

    /// Run `f` on the store on a blocking thread; `id` names the file in
    /// the error if the thread itself fails.
    async fn on_store(
        &self,
        id: &str,
        f: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let path = store.path_of(id);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError {
                    path,
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// This launcher's policy without the host's checks.
    pub(super) fn structural(&self) -> Policy {
        Policy {
            check_binary_on_host: false,
            ..self.policy.clone()
        }
    }

    /// Load the desired state from disk; returns the corrupt files found.
    ///
    /// Stored assignments are checked for structure only: a host problem
    /// (a binary missing after an upgrade, `/opt` mounted late, a narrowed
    /// allowlist) never drops desired state or stops a running unit. Such a
    /// process is reported `failed` with the problem as its last error when
    /// its unit has to be (re)created, and starts once the problem is gone
    /// (see `Entry::block`).
    pub fn load(&self) -> Result<Vec<super::store::Corrupt>, StoreError> {
        let policy = self.structural();
        let loaded = self.store.load(|a| {
            ManagedProcess::try_from((a.clone(), &policy))
                .map(drop)
                .map_err(|e| e.to_string())
        })?;
        let mut table = self.table();
        for (stored, phase) in loaded
            .desired
            .into_iter()
            .map(|s| (s, Phase::Held))
            .chain(loaded.revoked.into_iter().map(|s| (s, Phase::Revoking)))
        {
            let wire = stored.assignment;
            // The same pure check passed while loading.
            match ManagedProcess::try_from((wire.clone(), &policy)) {
                Ok(process) => {
                    let mut entry = Entry::new(process, wire, phase);
                    entry.recorded_at_ms = stored.recorded_at_ms;
                    entry.placed_by_admin = stored.placed_by_admin;
                    table.insert(entry)
                }
                Err(e) => tracing::error!(
                    prism_process_id = ?wire.process_id,
                    "cannot hold {:?}: {e}",
                    wire.process_id
                ),
            }
        }
        Ok(loaded.corrupt)
    }
}

/// Something about the held processes changed: one waiter (the status
/// line) is woken, and every subscriber sees the generation move.
#[derive(Debug)]
pub struct Changed {
    notify: Notify,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for Changed {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            generation: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Changed {
    pub fn notify_one(&self) {
        self.notify.notify_one();
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
