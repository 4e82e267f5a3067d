//! Following systemd's signals into the table, and probing processes.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::supervisor::Supervisor;
use crate::serve::Shutdown;
use crate::{
    health::{Phase, ProbeState, exit::ExitReason, probe},
    model::Probe,
    systemd::{UnitEvent, UnitSummary},
    unit::props,
};

impl Supervisor {
    /// Apply unit events to the table until the event stream closes or
    /// shutdown is requested.
    pub async fn follow_events(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut events = self.systemd.events();
        loop {
            let Some(event) = shutdown.until(events.recv()).await else {
                return;
            };
            match event {
                Ok(UnitEvent::Changed(mut status)) => {
                    let mut table = self.table();
                    let Some(entry) = table.by_unit(&status.name) else {
                        continue;
                    };
                    // Judged with the restarts the launcher paced, which
                    // systemd's NRestarts leaves out; stored as read.
                    let read_restarts = status.n_restarts;
                    status.n_restarts += entry.pace.restarts;
                    let before = entry.unit_status.as_ref();
                    let was_restarting = before.is_some_and(|s| s.sub_state == "auto-restart");
                    let was_failed = before.is_some_and(|s| s.is_finally_failed());
                    let restarting = status.sub_state == "auto-restart" && !was_restarting;
                    let failed = status.is_finally_failed() && !was_failed;
                    if restarting || failed {
                        // One end of the process, with its reason; a clean
                        // exit that Restart=always restarts is status 0.
                        let reason = ExitReason::of(&status)
                            .or(restarting.then_some(ExitReason::ExitCode(0)));
                        if let Some(reason) = reason {
                            if restarting || matches!(reason, ExitReason::StartLimit(_)) {
                                self.metrics.restart(reason.cause(), 1);
                            }
                            entry.last_error = Some(reason.to_string());
                            entry.exit = Some(reason);
                        }
                    }
                    if status.start_limit_hit() && entry.circuit_opened_at.is_none() {
                        tracing::warn!(
                            prism_process_id = %entry.process.id,
                            unit = %status.name,
                            "circuit open for {}: systemd stopped restarting it ({})",
                            entry.process.id,
                            status.describe_failure()
                        );
                        entry.circuit_opened_at = Some(Instant::now());
                        self.reconcile.notify_one();
                    } else if restarting {
                        let paced = (entry.phase == Phase::Held
                            && !props::has_restart_steps(self.systemd.manager_version()))
                        .then(|| entry.pace.next(&entry.process.restart, Instant::now()))
                        .flatten();
                        let reason = entry.exit.as_ref();
                        let how = reason.map(|r| format!(" {r}")).unwrap_or_default();
                        match paced {
                            Some(delay) => {
                                tracing::info!(
                                    prism_process_id = %entry.process.id,
                                    unit = %status.name,
                                    cause = reason.map(ExitReason::cause),
                                    delay_ms = delay.as_millis() as u64,
                                    "{}{how}; the launcher restarts it in {delay:?} \
                                     (restart {} in a row)",
                                    entry.process.id,
                                    entry.pace.step
                                );
                                self.pace_restart(
                                    &entry.process.id,
                                    &status.name,
                                    (entry.pace.episode, read_restarts),
                                    delay,
                                );
                            }
                            None => tracing::info!(
                                prism_process_id = %entry.process.id,
                                unit = %status.name,
                                cause = reason.map(ExitReason::cause),
                                "{}{how}; systemd restarts it",
                                entry.process.id
                            ),
                        }
                    }
                    if matches!(status.active_state.as_str(), "inactive" | "failed")
                        && status.sub_state != "auto-restart"
                    {
                        entry.pace.stopped();
                    }
                    if status.is_active() {
                        entry.circuit_opened_at = None;
                        entry.pace.running(Instant::now());
                        if matches!(entry.phase, Phase::Restoring | Phase::Blocked) {
                            entry.phase = Phase::Held;
                        }
                    }
                    status.n_restarts = read_restarts;
                    entry.unit_status = Some(*status);
                    drop(table);
                    self.changed.notify_one();
                }
                Ok(UnitEvent::Removed { unit }) => {
                    let mut table = self.table();
                    if let Some(entry) = table.by_unit(&unit)
                        && entry.phase == Phase::Held
                    {
                        // Gone behind the launcher's back (stopped by hand,
                        // exited, collected): restore it.
                        tracing::info!(
                            prism_process_id = %entry.process.id,
                            %unit,
                            "unit of {} disappeared; restoring it",
                            entry.process.id
                        );
                        entry.schedule_restore(Instant::now());
                        drop(table);
                        self.reconcile.notify_one();
                    } else if let Some(entry) = table.by_unit(&unit) {
                        entry.unit_status = None;
                    }
                    self.changed.notify_one();
                }
                Ok(UnitEvent::Resynced { units }) => {
                    // Changes while disconnected were never signalled: the
                    // list is the state now (once per connection, not per
                    // assignment). Then the reconciler acts on it.
                    self.resync_statuses(&units);
                    self.reconcile.notify_one();
                    self.changed.notify_one();
                }
                Err(RecvError::Lagged(_)) => {
                    // A (re)connected manager, or missed events: the
                    // reconciler takes the manager's list as the truth.
                    self.reconcile.notify_one();
                    self.changed.notify_one();
                }
                Ok(UnitEvent::Disconnected) => self.changed.notify_one(),
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Take a unit list from a (re)connected manager as the state of every
    /// entry's unit; a held entry whose unit is not listed has none.
    fn resync_statuses(&self, units: &[UnitSummary]) {
        let listed: HashMap<&str, &UnitSummary> =
            units.iter().map(|u| (u.name.as_str(), u)).collect();
        let mut table = self.table();
        for entry in table.entries.values_mut() {
            match listed.get(entry.unit.as_str()) {
                // A status known before: its state moves on. None stays
                // none, so the next report reads the unit whole (a list
                // has no pid, no cgroup).
                Some(u) => {
                    if let Some(status) = entry.unit_status.as_mut() {
                        status.absorb_summary(u);
                    }
                }
                // An assignment in flight creates its unit itself.
                None if entry.phase != Phase::Starting => entry.unit_status = None,
                None => {}
            }
        }
    }

    /// Start the probe task of a process that has a probe, if not running.
    pub(super) fn ensure_probe(self: &Supervisor, id: &str) {
        let Some(this) = self.me() else { return };
        let mut table = self.table();
        let Some(entry) = table.entries.get_mut(id) else {
            return;
        };
        let probe = entry.process.health.probe.clone();
        if matches!(probe, Probe::None | Probe::Watchdog { .. }) {
            return;
        }
        if entry.probe_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        entry.probe = ProbeState {
            configured: true,
            ..ProbeState::default()
        };
        let version = entry.process.version;
        let task = tokio::spawn(this.probe_loop(id.to_owned(), version));
        entry.probe_task = Some(task.abort_handle());
    }

    /// Start the probe anew for the process's current version, keeping
    /// what it has found so far if `keep_state`.
    pub(super) fn renew_probe(self: &Supervisor, id: &str, keep_state: bool) {
        let saved = {
            let mut table = self.table();
            let Some(e) = table.entries.get_mut(id) else {
                return;
            };
            e.stop_probe();
            keep_state.then(|| e.probe.clone())
        };
        self.ensure_probe(id);
        if let Some(state) = saved
            && let Some(e) = self.table().entries.get_mut(id)
            && e.probe_task.is_some()
        {
            e.probe = state;
        }
    }

    /// Probe one process every interval; restart it through systemd once it
    /// failed `failure_threshold` times in a row.
    async fn probe_loop(self: Arc<Self>, id: String, version: i64) {
        loop {
            let (check, unit, active) = {
                let table = self.table();
                let Some(e) = table
                    .entries
                    .get(&id)
                    .filter(|e| e.process.version == version)
                else {
                    return;
                };
                (
                    e.process.health.clone(),
                    e.unit.clone(),
                    e.unit_status.as_ref().is_some_and(|s| s.is_active()),
                )
            };
            tokio::time::sleep(check.interval).await;
            if !active {
                continue;
            }
            let result = probe::check(&check.probe, check.timeout).await;
            let restart = {
                let mut table = self.table();
                let Some(e) = table
                    .entries
                    .get_mut(&id)
                    .filter(|e| e.process.version == version)
                else {
                    return;
                };
                // The unit may have stopped while the probe ran.
                if !e.unit_status.as_ref().is_some_and(|s| s.is_active()) {
                    continue;
                }
                let p = &mut e.probe;
                match &result {
                    Ok(()) => {
                        if !p.passed || p.restarted_unhealthy {
                            tracing::info!(prism_process_id = %id, "probe of {id} passing");
                        }
                        p.passed = true;
                        p.restarted_unhealthy = false;
                        p.consecutive_failures = 0;
                        false
                    }
                    Err(reason) => {
                        p.consecutive_failures += 1;
                        p.total_failures += 1;
                        p.last_error = Some(reason.clone());
                        tracing::debug!(prism_process_id = %id, failures = p.consecutive_failures, %reason, "probe failed");
                        p.consecutive_failures >= check.failure_threshold
                    }
                }
            };
            self.changed.notify_one();
            if restart {
                tracing::warn!(
                    prism_process_id = %id,
                    %unit,
                    failures = check.failure_threshold,
                    "{id} unhealthy: restarting through systemd after {} failed probes",
                    check.failure_threshold
                );
                let result = {
                    let _guard = self.locks.lock(&id).await;
                    self.systemd.restart(&unit).await
                };
                let mut table = self.table();
                self.metrics.restart("probe", 1);
                if let Some(e) = table.entries.get_mut(&id) {
                    let reason = ExitReason::Probe {
                        failures: check.failure_threshold,
                        last: e.probe.last_error.clone().unwrap_or_default(),
                    };
                    e.last_error = Some(reason.to_string());
                    e.exit = Some(reason);
                    e.launcher_restarts += 1;
                    e.probe.consecutive_failures = 0;
                    e.probe.passed = false;
                    e.probe.restarted_unhealthy = true;
                    if let Err(err) = result {
                        e.last_error = Some(format!("restart after failed probes: {err}"));
                    }
                }
                drop(table);
                self.changed.notify_one();
            }
        }
    }
}
