//! `prism.launcher.PatternLauncher`: pattern-launcher's API, each call made
//! into the assignment `prism.launcher.v1.Launcher/AssignProcess` takes, so
//! the same validation, units, desired state and health apply.
//!
//! Process ids follow pattern-launcher's per-isolation keys (`shared`,
//! `ns:<namespace>`, `session:<session>`) after the pattern's name, so the
//! same pattern and key launch the same process again, and two patterns
//! never share one.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{Catalog, Manifest, Ports, manifest, ports::Pair};
use crate::{
    launcher::{
        service::to_status,
        supervisor::{LauncherError, Supervisor},
    },
    model::{Assignment, IsolationLevel, ProcessType},
    pb::prism::{
        self as pb,
        launcher::{
            self as legacy, GetProcessStatusRequest, GetProcessStatusResponse, HealthRequest,
            HealthResponse, LaunchRequest, LaunchResponse, ListPatternsRequest,
            ListPatternsResponse, PatternInfo, TerminateRequest, TerminateResponse,
            pattern_launcher_server::PatternLauncher, v1 as lpb,
        },
    },
};

/// pattern-launcher's graceful stop when a termination names none.
const DEFAULT_TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// The longest graceful stop a call may ask for.
const MAX_GRACE_SECS: i64 = 3600;

/// Response metadata with advice for the caller.
pub const WARNING_METADATA: &str = "prism-launcher-warning";

