//! `prism.launcher.v1.Launcher` over gRPC. Wire types stop here: requests
//! go through the validation gate, and every error becomes a status in
//! [`to_status`], the one place that decides codes.

use std::{sync::Arc, time::Duration};

use tonic::{Code, Request, Response, Status};

use super::patterns::{Catalog, Ports, service::complete_from_manifest};
use super::supervisor::{AssignOutcome, LauncherError, Supervisor};
use crate::pb::prism::launcher::v1 as lpb;
use crate::{
    model::{Assignment, ProcessType, validate::MAX_ID_BYTES},
    pb::prism::{
        self as pb,
        launcher::v1::{
            GetProcessRequest, ListManifestsRequest, ListManifestsResponse, ListProcessesRequest,
            ListProcessesResponse, PatternManifest, ProcessInfo, SkippedManifest,
            launcher_server::Launcher,
        },
    },
    systemd::SystemdError,
};

/// The longest graceful stop a revocation may ask for.
const MAX_GRACE_SECS: i32 = 3600;

pub struct LauncherService {
    supervisor: Arc<Supervisor>,
    launcher_id: String,
    /// Pattern manifests an assignment may name instead of a binary.
    patterns: Option<(Arc<Catalog>, Arc<Ports>)>,
}

impl LauncherService {
    pub fn new(supervisor: Arc<Supervisor>, launcher_id: String) -> Self {
        Self {
            supervisor,
            launcher_id,
            patterns: None,
        }
    }

    /// Let pattern assignments name a manifest of `catalog`, with ports
    /// from `ports`.
    pub fn with_patterns(mut self, catalog: Arc<Catalog>, ports: Arc<Ports>) -> Self {
        self.patterns = Some((catalog, ports));
        self
    }
}

/// Every launcher error, as a gRPC status naming the field or the cause.
pub fn to_status(e: LauncherError) -> Status {
    let code = match &e {
        LauncherError::Invalid(_) | LauncherError::BadRequest { .. } => Code::InvalidArgument,
        LauncherError::NotCapable { .. }
        | LauncherError::StaleVersion { .. }
        | LauncherError::Needed { .. }
        | LauncherError::UserCollision(_) => Code::FailedPrecondition,
        LauncherError::CapacityExhausted { .. } => Code::ResourceExhausted,
        LauncherError::NotFound { .. } => Code::NotFound,
        LauncherError::Revoking { .. } => Code::Aborted,
        LauncherError::Pending { .. } => Code::Unavailable,
        LauncherError::Systemd(s) => match s {
            SystemdError::Unavailable { .. } | SystemdError::Timeout { .. } => Code::Unavailable,
            SystemdError::NoSuchUnit { .. } => Code::NotFound,
            SystemdError::UnitExists { .. } => Code::AlreadyExists,
            SystemdError::StartFailed { .. }
            | SystemdError::Refused { .. }
            | SystemdError::Credentials { .. }
            | SystemdError::Dbus { .. } => Code::Internal,
        },
        LauncherError::Store(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The call is prism-admin's (its certificate, or a caller trusted with
/// every role naming it in the `prism-placed-by` metadata).
fn from_admin<T>(request: &Request<T>) -> bool {
    crate::auth::placed_by_admin(
        &crate::auth::caller(request),
        request
            .metadata()
            .get(crate::protocol::PLACED_BY_METADATA)
            .and_then(|v| v.to_str().ok()),
    )
}

impl LauncherService {
    /// Fencing: an admin's order names the epoch that decided it; one
    /// older than the newest this launcher obeyed comes from a deposed
    /// leader and is refused (FAILED_PRECONDITION naming both), so a push
    /// in flight across a takeover cannot undo the new leader's decision.
    fn fence<T>(&self, request: &Request<T>, by_admin: bool) -> Result<(), Status> {
        if !by_admin {
            return Ok(());
        }
        let Some(value) = request.metadata().get(crate::protocol::EPOCH_METADATA) else {
            return Ok(());
        };
        let epoch = value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{}: not an epoch",
                    crate::protocol::EPOCH_METADATA
                ))
            })?;
        self.supervisor.contact.obey(epoch).map_err(|e| {
            self.supervisor.metrics.stale_epoch_refusals.inc();
            tracing::warn!("refused an order: {e}");
            Status::failed_precondition(e.to_string())
        })
    }
}

