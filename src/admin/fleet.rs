//! The fleet as the admin holds it: launchers, processes and their
//! placement, in memory for decisions and written through to the store
//! before anything is acknowledged.
//!
//! Placement decisions and their persistence happen under one lock, so
//! concurrent assignments can never overbook a launcher. Pushes to
//! launchers happen outside it; a push that cannot be delivered stays
//! pending and is retried (see `tasks`), and registrations and heartbeats
//! repair whatever was lost (level-triggered).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use prost::Message;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::{
    dispatch::{Dispatcher, unreachable},
    drift::{self, Placement, Repair},
    pending::Pending,
    placement::{self, Candidate, Liveness, NoCandidate, Request},
    store::{
        AdminStore, HealthRecord, HeartbeatBatch, HistoryEvent, LauncherRecord, PlacementState,
        ProcessRecord, StoreError,
    },
};
use crate::clock;
use crate::{
    locks::KeyedLocks,
    model::{ManagedProcess, Policy, ProcessType, ValidationError},
    pb::prism as pb,
    settings::is_token,
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

#[derive(Default)]
pub struct State {
    pub launchers: BTreeMap<String, LauncherRecord>,
    /// Read freely; change only through [`State::put`] and [`State::take`],
    /// which keep `by_launcher` in step. Hashed: a heartbeat looks up each
    /// process it reports, and a tree of 10,000 string keys costs a cache
    /// miss per key compared; listings sort.
    pub processes: HashMap<String, ProcessRecord>,
    /// Process ids placed on (or being revoked from) each launcher, so a
    /// heartbeat or a placement never scans the whole fleet.
    by_launcher: HashMap<String, BTreeSet<String>>,
    /// Encoded size of the specs on each launcher (its registration ack).
    spec_bytes: BTreeMap<String, usize>,
    pub health: HashMap<String, HealthRecord>,
    /// (launcher, process) to deliver.
    pub pending: Pending,
    /// (process, launcher it moves away from): its copy there is kept until
    /// the move finishes.
    pub moving: BTreeSet<(String, String)>,
    pub last_liveness: BTreeMap<String, Liveness>,
    /// Launchers that registered with this admin process. A launcher that
    /// heartbeats without having done so (the admin restarted) is asked to
    /// register again, so it reconciles to the admin's placement.
    pub registered: HashSet<String>,
    /// (launcher, process) the admin lost and asked that launcher, at its
    /// registration, to hand back (`ReclaimProcesses`); never revoked
    /// meanwhile.
    pub reclaimable: BTreeSet<(String, String)>,
}

impl State {
    /// Insert or replace a process record.
    pub fn put(&mut self, record: ProcessRecord) {
        let id = record.id().to_owned();
        self.take(&id);
        if let Some(l) = &record.launcher_id {
            self.by_launcher
                .entry(l.clone())
                .or_default()
                .insert(id.clone());
            *self.spec_bytes.entry(l.clone()).or_default() += record.spec.encoded_len();
        }
        self.processes.insert(id, record);
    }

    /// Remove a process record.
    pub fn take(&mut self, id: &str) -> Option<ProcessRecord> {
        let record = self.processes.remove(id)?;
        if let Some(l) = &record.launcher_id
            && let Some(set) = self.by_launcher.get_mut(l)
        {
            set.remove(id);
            if set.is_empty() {
                self.by_launcher.remove(l);
                self.spec_bytes.remove(l);
            } else if let Some(b) = self.spec_bytes.get_mut(l) {
                *b = b.saturating_sub(record.spec.encoded_len());
            }
        }
        Some(record)
    }

    /// Encoded bytes of the specs placed on `launcher`.
    pub fn spec_bytes_on(&self, launcher: &str) -> usize {
        self.spec_bytes.get(launcher).copied().unwrap_or(0)
    }

    /// Is `launcher`'s copy of `process` kept although it is not placed
    /// there: it moves away from there, or the admin waits for that
    /// launcher to hand it back?
    pub fn kept_on(&self, launcher: &str, process: &str) -> bool {
        // Both are empty but during moves and after an admin lost state.
        (!self.moving.is_empty()
            && self
                .moving
                .contains(&(process.to_owned(), launcher.to_owned())))
            || (!self.reclaimable.is_empty()
                && self
                    .reclaimable
                    .contains(&(launcher.to_owned(), process.to_owned())))
    }

    /// How many processes are placed on (or being revoked from) `launcher`.
    pub fn count_on(&self, launcher: &str) -> usize {
        self.by_launcher.get(launcher).map_or(0, BTreeSet::len)
    }

    /// The processes placed on (or being revoked from) `launcher`.
    pub fn on<'a>(&'a self, launcher: &str) -> impl Iterator<Item = &'a ProcessRecord> + 'a {
        self.by_launcher
            .get(launcher)
            .into_iter()
            .flatten()
            .filter_map(|id| self.processes.get(id))
    }

    /// Processes placed on (or being revoked from) each launcher.
    pub fn used(&self) -> BTreeMap<&str, u32> {
        self.by_launcher
            .iter()
            .map(|(l, ids)| (l.as_str(), ids.len() as u32))
            .collect()
    }

    pub fn candidates(&self, now_ms: i64, interval: Duration) -> Vec<Candidate<'_>> {
        let used = self.used();
        self.launchers
            .values()
            .map(|l| Candidate {
                id: &l.id,
                region: &l.region,
                process_types: &l.process_types,
                max_processes: l.max_processes,
                used: used.get(l.id.as_str()).copied().unwrap_or(0),
                spec_bytes: self.spec_bytes.get(&l.id).copied().unwrap_or(0),
                draining: l.draining,
                liveness: placement::liveness(l.last_heartbeat_ms, now_ms, interval),
            })
            .collect()
    }
}

