//! Engine benchmark against a real (sandboxed) systemd manager:
//! `cargo bench --bench engine [-- --units N --latency-samples M]`.
//!
//! Prints the start-to-active latency of single units, the time to start N
//! units concurrently, and the engine's memory with N units running.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use prism_launcher::{systemd::Systemd, unit};
use support::{arg, percentile, rss_mib};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let units = arg("--units", 200);
    let samples = arg("--latency-samples", 100);
    let Some(h) = support::sandbox() else { return };
    let engine = h.engine().await;
    let rss_idle = rss_mib(std::process::id());

    // 1. Start-to-active latency of one unit, one at a time: the unit as
    //    translated, and the same unit without the hardening set,
    //    interleaved so both see the same machine.
    let hardening = unit::hardening_properties();
    let mut hardened = Vec::with_capacity(samples);
    let mut plain = Vec::with_capacity(samples);
    for i in 0..samples * 2 {
        let p = h.process(support::pattern(&format!("lat-{i}"), &h.demo, &[]));
        let mut spec = unit::translate(&p);
        let strip = i % 2 == 1;
        if strip {
            spec.properties
                .retain(|(name, _)| !hardening.contains(name));
        }
        let t = Instant::now();
        engine.start_transient(&spec).await.expect("start");
        if strip { &mut plain } else { &mut hardened }.push(t.elapsed());
        engine
            .stop(&spec.name, Duration::from_secs(10))
            .await
            .expect("stop");
    }
    for (what, latencies) in [
        ("hardened", &mut hardened),
        ("without hardening", &mut plain),
    ] {
        latencies.sort();
        println!(
            "start-to-active, one unit, {what} ({samples} samples): median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(latencies, 0.5).as_secs_f64() * 1e3,
            percentile(latencies, 0.9).as_secs_f64() * 1e3,
            percentile(latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    println!(
        "hardening cost: median {:.2}x, p90 {:.2}x of the unit without it",
        percentile(&hardened, 0.5).as_secs_f64() / percentile(&plain, 0.5).as_secs_f64(),
        percentile(&hardened, 0.9).as_secs_f64() / percentile(&plain, 0.9).as_secs_f64(),
    );

    // 2. N units at once, 32 calls in flight, spread over the four types'
    //    slices as the launcher does.
    let specs: Vec<_> = (0..units)
        .map(|i| {
            let id = format!("n-{i}");
            let wire = match i % 4 {
                0 => support::pattern(&id, &h.demo, &[]),
                1 => support::proxy(&id, &h.demo, &[]),
                2 => support::backend(&id, &h.demo, &[]),
                _ => support::utility(&id, &h.demo, &[]),
            };
            unit::translate(&h.process(wire))
        })
        .collect();
    let t = Instant::now();
    let results: Vec<_> = stream::iter(specs.iter())
        .map(|spec| engine.start_transient(spec))
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = t.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        failed,
        0,
        "{failed} starts failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    let active = engine
        .list()
        .await
        .expect("list")
        .iter()
        .filter(|u| u.active_state == "active")
        .count();
    println!(
        "{units} units started concurrently: {:.2} s ({:.0} starts/s), {active} active",
        elapsed.as_secs_f64(),
        units as f64 / elapsed.as_secs_f64()
    );

    // 3. Memory of this process (the engine and its runtime) with N units.
    let rss_full = rss_mib(std::process::id());
    println!(
        "engine RSS: {rss_idle:.1} MiB before, {rss_full:.1} MiB with {units} units running ({:+.1} MiB)",
        rss_full - rss_idle
    );

    let t = Instant::now();
    let stops: Vec<_> = stream::iter(specs.iter())
        .map(|spec| engine.stop(&spec.name, Duration::from_secs(30)))
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(stops.iter().all(Result::is_ok));
    println!("{units} units stopped: {:.2} s", t.elapsed().as_secs_f64());
}
