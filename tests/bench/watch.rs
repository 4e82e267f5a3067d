//! Event streams: `cargo bench --bench watch [-- --seconds S --crashes N --failover 0|1]`
//! (`--crashes 0` and `--failover 0` leave out parts 1 and 3; `--watch-batch-ms N`
//! sets the admin's `--watch-batch`).
//!
//! 1. latency: a process on a real launcher (a sandboxed systemd manager)
//!    is killed `N` times; from the kill (systemd's state change) to its
//!    event at a watcher of the admin, through launcher → admin → watcher.
//!    p50 and p99, and as a ratio to the heartbeat interval (the goal is at
//!    most one; the launcher reports changes at once, the floor being the
//!    heartbeat that would otherwise carry them);
//! 2. load: 1000 launchers (the fake upstream-client launchers of the
//!    admin benchmark), 5000 processes, heartbeats at 10 s (100/s) each
//!    changing a process's state (100 events/s); the admin's CPU and RSS
//!    over `S` seconds without watchers, then on a fresh admin with 100
//!    watchers, one of them reading nothing: the ratio of the two, whether
//!    the stalled one was ended, and whether the others saw every event;
//! 3. failover: two admins on PostgreSQL, a watcher on the leader, the
//!    leader killed (SIGKILL): the time until the watcher, resumed on the
//!    other admin from its last revision, gets its next event (the new
//!    leader's election), with no gap and no repeat.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use prism_launcher::{
    devstack::cluster::{self, LocalCluster},
    pb::prism::{
        self as pb,
        admin::v1::{self as apb, admin_client::AdminClient},
        control_plane_client::ControlPlaneClient,
    },
};
use support::{daemon::Daemon, percentile};
use tonic::transport::Channel;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

async fn next_event(
    stream: &mut tonic::Streaming<apb::Event>,
    within: Duration,
) -> Option<apb::Event> {
    loop {
        match tokio::time::timeout(within, stream.message()).await {
            Ok(Ok(Some(e))) if e.kind == "bookmark" => continue,
            Ok(Ok(Some(e))) => return Some(e),
            _ => return None,
        }
    }
}