pub fn event(name: &str, version: i64, launcher: &str, detail: impl Into<String>) -> HistoryEvent {
    HistoryEvent {
        at_ms: clock::unix_ms(),
        event: name.into(),
        version,
        launcher_id: launcher.into(),
        detail: detail.into(),
    }
}

/// What an assignment at the admin did.
#[derive(Clone, Debug)]
pub struct Assigned {
    pub launcher: String,
    pub unit: String,
    pub message: String,
}

pub struct Fleet {
    pub(super) store: Arc<dyn AdminStore>,
    pub(super) dispatcher: Dispatcher,
    pub(super) interval: Duration,
    pub(super) reschedule_lost_after: Option<Duration>,
    pub(super) state: Mutex<State>,
    pub(super) locks: KeyedLocks,
    pub(super) batch: std::sync::Mutex<HeartbeatBatch>,
    /// The history of the batch being written, until it is stored.
    pub(super) flushing: std::sync::Mutex<Vec<(String, HistoryEvent)>>,
    /// One batch write at a time.
    pub(super) flush_lock: tokio::sync::Mutex<()>,
    pub(super) policy: Policy,
    /// Wakes the delivery task.
    pub(super) deliveries: Notify,
    pub metrics: Arc<crate::metrics::AdminMetrics>,
}

/// Bounds of a registration's free-form fields.
pub const MAX_ADDRESS_BYTES: usize = 256;
pub const MAX_LABEL_BYTES: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_VALUE_BYTES: usize = 256;

/// The same process state, whatever the usage figures (memory, CPU,
/// uptime) say: a report that changes only those is not stored.
fn same_state(a: &pb::ProcessHealth, b: &pb::ProcessHealth) -> bool {
    a.status == b.status
        && a.detailed_status == b.detailed_status
        && a.pid == b.pid
        && a.restart_count == b.restart_count
        && a.error_count == b.error_count
        && a.last_error == b.last_error
        && a.unit_name == b.unit_name
        && a.active_state == b.active_state
        && a.sub_state == b.sub_state
        && a.version == b.version
}

