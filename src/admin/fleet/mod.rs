//! The fleet as the admin holds it: launchers, processes and their
//! placement, in memory for decisions and written through to the store
//! before anything is acknowledged.
//!
//! Placement decisions and their persistence happen under one lock, so
//! concurrent assignments can never overbook a launcher. Pushes to
//! launchers happen outside it; a push that cannot be delivered stays
//! pending and is retried (see `tasks`), and registrations and heartbeats
//! repair whatever was lost (level-triggered).
//!
//! - `state`: the fleet in memory, with its indexes;
//! - `assign`: placing, pushing and revoking processes;
//! - `register`: launchers registering, and handing back what the admin lost;
//! - `heartbeat`: reports, and the drift they reveal (`drift`: the pure
//!   decision per process).

mod assign;
pub mod drift;
mod heartbeat;
mod register;
mod state;

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tonic::Status;

pub use assign::Revocation;
pub use heartbeat::Heartbeat;
pub use register::{
    MAX_ADDRESS_BYTES, MAX_LABEL_BYTES, MAX_METADATA_ENTRIES, MAX_METADATA_VALUE_BYTES, Reclaim,
    Registration,
};
pub use state::State;

use super::{
    dispatch::Dispatcher,
    events,
    placement::{self, NoCandidate},
    store::{AdminStore, HeartbeatBatch, HistoryEvent, PlacementState, StoreError},
};
use crate::{
    clock,
    locks::KeyedLocks,
    model::{ProcessType, ValidationError},
    pb::prism as pb,
    unit,
};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{field}: {reason}")]
    BadRequest { field: String, reason: String },
    #[error(transparent)]
    NoCandidate(#[from] NoCandidate),
    #[error("process {id} is placed at version {held}; version {requested} is older")]
    StaleVersion {
        id: String,
        held: i64,
        requested: i64,
    },
    #[error("process {id} is being revoked; retry once that is done")]
    Revoking { id: String },
    #[error(
        "process {id} is needed by {} (their config.depends_on); revoke them first, or assign \
         them a version without the dependency",
        .by.join(", ")
    )]
    Needed { id: String, by: Vec<String> },
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },
    #[error("launcher {launcher} refused: {}", .status.message())]
    Refused { launcher: String, status: Status },
    #[error(
        "launcher {launcher} is unreachable ({reason}); the revocation is recorded and will be \
         delivered when it is back"
    )]
    Unreachable { launcher: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// A delivery to a launcher that has not happened yet.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub kind: DeliveryKind,
    pub attempts: u32,
    pub next_at: Instant,
    pub last_error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    Assign,
    Revoke { grace: i32 },
}

pub fn event(name: &str, version: i64, launcher: &str, detail: impl Into<String>) -> HistoryEvent {
    HistoryEvent {
        at_ms: clock::unix_ms(),
        event: name.into(),
        version,
        launcher_id: launcher.into(),
        detail: detail.into(),
        watched: None,
    }
}

/// A history event of `spec` on `launcher` that watchers are told of too,
/// as `process.<kind>`, in `message`'s words.
pub fn told(
    name: &str,
    kind: &str,
    spec: &pb::ProcessAssignment,
    launcher: &str,
    detail: impl Into<String>,
    message: impl Into<String>,
) -> HistoryEvent {
    let mut e = event(name, spec.version, launcher, detail);
    let mut w = events::process(kind, spec, launcher, message);
    w.at_unix_ms = e.at_ms;
    e.watched = Some(w);
    e
}

/// What an assignment at the admin did.
#[derive(Clone, Debug)]
pub struct Assigned {
    pub launcher: String,
    pub unit: String,
    pub message: String,
    /// The launcher's `ProcessAssignmentAck.applied`, when it answered.
    pub applied: String,
}

/// The fleet's clocks: how often launchers report, how long a leader's
/// lease lasts, and after how long a disconnected launcher's processes are
/// replaced elsewhere (fleet-wide; each process may say its own).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub interval: Duration,
    pub lease: Duration,
    pub replace_after: Option<Duration>,
}

impl Timing {
    /// Heartbeats every `interval`, the default lease, no replacement.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            lease: crate::admin::config::DEFAULT_LEASE,
            replace_after: None,
        }
    }
}

pub struct Fleet {
    pub(super) store: Arc<dyn AdminStore>,
    pub(super) dispatcher: Dispatcher,
    pub(super) interval: Duration,
    pub(super) lease: Duration,
    pub(super) replace_after: Option<Duration>,
    pub(super) state: Mutex<State>,
    /// When each launcher was last heard (shared with the state).
    pub(super) heard: Arc<state::Heard>,
    pub(super) locks: Arc<KeyedLocks>,
    pub(super) batch: std::sync::Mutex<HeartbeatBatch>,
    /// The history of the batch being written, until it is stored.
    pub(super) flushing: std::sync::Mutex<Vec<(String, HistoryEvent)>>,
    /// One batch write at a time.
    pub(super) flush_lock: tokio::sync::Mutex<()>,
    /// Wakes the delivery task.
    pub(super) deliveries: Notify,
    /// Asks the flush task to write the batch now: it holds changes
    /// watchers wait for.
    pub(super) flush_soon: Notify,
    /// A view's: the revision of the event log it was loaded at.
    pub(super) loaded_revision: Option<i64>,
    pub metrics: Arc<crate::metrics::AdminMetrics>,
}

