//! Launchers registering (their registration checked into a
//! [`Registration`] at the edge), and handing back what the admin lost.

use std::collections::BTreeMap;

use prost::Message;

use super::{Fleet, FleetError, State, event, told};
use crate::{
    admin::{
        events, placement,
        store::{LauncherRecord, PlacementState, ProcessRecord, StoreError},
    },
    clock,
    model::{Assignment, Policy, ProcessType},
    pb::prism::{self as pb, admin::v1 as apb},
    settings::is_token,
};

/// Bounds of a registration's free-form fields.
pub const MAX_ADDRESS_BYTES: usize = 256;
pub const MAX_LABEL_BYTES: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_VALUE_BYTES: usize = 256;

/// A launcher's registration past the edge: every free-form field bounded
/// and checked, naming the field that is not; its process types known,
/// sorted and unique.
#[derive(Clone, Debug)]
pub struct Registration {
    pub launcher_id: String,
    pub address: String,
    pub region: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub process_types: Vec<String>,
    pub max_processes: u32,
    pub metadata: BTreeMap<String, String>,
    pub held: Vec<pb::HeldProcess>,
    pub disconnect_stops: Vec<pb::DisconnectStop>,
}

impl TryFrom<pb::LauncherRegistration> for Registration {
    type Error = FleetError;

