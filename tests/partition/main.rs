//! The fleet on a real network: hosts in network namespaces, each with its
//! own systemd manager, admins on PostgreSQL, mutual TLS everywhere (the
//! fleet of `prismctl local up --hosts`). Each test injects one kind of
//! fault, records every host's units throughout, and checks what the
//! disconnection semantics promise, during the fault and after heal:
//!
//! - nothing acknowledged is lost;
//! - no process runs on two hosts at once (replacement off, or on with
//!   `stop_after`);
//! - the operator API tells the truth (disconnected, unknown);
//! - after heal the fleet converges within interval + lease + 2 s, every
//!   MainPID kept where the placement did not change;
//! - a push of a deposed leader's epoch is refused;
//! - an assignment to a launcher cut off at that moment is answered well
//!   before the client's deadline.
//!
//! The tests run one at a time (they measure time), and none is skipped in
//! CI.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use prism_launcher::{
    clock,
    devstack::fleet::{Direction, Peers},
    pb::prism as pb,
};

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Place `ids` round-robin over the launcher hosts (pinned), wait until
/// they all run, and return where each runs with its MainPID.
async fn placed(net: &Net, ids: &[&str]) -> std::collections::BTreeMap<String, (String, u32)> {
    let hosts = net.fleet.layout.launchers();
    for (i, id) in ids.iter().enumerate() {
        let host = &hosts[i % hosts.len()];
        net.assign(demo(net, id), Some(host)).await.ack(id);
    }
    wait_running(net, ids).await
}

async fn wait_running(
    net: &Net,
    ids: &[&str],
) -> std::collections::BTreeMap<String, (String, u32)> {
    eventually("the processes to run", DEADLINE, || async {
        let running = net.where_running().await;
        let out: std::collections::BTreeMap<String, (String, u32)> = ids
            .iter()
            .filter_map(|id| {
                let on = running.get(*id)?;
                let (host, pid) = on.iter().next()?;
                (on.len() == 1 && *pid > 0).then(|| (id.to_string(), (host.clone(), *pid)))
            })
            .collect();
        (out.len() == ids.len()).then_some(out)
    })
    .await
}

/// A singleton that allows its replacement (stop after 8 s without an
/// admin, replaced after 16 s: 8 + 1 graceful + 1 interval + 5 lease = 15),
/// on host-1: under every fault, it never runs twice.
async fn with_singleton(net: &Net, before: &mut std::collections::BTreeMap<String, (String, u32)>) {
    net.assign(
        with_disconnect(demo(net, "r"), Some(8000), Some(16_000), false),
        Some("host-1"),
    )
    .await
    .ack("r");
    before.extend(wait_running(net, &["r"]).await);
}

/// Every process of `before` still runs where it ran, with the same
/// MainPID (but `except`).
async fn kept(
    net: &Net,
    before: &std::collections::BTreeMap<String, (String, u32)>,
    except: &[&str],
) {
    let now = net.where_running().await;
    for (id, (host, pid)) in before {
        if except.contains(&id.as_str()) {
            continue;
        }
        assert_eq!(
            now.get(id).and_then(|on| on.get(host)),
            Some(pid),
            "{id} no longer runs on {host} as pid {pid}: {:?}",
            now.get(id)
        );
    }
}

