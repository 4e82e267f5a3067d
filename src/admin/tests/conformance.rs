//! One suite, both stores: the fleet over SQLite (a file) and over
//! PostgreSQL (a throwaway cluster of the test's own, `initdb` and
//! `pg_ctl` in a temporary directory) places, stays idempotent, keeps
//! history, repairs drift, never overbooks, and reloads what it wrote.
//! On PostgreSQL, also the lease and its fence.
//!
//! Without PostgreSQL installed the PostgreSQL half prints SKIPPED, unless
//! `PRISM_REQUIRE_POSTGRES=1` (as `.ci/run` sets), when it fails.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::{
    admin::store::{Candidate, HistoryEvent, PgStore, StoreError, StoreOptions},
    devstack::cluster::LocalCluster,
};

/// Where a harness's store lives, to open it again as a restarted admin.
#[derive(Clone)]
pub(super) enum Backing {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Backing {
    /// The store, leading (as the admin opens it once it holds the lease).
    pub(super) async fn open(&self) -> Arc<dyn AdminStore> {
        match self {
            Self::Sqlite(dir) => Arc::new(SqliteStore::open(dir).await.expect("sqlite")),
            Self::Postgres(url) => {
                let store = PgStore::connect(url, &StoreOptions::default())
                    .await
                    .expect("postgres");
                // The admin before it is gone, its lease run out.
                let expire =
                    "UPDATE leader_lease SET expires_at = clock_timestamp() - interval '1s'";
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                    .await
                    .unwrap();
                sqlx::query(expire).execute(&mut c).await.unwrap();
                let me = candidate("test-admin");
                assert!(
                    store
                        .lead(&me, Duration::from_secs(60))
                        .await
                        .unwrap()
                        .held_by(&me)
                );
                Arc::new(store)
            }
        }
    }

    pub(super) async fn harness(&self) -> Harness {
        harness_on(self.open().await, None).await
    }
}

fn candidate(name: &str) -> Candidate {
    Candidate {
        holder: format!("{name}/{}", crate::admin::leader::instance_id()),
        address: format!("{name}:8981"),
    }
}

/// A PostgreSQL cluster for this test binary, removed when dropped.
pub(super) struct Postgres {
    // Stopped before its directory goes.
    cluster: LocalCluster,
    _dir: tempfile::TempDir,
    databases: AtomicU32,
}

impl Postgres {
    /// None (after printing why) when PostgreSQL is not installed.
    pub(super) fn start(test: &str) -> Option<Self> {
        if crate::devstack::cluster::binaries().is_none() {
            assert!(
                std::env::var_os("PRISM_REQUIRE_POSTGRES").is_none(),
                "{test}: PRISM_REQUIRE_POSTGRES is set and no PostgreSQL is installed"
            );
            eprintln!("SKIPPED {test}: no PostgreSQL (/usr/lib/postgresql/*/bin) here");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = LocalCluster::create(dir.path(), false).expect("initdb");
        cluster.start().expect("pg_ctl start");
        Some(Self {
            cluster,
            _dir: dir,
            databases: AtomicU32::new(0),
        })
    }

    /// A new empty database.
    pub(super) async fn backing(&self) -> Backing {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        Backing::Postgres(
            self.cluster
                .create_database(&format!("conformance_{n}"))
                .await
                .expect("create database"),
        )
    }
}

/// Every scenario, on SQLite (a test each) and on PostgreSQL (one test,
/// one cluster, a database each).
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    let backing = super::Backing::Sqlite(dir.path().to_owned());
                    super::$scenario(backing).await;
                }
            )*
        }

        #[tokio::test]
        async fn on_postgres() {
            let Some(pg) = Postgres::start("on_postgres") else { return };
            $(
                eprintln!("on PostgreSQL: {}", stringify!($scenario));
                $scenario(pg.backing().await).await;
            )*
        }
    };
}

conformance!(
    placements_go_where_they_can_run_and_survive_a_restart,
    the_same_version_is_idempotent_and_an_older_one_refused,
    history_is_newest_first_and_kept_across_a_restart,
    a_heartbeat_repairs_drift_and_its_health_is_stored,
    concurrent_reservations_never_overbook_the_last_slots,
    an_unfinished_revocation_is_finished_by_the_next_leader,
    a_batch_writes_every_row_and_histories_are_trimmed_in_the_background,
);

