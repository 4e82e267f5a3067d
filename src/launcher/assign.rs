//! Assigning and revoking: validate, reserve, persist and start; record,
//! stop and forget. See the supervisor's module docs for the concurrency.

use std::time::Duration;

use tokio::time::Instant;

use super::supervisor::{DEFAULT_REVOKE_GRACE, LauncherError, Supervisor};
use super::table::Entry;
use crate::{
    health::Phase,
    model::{Assignment, ManagedProcess},
    systemd::{SystemdError, UnitStatus},
    unit,
};

/// How long an assignment keeps retrying a start that failed because
/// systemd was briefly away, before answering UNAVAILABLE (still held).
const ASSIGN_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// What an assignment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignOutcome {
    Started,
    /// Same id and version: nothing changed.
    Unchanged,
    /// A unit of this id and version was already running; it was kept.
    Adopted,
    /// An older version was replaced by a new unit; `reason` says why it
    /// could not be updated in place (`None`: it was not running).
    Replaced {
        previous: i64,
        reason: Option<String>,
    },
    /// An older version's running unit took the new limits and probe
    /// settings; its process kept running.
    UpdatedInPlace {
        previous: i64,
    },
    /// Recorded, but the first start failed; the launcher keeps trying.
    StartFailed {
        reason: String,
    },
}

