//! The fleet status page at its design point: `cargo bench --bench ui
//! [-- --seconds S --pages N --samples K]`.
//!
//! One prism-admin (SQLite) with 1000 launchers (the fake upstream-client
//! launchers of the admin benchmark, each with a host name, a rack label
//! and ten slots) and 10,000 processes, every one reported healthy.
//! Heartbeats flow at 100/s (each launcher every 10 s, its interval 60 s
//! so that setting up 10,000 processes misses none), each changing one
//! process's state: 100 events/s. Then:
//!
//! 1. the live feed: the admin's CPU over `S` seconds of that load without
//!    pages, then over `S` seconds with `N` (default 50) live pages open
//!    (`/events/live`, Server-Sent Events, one connection each): the cost
//!    of the pages in % of a core (the goal: at most 5), and how long each
//!    change took from its heartbeat to a page's row (p50, p99);
//! 2. the pages: each page `K` times (default 30) while the load runs, one
//!    request at a time: the time from request to last byte (the server's
//!    time plus a loopback round trip: an upper bound), p50 and p99, and
//!    the size of the answer (the goals: at most 100 ms and 300 KB). The
//!    floor is the API's answer with the same rows (ListLaunchers or
//!    ListProcesses over gRPC on loopback, the same number of times): the
//!    page's p50 as a ratio to the floor's tells whether the page costs
//!    more than the data does.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use prism_launcher::pb::prism::{
    self as pb,
    admin::v1::{self as apb, admin_client::AdminClient},
    control_plane_client::ControlPlaneClient,
};
use support::{daemon::Daemon, percentile};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const LAUNCHERS: usize = 1000;
const PER_LAUNCHER: usize = 10;
const PROCESSES: usize = LAUNCHERS * PER_LAUNCHER;

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

fn launcher_id(i: usize) -> String {
    format!("hb-{i:04}")
}

fn process_id(i: usize) -> String {
    format!("hbp-{i:05}")
}

fn registration(i: usize, address: &str) -> pb::LauncherRegistration {
    pb::LauncherRegistration {
        launcher_id: launcher_id(i),
        address: address.into(),
        region: format!("region-{}", i % 4),
        version: "bench".into(),
        capabilities: vec!["pattern".into()],
        max_processes: PER_LAUNCHER as i32,
        process_types: vec!["pattern".into()],
        metadata: HashMap::from([
            ("hostname".to_owned(), format!("node-{i:04}.bench.example")),
            ("rack".to_owned(), format!("r{}", i % 40)),
        ]),
        ..Default::default()
    }
}

/// Heartbeats in turn: heartbeat `k` is launcher `k % 1000`'s, and
/// restarts one of its processes (each process once per 10,000).
struct Beats {
    restarts: Mutex<HashMap<String, i32>>,
    /// When each process's latest change was sent.
    sent: Mutex<HashMap<String, Instant>>,
}