/// The same process counts and slots, whatever memory and CPU say.
fn same_counts(
    a: Option<&pb::LauncherResourceUsage>,
    b: Option<&pb::LauncherResourceUsage>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            (a.process_count, a.max_processes, a.available_slots)
                == (b.process_count, b.max_processes, b.available_slots)
        }
        (None, None) => true,
        _ => false,
    }
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
        interval: Duration,
        reschedule_lost_after: Option<Duration>,
    ) -> Result<Arc<Self>, StoreError> {
        let snapshot = store.load().await?;
        let now = clock::unix_ms();
        let mut state = State::default();
        for mut l in snapshot.launchers {
            // Nobody could heartbeat while the admin was down: judge
            // liveness from the admin's start on.
            l.last_heartbeat_ms = l.last_heartbeat_ms.max(now);
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
        Ok(Arc::new(Self {
            store,
            dispatcher,
            interval,
            reschedule_lost_after,
            state: Mutex::new(state),
            locks: KeyedLocks::default(),
            batch: std::sync::Mutex::default(),
            flushing: std::sync::Mutex::default(),
            flush_lock: tokio::sync::Mutex::const_new(()),
            policy: Policy::structural(),
            deliveries: Notify::new(),
            metrics: Arc::default(),
        }))
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
            let health = placement::liveness(l.last_heartbeat_ms, now, self.interval);
            m.launchers
                .get_or_create(&crate::metrics::Health {
                    health: health.as_str().into(),
                })
                .inc();
        }
        for p in st.processes.values() {
            let pending = p
                .launcher_id
                .as_ref()
                .is_some_and(|l| st.pending.contains(l, p.id()));
            let status = match (p.state, pending, st.health.get(p.id())) {
                (PlacementState::Revoking, _, _) => "revoking".to_owned(),
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

    /// Place (or keep) a process, persist, push. See the module docs.
    pub async fn assign(
        &self,
        spec: pb::ProcessAssignment,
        region: Option<String>,
        launcher: Option<String>,
    ) -> Result<Assigned, FleetError> {
        let process = ManagedProcess::try_from((spec.clone(), &self.policy))?;
        let id = process.id.clone();
        let ty = process.process_type();
        let _guard = self.locks.lock(&id).await;
        let now = clock::unix_ms();
        let (target, previous) = {
            let mut st = self.state.lock().await;
            let previous = st.processes.get(&id).cloned();
            match &previous {
                Some(p) if p.state == PlacementState::Revoking => {
                    return Err(FleetError::Revoking { id });
                }
                Some(p) if p.version() == spec.version => {
                    let on = p.launcher_id.clone().unwrap_or_default();
                    let pending = st.pending.contains(&on, &id);
                    return Ok(Assigned {
                        unit: unit_of(&p.spec),
                        message: format!(
                            "{id} v{} is already placed on {on}{}; nothing changed",
                            p.version(),
                            if pending { " (delivery pending)" } else { "" }
                        ),
                        launcher: on,
                    });
                }
                Some(p) if p.version() > spec.version => {
                    return Err(FleetError::StaleVersion {
                        id,
                        held: p.version(),
                        requested: spec.version,
                    });
                }
                _ => {}
            }
            let candidates = st.candidates(now, self.interval);
            let req = Request {
                process_type: ty.as_str(),
                region: region.as_deref(),
                launcher: launcher.as_deref(),
                exclude: &[],
                spec_bytes: spec.encoded_len(),
            };
            // A new version stays where it runs when that launcher can still
            // take it (its slot is its own already).
            let keep = previous
                .as_ref()
                .and_then(|p| p.launcher_id.clone())
                .filter(|l| launcher.as_deref().is_none_or(|want| want == l))
                .filter(|l| {
                    candidates.iter().any(|c| {
                        c.id == l
                            && c.liveness == Liveness::Healthy
                            && c.process_types.iter().any(|t| t == ty.as_str())
                    })
                });
            let target = match keep {
                Some(l) => l,
                None => placement::choose(&candidates, &req).inspect_err(|e| {
                    let reason = match e {
                        NoCandidate::Unsupported(_) => "unsupported_type",
                        NoCandidate::Unavailable { .. } => "no_free_launcher",
                        NoCandidate::Explicit { .. } => "explicit_launcher",
                    };
                    self.metrics
                        .placement_failures
                        .get_or_create(&crate::metrics::Reason {
                            reason: reason.into(),
                        })
                        .inc();
                })?,
            };
            let record = ProcessRecord {
                spec: spec.clone(),
                launcher_id: Some(target.clone()),
                state: PlacementState::Placed,
                created_at_ms: previous.as_ref().map_or(now, |p| p.created_at_ms),
                updated_at_ms: now,
            };
            let what = match &previous {
                Some(p) => event(
                    "replaced",
                    spec.version,
                    &target,
                    format!("v{} replaced", p.version()),
                ),
                None => event("placed", spec.version, &target, ""),
            };
            self.store.put_process(&record, &what).await?;
            st.put(record);
            // A replacement that moved launchers leaves its old copy to revoke.
            if let Some(old) = previous.as_ref().and_then(|p| p.launcher_id.clone())
                && old != target
            {
                self.schedule(&mut st, &old, &id, DeliveryKind::Revoke { grace: 0 });
            }
            (target, previous)
        };

        let Some(address) = self.address_of(&target).await else {
            return Err(FleetError::NotFound {
                what: "launcher",
                id: target,
            });
        };
        match self.dispatcher.assign(&target, &address, &spec).await {
            Ok(ack) => {
                // History, not state: written with the next heartbeat batch
                // (within a second), not as a second sync before the answer.
                self.batch.lock().expect("poisoned").history.push((
                    id.clone(),
                    event("delivered", spec.version, &target, ack.message.clone()),
                ));
                {
                    let mut st = self.state.lock().await;
                    st.pending.remove(&target, &id);
                    if st.pending.reached(&target, Instant::now()) {
                        self.deliveries.notify_one();
                    }
                }
                Ok(Assigned {
                    unit: if ack.unit_name.is_empty() {
                        unit_of(&spec)
                    } else {
                        ack.unit_name
                    },
                    message: format!("placed {id} v{} on {target}: {}", spec.version, ack.message),
                    launcher: target,
                })
            }
            Err(status) if unreachable(&status) => {
                let mut st = self.state.lock().await;
                self.schedule(&mut st, &target, &id, DeliveryKind::Assign);
                // Retried when the launcher's backoff ends.
                st.pending.failed(
                    &target,
                    &id,
                    status.message(),
                    true,
                    Instant::now(),
                    crate::backoff::seed(),
                );
                Ok(Assigned {
                    unit: unit_of(&spec),
                    message: format!(
                        "placed {id} v{} on {target}; delivery pending, retrying: {}",
                        spec.version,
                        status.message()
                    ),
                    launcher: target,
                })
            }
            Err(status) => {
                // The launcher refused it (e.g. its binary is not allowed on
                // that host): the placement is undone.
                let mut st = self.state.lock().await;
                let why = event("refused", spec.version, &target, status.message());
                match previous {
                    Some(prev) => {
                        self.store.put_process(&prev, &why).await?;
                        st.put(prev);
                    }
                    None => {
                        self.store.delete_process(&id, &why).await?;
                        st.take(&id);
                    }
                }
                Err(FleetError::Refused {
                    launcher: target,
                    status,
                })
            }
        }
    }

    /// Forget a process whose revocation finished.
    pub(super) async fn forget(
        &self,
        id: &str,
        launcher: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        let version = st.processes.get(id).map_or(0, |p| p.version());
        self.store
            .delete_process(id, &event("revoked", version, launcher, detail))
            .await?;
        st.take(id);
        st.health.remove(id);
        st.pending.remove_process(id);
        Ok(())
    }

    pub async fn revoke(
        &self,
        req: pb::ProcessRevocation,
    ) -> Result<pb::ProcessRevocationAck, FleetError> {
        let id = req.process_id.clone();
        if id.is_empty() {
            return Err(FleetError::BadRequest {
                field: "process_id".into(),
                reason: "empty".into(),
            });
        }
        if !(0..=3600).contains(&req.graceful_timeout_seconds) {
            return Err(FleetError::BadRequest {
                field: "graceful_timeout_seconds".into(),
                reason: format!(
                    "{} is outside 0..=3600 (0 means 30)",
                    req.graceful_timeout_seconds
                ),
            });
        }
        let _guard = self.locks.lock(&id).await;
        let launcher = {
            let mut st = self.state.lock().await;
            let rec = st
                .processes
                .get_mut(&id)
                .ok_or_else(|| FleetError::NotFound {
                    what: "process",
                    id: id.clone(),
                })?;
            if !req.launcher_id.is_empty() && rec.launcher_id.as_deref() != Some(&req.launcher_id) {
                return Err(FleetError::BadRequest {
                    field: "launcher_id".into(),
                    reason: format!(
                        "process {id} is placed on {}, not {}",
                        rec.launcher_id.as_deref().unwrap_or("no launcher"),
                        req.launcher_id
                    ),
                });
            }
            if rec.state != PlacementState::Revoking {
                // Durable first: memory changes only once the store has it.
                let mut revoking = rec.clone();
                revoking.state = PlacementState::Revoking;
                revoking.updated_at_ms = clock::unix_ms();
                let launcher = revoking.launcher_id.clone().unwrap_or_default();
                self.store
                    .put_process(
                        &revoking,
                        &event("revoking", revoking.version(), &launcher, ""),
                    )
                    .await?;
                *rec = revoking;
            }
            st.processes[&id].launcher_id.clone()
        };
        let Some(launcher) = launcher else {
            self.forget(&id, "", "it was not placed".into()).await?;
            return Ok(pb::ProcessRevocationAck {
                success: true,
                message: format!("revoked {id}; it was not placed on any launcher"),
                stopped_at: clock::unix_ms() / 1000,
                exit_code: 0,
            });
        };
        let address = self.address_of(&launcher).await.unwrap_or_default();
        match self
            .dispatcher
            .revoke(&address, &launcher, &id, req.graceful_timeout_seconds)
            .await
        {
            Ok(ack) => {
                self.reached(&launcher).await;
                self.forget(&id, &launcher, format!("exit code {}", ack.exit_code))
                    .await?;
                Ok(pb::ProcessRevocationAck {
                    message: format!("{} (on {launcher})", ack.message),
                    ..ack
                })
            }
            Err(s) if s.code() == Code::NotFound => {
                self.reached(&launcher).await;
                self.forget(&id, &launcher, "its launcher did not hold it".into())
                    .await?;
                Ok(pb::ProcessRevocationAck {
                    success: true,
                    message: format!("revoked {id}; launcher {launcher} did not hold it"),
                    stopped_at: clock::unix_ms() / 1000,
                    exit_code: 0,
                })
            }
            Err(s) if unreachable(&s) => {
                let mut st = self.state.lock().await;
                self.schedule(
                    &mut st,
                    &launcher,
                    &id,
                    DeliveryKind::Revoke {
                        grace: req.graceful_timeout_seconds,
                    },
                );
                Err(FleetError::Unreachable {
                    launcher,
                    reason: s.message().to_owned(),
                })
            }
            Err(status) => Err(FleetError::Refused { launcher, status }),
        }
    }

    pub async fn register(
        &self,
        reg: pb::LauncherRegistration,
    ) -> Result<pb::LauncherRegistrationAck, FleetError> {
        let bad = |field: &str, reason: String| FleetError::BadRequest {
            field: field.into(),
            reason,
        };
        if !is_token(&reg.launcher_id) {
            return Err(bad(
                "launcher_id",
                format!(
                    "{:?} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
                    reg.launcher_id
                ),
            ));
        }
        crate::auth::dial::Address::parse(&reg.address).map_err(|e| bad("address", e))?;
        if reg.address.len() > MAX_ADDRESS_BYTES {
            return Err(bad(
                "address",
                format!("longer than {MAX_ADDRESS_BYTES} bytes"),
            ));
        }
        if !reg.region.is_empty() && !is_token(&reg.region) {
            return Err(bad(
                "region",
                format!(
                    "{:?} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
                    reg.region
                ),
            ));
        }
        if reg.version.len() > MAX_LABEL_BYTES || reg.version.chars().any(char::is_control) {
            return Err(bad(
                "version",
                format!("at most {MAX_LABEL_BYTES} bytes, no control characters"),
            ));
        }
        if reg.capabilities.len() > 16 || reg.process_types.len() > 16 {
            return Err(bad("capabilities", "more than 16 entries".into()));
        }
        if reg.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(bad(
                "metadata",
                format!("more than {MAX_METADATA_ENTRIES} entries"),
            ));
        }
        if let Some((k, _)) = reg.metadata.iter().find(|(k, v)| {
            k.len() > MAX_LABEL_BYTES
                || v.len() > MAX_METADATA_VALUE_BYTES
                || k.chars().chain(v.chars()).any(char::is_control)
        }) {
            return Err(bad(
                "metadata",
                format!(
                    "entry {k:?}: keys at most {MAX_LABEL_BYTES} bytes, values at most \
                     {MAX_METADATA_VALUE_BYTES}, no control characters"
                ),
            ));
        }
        if !(1..=100_000).contains(&reg.max_processes) {
            return Err(bad(
                "max_processes",
                format!("{} is outside 1..=100000", reg.max_processes),
            ));
        }
        if reg.held.len() > 100_000 {
            return Err(bad("held", "more than 100000 entries".into()));
        }
        if let Some(h) = reg.held.iter().find(|h| !is_token(&h.process_id)) {
            return Err(bad(
                "held",
                format!("process id {:?} is not a valid id", h.process_id),
            ));
        }
        let known = |t: &str| ProcessType::named(t).is_some();
        let mut types: Vec<String> = if reg.process_types.is_empty() {
            reg.capabilities
                .iter()
                .filter(|c| known(c))
                .cloned()
                .collect()
        } else {
            if let Some(t) = reg.process_types.iter().find(|t| !known(t)) {
                return Err(bad("process_types", format!("unknown process type {t:?}")));
            }
            reg.process_types.clone()
        };
        types.sort();
        types.dedup();
        if types.is_empty() {
            return Err(bad("process_types", "names no process type".into()));
        }
        let now = clock::unix_ms();
        let mut st = self.state.lock().await;
        let previous = st.launchers.get(&reg.launcher_id).cloned();
        let record = LauncherRecord {
            id: reg.launcher_id.clone(),
            address: reg.address.clone(),
            region: reg.region.clone(),
            version: reg.version.clone(),
            capabilities: reg.capabilities.clone(),
            process_types: types,
            max_processes: reg.max_processes as u32,
            metadata: reg.metadata.into_iter().collect(),
            registered_at_ms: now,
            last_heartbeat_ms: now,
            draining: previous.as_ref().is_some_and(|p| p.draining),
            resources: None,
        };
        self.store.upsert_launcher(&record).await?;
        if let Some(prev) = &previous
            && prev.address != record.address
        {
            self.dispatcher.forget(&prev.address);
        }
        st.launchers.insert(record.id.clone(), record);
        st.registered.insert(reg.launcher_id.clone());
        let reclaim = self.lost(&mut st, &reg.launcher_id, &reg.held).await?;
        let initial: Vec<pb::ProcessAssignment> = st
            .on(&reg.launcher_id)
            .filter(|p| p.state == PlacementState::Placed && !reclaim.contains(&p.id().to_owned()))
            .map(|p| p.spec.clone())
            .collect();
        // The launcher reconciles to `initial`, which delivers every pending
        // assignment and revocation at once.
        st.pending.remove_launcher(&reg.launcher_id);
        tracing::info!(
            prism_launcher_id = %reg.launcher_id,
            address = %reg.address,
            "launcher {} registered from {} with {} processes placed on it",
            reg.launcher_id,
            reg.address,
            initial.len()
        );
        Ok(pb::LauncherRegistrationAck {
            success: true,
            message: format!(
                "registered {}; {} processes are placed on it",
                reg.launcher_id,
                initial.len()
            ),
            assigned_capacity: reg.max_processes,
            initial_processes: initial,
            heartbeat_interval_ms: self.interval.as_millis() as i64,
            reclaim,
        })
    }

    /// Which of what `launcher` holds this admin has lost: a process it has
    /// no record of, and did not revoke after the launcher recorded it (its
    /// history's last event); or one recorded on that launcher at an older
    /// version, written before the launcher recorded the newer one. A
    /// crash or a restored backup loses these; they are taken back
    /// (`reclaim`), never revoked.
    async fn lost(
        &self,
        st: &mut State,
        launcher: &str,
        held: &[pb::HeldProcess],
    ) -> Result<Vec<String>, StoreError> {
        st.reclaimable.retain(|(l, _)| l != launcher);
        let mut lost = Vec::new();
        for h in held {
            let id = &h.process_id;
            let older = match st.processes.get(id) {
                Some(r) => {
                    r.launcher_id.as_deref() == Some(launcher)
                        && r.version() < h.version
                        && r.updated_at_ms < h.recorded_at_ms
                }
                // Revoked after the launcher recorded it: not lost. (A
                // batched event may share the revocation's millisecond.)
                None => {
                    let events = self.history(id, 5).await?;
                    let newest = events.first().map_or(0, |e| e.at_ms);
                    match events
                        .iter()
                        .take_while(|e| e.at_ms == newest)
                        .find(|e| e.event == "revoked")
                    {
                        Some(revoked) => revoked.at_ms < h.recorded_at_ms,
                        None => true,
                    }
                }
            };
            if older {
                tracing::warn!(prism_launcher_id = %launcher, prism_process_id = %id, "{launcher} holds {id} v{}, which this admin has lost; asking for it back", h.version);
                st.reclaimable.insert((launcher.to_owned(), id.clone()));
                lost.push(id.clone());
            }
        }
        Ok(lost)
    }

    /// Record again what a launcher hands back after [`Self::lost`] asked
    /// for it: only those, only from that launcher, only while the admin's
    /// record is still missing or older, and only if the assignment passes
    /// the structural checks and fits the launcher's spec budget.
    pub async fn reclaim(&self, req: pb::ReclaimRequest) -> Result<pb::ReclaimAck, FleetError> {
        let launcher = req.launcher_id;
        let mut ack = pb::ReclaimAck::default();
        for spec in req.processes {
            let id = spec.process_id.clone();
            let _guard = self.locks.lock(&id).await;
            let mut st = self.state.lock().await;
            let refusal = if !st.reclaimable.remove(&(launcher.clone(), id.clone())) {
                Some("this admin did not ask for it back".to_owned())
            } else if let Some(r) = st.processes.get(&id)
                && !(r.launcher_id.as_deref() == Some(launcher.as_str())
                    && r.version() < spec.version)
            {
                Some(format!("the admin's record (v{}) is newer", r.version()))
            } else if let Err(e) = crate::model::ManagedProcess::try_from((
                spec.clone(),
                &crate::model::Policy::structural(),
            )) {
                Some(e.to_string())
            } else {
                (st.spec_bytes_on(&launcher) + spec.encoded_len()
                    > placement::SPEC_BYTES_PER_LAUNCHER)
                    .then(|| {
                        "the launcher's placed specs would pass what one registration ack carries"
                            .to_owned()
                    })
            };
            if let Some(why) = refusal {
                tracing::warn!(prism_launcher_id = %launcher, prism_process_id = %id, "not taking {id} back from {launcher}: {why}");
                ack.refused.insert(id, why);
                continue;
            }
            let now = clock::unix_ms();
            let record = ProcessRecord {
                created_at_ms: st.processes.get(&id).map_or(now, |r| r.created_at_ms),
                updated_at_ms: now,
                launcher_id: Some(launcher.clone()),
                state: PlacementState::Placed,
                spec,
            };
            self.store
                .put_process(
                    &record,
                    &event(
                        "reclaimed",
                        record.version(),
                        &launcher,
                        "its launcher held it; this admin had lost it",
                    ),
                )
                .await?;
            tracing::info!(prism_launcher_id = %launcher, prism_process_id = %id, "took {id} v{} back from {launcher}", record.version());
            st.put(record);
            ack.recorded.push(id);
        }
        Ok(ack)
    }

    /// Record a heartbeat and repair drift between what the launcher runs
    /// and what is placed on it.
    pub async fn heartbeat(&self, hb: pb::LauncherHeartbeatRequest) -> pb::HeartbeatAck {
        let now = clock::unix_ms();
        let mut st = self.state.lock().await;
        let known = st.launchers.contains_key(&hb.launcher_id);
        if !known || !st.registered.contains(&hb.launcher_id) {
            // Liveness counts: it is alive, whatever else.
            if let Some(l) = st.launchers.get_mut(&hb.launcher_id) {
                l.last_heartbeat_ms = now;
            }
            return pb::HeartbeatAck {
                success: false,
                message: if known {
                    format!(
                        "the admin restarted: {} must register again",
                        hb.launcher_id
                    )
                } else {
                    format!("unknown launcher {:?}: register again", hb.launcher_id)
                },
                server_timestamp: now / 1000,
                reregister: true,
            };
        }
        let Some(l) = st.launchers.get_mut(&hb.launcher_id) else {
            unreachable!("checked above");
        };
        l.last_heartbeat_ms = now;
        // Stored when its counts change: liveness is judged afresh when the
        // admin starts, and usage figures are live data.
        let resources_changed = !same_counts(l.resources.as_ref(), hb.resources.as_ref());
        l.resources = hb.resources;
        let launcher = hb.launcher_id.clone();
        // Each reported process is looked up once; the placed ones that
        // were not reported are looked for only when some are missing.
        let fresh = now - 2 * self.interval.as_millis() as i64;
        let mut batch_health = Vec::new();
        let mut transitions = Vec::new();
        let (mut assign, mut revoke, mut finished) = (Vec::new(), Vec::new(), Vec::new());
        let mut reported_here = 0;
        for (pid, health) in &hb.process_health {
            let here = st
                .processes
                .get(pid)
                .filter(|p| p.launcher_id.as_deref() == Some(launcher.as_str()))
                .map(ProcessRecord::placement);
            let kept = here.is_none_or(|p| p.state == PlacementState::Revoking)
                && st.kept_on(&launcher, pid);
            match drift::repair(here, Some(health.version), kept, fresh) {
                Repair::Assign => assign.push(pid.clone()),
                Repair::Revoke => revoke.push(pid.clone()),
                Repair::Nothing | Repair::Finished => {}
            }
            let Some(Placement { version, .. }) = here else {
                continue;
            };
            reported_here += 1;
            if let Some(r) = st.health.get_mut(pid)
                && same_state(&r.health, health)
            {
                // Nothing but usage figures changed: memory only.
                r.health.clone_from(health);
                r.reported_at_ms = now;
                continue;
            }
            let record = HealthRecord {
                health: health.clone(),
                reported_at_ms: now,
            };
            let status = |h: &pb::ProcessHealth| {
                if h.detailed_status.is_empty() {
                    h.status.clone()
                } else {
                    h.detailed_status.clone()
                }
            };
            let before = st.health.get(pid).map(|r| status(&r.health));
            let after = status(health);
            if before.as_deref() != Some(after.as_str()) {
                let mut detail = format!("{} → {after}", before.as_deref().unwrap_or("-"));
                if health.pid > 0 {
                    detail.push_str(&format!(" (pid {})", health.pid));
                }
                if !health.last_error.is_empty() && after != "running" {
                    detail.push_str(&format!(": {}", health.last_error));
                }
                transitions.push((pid.clone(), event("status", version, &launcher, detail)));
            }
            st.health.insert(pid.clone(), record.clone());
            batch_health.push((pid.clone(), record));
        }
        if reported_here < st.count_on(&launcher) {
            for p in st.on(&launcher) {
                if hb.process_health.contains_key(p.id()) {
                    continue;
                }
                match drift::repair(Some(p.placement()), None, false, fresh) {
                    Repair::Assign => assign.push(p.id().to_owned()),
                    Repair::Finished => finished.push(p.id().to_owned()),
                    Repair::Revoke | Repair::Nothing => {}
                }
            }
        }
        for pid in &assign {
            if !st.pending.contains(&launcher, pid) {
                tracing::info!(prism_launcher_id = %launcher, prism_process_id = %pid, "{pid} is placed on {launcher} but not running there; pushing it again");
                self.schedule(&mut st, &launcher, pid, DeliveryKind::Assign);
            }
        }
        for pid in &revoke {
            if !st.pending.contains(&launcher, pid) {
                tracing::info!(prism_launcher_id = %launcher, prism_process_id = %pid, "{launcher} runs {pid}, which is not placed there; revoking it");
                self.schedule(&mut st, &launcher, pid, DeliveryKind::Revoke { grace: 0 });
            }
        }
        drop(st);
        {
            // Written within a second, together with every other
            // launcher's (see `flush`).
            let mut batch = self.batch.lock().expect("poisoned");
            if resources_changed {
                batch
                    .launchers
                    .insert(launcher.clone(), (now, hb.resources));
            }
            batch.health.extend(batch_health);
            batch.history.extend(transitions);
        }
        for pid in finished {
            if let Err(e) = self
                .forget(&pid, &launcher, "no longer reported by its launcher".into())
                .await
            {
                tracing::error!(prism_process_id = %pid, "cannot record the end of {pid}'s revocation: {e}");
            }
        }
        pb::HeartbeatAck {
            success: true,
            message: String::new(),
            server_timestamp: now / 1000,
            reregister: false,
        }
    }
}