impl AssignOutcome {
    /// `ProcessAssignmentAck.applied`.
    pub fn applied(&self) -> String {
        match self {
            Self::Started | Self::StartFailed { .. } => "created".into(),
            Self::Unchanged | Self::Adopted => "unchanged".into(),
            Self::UpdatedInPlace { .. } => "updated in place".into(),
            Self::Replaced {
                reason: Some(r), ..
            } => format!("replaced: {r}"),
            Self::Replaced { reason: None, .. } => "replaced".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Assigned {
    pub unit: String,
    pub outcome: AssignOutcome,
}

/// The version held when a newer one arrives.
struct Previous {
    unit: String,
    version: i64,
    wire: crate::pb::prism::ProcessAssignment,
    /// How the new version can be applied, if the old one is running.
    update: Option<unit::update::Update>,
}

#[derive(Clone, Debug)]
pub struct Revoked {
    pub stopped_at: i64,
    /// The exit status, or 128 + the signal that ended the process.
    pub exit_code: i32,
    pub was_running: bool,
    pub killed: bool,
}

impl Supervisor {
    /// A process whose first run ended before its assignment was done
    /// (its unit already waiting to restart, a wait the signal's handler
    /// left alone as the process was not held yet): its restart is paced
    /// now, as any later one is.
    fn pace_if_waiting(&self, id: &str) {
        let mut table = self.table();
        let Some(e) = table.entries.get_mut(id) else {
            return;
        };
        let Some(status) = e.unit_status.as_ref() else {
            return;
        };
        if e.phase != Phase::Held
            || status.sub_state != "auto-restart"
            || crate::unit::props::has_restart_steps(self.systemd.manager_version())
        {
            return;
        }
        let (unit, read_restarts) = (status.name.clone(), status.n_restarts);
        if let Some(delay) = e.pace.next(&e.process.restart, Instant::now()) {
            let episode = e.pace.episode;
            drop(table);
            tracing::info!(
                prism_process_id = %id,
                unit = %unit,
                delay_ms = delay.as_millis() as u64,
                "{id} ended before its assignment was done; the launcher restarts it in {delay:?}"
            );
            self.pace_restart(id, &unit, (episode, read_restarts), delay);
        }
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
        let process = process.on_host(&self.policy)?;
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
            table.check_dependencies(&process, placed_by_admin)?;
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
                Some(e) => Some(Previous {
                    unit: e.unit.clone(),
                    version: e.process.version,
                    wire: e.wire.clone(),
                    update: (e.phase == Phase::Held
                        && e.unit_status.as_ref().is_some_and(UnitStatus::is_active))
                    .then(|| {
                        unit::update::plan(&e.process, &process, self.systemd.manager_version())
                    }),
                }),
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

        let mut replaced_because = None;
        if let Some(prev) = &previous {
            match &prev.update {
                Some(unit::update::Update::InPlace { properties, probe }) => {
                    match self
                        .update_in_place(&process, &wire, prev, properties, *probe)
                        .await?
                    {
                        None => {
                            return Ok(Assigned {
                                unit: prev.unit.clone(),
                                outcome: AssignOutcome::UpdatedInPlace {
                                    previous: prev.version,
                                },
                            });
                        }
                        Some(refused) => replaced_because = Some(refused),
                    }
                }
                Some(unit::update::Update::Replace { reason }) => {
                    replaced_because = Some(reason.clone());
                }
                None => {}
            }
        }

        // The durable write runs on a blocking thread, overlapped with the
        // work in systemd; the ack waits for both. A crash before the write
        // completes leaves at most a unit nobody was told about: the
        // reconciler stops it, and the caller, never answered, retries.
        let save = self.persist(wire.clone(), false, placed_by_admin);
        let spec = self.spec_of(&process);
        let work = async {
            if let Some(prev) = &previous {
                // Replaces the held entry (and its user claim).
                self.table().insert(fresh());
                // The old version goes first; the unit name may be the same.
                self.systemd.stop(&prev.unit, process.stop_timeout).await?;
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
            if let Some(Previous { wire: old, .. }) = previous
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
                (Some(prev), AssignOutcome::Started | AssignOutcome::Adopted) => {
                    AssignOutcome::Replaced {
                        previous: prev.version,
                        reason: replaced_because,
                    }
                }
                (_, o) => o,
            },
        })
    }

    /// The unit of `process`, ordered after its dependencies held here.
    pub(super) fn spec_of(&self, process: &ManagedProcess) -> unit::UnitSpec {
        let mut spec = unit::translate(process);
        let dependencies = self.table().dependency_units(process);
        unit::order_after(&mut spec, &dependencies);
        spec
    }

    /// Apply a new version to the running unit of the old one: persist it,
    /// then set the properties. `Ok(None)`: done, the process kept running.
    /// `Ok(Some(reason))`: systemd refused the change (nothing of it
    /// applied), so the caller replaces the unit. An error: the new version
    /// could not be written, and nothing changed.
    async fn update_in_place(
        &self,
        process: &ManagedProcess,
        wire: &crate::pb::prism::ProcessAssignment,
        prev: &Previous,
        properties: &unit::Props,
        probe_changed: bool,
    ) -> Result<Option<String>, LauncherError> {
        let Some((placed_by_admin, old)) = self
            .table()
            .entries
            .get(&process.id)
            .map(|e| (e.placed_by_admin, e.process.clone()))
        else {
            return Ok(Some("its entry went away meanwhile".into()));
        };
        // The durable write and the live change overlap, as a start does.
        let (saved, set) = tokio::join!(
            self.persist(wire.clone(), false, placed_by_admin),
            self.systemd.set_properties(&prev.unit, properties)
        );
        if let Err(e) = saved {
            // Not durable, so not accepted: the unit goes back to the old
            // version's limits.
            if set.is_ok()
                && let unit::update::Update::InPlace {
                    properties: back, ..
                } = unit::update::plan(process, &old, self.systemd.manager_version())
                && let Err(undo) = self.systemd.set_properties(&prev.unit, &back).await
            {
                tracing::warn!(prism_process_id = %process.id, error = %undo, "cannot restore the limits of {} after its state could not be written: {undo}", process.id);
            }
            return Err(e.into());
        }
        if let Err(e) = set {
            tracing::warn!(
                prism_process_id = %process.id,
                unit = %prev.unit,
                error = %e,
                "cannot update {} in place ({e}); replacing its unit",
                process.id
            );
            return Ok(Some(format!("systemd refused the update in place: {e}")));
        }
        if let Some(e) = self.table().entries.get_mut(&process.id) {
            e.process = process.clone();
            e.wire = wire.clone();
            e.recorded_at_ms = crate::clock::unix_ms();
        }
        // The probe follows the version; its verdict so far stands unless
        // its settings changed.
        self.renew_probe(&process.id, !probe_changed);
        self.changed.notify_one();
        tracing::info!(
            prism_process_id = %process.id,
            unit = %prev.unit,
            "{} updated in place from v{} to v{}: {}",
            process.id,
            prev.version,
            process.version,
            properties
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(None)
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
        // A new unit: systemd counts its restarts from zero (an adopted
        // one keeps its pace, put back below).
        let pace = self
            .table()
            .entries
            .get_mut(&process.id)
            .map(|e| std::mem::take(&mut e.pace));
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
                    if outcome == AssignOutcome::Adopted
                        && let Some(pace) = pace
                    {
                        e.pace = pace;
                    }
                }
                drop(table);
                self.pace_if_waiting(&process.id);
                self.ensure_probe(&process.id);
                Ok(outcome)
            }
            Err(SystemdError::StartFailed {
                status, job_result, ..
            }) => {
                let exit = crate::health::exit::ExitReason::of(&status);
                let reason = match &exit {
                    Some(exit) => format!("start job {job_result}: {exit}"),
                    None => format!("start job {job_result}: {}", status.describe_failure()),
                };
                if let Some(e) = entry {
                    if exit.is_some() {
                        e.exit = exit;
                    }
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

    /// Record the revocation, then stop the unit gracefully; refused while
    /// a process held here depends on it (stopping it would stop them, with
    /// `BindsTo=`, or leave them without it).
    pub async fn revoke(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<Revoked, LauncherError> {
        self.revoke_as(id, grace, true).await
    }

    /// A revocation prism-admin decided: it checked its whole fleet for
    /// dependents, and it moves or drops processes for reasons this
    /// launcher cannot see, so it is never refused for them.
    pub async fn revoke_for_admin(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<Revoked, LauncherError> {
        self.revoke_as(id, grace, false).await
    }

    async fn revoke_as(
        &self,
        id: &str,
        grace: Option<Duration>,
        refuse_if_needed: bool,
    ) -> Result<Revoked, LauncherError> {
        let _guard = self.locks.lock(id).await;
        let (wire, by_admin) = {
            let mut table = self.table();
            if refuse_if_needed {
                let by = table.dependents_of(id);
                if !by.is_empty() {
                    return Err(LauncherError::Needed {
                        id: id.to_owned(),
                        by,
                    });
                }
            }
            let entry = table
                .entries
                .get_mut(id)
                .ok_or_else(|| LauncherError::NotFound { id: id.to_owned() })?;
            // From here no new dependent is accepted (see
            // `Table::check_dependencies`), also while the write is done.
            entry.revoke_pending = true;
            (entry.wire.clone(), entry.placed_by_admin)
        };
        // Taken back if the write fails or the call is dropped before the
        // revocation is under way.
        let pending = PendingRevoke {
            supervisor: self,
            id,
            armed: true,
        };
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
        pending.disarm();
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

/// A revocation being recorded: `revoke_pending` is cleared when this is
/// dropped armed (the write failed, or the caller went away mid-write).
struct PendingRevoke<'a> {
    supervisor: &'a Supervisor,
    id: &'a str,
    armed: bool,
}

impl PendingRevoke<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PendingRevoke<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(entry) = self.supervisor.table().entries.get_mut(self.id)
        {
            entry.revoke_pending = false;
        }
    }
}
