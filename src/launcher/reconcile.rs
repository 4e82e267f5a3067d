//! Reconciliation: desired state (the table) against what the manager runs
//! (one `ListUnitsByPatterns` call). The plan is a pure function; executing
//! it takes each process's lock and re-checks before acting.
//!
//! It runs at start-up, when the connection to systemd is (re-)established
//! (a restarted manager or a reboot has no transient units left: the same
//! path recreates them), when a unit disappears, after assignments, and on
//! a slow timer. Several launchers never share a manager, so a
//! workload unit (`prism-<type>-*.service`) that is not desired here is
//! stopped. The launcher's and admin's own units never match.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures_util::{StreamExt, stream};
use tokio::time::Instant;

use super::supervisor::{AssignOutcome, Supervisor};
use crate::serve::Shutdown;
use crate::{
    health::Phase,
    model::ProcessType,
    systemd::{SystemdError, UnitSummary},
    unit,
};

/// What the plan knows of one desired process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub id: String,
    pub version: i64,
    pub process_type: ProcessType,
    pub unit: String,
    /// A revocation was recorded and must be finished.
    pub revoking: bool,
    /// A missing or dead unit may be (re)created now (restore backoff).
    pub start_allowed: bool,
    /// Its circuit has been open for the cool-down: one half-open try.
    pub circuit_due: bool,
    /// Stopped while cut off from every admin: its unit must not run.
    pub suspended: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Desired and missing.
    Start { id: String },
    /// Desired and running as specified: keep it, do not restart it.
    Adopt { id: String },
    /// Its unit runs another version (or is dead): stop it, start anew.
    Recreate { id: String, reason: &'static str },
    /// The circuit cool-down passed: reset and start once more.
    HalfOpen { id: String },
    /// Finish a recorded revocation.
    FinishRevoke { id: String },
    /// A process stopped while cut off from every admin runs (the launcher
    /// restarted meanwhile, or the first stop failed): stop it.
    StopSuspended { id: String },
    /// A launcher-named unit nobody wants; `id` is the process its
    /// description names, whose lock the stop takes.
    Stop { unit: String, id: Option<String> },
}

fn runs(w: &Want, u: &UnitSummary) -> bool {
    unit::parse_description(&u.description)
        .is_some_and(|i| i.id == w.id && i.version == w.version && i.process_type == w.process_type)
}

/// The plan: pure, so it is tested with tables. Linear in wants + units.
pub fn plan(wants: &[Want], actual: &[UnitSummary]) -> Vec<Action> {
    let by_name: HashMap<&str, &UnitSummary> =
        actual.iter().map(|u| (u.name.as_str(), u)).collect();
    let kept: HashSet<&str> = wants.iter().map(|w| w.unit.as_str()).collect();
    let mut actions = Vec::new();
    for w in wants {
        let found = by_name.get(w.unit.as_str()).copied();
        if w.revoking {
            actions.push(Action::FinishRevoke { id: w.id.clone() });
            continue;
        }
        if w.suspended {
            if found.is_some_and(|u| u.active_state != "inactive" && u.active_state != "failed") {
                actions.push(Action::StopSuspended { id: w.id.clone() });
            }
            continue;
        }
        let Some(u) = found else {
            if w.start_allowed {
                actions.push(Action::Start { id: w.id.clone() });
            }
            continue;
        };
        if !runs(w, u) {
            actions.push(Action::Recreate {
                id: w.id.clone(),
                reason: "runs another version",
            });
            continue;
        }
        match u.active_state.as_str() {
            "active" | "activating" | "reloading" | "deactivating" => {
                actions.push(Action::Adopt { id: w.id.clone() })
            }
            "failed" if w.circuit_due => actions.push(Action::HalfOpen { id: w.id.clone() }),
            // A failure systemd chose not to restart stays visible.
            "failed" => {}
            _ if w.start_allowed && !u.has_job => actions.push(Action::Recreate {
                id: w.id.clone(),
                reason: "is not running",
            }),
            _ => {}
        }
    }
    for u in actual {
        if !kept.contains(u.name.as_str()) {
            actions.push(Action::Stop {
                unit: u.name.clone(),
                id: unit::parse_description(&u.description).map(|i| i.id),
            });
        }
    }
    actions
}

