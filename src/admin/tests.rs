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
    fleet::{DeliveryKind, Fleet, FleetError, Registration, Revocation},
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
};

const INTERVAL: Duration = Duration::from_secs(10);

/// What a fake launcher was asked, and what it answers.
#[derive(Default)]
struct Script {
    assigned: Vec<(pb::ProcessAssignment, Option<String>)>,
    revoked: Vec<String>,
    /// Process ids it refuses (FAILED_PRECONDITION).
    refuse: BTreeSet<String>,
    held: BTreeSet<String>,
}

#[derive(Clone, Default)]
struct FakeLauncher(Arc<Mutex<Script>>);

impl FakeLauncher {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap()
    }

    fn assigned_ids(&self) -> Vec<String> {
        self.script()
            .assigned
            .iter()
            .map(|(a, _)| a.process_id.clone())
            .collect()
    }

    /// Serve on `path` until the returned sender is dropped.
    fn serve(&self, path: &Path) -> tokio::sync::oneshot::Sender<()> {
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

    async fn list_processes(
        &self,
        _: Request<ListProcessesRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

struct Harness {
    fleet: Arc<Fleet>,
    dir: tempfile::TempDir,
    /// Launchers by id, with their serving handles (dropped: down).
    launchers: HashMap<String, (FakeLauncher, Option<tokio::sync::oneshot::Sender<()>>)>,
}

async fn harness() -> Harness {
    harness_with(None).await
}

async fn harness_with(reschedule_lost_after: Option<Duration>) -> Harness {
    let store: Arc<dyn AdminStore> = Arc::new(SqliteStore::in_memory().await.expect("store"));
    let fleet = Fleet::open(
        store,
        Dispatcher::new(None, "prism".into(), false),
        INTERVAL,
        reschedule_lost_after,
    )
    .await
    .expect("fleet");
    Harness {
        fleet,
        dir: tempfile::tempdir().expect("tempdir"),
        launchers: HashMap::new(),
    }
}

fn registration(id: &str, address: &str, types: &[&str], max: i32) -> pb::LauncherRegistration {
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

fn spec(id: &str, version: i64) -> pb::ProcessAssignment {
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "pattern".into(),
        namespace: "orders".into(),
        version,
        config: Some(pb::ProcessConfig {
            binary: "/usr/bin/keyvalue-runner".into(),
            pattern: Some(pb::PatternProcessConfig {
                pattern_type: "keyvalue".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn assignment(id: &str, version: i64) -> Assignment {
    Assignment::try_from((spec(id, version), &Policy::structural())).expect("valid")
}

fn checked(reg: pb::LauncherRegistration) -> Registration {
    Registration::try_from(reg).expect("valid registration")
}

fn revocation(id: &str) -> Revocation {
    Revocation::try_from(pb::ProcessRevocation {
        process_id: id.into(),
        ..Default::default()
    })
    .expect("valid revocation")
}

impl Harness {
    fn socket(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.sock"))
    }

    /// A fake launcher, serving (`up`) or not yet, registered with the
    /// fleet.
    async fn launcher(&mut self, id: &str, types: &[&str], max: i32, up: bool) -> FakeLauncher {
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

    /// Bring a registered launcher's server up.
    fn up(&mut self, id: &str) {
        let socket = self.socket(id);
        let (fake, serving) = self.launchers.get_mut(id).expect("launcher");
        *serving = Some(fake.serve(&socket));
    }

    async fn placed_on(&self, id: &str) -> Option<(String, PlacementState)> {
        let st = self.fleet.state.lock().await;
        st.processes
            .get(id)
            .map(|p| (p.launcher_id.clone().unwrap_or_default(), p.state))
    }

    async fn pending(&self, launcher: &str, id: &str) -> bool {
        self.fleet.state.lock().await.pending.contains(launcher, id)
    }

    /// The launcher has been silent for `intervals` heartbeat intervals.
    async fn silence(&self, launcher: &str, intervals: u32) {
        let mut st = self.fleet.state.lock().await;
        let l = st.launchers.get_mut(launcher).expect("launcher");
        l.last_heartbeat_ms =
            crate::clock::unix_ms() - (INTERVAL * intervals).as_millis() as i64 - 1;
    }
}

/// Wait until `f` holds, for at most `within`.
async fn until<F: std::future::Future<Output = bool>>(
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

#[tokio::test]
async fn an_assignment_goes_to_a_capable_launcher_marked_as_the_admins() {
    let mut h = harness().await;
    let proxy = h.launcher("proxy-host", &["proxy"], 5, true).await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    let a = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    assert_eq!(a.launcher, "kv-host");
    assert_eq!(
        a.unit, "prism-pattern-kv-1.service",
        "the launcher's answer"
    );
    assert_eq!(kv.assigned_ids(), vec!["kv-1"]);
    assert_eq!(kv.script().assigned[0].1.as_deref(), Some("admin"));
    assert!(proxy.assigned_ids().is_empty());
    assert_eq!(
        h.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
}

#[tokio::test]
async fn concurrent_assignments_never_overbook_the_fleet() {
    let mut h = harness().await;
    let a = h.launcher("a", &["pattern"], 3, true).await;
    let b = h.launcher("b", &["pattern"], 3, true).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let fleet = h.fleet.clone();
            tokio::spawn(async move {
                fleet
                    .assign(assignment(&format!("p{i}"), 1), None, None)
                    .await
            })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(FleetError::NoCandidate(NoCandidate::Unavailable { .. })) => full += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok, full), (6, 4));
    assert_eq!(
        (a.assigned_ids().len(), b.assigned_ids().len()),
        (3, 3),
        "spread, within each launcher's capacity"
    );
}

#[tokio::test]
async fn a_type_no_launcher_runs_is_refused_naming_it() {
    let mut h = harness().await;
    h.launcher("proxy-host", &["proxy"], 5, true).await;
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::NoCandidate(NoCandidate::Unsupported(_))),
        "{err}"
    );
    assert!(err.to_string().contains("pattern"), "{err}");
    assert_eq!(h.placed_on("kv-1").await, None);
}

#[tokio::test]
async fn a_refusal_undoes_the_placement_and_is_in_the_history() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    kv.script().refuse.insert("kv-1".into());
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("config.binary"), "{err}");
    assert_eq!(h.placed_on("kv-1").await, None);
    let history = h.fleet.history("kv-1", 10).await.unwrap();
    assert_eq!(history[0].event, "refused", "{history:?}");
}

#[tokio::test]
async fn the_same_version_changes_nothing_and_an_older_one_is_refused() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 2), None, None)
        .await
        .unwrap();
    let again = h
        .fleet
        .assign(assignment("kv-1", 2), None, None)
        .await
        .unwrap();
    assert!(
        again.message.contains("nothing changed"),
        "{}",
        again.message
    );
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FleetError::StaleVersion {
                held: 2,
                requested: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(kv.assigned_ids().len(), 1);
}

#[tokio::test]
async fn a_new_version_stays_on_its_launcher() {
    let mut h = harness().await;
    let a = h.launcher("a", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    let b = h.launcher("b", &["pattern"], 5, true).await;
    let placed = h
        .fleet
        .assign(assignment("kv-1", 2), None, None)
        .await
        .unwrap();
    assert_eq!(placed.launcher, "a");
    assert_eq!(a.assigned_ids().len(), 2);
    assert!(b.assigned_ids().is_empty());
}

#[tokio::test]
async fn an_unreachable_launcher_gets_its_assignment_when_it_is_back() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, false).await;
    let a = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    assert!(a.message.contains("delivery pending"), "{}", a.message);
    assert!(h.pending("kv-host", "kv-1").await);
    h.up("kv-host");
    tokio::spawn(h.fleet.clone().delivery_loop());
    until(Duration::from_secs(10), "the delivery", || {
        let kv = kv.clone();
        async move { kv.assigned_ids() == vec!["kv-1".to_owned()] }
    })
    .await;
    until(Duration::from_secs(5), "the queue to empty", || async {
        !h.pending("kv-host", "kv-1").await
    })
    .await;
}

#[tokio::test]
async fn a_revocation_is_delivered_and_the_process_forgotten() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    let ack = h.fleet.revoke(revocation("kv-1")).await.unwrap();
    assert!(ack.success);
    assert!(ack.message.contains("(on kv-host)"), "{}", ack.message);
    assert_eq!(kv.script().revoked, vec!["kv-1"]);
    assert_eq!(h.placed_on("kv-1").await, None);
    h.fleet.flush().await;
    let history = h.fleet.history("kv-1", 10).await.unwrap();
    assert_eq!(history[0].event, "revoked", "{history:?}");
}

#[tokio::test]
async fn a_revocation_checks_its_fields_first() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    for (req, field) in [
        (pb::ProcessRevocation::default(), "process_id"),
        (
            pb::ProcessRevocation {
                process_id: "kv-1".into(),
                graceful_timeout_seconds: 7200,
                ..Default::default()
            },
            "graceful_timeout_seconds",
        ),
        (
            pb::ProcessRevocation {
                process_id: "kv-1".into(),
                launcher_id: "elsewhere".into(),
                ..Default::default()
            },
            "launcher_id",
        ),
    ] {
        let err = match Revocation::try_from(req) {
            Ok(r) => h.fleet.revoke(r).await.unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().starts_with(field), "{field}: {err}");
    }
    assert_eq!(
        h.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
    let err = h.fleet.revoke(revocation("nope")).await.unwrap_err();
    assert!(matches!(err, FleetError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn a_revocation_for_an_unreachable_launcher_is_recorded_and_finished_later() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    // The launcher goes away.
    drop(h.launchers.get_mut("kv-host").unwrap().1.take());
    let socket = h.socket("kv-host");
    until(Duration::from_secs(5), "the server to stop", || {
        let socket = socket.clone();
        async move { !socket.exists() || std::os::unix::net::UnixStream::connect(&socket).is_err() }
    })
    .await;
    let _ = std::fs::remove_file(&socket);
    let err = h.fleet.revoke(revocation("kv-1")).await.unwrap_err();
    assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
    assert_eq!(
        h.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Revoking))
    );
    let err = h
        .fleet
        .assign(assignment("kv-1", 2), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::Revoking { .. }), "{err}");
    h.up("kv-host");
    tokio::spawn(h.fleet.clone().delivery_loop());
    until(Duration::from_secs(10), "the revocation", || {
        let kv = kv.clone();
        async move { kv.script().revoked == vec!["kv-1".to_owned()] }
    })
    .await;
    until(Duration::from_secs(5), "the record to go", || async {
        h.placed_on("kv-1").await.is_none()
    })
    .await;
}

