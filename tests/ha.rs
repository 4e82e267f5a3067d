//! Several prism-admins on one PostgreSQL (a throwaway cluster of the
//! test's own), a launcher on a sandboxed systemd manager that knows them
//! all, and failover: the leader killed with SIGKILL while assignments are
//! in flight, or cut off from the database by PostgreSQL
//! (`pg_terminate_backend`). Outcomes are read back from the database,
//! the admins' API and the host's systemd.
//!
//! Without PostgreSQL installed these print SKIPPED, unless
//! `PRISM_REQUIRE_POSTGRES=1` (as `.ci/run` sets).

mod support;

use std::{collections::BTreeMap, time::Duration};

use prism_launcher::{
    devstack::cluster::{self, LocalCluster},
    pb::prism::{
        self as pb,
        admin::v1::{self as apb, admin_client::AdminClient},
        control_plane_client::ControlPlaneClient,
    },
};
use sqlx::Connection;
use support::{daemon::*, *};
use tokio::time::Instant;
use tonic::Code;

/// The admins' lease: the default.
const LEASE: Duration = Duration::from_secs(5);

struct Ha {
    admins: Vec<Daemon>,
    host: Harness,
    launcher: Daemon,
    url: String,
    // Dropped last: the daemons first, then the database.
    _dirs: Vec<tempfile::TempDir>,
    _pg: LocalCluster,
    _pg_dir: tempfile::TempDir,
}

fn role(i: usize) -> String {
    format!("admin_{i}")
}

