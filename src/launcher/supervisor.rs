//! The supervisor: the launcher's desired state in memory, and the
//! operations on it (assign, revoke, get, list).
//!
//! Concurrency: operations on one process id are serialised by a per-id
//! lock; the table itself is a short-held mutex, never held across an
//! await. Capacity is reserved in the table before anything slow happens,
//! so concurrent assignments can never overbook.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::store::{Store, StoreError};
use crate::backoff;
use crate::locks::KeyedLocks;
use crate::{
    health::{Phase, ProbeState, usage::UsageReader},
    model::{Assignment, ManagedProcess, Policy, ProcessType, ValidationError},
    pb::prism as pb,
    systemd::{Systemd, SystemdError, UnitStatus},
    unit,
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

/// Restoring a unit that keeps disappearing backs off up to this.
const RESTORE_BACKOFF: backoff::Policy =
    backoff::Policy::new(Duration::from_secs(1), Duration::from_secs(300));
/// How long an assignment keeps retrying a start that failed because
/// systemd was briefly away, before answering UNAVAILABLE (still held).
const ASSIGN_RETRY_BUDGET: Duration = Duration::from_secs(10);
/// A process the host cannot start (missing binary) is retried at least
/// this often: a package install or a late mount heals it soon.
const BLOCKED_RETRY: backoff::Policy =
    backoff::Policy::new(Duration::from_secs(1), Duration::from_secs(30));
/// A unit that ran this long before vanishing is restored at once.
const RESTORE_STABLE_AFTER: Duration = Duration::from_secs(60);

/// One process the launcher holds.
#[derive(Debug)]
pub struct Entry {
    pub process: ManagedProcess,
    /// The assignment as received (secrets included: it is what is stored).
    pub wire: pb::ProcessAssignment,
    pub unit: String,
    pub phase: Phase,
    pub unit_status: Option<UnitStatus>,
    pub probe: ProbeState,
    pub probe_task: Option<tokio::task::AbortHandle>,
    /// Restarts the launcher caused (probe failures, restorations).
    pub launcher_restarts: u32,
    pub start_failures: u32,
    pub last_error: Option<String>,
    /// Consecutive quick restorations, for backoff.
    pub restorations: u32,
    pub restore_not_before: Option<Instant>,
    pub circuit_opened_at: Option<Instant>,
    /// When it was assigned, in the supervisor's assignment sequence.
    pub assigned_seq: u64,
    /// When its state file was written (Unix milliseconds): what an admin
    /// that lost the process compares its own records with.
    pub recorded_at_ms: i64,
    /// The admin placed it (see `StoredProcess.placed_by_admin`).
    pub placed_by_admin: bool,
}

impl Entry {
    pub fn new(process: ManagedProcess, wire: pb::ProcessAssignment, phase: Phase) -> Self {
        let unit = unit::unit_name(process.process_type(), &process.id);
        Self {
            process,
            wire,
            unit,
            phase,
            unit_status: None,
            probe: ProbeState::default(),
            probe_task: None,
            launcher_restarts: 0,
            start_failures: 0,
            last_error: None,
            restorations: 0,
            restore_not_before: None,
            circuit_opened_at: None,
            assigned_seq: 0,
            recorded_at_ms: crate::clock::unix_ms(),
            placed_by_admin: false,
        }
    }

    /// The unit disappeared behind the launcher's back: restore it, after a
    /// backoff that grows while it keeps vanishing quickly.
    pub fn schedule_restore(&mut self, now: Instant) {
        let ran_long = self
            .unit_status
            .as_ref()
            .filter(|s| s.active_enter_usec > 0)
            .map(|s| {
                let ran = crate::clock::unix_usec().saturating_sub(s.active_enter_usec);
                Duration::from_micros(ran) >= RESTORE_STABLE_AFTER
            })
            .unwrap_or(false);
        if ran_long {
            self.restorations = 0;
        }
        let delay = match self.restorations {
            0 => Duration::ZERO,
            n => RESTORE_BACKOFF.step(n - 1),
        };
        self.restorations = self.restorations.saturating_add(1);
        self.restore_not_before = Some(now + delay);
        self.phase = Phase::Restoring;
        self.unit_status = None;
    }

    /// This host cannot start the process now: report it failed with the
    /// reason, and retry after a backoff.
    pub fn block(&mut self, now: Instant, reason: String) {
        let delay = BLOCKED_RETRY.step(self.restorations);
        self.restorations = self.restorations.saturating_add(1);
        self.restore_not_before = Some(now + delay);
        self.phase = Phase::Blocked;
        self.start_failures += 1;
        self.last_error = Some(reason);
    }

    /// Stop the probe task, if any.
    pub fn stop_probe(&mut self) {
        if let Some(task) = self.probe_task.take() {
            task.abort();
        }
    }
}

#[derive(Debug, Default)]
pub struct Table {
    /// Boxed: an entry is about 1.7 KiB, and a map's spare capacity would
    /// otherwise cost that much per empty bucket.
    pub entries: HashMap<String, Box<Entry>>,
    /// Unit name to process id.
    pub units: HashMap<String, String>,
    /// Dynamic user name to who it belongs to ([`unit::user_owner`]) and
    /// how many held processes run as it.
    users: HashMap<String, (String, usize)>,
}

/// Two owners (namespaces, processes) hash to one dynamic user name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCollision {
    pub user: String,
    pub owner: String,
    pub holder: String,
}

