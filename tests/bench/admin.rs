//! prism-admin benchmark: `cargo bench --bench admin`.
//!
//! 1. placement decisions per second over 100 launchers (the pure choice);
//! 2. AssignProcess throughput through the admin binary with 100 registered
//!    launchers (placement, SQLite, push, ack), the launchers played by an
//!    in-process fake that acknowledges at once;
//! 3. heartbeat handling for 1000 launchers at a 10 s interval: each
//!    reporting its 5 processes, nothing, or 5 processes placed nowhere
//!    (which the admin revokes towards launchers it cannot reach): the
//!    admin's CPU, the RPC latency and its RSS;
//! 4. end to end: AssignProcess at the admin until the unit is active on a
//!    real launcher with a real (sandboxed) systemd manager.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use prism_launcher::{
    admin::placement::{Candidate, Liveness, Request, choose},
    pb::prism::{self as pb, control_plane_client::ControlPlaneClient},
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

fn registration(id: &str, address: &str, max: i32) -> pb::LauncherRegistration {
    pb::LauncherRegistration {
        launcher_id: id.into(),
        address: address.into(),
        region: "local".into(),
        version: "bench".into(),
        capabilities: vec!["pattern".into()],
        max_processes: max,
        process_types: vec!["pattern".into()],
        metadata: HashMap::new(),
        ..Default::default()
    }
}

/// What the 1000 launchers of a heartbeat run report.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// The 5 processes placed on each, running: the steady state.
    Placed,
    /// Nothing.
    Empty,
    /// 5 processes placed nowhere, from launchers the admin cannot reach:
    /// it revokes them towards addresses that refuse.
    Unplaced,
}