fn check_id(field: &str, id: &str) -> Result<(), LauncherError> {
    let bad = |reason: &str| {
        Err(LauncherError::BadRequest {
            field: field.into(),
            reason: reason.into(),
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_BYTES {
        return bad("longer than 128 bytes");
    }
    Ok(())
}

#[tonic::async_trait]
impl Launcher for LauncherService {
    async fn assign_process(
        &self,
        request: Request<pb::ProcessAssignment>,
    ) -> Result<Response<pb::ProcessAssignmentAck>, Status> {
        let by_admin = from_admin(&request);
        self.fence(&request, by_admin)?;
        let mut wire = request.into_inner();
        let id = wire.process_id.clone();
        let version = wire.version;
        if let Some((catalog, ports)) = &self.patterns {
            complete_from_manifest(&mut wire, catalog, ports, &self.supervisor)?;
        }
        let result = match Assignment::try_from((wire, self.supervisor.policy())) {
            Ok(assignment) => self.supervisor.assign(assignment, by_admin).await,
            Err(e) => Err(e.into()),
        };
        if result.is_err()
            && let Some((_, ports)) = &self.patterns
            && !self.supervisor.holds(&id)
        {
            ports.release(&id);
        }
        let label = match &result {
            Ok(a) => match a.outcome {
                AssignOutcome::Started => "started",
                AssignOutcome::Unchanged => "unchanged",
                AssignOutcome::Adopted => "adopted",
                AssignOutcome::Replaced { .. } => "replaced",
                AssignOutcome::UpdatedInPlace { .. } => "updated_in_place",
                AssignOutcome::StartFailed { .. } => "start_failed",
            },
            Err(LauncherError::Invalid(_) | LauncherError::BadRequest { .. }) => "invalid",
            Err(LauncherError::NotCapable { .. }) => "not_capable",
            Err(LauncherError::CapacityExhausted { .. }) => "capacity_exhausted",
            Err(LauncherError::StaleVersion { .. }) => "stale_version",
            Err(LauncherError::UserCollision(_)) => "user_collision",
            Err(LauncherError::Pending { .. }) => "pending",
            Err(_) => "error",
        };
        self.supervisor.metrics.assignment(label);
        let assigned = result.map_err(|e| {
            // Quoted: the id has not passed validation.
            tracing::info!(prism_process_id = ?id, error = %e, "assignment of {id:?} refused: {e}");
            to_status(e)
        })?;
        let message = match &assigned.outcome {
            AssignOutcome::Started => format!("started {id} v{version} as {}", assigned.unit),
            AssignOutcome::Unchanged => format!("{id} v{version} is already held; nothing changed"),
            AssignOutcome::Adopted => format!(
                "{id} v{version} was already running as {}; kept it",
                assigned.unit
            ),
            AssignOutcome::Replaced { previous, reason } => {
                format!(
                    "replaced {id} v{previous} with v{version} as a new {}{}",
                    assigned.unit,
                    reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            }
            AssignOutcome::UpdatedInPlace { previous } => format!(
                "updated {id} from v{previous} to v{version} in place: {} kept its process",
                assigned.unit
            ),
            AssignOutcome::StartFailed { reason } => format!(
                "{id} v{version} is assigned as {}, but its first start failed: {reason}",
                assigned.unit
            ),
        };
        tracing::info!(prism_process_id = %id, version, unit = %assigned.unit, "{message}");
        Ok(Response::new(pb::ProcessAssignmentAck {
            success: true,
            message,
            launcher_id: self.launcher_id.clone(),
            unit_name: assigned.unit,
            applied: assigned.outcome.applied(),
        }))
    }

    async fn revoke_process(
        &self,
        request: Request<pb::ProcessRevocation>,
    ) -> Result<Response<pb::ProcessRevocationAck>, Status> {
        let by_admin = from_admin(&request);
        self.fence(&request, by_admin)?;
        let r = request.into_inner();
        let checked = (|| {
            check_id("process_id", &r.process_id)?;
            if !r.launcher_id.is_empty() && r.launcher_id != self.launcher_id {
                return Err(LauncherError::BadRequest {
                    field: "launcher_id".into(),
                    reason: format!(
                        "this is launcher {:?}, not {:?}",
                        self.launcher_id, r.launcher_id
                    ),
                });
            }
            match r.graceful_timeout_seconds {
                0 => Ok(None),
                s if (1..=MAX_GRACE_SECS).contains(&s) => Ok(Some(Duration::from_secs(s as u64))),
                s => Err(LauncherError::BadRequest {
                    field: "graceful_timeout_seconds".into(),
                    reason: format!("{s} is outside 1..={MAX_GRACE_SECS} (0 means 30)"),
                }),
            }
        })();
        let grace = checked.map_err(to_status)?;
        // prism-admin checked its whole fleet for what depends on it (and
        // moves or drops processes the launcher cannot see the reason for).
        let revoked = if by_admin {
            self.supervisor.revoke_for_admin(&r.process_id, grace).await
        } else {
            self.supervisor.revoke(&r.process_id, grace).await
        }
        .map_err(to_status)?;
        // A pattern launched by name gives its port pair back.
        if let Some((_, ports)) = &self.patterns {
            ports.release(&r.process_id);
        }
        tracing::info!(
            prism_process_id = %r.process_id,
            exit_code = revoked.exit_code,
            killed = revoked.killed,
            "revoked {} (exit code {})",
            r.process_id,
            revoked.exit_code
        );
        let message = match (revoked.was_running, revoked.killed) {
            (false, _) => format!("revoked {}; it was not running", r.process_id),
            (true, true) => format!(
                "revoked {}; killed after the graceful timeout",
                r.process_id
            ),
            (true, false) => format!("revoked {}; it stopped gracefully", r.process_id),
        };
        Ok(Response::new(pb::ProcessRevocationAck {
            success: true,
            message,
            stopped_at: revoked.stopped_at,
            exit_code: revoked.exit_code,
        }))
    }

    async fn get_process(
        &self,
        request: Request<GetProcessRequest>,
    ) -> Result<Response<ProcessInfo>, Status> {
        let id = request.into_inner().process_id;
        check_id("process_id", &id).map_err(to_status)?;
        match self.supervisor.get(&id).await {
            Some(info) => Ok(Response::new(info)),
            None => Err(to_status(LauncherError::NotFound { id })),
        }
    }

    async fn list_manifests(
        &self,
        _request: Request<ListManifestsRequest>,
    ) -> Result<Response<ListManifestsResponse>, Status> {
        let Some((catalog, _)) = &self.patterns else {
            return Ok(Response::new(ListManifestsResponse::default()));
        };
        Ok(Response::new(ListManifestsResponse {
            patterns_dir: catalog
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            manifests: catalog
                .patterns()
                .map(|m| PatternManifest {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    executable: m.executable.display().to_string(),
                    isolation_level: m.isolation.as_str().into(),
                    description: m.description.clone(),
                    author: m.author.clone(),
                    path: m.path.display().to_string(),
                    health_path: m
                        .healthcheck
                        .as_ref()
                        .map(|h| h.path.clone())
                        .unwrap_or_default(),
                    memory_limit_bytes: m.resources.memory_limit_bytes(),
                    cpu_limit: m.resources.cpu_limit.unwrap_or(0.0),
                })
                .collect(),
            skipped: catalog
                .errors
                .iter()
                .map(|e| SkippedManifest {
                    path: e.path.display().to_string(),
                    field: e.field.clone().unwrap_or_default(),
                    reason: e.reason.clone(),
                })
                .collect(),
        }))
    }

    async fn list_processes(
        &self,
        request: Request<ListProcessesRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        let r = request.into_inner();
        if !r.process_type.is_empty() && ProcessType::named(&r.process_type).is_none() {
            return Err(to_status(LauncherError::BadRequest {
                field: "process_type".into(),
                reason: format!("unknown process type {:?}", r.process_type),
            }));
        }
        if !r.status.is_empty()
            && crate::health::Status::parse(&r.status).is_none()
            && !matches!(
                r.status.as_str(),
                "running" | "starting" | "stopping" | "failed" | "stopped"
            )
        {
            return Err(to_status(LauncherError::BadRequest {
                field: "status".into(),
                reason: format!("unknown status {:?}", r.status),
            }));
        }
        Ok(Response::new(
            self.supervisor
                .list(&r.process_type, &r.namespace, &r.status)
                .await,
        ))
    }

    type WatchProcessesStream = process_watch::Changes;

    async fn watch_processes(
        &self,
        request: Request<lpb::WatchProcessesRequest>,
    ) -> Result<Response<Self::WatchProcessesStream>, Status> {
        let r = request.into_inner();
        Ok(Response::new(process_watch::watch(
            self.supervisor.clone(),
            r,
        )))
    }
}

/// `WatchProcesses`: the held processes listed, then each again as its
/// state changes, read from the supervisor after each change it signals.
mod process_watch {
    use std::{
        collections::HashMap,
        pin::Pin,
        sync::Arc,
        task::{Context, Poll},
        time::Duration,
    };

    use tokio::sync::mpsc;
    use tonic::Status;

    use super::{Supervisor, lpb};
    use crate::pb::prism as pb;

    /// Changes waiting for a watcher: more, and it is ended.
    const QUEUE: usize = 1024;
    /// Signals of the next few milliseconds are read together.
    const GATHER: Duration = Duration::from_millis(10);

    pub struct Changes(mpsc::Receiver<Result<lpb::ProcessChange, Status>>);

    impl futures_util::Stream for Changes {
        type Item = Result<lpb::ProcessChange, Status>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }

    /// What a change is judged by (status, pid, restarts, exit reason, last
    /// error, version, sub-state): not usage figures.
    type State = (String, i32, i32, String, String, i64, String);

    fn state(h: &pb::ProcessHealth) -> State {
        (
            h.detailed_status.clone(),
            h.pid,
            h.restart_count,
            h.exit_reason.clone(),
            h.last_error.clone(),
            h.version,
            h.sub_state.clone(),
        )
    }

    pub fn watch(supervisor: Arc<Supervisor>, r: lpb::WatchProcessesRequest) -> Changes {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut changes = supervisor.changed.subscribe();
        tokio::spawn(async move {
            let mut known: HashMap<String, State> = HashMap::new();
            let mut first = true;
            loop {
                let list = supervisor.list("", &r.namespace, "").await;
                let now = crate::clock::unix_ms();
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                for p in list.processes {
                    let id = p
                        .assignment
                        .as_ref()
                        .map(|a| a.process_id.clone())
                        .unwrap_or_default();
                    if !r.process_id.is_empty() && id != r.process_id {
                        continue;
                    }
                    seen.insert(id.clone());
                    let s = state(p.health.as_ref().unwrap_or(&Default::default()));
                    if known.get(&id) == Some(&s) {
                        continue;
                    }
                    known.insert(id, s);
                    out.push(lpb::ProcessChange {
                        kind: if first { "listed" } else { "changed" }.into(),
                        at_unix_ms: now,
                        process: Some(p),
                    });
                }
                let gone: Vec<String> = known
                    .keys()
                    .filter(|id| !seen.contains(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    known.remove(&id);
                    out.push(lpb::ProcessChange {
                        kind: "removed".into(),
                        at_unix_ms: now,
                        process: Some(lpb::ProcessInfo {
                            assignment: Some(pb::ProcessAssignment {
                                process_id: id,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    });
                }
                if first {
                    out.push(lpb::ProcessChange {
                        kind: "synced".into(),
                        at_unix_ms: now,
                        process: None,
                    });
                    first = false;
                }
                for change in out {
                    match tx.try_send(Ok(change)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The queue is full: the last slot the watcher
                            // frees takes the status that ends it.
                            let _ = tx
                                .send(Err(Status::resource_exhausted(format!(
                                    "this watcher fell more than {QUEUE} changes behind and \
                                     was ended; watch again"
                                ))))
                                .await;
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tokio::time::sleep(GATHER).await;
                        changes.borrow_and_update();
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Changes(rx)
    }
}