async fn placements_go_where_they_can_run_and_survive_a_restart(backing: Backing) {
    let mut h = backing.harness().await;
    let proxy = h.launcher("proxy-host", &["proxy"], 5, true).await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    assert_eq!(h.place("kv-1", 1).await.launcher, "kv-host");
    assert_eq!(h.place("kv-2", 1).await.launcher, "kv-host");
    h.fleet.set_draining("proxy-host", true).await.unwrap();
    h.fleet.revoke(revocation("kv-2")).await.unwrap();
    assert_eq!(kv.assigned_ids(), ["kv-1", "kv-2"]);
    assert!(proxy.assigned_ids().is_empty());
    h.fleet.flush().await;

    // A restarted admin (a new leader) loads what was written.
    let store = backing.open().await;
    let snap = store.load().await.unwrap();
    let placed: Vec<(&str, Option<&str>, PlacementState)> = snap
        .processes
        .iter()
        .map(|p| (p.id(), p.launcher_id.as_deref(), p.state))
        .collect();
    assert_eq!(placed, [("kv-1", Some("kv-host"), PlacementState::Placed)]);
    let mut launchers: Vec<(&str, bool, u32)> = snap
        .launchers
        .iter()
        .map(|l| (l.id.as_str(), l.draining, l.max_processes))
        .collect();
    launchers.sort();
    assert_eq!(launchers, [("kv-host", false, 5), ("proxy-host", true, 5)]);
    let fleet = harness_on(store, None).await.fleet;
    let st = fleet.state.lock().await;
    assert_eq!(st.processes["kv-1"].spec, spec("kv-1", 1));
}

async fn the_same_version_is_idempotent_and_an_older_one_refused(backing: Backing) {
    let mut h = backing.harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 2).await;
    let again = h.place("kv-1", 2).await;
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
    assert_eq!(kv.assigned_ids().len(), 1, "one push for one version");
    let snap = backing.open().await.load().await.unwrap();
    assert_eq!(snap.processes.len(), 1);
    assert_eq!(snap.processes[0].version(), 2);
}

async fn history_is_newest_first_and_kept_across_a_restart(backing: Backing) {
    let mut h = backing.harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    kv.script().refuse.insert("bad".into());
    h.place("kv-1", 1).await;
    h.place("kv-1", 2).await;
    h.fleet.revoke(revocation("kv-1")).await.unwrap();
    h.fleet
        .assign(assignment("bad", 1), None, None)
        .await
        .unwrap_err();
    h.fleet.flush().await;
    let store = backing.open().await;
    let events = |history: Vec<HistoryEvent>| -> Vec<(String, i64)> {
        history.into_iter().map(|e| (e.event, e.version)).collect()
    };
    let kv1 = events(store.history("kv-1", 100).await.unwrap());
    assert_eq!(
        kv1.first().map(|(e, _)| e.as_str()),
        Some("revoked"),
        "{kv1:?}"
    );
    assert!(kv1.contains(&("placed".into(), 1)), "{kv1:?}");
    assert!(kv1.iter().any(|(_, v)| *v == 2), "{kv1:?}");
    let bad = events(store.history("bad", 100).await.unwrap());
    assert_eq!(
        bad.first().map(|(e, _)| e.as_str()),
        Some("refused"),
        "{bad:?}"
    );
    assert_eq!(
        store.history("kv-1", 1).await.unwrap().len(),
        1,
        "the limit"
    );
}

