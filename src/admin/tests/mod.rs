//! The fleet against an in-memory SQLite store and scripted fake launchers
//! (the generated `Launcher` server, on Unix sockets in a temporary
//! directory): placement, delivery, revocation, registration, drift and
//! liveness, without root or systemd.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::{Request, Response, Status};

use super::{
    dispatch::Dispatcher,
    fleet::{DeliveryKind, Fleet, FleetError, Heartbeat, Reclaim, Registration, Revocation},
    placement::{self, Liveness, NoCandidate},
    store::{AdminStore, PlacementState, SqliteStore},
};
use crate::{
    model::{Assignment, Policy},
    pb::prism::{
        self as pb,
        launcher::v1::{
            GetProcessRequest, ListProcessesRequest, ListProcessesResponse, ProcessInfo,
            launcher_server::{Launcher, LauncherServer},
        },
    },
    serve::Stopper,
};

mod conformance;
mod launchers;
mod placing;
mod stack;

pub(super) const INTERVAL: Duration = Duration::from_secs(10);

/// What a fake launcher was asked, and what it answers.
#[derive(Default)]
pub(super) struct Script {
    assigned: Vec<(pb::ProcessAssignment, Option<String>)>,
    revoked: Vec<String>,
    /// Process ids it refuses (FAILED_PRECONDITION).
    refuse: BTreeSet<String>,
    held: BTreeSet<String>,
}

#[derive(Clone, Default)]
pub(super) struct FakeLauncher(Arc<Mutex<Script>>);

impl FakeLauncher {
    pub(super) fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap()
    }

    pub(super) fn assigned_ids(&self) -> Vec<String> {
        self.script()
            .assigned
            .iter()
            .map(|(a, _)| a.process_id.clone())
            .collect()
    }

    /// Serve on `path` until the returned sender is dropped.
    pub(super) fn serve(&self, path: &Path) -> tokio::sync::oneshot::Sender<()> {
        let listener = tokio::net::UnixListener::bind(path).expect("bind");
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(LauncherServer::new(self.clone()))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            });
        tokio::spawn(server);
        tx
    }
}