    fn try_from(wire: pb::LauncherRegistration) -> Result<Self, FleetError> {
        let bad = |field: &str, reason: String| FleetError::BadRequest {
            field: field.into(),
            reason,
        };
        if !is_token(&wire.launcher_id) {
            return Err(bad(
                "launcher_id",
                format!(
                    "{:?} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
                    wire.launcher_id
                ),
            ));
        }
        crate::auth::dial::Address::parse(&wire.address).map_err(|e| bad("address", e))?;
        if wire.address.len() > MAX_ADDRESS_BYTES {
            return Err(bad(
                "address",
                format!("longer than {MAX_ADDRESS_BYTES} bytes"),
            ));
        }
        if !wire.region.is_empty() && !is_token(&wire.region) {
            return Err(bad(
                "region",
                format!(
                    "{:?} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
                    wire.region
                ),
            ));
        }
        if wire.version.len() > MAX_LABEL_BYTES || wire.version.chars().any(char::is_control) {
            return Err(bad(
                "version",
                format!("at most {MAX_LABEL_BYTES} bytes, no control characters"),
            ));
        }
        if wire.capabilities.len() > 16 || wire.process_types.len() > 16 {
            return Err(bad("capabilities", "more than 16 entries".into()));
        }
        if wire.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(bad(
                "metadata",
                format!("more than {MAX_METADATA_ENTRIES} entries"),
            ));
        }
        if let Some((k, _)) = wire.metadata.iter().find(|(k, v)| {
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
        if !(1..=100_000).contains(&wire.max_processes) {
            return Err(bad(
                "max_processes",
                format!("{} is outside 1..=100000", wire.max_processes),
            ));
        }
        if wire.held.len() > 100_000 {
            return Err(bad("held", "more than 100000 entries".into()));
        }
        if let Some(h) = wire.held.iter().find(|h| !is_token(&h.process_id)) {
            return Err(bad(
                "held",
                format!("process id {:?} is not a valid id", h.process_id),
            ));
        }
        if wire.disconnect_stops.len() > 100_000 {
            return Err(bad("disconnect_stops", "more than 100000 entries".into()));
        }
        if let Some(d) = wire
            .disconnect_stops
            .iter()
            .find(|d| !is_token(&d.process_id))
        {
            return Err(bad(
                "disconnect_stops",
                format!("process id {:?} is not a valid id", d.process_id),
            ));
        }
        let known = |t: &str| ProcessType::named(t).is_some();
        let mut types: Vec<String> = if wire.process_types.is_empty() {
            wire.capabilities
                .iter()
                .filter(|c| known(c))
                .cloned()
                .collect()
        } else {
            if let Some(t) = wire.process_types.iter().find(|t| !known(t)) {
                return Err(bad("process_types", format!("unknown process type {t:?}")));
            }
            wire.process_types.clone()
        };
        types.sort();
        types.dedup();
        if types.is_empty() {
            return Err(bad("process_types", "names no process type".into()));
        }
        Ok(Self {
            launcher_id: wire.launcher_id,
            address: wire.address,
            region: wire.region,
            version: wire.version,
            capabilities: wire.capabilities,
            process_types: types,
            max_processes: wire.max_processes as u32,
            metadata: wire.metadata.into_iter().collect(),
            held: wire.held,
            disconnect_stops: wire.disconnect_stops,
        })
    }
}

/// What a launcher hands back after its registration asked for it, past
/// the edge: the assignments that pass the structural checks, and the ids
/// of those that do not, with why (each refused alone).
#[derive(Clone, Debug)]
pub struct Reclaim {
    pub launcher_id: String,
    pub processes: Vec<Assignment>,
    pub invalid: Vec<(String, String)>,
}

impl From<pb::ReclaimRequest> for Reclaim {
    fn from(wire: pb::ReclaimRequest) -> Self {
        let policy = Policy::structural();
        let (mut processes, mut invalid) = (Vec::new(), Vec::new());
        for spec in wire.processes {
            let id = spec.process_id.clone();
            match Assignment::try_from((spec, &policy)) {
                Ok(a) => processes.push(a),
                Err(e) => invalid.push((id, e.to_string())),
            }
        }
        Self {
            launcher_id: wire.launcher_id,
            processes,
            invalid,
        }
    }
}

impl Fleet {
    pub async fn register(
        &self,
        reg: Registration,
    ) -> Result<pb::LauncherRegistrationAck, FleetError> {
        let now = clock::unix_ms();
        let mut st = self.state.lock().await;
        let previous = st.launchers.get(&reg.launcher_id).cloned();
        let record = LauncherRecord {
            id: reg.launcher_id.clone(),
            address: reg.address.clone(),
            region: reg.region.clone(),
            version: reg.version.clone(),
            capabilities: reg.capabilities.clone(),
            process_types: reg.process_types.clone(),
            max_processes: reg.max_processes,
            metadata: reg.metadata.clone(),
            registered_at_ms: now,
            last_heartbeat_ms: now,
            draining: previous.as_ref().is_some_and(|p| p.draining),
            resources: None,
        };
        let registered = events::launcher(
            "registered",
            &record,
            apb::LauncherChange {
                health: "healthy".into(),
                last_heartbeat_unix_ms: now,
                ..Default::default()
            },
            format!(
                "launcher {} registered from {}{}",
                record.id,
                record.address,
                if previous.is_some() { " again" } else { "" }
            ),
        );
        self.store.upsert_launcher(&record, &[registered]).await?;
        if let Some(prev) = &previous
            && prev.address != record.address
        {
            self.dispatcher.forget(&prev.address);
        }
        st.launchers.insert(record.id.clone(), record);
        st.registered.insert(reg.launcher_id.clone());
        let reclaim = self.lost(&mut st, &reg.launcher_id, &reg.held).await?;
        // A process waiting for its dependencies is not handed over, unless
        // the launcher runs it already.
        let initial: Vec<pb::ProcessAssignment> = st
            .on(&reg.launcher_id)
            .filter(|p| p.state == PlacementState::Placed && !reclaim.contains(&p.id().to_owned()))
            .filter(|p| {
                st.dependencies_waiting(&p.spec).is_none()
                    || reg.held.iter().any(|h| h.process_id == p.id())
            })
            .map(|p| p.spec.clone())
            .collect();
        // The launcher reconciles to `initial`, which delivers every pending
        // assignment and revocation at once.
        st.pending.remove_launcher(&reg.launcher_id);
        let history = self.reconnected(&st, &reg, &reclaim);
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
            assigned_capacity: reg.max_processes as i32,
            initial_processes: initial,
            heartbeat_interval_ms: self.interval.as_millis() as i64,
            reclaim,
            epoch: self.dispatcher.epoch(),
        })
        .inspect(|_| self.batch.lock().expect("poisoned").history.extend(history))
    }

    /// What a launcher's registration tells of its time cut off, for the
    /// processes' histories: what it stopped on its own
    /// (`on_disconnect.stop_after_ms`), and each copy it held of a process
    /// placed elsewhere meanwhile, which it stops now (`initial` no longer
    /// names it).
    fn reconnected(
        &self,
        st: &State,
        reg: &Registration,
        reclaim: &[String],
    ) -> Vec<(String, crate::admin::store::HistoryEvent)> {
        let launcher = &reg.launcher_id;
        let mut events = Vec::new();
        for d in &reg.disconnect_stops {
            let mut e = event(
                "stopped-disconnected",
                d.version,
                launcher,
                format!(
                    "{launcher} stopped it after {:.1} s without an answer from any admin \
                     (its on_disconnect.stop_after_ms)",
                    d.silent_ms as f64 / 1000.0
                ),
            );
            e.at_ms = d.stopped_at_ms;
            if let Some(p) = st.processes.get(&d.process_id) {
                let mut w = events::process(
                    "stopped",
                    &p.spec,
                    launcher,
                    format!(
                        "{launcher} stopped {} while cut off: {}",
                        d.process_id, e.detail
                    ),
                );
                w.at_unix_ms = d.stopped_at_ms;
                if let Some(change) = w.process.as_mut() {
                    change.status = "stopped".into();
                    change.version = d.version;
                }
                e.watched = Some(w);
            }
            events.push((d.process_id.clone(), e));
        }
        for h in &reg.held {
            let Some(p) = st.processes.get(&h.process_id) else {
                continue;
            };
            let elsewhere = p.launcher_id.as_deref().filter(|l| *l != launcher.as_str());
            if let Some(other) = elsewhere
                && !reclaim.contains(&h.process_id)
                && !st.kept_on(launcher, &h.process_id)
            {
                let detail = format!(
                    "{launcher} came back holding v{} from before it was cut off; the process \
                     runs on {other} now, so {launcher} stops its copy",
                    h.version
                );
                let mut e = told(
                    "stale-copy-stopped",
                    "stopped",
                    &p.spec,
                    launcher,
                    detail.clone(),
                    detail,
                );
                e.version = h.version;
                events.push((h.process_id.clone(), e));
                tracing::warn!(
                    prism_launcher_id = %launcher,
                    prism_process_id = %h.process_id,
                    "{launcher} came back holding {}, which runs on {other} now; it stops its copy",
                    h.process_id
                );
            }
        }
        events
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
    pub async fn reclaim(&self, req: Reclaim) -> Result<pb::ReclaimAck, FleetError> {
        let launcher = req.launcher_id;
        let mut ack = pb::ReclaimAck::default();
        for (id, why) in req.invalid {
            let mut st = self.state.lock().await;
            st.reclaimable.remove(&(launcher.clone(), id.clone()));
            tracing::warn!(prism_launcher_id = %launcher, prism_process_id = %id, "not taking {id} back from {launcher}: {why}");
            ack.refused.insert(id, why);
        }
        for assignment in req.processes {
            let spec = assignment.into_parts().1;
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
                    &told(
                        "reclaimed",
                        "placed",
                        &record.spec,
                        &launcher,
                        "its launcher held it; this admin had lost it",
                        format!(
                            "took {id} v{} back from {launcher}, which held it",
                            record.version()
                        ),
                    ),
                )
                .await?;
            tracing::info!(prism_launcher_id = %launcher, prism_process_id = %id, "took {id} v{} back from {launcher}", record.version());
            st.put(record);
            ack.recorded.push(id);
        }
        Ok(ack)
    }
}