impl Ha {
    /// `n` admins, each connecting as its own database role (so that one
    /// can be cut off), and one launcher registered through them.
    async fn start(n: usize) -> Option<Ha> {
        if cluster::binaries().is_none() {
            assert!(
                std::env::var_os("PRISM_REQUIRE_POSTGRES").is_none(),
                "PRISM_REQUIRE_POSTGRES is set and no PostgreSQL is installed"
            );
            eprintln!("SKIPPED: no PostgreSQL (/usr/lib/postgresql/*/bin) here");
            return None;
        }
        let host = support::sandbox()?;
        let pg_dir = tempfile::tempdir().unwrap();
        let mut pg = LocalCluster::create(pg_dir.path(), false).expect("initdb");
        pg.start().expect("pg_ctl start");
        let url = pg.create_database("ha").await.expect("database");
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        for i in 0..n {
            let sql = format!("CREATE ROLE {} LOGIN SUPERUSER", role(i));
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
        }
        let mut admins = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let own = url.replace("://prism@", &format!("://{}@", role(i)));
            let admin = Daemon::admin(
                dir.path(),
                &["--database", &own, "--heartbeat-interval", "300ms"],
            )
            .await;
            admins.push(admin);
            dirs.push(dir);
        }
        let endpoints = admins
            .iter()
            .map(|a| format!("http://127.0.0.1:{}", a.port))
            .collect::<Vec<_>>()
            .join(",");
        let launcher =
            Daemon::start_named(&host, "ha-host", &["--admin-endpoint", &endpoints]).await;
        let ha = Ha {
            admins,
            host,
            launcher,
            url,
            _dirs: dirs,
            _pg: pg,
            _pg_dir: pg_dir,
        };
        ha.wait_healthy().await;
        Some(ha)
    }

    /// The leader's index among `admins`, from the lease row (its holder
    /// names its pid).
    async fn leader(&self) -> Option<(usize, i64)> {
        let mut c = sqlx::PgConnection::connect(&self.url).await.ok()?;
        let (holder, epoch): (String, i64) =
            sqlx::query_as("SELECT holder, epoch FROM leader_lease WHERE id = 1")
                .fetch_optional(&mut c)
                .await
                .ok()??;
        let pid: u32 = holder.split('/').nth(1)?.parse().ok()?;
        let i = self
            .admins
            .iter()
            .position(|a| a.child.as_ref().is_some_and(|c| c.id() == pid))?;
        Some((i, epoch))
    }

    async fn api(&self, i: usize) -> AdminClient<tonic::transport::Channel> {
        AdminClient::new(self.admins[i].channel().await)
    }

    async fn cp(&self, i: usize) -> ControlPlaneClient<tonic::transport::Channel> {
        ControlPlaneClient::new(self.admins[i].channel().await)
    }

    /// A living admin that does not lead.
    async fn follower(&self) -> usize {
        let (leader, _) = self.leader().await.expect("a leader");
        (0..self.admins.len())
            .find(|i| *i != leader && self.admins[*i].child.is_some())
            .expect("a follower")
    }

    async fn wait_healthy(&self) {
        eventually(
            "the launcher healthy, asked through any admin",
            DEADLINE,
            || async {
                for i in 0..self.admins.len() {
                    if self.admins[i].child.is_none() {
                        continue;
                    }
                    let ls = self
                        .api(i)
                        .await
                        .list_launchers(apb::ListLaunchersRequest {})
                        .await
                        .ok()?
                        .into_inner()
                        .launchers;
                    return ls
                        .iter()
                        .any(|l| l.launcher_id == "ha-host" && l.health == "healthy")
                        .then_some(());
                }
                None
            },
        )
        .await;
    }

    /// Where admin `i` says `id` is placed (None: it knows no such process).
    async fn placed(&self, i: usize, id: &str) -> Result<Option<String>, tonic::Status> {
        match self
            .api(i)
            .await
            .get_process(apb::GetProcessRequest {
                process_id: id.into(),
                history_limit: 1,
            })
            .await
        {
            Ok(p) => Ok(Some(p.into_inner().launcher_id)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// The prism units of this host, by process id, with their MainPID.
    fn units(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut by_id: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for unit in self.host.listed_units() {
            let Some(rest) = unit.strip_prefix("prism-pattern-") else {
                continue;
            };
            let id = rest.trim_end_matches(".service").to_owned();
            let active = self.host.prop(&unit, "ActiveState");
            if active == "active" || active == "activating" {
                let pid = self.host.prop(&unit, "MainPID");
                by_id.entry(id).or_default().push((unit, pid));
            }
        }
        by_id
    }
}

async fn assign(
    mut cp: ControlPlaneClient<tonic::transport::Channel>,
    a: pb::ProcessAssignment,
) -> Result<pb::ProcessAssignmentAck, tonic::Status> {
    cp.assign_process(a).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_and_nothing_is_lost_or_run_twice() {
    let Some(mut ha) = Ha::start(3).await else {
        return;
    };
    let (leader, epoch) = ha.leader().await.expect("a leader");
    let follower = ha.follower().await;
    // Acknowledged before the kill, through a follower (passed on).
    let mut acked = Vec::new();
    for i in 0..4 {
        let id = format!("before{i}");
        let ack = assign(ha.cp(follower).await, pattern(&id, &ha.host.demo, &[]))
            .await
            .unwrap_or_else(|s| panic!("assign {id} through a follower: {s}"));
        assert!(ack.success, "{ack:?}");
        assert_eq!(ack.launcher_id, "ha-host");
        acked.push(id);
    }
    let before = ha.units();
    assert_eq!(before.len(), 4, "{before:?}");

    // More in flight, through both followers, as the leader is killed.
    let mut in_flight = Vec::new();
    for i in 0..8 {
        let id = format!("during{i}");
        let via = ha.cp((leader + 1 + i % 2) % 3).await;
        let a = pattern(&id, &ha.host.demo, &[]);
        in_flight.push((id, tokio::spawn(assign(via, a))));
    }
    let killed_at = Instant::now();
    ha.admins[leader].kill9();
    // No admin leads now; a follower still answers reads, from the
    // database.
    let mut api = ha.api(follower).await;
    let listed = api
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .expect("a follower's read while no admin leads")
        .into_inner()
        .processes;
    let on_host = |id: &str| {
        listed.iter().any(|p| {
            p.assignment.as_ref().is_some_and(|a| a.process_id == id) && p.launcher_id == "ha-host"
        })
    };
    assert!(acked.iter().all(|id| on_host(id)), "{listed:?}");
    let launchers = api
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .expect("launchers, from a follower")
        .into_inner()
        .launchers;
    assert_eq!(launchers.len(), 1);
    assert_eq!(launchers[0].health, "healthy", "{launchers:?}");
    // The lease still names the killed admin: none of the living leads.
    assert_eq!(ha.leader().await, None, "read before any takeover");
    let (new_leader, new_epoch) = eventually("another admin to lead", DEADLINE, || async {
        ha.leader().await.filter(|(i, _)| *i != leader)
    })
    .await;
    let failover = killed_at.elapsed();
    eprintln!("failover: {failover:?} (lease {LEASE:?})");
    assert!(
        failover <= LEASE + Duration::from_secs(1),
        "a follower led {failover:?} after the kill"
    );
    assert!(new_epoch > epoch);
    for (id, task) in in_flight {
        match task.await.unwrap() {
            Ok(ack) if ack.success => acked.push(id),
            // Not acknowledged: placed or not, never half (checked below).
            _ => {}
        }
    }
    ha.wait_healthy().await;
    // The launcher registered again, with an admin that is alive.
    let log = ha.launcher.log_text();
    assert!(log.contains("registering again"), "{log}");

    // Every acknowledged assignment is placed and running, once; the
    // processes from before the kill were not touched.
    eventually("every acknowledged process running", DEADLINE, || async {
        let units = ha.units();
        acked.iter().all(|id| units.contains_key(id)).then_some(())
    })
    .await;
    for id in &acked {
        assert_eq!(
            ha.placed(new_leader, id).await.unwrap().as_deref(),
            Some("ha-host"),
            "{id}"
        );
    }
    let after = ha.units();
    for (id, units) in &before {
        assert_eq!(&after[id], units, "{id}: the same unit and MainPID");
    }
    // What the admin places and what runs agree, with nothing twice.
    let placed: Vec<String> = ha
        .api(new_leader)
        .await
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes
        .into_iter()
        .filter_map(|p| p.assignment.map(|a| a.process_id))
        .collect();
    eventually(
        "the host to run exactly what is placed",
        DEADLINE,
        || async {
            let units = ha.units();
            let running: Vec<&String> = units.keys().collect();
            let mut want: Vec<&String> = placed.iter().collect();
            want.sort();
            (running == want && units.values().all(|u| u.len() == 1)).then_some(())
        },
    )
    .await;
    for id in &acked {
        assert!(placed.contains(id), "acknowledged {id} is placed");
    }

    // A client generated from upstream's protocol, knowing one address (a
    // follower's), registers, heartbeats, assigns and revokes.
    mod upstream {
        include!(concat!(env!("OUT_DIR"), "/upstream/prism.rs"));
    }
    let follower = (0..3)
        .find(|i| *i != leader && *i != new_leader)
        .expect("the other follower");
    let mut client = upstream::control_plane_client::ControlPlaneClient::new(
        ha.admins[follower].channel().await,
    );
    let ack = client
        .register_launcher(upstream::LauncherRegistration {
            launcher_id: "upstream-1".into(),
            address: "127.0.0.1:9".into(),
            region: "local".into(),
            version: "upstream".into(),
            capabilities: vec!["utility".into()],
            max_processes: 5,
            process_types: vec!["utility".into()],
            metadata: Default::default(),
        })
        .await
        .expect("register through a follower")
        .into_inner();
    assert!(ack.success, "{ack:?}");
    let hb = client
        .launcher_heartbeat(upstream::LauncherHeartbeatRequest {
            launcher_id: "upstream-1".into(),
            resources: Some(upstream::LauncherResourceUsage {
                max_processes: 5,
                available_slots: 5,
                ..Default::default()
            }),
            timestamp: 1,
            ..Default::default()
        })
        .await
        .expect("heartbeat through a follower")
        .into_inner();
    assert!(hb.success, "{hb:?}");
    // ha-host may still be finding the new leader (its heartbeat to the
    // killed one times out first): until it reports, nothing is placed on
    // it, and the answer says so.
    let upkv = upstream::ProcessAssignment {
        process_id: "upkv".into(),
        process_type: "pattern".into(),
        version: 1,
        config: Some(upstream::ProcessConfig {
            binary: ha.host.demo.display().to_string(),
            pattern: Some(upstream::PatternProcessConfig {
                pattern_type: "keyvalue".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ack = eventually("an assignment through a follower", DEADLINE, || {
        let (mut client, upkv) = (client.clone(), upkv.clone());
        async move {
            match client.assign_process(upkv).await {
                Ok(ack) => Some(ack.into_inner()),
                Err(s)
                    if s.code() == Code::FailedPrecondition
                        && s.message().contains("missed a heartbeat") =>
                {
                    None
                }
                Err(s) => panic!("assign through a follower: {s:?}"),
            }
        }
    })
    .await;
    assert!(ack.success && ack.message.contains("ha-host"), "{ack:?}");
    eventually("upkv running", DEADLINE, || async {
        ha.units().contains_key("upkv").then_some(())
    })
    .await;
    let revoked = client
        .revoke_process(upstream::ProcessRevocation {
            launcher_id: "ha-host".into(),
            process_id: "upkv".into(),
            graceful_timeout_seconds: 5,
        })
        .await;
    match revoked {
        Ok(ack) => {
            let ack = ack.into_inner();
            assert!(ack.success, "{ack:?}");
            assert!(!ha.units().contains_key("upkv"));
        }
        // The launcher missed two heartbeats (300 ms each) just then, as a
        // loaded machine may make it: the documented answer, and the
        // revocation delivered once it reports again.
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            assert!(s.message().contains("the revocation is recorded"), "{s:?}");
            eventually("upkv stopped once delivered", DEADLINE, || async {
                (!ha.units().contains_key("upkv")).then_some(())
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_database_stops_and_another_leads() {
    let Some(mut ha) = Ha::start(2).await else {
        return;
    };
    let (leader, epoch) = ha.leader().await.expect("a leader");
    for i in 0..3 {
        let ack = assign(
            ha.cp(leader).await,
            pattern(&format!("kv{i}"), &ha.host.demo, &[]),
        )
        .await
        .expect("assign");
        assert!(ack.success);
    }
    let before = ha.units();
    assert_eq!(before.len(), 3);

    // PostgreSQL ends the leader's connections and refuses new ones.
    let mut c = sqlx::PgConnection::connect(&ha.url).await.unwrap();
    let cut_at = Instant::now();
    for sql in [
        format!("ALTER ROLE {} NOLOGIN", role(leader)),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
            role(leader)
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    }
    // It stops on its own, before its lease runs out.
    let status = eventually("the cut-off leader to stop", DEADLINE, || {
        let exited = ha.admins[leader]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait"));
        async move { exited }
    })
    .await;
    let stopped = cut_at.elapsed();
    assert!(!status.success(), "{status:?}");
    assert!(stopped < LEASE, "stopped {stopped:?} after the cut");
    ha.admins[leader].child = None;
    let log = ha.admins[leader].log_text();
    assert!(log.contains("lost the leadership"), "{log}");
    let (new_leader, new_epoch) = eventually("the other admin to lead", DEADLINE, || async {
        ha.leader().await.filter(|(i, _)| *i != leader)
    })
    .await;
    let failover = cut_at.elapsed();
    eprintln!("cut-off leader stopped after {stopped:?}; failover {failover:?}");
    assert!(failover <= LEASE + Duration::from_secs(1), "{failover:?}");
    assert_eq!(new_epoch, epoch + 1);
    ha.wait_healthy().await;
    for i in 0..3 {
        let id = format!("kv{i}");
        assert_eq!(
            ha.placed(new_leader, &id).await.unwrap().as_deref(),
            Some("ha-host")
        );
    }
    assert_eq!(ha.units(), before, "the workloads were not touched");
    // The new leader writes.
    let ack = assign(
        ha.cp(new_leader).await,
        pattern("kvnew", &ha.host.demo, &[]),
    )
    .await
    .expect("assign on the new leader");
    assert!(ack.success);
}

/// Watch through `ports[first]`, and on any break resume on the next admin
/// that answers, after the last revision seen; until `done` holds. Returns
/// the events (bookmarks left out) and how many times it resumed.
async fn watch_resuming(
    ports: Vec<u16>,
    first: usize,
    since: i64,
    done: impl Fn(&[apb::Event]) -> bool,
) -> (Vec<apb::Event>, usize) {
    let mut events: Vec<apb::Event> = Vec::new();
    let mut last = since;
    let mut at = first;
    let mut resumed = 0;
    let end = Instant::now() + 3 * DEADLINE;
    'connect: loop {
        assert!(Instant::now() < end, "watching timed out: {events:#?}");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", ports[at]))
                .unwrap()
                .connect()
                .await;
        let stream = match channel {
            Ok(ch) => {
                AdminClient::new(ch)
                    .watch_events(apb::WatchRequest {
                        since_revision: Some(last),
                        ..Default::default()
                    })
                    .await
            }
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(_) => {
                at = (at + 1) % ports.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            match tokio::time::timeout_at(end, stream.message()).await {
                Ok(Ok(Some(e))) => {
                    last = e.revision;
                    if e.kind != "bookmark" {
                        events.push(e);
                        if done(&events) {
                            return (events, resumed);
                        }
                    }
                }
                Ok(_) => {
                    resumed += 1;
                    at = (at + 1) % ports.len();
                    continue 'connect;
                }
                Err(_) => panic!("watching timed out: {events:#?}"),
            }
        }
    }
}

/// Watchers on every admin while the leader is killed (SIGKILL) with
/// assignments in flight: each resumes (the leader's on another admin)
/// and sees one sequence, every revision once, with no gap, the new
/// leader's election in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_resume_across_a_leader_kill_with_no_gap_and_no_duplicate() {
    let Some(mut ha) = Ha::start(3).await else {
        return;
    };
    let (leader, epoch) = ha.leader().await.expect("a leader");
    let since = ha
        .api(leader)
        .await
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    let ports: Vec<u16> = ha.admins.iter().map(|a| a.port).collect();
    let done = |e: &[apb::Event]| {
        e.iter()
            .any(|e| e.kind == "process.running" && e.process_id == "after-kill")
    };
    let watchers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(watch_resuming(ports.clone(), i, since, done)))
        .collect();
    let follower = ha.follower().await;
    for i in 0..3 {
        let id = format!("w-before{i}");
        assign(ha.cp(follower).await, pattern(&id, &ha.host.demo, &[]))
            .await
            .unwrap_or_else(|s| panic!("assign {id}: {s}"));
    }
    let mut in_flight = Vec::new();
    for i in 0..4 {
        let id = format!("w-during{i}");
        let via = ha.cp((leader + 1 + i % 2) % 3).await;
        in_flight.push(tokio::spawn(assign(via, pattern(&id, &ha.host.demo, &[]))));
    }
    let killed_at = Instant::now();
    ha.admins[leader].kill9();
    for t in in_flight {
        let _ = t.await.unwrap();
    }
    eventually("another admin to lead", DEADLINE, || async {
        ha.leader().await.filter(|(i, _)| *i != leader)
    })
    .await;
    ha.wait_healthy().await;
    let follower = ha.follower().await;
    eventually("an assignment after the kill", DEADLINE, || async {
        assign(
            ha.cp(follower).await,
            pattern("after-kill", &ha.host.demo, &[]),
        )
        .await
        .ok()
        .filter(|a| a.success)
    })
    .await;
    let mut sequences = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        let (events, resumed) = w.await.unwrap();
        let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
        let expected: Vec<i64> = (since + 1..=since + revisions.len() as i64).collect();
        assert_eq!(
            revisions, expected,
            "watcher {i}: a gap or a repeat in {events:#?}"
        );
        let elected = events
            .iter()
            .filter_map(|e| e.leader.as_ref())
            .any(|l| l.epoch > epoch);
        assert!(elected, "watcher {i} saw no new leader: {events:#?}");
        let first_after = events.iter().find(|e| {
            e.at_unix_ms > prism_launcher::clock::unix_ms() - killed_at.elapsed().as_millis() as i64
        });
        eprintln!(
            "watcher {i} (admin {i}{}): {} events, resumed {resumed} time(s); first event after the kill: {:?}",
            if i == leader {
                ", the leader killed"
            } else {
                ""
            },
            events.len(),
            first_after.map(|e| e.kind.clone())
        );
        if i == leader {
            assert!(resumed >= 1, "the killed leader's watcher never resumed");
        }
        sequences.push(
            events
                .iter()
                .map(|e| (e.revision, e.kind.clone(), e.process_id.clone()))
                .collect::<Vec<_>>(),
        );
    }
    // Every watcher saw the same sequence (up to where each stopped).
    let shortest = sequences.iter().map(Vec::len).min().unwrap();
    for s in &sequences[1..] {
        assert_eq!(s[..shortest], sequences[0][..shortest]);
    }
}