pub struct PatternService {
    supervisor: Arc<Supervisor>,
    catalog: Arc<Catalog>,
    ports: Arc<Ports>,
    started: std::time::Instant,
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    to_status(LauncherError::BadRequest {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Take back the port pairs of the patterns held (restored from the state
/// directory at start-up), so none is given out twice.
pub fn restore_ports(supervisor: &Supervisor, ports: &Ports) {
    let held: Vec<(String, i32, i32)> = supervisor
        .table()
        .entries
        .values()
        .filter(|e| e.process.process_type() == ProcessType::Pattern)
        .filter_map(|e| {
            let c = e.wire.config.as_ref()?;
            Some((e.process.id.clone(), c.port, c.health_port))
        })
        .collect();
    for (id, port, health) in held {
        if let Ok(port) = u16::try_from(port)
            && ports.range().contains(&port)
            && health == i32::from(port) + 1
            && !ports.restore(&id, port)
        {
            tracing::warn!(prism_process_id = %id, "{id} holds ports {port}-{health}, which another process holds too");
        }
    }
}

impl PatternService {
    /// Serve `catalog`'s patterns, with port pairs from `ports`.
    pub fn new(supervisor: Arc<Supervisor>, catalog: Arc<Catalog>, ports: Arc<Ports>) -> Self {
        Self {
            supervisor,
            catalog,
            ports,
            started: std::time::Instant::now(),
        }
    }
}

/// A port pair for `id` (its own if it has one). When the range is used
/// up, pairs of processes no longer held (revoked by any path) are freed
/// first.
fn take_pair(supervisor: &Supervisor, ports: &Ports, id: &str) -> Result<Pair, Status> {
    if let Some(pair) = ports.take(id) {
        return Ok(pair);
    }
    for owner in ports.owners() {
        if !supervisor.holds(&owner) {
            ports.release(&owner);
        }
    }
    ports.take(id).ok_or_else(|| {
        let range = ports.range();
        Status::resource_exhausted(format!(
            "no free port pair in --pattern-ports {}-{} ({} pairs in use)",
            range.start(),
            range.end(),
            ports.in_use()
        ))
    })
}

/// pattern-launcher's variables but HEALTH_PORT, which every assignment
/// gets from its `health_port`.
fn launcher_variables(
    pattern: &str,
    namespace: &str,
    session: &str,
    pair: Pair,
    id: &str,
) -> [(&'static str, String); 5] {
    [
        ("PATTERN_NAME", pattern.to_owned()),
        ("NAMESPACE", namespace.to_owned()),
        ("SESSION_ID", session.to_owned()),
        ("GRPC_PORT", pair.grpc.to_string()),
        ("PROCESS_ID", id.to_owned()),
    ]
}

/// The level a launch asks for, in the served numbering (0 means the
/// manifest's).
fn isolation_of(req: &LaunchRequest, manifest: &Manifest) -> Result<IsolationLevel, Status> {
    let level = match legacy::IsolationLevel::try_from(req.isolation) {
        Ok(legacy::IsolationLevel::Unspecified) => manifest.isolation,
        Ok(legacy::IsolationLevel::IsolationNone) => IsolationLevel::None,
        Ok(legacy::IsolationLevel::IsolationNamespace) => IsolationLevel::Namespace,
        Ok(legacy::IsolationLevel::IsolationSession) => IsolationLevel::Session,
        Err(_) => {
            return Err(invalid(
                "isolation",
                format!(
                    "{} is not an IsolationLevel (0 unspecified, 1 none, 2 namespace, 3 session)",
                    req.isolation
                ),
            ));
        }
    };
    match level {
        IsolationLevel::Namespace if req.namespace.is_empty() => {
            let advice = if req.isolation == 2 && !req.session_id.is_empty() {
                "; a client built before pattern-launcher renumbered IsolationLevel sends 2 \
                 for ISOLATION_SESSION: regenerate it from launcher.proto (session is 3)"
            } else {
                ""
            };
            Err(invalid(
                "namespace",
                format!("required for ISOLATION_NAMESPACE{advice}"),
            ))
        }
        IsolationLevel::Session if req.session_id.is_empty() => {
            Err(invalid("session_id", "required for ISOLATION_SESSION"))
        }
        level => Ok(level),
    }
}

/// pattern-launcher's key for the level, after the pattern's name.
fn process_id(name: &str, level: IsolationLevel, req: &LaunchRequest) -> String {
    match level {
        IsolationLevel::None => format!("{name}:shared"),
        IsolationLevel::Namespace => format!("{name}:ns:{}", req.namespace),
        IsolationLevel::Session => format!("{name}:session:{}", req.session_id),
    }
}

/// What the launch becomes: the assignment AssignProcess would take.
fn assignment(
    manifest: &Manifest,
    id: &str,
    level: IsolationLevel,
    req: &LaunchRequest,
    ports: Pair,
    grace_secs: i32,
) -> pb::ProcessAssignment {
    // The request's variables, then the manifest's (pattern-launcher's
    // order: the manifest wins), then the launcher's. HEALTH_PORT comes
    // from `health_port`, and LOG_LEVEL from `log_level`, as for any
    // assignment.
    let mut env: BTreeMap<String, String> = req.config.clone().into_iter().collect();
    env.extend(manifest.environment.clone());
    let log_level = env.remove("LOG_LEVEL").unwrap_or_default();
    for (name, value) in
        launcher_variables(&manifest.name, &req.namespace, &req.session_id, ports, id)
    {
        env.insert(name.to_owned(), value);
    }
    let health_check = probe(manifest, i32::from(ports.health));
    let resources = limits(manifest);
    pb::ProcessAssignment {
        process_id: id.to_owned(),
        process_type: ProcessType::Pattern.as_str().into(),
        namespace: req.namespace.clone(),
        version: 1,
        config: Some(pb::ProcessConfig {
            binary: manifest.executable.display().to_string(),
            env: env.into_iter().collect(),
            port: i32::from(ports.grpc),
            health_port: i32::from(ports.health),
            log_level,
            pattern: Some(pb::PatternProcessConfig {
                pattern_type: manifest.name.clone(),
                isolation_level: level.as_str().into(),
                ..Default::default()
            }),
            health_check,
            isolation_level: level.as_str().into(),
            resources: Some(resources),
            graceful_timeout_seconds: grace_secs,
            ..Default::default()
        }),
    }
}

/// The manifest's healthcheck: an HTTP GET of its path on `health_port`.
fn probe(manifest: &Manifest, health_port: i32) -> Option<pb::HealthCheck> {
    manifest.healthcheck.as_ref().map(|h| pb::HealthCheck {
        kind: "http".into(),
        path: h.path.clone(),
        port: health_port,
        interval_ms: h.interval.as_millis() as i64,
        timeout_ms: h.timeout.as_millis() as i64,
        failure_threshold: h.failure_threshold as i32,
        watchdog_ms: 0,
    })
}

/// The manifest's limits, as cgroup limits; its CPU request as a weight
/// (a request of one core is systemd's default weight, 100), so under
/// contention CPU is shared in the ratio of the requests.
fn limits(manifest: &Manifest) -> pb::ResourceLimits {
    let r = &manifest.resources;
    pb::ResourceLimits {
        memory_max_bytes: r.memory_limit_bytes(),
        cpu_millis: r.cpu_limit.map_or(0, |c| (c * 1000.0).round() as i32),
        cpu_weight: r
            .cpu_request
            .map_or(0, |c| (c * 100.0).round().clamp(1.0, 10_000.0) as i32),
        ..Default::default()
    }
}

/// The state pattern-launcher's clients know, from the launcher's verdict.
fn state_of(detailed: &str) -> legacy::ProcessState {
    use crate::health::Status as S;
    use legacy::ProcessState as P;
    match S::parse(detailed) {
        Some(S::Starting | S::Restarting) => P::StateStarting,
        Some(S::Running | S::Unhealthy) => P::StateRunning,
        Some(S::Stopping) => P::StateTerminating,
        Some(S::Stopped) => P::StateTerminated,
        Some(S::CircuitOpen | S::Failed) => P::StateFailed,
        None => P::StateUnspecified,
    }
}

/// "None", "Namespace" or "Session", as pattern-launcher counted them.
fn isolation_name(level: &str) -> &'static str {
    match level {
        "none" => "None",
        "session" => "Session",
        _ => "Namespace",
    }
}

/// A pattern process as pattern-launcher described it; None for other types.
fn pattern_info(p: &lpb::ProcessInfo) -> Option<PatternInfo> {
    let a = p.assignment.as_ref()?;
    if ProcessType::named(&a.process_type).unwrap_or(ProcessType::Pattern) != ProcessType::Pattern {
        return None;
    }
    let config = a.config.as_ref();
    let health = p.health.clone().unwrap_or_default();
    let state = state_of(&health.detailed_status);
    Some(PatternInfo {
        pattern_name: config
            .and_then(|c| c.pattern.as_ref())
            .map(|p| p.pattern_type.clone())
            .unwrap_or_default(),
        process_id: a.process_id.clone(),
        state: state as i32,
        address: config
            .filter(|c| c.port > 0)
            .map(|c| format!("localhost:{}", c.port))
            .unwrap_or_default(),
        healthy: health.detailed_status == crate::health::Status::Running.as_str(),
        uptime_seconds: health.uptime_seconds,
        namespace: a.namespace.clone(),
        session_id: config
            .and_then(|c| c.env.get("SESSION_ID").cloned())
            .unwrap_or_default(),
        last_error: health.last_error,
        error_count: health.error_count,
        restart_count: health.restart_count,
        pid: health.pid,
    })
}

fn isolation_of_info(p: &lpb::ProcessInfo, default: IsolationLevel) -> &'static str {
    let level = p
        .assignment
        .as_ref()
        .and_then(|a| a.config.as_ref())
        .map(|c| {
            if c.isolation_level.is_empty() {
                c.pattern
                    .as_ref()
                    .map(|p| p.isolation_level.clone())
                    .unwrap_or_default()
            } else {
                c.isolation_level.clone()
            }
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| default.as_str().to_owned());
    isolation_name(&level)
}

#[tonic::async_trait]
impl PatternLauncher for PatternService {
    async fn launch_pattern(
        &self,
        request: Request<LaunchRequest>,
    ) -> Result<Response<LaunchResponse>, Status> {
        let req = request.into_inner();
        if req.pattern_name.is_empty() {
            return Err(invalid("pattern_name", "required"));
        }
        let Some(manifest) = self.catalog.get(&req.pattern_name) else {
            let known: Vec<&str> = self.catalog.patterns().map(|m| m.name.as_str()).collect();
            let where_ = match &self.catalog.dir {
                Some(dir) => format!("in {}", dir.display()),
                None => "here: the launcher has no --patterns-dir".to_owned(),
            };
            return Err(Status::not_found(format!(
                "pattern_name: no pattern {:?} {where_} (known: {})",
                req.pattern_name,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        let level = isolation_of(&req, manifest)?;
        let id = process_id(&manifest.name, level, &req);
        let field = match level {
            IsolationLevel::None => "pattern_name",
            IsolationLevel::Namespace => "namespace",
            IsolationLevel::Session => "session_id",
        };
        if id.len() > crate::model::validate::MAX_ID_BYTES
            || !id.chars().all(crate::model::validate::is_id_char)
        {
            return Err(invalid(
                field,
                format!(
                    "makes the process id {id:?}, which must be at most {} of A-Z a-z 0-9 . _ : @ -",
                    crate::model::validate::MAX_ID_BYTES
                ),
            ));
        }
        let grace_secs = match req.grace_period_secs {
            0 => 0,
            s if (1..=MAX_GRACE_SECS).contains(&s) => s as i32,
            s => {
                return Err(invalid(
                    "grace_period_secs",
                    format!("{s} is outside 1..={MAX_GRACE_SECS} (0 means 30)"),
                ));
            }
        };
        for key in req.config.keys() {
            if !crate::model::validate::is_env_key(key) {
                return Err(invalid(
                    &format!("config.{key}"),
                    "is not an environment variable name (A-Z a-z 0-9 _, not starting with a digit)",
                ));
            }
            if key != "LOG_LEVEL" && manifest::is_launcher_variable(key) {
                return Err(invalid(
                    &format!("config.{key}"),
                    "is set by the launcher for every pattern",
                ));
            }
        }
        let mut warning = None;
        if req.isolation == legacy::IsolationLevel::IsolationNone as i32
            && !req.namespace.is_empty()
            && manifest.isolation != IsolationLevel::None
        {
            let advice = format!(
                "ISOLATION_NONE (1) with namespace {:?}: one process for every namespace. A client \
                 built before pattern-launcher renumbered IsolationLevel meant ISOLATION_NAMESPACE \
                 by 1; regenerate it from launcher.proto (namespace is 2)",
                req.namespace
            );
            tracing::warn!(prism_process_id = %id, "{advice}");
            warning = Some(advice);
        }

        // The same pattern and key: the process already there.
        let existing = self.supervisor.get(&id).await;
        let info = match existing {
            Some(info) => {
                if info
                    .health
                    .as_ref()
                    .is_some_and(|h| h.detailed_status == "stopping")
                {
                    return Err(Status::aborted(format!(
                        "{id} is being terminated; launch it again once it is gone"
                    )));
                }
                info
            }
            None => {
                let pair = take_pair(&self.supervisor, &self.ports, &id)?;
                let wire = assignment(manifest, &id, level, &req, pair, grace_secs);
                let result = match Assignment::try_from((wire, self.supervisor.policy())) {
                    Ok(a) => self.supervisor.assign(a, false).await,
                    Err(e) => Err(e.into()),
                };
                self.supervisor.metrics.assignment(match &result {
                    Ok(_) => "started",
                    Err(_) => "error",
                });
                match result {
                    Ok(assigned) => {
                        tracing::info!(prism_process_id = %id, unit = %assigned.unit, pattern = %manifest.name, "launched pattern {} as {id} ({})", manifest.name, assigned.unit);
                    }
                    // Recorded: it starts once systemd answers, with its ports.
                    Err(e @ LauncherError::Pending { .. }) => return Err(to_status(e)),
                    Err(e) => {
                        if !self.supervisor.holds(&id) {
                            self.ports.release(&id);
                        }
                        tracing::info!(prism_process_id = %id, error = %e, "launch of pattern {} refused: {e}", manifest.name);
                        return Err(to_status(e));
                    }
                }
                self.supervisor
                    .get(&id)
                    .await
                    .ok_or_else(|| Status::aborted(format!("{id} was terminated meanwhile")))?
            }
        };
        let pattern = pattern_info(&info).unwrap_or_default();
        let mut response = Response::new(LaunchResponse {
            process_id: id,
            state: pattern.state,
            address: pattern.address,
            healthy: pattern.healthy,
            error: String::new(),
        });
        if let Some(w) = warning
            && let Ok(v) = w.parse()
        {
            response.metadata_mut().insert(WARNING_METADATA, v);
        }
        Ok(response)
    }

    async fn list_patterns(
        &self,
        request: Request<ListPatternsRequest>,
    ) -> Result<Response<ListPatternsResponse>, Status> {
        let req = request.into_inner();
        if legacy::ProcessState::try_from(req.state).is_err() {
            return Err(invalid(
                "state",
                format!("{} is not a ProcessState (0 lists every state)", req.state),
            ));
        }
        let all: Vec<PatternInfo> = self
            .supervisor
            .list("pattern", "", "")
            .await
            .processes
            .iter()
            .filter_map(pattern_info)
            .collect();
        let total_count = all.len() as i32;
        let patterns = all
            .into_iter()
            .filter(|p| req.pattern_name.is_empty() || p.pattern_name == req.pattern_name)
            .filter(|p| req.namespace.is_empty() || p.namespace == req.namespace)
            .filter(|p| req.state == 0 || p.state == req.state)
            .collect();
        Ok(Response::new(ListPatternsResponse {
            patterns,
            total_count,
        }))
    }

    async fn terminate_pattern(
        &self,
        request: Request<TerminateRequest>,
    ) -> Result<Response<TerminateResponse>, Status> {
        let req = request.into_inner();
        if req.process_id.is_empty() {
            return Err(invalid("process_id", "required"));
        }
        let grace = match (req.force, req.grace_period_secs) {
            (true, _) => Duration::ZERO,
            (false, 0) => DEFAULT_TERMINATE_GRACE,
            (false, s) if (1..=MAX_GRACE_SECS).contains(&s) => Duration::from_secs(s as u64),
            (false, s) => {
                return Err(invalid(
                    "grace_period_secs",
                    format!("{s} is outside 1..={MAX_GRACE_SECS} (0 means 10)"),
                ));
            }
        };
        let is_pattern = self
            .supervisor
            .get(&req.process_id)
            .await
            .is_some_and(|p| pattern_info(&p).is_some());
        if !is_pattern {
            return Err(Status::not_found(format!(
                "process not found: {}",
                req.process_id
            )));
        }
        let revoked = self
            .supervisor
            .revoke(&req.process_id, Some(grace))
            .await
            .map_err(to_status)?;
        self.ports.release(&req.process_id);
        tracing::info!(
            prism_process_id = %req.process_id,
            exit_code = revoked.exit_code,
            killed = revoked.killed,
            "terminated pattern process {} (exit code {})",
            req.process_id,
            revoked.exit_code
        );
        Ok(Response::new(TerminateResponse {
            success: true,
            error: String::new(),
        }))
    }

    async fn health(
        &self,
        request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let include = request.into_inner().include_processes;
        let default = self.supervisor.policy().default_isolation;
        let listed = self.supervisor.list("pattern", "", "").await.processes;
        let mut distribution: BTreeMap<String, i32> = BTreeMap::new();
        let mut processes = Vec::new();
        let (mut running, mut terminating, mut failed) = (0, 0, 0);
        for p in &listed {
            let Some(info) = pattern_info(p) else {
                continue;
            };
            *distribution
                .entry(isolation_of_info(p, default).to_owned())
                .or_default() += 1;
            match legacy::ProcessState::try_from(info.state) {
                Ok(legacy::ProcessState::StateRunning) => running += 1,
                Ok(legacy::ProcessState::StateTerminating) => terminating += 1,
                Ok(legacy::ProcessState::StateFailed) => failed += 1,
                _ => {}
            }
            if include {
                processes.push(info);
            }
        }
        let total = distribution.values().sum();
        Ok(Response::new(HealthResponse {
            healthy: self.supervisor.systemd.connection_state()
                == crate::systemd::ConnectionState::Connected,
            total_processes: total,
            running_processes: running,
            terminating_processes: terminating,
            failed_processes: failed,
            isolation_distribution: distribution.into_iter().collect(),
            processes,
            uptime_seconds: self.started.elapsed().as_secs() as i64,
        }))
    }

    async fn get_process_status(
        &self,
        request: Request<GetProcessStatusRequest>,
    ) -> Result<Response<GetProcessStatusResponse>, Status> {
        let id = request.into_inner().process_id;
        if id.is_empty() {
            return Err(invalid("process_id", "required"));
        }
        let process = self
            .supervisor
            .get(&id)
            .await
            .as_ref()
            .and_then(pattern_info);
        Ok(Response::new(GetProcessStatusResponse {
            not_found: process.is_none(),
            process,
        }))
    }
}

/// An AssignProcess for a pattern that names a manifest (its
/// `pattern_type`) instead of a binary: the manifest fills what the
/// assignment leaves out (binary, probe, limits, isolation, environment),
/// and the process gets a port pair and pattern-launcher's variables. An
/// assignment with a binary is left as it is. On an error the caller
/// releases nothing: the pair is released here.
pub fn complete_from_manifest(
    wire: &mut pb::ProcessAssignment,
    catalog: &Catalog,
    ports: &Ports,
    supervisor: &Supervisor,
) -> Result<(), Status> {
    let pattern_type = !matches!(
        ProcessType::named(&wire.process_type),
        Some(t) if t != ProcessType::Pattern
    );
    let Some(config) = wire.config.as_mut() else {
        return Ok(());
    };
    if !pattern_type || !config.binary.is_empty() {
        return Ok(());
    }
    let Some(name) = config
        .pattern
        .as_ref()
        .map(|p| p.pattern_type.clone())
        .filter(|n| !n.is_empty())
    else {
        return Ok(());
    };
    let Some(manifest) = catalog.get(&name) else {
        return Err(invalid(
            "config.pattern.pattern_type",
            format!(
                "config.binary is empty and no pattern manifest is named {name:?} ({})",
                match &catalog.dir {
                    Some(dir) => format!("in {}", dir.display()),
                    None => "the launcher has no --patterns-dir".to_owned(),
                }
            ),
        ));
    };
    config.binary = manifest.executable.display().to_string();
    let level = if config.isolation_level.is_empty() {
        config
            .pattern
            .as_ref()
            .map(|p| p.isolation_level.clone())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| manifest.isolation.as_str().to_owned())
    } else {
        config.isolation_level.clone()
    };
    config.isolation_level = level;
    if config.port == 0 && config.health_port == 0 {
        let pair = take_pair(supervisor, ports, &wire.process_id)?;
        config.port = i32::from(pair.grpc);
        config.health_port = i32::from(pair.health);
        for (k, v) in
            launcher_variables(&manifest.name, &wire.namespace, "", pair, &wire.process_id)
        {
            config.env.entry(k.to_owned()).or_insert(v);
        }
    }
    // The assignment's own settings win over the manifest's.
    for (k, v) in &manifest.environment {
        if k == "LOG_LEVEL" {
            if config.log_level.is_empty() {
                config.log_level.clone_from(v);
            }
        } else {
            config.env.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if config.health_check.is_none() {
        config.health_check = probe(manifest, config.health_port);
    }
    if config.resources.is_none() {
        config.resources = Some(limits(manifest));
    }
    Ok(())
}