/// 1000 launchers heartbeating at 10 s (100 heartbeats/s, evenly spread)
/// on a fresh admin: one untimed round first (the first reports are status
/// changes, recorded once), then the admin's CPU over the measured window.
async fn heartbeats(scenario: Scenario, fake_addr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin(dir.path(), &["--heartbeat-interval", "10s"]).await;
    let cp: ControlPlaneClient<Channel> = ControlPlaneClient::new(admin.channel().await);
    let address = match scenario {
        Scenario::Unplaced => "127.0.0.1:1",
        _ => fake_addr,
    };
    for i in 0..1000 {
        cp.clone()
            .register_launcher(registration(&format!("hb-{i:04}"), address, 5))
            .await
            .unwrap();
    }
    if let Scenario::Placed = scenario {
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
        assert!(placed.iter().all(Result::is_ok));
    }
    let heartbeat = |i: usize| pb::LauncherHeartbeatRequest {
        launcher_id: format!("hb-{i:04}"),
        process_health: match scenario {
            Scenario::Empty => HashMap::new(),
            Scenario::Placed | Scenario::Unplaced => (0..5)
                .map(|k| {
                    (
                        format!("hbp-{:04}", i * 5 + k),
                        pb::ProcessHealth {
                            status: "running".into(),
                            pid: 1000 + k as i32,
                            version: 1,
                            detailed_status: "running".into(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        },
        resources: Some(pb::LauncherResourceUsage {
            process_count: 5,
            max_processes: 5,
            ..Default::default()
        }),
        timestamp: 0,
    };
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
    // Three windows of 20 s: the first shows the aftermath of the first
    // round (backoffs starting), the later ones the steady state.
    let window = 20;
    let mut latencies = Vec::new();
    let mut cpu = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut k = 0;
    for _ in 0..3 {
        let (c0, t0) = (cpu_ticks(admin.pid()), Instant::now());
        for _ in 0..(window * 100) {
            tick.tick().await;
            let t = Instant::now();
            let ack = cp
                .clone()
                .launcher_heartbeat(heartbeat(k % 1000))
                .await
                .unwrap()
                .into_inner();
            latencies.push(t.elapsed());
            assert!(ack.success, "{ack:?}");
            k += 1;
        }
        let used = (cpu_ticks(admin.pid()) - c0) as f64 / 100.0;
        cpu.push(used / t0.elapsed().as_secs_f64() * 100.0);
    }
    latencies.sort();
    println!(
        "heartbeats, 1000 launchers at 10 s (100/s), {scenario:?}: admin CPU {:.1} %, {:.1} %, {:.1} % of one core in three {window} s windows (mean {:.1} %); RPC median {:.2} ms, p99 {:.2} ms; admin RSS {:.1} MiB",
        cpu[0],
        cpu[1],
        cpu[2],
        cpu.iter().sum::<f64>() / 3.0,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        support::rss_mib(admin.pid()),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // 1. The pure choice over 100 launchers.
    let types = vec!["pattern".to_owned()];
    let ids: Vec<String> = (0..100).map(|i| format!("l-{i:03}")).collect();
    let labels = std::collections::BTreeMap::new();
    let candidates: Vec<Candidate<'_>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Candidate {
            id,
            region: if i % 2 == 0 { "eu" } else { "us" },
            process_types: &types,
            max_processes: 100,
            used: (i * 7 % 100) as u32,
            spec_bytes: 0,
            draining: false,
            liveness: Liveness::Healthy,
            silent: Duration::ZERO,
            late_after: Duration::from_secs(20),
            labels: &labels,
            in_group: 0,
        })
        .collect();
    let req = Request {
        process_type: "pattern",
        region: Some("eu"),
        ..Request::default()
    };
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(choose(std::hint::black_box(&candidates), &req).unwrap());
    }
    println!(
        "placement choice over 100 launchers: {:.0} decisions/s ({:.2} µs each)",
        n as f64 / t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );

    // The admin (release build) and the fake launchers.
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin(dir.path(), &["--heartbeat-interval", "10s"]).await;
    let fake_addr = support::fake::serve().await;
    let cp: ControlPlaneClient<Channel> = ControlPlaneClient::new(admin.channel().await);

    // 2. AssignProcess through the admin, 100 launchers registered.
    for i in 0..100 {
        cp.clone()
            .register_launcher(registration(&format!("l-{i:03}"), &fake_addr, 1000))
            .await
            .unwrap();
    }
    let total = 5000;
    let t = Instant::now();
    let results: Vec<_> = stream::iter(0..total)
        .map(|i| {
            let mut c = cp.clone();
            async move {
                c.assign_process(support::fake::assignment(&format!("p-{i:05}")))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    println!(
        "AssignProcess through the admin, 100 launchers: {total} in {:.2} s = {:.0} placements/s (32 in flight)",
        t.elapsed().as_secs_f64(),
        total as f64 / t.elapsed().as_secs_f64()
    );

    println!(
        "admin RSS with 100 launchers and 5000 processes: {:.1} MiB",
        support::rss_mib(admin.pid())
    );

    // 3. 1000 launchers heartbeating every 10 s, each scenario on a fresh
    // admin.
    for scenario in [Scenario::Placed, Scenario::Empty, Scenario::Unplaced] {
        heartbeats(scenario, &fake_addr).await;
    }

    // 4. End to end on a real launcher.
    let Some(h) = support::sandbox() else { return };
    let endpoint = format!("http://127.0.0.1:{}", admin.port);
    let launcher = Daemon::start_named(
        &h,
        "real-1",
        &[
            "--admin-endpoint",
            &endpoint,
            "--capabilities",
            "utility",
            "--max-processes",
            "200",
        ],
    )
    .await;
    let mut ready = false;
    for _ in 0..200 {
        let mut r = tonic::Request::new(support::utility("probe-0", &h.demo, &[]));
        r.metadata_mut()
            .insert("prism-launcher-id", "real-1".parse().unwrap());
        if cp.clone().assign_process(r).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the real launcher never registered");
    // Through the admin, and straight to the launcher, interleaved. The
    // direct ones are revoked at once, untimed: the admin would otherwise
    // revoke them as not placed there.
    let mut direct_client = launcher.client().await;
    let (mut e2e, mut direct) = (Vec::new(), Vec::new());
    for i in 1..=100 {
        let mut r = tonic::Request::new(support::utility(&format!("e2e-{i}"), &h.demo, &[]));
        r.metadata_mut()
            .insert("prism-launcher-id", "real-1".parse().unwrap());
        let t = Instant::now();
        let ack = cp
            .clone()
            .assign_process(r)
            .await
            .expect("assign")
            .into_inner();
        e2e.push(t.elapsed());
        assert!(!ack.message.contains("pending"), "{ack:?}");

        let id = format!("direct-{i}");
        let t = Instant::now();
        direct_client
            .assign_process(support::utility(&id, &h.demo, &[]))
            .await
            .expect("direct assign");
        direct.push(t.elapsed());
        let _ = direct_client
            .revoke_process(pb::ProcessRevocation {
                process_id: id,
                ..Default::default()
            })
            .await;
    }
    e2e.sort();
    direct.sort();
    let (a50, d50) = (percentile(&e2e, 0.5), percentile(&direct, 0.5));
    println!(
        "AssignProcess to an active unit on a launcher (100 each, interleaved): through the admin median {:.1} ms, p99 {:.1} ms; \
         straight to the launcher median {:.1} ms, p99 {:.1} ms; admin/direct p50 ratio {:.2}",
        a50.as_secs_f64() * 1e3,
        percentile(&e2e, 0.99).as_secs_f64() * 1e3,
        d50.as_secs_f64() * 1e3,
        percentile(&direct, 0.99).as_secs_f64() * 1e3,
        a50.as_secs_f64() / d50.as_secs_f64(),
    );
}
