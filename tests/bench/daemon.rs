//! Daemon benchmark: prism-launcher (release build) over gRPC against a
//! sandboxed systemd manager, as a ratio to the floor measured in the same
//! run: the same units started straight through the engine
//! (`StartTransientUnit` with the exact properties `unit::translate` gives).
//!
//! `cargo bench --bench daemon [-- --held 0,1000,5000 --samples 100
//! --throughput-units 500 --idle-seconds 10 --update-samples 50]`
//!
//! At each number of units already held by the launcher it prints, for one
//! unit started at a time (raw and launcher samples interleaved, so both
//! see the same machine), p50 and p99 of start-to-active (AssignProcess
//! answers once the start job is done) and their ratios; then a new
//! version applied in place against one replacing the unit; then throughput
//! with 32 in flight, raw and through the launcher; the launcher's RSS;
//! idle CPU; a /metrics scrape; and restart-to-READY with everything
//! adopted. The workload is `sleep infinity`: the held units cost little
//! memory, so thousands fit.

#[path = "../support/mod.rs"]
mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use prism_launcher::{
    pb::prism::{self as pb, launcher::v1::launcher_client::LauncherClient},
    systemd::Systemd,
    unit,
};
use support::{Harness, arg, daemon::Daemon, percentile, rss_mib};
use tonic::transport::Channel;

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

/// `--name a,b,c` from the command line, or `default`.
fn list(name: &str, default: &[usize]) -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn wire(sleep: &Path, id: &str) -> pb::ProcessAssignment {
    support::pattern(id, sleep, &["infinity"])
}

struct Bench {
    h: Harness,
    sleep: std::path::PathBuf,
    engine: prism_launcher::systemd::DbusSystemd,
    client: LauncherClient<Channel>,
}

impl Bench {
    /// A raw unit: the launcher's properties, under a name outside the
    /// launcher's patterns (its reconciler stops workload units it does
    /// not hold).
    fn spec(&self, id: &str) -> unit::UnitSpec {
        let mut spec = unit::translate(&self.h.process(wire(&self.sleep, id)));
        spec.name = format!("bench-{}", spec.name);
        spec
    }

    /// Assign `ids` through the launcher, `parallel` in flight; the time.
    async fn assign_all(&self, ids: &[String], parallel: usize) -> Duration {
        let t = Instant::now();
        let results: Vec<_> = stream::iter(ids)
            .map(|id| {
                let mut c = self.client.clone();
                let a = wire(&self.sleep, id);
                async move { c.assign_process(a).await }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
        let elapsed = t.elapsed();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            panic!("assign: {e}");
        }
        elapsed
    }

    async fn revoke_all(&self, ids: &[String]) {
        let results: Vec<_> = stream::iter(ids)
            .map(|id| {
                let mut c = self.client.clone();
                let r = pb::ProcessRevocation {
                    process_id: id.clone(),
                    graceful_timeout_seconds: 5,
                    ..Default::default()
                };
                async move { c.revoke_process(r).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok));
    }

    /// Start `ids` straight through the engine, `parallel` in flight.
    async fn raw_all(&self, ids: &[String], parallel: usize) -> Duration {
        let specs: Vec<_> = ids.iter().map(|id| self.spec(id)).collect();
        let t = Instant::now();
        let results: Vec<_> = stream::iter(&specs)
            .map(|s| self.engine.start_transient(s))
            .buffer_unordered(parallel)
            .collect()
            .await;
        let elapsed = t.elapsed();
        assert!(results.iter().all(Result::is_ok));
        elapsed
    }

    async fn stop_raw(&self, ids: &[String]) {
        let names: Vec<String> = ids.iter().map(|id| self.spec(id).name).collect();
        let results: Vec<_> = stream::iter(&names)
            .map(|n| self.engine.stop(n, Duration::from_secs(5)))
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok));
    }
}

