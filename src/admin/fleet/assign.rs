//! Placing a process, pushing it to its launcher, and revoking it.

use std::{sync::Arc, time::Duration};

use prost::Message;
use tokio::time::Instant;
use tonic::Code;

use super::{Assigned, DeliveryKind, Fleet, FleetError, event, told, unit_of};
use crate::{
    admin::{
        disconnect,
        dispatch::unreachable,
        placement::{self, Liveness, NoCandidate, Request},
        store::{PlacementState, ProcessRecord},
    },
    clock,
    model::Assignment,
    pb::prism as pb,
};

/// `ProcessAssignmentAck.applied` of an assignment placed but not yet
/// acknowledged by its launcher.
pub const PENDING: &str = "pending";

/// "accepted, pending delivery to HOST, which has not answered for N s".
fn pending_message(
    id: &str,
    version: i64,
    launcher: &str,
    waited: Duration,
    silent: Duration,
) -> String {
    format!(
        "accepted {id} v{version}, pending delivery to {launcher}, which has not answered for \
         {:.1} s (its last heartbeat {:.1} s ago); it is delivered when {launcher} answers, or \
         when it registers again",
        waited.as_secs_f64(),
        silent.as_secs_f64()
    )
}

/// A revocation past the edge: a process id, the launcher it is expected
/// on (if the caller said), and the graceful timeout (0: the default).
#[derive(Clone, Debug)]
pub struct Revocation {
    pub process_id: String,
    pub launcher_id: Option<String>,
    pub graceful_timeout_seconds: i32,
}

impl TryFrom<pb::ProcessRevocation> for Revocation {
    type Error = FleetError;

    fn try_from(wire: pb::ProcessRevocation) -> Result<Self, FleetError> {
        if wire.process_id.is_empty() {
            return Err(FleetError::BadRequest {
                field: "process_id".into(),
                reason: "empty".into(),
            });
        }
        if !(0..=3600).contains(&wire.graceful_timeout_seconds) {
            return Err(FleetError::BadRequest {
                field: "graceful_timeout_seconds".into(),
                reason: format!(
                    "{} is outside 0..=3600 (0 means 30)",
                    wire.graceful_timeout_seconds
                ),
            });
        }
        Ok(Self {
            process_id: wire.process_id,
            launcher_id: (!wire.launcher_id.is_empty()).then_some(wire.launcher_id),
            graceful_timeout_seconds: wire.graceful_timeout_seconds,
        })
    }
}

/// How long an assignment waits for its launcher's answer by default: the
/// launcher answers once the unit runs, which a healthy launcher does well
/// within two heartbeat intervals.
const ACK_INTERVALS: u32 = 2;

impl Fleet {
    /// Place (or keep) a process, persist, push. See the module docs.
    pub async fn assign(
        self: &Arc<Self>,
        assignment: Assignment,
        region: Option<String>,
        launcher: Option<String>,
    ) -> Result<Assigned, FleetError> {
        self.assign_within(assignment, region, launcher, None).await
    }