/// The reason given when a tripped circuit gets its one more try.
const HALF_OPEN: &str = "gets one more try after its circuit opened";

/// How many reconciliation actions run at once (systemd is the limit).
const PARALLEL: usize = 32;
/// Grace for stopping units nobody wants.
const UNWANTED_GRACE: Duration = Duration::from_secs(30);

impl Supervisor {
    /// What the table wants, as the plan sees it.
    fn wants(&self, now: Instant) -> Vec<Want> {
        let table = self.table();
        table
            .entries
            .values()
            // In-flight assignments act for themselves.
            .filter(|e| e.phase != Phase::Starting)
            .map(|e| Want {
                id: e.process.id.clone(),
                version: e.process.version,
                process_type: e.process.process_type(),
                unit: e.unit.clone(),
                revoking: e.phase == Phase::Revoking,
                start_allowed: e.restore_not_before.is_none_or(|t| t <= now),
                circuit_due: e
                    .circuit_opened_at
                    .is_some_and(|t| now.duration_since(t) >= self.circuit_cooldown),
                suspended: e.phase == Phase::Suspended,
            })
            .collect()
    }

    /// One reconciliation pass.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), SystemdError> {
        let actual = self.systemd.list().await?;
        let actions = plan(&self.wants(Instant::now()), &actual);
        let adopt_only = actions.iter().all(|a| matches!(a, Action::Adopt { .. }));
        if !adopt_only {
            tracing::debug!(?actions, "reconciling");
        }
        stream::iter(actions)
            .for_each_concurrent(PARALLEL, |action| {
                let this = self.clone();
                async move { this.execute(action).await }
            })
            .await;
        self.changed.notify_one();
        Ok(())
    }

    async fn execute(self: Arc<Self>, action: Action) {
        match action {
            Action::Adopt { id } => {
                let newly = {
                    let mut table = self.table();
                    match table.entries.get_mut(&id) {
                        Some(e) if e.phase != Phase::Held => {
                            e.phase = Phase::Held;
                            true
                        }
                        Some(e) => e.probe_task.is_none(),
                        None => false,
                    }
                };
                if newly {
                    self.ensure_probe(&id);
                }
            }
            Action::Start { id } => self.recreate(&id, None).await,
            Action::Recreate { id, reason } => self.recreate(&id, Some(reason)).await,
            Action::HalfOpen { id } => {
                tracing::info!(prism_process_id = %id, "circuit half-open for {id}: one more try");
                self.recreate(&id, Some(HALF_OPEN)).await;
            }
            Action::FinishRevoke { id } => {
                let _guard = self.locks.lock(&id).await;
                let unit = match self.table().entries.get(&id) {
                    Some(e) if e.phase == Phase::Revoking => e.unit.clone(),
                    _ => return,
                };
                match self.systemd.stop(&unit, UNWANTED_GRACE).await {
                    Ok(_) => {
                        if let Err(e) = self.unpersist(&id).await {
                            tracing::error!(prism_process_id = %id, error = %e, "cannot remove the revoked state of {id}: {e}");
                            return;
                        }
                        self.table().remove(&id);
                        tracing::info!(prism_process_id = %id, %unit, "finished the recorded revocation of {id}");
                    }
                    Err(e) => {
                        tracing::warn!(prism_process_id = %id, error = %e, "revocation of {id} still pending: {e}")
                    }
                }
            }
            Action::StopSuspended { id } => {
                let _guard = self.locks.lock(&id).await;
                let (unit, grace) = match self.table().entries.get(&id) {
                    Some(e) if e.phase == Phase::Suspended => {
                        (e.unit.clone(), e.process.stop_timeout)
                    }
                    _ => return,
                };
                tracing::info!(prism_process_id = %id, %unit, "stopping {unit}: {id} stays stopped while no admin answers");
                if let Err(e) = self.systemd.stop(&unit, grace).await {
                    tracing::warn!(prism_process_id = %id, error = %e, "cannot stop {unit}: {e}");
                }
            }
            Action::Stop { unit, id } => {
                if !self
                    .may_stop_undesired
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    tracing::debug!(%unit, "leaving {unit} until the admin's placement is known");
                    return;
                }
                // The lock an assignment of that process takes, so a fresh
                // assignment is never stopped by this stale decision.
                let _guard = self
                    .locks
                    .lock(&id.unwrap_or_else(|| format!("unit:{unit}")))
                    .await;
                if self.table().units.contains_key(&unit) {
                    return;
                }
                tracing::info!(%unit, "stopping {unit}: it is not desired here");
                if let Err(e) = self.systemd.stop(&unit, UNWANTED_GRACE).await {
                    tracing::warn!(%unit, error = %e, "cannot stop undesired {unit}: {e}");
                }
            }
        }
    }

    /// (Re)create the unit of `id`: stop what runs under its name first
    /// when `reason` says so. Re-checks under the process's lock.
    async fn recreate(self: &Arc<Self>, id: &str, reason: Option<&'static str>) {
        let _guard = self.locks.lock(id).await;
        let (process, restoring) = {
            let table = self.table();
            match table.entries.get(id) {
                Some(e) if e.phase != Phase::Revoking && e.phase != Phase::Starting => {
                    (e.process.clone(), e.phase == Phase::Restoring)
                }
                _ => return,
            }
        };
        // Before anything is stopped: can this host run it today?
        let process = match process.on_host(&self.policy) {
            Ok(p) => p,
            Err(e) => {
                let mut table = self.table();
                if let Some(entry) = table.entries.get_mut(id) {
                    if entry.phase != Phase::Blocked {
                        tracing::error!(prism_process_id = %id, error = %e, "cannot start {id} on this host: {e}; retrying until it can");
                    }
                    entry.block(Instant::now(), e.to_string());
                }
                return;
            }
        };
        let spec = self.spec_of(&process);
        match reason {
            Some(reason) => {
                tracing::info!(prism_process_id = %id, unit = %spec.name, "recreating the unit of {id}: it {reason}");
                if let Err(e) = self.systemd.stop(&spec.name, process.stop_timeout).await {
                    tracing::warn!(prism_process_id = %id, error = %e, "cannot stop the unit of {id} to recreate it: {e}");
                    return;
                }
            }
            None if restoring => {
                tracing::info!(prism_process_id = %id, unit = %spec.name, "restoring the unit of {id}")
            }
            None => {
                tracing::info!(prism_process_id = %id, unit = %spec.name, "starting the missing unit of {id}")
            }
        }
        match self.start_unit(&process, &spec).await {
            Ok(outcome) => {
                let mut table = self.table();
                if let Some(e) = table.entries.get_mut(id) {
                    if restoring || reason == Some(HALF_OPEN) {
                        e.launcher_restarts += 1;
                        let cause = if restoring { "restore" } else { "half_open" };
                        self.metrics.restart(cause, 1);
                    }
                    if let AssignOutcome::StartFailed { reason } = outcome {
                        tracing::warn!(prism_process_id = %id, "start of {id} failed: {reason}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(prism_process_id = %id, error = %e, "cannot start the unit of {id}: {e}");
                if let Some(entry) = self.table().entries.get_mut(id) {
                    entry.last_error = Some(e.to_string());
                }
            }
        }
    }

    /// When the reconciler should next wake on its own.
    pub(super) fn next_wake(&self, interval: Duration) -> Duration {
        let now = Instant::now();
        let table = self.table();
        let mut wake = interval;
        for e in table.entries.values() {
            if let Some(t) = e.restore_not_before {
                wake = wake.min(t.saturating_duration_since(now));
            }
            if let Some(t) = e.circuit_opened_at {
                wake = wake.min((t + self.circuit_cooldown).saturating_duration_since(now));
            }
        }
        wake.max(Duration::from_millis(20))
    }

    /// Reconcile on request, and at least every `interval`, until
    /// shutdown (a pass in progress finishes).
    pub async fn reconcile_loop(self: Arc<Self>, interval: Duration, mut shutdown: Shutdown) {
        loop {
            let wake = self.next_wake(interval);
            let woke = shutdown
                .until(async {
                    tokio::select! {
                        _ = self.reconcile.notified() => {}
                        _ = tokio::time::sleep(wake) => {}
                    }
                })
                .await;
            if woke.is_none() {
                return;
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconciliation failed; retrying: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(id: &str, version: i64) -> Want {
        Want {
            id: id.into(),
            version,
            process_type: ProcessType::Pattern,
            unit: unit::unit_name(ProcessType::Pattern, id),
            revoking: false,
            start_allowed: true,
            circuit_due: false,
            suspended: false,
        }
    }

    fn running(id: &str, version: i64, state: &str) -> UnitSummary {
        UnitSummary {
            name: unit::unit_name(ProcessType::Pattern, id),
            description: format!("prism pattern {id} v{version}: /usr/bin/x"),
            load_state: "loaded".into(),
            active_state: state.into(),
            sub_state: "x".into(),
            has_job: false,
        }
    }

    #[test]
    fn plans() {
        let stray = UnitSummary {
            description: "something else".into(),
            ..running("stray", 1, "active")
        };
        let mut backing_off = want("slow", 1);
        backing_off.start_allowed = false;
        let mut revoked = want("gone", 1);
        revoked.revoking = true;
        let mut tripped = want("trip", 1);
        tripped.circuit_due = true;
        type Case = (&'static str, Vec<Want>, Vec<UnitSummary>, Vec<Action>);
        let cases: Vec<Case> = vec![
            (
                "adopts what runs as specified, starts what is missing",
                vec![want("a", 1), want("b", 1)],
                vec![running("a", 1, "active")],
                vec![
                    Action::Adopt { id: "a".into() },
                    Action::Start { id: "b".into() },
                ],
            ),
            (
                "replaces an outdated version",
                vec![want("a", 2)],
                vec![running("a", 1, "active")],
                vec![Action::Recreate {
                    id: "a".into(),
                    reason: "runs another version",
                }],
            ),
            (
                "stops what is not desired",
                vec![],
                vec![stray.clone(), running("old", 3, "failed")],
                vec![
                    Action::Stop {
                        unit: stray.name.clone(),
                        id: None,
                    },
                    Action::Stop {
                        unit: unit::unit_name(ProcessType::Pattern, "old"),
                        id: Some("old".into()),
                    },
                ],
            ),
            (
                "an empty manager (restart, reboot) gets everything back",
                vec![want("a", 1), want("b", 4)],
                vec![],
                vec![
                    Action::Start { id: "a".into() },
                    Action::Start { id: "b".into() },
                ],
            ),
            (
                "backoff holds a restore; failures stay; circuit half-opens",
                vec![backing_off, want("f", 1), tripped],
                vec![running("f", 1, "failed"), running("trip", 1, "failed")],
                vec![Action::HalfOpen { id: "trip".into() }],
            ),
            (
                "recorded revocations are finished",
                vec![revoked],
                vec![running("gone", 1, "active")],
                vec![Action::FinishRevoke { id: "gone".into() }],
            ),
            (
                "a dead unit is recreated",
                vec![want("a", 1)],
                vec![running("a", 1, "inactive")],
                vec![Action::Recreate {
                    id: "a".into(),
                    reason: "is not running",
                }],
            ),
        ];
        for (name, wants, actual, expected) in cases {
            assert_eq!(plan(&wants, &actual), expected, "{name}");
        }
    }

    #[test]
    fn a_process_stopped_while_cut_off_is_neither_started_nor_left_running() {
        let suspended = Want {
            suspended: true,
            ..want("a", 1)
        };
        assert_eq!(plan(std::slice::from_ref(&suspended), &[]), vec![]);
        assert_eq!(
            plan(
                std::slice::from_ref(&suspended),
                &[running("a", 1, "active")]
            ),
            vec![Action::StopSuspended { id: "a".into() }]
        );
        assert_eq!(
            plan(&[suspended], &[running("a", 1, "inactive")]),
            vec![],
            "a stopped unit stays; it is not stopped again"
        );
    }
}