impl Table {
    pub fn insert(&mut self, entry: Entry) {
        if let Some(mut old) = self.remove(&entry.process.id) {
            old.stop_probe();
        }
        self.units
            .insert(entry.unit.clone(), entry.process.id.clone());
        let claim = self
            .users
            .entry(unit::dynamic_user(&entry.process))
            .or_insert_with(|| (unit::user_owner(&entry.process), 0));
        claim.1 += 1;
        self.entries
            .insert(entry.process.id.clone(), Box::new(entry));
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let mut entry = *self.entries.remove(id)?;
        if self.units.get(&entry.unit).is_some_and(|i| i == id) {
            self.units.remove(&entry.unit);
        }
        self.release_user(&unit::dynamic_user(&entry.process));
        entry.stop_probe();
        Some(entry)
    }

    fn release_user(&mut self, user: &str) {
        if let Some(claim) = self.users.get_mut(user) {
            claim.1 -= 1;
            if claim.1 == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Would `process` share a dynamic user with an owner other than its
    /// own? Processes of one namespace share theirs by design; two
    /// namespaces (or processes) whose names hash alike must not.
    pub fn user_collision(&self, process: &ManagedProcess) -> Option<UserCollision> {
        self.user_collision_as(&unit::dynamic_user(process), &unit::user_owner(process))
    }

    fn user_collision_as(&self, user: &str, owner: &str) -> Option<UserCollision> {
        let (holder, _) = self.users.get(user)?;
        (holder != owner).then(|| UserCollision {
            user: user.to_owned(),
            owner: owner.to_owned(),
            holder: holder.clone(),
        })
    }

    pub fn by_unit(&mut self, unit: &str) -> Option<&mut Entry> {
        let id = self.units.get(unit)?;
        self.entries.get_mut(id).map(|e| &mut **e)
    }
}

/// What an assignment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignOutcome {
    Started,
    /// Same id and version: nothing changed.
    Unchanged,
    /// A unit of this id and version was already running; it was kept.
    Adopted,
    /// An older version was replaced.
    Replaced {
        previous: i64,
    },
    /// Recorded, but the first start failed; the launcher keeps trying.
    StartFailed {
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct Assigned {
    pub unit: String,
    pub outcome: AssignOutcome,
}

#[derive(Clone, Debug)]
pub struct Revoked {
    pub stopped_at: i64,
    /// The exit status, or 128 + the signal that ended the process.
    pub exit_code: i32,
    pub was_running: bool,
    pub killed: bool,
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
    /// Wakes the status reporter.
    pub(super) changed: Notify,
    pub metrics: Arc<crate::metrics::LauncherMetrics>,
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
        Arc::new_cyclic(|me| Self {
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
            changed: Notify::new(),
            metrics: Arc::default(),
            may_stop_undesired: std::sync::atomic::AtomicBool::new(true),
            assign_seq: std::sync::atomic::AtomicU64::new(0),
            me: me.clone(),
        })
    }

    /// What the admin placed here and this launcher holds (not being
    /// revoked), for its registration.
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

    fn next_seq(&self) -> u64 {
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

    /// Ask the reconciler for a pass soon (coalesced).
    pub fn request_reconcile(&self) {
        self.reconcile.notify_one();
    }

    /// The host's part of the checks, at assignment and before a held
    /// process's unit is (re)created: its binary against today's allowlist
    /// and filesystem.
    /// Returns the process with the file to execute resolved.
    pub(super) fn on_host(
        &self,
        process: &ManagedProcess,
    ) -> Result<ManagedProcess, ValidationError> {
        process.clone().on_host(&self.policy)
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
    fn structural(&self) -> Policy {
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

    /// Validate, reserve, persist, start. See the module docs.
    /// `placed_by_admin`: the admin placed it, not an operator directly.
    pub async fn assign(
        &self,
        assignment: Assignment,
        placed_by_admin: bool,
    ) -> Result<Assigned, LauncherError> {
        let (process, wire) = assignment.into_parts();
        let ty = process.process_type();
        if !self.capabilities.contains(&ty) {
            return Err(LauncherError::NotCapable {
                process_type: ty,
                capabilities: self
                    .capabilities
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // The host's step, before anything is reserved or written.
        let process = self.on_host(&process)?;
        let id = process.id.clone();
        let _guard = self.locks.lock(&id).await;
        let fresh = || {
            let mut entry = Entry::new(process.clone(), wire.clone(), Phase::Starting);
            entry.assigned_seq = self.next_seq();
            entry.placed_by_admin = placed_by_admin;
            entry
        };

        // Decide, and reserve a slot, in one critical section.
        let previous = {
            let mut table = self.table();
            if let Some(collision) = table.user_collision(&process) {
                return Err(LauncherError::UserCollision(collision));
            }
            match table.entries.get(&id) {
                Some(e) if e.phase == Phase::Revoking => {
                    return Err(LauncherError::Revoking { id });
                }
                Some(e) if e.process.version == process.version => {
                    return Ok(Assigned {
                        unit: e.unit.clone(),
                        outcome: AssignOutcome::Unchanged,
                    });
                }
                Some(e) if e.process.version > process.version => {
                    return Err(LauncherError::StaleVersion {
                        id,
                        held: e.process.version,
                        requested: process.version,
                    });
                }
                Some(e) => Some((e.unit.clone(), e.process.version, e.wire.clone())),
                None => {
                    let used = table.entries.len();
                    if used >= self.max_processes {
                        return Err(LauncherError::CapacityExhausted {
                            used,
                            max: self.max_processes,
                        });
                    }
                    table.insert(fresh());
                    None
                }
            }
        };

        // The durable write runs on a blocking thread, overlapped with the
        // work in systemd; the ack waits for both. A crash before the write
        // completes leaves at most a unit nobody was told about: the
        // reconciler stops it, and the caller, never answered, retries.
        let save = self.persist(wire.clone(), false, placed_by_admin);
        let spec = unit::translate(&process);
        let work = async {
            if let Some((old_unit, _, _)) = &previous {
                // Replaces the held entry (and its user claim).
                self.table().insert(fresh());
                // The old version goes first; the unit name may be the same.
                self.systemd.stop(old_unit, process.stop_timeout).await?;
            }
            self.start_retrying(&process, &spec).await
        };
        let (saved, outcome) = tokio::join!(save, work);
        self.changed.notify_one();
        if let Err(e) = saved {
            // Not durable, so not accepted: undo what systemd did, and hold
            // what the state directory still says.
            if outcome.is_ok()
                && let Err(stop) = self.systemd.stop(&spec.name, process.stop_timeout).await
            {
                tracing::warn!(prism_process_id = %id, error = %stop, "cannot stop {} after its state could not be written: {stop}", spec.name);
            }
            let mut table = self.table();
            table.remove(&id);
            if let Some((_, _, old)) = previous
                && let Ok(old_process) = ManagedProcess::try_from((old.clone(), &self.structural()))
            {
                table.insert(Entry::new(old_process, old, Phase::Held));
            }
            drop(table);
            self.request_reconcile();
            return Err(e.into());
        }
        // No reconciliation on success: it lists every unit, and this
        // assignment's own work must not grow with the units held. The
        // reconciler runs on its timer and on real divergence (a unit
        // vanished, a manager restart, a reconnect, a failure below).
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // Recorded but not started: the reconciler retries.
                self.set_phase(&id, Phase::Held);
                self.request_reconcile();
                return Err(if e.is_transient() {
                    LauncherError::Pending {
                        id,
                        source: Box::new(e),
                    }
                } else {
                    e.into()
                });
            }
        };
        Ok(Assigned {
            unit: spec.name,
            outcome: match (previous, outcome) {
                (Some((_, v, _)), AssignOutcome::Started | AssignOutcome::Adopted) => {
                    AssignOutcome::Replaced { previous: v }
                }
                (_, o) => o,
            },
        })
    }

    /// [`Self::start_unit`], retried with backoff within
    /// [`ASSIGN_RETRY_BUDGET`] while systemd is briefly away. A retry after
    /// a lost reply finds the unit created and adopts it.
    async fn start_retrying(
        &self,
        process: &ManagedProcess,
        spec: &unit::UnitSpec,
    ) -> Result<AssignOutcome, SystemdError> {
        let deadline = Instant::now() + ASSIGN_RETRY_BUDGET;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.start_unit(process, spec).await {
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    tracing::info!(prism_process_id = %process.id, error = %e, "systemd is briefly away; retrying the start of {} in {delay:?}: {e}", process.id);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                result => return result,
            }
        }
    }

    pub(super) fn set_phase(&self, id: &str, phase: Phase) {
        if let Some(e) = self.table().entries.get_mut(id) {
            e.phase = phase;
        }
    }

    /// Create the unit of `process`, adopting or replacing a unit of the
    /// same name that is already there. The caller holds the id's lock.
    pub(super) async fn start_unit(
        &self,
        process: &ManagedProcess,
        spec: &unit::UnitSpec,
    ) -> Result<AssignOutcome, SystemdError> {
        let mut outcome = AssignOutcome::Started;
        let began = Instant::now();
        let mut result = self.systemd.start_transient(spec).await;
        if !matches!(result, Err(SystemdError::UnitExists { .. })) {
            self.metrics
                .unit_start
                .observe(began.elapsed().as_secs_f64());
        }
        if let Err(SystemdError::UnitExists { .. }) = &result {
            let existing = self.systemd.status(&spec.name).await;
            let same = existing.as_ref().ok().is_some_and(|s| {
                unit::parse_description(&s.description).is_some_and(|i| {
                    i.id == process.id
                        && i.version == process.version
                        && i.process_type == process.process_type()
                }) && matches!(
                    s.active_state.as_str(),
                    "active" | "activating" | "reloading"
                )
            });
            if same {
                outcome = AssignOutcome::Adopted;
                result = Ok(());
            } else {
                // Another version, or a dead unit waiting to be collected.
                self.systemd.stop(&spec.name, process.stop_timeout).await?;
                result = self.systemd.start_transient(spec).await;
            }
        }
        let now = Instant::now();
        let mut table = self.table();
        let entry = table.entries.get_mut(&process.id);
        match result {
            Ok(()) => {
                if let Some(e) = entry {
                    e.phase = Phase::Held;
                    e.restore_not_before = None;
                    e.circuit_opened_at = None;
                }
                drop(table);
                self.ensure_probe(&process.id);
                Ok(outcome)
            }
            Err(SystemdError::StartFailed {
                status, job_result, ..
            }) => {
                let reason = format!("start job {job_result}: {}", status.describe_failure());
                if let Some(e) = entry {
                    e.phase = Phase::Held;
                    e.start_failures += 1;
                    e.last_error = Some(reason.clone());
                    // Each failed try (a half-open one too) opens the
                    // circuit anew: the next waits a whole cool-down.
                    if status.start_limit_hit() {
                        e.circuit_opened_at = Some(now);
                    }
                    let unit = e.unit.clone();
                    e.unit_status
                        .get_or_insert_with(|| UnitStatus::new(unit))
                        .absorb_read(&status);
                }
                Ok(AssignOutcome::StartFailed { reason })
            }
            Err(e) => Err(e),
        }
    }

    /// Record the revocation, then stop the unit gracefully.
    pub async fn revoke(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<Revoked, LauncherError> {
        let _guard = self.locks.lock(id).await;
        let (wire, by_admin) = self
            .table()
            .entries
            .get(id)
            .map(|e| (e.wire.clone(), e.placed_by_admin))
            .ok_or_else(|| LauncherError::NotFound { id: id.to_owned() })?;
        // The revocation is durable before memory changes and the stop
        // begins: a failed write leaves everything as it was.
        self.persist(wire, true, by_admin).await?;
        let unit = {
            let mut table = self.table();
            let entry = table
                .entries
                .get_mut(id)
                .ok_or_else(|| LauncherError::NotFound { id: id.to_owned() })?;
            entry.phase = Phase::Revoking;
            entry.stop_probe();
            entry.unit.clone()
        };
        self.changed.notify_one();
        let stopped = self
            .systemd
            .stop(&unit, grace.unwrap_or(DEFAULT_REVOKE_GRACE))
            .await?;
        self.unpersist(id).await?;
        if let Some(e) = self.table().remove(id)
            && let Some(cg) = e.unit_status.as_ref().map(|s| s.control_group.clone())
        {
            self.usage.forget(&cg);
        }
        self.changed.notify_one();
        let exit_code = match (stopped.exit_code, stopped.exit_status) {
            (Some(1), Some(status)) => status,
            (Some(2 | 3), Some(signal)) => 128 + signal,
            _ => 0,
        };
        Ok(Revoked {
            stopped_at: crate::clock::unix_secs(),
            exit_code,
            was_running: stopped.was_loaded,
            killed: stopped.killed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::tests::{pattern, process};

    #[test]
    fn dynamic_users_are_claimed_per_owner_and_collisions_refused() {
        let mut table = Table::default();
        let a = process(pattern());
        let user = unit::dynamic_user(&a);
        table.insert(Entry::new(
            a.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        // Another process of the same namespace shares the user by design.
        let mut b = a.clone();
        b.id = "kv-2".into();
        assert_eq!(table.user_collision(&b), None);
        table.insert(Entry::new(
            b.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        // A namespace whose name hashes to the same user is refused (a
        // collision of 110 bits of SHA-256 is forged here).
        let collision = table
            .user_collision_as(&user, "ns:billing")
            .expect("collision");
        assert_eq!(collision.holder, "ns:orders");
        assert_eq!(collision.owner, "ns:billing");
        let message = LauncherError::UserCollision(collision).to_string();
        assert!(
            message.starts_with("namespace: ns:billing and ns:orders"),
            "{message}"
        );
        // The claim goes with its last holder.
        table.remove(&a.id);
        assert!(table.user_collision_as(&user, "ns:billing").is_some());
        table.remove(&b.id);
        assert_eq!(table.user_collision_as(&user, "ns:billing"), None);
        // Replacing a process keeps one claim.
        table.insert(Entry::new(
            a.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        table.insert(Entry::new(
            a.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        table.remove(&a.id);
        assert!(table.users.is_empty());
    }
}