#[tokio::test]
async fn registration_hands_back_what_is_placed_and_asks_for_what_was_lost() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    let address = format!("unix:{}", h.socket("kv-host").display());
    let mut reg = registration("kv-host", &address, &["pattern"], 5);
    reg.held = vec![
        pb::HeldProcess {
            process_id: "kv-1".into(),
            version: 1,
            recorded_at_ms: 1,
        },
        // Recorded by the launcher; this admin has no record of it.
        pb::HeldProcess {
            process_id: "lost-1".into(),
            version: 3,
            recorded_at_ms: crate::clock::unix_ms(),
        },
    ];
    let ack = h.fleet.register(checked(reg)).await.unwrap();
    let initial: Vec<&str> = ack
        .initial_processes
        .iter()
        .map(|p| p.process_id.as_str())
        .collect();
    assert_eq!(initial, vec!["kv-1"]);
    assert_eq!(ack.reclaim, vec!["lost-1"]);
    assert_eq!(ack.heartbeat_interval_ms, INTERVAL.as_millis() as i64);
    // Handed back: recorded on that launcher.
    let back = h
        .fleet
        .reclaim(pb::ReclaimRequest {
            launcher_id: "kv-host".into(),
            processes: vec![spec("lost-1", 3)],
        })
        .await
        .unwrap();
    assert_eq!(back.recorded, vec!["lost-1"]);
    assert_eq!(
        h.placed_on("lost-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
    // Only what was asked for, only from that launcher.
    let other = h
        .fleet
        .reclaim(pb::ReclaimRequest {
            launcher_id: "kv-host".into(),
            processes: vec![spec("never-asked", 1)],
        })
        .await
        .unwrap();
    assert!(other.recorded.is_empty());
    assert!(other.refused.contains_key("never-asked"));
}

#[tokio::test]
async fn a_registration_with_a_bad_field_names_it_and_records_nothing() {
    let h = harness().await;
    let good = registration("kv-host", "unix:/run/prism/launcher.sock", &["pattern"], 5);
    type Edit = fn(&mut pb::LauncherRegistration);
    let cases: Vec<(&str, Edit)> = vec![
        ("launcher_id", |r| r.launcher_id = "no spaces".into()),
        ("address", |r| r.address = "unix:relative.sock".into()),
        ("address", |r| {
            r.address = format!("unix:/{}", "a".repeat(300))
        }),
        ("region", |r| r.region = "eu west".into()),
        ("version", |r| r.version = "1\n2".into()),
        ("max_processes", |r| r.max_processes = 0),
        ("process_types", |r| {
            r.process_types = vec!["database".into()]
        }),
        ("process_types", |r| {
            r.process_types.clear();
            r.capabilities = vec!["gpu".into()];
        }),
        ("metadata", |r| {
            r.metadata = (0..40).map(|i| (format!("k{i}"), "v".into())).collect()
        }),
        ("held", |r| {
            r.held = vec![pb::HeldProcess {
                process_id: "bad id".into(),
                ..Default::default()
            }]
        }),
    ];
    for (field, edit) in cases {
        let mut reg = good.clone();
        edit(&mut reg);
        let err = Registration::try_from(reg).unwrap_err();
        assert!(
            matches!(&err, FleetError::BadRequest { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
    assert!(h.fleet.state.lock().await.launchers.is_empty());
    h.fleet.register(checked(good)).await.unwrap();
}

#[tokio::test]
async fn a_heartbeat_from_a_launcher_not_registered_here_asks_it_to_register() {
    let h = harness().await;
    let ack = h
        .fleet
        .heartbeat(pb::LauncherHeartbeatRequest {
            launcher_id: "stranger".into(),
            ..Default::default()
        })
        .await;
    assert!(!ack.success);
    assert!(ack.reregister);
    assert!(ack.message.contains("register"), "{}", ack.message);
}

#[tokio::test]
async fn a_heartbeat_repairs_drift_both_ways() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    // Placed long enough ago that no push is in flight.
    {
        let mut st = h.fleet.state.lock().await;
        let mut p = st.processes["kv-1"].clone();
        p.updated_at_ms -= 3 * INTERVAL.as_millis() as i64;
        st.put(p);
    }
    let health = |version| pb::ProcessHealth {
        status: "running".into(),
        version,
        ..Default::default()
    };
    // It runs a stray process, and not kv-1.
    let ack = h
        .fleet
        .heartbeat(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            process_health: [("stray".to_owned(), health(1))].into(),
            ..Default::default()
        })
        .await;
    assert!(ack.success);
    {
        let st = h.fleet.state.lock().await;
        let due: Vec<(String, DeliveryKind)> = st
            .pending
            .of("kv-host")
            .map(|(p, d)| (p.to_owned(), d.kind))
            .collect();
        assert!(
            due.contains(&("kv-1".into(), DeliveryKind::Assign)),
            "{due:?}"
        );
        assert!(
            due.contains(&("stray".into(), DeliveryKind::Revoke { grace: 0 })),
            "{due:?}"
        );
    }
    // Reported running: its health is recorded; nothing more to repair.
    h.fleet
        .state
        .lock()
        .await
        .pending
        .remove_launcher("kv-host");
    h.fleet
        .heartbeat(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            process_health: [("kv-1".to_owned(), health(1))].into(),
            ..Default::default()
        })
        .await;
    let st = h.fleet.state.lock().await;
    assert_eq!(st.pending.of("kv-host").count(), 0);
    assert_eq!(st.health["kv-1"].health.status, "running");
}

#[test]
fn liveness_turns_at_three_and_six_missed_heartbeats() {
    let i = Duration::from_secs(10);
    let ms = |d: Duration| d.as_millis() as i64;
    let cases = [
        (0, Liveness::Healthy),
        (ms(i * 3) - 1, Liveness::Healthy),
        (ms(i * 3), Liveness::Unhealthy),
        (ms(i * 6) - 1, Liveness::Unhealthy),
        (ms(i * 6), Liveness::Lost),
        // A heartbeat stamped ahead of the admin's clock is fresh.
        (-5_000, Liveness::Healthy),
    ];
    for (silent, expected) in cases {
        assert_eq!(
            placement::liveness(1_000_000 - silent, 1_000_000, i),
            expected,
            "silent {silent} ms"
        );
    }
}

#[tokio::test]
async fn an_unhealthy_launcher_gets_nothing_new_until_it_heartbeats() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.silence("kv-host", 3).await;
    h.fleet.judge_liveness(crate::clock::unix_ms()).await;
    assert_eq!(
        h.fleet.state.lock().await.last_liveness["kv-host"],
        Liveness::Unhealthy
    );
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::NoCandidate(_)), "{err}");
    h.fleet
        .heartbeat(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            ..Default::default()
        })
        .await;
    h.fleet.judge_liveness(crate::clock::unix_ms()).await;
    assert_eq!(
        h.fleet.state.lock().await.last_liveness["kv-host"],
        Liveness::Healthy
    );
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn processes_of_a_lost_launcher_move_only_when_asked_to() {
    for (reschedule, moves) in [(None, false), (Some(Duration::ZERO), true)] {
        let mut h = harness_with(reschedule).await;
        h.launcher("a", &["pattern"], 5, true).await;
        h.fleet
            .assign(assignment("kv-1", 1), None, None)
            .await
            .unwrap();
        h.launcher("b", &["pattern"], 5, true).await;
        h.silence("a", 6).await;
        h.fleet.judge_liveness(crate::clock::unix_ms()).await;
        assert_eq!(
            h.fleet.state.lock().await.last_liveness["a"],
            Liveness::Lost
        );
        let on = h.placed_on("kv-1").await.unwrap().0;
        assert_eq!(on == "b", moves, "reschedule {reschedule:?}: on {on}");
        assert_eq!(h.pending("b", "kv-1").await, moves);
    }
}