async fn a_heartbeat_repairs_drift_and_its_health_is_stored(backing: Backing) {
    let mut h = backing.harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    {
        // Placed long enough ago that no push is in flight.
        let mut st = h.fleet.state.lock().await;
        let mut p = st.processes["kv-1"].clone();
        p.updated_at_ms -= 3 * INTERVAL.as_millis() as i64;
        st.put(p);
        st.pending.remove_launcher("kv-host");
    }
    let health = |version| pb::ProcessHealth {
        status: "running".into(),
        version,
        ..Default::default()
    };
    // It runs a stray process, and not kv-1.
    h.fleet
        .heartbeat(Heartbeat::from(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            process_health: [("stray".to_owned(), health(1))].into(),
            ..Default::default()
        }))
        .await;
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
    h.fleet
        .state
        .lock()
        .await
        .pending
        .remove_launcher("kv-host");
    h.fleet
        .heartbeat(Heartbeat::from(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            process_health: [("kv-1".to_owned(), health(1))].into(),
            resources: Some(pb::LauncherResourceUsage {
                process_count: 1,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(h.fleet.state.lock().await.pending.of("kv-host").count(), 0);
    h.fleet.flush().await;
    let snap = backing.open().await.load().await.unwrap();
    assert_eq!(snap.health["kv-1"].health.status, "running");
    assert!(!snap.health.contains_key("stray"), "never placed here");
    assert_eq!(
        snap.launchers[0]
            .resources
            .as_ref()
            .map(|r| r.process_count),
        Some(1)
    );
}

async fn concurrent_reservations_never_overbook_the_last_slots(backing: Backing) {
    let mut h = backing.harness().await;
    let a = h.launcher("a", &["pattern"], 8, true).await;
    let b = h.launcher("b", &["pattern"], 8, true).await;
    for i in 0..6 {
        h.place(&format!("held-{i}"), 1).await;
    }
    // 10 slots left; 32 ask at once.
    let tasks: Vec<_> = (0..32)
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
    assert_eq!((ok, full), (10, 22));
    assert_eq!((a.assigned_ids().len(), b.assigned_ids().len()), (8, 8));
    // What the database holds says the same.
    let snap = backing.open().await.load().await.unwrap();
    let on = |l: &str| {
        snap.processes
            .iter()
            .filter(|p| p.launcher_id.as_deref() == Some(l))
            .count()
    };
    assert_eq!((on("a"), on("b"), snap.processes.len()), (8, 8, 16));
}

async fn an_unfinished_revocation_is_finished_by_the_next_leader(backing: Backing) {
    let mut h = backing.harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    // The launcher goes away; the revocation cannot be delivered.
    h.down("kv-host").await;
    let err = h.fleet.revoke(revocation("kv-1")).await.unwrap_err();
    assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
    // Another admin leads (on PostgreSQL, the first is deposed); the
    // launcher comes back; the new leader finishes the revocation.
    let next = harness_on(backing.open().await, None).await;
    assert_eq!(
        next.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Revoking))
    );
    h.up("kv-host");
    tokio::spawn(next.fleet.clone().delivery_loop(next.stopper.handle()));
    until(Duration::from_secs(10), "the revocation", || {
        let kv = kv.clone();
        async move { kv.script().revoked == vec!["kv-1".to_owned()] }
    })
    .await;
    until(Duration::from_secs(5), "the record to go", || async {
        next.placed_on("kv-1").await.is_none()
    })
    .await;
    let snap = backing.open().await.load().await.unwrap();
    assert!(snap.processes.is_empty(), "{:?}", snap.processes);
}

/// Leadership on PostgreSQL: one holder at a time, a new epoch for each
/// new holder, and a deposed leader's writes refused with nothing written.
#[tokio::test]
async fn the_lease_has_one_holder_and_fences_a_deposed_one() {
    let Some(pg) = Postgres::start("the_lease_has_one_holder_and_fences_a_deposed_one") else {
        return;
    };
    let Backing::Postgres(url) = pg.backing().await else {
        unreachable!()
    };
    let options = StoreOptions::default();
    let a = PgStore::connect(&url, &options).await.unwrap();
    let b = PgStore::connect(&url, &options).await.unwrap();
    let (me_a, me_b) = (candidate("a"), candidate("b"));
    let ttl = Duration::from_secs(1);

    // Nobody leads yet: nothing may be written.
    let err = a.set_draining("x", true, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { epoch: 0 }), "{err}");

    let first = a.lead(&me_a, ttl).await.unwrap();
    assert!(first.held_by(&me_a));
    let seen = b.lead(&me_b, ttl).await.unwrap();
    assert_eq!(
        (seen.holder.as_str(), seen.epoch),
        (me_a.holder.as_str(), first.epoch)
    );
    assert_eq!(seen.address, "a:8981");
    assert!(seen.remaining <= ttl);
    // Renewing keeps the epoch.
    assert_eq!(a.lead(&me_a, ttl).await.unwrap().epoch, first.epoch);
    let event = HistoryEvent {
        at_ms: crate::clock::unix_ms(),
        event: "placed".into(),
        version: 1,
        launcher_id: "l".into(),
        detail: String::new(),
        watched: None,
    };
    let record = |id: &str| crate::admin::store::ProcessRecord {
        spec: spec(id, 1),
        launcher_id: Some("l".into()),
        state: PlacementState::Placed,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    a.put_process(&record("by-a"), &event).await.unwrap();
    // b is no leader: refused.
    assert!(matches!(
        b.put_process(&record("by-b"), &event).await,
        Err(StoreError::NotLeader { .. })
    ));

    // a stops renewing; b takes over once the lease expires, at the next
    // epoch (waited for by asking, for at most 10 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let lease = b.lead(&me_b, ttl).await.unwrap();
        if lease.held_by(&me_b) {
            break lease;
        }
        assert!(tokio::time::Instant::now() < deadline, "b never led");
        tokio::time::sleep(lease.remaining.max(Duration::from_millis(10))).await;
    };
    assert_eq!(taken.epoch, first.epoch + 1);
    // a has not noticed: its writes are refused, and nothing is written.
    let err = a.put_process(&record("late"), &event).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotLeader { epoch } if epoch == first.epoch),
        "{err}"
    );
    assert!(a.delete_process("by-a", &event).await.is_err());
    b.put_process(&record("by-b"), &event).await.unwrap();
    let ids: Vec<String> = b
        .load()
        .await
        .unwrap()
        .processes
        .iter()
        .map(|p| p.id().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.contains(&"by-a".into()) && ids.contains(&"by-b".into()),
        "{ids:?}"
    );
    // a, asking again, follows b.
    let now = a.lead(&me_a, ttl).await.unwrap();
    assert_eq!((now.holder, now.epoch), (me_b.holder.clone(), taken.epoch));

    // b stops and gives the lease up: a leads at once, at the next epoch,
    // and b writes nothing more.
    let long = Duration::from_secs(60);
    assert!(b.lead(&me_b, long).await.unwrap().held_by(&me_b));
    b.resign(&me_b).await.unwrap();
    let again = a.lead(&me_a, long).await.unwrap();
    assert!(again.held_by(&me_a), "{again:?}");
    assert_eq!(again.epoch, taken.epoch + 1);
    assert!(matches!(
        b.set_draining("l", true, &[]).await,
        Err(StoreError::NotLeader { .. })
    ));
    // Giving up a lease it does not hold changes nothing.
    b.resign(&me_b).await.unwrap();
    assert!(a.lead(&me_a, long).await.unwrap().held_by(&me_a));
}