fn unit_of(spec: &pb::ProcessAssignment) -> String {
    let ty: ProcessType = spec.process_type.parse().unwrap_or(ProcessType::Pattern);
    unit::unit_name(ty, &spec.process_id)
}

impl Fleet {
    /// Load the fleet from `store`.
    pub async fn open(
        store: Arc<dyn AdminStore>,
        dispatcher: Dispatcher,
        timing: Timing,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_with(store, dispatcher, timing, Arc::default()).await
    }

    /// [`Self::open`], counting into `metrics` (the admin's, which exist
    /// before it leads).
    pub async fn open_with(
        store: Arc<dyn AdminStore>,
        dispatcher: Dispatcher,
        timing: Timing,
        metrics: Arc<crate::metrics::AdminMetrics>,
    ) -> Result<Arc<Self>, StoreError> {
        let now = clock::unix_ms();
        store
            .prune_history(now - crate::admin::store::HISTORY_MAX_AGE_MS)
            .await?;
        Self::load(store, dispatcher, timing, metrics, Some(now)).await
    }

    /// The fleet as the database holds it, for the reads a follower serves
    /// itself: loaded afresh, liveness as of the heartbeats the leader
    /// stored (each launcher's at least once per interval), never written
    /// to and never pushing.
    pub async fn view(
        store: Arc<dyn AdminStore>,
        interval: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        Self::load(
            store,
            Dispatcher::new(None, String::new(), false),
            Timing::every(interval),
            Arc::default(),
            None,
        )
        .await
    }

    /// Load the fleet; a leader starting at `leading_since` judges liveness
    /// from then on.
    async fn load(
        store: Arc<dyn AdminStore>,
        dispatcher: Dispatcher,
        timing: Timing,
        metrics: Arc<crate::metrics::AdminMetrics>,
        leading_since: Option<i64>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut snapshot = store.load().await?;
        let revision = snapshot.revision;
        if leading_since.is_none() {
            // A view judges liveness as of the leader's last write, not
            // the wall clock: while no admin leads (a failover), or while
            // the database lags (a slow network), the heartbeats stored are
            // all as old, and a launcher is no more silent than the rest.
            let now = clock::unix_ms();
            let freshest = snapshot.launchers.iter().map(|l| l.last_heartbeat_ms).max();
            let cadence = timing.interval.as_millis() as i64;
            if let Some(lag) = freshest.map(|f| now - f - cadence).filter(|lag| *lag > 0) {
                for l in &mut snapshot.launchers {
                    l.last_heartbeat_ms += lag;
                }
            }
        }
        let mut state = State::default();
        for mut l in snapshot.launchers {
            if let Some(now) = leading_since {
                // Nobody could heartbeat while no admin led: judge
                // liveness from the leader's start on.
                l.last_heartbeat_ms = l.last_heartbeat_ms.max(now);
                state
                    .stored_heartbeat
                    .insert(l.id.clone(), l.last_heartbeat_ms);
            }
            state.launchers.insert(l.id.clone(), l);
        }
        let later = Instant::now();
        for p in snapshot.processes {
            if p.state == PlacementState::Revoking
                && let Some(l) = &p.launcher_id
            {
                state
                    .pending
                    .schedule(l, p.id(), DeliveryKind::Revoke { grace: 0 }, later);
            }
            state.put(p);
        }
        state.health = snapshot.health.into_iter().collect();
        if leading_since.is_none() {
            // A view: usage figures are stored only with a change of state,
            // so a running process's uptime runs on from its report.
            let now = clock::unix_ms();
            for h in state.health.values_mut() {
                if h.health.uptime_seconds > 0 {
                    h.health.uptime_seconds += (now - h.reported_at_ms).max(0) / 1000;
                }
            }
        }
        let heard = state.heard.clone();
        Ok(Arc::new(Self {
            heard,
            store,
            dispatcher,
            interval: timing.interval,
            lease: timing.lease,
            replace_after: timing.replace_after,
            state: Mutex::new(state),
            locks: Arc::default(),
            batch: std::sync::Mutex::default(),
            flushing: std::sync::Mutex::default(),
            flush_lock: tokio::sync::Mutex::const_new(()),
            deliveries: Notify::new(),
            flush_soon: Notify::new(),
            loaded_revision: leading_since.is_none().then_some(revision),
            metrics,
        }))
    }

