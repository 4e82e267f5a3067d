//! prism-admin's gRPC services: the launcher part of the upstream
//! `prism.ControlPlane`, and `prism.admin.v1.Admin` for operators. Every
//! error becomes a status in [`to_status`].

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use super::{
    fleet::{Fleet, FleetError, Registration, Revocation},
    placement::{self},
    store::{HistoryEvent, LauncherRecord, PlacementState, ProcessRecord},
};
use crate::{
    auth,
    model::{Assignment, Policy, ProcessType},
    pb::prism::{
        self as pb,
        admin::v1::{self as apb, admin_server::Admin},
        control_plane_server::ControlPlane,
    },
    protocol::redact,
    unit,
};

/// The most history events one GetProcess returns (the store keeps 200
/// per process).
pub const MAX_HISTORY_LIMIT: i32 = 1000;

pub fn to_status(e: FleetError) -> Status {
    let code = match &e {
        FleetError::Invalid(_) | FleetError::BadRequest { .. } => Code::InvalidArgument,
        FleetError::NoCandidate(_)
        | FleetError::StaleVersion { .. }
        | FleetError::Needed { .. } => Code::FailedPrecondition,
        FleetError::Revoking { .. } => Code::Aborted,
        FleetError::NotFound { .. } => Code::NotFound,
        // The launcher's own verdict (invalid binary on its host...) stands.
        FleetError::Refused { status, .. } => status.code(),
        FleetError::Unreachable { .. } => Code::Unavailable,
        FleetError::Store(_) | FleetError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The caller's deadline from its `grpc-timeout` header ("5S", "250m"…).
fn grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn metadata(request: &Request<impl Sized>, key: &str) -> Option<String> {
    request
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

pub struct ControlPlaneService {
    fleet: Arc<Fleet>,
    gate: auth::Gate,
}

impl ControlPlaneService {
    pub fn new(fleet: Arc<Fleet>, gate: auth::Gate) -> Self {
        Self { fleet, gate }
    }

    /// A launcher acts only as itself: refused (through the gate, counted
    /// and logged) when `launcher_id` is not the caller's.
    fn as_itself(
        &self,
        path: &str,
        caller: &auth::Caller,
        launcher_id: &str,
    ) -> Result<(), Status> {
        auth::acts_as(caller, launcher_id).map_err(|d| self.gate.refuse(path, caller, d))
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn register_launcher(
        &self,
        request: Request<pb::LauncherRegistration>,
    ) -> Result<Response<pb::LauncherRegistrationAck>, Status> {
        let caller = auth::caller(&request);
        let reg = request.into_inner();
        // A launcher registers only as itself; nothing is changed or
        // returned otherwise.
        const PATH: &str = "/prism.ControlPlane/RegisterLauncher";
        self.as_itself(PATH, &caller, &reg.launcher_id)?;
        // A socket path means this host: only a local root may name one.
        if reg.address.starts_with("unix:") && !caller.is_superuser() {
            let d = auth::Denied {
                path: format!("registering the local socket address {:?}", reg.address),
                required: "root on the admin's local socket".into(),
                caller: caller.to_string(),
            };
            return Err(self.gate.refuse(PATH, &caller, d));
        }
        let reg = Registration::try_from(reg).map_err(to_status)?;
        self.fleet
            .register(reg)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn assign_process(
        &self,
        request: Request<pb::ProcessAssignment>,
    ) -> Result<Response<pb::ProcessAssignmentAck>, Status> {
        let region = metadata(&request, crate::protocol::REGION_METADATA);
        let launcher = metadata(&request, crate::protocol::LAUNCHER_METADATA);
        let deadline = metadata(&request, "grpc-timeout").and_then(|t| grpc_timeout(&t));
        let spec = request.into_inner();
        let id = spec.process_id.clone();
        let assigned = match Assignment::try_from((spec, &Policy::structural())) {
            Ok(assignment) => {
                self.fleet
                    .assign_within(assignment, region, launcher, deadline)
                    .await
            }
            Err(e) => Err(e.into()),
        }
        .map_err(|e| {
            tracing::info!(prism_process_id = ?id, "assignment of {id:?} refused: {e}");
            to_status(e)
        })?;
        tracing::info!(prism_process_id = %id, prism_launcher_id = %assigned.launcher, "{}", assigned.message);
        Ok(Response::new(pb::ProcessAssignmentAck {
            success: true,
            message: assigned.message,
            launcher_id: assigned.launcher,
            unit_name: assigned.unit,
            applied: assigned.applied,
        }))
    }

    async fn reclaim_processes(
        &self,
        request: Request<pb::ReclaimRequest>,
    ) -> Result<Response<pb::ReclaimAck>, Status> {
        let caller = auth::caller(&request);
        let req = request.into_inner();
        self.as_itself(
            "/prism.ControlPlane/ReclaimProcesses",
            &caller,
            &req.launcher_id,
        )?;
        self.fleet
            .reclaim(req.into())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn launcher_heartbeat(
        &self,
        request: Request<pb::LauncherHeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatAck>, Status> {
        let caller = auth::caller(&request);
        let hb = request.into_inner();
        self.as_itself(
            "/prism.ControlPlane/LauncherHeartbeat",
            &caller,
            &hb.launcher_id,
        )?;
        Ok(Response::new(self.fleet.heartbeat(hb.into()).await))
    }

    async fn revoke_process(
        &self,
        request: Request<pb::ProcessRevocation>,
    ) -> Result<Response<pb::ProcessRevocationAck>, Status> {
        let deadline = metadata(&request, "grpc-timeout").and_then(|t| grpc_timeout(&t));
        let req = Revocation::try_from(request.into_inner()).map_err(to_status)?;
        let id = req.process_id.clone();
        let ack = self
            .fleet
            .revoke_within(req, deadline)
            .await
            .map_err(to_status)?;
        tracing::info!(prism_process_id = %id, "{}", ack.message);
        Ok(Response::new(ack))
    }
}

fn launcher_info(
    l: &LauncherRecord,
    last_heard: i64,
    used: u32,
    interval: std::time::Duration,
) -> apb::LauncherInfo {
    apb::LauncherInfo {
        launcher_id: l.id.clone(),
        address: l.address.clone(),
        region: l.region.clone(),
        version: l.version.clone(),
        capabilities: l.capabilities.clone(),
        process_types: l.process_types.clone(),
        max_processes: l.max_processes as i32,
        slots_used: used as i32,
        health: placement::liveness(last_heard, crate::clock::unix_ms(), interval)
            .as_str()
            .into(),
        draining: l.draining,
        registered_at_unix_ms: l.registered_at_ms,
        last_heartbeat_unix_ms: last_heard,
        resources: l.resources,
        metadata: l.metadata.clone().into_iter().collect(),
    }
}

fn history(events: Vec<HistoryEvent>) -> Vec<apb::HistoryEvent> {
    events
        .into_iter()
        .map(|e| apb::HistoryEvent {
            at_unix_ms: e.at_ms,
            event: e.event,
            version: e.version,
            launcher_id: e.launcher_id,
            detail: e.detail,
        })
        .collect()
}

/// The status of a process whose launcher is disconnected.
pub const UNKNOWN: &str = "unknown";

/// The operator API's reads, which a follower serves from the database.
pub fn is_read(path: &str) -> bool {
    matches!(
        path.strip_prefix("/prism.admin.v1.Admin/"),
        Some(
            "ListLaunchers"
                | "GetLauncher"
                | "ListProcesses"
                | "GetProcess"
                | "WatchEvents"
                // Not a read, but this admin's own: its page's session.
                | "OpenUiSession"
        )
    )
}

/// Where an admin's operator API reads the fleet from.
#[derive(Clone)]
enum Source {
    /// The leader's fleet, in memory.
    Leading(Arc<Fleet>),
    /// A follower's: loaded from the database for each read.
    Following {
        store: Arc<dyn super::store::AdminStore>,
        interval: std::time::Duration,
    },
}

pub struct AdminService {
    source: Source,
    hub: Arc<super::events::Hub>,
    /// This admin's fleet status page, if it serves one.
    ui: Option<Arc<super::ui::Login>>,
}

impl AdminService {
    /// The leader's service, over its fleet.
    pub fn new(fleet: Arc<Fleet>, hub: Arc<super::events::Hub>) -> Self {
        Self {
            source: Source::Leading(fleet),
            hub,
            ui: None,
        }
    }

    /// With this admin's fleet status page, for `OpenUiSession`.
    pub fn with_ui(mut self, ui: Option<Arc<super::ui::Login>>) -> Self {
        self.ui = ui;
        self
    }

    /// A follower's reads, from the database (`interval`: the fleet's
    /// heartbeats, to judge liveness by).
    pub fn following(
        store: Arc<dyn super::store::AdminStore>,
        interval: std::time::Duration,
        hub: Arc<super::events::Hub>,
    ) -> Self {
        Self {
            source: Source::Following { store, interval },
            hub,
            ui: None,
        }
    }

    /// The fleet to answer from: the leader's, or one loaded afresh.
    async fn fleet(&self) -> Result<Arc<Fleet>, Status> {
        match &self.source {
            Source::Leading(fleet) => Ok(fleet.clone()),
            Source::Following { store, interval } => {
                Fleet::view(store.clone(), *interval).await.map_err(|e| {
                    Status::unavailable(format!(
                        "this prism-admin follows and cannot read the database: {e}"
                    ))
                })
            }
        }
    }

    fn process_info(
        fleet: &Fleet,
        st: &super::fleet::State,
        p: &ProcessRecord,
        events: Vec<HistoryEvent>,
    ) -> apb::ProcessInfo {
        let launcher = p.launcher_id.clone().unwrap_or_default();
        let pending = st.pending.contains(&launcher, p.id());
        let health = st.health.get(p.id());
        let ty: ProcessType = p.spec.process_type.parse().unwrap_or(ProcessType::Pattern);
        // A disconnected launcher's process may run, or may not: the admin
        // says what it last knew, and since when, not that it runs.
        let silent_since = st
            .launchers
            .get(&launcher)
            .map(|l| st.last_heard(l))
            .filter(|last| {
                placement::liveness(*last, crate::clock::unix_ms(), fleet.interval())
                    == placement::Liveness::Disconnected
            });
        let (shown, last_known_status, unknown_since_unix_ms) = match silent_since {
            Some(since) => {
                let mut shown = health.map(|h| h.health.clone()).unwrap_or_default();
                let known = if shown.detailed_status.is_empty() {
                    shown.status.clone()
                } else {
                    shown.detailed_status.clone()
                };
                shown.status = UNKNOWN.into();
                shown.detailed_status = UNKNOWN.into();
                (Some(shown), known, since)
            }
            None => (health.map(|h| h.health.clone()), String::new(), 0),
        };
        apb::ProcessInfo {
            assignment: Some(redact(&p.spec)),
            unit_name: unit::unit_name(ty, p.id()),
            placement: match (p.state, pending) {
                (PlacementState::Placed, true) => "pending".into(),
                (state, _) => state.as_str().into(),
            },
            health: shown,
            health_reported_unix_ms: health.map_or(0, |h| h.reported_at_ms),
            history: history(events),
            launcher_id: launcher,
            last_known_status,
            unknown_since_unix_ms,
        }
    }

    /// Drain or undrain a launcher; answers with the launcher as it is now.
    async fn set_draining(
        &self,
        request: Request<apb::DrainRequest>,
        draining: bool,
    ) -> Result<Response<apb::LauncherInfo>, Status> {
        let id = request.into_inner().launcher_id;
        self.fleet()
            .await?
            .set_draining(&id, draining)
            .await
            .map_err(to_status)?;
        self.get_launcher(Request::new(apb::GetLauncherRequest { launcher_id: id }))
            .await
    }
}

fn not_found(what: &'static str, id: &str) -> Status {
    to_status(FleetError::NotFound {
        what,
        id: id.to_owned(),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_launchers(
        &self,
        _request: Request<apb::ListLaunchersRequest>,
    ) -> Result<Response<apb::ListLaunchersResponse>, Status> {
        let fleet = self.fleet().await?;
        fleet.settle_for_listing().await;
        let st = fleet.state.lock().await;
        let revision = fleet.listing_revision();
        let used = st.used();
        let launchers = st
            .launchers
            .values()
            .map(|l| {
                launcher_info(
                    l,
                    st.last_heard(l),
                    used.get(l.id.as_str()).copied().unwrap_or(0),
                    fleet.interval(),
                )
            })
            .collect();
        Ok(Response::new(apb::ListLaunchersResponse {
            launchers,
            revision,
        }))
    }

    async fn get_launcher(
        &self,
        request: Request<apb::GetLauncherRequest>,
    ) -> Result<Response<apb::LauncherInfo>, Status> {
        let id = request.into_inner().launcher_id;
        let fleet = self.fleet().await?;
        let st = fleet.state.lock().await;
        let used = st.used();
        let l = st
            .launchers
            .get(&id)
            .ok_or_else(|| not_found("launcher", &id))?;
        Ok(Response::new(launcher_info(
            l,
            st.last_heard(l),
            used.get(id.as_str()).copied().unwrap_or(0),
            fleet.interval(),
        )))
    }

    async fn list_processes(
        &self,
        request: Request<apb::ListProcessesRequest>,
    ) -> Result<Response<apb::ListProcessesResponse>, Status> {
        let f = request.into_inner();
        // One look at the state for the whole listing, and the revision
        // it reflects.
        let fleet = self.fleet().await?;
        fleet.settle_for_listing().await;
        let st = fleet.state.lock().await;
        let revision = fleet.listing_revision();
        let mut records: Vec<&ProcessRecord> = st
            .processes
            .values()
            .filter(|p| f.process_type.is_empty() || p.process_type() == f.process_type)
            .filter(|p| {
                f.launcher_id.is_empty() || p.launcher_id.as_deref() == Some(f.launcher_id.as_str())
            })
            .filter(|p| f.namespace.is_empty() || p.spec.namespace == f.namespace)
            .collect();
        // The listing's order: by id.
        records.sort_by(|a, b| a.id().cmp(b.id()));
        let mut processes = Vec::with_capacity(records.len());
        for p in records {
            let info = Self::process_info(&fleet, &st, p, Vec::new());
            let matches = f.status.is_empty()
                || info.placement == f.status
                || info
                    .health
                    .as_ref()
                    .is_some_and(|h| h.detailed_status == f.status || h.status == f.status);
            if matches {
                processes.push(info);
            }
        }
        Ok(Response::new(apb::ListProcessesResponse {
            processes,
            revision,
        }))
    }

    async fn get_process(
        &self,
        request: Request<apb::GetProcessRequest>,
    ) -> Result<Response<apb::ProcessInfo>, Status> {
        let req = request.into_inner();
        let limit = match req.history_limit {
            0 => 20,
            n @ 1..=MAX_HISTORY_LIMIT => n as u32,
            n => {
                return Err(to_status(FleetError::BadRequest {
                    field: "history_limit".into(),
                    reason: format!("{n} is outside 0..={MAX_HISTORY_LIMIT} (0 means 20)"),
                }));
            }
        };
        let fleet = self.fleet().await?;
        let record = fleet
            .state
            .lock()
            .await
            .processes
            .get(&req.process_id)
            .cloned()
            .ok_or_else(|| not_found("process", &req.process_id))?;
        let events = fleet
            .history(&req.process_id, limit)
            .await
            .map_err(|e| to_status(e.into()))?;
        let st = fleet.state.lock().await;
        Ok(Response::new(Self::process_info(
            &fleet, &st, &record, events,
        )))
    }

    async fn drain_launcher(
        &self,
        request: Request<apb::DrainRequest>,
    ) -> Result<Response<apb::LauncherInfo>, Status> {
        self.set_draining(request, true).await
    }

    async fn undrain_launcher(
        &self,
        request: Request<apb::DrainRequest>,
    ) -> Result<Response<apb::LauncherInfo>, Status> {
        self.set_draining(request, false).await
    }

    async fn move_processes(
        &self,
        request: Request<apb::MoveProcessesRequest>,
    ) -> Result<Response<apb::MoveProcessesResponse>, Status> {
        let id = request.into_inner().launcher_id;
        let moved = self
            .fleet()
            .await?
            .move_processes(&id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(apb::MoveProcessesResponse { moved }))
    }

    type WatchEventsStream = super::events::Watch;

    async fn watch_events(
        &self,
        request: Request<apb::WatchRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let watch = self.hub.watch(request.into_inner()).await?;
        Ok(Response::new(watch))
    }

    async fn open_ui_session(
        &self,
        request: Request<apb::OpenUiSessionRequest>,
    ) -> Result<Response<apb::OpenUiSessionResponse>, Status> {
        let caller = auth::caller(&request);
        let Some(ui) = &self.ui else {
            return Err(Status::failed_precondition(
                "this prism-admin serves no fleet status page (started with --ui-listen none)",
            ));
        };
        let opened = ui.open(caller.clone());
        tracing::info!("a fleet status page sign-in address was issued to {caller}");
        Ok(Response::new(opened))
    }
}