/// 1. From a kill in systemd to the event at a watcher.
async fn latency(crashes: usize) {
    let Some(h) = support::sandbox() else {
        println!("latency: SKIPPED (no sandboxed systemd manager here)");
        return;
    };
    let interval = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin(dir.path(), &["--heartbeat-interval", "1s"]).await;
    let endpoint = format!("http://127.0.0.1:{}", admin.port);
    let _launcher = Daemon::start_named(&h, "lat-1", &["--admin-endpoint", &endpoint]).await;
    let mut cp = ControlPlaneClient::new(admin.channel().await);
    let wire = support::with_config(support::utility("victim", &h.demo, &[]), |c| {
        c.restart_policy = Some(pb::RestartPolicy {
            delay_ms: 200,
            max_restarts: 1000,
            window_seconds: 1,
            ..Default::default()
        });
    });
    let unit = support::eventually("the launcher registered", support::DEADLINE, || {
        let mut cp = cp.clone();
        let wire = wire.clone();
        async move {
            cp.assign_process(wire)
                .await
                .ok()
                .map(|a| a.into_inner().unit_name)
        }
    })
    .await;
    let _ = &mut cp;
    let mut api = AdminClient::new(admin.channel().await);
    let mut stream = api
        .watch_events(apb::WatchRequest {
            process_id: "victim".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut latencies = Vec::new();
    for _ in 0..crashes {
        // Running (and told so) before each kill.
        support::eventually("victim running", support::DEADLINE, || async {
            (h.prop(&unit, "ActiveState") == "active" && h.prop(&unit, "SubState") == "running")
                .then_some(())
        })
        .await;
        while tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_ok()
        {}
        let t = Instant::now();
        h.systemctl(&["kill", "--signal=SIGKILL", &unit]);
        let e = next_event(&mut stream, support::DEADLINE)
            .await
            .expect("an event for the kill");
        latencies.push(t.elapsed());
        assert!(
            e.kind == "process.restarted" || e.kind == "process.failed",
            "{e:?}"
        );
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "latency, kill in systemd → event at a watcher ({crashes} kills, heartbeats every {interval:?}): \
         p50 {:.0} ms, p99 {:.0} ms; p50/interval {:.2}, p99/interval {:.2}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        p50.as_secs_f64() / interval.as_secs_f64(),
        p99.as_secs_f64() / interval.as_secs_f64(),
    );
}

fn registration(id: &str, address: &str) -> pb::LauncherRegistration {
    pb::LauncherRegistration {
        launcher_id: id.into(),
        address: address.into(),
        region: "local".into(),
        version: "bench".into(),
        capabilities: vec!["pattern".into()],
        max_processes: 5,
        process_types: vec!["pattern".into()],
        metadata: HashMap::new(),
        ..Default::default()
    }
}

struct Load {
    cpu_percent: f64,
    rss_mib: f64,
    events: i64,
}

/// 2. One run of the load: `watchers` (one stalled) or none.
async fn load(fake_addr: &str, seconds: u64, watchers: usize) -> Load {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec!["--heartbeat-interval".to_string(), "10s".into()];
    // The admin's default unless asked.
    if std::env::args().any(|a| a == "--watch-batch-ms") {
        flags.push("--watch-batch".into());
        flags.push(format!("{}ms", support::arg("--watch-batch-ms", 0)));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let admin = Daemon::admin(dir.path(), &flags).await;
    let cp: ControlPlaneClient<Channel> = ControlPlaneClient::new(admin.channel().await);
    for i in 0..1000 {
        cp.clone()
            .register_launcher(registration(&format!("hb-{i:04}"), fake_addr))
            .await
            .unwrap();
    }
    let placed: Vec<_> = stream::iter(0..5000)
        .map(|i| {
            let mut c = cp.clone();
            let mut r = tonic::Request::new(support::fake::assignment(&format!("hbp-{i:04}")));
            r.metadata_mut().insert(
                "prism-launcher-id",
                format!("hb-{:04}", i / 5).parse().unwrap(),
            );
            async move { c.assign_process(r).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = placed.iter().find(|r| r.is_err()) {
        panic!("placing: {e:?}");
    }
    // Each heartbeat restarts one of its launcher's processes: a change of
    // state, one event.
    let restarts: std::sync::Mutex<HashMap<String, i32>> = Default::default();
    let heartbeat = |i: usize| {
        let changed = format!("hbp-{:04}", (i % 1000) * 5 + (i / 1000) % 5);
        let mut r = restarts.lock().unwrap();
        pb::LauncherHeartbeatRequest {
            launcher_id: format!("hb-{:04}", i % 1000),
            process_health: (0..5)
                .map(|k| {
                    let id = format!("hbp-{:04}", (i % 1000) * 5 + k);
                    let n = r.entry(id.clone()).or_default();
                    if id == changed {
                        *n += 1;
                    }
                    (
                        id,
                        pb::ProcessHealth {
                            status: "running".into(),
                            detailed_status: "running".into(),
                            pid: 1000 + *n,
                            restart_count: *n,
                            version: 1,
                            exit_reason: "signal".into(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            resources: Some(pb::LauncherResourceUsage {
                process_count: 5,
                max_processes: 5,
                ..Default::default()
            }),
            timestamp: 0,
        }
    };
    // Settle: the first reports are changes too.
    let warm: Vec<_> = stream::iter(0..1000)
        .map(|i| {
            let mut c = cp.clone();
            let hb = heartbeat(i);
            async move { c.launcher_heartbeat(hb).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(warm.iter().all(Result::is_ok));
    let start = AdminClient::new(admin.channel().await)
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    // The watchers, each on a connection of its own; the first reads
    // nothing (a tiny window, filled at once).
    let mut readers = Vec::new();
    let mut stalled = None;
    for w in 0..watchers {
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", admin.port))
                .unwrap();
        if w == 0 {
            endpoint = endpoint.initial_stream_window_size(1024);
        }
        let stream = AdminClient::new(endpoint.connect().await.unwrap())
            .watch_events(apb::WatchRequest {
                since_revision: Some(start),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if w == 0 {
            stalled = Some(stream);
        } else {
            readers.push(tokio::spawn(async move {
                let mut stream = stream;
                let mut revisions = Vec::new();
                while let Ok(Some(e)) = stream.message().await {
                    if e.kind != "bookmark" {
                        revisions.push(e.revision);
                    }
                }
                revisions
            }));
        }
    }
    let (c0, t0) = (cpu_ticks(admin.pid()), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for k in 1000..(1000 + seconds as usize * 100) {
        tick.tick().await;
        let ack = cp
            .clone()
            .launcher_heartbeat(heartbeat(k))
            .await
            .unwrap()
            .into_inner();
        assert!(ack.success, "{ack:?}");
    }
    let cpu_percent =
        (cpu_ticks(admin.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    let rss_mib = support::rss_mib(admin.pid());
    let end = AdminClient::new(admin.channel().await)
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    if watchers > 0 {
        // Every reader saw every event, in order; the stalled one was ended.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let metrics = support::scrape(&admin.metrics_addr().await).await;
        let slow = support::sample(&metrics, "prism_admin_watchers_ended_slow_total");
        let mut stalled = stalled.take().unwrap();
        let mut ended = None;
        while let Ok(m) = tokio::time::timeout(Duration::from_secs(5), stalled.message()).await {
            match m {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) => {
                    ended = Some(s.code());
                    break;
                }
            }
        }
        drop(admin);
        let mut complete = 0;
        for r in readers {
            let revisions = r.await.unwrap();
            let expected: Vec<i64> = (start + 1..=end).collect();
            if revisions.len() >= expected.len() && revisions[..expected.len()] == expected[..] {
                complete += 1;
            }
        }
        println!(
            "load with {watchers} watchers: the stalled one ended {:?} (prism_admin_watchers_ended_slow_total {slow:?}); \
             {complete} of {} readers saw every one of the {} events, in order",
            ended,
            watchers - 1,
            end - start
        );
    }
    Load {
        cpu_percent,
        rss_mib,
        events: end - start,
    }
}

/// 3. The leader killed under a watcher.
async fn failover() {
    if cluster::binaries().is_none() {
        println!("failover: SKIPPED (no PostgreSQL here)");
        return;
    }
    let pg_dir = tempfile::tempdir().unwrap();
    let mut pg = LocalCluster::create(pg_dir.path(), false).expect("initdb");
    pg.start().expect("pg_ctl start");
    let url = pg.create_database("watch").await.expect("database");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut admins = Vec::new();
    for d in &dirs {
        admins.push(
            Daemon::admin(
                d.path(),
                &["--database", &url, "--heartbeat-interval", "1s"],
            )
            .await,
        );
    }
    // The leader: the one whose lease row names its pid.
    let leader = support::eventually("a leader", support::DEADLINE, || async {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .ok()?;
        let holder: String = sqlx::query_scalar("SELECT holder FROM leader_lease WHERE id = 1")
            .fetch_optional(&mut c)
            .await
            .ok()??;
        let pid: u32 = holder.split('/').nth(1)?.parse().ok()?;
        admins.iter().position(|a| a.pid() == pid)
    })
    .await;
    let other = 1 - leader;
    let cp = ControlPlaneClient::new(admins[leader].channel().await);
    let mut stream = AdminClient::new(admins[leader].channel().await)
        .watch_events(apb::WatchRequest {
            since_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        cp.clone()
            .register_launcher(registration(&format!("f-{i:02}"), "127.0.0.1:9"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 21 {
        let e = next_event(&mut stream, support::DEADLINE)
            .await
            .expect("events");
        seen.push(e.revision);
    }
    let killed = Instant::now();
    admins[leader].kill9();
    // Drain what was sent before the kill, then resume on the other admin.
    while let Some(e) = next_event(&mut stream, Duration::from_secs(2)).await {
        seen.push(e.revision);
    }
    let last = *seen.last().unwrap();
    let mut resumed = AdminClient::new(admins[other].channel().await)
        .watch_events(apb::WatchRequest {
            since_revision: Some(last),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = next_event(&mut resumed, 3 * support::DEADLINE)
        .await
        .expect("an event after the kill");
    let after = killed.elapsed();
    seen.push(e.revision);
    let contiguous = seen.windows(2).all(|w| w[1] == w[0] + 1);
    println!(
        "failover: first event after the leader's SIGKILL, on the other admin: {} after {:.2} s (lease 5 s); revisions contiguous: {contiguous}",
        e.kind,
        after.as_secs_f64()
    );
    drop(admins);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = support::arg("--seconds", 20) as u64;
    let crashes = support::arg("--crashes", 30);
    if crashes > 0 {
        latency(crashes).await;
    }
    let fake_addr = support::fake::serve().await;
    let bare = load(&fake_addr, seconds, 0).await;
    let watched = load(&fake_addr, seconds, 100).await;
    println!(
        "load, 1000 launchers, 5000 processes, {} events in {seconds} s: admin CPU {:.1} % of a core without watchers, \
         {:.1} % with 100 (ratio {:.2}); RSS {:.1} MiB and {:.1} MiB (ratio {:.2})",
        watched.events,
        bare.cpu_percent,
        watched.cpu_percent,
        watched.cpu_percent / bare.cpu_percent,
        bare.rss_mib,
        watched.rss_mib,
        watched.rss_mib / bare.rss_mib,
    );
    let _ = bare.events;
    if support::arg("--failover", 1) > 0 {
        failover().await;
    }
}
