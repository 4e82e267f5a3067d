//! prism-admin on PostgreSQL: `cargo bench --bench ha [-- --assignments N
//! --kills K]`.
//!
//! 1. AssignProcess through the admin binary on SQLite and on PostgreSQL
//!    (a local cluster of the bench's own, with fsync as PostgreSQL
//!    ships), side by side in one run, 100 launchers registered (played by
//!    an in-process fake that acknowledges at once), 32 in flight:
//!    throughput and latency percentiles; on PostgreSQL also through a
//!    follower (passed on to the leader);
//! 2. failover: three admins on one database, the leader killed with
//!    SIGKILL `K` times, each at another point of its renewal period; the
//!    time until another admin holds the lease, and until it answers an
//!    operator call. The median and the worst.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use prism_launcher::{
    devstack::cluster::{self, LocalCluster},
    pb::prism::{
        self as pb,
        admin::v1::{self as apb, admin_client::AdminClient},
        control_plane_client::ControlPlaneClient,
    },
};
use sqlx::Connection;
use support::{daemon::Daemon, percentile};
use tonic::transport::Channel;

/// `total` AssignProcess calls through `cp`, 32 in flight: (per second,
/// sorted latencies).
async fn assign_all(
    cp: &ControlPlaneClient<Channel>,
    prefix: &str,
    total: usize,
) -> (f64, Vec<Duration>) {
    let t = Instant::now();
    let mut latencies: Vec<Duration> = stream::iter(0..total)
        .map(|i| {
            let mut c = cp.clone();
            let id = format!("{prefix}-{i:05}");
            async move {
                let t = Instant::now();
                c.assign_process(support::fake::assignment(&id))
                    .await
                    .expect("assign");
                t.elapsed()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let rate = total as f64 / t.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

async fn register_fleet(cp: &ControlPlaneClient<Channel>, fake: &str) {
    for i in 0..100 {
        cp.clone()
            .register_launcher(pb::LauncherRegistration {
                launcher_id: format!("l-{i:03}"),
                address: fake.into(),
                region: "eu".into(),
                version: "1".into(),
                capabilities: vec!["pattern".into()],
                max_processes: 1000,
                process_types: vec!["pattern".into()],
                ..Default::default()
            })
            .await
            .expect("register");
    }
}

fn row(what: &str, (rate, lat): &(f64, Vec<Duration>)) {
    println!(
        "| {what} | {rate:.0}/s | {:.2} ms | {:.2} ms |",
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3
    );
}

/// The admin holding the lease, by its pid (the holder names it).
async fn leader_pid(url: &str) -> Option<u32> {
    let mut c = sqlx::PgConnection::connect(url).await.ok()?;
    let (holder,): (String,) = sqlx::query_as("SELECT holder FROM leader_lease WHERE id = 1")
        .fetch_optional(&mut c)
        .await
        .ok()??;
    holder.split('/').nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    if cluster::binaries().is_none() {
        println!("no PostgreSQL (/usr/lib/postgresql/*/bin) here: nothing to measure");
        return;
    }
    let total = support::arg("--assignments", 2000);
    let kills = support::arg("--kills", 10);
    let pg_dir = tempfile::tempdir().unwrap();
    let mut pg = LocalCluster::create(pg_dir.path(), true).expect("initdb");
    pg.start().expect("pg_ctl start");

    let fake_addr = support::fake::serve().await;

    // 1. SQLite and PostgreSQL, side by side, alternating rounds.
    let url = pg.create_database("throughput").await.unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let sqlite = Daemon::admin(dirs[0].path(), &["--heartbeat-interval", "10s"]).await;
    let leader = Daemon::admin(
        dirs[1].path(),
        &["--heartbeat-interval", "10s", "--database", &url],
    )
    .await;
    let follower = Daemon::admin(
        dirs[2].path(),
        &["--heartbeat-interval", "10s", "--database", &url],
    )
    .await;
    let sqlite_cp = ControlPlaneClient::new(sqlite.channel().await);
    let leader_cp = ControlPlaneClient::new(leader.channel().await);
    let follower_cp = ControlPlaneClient::new(follower.channel().await);
    register_fleet(&sqlite_cp, &fake_addr).await;
    register_fleet(&leader_cp, &fake_addr).await;
    let half = total / 2;
    let (mut s, mut p, mut f) = ((0.0, vec![]), (0.0, vec![]), (0.0, vec![]));
    for round in 0..2 {
        let merge = |acc: &mut (f64, Vec<Duration>), (rate, lat): (f64, Vec<Duration>)| {
            acc.0 += rate / 2.0;
            acc.1.extend(lat);
            acc.1.sort();
        };
        merge(
            &mut s,
            assign_all(&sqlite_cp, &format!("s{round}"), half).await,
        );
        merge(
            &mut p,
            assign_all(&leader_cp, &format!("p{round}"), half).await,
        );
        merge(
            &mut f,
            assign_all(&follower_cp, &format!("f{round}"), half).await,
        );
    }
    println!(
        "AssignProcess through the admin, 100 launchers, {total} each, 32 in flight (two rounds, alternating):"
    );
    println!("| store | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    row("SQLite (synchronous=FULL)", &s);
    row("PostgreSQL 15 (fsync on), to the leader", &p);
    row("PostgreSQL 15, through a follower", &f);
    println!(
        "PostgreSQL/SQLite: throughput {:.2}, p50 {:.2}",
        p.0 / s.0,
        percentile(&p.1, 0.5).as_secs_f64() / percentile(&s.1, 0.5).as_secs_f64()
    );
    drop((sqlite, leader, follower));

    // 2. Failover, `kills` times.
    let url = pg.create_database("failover").await.unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut admins = Vec::new();
    for d in &dirs {
        admins.push(
            Daemon::admin(
                d.path(),
                &["--heartbeat-interval", "1s", "--database", &url],
            )
            .await,
        );
    }
    let (mut to_lease, mut to_serve) = (Vec::new(), Vec::new());
    for round in 0..kills {
        // Killed at a different point of the renewal period each time
        // (every 5/3 s): right after a renewal is the worst case.
        let phase = Duration::from_millis(5000 / 3 * ((round * 7) % kills) as u64 / kills as u64);
        tokio::time::sleep(phase).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Some(pid) = leader_pid(&url).await
                && admins.iter().any(|a| a.pid() == pid)
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let i = admins.iter().position(|a| a.pid() == pid).unwrap();
        let killed = Instant::now();
        admins[i].kill9();
        let new = loop {
            if let Some(new) = leader_pid(&url).await
                && new != pid
            {
                break new;
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no new leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        to_lease.push(killed.elapsed());
        let j = admins
            .iter()
            .position(|a| a.child.is_some() && a.pid() == new)
            .unwrap();
        let mut api = AdminClient::new(admins[j].channel().await);
        while api
            .list_launchers(apb::ListLaunchersRequest {})
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        to_serve.push(killed.elapsed());
        // The killed one comes back, as a follower.
        admins[i].restart().await;
    }
    to_lease.sort();
    to_serve.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "failover, {kills} SIGKILLs of the leader (lease 5 s): another admin leads after median {:.0} ms (min {:.0}, max {:.0}); serves after median {:.0} ms (max {:.0})",
        ms(percentile(&to_lease, 0.5)),
        ms(to_lease[0]),
        ms(*to_lease.last().unwrap()),
        ms(percentile(&to_serve, 0.5)),
        ms(*to_serve.last().unwrap()),
    );
}