fn row(what: &str, raw: &mut [Duration], launcher: &mut [Duration]) {
    raw.sort();
    launcher.sort();
    let (r50, l50) = (percentile(raw, 0.5), percentile(launcher, 0.5));
    let (r99, l99) = (percentile(raw, 0.99), percentile(launcher, 0.99));
    println!(
        "{what}: raw p50 {:.1} ms, launcher p50 {:.1} ms, ratio {:.2}; raw p99 {:.1} ms, launcher p99 {:.1} ms, ratio {:.2}",
        ms(r50),
        ms(l50),
        l50.as_secs_f64() / r50.as_secs_f64(),
        ms(r99),
        ms(l99),
        l99.as_secs_f64() / r99.as_secs_f64(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let held_levels = list("--held", &[0, 1000, 5000]);
    let samples = arg("--samples", 100);
    let throughput_units = arg("--throughput-units", 500);
    let idle_secs = arg("--idle-seconds", 10) as u64;
    let Some(h) = support::sandbox() else { return };
    // A workload that costs almost nothing while held.
    let sleep = h.bin_dir.join("sleep");
    std::fs::copy("/usr/bin/sleep", &sleep).expect("copy /usr/bin/sleep");
    std::fs::set_permissions(&sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
    let max = held_levels.iter().max().copied().unwrap_or(0) + samples + throughput_units + 10;
    let max = max.to_string();
    let mut d = Daemon::start(&h, &["--max-processes", &max]).await;
    let client = d.client().await;
    let engine = h.engine().await;
    let bench = Bench {
        h,
        sleep,
        engine,
        client,
    };
    println!(
        "floor: the same units started straight over D-Bus (StartTransientUnit, the properties \
         unit::translate gives); launcher: AssignProcess over gRPC until its ack"
    );

    let mut held = 0;
    for &level in &held_levels {
        // Fill up to `level` held units (not measured).
        if level > held {
            let ids: Vec<String> = (held..level).map(|i| format!("held-{i:05}")).collect();
            let took = bench.assign_all(&ids, 32).await;
            println!(
                "-- {level} held ({} assigned in {:.1} s)",
                level - held,
                took.as_secs_f64()
            );
            held = level;
        } else {
            println!("-- {level} held");
        }
        // One at a time, raw and launcher interleaved.
        let (mut raw, mut launched) = (Vec::new(), Vec::new());
        let (mut raw_ids, mut launcher_ids) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let id = format!("raw-{level}-{i}");
            let spec = bench.spec(&id);
            let t = Instant::now();
            bench.engine.start_transient(&spec).await.expect("start");
            raw.push(t.elapsed());
            raw_ids.push(id);
            let id = format!("lat-{level}-{i}");
            let a = wire(&bench.sleep, &id);
            let t = Instant::now();
            bench
                .client
                .clone()
                .assign_process(a)
                .await
                .expect("assign");
            launched.push(t.elapsed());
            launcher_ids.push(id);
        }
        row(
            &format!("start to active, one at a time, {level} held ({samples} each)"),
            &mut raw,
            &mut launched,
        );
        bench.stop_raw(&raw_ids).await;
        bench.revoke_all(&launcher_ids).await;
        // Settled: the launcher gives freed memory back within a second of
        // its last change.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "launcher RSS with {level} held (2 s after the last change): {:.1} MiB",
            rss_mib(d.pid())
        );
    }

    // A new version: in place (a new memory limit: SetUnitProperties, the
    // process keeps running) against a replacement (new arguments: stop,
    // then start), through the launcher and raw, interleaved.
    let updates = arg("--update-samples", 50);
    {
        let limits = |version: i64, memory: i64, args: &[&str]| {
            let mut a = support::pattern("upd-1", &bench.sleep, args);
            a.version = version;
            a.config.as_mut().unwrap().resources = Some(pb::ResourceLimits {
                memory_max_bytes: memory,
                ..Default::default()
            });
            a
        };
        let mut client = bench.client.clone();
        client
            .assign_process(limits(1, 64 << 20, &["infinity"]))
            .await
            .expect("assign upd-1");
        let raw_spec = bench.spec("upd-raw");
        bench
            .engine
            .start_transient(&raw_spec)
            .await
            .expect("start raw");
        let (mut in_place, mut replaced, mut raw_set, mut raw_replace) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut version = 1;
        let mut args: &[&str] = &["infinity"];
        for i in 0..updates {
            version += 1;
            let memory = (64 + (i as i64 % 2)) << 20;
            let t = Instant::now();
            let ack = client
                .assign_process(limits(version, memory, args))
                .await
                .expect("update in place")
                .into_inner();
            in_place.push(t.elapsed());
            assert_eq!(ack.applied, "updated in place", "{ack:?}");
            version += 1;
            // Alternating arguments (`sleep infinity` and `sleep inf`):
            // a new unit each time.
            args = if i % 2 == 0 { &["inf"] } else { &["infinity"] };
            let t = Instant::now();
            let ack = client
                .assign_process(limits(version, memory, args))
                .await
                .expect("replace")
                .into_inner();
            replaced.push(t.elapsed());
            assert!(ack.applied.starts_with("replaced"), "{ack:?}");
            let props = [(unit::props::MEMORY_MAX, unit::PropValue::U64(memory as u64))];
            let t = Instant::now();
            bench
                .engine
                .set_properties(&raw_spec.name, &props)
                .await
                .expect("raw set");
            raw_set.push(t.elapsed());
            let t = Instant::now();
            bench
                .engine
                .stop(&raw_spec.name, Duration::from_secs(5))
                .await
                .expect("raw stop");
            bench
                .engine
                .start_transient(&raw_spec)
                .await
                .expect("raw start");
            raw_replace.push(t.elapsed());
        }
        row(
            &format!("a new version applied in place ({updates} each)"),
            &mut raw_set,
            &mut in_place,
        );
        row(
            &format!("a new version replacing the unit ({updates} each)"),
            &mut raw_replace,
            &mut replaced,
        );
        println!(
            "in place against a replacement, through the launcher: p50 {:.1} ms against {:.1} ms ({:.2}x faster)",
            ms(percentile(&in_place, 0.5)),
            ms(percentile(&replaced, 0.5)),
            percentile(&replaced, 0.5).as_secs_f64() / percentile(&in_place, 0.5).as_secs_f64(),
        );
        bench.stop_raw(&["upd-raw".to_owned()]).await;
        bench.revoke_all(&["upd-1".to_owned()]).await;
    }

    // Throughput, 32 in flight, on top of what is held: raw, launcher, raw
    // again (the floor is their mean, so neither side gains from going
    // first).
    let mut raw_rates = Vec::new();
    let mut rate = 0.0;
    for (round, what) in ["raw", "launcher", "raw"].iter().enumerate() {
        let ids: Vec<String> = (0..throughput_units)
            .map(|i| format!("tp{round}-{i}"))
            .collect();
        if *what == "raw" {
            let took = bench.raw_all(&ids, 32).await;
            raw_rates.push(throughput_units as f64 / took.as_secs_f64());
            bench.stop_raw(&ids).await;
        } else {
            let took = bench.assign_all(&ids, 32).await;
            rate = throughput_units as f64 / took.as_secs_f64();
            bench.revoke_all(&ids).await;
        }
    }
    let raw_rate = raw_rates.iter().sum::<f64>() / raw_rates.len() as f64;
    println!(
        "throughput, {throughput_units} units, 32 in flight, {held} held: raw {raw_rate:.0}/s \
         (runs before and after: {:.0}/s, {:.0}/s), launcher {rate:.0}/s, ratio {:.2}",
        raw_rates[0],
        raw_rates[1],
        rate / raw_rate
    );

    // Idle CPU: the launcher only reacts to signals. Two windows: right
    // after the revocations above (their aftermath included), then the
    // next one.
    let manager = bench.h.sandbox.manager_pid().expect("manager pid");
    let ticks = 100.0; // USER_HZ
    for window in ["right after the last revocation", "the next"] {
        let (l0, m0) = (cpu_ticks(d.pid()), cpu_ticks(manager));
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let (l1, m1) = (cpu_ticks(d.pid()), cpu_ticks(manager));
        println!(
            "idle {idle_secs} s with {held} held ({window}): launcher CPU {:.2} %, systemd manager CPU {:.2} %",
            (l1 - l0) as f64 / ticks / idle_secs as f64 * 100.0,
            (m1 - m0) as f64 / ticks / idle_secs as f64 * 100.0,
        );
    }

    // /metrics: gauges come from the launcher's own state.
    let addr = d.metrics_addr().await;
    let m0 = cpu_ticks(manager);
    let mut scrapes = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        support::scrape(&addr).await;
        scrapes.push(t.elapsed());
    }
    scrapes.sort();
    println!(
        "GET /metrics with {held} held: median {:.2} ms; systemd manager CPU ticks meanwhile: {}",
        ms(percentile(&scrapes, 0.5)),
        cpu_ticks(manager) - m0,
    );

    // kill -9, restart, READY=1 once everything is adopted.
    let t = Instant::now();
    d.restart().await;
    println!(
        "launcher restart to READY=1 with {held} adopted: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let listed = d
        .client()
        .await
        .list_processes(pb::launcher::v1::ListProcessesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .processes
        .len();
    assert_eq!(listed, held);
    println!(
        "launcher RSS after adopting {held}: {:.1} MiB",
        rss_mib(d.pid())
    );
}