/// TLS to PostgreSQL: rustls with the `ring` provider, the server verified
/// against the CA in the URL (`sslmode=verify-full`), and refused when it
/// does not chain to it.
#[tokio::test]
async fn the_store_speaks_tls_to_postgres_and_verifies_the_server() {
    use crate::auth::{Role, pki::Authority};
    if crate::devstack::cluster::binaries().is_none() {
        assert!(
            std::env::var_os("PRISM_REQUIRE_POSTGRES").is_none(),
            "PRISM_REQUIRE_POSTGRES is set and no PostgreSQL is installed"
        );
        eprintln!(
            "SKIPPED the_store_speaks_tls_to_postgres_and_verifies_the_server: no PostgreSQL"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = dir.path().join("pg");
    std::fs::create_dir(&pg_dir).unwrap();
    let mut cluster = LocalCluster::create(&pg_dir, false).unwrap();
    let ca = Authority::create("test database CA", 1).unwrap();
    let ips = [std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
    let server = ca
        .issue(
            &Role::Admin,
            "db",
            "prism",
            &["localhost".to_owned()],
            &ips,
            1,
        )
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cluster
        .serve_tls(port, &server.cert_pem, &server.key_pem)
        .unwrap();
    cluster.start().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://{}@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            crate::devstack::cluster::SUPERUSER,
            ca.display()
        )
    };
    let store = PgStore::connect(&url(&ca_file), &StoreOptions::default())
        .await
        .expect("TLS to PostgreSQL");
    let me = candidate("tls");
    assert!(
        store
            .lead(&me, Duration::from_secs(5))
            .await
            .unwrap()
            .held_by(&me)
    );
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url(&ca_file))
        .await
        .unwrap();
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(ssl, "the connection is encrypted");
    assert!(version.starts_with("TLSv1."), "{version}");
    // A server that does not chain to the CA named is refused.
    let other = Authority::create("another CA", 1).unwrap();
    let other_file = dir.path().join("other.crt");
    std::fs::write(&other_file, &other.cert_pem).unwrap();
    let err = PgStore::connect(&url(&other_file), &StoreOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// A heartbeat batch writes each launcher's liveness (with and without
/// resources), each health and each history event; the histories that grew
/// are trimmed to their newest afterwards, not in the write.
async fn a_batch_writes_every_row_and_histories_are_trimmed_in_the_background(backing: Backing) {
    use crate::admin::store::{HISTORY_KEEP, HealthRecord, HeartbeatBatch};
    let mut h = backing.harness().await;
    h.launcher("a-host", &["pattern"], 5, true).await;
    h.launcher("b-host", &["pattern"], 5, true).await;
    let store = backing.open().await;
    let mut batch = HeartbeatBatch::default();
    let usage = pb::LauncherResourceUsage {
        process_count: 3,
        ..Default::default()
    };
    batch
        .launchers
        .insert("a-host".into(), (1_000, Some(usage)));
    batch.launchers.insert("b-host".into(), (2_000, None));
    for id in ["kv-1", "kv-2"] {
        batch.health.insert(
            id.into(),
            HealthRecord {
                health: pb::ProcessHealth {
                    detailed_status: format!("{id} running"),
                    ..Default::default()
                },
                reported_at_ms: 3_000,
            },
        );
    }
    let n = HISTORY_KEEP + 5;
    for i in 0..n {
        batch.history.push((
            "kv-1".into(),
            HistoryEvent {
                at_ms: i,
                event: "running".into(),
                detail: format!("e{i}"),
                ..Default::default()
            },
        ));
    }
    batch.history.push(("kv-2".into(), HistoryEvent::default()));
    store.save_heartbeats(&batch).await.unwrap();
    let snap = store.load().await.unwrap();
    let liveness: std::collections::BTreeMap<_, _> = snap
        .launchers
        .iter()
        .map(|l| (l.id.as_str(), (l.last_heartbeat_ms, l.resources.as_ref())))
        .collect();
    assert_eq!(liveness["a-host"], (1_000, Some(&usage)));
    assert_eq!(liveness["b-host"], (2_000, None));
    // A heartbeat counted for liveness only (no resources): its time is
    // stored, the resources stored before are kept.
    let mut later = HeartbeatBatch::default();
    later.launchers.insert("a-host".into(), (4_000, None));
    store.save_heartbeats(&later).await.unwrap();
    let snap_later = store.load().await.unwrap();
    let a = snap_later
        .launchers
        .iter()
        .find(|l| l.id == "a-host")
        .unwrap();
    assert_eq!(
        (a.last_heartbeat_ms, a.resources.as_ref()),
        (4_000, Some(&usage))
    );
    assert_eq!(snap.health["kv-2"].health.detailed_status, "kv-2 running");
    assert_eq!(snap.health["kv-1"].reported_at_ms, 3_000);
    let all = 10 * HISTORY_KEEP as u32;
    assert_eq!(store.history("kv-1", all).await.unwrap().len() as i64, n);
    assert_eq!(store.trim_histories().await.unwrap(), 5);
    let kept = store.history("kv-1", all).await.unwrap();
    assert_eq!(kept.len() as i64, HISTORY_KEEP);
    assert_eq!(kept[0].detail, format!("e{}", n - 1), "the newest first");
    assert_eq!(kept.last().unwrap().detail, "e5", "the oldest five went");
    assert_eq!(store.history("kv-2", all).await.unwrap().len(), 1);
    assert_eq!(
        store.trim_histories().await.unwrap(),
        0,
        "nothing grew since"
    );
}
