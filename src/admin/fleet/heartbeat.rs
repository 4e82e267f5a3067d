//! Heartbeats: liveness, health reports, and the drift they reveal
//! between what a launcher runs and what is placed on it.

use std::collections::HashMap;

use super::{
    DeliveryKind, Fleet,
    drift::{self, Placement, Repair},
    event,
};
use crate::admin::events;
use crate::{
    admin::store::{HealthRecord, PlacementState},
    clock,
    pb::prism as pb,
};

/// The same process state, whatever the usage figures (memory, CPU,
/// uptime) say: a report that changes only those is not stored.
fn same_state(a: &pb::ProcessHealth, b: &pb::ProcessHealth) -> bool {
    a.status == b.status
        && a.detailed_status == b.detailed_status
        && a.pid == b.pid
        && a.restart_count == b.restart_count
        && a.error_count == b.error_count
        && a.last_error == b.last_error
        && a.exit_reason == b.exit_reason
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

/// A launcher's report past the edge: who, the health of each process it
/// runs (as the launcher reported it, stored as is), and its counts.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    pub launcher_id: String,
    pub health: HashMap<String, pb::ProcessHealth>,
    pub resources: Option<pb::LauncherResourceUsage>,
}

impl From<pb::LauncherHeartbeatRequest> for Heartbeat {
    fn from(wire: pb::LauncherHeartbeatRequest) -> Self {
        Self {
            launcher_id: wire.launcher_id,
            health: wire.process_health,
            resources: wire.resources,
        }
    }
}

/// A change of status in the history's words: "running → failed (pid 7):
/// why".
fn history_detail(before: Option<&HealthRecord>, now: &pb::ProcessHealth) -> String {
    let before = before.map(|r| events::status_of(&r.health).to_owned());
    let after = events::status_of(now);
    let mut detail = format!("{} → {after}", before.as_deref().unwrap_or("-"));
    if now.pid > 0 {
        detail.push_str(&format!(" (pid {})", now.pid));
    }
    if !now.last_error.is_empty() && after != "running" {
        detail.push_str(&format!(": {}", now.last_error));
    }
    detail
}

impl Fleet {
    /// Record a heartbeat and repair drift between what the launcher runs
    /// and what is placed on it.
    pub async fn heartbeat(&self, hb: Heartbeat) -> pb::HeartbeatAck {
        let now = clock::unix_ms();
        // Heard, whatever else: liveness never waits for the state.
        self.heard.note(&hb.launcher_id, now);
        let Ok(mut st) = tokio::time::timeout(self.interval / 2, self.state.lock()).await else {
            // The state is held (a slow database write): this heartbeat
            // counts for liveness, and its reports wait for the next one,
            // which carries them all again. Its time is stored all the
            // same: followers judge liveness from what is stored.
            self.batch
                .lock()
                .expect("poisoned")
                .launchers
                .entry(hb.launcher_id.clone())
                .and_modify(|(at, _)| *at = (*at).max(now))
                .or_insert((now, None));
            tracing::debug!(
                prism_launcher_id = %hb.launcher_id,
                "the fleet's state is busy: {}'s heartbeat counted for liveness only",
                hb.launcher_id
            );
            return pb::HeartbeatAck {
                success: true,
                message: String::new(),
                server_timestamp: now / 1000,
                reregister: false,
                epoch: self.dispatcher.epoch(),
            };
        };
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
                epoch: self.dispatcher.epoch(),
            };
        }
        if let Some(why) = st.pending.stuck(&hb.launcher_id) {
            // Its heartbeats get through, this admin's pushes do not (a
            // partition one way, or between it and the leader only): what
            // waits for it goes with its registration instead.
            if let Some(l) = st.launchers.get_mut(&hb.launcher_id) {
                l.last_heartbeat_ms = now;
            }
            tracing::info!(
                prism_launcher_id = %hb.launcher_id,
                "pushes to {} fail ({why}); asking it to register again to take them",
                hb.launcher_id
            );
            return pb::HeartbeatAck {
                success: false,
                message: format!(
                    "this admin's pushes to {} fail ({why}): register again to take what is \
                     placed on it",
                    hb.launcher_id
                ),
                server_timestamp: now / 1000,
                reregister: true,
                epoch: self.dispatcher.epoch(),
            };
        }
        let Some(l) = st.launchers.get_mut(&hb.launcher_id) else {
            unreachable!("checked above");
        };
        l.last_heartbeat_ms = now;
        // Stored when its counts change, or once an interval has passed
        // (for followers' reads): a leader judges liveness afresh when it
        // starts, and usage figures are live data.
        let resources_changed = !same_counts(l.resources.as_ref(), hb.resources.as_ref());
        l.resources = hb.resources;
        let launcher = hb.launcher_id.clone();
        let interval_ms = self.interval.as_millis() as i64;
        let store_now = resources_changed
            || st
                .stored_heartbeat
                .get(&launcher)
                .is_none_or(|at| now - at >= interval_ms);
        if store_now {
            st.stored_heartbeat.insert(launcher.clone(), now);
        }
        // Each reported process is looked up once; the placed ones that
        // were not reported are looked for only when some are missing.
        let fresh = now - 2 * self.interval.as_millis() as i64;
        let mut batch_health = Vec::new();
        let mut transitions = Vec::new();
        let (mut assign, mut revoke, mut finished) = (Vec::new(), Vec::new(), Vec::new());
        let mut reported_here = 0;
        for (pid, health) in &hb.health {
            let here = st
                .processes
                .get(pid)
                .filter(|p| p.launcher_id.as_deref() == Some(launcher.as_str()))
                .map(Placement::of);
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
            if let Some(w) = st
                .processes
                .get(pid)
                .and_then(|p| events::status_change(&p.spec, &launcher, st.health.get(pid), health))
            {
                // History keeps its own words ("running → failed (pid 7):
                // …"); watchers get the event.
                let detail = history_detail(st.health.get(pid), health);
                let mut e = event("status", version, &launcher, detail);
                e.watched = Some(w);
                transitions.push((pid.clone(), e));
            }
            st.health.insert(pid.clone(), record.clone());
            batch_health.push((pid.clone(), record));
        }
        if reported_here < st.count_on(&launcher) {
            for p in st.on(&launcher) {
                if hb.health.contains_key(p.id()) {
                    continue;
                }
                match drift::repair(Some(Placement::of(p)), None, false, fresh) {
                    Repair::Assign => assign.push(p.id().to_owned()),
                    Repair::Finished => finished.push(p.id().to_owned()),
                    Repair::Revoke | Repair::Nothing => {}
                }
            }
        }
        for pid in &assign {
            if let Some(p) = st.processes.get(pid)
                && let Some(waiting) = st.dependencies_waiting(&p.spec)
            {
                tracing::debug!(prism_launcher_id = %launcher, prism_process_id = %pid, "{pid} waits for its dependencies: {waiting}");
                continue;
            }
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
        {
            // Written within a second, together with every other
            // launcher's (see `flush`); changes of status at once, for
            // watchers. Batched under the state's lock, as the state they
            // change: a listing's revision counts them.
            let mut batch = self.batch.lock().expect("poisoned");
            if store_now {
                batch
                    .launchers
                    .insert(launcher.clone(), (now, hb.resources));
            }
            batch.health.extend(batch_health);
            if !transitions.is_empty() {
                batch.history.extend(transitions);
                self.flush_soon.notify_one();
            }
        }
        drop(st);
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
            epoch: self.dispatcher.epoch(),
        }
    }
}
