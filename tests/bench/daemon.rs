//! Daemon benchmark: prism-launcher (release build) over gRPC against a
//! sandboxed systemd manager. `cargo bench --bench daemon [-- --units N]`.
//!
//! Prints assignment-to-active latency, the time to assign N processes,
//! the launcher's RSS with N running, its CPU while idle (and the
//! manager's, which event-driven clients leave alone), the cost of a
//! /metrics scrape, and restart-to-READY with N adopted.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use support::{arg, daemon::Daemon, percentile, rss_mib};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let n = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(11) + n(12)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let units = arg("--units", 500);
    let samples = arg("--latency-samples", 100);
    let idle_secs = arg("--idle-seconds", 10) as u64;
    let Some(h) = support::sandbox() else { return };
    let max = (units + samples + 10).to_string();
    let mut d = Daemon::start(&h, &["--max-processes", &max]).await;
    let client = d.client().await;

    // 1. Assignment to active, one at a time (AssignProcess returns once
    //    systemd's start job is done, i.e. the unit is active).
    let mut latencies = Vec::new();
    for i in 0..samples {
        let a = support::pattern(&format!("lat-{i}"), &h.demo, &[]);
        let t = Instant::now();
        client.clone().assign_process(a).await.expect("assign");
        latencies.push(t.elapsed());
    }
    for i in 0..samples {
        client
            .clone()
            .revoke_process(prism_launcher::pb::prism::ProcessRevocation {
                process_id: format!("lat-{i}"),
                ..Default::default()
            })
            .await
            .expect("revoke");
    }
    latencies.sort();
    println!(
        "assignment to active over gRPC ({samples} sequential): median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );

    // 2. N assignments, 32 in flight, over the four types.
    let t = Instant::now();
    let results: Vec<_> = stream::iter(0..units)
        .map(|i| {
            let mut c = client.clone();
            let id = format!("n-{i:04}");
            let a = match i % 4 {
                0 => support::pattern(&id, &h.demo, &[]),
                1 => support::proxy(&id, &h.demo, &[]),
                2 => support::backend(&id, &h.demo, &[]),
                _ => support::utility(&id, &h.demo, &[]),
            };
            async move { c.assign_process(a).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = t.elapsed();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    println!(
        "{units} processes assigned and active: {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        units as f64 / elapsed.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "launcher RSS with {units} running: {:.1} MiB",
        rss_mib(d.pid())
    );

    // 3. Idle CPU with N units: the launcher only reacts to signals.
    let manager = h.sandbox.manager_pid().expect("manager pid");
    let ticks = 100.0; // USER_HZ
    let (l0, m0) = (cpu_ticks(d.pid()), cpu_ticks(manager));
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (l1, m1) = (cpu_ticks(d.pid()), cpu_ticks(manager));
    println!(
        "idle {idle_secs} s with {units} units: launcher CPU {:.2} %, systemd manager CPU {:.2} %",
        (l1 - l0) as f64 / ticks / idle_secs as f64 * 100.0,
        (m1 - m0) as f64 / ticks / idle_secs as f64 * 100.0,
    );

    // 4. /metrics with N units: gauges come from the launcher's own state,
    //    so a scrape costs the systemd manager nothing.
    let addr = d.metrics_addr().await;
    let m0 = cpu_ticks(manager);
    let mut scrapes = Vec::new();
    let mut bytes = 0;
    for _ in 0..100 {
        let t = Instant::now();
        bytes = support::scrape(&addr).await.len();
        scrapes.push(t.elapsed());
    }
    let m1 = cpu_ticks(manager);
    scrapes.sort();
    println!(
        "GET /metrics with {units} units (100 sequential): median {:.2} ms, p99 {:.2} ms, \
         {bytes} bytes; systemd manager CPU ticks meanwhile: {}",
        percentile(&scrapes, 0.5).as_secs_f64() * 1e3,
        percentile(&scrapes, 0.99).as_secs_f64() * 1e3,
        m1 - m0,
    );

    // 5. kill -9, restart, READY=1 once all N are adopted.
    let t = Instant::now();
    d.restart().await;
    println!(
        "launcher restart to READY=1 with {units} units adopted: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let listed = client_list_len(&d).await;
    assert_eq!(listed, units);
    println!(
        "launcher RSS after adopting {units}: {:.1} MiB",
        rss_mib(d.pid())
    );
}

async fn client_list_len(d: &Daemon) -> usize {
    d.client()
        .await
        .list_processes(prism_launcher::pb::prism::launcher::v1::ListProcessesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .processes
        .len()
}