    /// This admin leads now (epoch `epoch`, as `holder` at `address`):
    /// watchers are told, with the next write.
    pub fn elected(&self, epoch: i64, holder: &str, address: &str) {
        self.batch
            .lock()
            .expect("poisoned")
            .events
            .push(events::leader_elected(epoch, holder, address));
        self.flush_soon.notify_one();
    }

    /// The newest `limit` history events of `id`: the stored ones and
    /// those still waiting for the next batch write.
    pub async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEvent>, StoreError> {
        let waiting = |events: &[(String, HistoryEvent)]| -> Vec<HistoryEvent> {
            events
                .iter()
                .filter(|(p, _)| p == id)
                .map(|(_, e)| e.clone())
                .collect()
        };
        // The batch, then what is being written, then the store: an event
        // leaves the batch for `flushing` (both under the batch's lock) and
        // stays there until it is stored, so none is missed.
        let newer = waiting(&self.batch.lock().expect("poisoned").history);
        let mut extra = waiting(&self.flushing.lock().expect("poisoned"));
        extra.extend(newer);
        let stored = self.store.history(id, limit).await?;
        if extra.is_empty() {
            return Ok(stored);
        }
        // As the store orders them once written: newest first and, at equal
        // times, the one written last first — the waiting ones (oldest
        // first in `extra`), whose turn comes after the stored.
        let mut events: Vec<HistoryEvent> = Vec::with_capacity(extra.len() + stored.len());
        for e in extra.into_iter().rev().chain(stored) {
            if !events.iter().any(|s| {
                (s.at_ms, &s.event, &s.detail, s.version)
                    == (e.at_ms, &e.event, &e.detail, e.version)
            }) {
                events.push(e);
            }
        }
        events.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        events.truncate(limit as usize);
        Ok(events)
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The metrics text, with gauges refreshed from the live state.
    /// Returns once the fleet's state could be locked (the watchdog's
    /// liveness check).
    pub async fn ping(&self) {
        drop(self.state.lock().await);
    }

    pub async fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.launchers.clear();
        m.processes.clear();
        let now = clock::unix_ms();
        let st = self.state.lock().await;
        for l in st.launchers.values() {
            let health = placement::liveness(st.last_heard(l), now, self.interval);
            m.launchers
                .get_or_create(&crate::metrics::Health {
                    health: health.as_str().into(),
                })
                .inc();
        }
        let disconnected: std::collections::HashSet<&str> = st
            .launchers
            .values()
            .filter(|l| {
                placement::liveness(st.last_heard(l), now, self.interval)
                    == placement::Liveness::Disconnected
            })
            .map(|l| l.id.as_str())
            .collect();
        for p in st.processes.values() {
            let pending = p
                .launcher_id
                .as_ref()
                .is_some_and(|l| st.pending.contains(l, p.id()));
            let unknown = p
                .launcher_id
                .as_deref()
                .is_some_and(|l| disconnected.contains(l));
            let status = match (p.state, pending, st.health.get(p.id())) {
                (PlacementState::Revoking, _, _) => "revoking".to_owned(),
                _ if unknown => crate::admin::service::UNKNOWN.to_owned(),
                (_, true, _) => "pending".to_owned(),
                (_, _, Some(h)) if !h.health.detailed_status.is_empty() => {
                    h.health.detailed_status.clone()
                }
                (_, _, Some(h)) if !h.health.status.is_empty() => h.health.status.clone(),
                _ => "placed".to_owned(),
            };
            m.processes
                .get_or_create(&crate::metrics::Status { status })
                .inc();
        }
        drop(st);
        m.render()
    }

    pub(super) fn schedule(
        &self,
        st: &mut State,
        launcher: &str,
        process: &str,
        kind: DeliveryKind,
    ) {
        st.pending.schedule(launcher, process, kind, Instant::now());
        self.deliveries.notify_one();
    }

    /// `launcher` answered a push: what waited for it is due now.
    async fn reached(&self, launcher: &str) {
        if self
            .state
            .lock()
            .await
            .pending
            .reached(launcher, Instant::now())
        {
            self.deliveries.notify_one();
        }
    }

    pub(super) async fn address_of(&self, launcher: &str) -> Option<String> {
        self.state
            .lock()
            .await
            .launchers
            .get(launcher)
            .map(|l| l.address.clone())
    }

    /// Forget a process whose revocation finished.
    pub(super) async fn forget(
        &self,
        id: &str,
        launcher: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        let why = match st.processes.get(id) {
            Some(p) => told(
                "revoked",
                "revoked",
                &p.spec,
                launcher,
                detail.clone(),
                format!("revoked {id} v{}: {detail}", p.version()),
            ),
            None => event("revoked", 0, launcher, detail),
        };
        self.store.delete_process(id, &why).await?;
        st.take(id);
        st.health.remove(id);
        st.pending.remove_process(id);
        Ok(())
    }
}