#[tonic::async_trait]
impl Launcher for FakeLauncher {
    async fn assign_process(
        &self,
        request: Request<pb::ProcessAssignment>,
    ) -> Result<Response<pb::ProcessAssignmentAck>, Status> {
        let placed_by = request
            .metadata()
            .get(crate::protocol::PLACED_BY_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let a = request.into_inner();
        let mut s = self.script();
        if s.refuse.contains(&a.process_id) {
            return Err(Status::failed_precondition(format!(
                "config.binary: {} is not allowed here",
                a.config.as_ref().map_or("", |c| c.binary.as_str())
            )));
        }
        s.held.insert(a.process_id.clone());
        s.assigned.push((a.clone(), placed_by));
        Ok(Response::new(pb::ProcessAssignmentAck {
            success: true,
            message: "started".into(),
            unit_name: format!("prism-pattern-{}.service", a.process_id),
            ..Default::default()
        }))
    }

    async fn revoke_process(
        &self,
        request: Request<pb::ProcessRevocation>,
    ) -> Result<Response<pb::ProcessRevocationAck>, Status> {
        let r = request.into_inner();
        let mut s = self.script();
        if !s.held.remove(&r.process_id) {
            return Err(Status::not_found(format!("no process {}", r.process_id)));
        }
        s.revoked.push(r.process_id);
        Ok(Response::new(pb::ProcessRevocationAck {
            success: true,
            message: "stopped".into(),
            stopped_at: 1,
            exit_code: 0,
        }))
    }

    async fn get_process(
        &self,
        _: Request<GetProcessRequest>,
    ) -> Result<Response<ProcessInfo>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn list_manifests(
        &self,
        _: Request<crate::pb::prism::launcher::v1::ListManifestsRequest>,
    ) -> Result<Response<crate::pb::prism::launcher::v1::ListManifestsResponse>, Status> {
        Ok(Response::new(Default::default()))
    }

    async fn list_processes(
        &self,
        _: Request<ListProcessesRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    type WatchProcessesStream =
        futures_util::stream::Empty<Result<crate::pb::prism::launcher::v1::ProcessChange, Status>>;

    async fn watch_processes(
        &self,
        _: Request<crate::pb::prism::launcher::v1::WatchProcessesRequest>,
    ) -> Result<Response<Self::WatchProcessesStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

pub(super) struct Harness {
    fleet: Arc<Fleet>,
    dir: tempfile::TempDir,
    /// Launchers by id, with their serving handles (dropped: down).
    launchers: HashMap<String, (FakeLauncher, Option<tokio::sync::oneshot::Sender<()>>)>,
    /// Stops the loops a test starts.
    stopper: Stopper,
}

pub(super) async fn harness() -> Harness {
    harness_with(None).await
}

pub(super) async fn harness_with(reschedule_lost_after: Option<Duration>) -> Harness {
    let store: Arc<dyn AdminStore> = Arc::new(SqliteStore::in_memory().await.expect("store"));
    harness_on(store, reschedule_lost_after).await
}

/// A harness over `store`.
pub(super) async fn harness_on(
    store: Arc<dyn AdminStore>,
    reschedule_lost_after: Option<Duration>,
) -> Harness {
    let fleet = Fleet::open(
        store,
        Dispatcher::new(None, "prism".into(), false),
        crate::admin::Timing {
            replace_after: reschedule_lost_after,
            ..crate::admin::Timing::every(INTERVAL)
        },
    )
    .await
    .expect("fleet");
    Harness {
        fleet,
        dir: tempfile::tempdir().expect("tempdir"),
        launchers: HashMap::new(),
        stopper: Stopper::new(),
    }
}

/// A fleet over the SQLite database in `dir` (as the admin opens it).
pub(super) async fn open_fleet(dir: &Path) -> Arc<Fleet> {
    let store: Arc<dyn AdminStore> = Arc::new(SqliteStore::open(dir).await.unwrap());
    Fleet::open(
        store,
        Dispatcher::new(None, "prism".into(), false),
        crate::admin::Timing::every(INTERVAL),
    )
    .await
    .unwrap()
}

pub(super) fn registration(
    id: &str,
    address: &str,
    types: &[&str],
    max: i32,
) -> pb::LauncherRegistration {
    pb::LauncherRegistration {
        launcher_id: id.into(),
        address: address.into(),
        region: "eu".into(),
        version: "1.0".into(),
        capabilities: types.iter().map(|t| t.to_string()).collect(),
        max_processes: max,
        process_types: types.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

pub(super) fn spec(id: &str, version: i64) -> pb::ProcessAssignment {
    crate::model::tests::pattern_wire(id, version, "/usr/bin/keyvalue-runner")
}

pub(super) fn assignment(id: &str, version: i64) -> Assignment {
    Assignment::try_from((spec(id, version), &Policy::structural())).expect("valid")
}

pub(super) fn checked(reg: pb::LauncherRegistration) -> Registration {
    Registration::try_from(reg).expect("valid registration")
}

pub(super) fn revocation(id: &str) -> Revocation {
    Revocation::try_from(pb::ProcessRevocation {
        process_id: id.into(),
        ..Default::default()
    })
    .expect("valid revocation")
}

impl Harness {
    /// Place `id` at `version` through the fleet, which must succeed.
    pub(super) async fn place(&self, id: &str, version: i64) -> super::fleet::Assigned {
        self.fleet
            .assign(assignment(id, version), None, None)
            .await
            .expect("placed")
    }

    pub(super) fn socket(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.sock"))
    }

    /// A fake launcher, serving (`up`) or not yet, registered with the
    /// fleet.
    pub(super) async fn launcher(
        &mut self,
        id: &str,
        types: &[&str],
        max: i32,
        up: bool,
    ) -> FakeLauncher {
        let fake = FakeLauncher::default();
        let serving = up.then(|| fake.serve(&self.socket(id)));
        let address = format!("unix:{}", self.socket(id).display());
        self.fleet
            .register(checked(registration(id, &address, types, max)))
            .await
            .expect("register");
        self.launchers
            .insert(id.to_owned(), (fake.clone(), serving));
        fake
    }

    /// Take a launcher's server down: once it no longer answers, its
    /// socket is removed too.
    pub(super) async fn down(&mut self, id: &str) {
        drop(self.launchers.get_mut(id).expect("launcher").1.take());
        let socket = self.socket(id);
        until(Duration::from_secs(5), "the server to stop", || {
            let socket = socket.clone();
            async move { !socket.exists() || std::os::unix::net::UnixStream::connect(&socket).is_err() }
        })
        .await;
        let _ = std::fs::remove_file(&socket);
    }

    /// Bring a registered launcher's server up.
    pub(super) fn up(&mut self, id: &str) {
        let socket = self.socket(id);
        let (fake, serving) = self.launchers.get_mut(id).expect("launcher");
        *serving = Some(fake.serve(&socket));
    }

    pub(super) async fn placed_on(&self, id: &str) -> Option<(String, PlacementState)> {
        let st = self.fleet.state.lock().await;
        st.processes
            .get(id)
            .map(|p| (p.launcher_id.clone().unwrap_or_default(), p.state))
    }

    pub(super) async fn pending(&self, launcher: &str, id: &str) -> bool {
        self.fleet.state.lock().await.pending.contains(launcher, id)
    }

    /// The launcher has been silent for `intervals` heartbeat intervals.
    pub(super) async fn silence(&self, launcher: &str, intervals: u32) {
        let mut st = self.fleet.state.lock().await;
        let l = st.launchers.get_mut(launcher).expect("launcher");
        l.last_heartbeat_ms =
            crate::clock::unix_ms() - (INTERVAL * intervals).as_millis() as i64 - 1;
    }
}

/// Wait until `f` holds, for at most `within`.
pub(super) async fn until<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
