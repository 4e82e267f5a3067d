//! Placing a process, pushing it to its launcher, and revoking it.

use prost::Message;
use tokio::time::Instant;
use tonic::Code;

use super::{Assigned, DeliveryKind, Fleet, FleetError, event, unit_of};
use crate::{
    admin::{
        dispatch::unreachable,
        placement::{self, Liveness, NoCandidate, Request},
        store::{PlacementState, ProcessRecord},
    },
    clock,
    model::Assignment,
    pb::prism as pb,
};

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

impl Fleet {
    /// Place (or keep) a process, persist, push. See the module docs.
    pub async fn assign(
        &self,
        assignment: Assignment,
        region: Option<String>,
        launcher: Option<String>,
    ) -> Result<Assigned, FleetError> {
        let (process, spec) = assignment.into_parts();
        let id = process.id.clone();
        let ty = process.process_type();
        let _guard = self.locks.lock(&id).await;
        let now = clock::unix_ms();
        let (target, previous, waiting) = {
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
                        applied: "unchanged".into(),
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
                process_type: ty.as_str(),
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
                            && c.process_types.iter().any(|t| t == ty.as_str())
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
                    applied: ack.applied,
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
                    applied: String::new(),
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

    pub async fn revoke(&self, req: Revocation) -> Result<pb::ProcessRevocationAck, FleetError> {
        let id = req.process_id.clone();
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
}