impl Beats {
    fn heartbeat(&self, k: usize) -> pb::LauncherHeartbeatRequest {
        let l = k % LAUNCHERS;
        let changed = process_id(l * PER_LAUNCHER + (k / LAUNCHERS) % PER_LAUNCHER);
        let mut restarts = self.restarts.lock().unwrap();
        pb::LauncherHeartbeatRequest {
            launcher_id: launcher_id(l),
            process_health: (0..PER_LAUNCHER)
                .map(|p| {
                    let id = process_id(l * PER_LAUNCHER + p);
                    let n = restarts.entry(id.clone()).or_default();
                    if id == changed && k >= LAUNCHERS {
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
                process_count: PER_LAUNCHER as i32,
                max_processes: PER_LAUNCHER as i32,
                ..Default::default()
            }),
            timestamp: 0,
        }
    }

    fn changed_by(k: usize) -> String {
        process_id((k % LAUNCHERS) * PER_LAUNCHER + (k / LAUNCHERS) % PER_LAUNCHER)
    }
}

/// Heartbeats at 100/s from `from` until `stop`; the next `k`.
async fn flow(
    cp: ControlPlaneClient<Channel>,
    beats: Arc<Beats>,
    from: usize,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut k = from;
    // Bounded: at most an hour of heartbeats.
    while !stop.load(Ordering::Relaxed) && k < from + 360_000 {
        tick.tick().await;
        let hb = beats.heartbeat(k);
        beats
            .sent
            .lock()
            .unwrap()
            .insert(Beats::changed_by(k), Instant::now());
        let ack = cp
            .clone()
            .launcher_heartbeat(hb)
            .await
            .unwrap()
            .into_inner();
        assert!(ack.success, "{ack:?}");
        k += 1;
    }
    k
}

/// One GET on a connection of its own: how long to the last byte, the
/// status, the body's size.
async fn get(authority: &str, path: &str, cookie: &str) -> (Duration, u16, usize) {
    let at = Instant::now();
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let took = at.elapsed();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (took, status, body.len())
}

/// A live page: its rows' process ids as they arrive, with when.
async fn live_page(
    authority: String,
    cookie: String,
    beats: Arc<Beats>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut s = tokio::net::TcpStream::connect(&authority).await.unwrap();
    s.write_all(
        format!(
            "GET /events/live?kind=process.restarted HTTP/1.0\r\nHost: {authority}\r\n\
             Cookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let line = match tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => break,
            Err(_) => continue,
        };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Some(at) = data.find("hbp-") else {
            continue;
        };
        let id = &data[at..(at + 9).min(data.len())];
        if let Some(sent) = beats.sent.lock().unwrap().get(id) {
            took.push(sent.elapsed());
        }
    }
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = support::arg("--seconds", 20) as u64;
    let pages = support::arg("--pages", 50);
    let samples = support::arg("--samples", 30);
    let fake_addr = support::fake::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin(dir.path(), &["--heartbeat-interval", "60s"]).await;
    let cp: ControlPlaneClient<Channel> = ControlPlaneClient::new(admin.channel().await);
    let api = AdminClient::new(admin.channel().await);
    let setup = Instant::now();
    for i in 0..LAUNCHERS {
        cp.clone()
            .register_launcher(registration(i, &fake_addr))
            .await
            .unwrap();
    }
    let placed: Vec<_> = stream::iter(0..PROCESSES)
        .map(|i| {
            let mut c = cp.clone();
            let mut r = tonic::Request::new(support::fake::assignment(&process_id(i)));
            r.metadata_mut().insert(
                "prism-launcher-id",
                launcher_id(i / PER_LAUNCHER).parse().unwrap(),
            );
            async move { c.assign_process(r).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = placed.iter().find(|r| r.is_err()) {
        panic!("placing: {e:?}");
    }
    let beats = Arc::new(Beats {
        restarts: Mutex::default(),
        sent: Mutex::default(),
    });
    // Every launcher's first report: each process running.
    let warm: Vec<_> = stream::iter(0..LAUNCHERS)
        .map(|k| {
            let mut c = cp.clone();
            let hb = beats.heartbeat(k);
            async move { c.launcher_heartbeat(hb).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(warm.iter().all(Result::is_ok));
    println!(
        "set up {LAUNCHERS} launchers and {PROCESSES} processes in {:.1?}",
        setup.elapsed()
    );

    // A session, as `prismctl ui` opens one.
    let login = api
        .clone()
        .open_ui_session(apb::OpenUiSessionRequest {})
        .await
        .unwrap()
        .into_inner()
        .login_url;
    let (base, ticket_path) = login.split_at(login.find("/login").unwrap());
    let authority = base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&authority).await.unwrap();
    s.write_all(format!("GET {ticket_path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let cookie = raw
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();

    // 1. The live feed's cost.
    let mut k = LAUNCHERS;
    let measure = |stop: Arc<AtomicBool>, from: usize| {
        tokio::spawn(flow(cp.clone(), beats.clone(), from, stop))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = measure(stop.clone(), k);
    let (c0, t0) = (cpu_ticks(admin.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let bare = (cpu_ticks(admin.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    stop.store(true, Ordering::Relaxed);
    k = load.await.unwrap();
    let bare_events = k - LAUNCHERS;

    let stop = Arc::new(AtomicBool::new(false));
    let open: Vec<_> = (0..pages)
        .map(|_| {
            tokio::spawn(live_page(
                authority.clone(),
                cookie.clone(),
                beats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Each page is open (its feed counted) before the load.
    support::eventually("the live pages open", Duration::from_secs(30), || async {
        let metrics = support::scrape(&admin.metrics_addr().await).await;
        (support::sample(&metrics, "prism_admin_watchers").unwrap_or(0.0) >= pages as f64)
            .then_some(())
    })
    .await;
    let load = measure(stop.clone(), k);
    let (c0, t0) = (cpu_ticks(admin.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let watched = (cpu_ticks(admin.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    let from = k;
    stop.store(true, Ordering::Relaxed);
    k = load.await.unwrap();
    let mut took = Vec::new();
    let mut complete = 0;
    for page in open {
        let page = page.await.unwrap();
        if page.len() >= (k - from) * 9 / 10 {
            complete += 1;
        }
        took.extend(page);
    }
    took.sort();
    println!(
        "live feed, {} events/s: admin CPU {bare:.1} % of a core without pages ({bare_events} events), \
         {watched:.1} % with {pages} live pages ({} events): the pages cost {:.1} % of a core \
         (ratio {:.2}); {complete} of {pages} pages got at least 90 % of the rows; heartbeat to row \
         p50 {:?}, p99 {:?}, max {:?} ({} rows)",
        bare_events as u64 / seconds,
        k - from,
        watched - bare,
        watched / bare,
        took.get(took.len() / 2).copied().unwrap_or_default(),
        if took.is_empty() {
            Duration::ZERO
        } else {
            percentile(&took, 0.99)
        },
        took.last().copied().unwrap_or_default(),
        took.len(),
    );

    // 2. The pages, while the heartbeats flow.
    let stop = Arc::new(AtomicBool::new(false));
    let load = measure(stop.clone(), k);
    let mut floors: HashMap<&str, Vec<Duration>> = HashMap::new();
    for _ in 0..samples {
        let at = Instant::now();
        api.clone()
            .list_launchers(apb::ListLaunchersRequest {})
            .await
            .unwrap();
        floors.entry("launchers").or_default().push(at.elapsed());
        let at = Instant::now();
        api.clone()
            .list_processes(apb::ListProcessesRequest::default())
            .await
            .unwrap();
        floors.entry("processes").or_default().push(at.elapsed());
    }
    for f in floors.values_mut() {
        f.sort();
    }
    let middle = LAUNCHERS / 2;
    let cases: Vec<(String, &str)> = vec![
        ("/".into(), "launchers"),
        ("/launchers".into(), "launchers"),
        (
            "/launchers?sort=heartbeat&dir=desc&page=5".into(),
            "launchers",
        ),
        ("/launchers?q=node-09&region=region-1".into(), "launchers"),
        (format!("/launchers/{}", launcher_id(middle)), "processes"),
        ("/processes".into(), "processes"),
        ("/processes?status=running&page=50".into(), "processes"),
        (
            format!("/processes/{}", process_id(middle * PER_LAUNCHER)),
            "processes",
        ),
        ("/events".into(), "processes"),
        ("/events?kind=process.restarted".into(), "processes"),
    ];
    println!(
        "pages ({samples} each, one at a time, while {} heartbeats/s flow); the floor is the API's \
         list with the same rows (ListLaunchers p50 {:?}, ListProcesses p50 {:?}):",
        100,
        floors["launchers"][samples / 2],
        floors["processes"][samples / 2],
    );
    let mut worst = (Duration::ZERO, 0usize);
    for (path, floor) in &cases {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..samples {
            let (t, status, bytes) = get(&authority, path, &cookie).await;
            assert_eq!(status, 200, "{path}");
            times.push(t);
            size = size.max(bytes);
        }
        times.sort();
        let p99 = percentile(&times, 0.99);
        worst = (worst.0.max(p99), worst.1.max(size));
        println!(
            "  {path:<45} p50 {:>9.2?}  p99 {:>9.2?}  {:>6.1} KB  (p50 {:.2}x the {floor} floor)",
            times[samples / 2],
            p99,
            size as f64 / 1024.0,
            times[samples / 2].as_secs_f64() / floors[floor][samples / 2].as_secs_f64(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!(
        "pages at {LAUNCHERS} launchers / {PROCESSES} processes: slowest p99 {:?} (goal 100 ms), \
         largest {:.1} KB (goal 300 KB)",
        worst.0,
        worst.1 as f64 / 1024.0
    );
}