/// Watch the admins' view through a fault: every launcher health and
/// process status seen.
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Watch {
    fn start(net: &std::sync::Arc<Net>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (net, stop) = (net.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut health, mut status) = (Vec::new(), Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Every admin's view: a follower judges from what the
                    // leader stored. A slow answer is no answer: the watch
                    // looks again.
                    for k in 0..net.admins() {
                        for l in net.launchers_at(k).await.unwrap_or_default().values() {
                            let seen = format!("admin-{}: {} {}", k + 1, l.launcher_id, l.health);
                            if !health.contains(&seen) {
                                health.push(seen);
                            }
                        }
                    }
                    for (id, p) in net.try_processes().await.unwrap_or_default() {
                        let seen = format!("{id} {}", harness::status(&p));
                        if !status.contains(&seen) {
                            status.push(seen);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                (health, status)
            })
        };
        Self { stop, task }
    }

    async fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("watch")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_cut_from_every_admin() {
    let _serial = serial().await;
    let Some(net) = up(3, true, &[]).await else {
        return;
    };
    let ids = ["p0", "p1", "p2", "p3", "p4", "p5"];
    let mut before = placed(&net, &ids).await;
    // A singleton that must not run unsupervised: it stops itself.
    net.assign(
        with_disconnect(demo(&net, "single"), Some(3000), None, false),
        Some("host-1"),
    )
    .await
    .ack("single");
    before.extend(wait_running(&net, &["single"]).await);
    // A fault on a host the fleet does not have: a usage error naming the
    // hosts there are, and nothing changes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args(["local", "partition", "host-9", "--from", "admins"])
        .env("PRISM_LOCAL_STATE", &net.fleet.home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(
            "no host host-9 on this network (hosts: admin-1, admin-2, admin-3, db, host-1, \
             host-2, host-3)"
        ),
        "{text}"
    );
    assert_eq!(net.fleet.faults().unwrap(), Vec::<String>::new());
    // The admins have heard every process run.
    net.converged(DEADLINE, &["single"]).await;
    let sampler = net.sampler();
    net.fleet
        .partition("host-1", &Peers::Admins, Direction::Both)
        .await
        .unwrap();
    let cut = Instant::now();

    // Assignments keep coming: each is answered well before its 5 s
    // deadline, placed elsewhere or pending delivery to host-1 — the first
    // pinned there, which has not missed a heartbeat yet.
    let mut answers = vec![(
        "pinned".to_owned(),
        net.assign(demo(&net, "pinned"), Some("host-1")).await,
    )];
    assert_eq!(answers[0].1.ack("pinned").launcher_id, "host-1");
    for i in 0..6 {
        let id = format!("n{i}");
        answers.push((id.clone(), net.assign(demo(&net, &id), None).await));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for (id, a) in &answers {
        let ack = a.ack(id);
        assert!(
            a.took < Duration::from_millis(2500),
            "{id} took {:?}",
            a.took
        );
        if ack.launcher_id == "host-1" {
            assert_eq!(ack.applied, "pending", "{id}: {}", ack.message);
            assert!(
                ack.message
                    .contains("pending delivery to host-1, which has not answered for"),
                "{id}: {}",
                ack.message
            );
        }
    }

    // The operator API tells the truth: host-1 is disconnected, and what
    // runs there is unknown, with what it last said and since when.
    eventually(
        "host-1 to be disconnected",
        Duration::from_secs(15),
        || async { (net.launchers().await["host-1"].health == "disconnected").then_some(()) },
    )
    .await;
    let last_heartbeat = net.launchers().await["host-1"].last_heartbeat_unix_ms;
    for (id, a) in &answers {
        // Sent once host-1 had missed a heartbeat: placed elsewhere.
        if a.at_ms - last_heartbeat >= 2200 {
            assert_ne!(
                a.ack(id).launcher_id,
                "host-1",
                "{id} sent at +{} ms",
                a.at_ms - last_heartbeat
            );
        }
    }
    let listed = net.processes().await;
    for (id, p) in listed.iter().filter(|(_, p)| p.launcher_id == "host-1") {
        assert_eq!(status(p), "unknown", "{id}: {p:?}");
        assert_eq!(p.unknown_since_unix_ms, last_heartbeat, "{id}: {p:?}");
        if before.contains_key(id) && id != "single" {
            assert_eq!(p.last_known_status, "running", "{id}: {p:?}{}", net.dump());
        }
    }
    // A revocation for host-1 is recorded at once, for when it is back.
    let on_host_1: Vec<&String> = before
        .iter()
        .filter(|(id, (h, _))| h == "host-1" && *id != "single")
        .map(|(id, _)| id)
        .collect();
    let doomed = on_host_1[0].clone();
    let asked = Instant::now();
    let revoked = net
        .cp(net.leader().await.unwrap())
        .revoke_process(pb::ProcessRevocation {
            process_id: doomed.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(revoked.code(), tonic::Code::Unavailable);
    assert!(
        revoked.message().contains("recorded and will be delivered"),
        "{}",
        revoked.message()
    );

    // The singleton stopped itself, and says so; the rest run untouched.
    eventually(
        "single to stop on host-1",
        Duration::from_secs(10),
        || async { (!net.running_on("host-1").await.contains_key("single")).then_some(()) },
    )
    .await;
    assert!(
        net.journal("host-1")
            .contains("stopping single: no admin has answered this launcher for"),
        "{}",
        net.journal("host-1")
    );
    assert!(
        net.launcher_metrics("host-1")
            .await
            .contains("prism_launcher_disconnect_stops_total 1"),
        "{}",
        net.launcher_metrics("host-1").await
    );
    kept(&net, &before, &["single"]).await;

    // Held for 10 s in all, then healed.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;
    net.fleet.heal(None).await.unwrap();
    let took = net.converged(CONVERGE, &[]).await;
    eprintln!("cut from every admin: converged {took:?} after heal");
    let now = net.processes().await;
    assert!(!now.contains_key(&doomed), "{doomed} was revoked");
    for (id, a) in &answers {
        assert!(
            now.contains_key(id),
            "acknowledged {id} ({}) was lost",
            a.ack(id).message
        );
    }
    // Kept where it was, same MainPID; the singleton started again there.
    kept(&net, &before, &["single", &doomed]).await;
    let single = net.process("single").await;
    assert_eq!(single.launcher_id, "host-1");
    assert!(
        single
            .history
            .iter()
            .any(|e| e.event == "stopped-disconnected" && e.detail.contains("without an answer")),
        "{:?}",
        single.history
    );
    let samples = sampler.stop().await;
    assert!(samples.len() > 50, "{} samples", samples.len());
    assert_eq!(
        doubled(&samples, &[]),
        Vec::<String>::new(),
        "{}",
        net.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_cut_from_the_leader_only() {
    let _serial = serial().await;
    let Some(net) = up(3, true, &[]).await else {
        return;
    };
    let net = std::sync::Arc::new(net);
    let mut before = placed(&net, &["p0", "p1", "p2"]).await;
    with_singleton(&net, &mut before).await;
    let sampler = net.sampler();
    let watch = Watch::start(&net);
    let cut = net
        .fleet
        .partition("host-1", &Peers::Leader, Direction::Both)
        .await
        .unwrap();
    let t0 = Instant::now();
    // host-1 still reaches the followers, which pass its heartbeats on:
    // once it talks to one, it is on time again at the leader.
    eventually(
        "host-1 heard through a follower",
        Duration::from_secs(15),
        || async {
            let l = &net.launchers().await["host-1"];
            (t0.elapsed() > Duration::from_secs(3)
                && clock::unix_ms() - l.last_heartbeat_unix_ms < 1000)
                .then_some(())
        },
    )
    .await;
    // The leader cannot push to it: an assignment pinned there is answered
    // well before its deadline, and reaches host-1 with its registration.
    let a = net.assign(demo(&net, "late"), Some("host-1")).await;
    let ack = a.ack("late");
    assert!(a.took < Duration::from_millis(2500), "{:?}", a.took);
    assert_eq!(ack.launcher_id, "host-1");
    eventually(
        "late to run on host-1 during the cut",
        Duration::from_secs(20),
        || async {
            net.running_on("host-1")
                .await
                .contains_key("late")
                .then_some(())
        },
    )
    .await;
    net.fleet.heal(None).await.unwrap();
    let took = net.converged(CONVERGE, &["late"]).await;
    eprintln!("cut from the leader ({cut:?}): converged {took:?} after heal");
    let (health, statuses) = watch.stop().await;
    assert!(
        !health.iter().any(|h| h.ends_with("disconnected")),
        "{health:?}"
    );
    assert!(
        !statuses.iter().any(|s| s.ends_with("unknown")),
        "{statuses:?}"
    );
    kept(&net, &before, &[]).await;
    assert_eq!(doubled(&sampler.stop().await, &[]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_cut_from_the_database() {
    let _serial = serial().await;
    let Some(net) = up(3, true, &[]).await else {
        return;
    };
    let net = std::sync::Arc::new(net);
    let mut before = placed(&net, &["p0", "p1", "p2"]).await;
    with_singleton(&net, &mut before).await;
    let old = net.leader().await.expect("a leader");
    let sampler = net.sampler();
    let watch = Watch::start(&net);
    let host = format!("admin-{}", old + 1);
    net.fleet
        .partition(&host, &Peers::Db, Direction::Both)
        .await
        .unwrap();
    let t0 = Instant::now();
    // Another admin leads within the lease (and a little).
    let new = eventually("another admin to lead", Duration::from_secs(20), || async {
        net.leader().await.filter(|k| *k != old)
    })
    .await;
    eprintln!(
        "leader cut from the database: admin-{} leads after {:?}",
        new + 1,
        t0.elapsed()
    );
    // Placements go on; nothing ran on the healthy launchers was touched.
    net.assign_via(new, demo(&net, "n0"), None).await.ack("n0");
    wait_running(&net, &["n0"]).await;
    kept(&net, &before, &[]).await;
    net.fleet.heal(None).await.unwrap();
    let took = net.converged(CONVERGE, &["n0"]).await;
    eprintln!("leader cut from the database: converged {took:?} after heal");
    let (health, statuses) = watch.stop().await;
    assert!(
        !health.iter().any(|h| h.ends_with("disconnected")),
        "{health:?}"
    );
    assert!(
        !statuses.iter().any(|s| s.ends_with("unknown")),
        "{statuses:?}"
    );
    kept(&net, &before, &[]).await;
    assert_eq!(doubled(&sampler.stop().await, &[]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_from_the_leader() {
    let _serial = serial().await;
    let Some(net) = up(2, true, &[]).await else {
        return;
    };
    let net = std::sync::Arc::new(net);
    let mut before = placed(&net, &["p0", "p1"]).await;
    with_singleton(&net, &mut before).await;
    let leader = net.leader().await.expect("a leader");
    let follower = (leader + 1) % 3;
    let sampler = net.sampler();
    let watch = Watch::start(&net);
    net.fleet
        .partition(
            &format!("admin-{}", follower + 1),
            &Peers::Leader,
            Direction::Both,
        )
        .await
        .unwrap();
    // It still answers reads, from the database.
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        net.api(follower)
            .list_processes(pb::admin::v1::ListProcessesRequest::default()),
    )
    .await
    .expect("an answer")
    .expect("a read from the database")
    .into_inner();
    assert_eq!(read.processes.len(), 3);
    // A write it cannot pass on is refused, saying why, within seconds.
    let a = net.assign_via(follower, demo(&net, "n0"), None).await;
    let refused = a.result.as_ref().expect_err("no leader reachable");
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "{}",
        refused.message()
    );
    assert!(a.took < Duration::from_secs(6), "{:?}", a.took);
    // The leader places as before.
    net.assign_via(leader, demo(&net, "n1"), None)
        .await
        .ack("n1");
    wait_running(&net, &["n1"]).await;
    net.fleet.heal(None).await.unwrap();
    let took = net.converged(CONVERGE, &["n1"]).await;
    eprintln!("follower cut from the leader: converged {took:?} after heal");
    let (health, _) = watch.stop().await;
    assert!(
        !health.iter().any(|h| h.ends_with("disconnected")),
        "{health:?}"
    );
    kept(&net, &before, &[]).await;
    assert_eq!(doubled(&sampler.stop().await, &[]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_loss_between_a_launcher_and_the_admins() {
    let _serial = serial().await;
    let Some(net) = up(2, true, &[]).await else {
        return;
    };
    let mut before = placed(&net, &["p0", "p1", "p2"]).await;
    with_singleton(&net, &mut before).await;
    let sampler = net.sampler();
    for direction in [Direction::Out, Direction::In] {
        net.fleet
            .partition("host-1", &Peers::Admins, direction)
            .await
            .unwrap();
        eventually(
            "host-1 to be disconnected",
            Duration::from_secs(15),
            || async { (net.launchers().await["host-1"].health == "disconnected").then_some(()) },
        )
        .await;
        for (id, p) in net.processes().await {
            if p.launcher_id == "host-1" {
                assert_eq!(status(&p), "unknown", "{id} ({direction:?})");
            }
        }
        kept(&net, &before, &["r"]).await;
        net.fleet.heal(None).await.unwrap();
        let took = net.converged(CONVERGE, &[]).await;
        eprintln!("one-way loss {direction:?}: converged {took:?} after heal");
        kept(&net, &before, &["r"]).await;
    }
    assert_eq!(doubled(&sampler.stop().await, &[]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_second_on_every_link() {
    let _serial = serial().await;
    let Some(net) = up(3, true, &[]).await else {
        return;
    };
    let net = std::sync::Arc::new(net);
    let mut before = placed(&net, &["p0", "p1", "p2"]).await;
    with_singleton(&net, &mut before).await;
    let leader = net.leader().await.expect("a leader");
    let sampler = net.sampler();
    let watch = Watch::start(&net);
    for host in net.fleet.layout.host_names() {
        net.fleet
            .delay(&host, None, Duration::from_millis(500))
            .await
            .unwrap();
    }
    let t0 = Instant::now();
    // The delay is real: host-1 answers a connection 500 ms late.
    let addr = format!("{}:7071", net.fleet.addr("host-1").unwrap());
    let asked = Instant::now();
    let _ = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    // Placements still go through (the answer may be pending delivery).
    for i in 0..3 {
        let id = format!("n{i}");
        let mut request = tonic::Request::new(demo(&net, &id));
        request.set_timeout(Duration::from_secs(20));
        net.cp(net.leader().await.unwrap_or(0))
            .assign_process(request)
            .await
            .unwrap_or_else(|s| panic!("{id}: {}", s.message()));
    }
    wait_running(&net, &["n0", "n1", "n2"]).await;
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(t0.elapsed())).await;
    kept(&net, &before, &[]).await;
    // The leader kept its lease all along.
    assert_eq!(net.leader().await, Some(leader), "{}", net.dump());
    net.fleet.heal(None).await.unwrap();
    let took = net.converged(CONVERGE, &["n0", "n1", "n2"]).await;
    eprintln!("500 ms on every link: converged {took:?} after heal");
    let (health, statuses) = watch.stop().await;
    assert!(
        !health.iter().any(|h| h.ends_with("disconnected")),
        "{health:?}{}",
        net.dump()
    );
    assert!(
        !statuses.iter().any(|s| s.ends_with("unknown")),
        "{statuses:?}"
    );
    // Slow answers are no failure: no launcher gave up on its admin (its
    // heartbeats went on while their answers took a second or more).
    for host in net.fleet.layout.launchers() {
        let journal = net.journal(&host);
        assert!(
            !journal.contains("lost the admin at"),
            "{host} gave up on its admin:\n{journal}{}",
            net.dump()
        );
    }
    kept(&net, &before, &[]).await;
    assert_eq!(doubled(&sampler.stop().await, &[]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_after_stop_after_never_overlaps() {
    let _serial = serial().await;
    let Some(net) = up(2, true, &[]).await else {
        return;
    };
    // Bad input first: each refused naming the field, nothing placed.
    for (spec, field, part) in [
        (
            with_disconnect(demo(&net, "bad"), Some(0), None, false),
            "config.on_disconnect.stop_after_ms",
            "0 is not positive",
        ),
        (
            with_disconnect(demo(&net, "bad"), Some(-5), None, false),
            "config.on_disconnect.stop_after_ms",
            "-5 is not positive",
        ),
        (
            with_disconnect(demo(&net, "bad"), None, Some(20_000), false),
            "config.on_disconnect.replace_after_ms",
            "set config.on_disconnect.stop_after_ms",
        ),
        (
            // 3 s + 1 s graceful + 1 s interval + 5 s lease = 10 s.
            with_disconnect(demo(&net, "bad"), Some(3000), Some(10_000), false),
            "config.on_disconnect.replace_after_ms",
            "must exceed config.on_disconnect.stop_after_ms (3s) + the graceful stop (1s, \
             config.graceful_timeout_seconds) + one heartbeat interval (1s) + the admins' \
             lease (5s) = 10s",
        ),
    ] {
        let a = net.assign(spec, None).await;
        let s = a.result.expect_err("refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", s.message());
        assert!(s.message().starts_with(field), "{}", s.message());
        assert!(s.message().contains(part), "{}", s.message());
    }
    assert!(net.processes().await.is_empty(), "nothing was placed");

    let before = placed(&net, &["keep"]).await;
    net.assign(
        with_disconnect(demo(&net, "single"), Some(3000), Some(11_000), false),
        Some("host-1"),
    )
    .await
    .ack("single");
    wait_running(&net, &["single"]).await;
    let sampler = net.sampler();
    net.fleet
        .partition("host-1", &Peers::Admins, Direction::Both)
        .await
        .unwrap();
    // host-1 stops it after 3 s cut off; the admin runs it on host-2 once
    // host-1 has been silent 11 s: never both.
    eventually(
        "single to run on host-2",
        Duration::from_secs(25),
        || async {
            net.running_on("host-2")
                .await
                .contains_key("single")
                .then_some(())
        },
    )
    .await;
    assert!(!net.running_on("host-1").await.contains_key("single"));
    net.fleet.heal(None).await.unwrap();
    let took = net.converged(CONVERGE, &["single"]).await;
    eprintln!("replacement after stop_after: converged {took:?} after heal");
    let single = net.process("single").await;
    assert_eq!(single.launcher_id, "host-2");
    let events: Vec<&str> = single.history.iter().map(|e| e.event.as_str()).collect();
    for want in ["stopped-disconnected", "rescheduled", "stale-copy-stopped"] {
        assert!(events.contains(&want), "{want} in {events:?}");
    }
    // host-1 came back without starting its copy again.
    assert!(!net.running_on("host-1").await.contains_key("single"));
    kept(&net, &before, &[]).await;
    let samples = sampler.stop().await;
    assert_eq!(doubled(&samples, &[]), Vec::<String>::new());
    // The gap between the two copies, as sampled.
    let last_on_1 = samples
        .iter()
        .filter(|s| s.on.get("single").is_some_and(|h| h.contains("host-1")))
        .map(|s| s.at)
        .max();
    let first_on_2 = samples
        .iter()
        .filter(|s| s.on.get("single").is_some_and(|h| h.contains("host-2")))
        .map(|s| s.at)
        .min();
    let (Some(a), Some(b)) = (last_on_1, first_on_2) else {
        panic!("both copies should have been sampled");
    };
    assert!(b > a, "the copy on host-2 started before host-1's stopped");
    eprintln!(
        "replacement after stop_after: {:?} between the two copies",
        b - a
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_push_is_refused() {
    let _serial = serial().await;
    let Some(net) = up(1, true, &[]).await else {
        return;
    };
    // The old leader's connection to host-1 is open before anything slows.
    placed(&net, &["warm"]).await;
    let old = net.leader().await.expect("a leader");
    let old_host = format!("admin-{}", old + 1);
    // What the old leader sends host-1 from now on arrives 12 s late.
    net.fleet
        .delay(&old_host, Some("host-1"), Duration::from_secs(12))
        .await
        .unwrap();
    // Its push of v1 is in flight (the caller hears "pending")…
    let a = net
        .assign_via(old, demo(&net, "fenced"), Some("host-1"))
        .await;
    assert_eq!(
        a.ack("fenced").applied,
        "pending",
        "{}",
        a.ack("fenced").message
    );
    let pushed = Instant::now();
    // …when it loses the database, and with it the lead.
    net.fleet
        .partition(&old_host, &Peers::Db, Direction::Both)
        .await
        .unwrap();
    let new = eventually("another admin to lead", Duration::from_secs(20), || async {
        net.leader().await.filter(|k| *k != old)
    })
    .await;
    // The new leader revokes it (at once, or recorded for when host-1
    // answers it); host-1 obeys the new epoch.
    let revoked = net
        .cp(new)
        .revoke_process(pb::ProcessRevocation {
            process_id: "fenced".into(),
            ..Default::default()
        })
        .await;
    if let Err(s) = &revoked {
        assert!(
            s.code() == tonic::Code::Unavailable && s.message().contains("recorded"),
            "{s:?}"
        );
    }
    eventually(
        "the new leader to forget fenced",
        Duration::from_secs(10),
        || async { (!net.processes().await.contains_key("fenced")).then_some(()) },
    )
    .await;
    assert!(
        pushed.elapsed() < Duration::from_secs(12),
        "the takeover took longer than the push is held ({:?})",
        pushed.elapsed()
    );
    // The old push arrives, and is refused: the revocation stands.
    eventually(
        "host-1 to refuse the deposed leader's push",
        Duration::from_secs(20),
        || async {
            net.launcher_metrics("host-1")
                .await
                .contains("prism_launcher_stale_epoch_refusals_total 1")
                .then_some(())
        },
    )
    .await;
    assert!(
        net.journal("host-1")
            .contains("comes from a deposed leader and is refused"),
        "{}",
        net.journal("host-1")
    );
    assert!(!net.running_on("host-1").await.contains_key("fenced"));
    assert!(!net.processes().await.contains_key("fenced"));
    net.fleet.heal(None).await.unwrap();
    net.converged(CONVERGE, &["warm"]).await;
    assert!(!net.running_on("host-1").await.contains_key("fenced"));
}