    /// [`Self::assign`] for a caller that waits at most `deadline`: the
    /// answer comes within half of it, or within two heartbeat intervals,
    /// whichever is sooner. A launcher that has not acknowledged by then
    /// (it dropped off the network since its last heartbeat, or is slow)
    /// gets the assignment later, and the answer says so: placed, pending
    /// delivery to that launcher (`applied` is "pending").
    pub async fn assign_within(
        self: &Arc<Self>,
        assignment: Assignment,
        region: Option<String>,
        launcher: Option<String>,
        deadline: Option<Duration>,
    ) -> Result<Assigned, FleetError> {
        let (process, spec) = assignment.into_parts();
        let id = process.id.clone();
        // The same version again (a client retrying after "pending") is
        // answered without waiting for a push still in flight.
        if let Some(again) = self.unchanged(&id, spec.version).await {
            return Ok(again);
        }
        let guard = self.locks.lock_owned(&id).await;
        let now = clock::unix_ms();
        let (target, previous, waiting) = {
            let mut st = self.state.lock().await;
            let previous = st.processes.get(&id).cloned();
            match &previous {
                Some(p) if p.state == PlacementState::Revoking => {
                    return Err(FleetError::Revoking { id });
                }
                Some(p) if p.version() == spec.version => {
                    drop(st);
                    return Ok(self
                        .unchanged(&id, spec.version)
                        .await
                        .expect("held under its lock"));
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
            // A stop sooner than a launcher's normal silence would stop it
            // between two heartbeats.
            let shortest = self.interval * placement::UNHEALTHY_AFTER_MISSED;
            if let Some(stop) = process.on_disconnect.stop_after
                && stop < shortest
            {
                return Err(FleetError::BadRequest {
                    field: "config.on_disconnect.stop_after_ms".into(),
                    reason: format!(
                        "{} ms is shorter than three heartbeat intervals ({} ms): its launcher \
                         would stop it between two heartbeats",
                        stop.as_millis(),
                        shortest.as_millis()
                    ),
                });
            }
            // Replacement that would let two copies run at once is refused.
            if let Some(after) = process.on_disconnect.replace_after
                && let Some(why) = disconnect::overlap(&spec, after, self.interval, self.lease)
            {
                return Err(FleetError::BadRequest {
                    field: "config.on_disconnect.replace_after_ms".into(),
                    reason: why,
                });
            }
            // Dependencies: known to the fleet, and no cycle.
            let deps = process.dependency_ids();
            for (i, d) in deps.iter().enumerate() {
                let reason = match st.processes.get(d) {
                    None => format!("no process {d} is assigned"),
                    Some(p) if p.state == PlacementState::Revoking => {
                        format!("process {d} is being revoked")
                    }
                    Some(_) => continue,
                };
                return Err(FleetError::BadRequest {
                    field: format!("config.depends_on[{i}].process_id"),
                    reason,
                });
            }
            if let Some(cycle) = st.dependency_cycle(&id, &deps) {
                return Err(FleetError::BadRequest {
                    field: "config.depends_on".into(),
                    reason: format!("a dependency cycle: {}", cycle.join(" → ")),
                });
            }
            let rules = &process.placement;
            let candidates = st.candidates(now, self.interval, rules.spread_group.as_deref(), &id);
            let req = Request {
                process_type: process.process_type().as_str(),
                region: region.as_deref(),
                launcher: launcher.as_deref(),
                exclude: &[],
                spec_bytes: spec.encoded_len(),
                rules: Some(rules),
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
                            && c.process_types.iter().any(|t| t == req.process_type)
                            && placement::may_stay(c, rules)
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
                Some(p) => {
                    let mut e = told(
                        "replaced",
                        "placed",
                        &spec,
                        &target,
                        format!("v{} replaced", p.version()),
                        format!(
                            "placed {id} v{} on {target}, replacing v{}",
                            spec.version,
                            p.version()
                        ),
                    );
                    if let Some(change) = e.watched.as_mut().and_then(|w| w.process.as_mut()) {
                        change.previous_launcher_id = p.launcher_id.clone().unwrap_or_default();
                    }
                    e
                }
                None => told(
                    "placed",
                    "placed",
                    &spec,
                    &target,
                    "",
                    format!("placed {id} v{} on {target}", spec.version),
                ),
            };
            self.store.put_process(&record, &what).await?;
            st.put(record);
            // A replacement that moved launchers leaves its old copy to revoke.
            if let Some(old) = previous.as_ref().and_then(|p| p.launcher_id.clone())
                && old != target
            {
                self.schedule(&mut st, &old, &id, DeliveryKind::Revoke { grace: 0 });
            }
            // Held until what it depends on runs; a heartbeat of its
            // launcher delivers it then (drift: placed there, not running
            // there).
            let waiting = st.dependencies_waiting(&spec);
            (target, previous, waiting)
        };

        if let Some(waiting) = waiting {
            self.batch.lock().expect("poisoned").history.push((
                id.clone(),
                event(
                    "held",
                    spec.version,
                    &target,
                    format!("until its dependencies run: {waiting}"),
                ),
            ));
            return Ok(Assigned {
                unit: unit_of(&spec),
                message: format!(
                    "placed {id} v{} on {target}; held until its dependencies run: {waiting}",
                    spec.version
                ),
                launcher: target,
                applied: String::new(),
            });
        }
        let Some(address) = self.address_of(&target).await else {
            return Err(FleetError::NotFound {
                what: "launcher",
                id: target,
            });
        };
        // The push runs on its own, holding the process's lock, and
        // settles the placement however long it takes; this call waits for
        // it only so long.
        let budget = {
            let usual = self.interval * ACK_INTERVALS;
            deadline.map_or(usual, |d| usual.min(d / 2))
        };
        let push = {
            let this = self.clone();
            let (target, spec) = (target.clone(), spec.clone());
            tokio::spawn(async move {
                let settled = this.push_placed(&target, &address, spec, previous).await;
                drop(guard);
                settled
            })
        };
        match tokio::time::timeout(budget, push).await {
            Ok(joined) => joined.map_err(|e| {
                FleetError::Internal(format!(
                    "the push of {id} to {target} ended abnormally: {e}"
                ))
            })?,
            Err(_) => {
                let silent = self.silence_of(&target).await;
                Ok(Assigned {
                    unit: unit_of(&spec),
                    message: pending_message(&id, spec.version, &target, budget, silent),
                    launcher: target,
                    applied: PENDING.into(),
                })
            }
        }
    }

    /// The answer to an assignment of the version already placed.
    async fn unchanged(&self, id: &str, version: i64) -> Option<Assigned> {
        let st = self.state.lock().await;
        let p = st
            .processes
            .get(id)
            .filter(|p| p.version() == version && p.state != PlacementState::Revoking)?;
        let on = p.launcher_id.clone().unwrap_or_default();
        let pending = st.pending.contains(&on, id);
        Some(Assigned {
            unit: unit_of(&p.spec),
            message: format!(
                "{id} v{} is already placed on {on}{}; nothing changed",
                p.version(),
                if pending { " (delivery pending)" } else { "" }
            ),
            launcher: on,
            applied: "unchanged".into(),
        })
    }

    /// How long since `launcher` last reported.
    async fn silence_of(&self, launcher: &str) -> Duration {
        let st = self.state.lock().await;
        st.launchers.get(launcher).map_or(Duration::ZERO, |l| {
            placement::silence(st.last_heard(l), clock::unix_ms())
        })
    }

    /// Push a placed assignment to its launcher and settle the placement
    /// by the answer: delivered; pending and retried (unreachable); or
    /// undone (refused).
    async fn push_placed(
        &self,
        target: &str,
        address: &str,
        spec: pb::ProcessAssignment,
        previous: Option<ProcessRecord>,
    ) -> Result<Assigned, FleetError> {
        let id = spec.process_id.clone();
        match self.dispatcher.assign(target, address, &spec).await {
            Ok(ack) => {
                {
                    let mut st = self.state.lock().await;
                    // History, not state: written with the next heartbeat
                    // batch (within a second), not as a second sync before
                    // the answer; batched under the state's lock, as the
                    // state it changes (a listing's revision counts it).
                    self.batch.lock().expect("poisoned").history.push((
                        id.clone(),
                        told(
                            "delivered",
                            "delivered",
                            &spec,
                            target,
                            ack.message.clone(),
                            format!(
                                "delivered {id} v{} to {target}: {}",
                                spec.version, ack.message
                            ),
                        ),
                    ));
                    self.flush_soon.notify_one();
                    st.pending.remove(target, &id);
                    if st.pending.reached(target, Instant::now()) {
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
                    launcher: target.to_owned(),
                    applied: ack.applied,
                })
            }
            Err(status) if unreachable(&status) => {
                let mut st = self.state.lock().await;
                self.schedule(&mut st, target, &id, DeliveryKind::Assign);
                // Retried when the launcher's backoff ends.
                st.pending.failed(
                    target,
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
                    launcher: target.to_owned(),
                    applied: PENDING.into(),
                })
            }
            Err(status) => {
                // The launcher refused it (e.g. its binary is not allowed on
                // that host): the placement is undone.
                let mut st = self.state.lock().await;
                let why = told(
                    "refused",
                    "refused",
                    &spec,
                    target,
                    status.message(),
                    format!(
                        "{target} refused {id} v{}: {}",
                        spec.version,
                        status.message()
                    ),
                );
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
                    launcher: target.to_owned(),
                    status,
                })
            }
        }
    }

    pub async fn revoke(
        self: &Arc<Self>,
        req: Revocation,
    ) -> Result<pb::ProcessRevocationAck, FleetError> {
        self.revoke_within(req, None).await
    }

    /// [`Self::revoke`] for a caller that waits at most `deadline`: a
    /// launcher that has not finished the stop within half of it (it may
    /// not hear the push: cut from this admin only) gets the revocation
    /// later, and the answer says it is recorded (UNAVAILABLE).
    pub async fn revoke_within(
        self: &Arc<Self>,
        req: Revocation,
        deadline: Option<Duration>,
    ) -> Result<pb::ProcessRevocationAck, FleetError> {
        let id = req.process_id.clone();
        let guard = self.locks.lock_owned(&id).await;
        let launcher = {
            let mut st = self.state.lock().await;
            let rec = st
                .processes
                .get_mut(&id)
                .ok_or_else(|| FleetError::NotFound {
                    what: "process",
                    id: id.clone(),
                })?;
            if let Some(want) = &req.launcher_id
                && rec.launcher_id.as_ref() != Some(want)
            {
                return Err(FleetError::BadRequest {
                    field: "launcher_id".into(),
                    reason: format!(
                        "process {id} is placed on {}, not {}",
                        rec.launcher_id.as_deref().unwrap_or("no launcher"),
                        want
                    ),
                });
            }
            if rec.state != PlacementState::Revoking {
                // What needs it stays: refuse rather than stop (BindsTo=)
                // or orphan it.
                let by = st.dependents_of(&id);
                if !by.is_empty() {
                    return Err(FleetError::Needed { id, by });
                }
                let rec = st.processes.get_mut(&id).expect("looked up above");
                // Durable first: memory changes only once the store has it.
                let mut revoking = rec.clone();
                revoking.state = PlacementState::Revoking;
                revoking.updated_at_ms = clock::unix_ms();
                let launcher = revoking.launcher_id.clone().unwrap_or_default();
                self.store
                    .put_process(
                        &revoking,
                        &told(
                            "revoking",
                            "revoking",
                            &revoking.spec,
                            &launcher,
                            "",
                            format!("revoking {id} v{} from {launcher}", revoking.version()),
                        ),
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
        // A launcher that has missed a heartbeat is not waited for: the
        // revocation is recorded, and delivered once it answers (or with its
        // next registration).
        let silent = self.silence_of(&launcher).await;
        if silent >= self.interval * placement::LATE_AFTER_MISSED {
            let mut st = self.state.lock().await;
            self.schedule(
                &mut st,
                &launcher,
                &id,
                DeliveryKind::Revoke {
                    grace: req.graceful_timeout_seconds,
                },
            );
            return Err(FleetError::Unreachable {
                launcher,
                reason: format!("it has not reported for {:.1} s", silent.as_secs_f64()),
            });
        }
        let grace = req.graceful_timeout_seconds;
        let push = {
            let this = self.clone();
            let (id, launcher) = (id.clone(), launcher.clone());
            tokio::spawn(async move {
                let settled = this.push_revoke(&id, &launcher, grace).await;
                drop(guard);
                settled
            })
        };
        let Some(budget) = deadline.map(|d| d / 2) else {
            return push.await.map_err(|e| {
                FleetError::Internal(format!("the revocation of {id} ended abnormally: {e}"))
            })?;
        };
        match tokio::time::timeout(budget, push).await {
            Ok(joined) => joined.map_err(|e| {
                FleetError::Internal(format!("the revocation of {id} ended abnormally: {e}"))
            })?,
            Err(_) => Err(FleetError::Unreachable {
                launcher,
                reason: format!(
                    "it has not finished within {:.1} s, half the caller's deadline",
                    budget.as_secs_f64()
                ),
            }),
        }
    }

    /// Push a recorded revocation to its launcher and settle it by the
    /// answer: forgotten, or scheduled again (unreachable).
    async fn push_revoke(
        &self,
        id: &str,
        launcher: &str,
        grace: i32,
    ) -> Result<pb::ProcessRevocationAck, FleetError> {
        let (id, launcher) = (id.to_owned(), launcher.to_owned());
        let address = self.address_of(&launcher).await.unwrap_or_default();
        match self
            .dispatcher
            .revoke(&address, &launcher, &id, grace)
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
                self.schedule(&mut st, &launcher, &id, DeliveryKind::Revoke { grace });
                Err(FleetError::Unreachable {
                    launcher,
                    reason: s.message().to_owned(),
                })
            }
            Err(status) => Err(FleetError::Refused { launcher, status }),
        }
    }
}