#[tokio::test]
async fn a_draining_launcher_gets_nothing_new_and_moves_its_processes() {
    let mut h = harness().await;
    h.launcher("a", &["pattern"], 5, true).await;
    h.fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    let b = h.launcher("b", &["pattern"], 5, true).await;
    h.fleet.set_draining("a", true).await.unwrap();
    let placed = h
        .fleet
        .assign(assignment("kv-2", 1), None, None)
        .await
        .unwrap();
    assert_eq!(placed.launcher, "b");
    let moved = h.fleet.move_processes("a").await.unwrap();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(h.placed_on("kv-1").await.unwrap().0, "b");
    tokio::spawn(h.fleet.clone().delivery_loop());
    until(Duration::from_secs(10), "the move's delivery", || {
        let b = b.clone();
        async move { b.assigned_ids().contains(&"kv-1".to_owned()) }
    })
    .await;
}

#[tokio::test]
async fn placements_survive_an_admin_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kv.sock");
    let fake = FakeLauncher::default();
    let _serving = fake.serve(&socket);
    let address = format!("unix:{}", socket.display());
    {
        let store: Arc<dyn AdminStore> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        let fleet = Fleet::open(
            store,
            Dispatcher::new(None, "p".into(), false),
            INTERVAL,
            None,
        )
        .await
        .unwrap();
        fleet
            .register(checked(registration("kv-host", &address, &["pattern"], 5)))
            .await
            .unwrap();
        fleet
            .assign(assignment("kv-1", 1), None, None)
            .await
            .unwrap();
        fleet.flush().await;
    }
    let store: Arc<dyn AdminStore> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let fleet = Fleet::open(
        store,
        Dispatcher::new(None, "p".into(), false),
        INTERVAL,
        None,
    )
    .await
    .unwrap();
    let st = fleet.state.lock().await;
    assert_eq!(st.processes["kv-1"].launcher_id.as_deref(), Some("kv-host"));
    assert!(st.launchers.contains_key("kv-host"));
    // Not registered with this admin process yet: asked to register.
    assert!(!st.registered.contains("kv-host"));
}
