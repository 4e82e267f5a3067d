//! prism-admin with launchers, each launcher on its own "host": its own
//! sandboxed systemd manager. Everything goes over gRPC, and outcomes are
//! read back from the admin's API and from each host's systemd.

mod support;

use std::{collections::HashMap, time::Duration};

use futures_util::future::join_all;
use prism_launcher::pb::prism::{
    self as pb,
    admin::v1::{self as apb, admin_client::AdminClient},
    control_plane_client::ControlPlaneClient,
};
use support::{daemon::*, *};
use tonic::{Code, transport::Channel};

struct Host {
    h: Harness,
    launcher: Daemon,
}

struct Fleet {
    admin: Daemon,
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
}

const HEARTBEAT: &str = "300ms";

impl Fleet {
    /// An admin and one launcher per `(id, flags)`, all registered.
    async fn start(launchers: &[(&str, &[&str])], admin_flags: &[&str]) -> Option<Fleet> {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = vec!["--heartbeat-interval", HEARTBEAT];
        flags.extend_from_slice(admin_flags);
        let admin = Daemon::admin(dir.path(), &flags).await;
        let endpoint = format!("http://127.0.0.1:{}", admin.port);
        let mut harnesses = Vec::new();
        for _ in launchers {
            harnesses.push(support::sandbox()?);
        }
        // As on a real fleet, the workload binary has one path everywhere:
        // the first host's, which every host can read.
        let shared_bin = harnesses[0].bin_dir.display().to_string();
        let mut hosts = Vec::new();
        for (h, (id, extra)) in harnesses.into_iter().zip(launchers) {
            let mut args = vec![
                "--admin-endpoint",
                endpoint.as_str(),
                "--allow-binary-dir",
                shared_bin.as_str(),
            ];
            args.extend_from_slice(extra);
            let launcher = Daemon::start_named(&h, id, &args).await;
            hosts.push(Host { h, launcher });
        }
        let fleet = Fleet { admin, hosts, dir };
        fleet.wait_healthy(launchers.len()).await;
        Some(fleet)
    }

    async fn cp(&self) -> ControlPlaneClient<Channel> {
        ControlPlaneClient::new(self.admin.channel().await)
    }

    async fn api(&self) -> AdminClient<Channel> {
        AdminClient::new(self.admin.channel().await)
    }

    async fn launchers(&self) -> HashMap<String, apb::LauncherInfo> {
        self.api()
            .await
            .list_launchers(apb::ListLaunchersRequest {})
            .await
            .expect("list launchers")
            .into_inner()
            .launchers
            .into_iter()
            .map(|l| (l.launcher_id.clone(), l))
            .collect()
    }

    async fn wait_healthy(&self, n: usize) {
        eventually(&format!("{n} healthy launchers"), DEADLINE, || async {
            let ls = self.launchers().await;
            (ls.values().filter(|l| l.health == "healthy").count() == n).then_some(())
        })
        .await;
    }

    async fn process(&self, id: &str) -> apb::ProcessInfo {
        self.api()
            .await
            .get_process(apb::GetProcessRequest {
                process_id: id.into(),
                history_limit: 50,
            })
            .await
            .unwrap_or_else(|e| panic!("GetProcess {id}: {e}"))
            .into_inner()
    }

    fn host(&self, launcher: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.launcher.args_contain(launcher))
            .unwrap_or_else(|| panic!("no host runs {launcher}"))
    }
}

fn assign_in_region(
    a: pb::ProcessAssignment,
    region: &str,
) -> tonic::Request<pb::ProcessAssignment> {
    let mut r = tonic::Request::new(a);
    r.metadata_mut()
        .insert("prism-region", region.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launchers_register_and_processes_are_placed_by_type_and_slots() {
    let Some(f) = Fleet::start(
        &[
            (
                "host-a",
                &[
                    "--capabilities",
                    "pattern,proxy,utility",
                    "--max-processes",
                    "10",
                    "--region",
                    "eu",
                ],
            ),
            (
                "host-b",
                &[
                    "--capabilities",
                    "pattern,utility",
                    "--max-processes",
                    "10",
                    "--region",
                    "us",
                ],
            ),
        ],
        &[],
    )
    .await
    else {
        return;
    };
    let ls = f.launchers().await;
    assert_eq!(ls.len(), 2);
    let a = &ls["host-a"];
    assert_eq!(
        (a.max_processes, a.slots_used, a.region.as_str()),
        (10, 0, "eu")
    );
    assert_eq!(a.process_types, ["pattern", "proxy", "utility"]);
    assert!(a.address.starts_with("127.0.0.1:"), "{}", a.address);
    assert_eq!(ls["host-b"].process_types, ["pattern", "utility"]);

    let mut cp = f.cp().await;
    let demo_a = f.hosts[0].h.demo.clone();
    // Proxies go where proxies run.
    for i in 0..3 {
        let ack = cp
            .assign_process(proxy(&format!("p-{i}"), &demo_a, &[]))
            .await
            .expect("assign proxy")
            .into_inner();
        assert_eq!(ack.launcher_id, "host-a", "{ack:?}");
        assert_eq!(
            f.host("host-a").h.prop(&ack.unit_name, "ActiveState"),
            "active"
        );
    }
    // Patterns go to the launcher with the most free slots: host-b (10 free).
    let ack = cp
        .assign_process(pattern("kv-1", &demo_a, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.launcher_id, "host-b");
    assert!(ack.unit_name.starts_with("prism-pattern-kv"), "{ack:?}");
    assert_eq!(
        f.host("host-b").h.prop(&ack.unit_name, "ActiveState"),
        "active"
    );
    // ...unless the request asks for a region.
    let ack = cp
        .assign_process(assign_in_region(pattern("kv-2", &demo_a, &[]), "eu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.launcher_id, "host-a");
    // Nobody runs backends.
    let e = cp
        .assign_process(backend("db-1", &demo_a, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), "no launchers support process type: backend");
    // Bad input is rejected at the admin, naming the field.
    let mut bad = pattern("kv-x", &demo_a, &[]);
    bad.config.as_mut().unwrap().binary = "relative/path".into();
    let e = cp.assign_process(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("config.binary"), "{}", e.message());

    let ls = f.launchers().await;
    assert_eq!((ls["host-a"].slots_used, ls["host-b"].slots_used), (4, 1));
    let kv = f.process("kv-1").await;
    assert_eq!(
        (kv.launcher_id.as_str(), kv.placement.as_str()),
        ("host-b", "placed")
    );
    let events: Vec<&str> = kv
        .history
        .iter()
        .map(|e| e.event.as_str())
        .filter(|e| *e != "status")
        .collect();
    assert_eq!(events, ["delivered", "placed"]);
    // Health arrives with heartbeats.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let p = f.process("kv-1").await;
        if p.health
            .as_ref()
            .is_some_and(|h| h.status == "running" && h.pid > 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no health for kv-1: {p:?}\nADMIN:\n{}\nHOST-B:\n{}",
            f.admin.log_text(),
            f.host("host-b").launcher.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every heartbeat carries `resources` (an upstream admin reads it
    // without a nil check), with the fields it reads: process_count,
    // available_slots, cpu_percent and total_memory_mb.
    let host_b = f.launchers().await.remove("host-b").expect("host-b");
    let r = host_b.resources.expect("resources in host-b's heartbeats");
    assert!(r.process_count >= 1, "{r:?}");
    assert_eq!(
        r.available_slots,
        r.max_processes - r.process_count,
        "{r:?}"
    );
    assert!(r.cpu_percent >= 0.0 && r.total_memory_mb >= 0, "{r:?}");
    // Status changes are kept as the process's health history.
    eventually("a status change in kv-1's history", DEADLINE, || async {
        let p = f.process("kv-1").await;
        p.history
            .iter()
            .any(|e| e.event == "status" && e.detail.contains("→ running"))
            .then_some(())
    })
    .await;

    // The admin's metrics count the fleet and what could not be placed.
    let addr = f.admin.metrics_addr().await;
    let expected = [
        (r#"prism_admin_launchers{health="healthy"}"#, 2.0),
        (
            r#"prism_admin_placement_failures_total{reason="unsupported_type"}"#,
            1.0,
        ),
        // Health arrives with each launcher's next heartbeat.
        (r#"prism_admin_processes{status="running"}"#, 5.0),
    ];
    let mut last = String::new();
    let matched = tokio::time::timeout(DEADLINE, async {
        loop {
            last = scrape(&addr).await;
            if expected
                .iter()
                .all(|(series, v)| sample(&last, series) == Some(*v))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(matched.is_ok(), "expected {expected:?} in:\n{last}");

    // Revoke through the admin: the unit on host-b goes.
    let ack = cp
        .revoke_process(pb::ProcessRevocation {
            process_id: "kv-1".into(),
            graceful_timeout_seconds: 10,
            ..Default::default()
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(ack.success && ack.stopped_at > 0, "{ack:?}");
    assert!(f.host("host-b").h.listed_units().is_empty());
    let e = f
        .api()
        .await
        .get_process(apb::GetProcessRequest {
            process_id: "kv-1".into(),
            history_limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_assignments_never_overbook() {
    let Some(f) = Fleet::start(
        &[
            ("host-a", &["--max-processes", "10"]),
            ("host-b", &["--max-processes", "10"]),
        ],
        &[],
    )
    .await
    else {
        return;
    };
    let cp = f.cp().await;
    let demo = f.hosts[0].h.demo.clone();
    let results = join_all((0..30).map(|i| {
        let mut c = cp.clone();
        let a = utility(&format!("u-{i:02}"), &demo, &[]);
        async move { c.assign_process(a).await.map(|r| r.into_inner()) }
    }))
    .await;
    let placed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(placed.len(), 20, "{results:?}");
    for e in &refused {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("full (10 of 10)"), "{}", e.message());
    }
    let on_a = placed.iter().filter(|a| a.launcher_id == "host-a").count();
    assert_eq!(on_a, 10);
    for host in &f.hosts {
        assert_eq!(host.h.listed_units().len(), 10);
    }
    let ls = f.launchers().await;
    assert_eq!((ls["host-a"].slots_used, ls["host-b"].slots_used), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_restart_keeps_everything_and_restarts_nothing() {
    let Some(mut f) = Fleet::start(&[("host-a", &[])], &[]).await else {
        return;
    };
    let mut cp = f.cp().await;
    let demo = f.hosts[0].h.demo.clone();
    let unit = cp
        .assign_process(pattern("kv-1", &demo, &[]))
        .await
        .unwrap()
        .into_inner()
        .unit_name;
    let pid = f.hosts[0].h.prop(&unit, "MainPID");
    f.admin.restart().await;
    f.wait_healthy(1).await;
    let p = f.process("kv-1").await;
    assert_eq!(
        (p.launcher_id.as_str(), p.placement.as_str()),
        ("host-a", "placed")
    );
    // The launcher registered again...
    eventually("the launcher to register again", DEADLINE, || async {
        f.hosts[0]
            .launcher
            .log_text()
            .matches("registered with the admin")
            .nth(1)
            .map(drop)
    })
    .await;
    // ...and nothing restarted.
    let s = f.hosts[0].h.show(&unit, &["MainPID", "NRestarts"]);
    assert_eq!(
        (s["MainPID"].as_str(), s["NRestarts"].as_str()),
        (pid.as_str(), "0")
    );
    // Same id and version: unchanged.
    let ack = f
        .cp()
        .await
        .assign_process(pattern("kv-1", &demo, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.message.contains("nothing changed"), "{}", ack.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_with_wiped_state_gets_its_processes_back() {
    let Some(mut f) = Fleet::start(&[("host-a", &[])], &[]).await else {
        return;
    };
    let mut cp = f.cp().await;
    let demo = f.hosts[0].h.demo.clone();
    let mut units = Vec::new();
    for i in 0..3 {
        let a = pattern(&format!("kv-{i}"), &demo, &[]);
        units.push(cp.assign_process(a).await.unwrap().into_inner().unit_name);
    }
    let pids: Vec<String> = units
        .iter()
        .map(|u| f.hosts[0].h.prop(u, "MainPID"))
        .collect();
    let host = &mut f.hosts[0];
    host.launcher.kill9();
    std::fs::remove_dir_all(&host.launcher.state_dir).unwrap();
    host.launcher.restart().await;
    eventually(
        "the desired state back from the admin",
        DEADLINE,
        || async { (host.launcher.state_files().len() == 3).then_some(()) },
    )
    .await;
    for (u, pid) in units.iter().zip(&pids) {
        assert_eq!(&host.h.prop(u, "MainPID"), pid, "{u} was restarted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_launcher_is_detected_and_its_processes_replaced() {
    let Some(mut f) = Fleet::start(
        &[("host-a", &[]), ("host-b", &[])],
        &["--replace-after", "1s"],
    )
    .await
    else {
        return;
    };
    let mut cp = f.cp().await;
    let demo = f.hosts[0].h.demo.clone();
    // It accepts running twice: replaced without stopping itself first.
    let mut kv = pattern("kv-1", &demo, &[]);
    kv.config.as_mut().unwrap().on_disconnect = Some(pb::OnDisconnect {
        at_least_once: true,
        ..Default::default()
    });
    let ack = cp.assign_process(kv).await.unwrap().into_inner();
    let (victim, survivor) = if ack.launcher_id == "host-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    let victim_id = ack.launcher_id.clone();
    f.hosts[victim].launcher.kill9();
    // 3 missed heartbeats (0.9 s): unhealthy; 6 (1.8 s): disconnected.
    let seen = eventually("the launcher to be unhealthy", DEADLINE, || async {
        let l = f.launchers().await.remove(&victim_id)?;
        (l.health != "healthy").then_some(l.health)
    })
    .await;
    assert!(seen == "unhealthy" || seen == "disconnected", "{seen}");
    eventually("the launcher to be disconnected", DEADLINE, || async {
        (f.launchers().await[&victim_id].health == "disconnected").then_some(())
    })
    .await;
    // Rescheduled on the survivor, and running there.
    let survivor_id = if victim == 0 { "host-b" } else { "host-a" };
    eventually("kv-1 on the other launcher", DEADLINE, || async {
        let p = f.process("kv-1").await;
        let on = f.hosts[survivor].h.listed_units();
        (p.launcher_id == survivor_id && on.iter().any(|u| u.contains("kv"))).then_some(())
    })
    .await;
    let p = f.process("kv-1").await;
    assert!(
        p.history.iter().any(|e| e.event == "rescheduled"),
        "{:?}",
        p.history
    );
    // When it comes back, it stops the copy it no longer owns.
    assert!(
        !f.hosts[victim].h.listed_units().is_empty(),
        "the orphan kept running meanwhile"
    );
    f.hosts[victim].launcher.restart().await;
    eventually(
        "the returning launcher to stop its stale copy",
        DEADLINE,
        || async { f.hosts[victim].h.listed_units().is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_repair_drift() {
    let Some(f) = Fleet::start(&[("host-a", &[])], &[]).await else {
        return;
    };
    let mut cp = f.cp().await;
    let host = &f.hosts[0];
    let unit = cp
        .assign_process(pattern("kv-1", &host.h.demo, &[]))
        .await
        .unwrap()
        .into_inner()
        .unit_name;

    // Revoked behind the admin's back, on the launcher itself: the admin
    // sees it missing in a heartbeat and pushes it again.
    host.launcher
        .client()
        .await
        .revoke_process(pb::ProcessRevocation {
            process_id: "kv-1".into(),
            ..Default::default()
        })
        .await
        .expect("direct revoke");
    assert!(host.h.listed_units().is_empty());
    eventually("the admin to restore kv-1", DEADLINE, || async {
        (host.h.listed_units() == [unit.clone()] && host.h.prop(&unit, "ActiveState") == "active")
            .then_some(())
    })
    .await;

    // Stopped behind the launcher's back: it is restored and reported.
    host.h.systemctl(&["stop", &unit]);
    eventually("the restart reported to the admin", DEADLINE, || async {
        let p = f.process("kv-1").await;
        p.health
            .filter(|h| h.restart_count >= 1 && h.status == "running")
            .map(drop)
    })
    .await;
    assert_eq!(host.h.prop(&unit, "ActiveState"), "active");

    // A process nobody placed there is revoked.
    host.launcher
        .client()
        .await
        .assign_process(pattern("stray-1", &host.h.demo, &[]))
        .await
        .expect("direct assign");
    eventually(
        "the admin to revoke the stray process",
        DEADLINE,
        || async { (!host.h.listed_units().iter().any(|u| u.contains("stray"))).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_stops_placements_and_moves_on_request() {
    let Some(f) = Fleet::start(&[("host-a", &[]), ("host-b", &[])], &[]).await else {
        return;
    };
    let mut cp = f.cp().await;
    let demo = f.hosts[0].h.demo.clone();
    let mut api = f.api().await;
    api.drain_launcher(apb::DrainRequest {
        launcher_id: "host-b".into(),
    })
    .await
    .expect("drain");
    for i in 0..3 {
        let ack = cp
            .assign_process(utility(&format!("u-{i}"), &demo, &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.launcher_id, "host-a");
    }
    api.undrain_launcher(apb::DrainRequest {
        launcher_id: "host-b".into(),
    })
    .await
    .expect("undrain");
    api.drain_launcher(apb::DrainRequest {
        launcher_id: "host-a".into(),
    })
    .await
    .unwrap();
    let a = f.host("host-a");
    let b = f.host("host-b");
    assert_eq!(a.h.listed_units().len(), 3);
    let moved = api
        .move_processes(apb::MoveProcessesRequest {
            launcher_id: "host-a".into(),
        })
        .await
        .expect("move")
        .into_inner()
        .moved;
    assert_eq!(moved.len(), 3);
    assert!(
        moved.iter().all(|m| m.success && m.to_launcher == "host-b"),
        "{moved:?}"
    );
    assert_eq!(b.h.listed_units().len(), 3);
    eventually("the old copies to be revoked", DEADLINE, || async {
        a.h.listed_units().is_empty().then_some(())
    })
    .await;
    let p = f.process("u-0").await;
    assert_eq!(p.launcher_id, "host-b");
    assert!(
        p.history.iter().any(|e| e.event == "moved"),
        "{:?}",
        p.history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_client_registers_heartbeats_and_assigns() {
    mod upstream {
        include!(concat!(env!("OUT_DIR"), "/upstream/prism.rs"));
    }
    let Some(f) = Fleet::start(&[("host-a", &[])], &[]).await else {
        return;
    };
    // Reflection lists exactly what the admin serves, over v1 and v1alpha.
    let (v1, v1alpha) = support::reflected_services(f.admin.channel().await).await;
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "prism.ControlPlane",
        "prism.admin.v1.Admin",
    ];
    assert_eq!(v1, expected);
    assert_eq!(v1alpha, expected);
    let mut client =
        upstream::control_plane_client::ControlPlaneClient::new(f.admin.channel().await);
    // An upstream launcher registers (nothing listens at its address).
    let ack = client
        .register_launcher(upstream::LauncherRegistration {
            launcher_id: "upstream-1".into(),
            address: "127.0.0.1:9".into(),
            region: "local".into(),
            version: "upstream".into(),
            capabilities: vec!["pattern".into()],
            max_processes: 5,
            process_types: vec!["pattern".into()],
            metadata: HashMap::new(),
        })
        .await
        .expect("register")
        .into_inner();
    assert!(ack.success && ack.initial_processes.is_empty(), "{ack:?}");
    assert_eq!(ack.assigned_capacity, 5);
    let hb = client
        .launcher_heartbeat(upstream::LauncherHeartbeatRequest {
            launcher_id: "upstream-1".into(),
            process_health: HashMap::new(),
            resources: Some(upstream::LauncherResourceUsage {
                process_count: 0,
                max_processes: 5,
                available_slots: 5,
                ..Default::default()
            }),
            timestamp: 1,
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(hb.success && hb.server_timestamp > 0, "{hb:?}");
    // An upstream client assigns; it lands on a real launcher and runs.
    let demo = f.hosts[0].h.demo.display().to_string();
    let mut request = tonic::Request::new(upstream::ProcessAssignment {
        process_id: "up-kv".into(),
        process_type: "pattern".into(),
        namespace: "orders".into(),
        version: 1,
        config: Some(upstream::ProcessConfig {
            binary: demo,
            pattern: Some(upstream::PatternProcessConfig {
                pattern_type: "keyvalue".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("prism-launcher-id", "host-a".parse().unwrap());
    let ack = client
        .assign_process(request)
        .await
        .expect("assign")
        .into_inner();
    assert!(ack.success, "{ack:?}");
    assert!(ack.message.contains("host-a"), "{}", ack.message);
    assert!(f.hosts[0].h.listed_units().iter().any(|u| u.contains("up")));
    // The proxy RPCs answer UNIMPLEMENTED, saying why.
    let e = client
        .register_proxy(upstream::ProxyRegistration {
            proxy_id: "proxy-1".into(),
            address: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("RegisterProxy"), "{}", e.message());
    let revoked = client
        .revoke_process(upstream::ProcessRevocation {
            launcher_id: "host-a".into(),
            process_id: "up-kv".into(),
            graceful_timeout_seconds: 5,
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.success, "{revoked:?}");
    let _ = &f.dir;
}

#[tokio::test]
async fn bad_admin_configuration_exits_64() {
    for (flags, setting) in [
        (vec!["serve", "--listen", "0.0.0.0:8981"], "--listen"),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "1y",
            ],
            "--heartbeat-interval",
        ),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "/nonexistent",
            ],
            "--tls-key",
        ),
        (vec!["serve", "--bogus"], "--bogus"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prism-admin"))
            .args(&flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {}", text(&out));
        assert!(text(&out).contains(setting), "{flags:?}: {}", text(&out));
    }
    let _ = Duration::ZERO;
}

/// A test PKI: a CA, and certificates it signs for 127.0.0.1.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca) = Self::make_ca("prism test CA");
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        Pki { dir, ca }
    }

    fn make_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, rcgen::Issuer::new(params, key))
    }

    /// `<name>.pem` and `<name>.key`, signed by `issuer`, for 127.0.0.1.
    fn issue_with(
        &self,
        name: &str,
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    ) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        // Each certificate names its role (README "Security model").
        let role = match name {
            "admin" => "admin".to_owned(),
            "launcher" => "launcher/secure-1".to_owned(),
            other => format!("operator/{other}"),
        };
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(format!("spiffe://prism/{role}")).unwrap(),
        ));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn issue(&self, name: &str) -> (String, String) {
        self.issue_with(name, &self.ca)
    }

    fn ca_path(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    fn read(&self, path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    /// An https channel presenting `identity` (if any) and trusting the CA.
    async fn channel(
        &self,
        port: u16,
        identity: Option<&(String, String)>,
    ) -> Result<Channel, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read(&self.ca_path())));
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(self.read(c), self.read(k)));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }
}

/// A call over `channel` fails (refused at the handshake or by the server).
async fn refused(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Err(_) => true,
        Ok(ch) => AdminClient::new(ch)
            .list_launchers(apb::ListLaunchersRequest {})
            .await
            .is_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_both_ways_and_clients_without_a_valid_certificate_are_refused() {
    let Some(h) = harness!() else { return };
    let pki = Pki::new();
    let (admin_cert, admin_key) = pki.issue("admin");
    let (launcher_cert, launcher_key) = pki.issue("launcher");
    let operator = pki.issue("operator");
    let (_, rogue_ca) = Pki::make_ca("rogue CA");
    let rogue = pki.issue_with("rogue", &rogue_ca);
    let ca = pki.ca_path();

    let admin = Daemon::admin_secure(
        pki.dir.path(),
        &[
            "--heartbeat-interval",
            HEARTBEAT,
            "--tls-cert",
            &admin_cert,
            "--tls-key",
            &admin_key,
            "--tls-ca",
            &ca,
        ],
    )
    .await;
    let endpoint = format!("https://127.0.0.1:{}", admin.port);
    let launcher = Daemon::start_secure(
        &h,
        "secure-1",
        &[
            "--admin-endpoint",
            &endpoint,
            "--tls-cert",
            &launcher_cert,
            "--tls-key",
            &launcher_key,
            "--tls-ca",
            &ca,
        ],
    )
    .await;

    // The launcher registered over mTLS.
    let api = AdminClient::new(
        pki.channel(admin.port, Some(&operator))
            .await
            .expect("operator connects"),
    );
    eventually("the launcher to register over mTLS", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let ls = api
                .list_launchers(apb::ListLaunchersRequest {})
                .await
                .ok()?
                .into_inner()
                .launchers;
            (ls.len() == 1 && ls[0].health == "healthy").then_some(())
        }
    })
    .await;
    // The admin reaches the launcher over mTLS too.
    let mut cp = ControlPlaneClient::new(pki.channel(admin.port, Some(&operator)).await.unwrap());
    let ack = cp
        .assign_process(pattern("kv-1", &h.demo, &[]))
        .await
        .expect("assign over mTLS")
        .into_inner();
    assert!(
        !ack.message.contains("pending"),
        "{ack:?}\n{}",
        admin.log_text()
    );
    assert_eq!(
        h.prop(&ack.unit_name, "ActiveState"),
        "active",
        "{ack:?}\nADMIN:\n{}\nLAUNCHER:\n{}",
        admin.log_text(),
        launcher.log_text()
    );

    // No certificate, an untrusted one, or plaintext: refused, both daemons.
    for port in [admin.port, launcher.port] {
        assert!(
            refused(pki.channel(port, None).await).await,
            "no client certificate on {port}"
        );
        assert!(
            refused(pki.channel(port, Some(&rogue)).await).await,
            "rogue certificate on {port}"
        );
        let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await;
        assert!(refused(plain).await, "plaintext on {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_keeps_working_while_the_admin_is_unreachable() {
    let Some(h) = harness!() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there yet.
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let launcher = Daemon::start_named(&h, "lonely-1", &["--admin-endpoint", &endpoint]).await;
    // It is ready and takes direct assignments meanwhile.
    let ack = launcher
        .client()
        .await
        .assign_process(pattern("direct-1", &h.demo, &[]))
        .await
        .expect("direct assignment while the admin is away")
        .into_inner();
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
    eventually("a registration retry in the log", DEADLINE, || async {
        launcher.log_text().contains("retrying in").then_some(())
    })
    .await;
    // The admin comes up at that address: the launcher registers, and
    // reconciles to the admin's placement (which does not include the
    // direct assignment).
    let data = dir.path().join("admin-data").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let _admin = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_prism-admin"))
            .args([
                "serve",
                "--listen",
                &listen,
                "--insecure",
                "--socket",
                "none",
                "--data-dir",
                &data,
                "--heartbeat-interval",
                HEARTBEAT,
                // No fixed page port: tests run at once.
                "--ui-listen",
                "none",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let channel = eventually("the admin to listen", DEADLINE, || async {
        tonic::transport::Endpoint::from_shared(endpoint.clone())
            .ok()?
            .connect()
            .await
            .ok()
    })
    .await;
    let mut api = AdminClient::new(channel);
    eventually("the launcher to register", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let ls = api
                .list_launchers(apb::ListLaunchersRequest {})
                .await
                .ok()?
                .into_inner();
            (ls.launchers.len() == 1 && ls.launchers[0].launcher_id == "lonely-1").then_some(())
        }
    })
    .await;
    eventually(
        "the unplaced direct assignment to be revoked",
        DEADLINE,
        || async { h.listed_units().is_empty().then_some(()) },
    )
    .await;
    let ls = api
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ls.launchers[0].health, "healthy");
}

/// Kills a child process when dropped, even if the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_back_from_an_older_copy_takes_running_processes_back() {
    let Some(mut f) = Fleet::start(&[("host-a", &[])], &[]).await else {
        return;
    };
    let demo = f.hosts[0].h.demo.clone();
    f.cp()
        .await
        .assign_process(pattern("kv-1", &demo, &[]))
        .await
        .unwrap();
    // A copy of the admin's data, as a crash that loses the latest
    // commits, or a restored backup, would leave it.
    f.admin.terminate().await;
    let copy = f.dir.path().join("older-copy");
    copy_dir(&f.admin.state_dir, &copy);
    f.admin.restart().await;
    f.wait_healthy(1).await;
    // What the copy does not know: kv-1 replaced by v2, and kv-2.
    let mut cp = f.cp().await;
    let mut v2 = pattern("kv-1", &demo, &[]);
    v2.version = 2;
    let u1 = cp.assign_process(v2).await.unwrap().into_inner().unit_name;
    let u2 = cp
        .assign_process(pattern("kv-2", &demo, &[]))
        .await
        .unwrap()
        .into_inner()
        .unit_name;
    let host = &f.hosts[0];
    let pids: Vec<String> = [&u1, &u2]
        .iter()
        .map(|u| host.h.prop(u, "MainPID"))
        .collect();

    f.admin.terminate().await;
    std::fs::remove_dir_all(&f.admin.state_dir).unwrap();
    copy_dir(&copy, &f.admin.state_dir);
    f.admin.restart().await;
    f.wait_healthy(1).await;
    // The launcher's records are newer than the admin's: both are taken
    // back as they run, never revoked or replaced by the older v1.
    let lookup = |id: &'static str| {
        let f = &f;
        async move {
            f.api()
                .await
                .get_process(apb::GetProcessRequest {
                    process_id: id.into(),
                    history_limit: 50,
                })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    eventually(
        "the admin to record kv-1 v2 and kv-2 again",
        DEADLINE,
        || async {
            let (a, b) = (lookup("kv-1").await?, lookup("kv-2").await?);
            let version = a.assignment.as_ref()?.version;
            (version == 2 && a.launcher_id == "host-a" && b.launcher_id == "host-a").then_some(())
        },
    )
    .await;
    let host = &f.hosts[0];
    for (u, pid) in [&u1, &u2].iter().zip(&pids) {
        let s = host.h.show(u, &["MainPID", "NRestarts", "ActiveState"]);
        assert_eq!(
            (
                s["MainPID"].as_str(),
                s["NRestarts"].as_str(),
                s["ActiveState"].as_str()
            ),
            (pid.as_str(), "0", "active"),
            "{u}"
        );
    }
    let history = f.process("kv-2").await.history;
    assert!(
        history
            .iter()
            .any(|e| e.event == "reclaimed" && e.launcher_id == "host-a"),
        "{history:?}"
    );
    // The admin's later decisions still win: a revocation through it.
    f.cp()
        .await
        .revoke_process(pb::ProcessRevocation {
            process_id: "kv-2".into(),
            ..Default::default()
        })
        .await
        .expect("revoke kv-2");
    assert!(!host.h.listed_units().contains(&u2));
}

/// Every way a process ends that can be provoked here, each told apart in
/// the heartbeat, in `prismctl ps -o wide` and in the launcher's restart
/// counter. (An OOM kill needs a memory controller, which this sandboxed
/// manager lacks: its mapping is tested against the in-memory manager.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exit_reason_is_told_apart_in_the_heartbeat_and_prismctl() {
    use std::io::Write;
    let Some(f) = Fleet::start(&[("host-a", &["--max-processes", "10"])], &[]).await else {
        return;
    };
    let host = &f.hosts[0];
    let demo = host.h.demo.clone();
    // An executable whose interpreter does not exist: execve fails.
    let broken = host.h.bin_dir.join("broken-interpreter");
    std::fs::write(&broken, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let slow_restarts = |c: &mut pb::ProcessConfig| {
        c.restart_policy = Some(pb::RestartPolicy {
            delay_ms: 2000,
            max_restarts: 50,
            window_seconds: 60,
            ..Default::default()
        });
    };
    let processes = [
        (
            with_config(
                utility("exits-3", &demo, &["--crash-at-start", "3"]),
                slow_restarts,
            ),
            "exit-code",
            "exited with status 3",
        ),
        (
            with_config(utility("killed-9", &demo, &[]), slow_restarts),
            "signal",
            "killed by SIGKILL (9)",
        ),
        (
            with_config(
                utility("silent-watchdog", &demo, &["--stop-watchdog-after", "1"]),
                |c| {
                    slow_restarts(c);
                    c.health_check = Some(pb::HealthCheck {
                        kind: "watchdog".into(),
                        watchdog_ms: 1000,
                        ..Default::default()
                    });
                },
            ),
            "watchdog",
            "watchdog timeout",
        ),
        (
            with_config(
                utility("crash-loop", &demo, &["--crash-at-start", "4"]),
                |c| {
                    c.restart_policy = Some(pb::RestartPolicy {
                        delay_ms: 100,
                        max_restarts: 2,
                        ..Default::default()
                    });
                },
            ),
            "start-limit",
            "start limit hit",
        ),
        (
            with_config(utility("no-interpreter", &broken, &[]), slow_restarts),
            "exec",
            "203/EXEC",
        ),
        (
            with_config(
                utility("sick-probe", &demo, &["--fail-health-after", "1"]),
                |c| {
                    slow_restarts(c);
                    c.health_port = 19301;
                    c.health_check = Some(pb::HealthCheck {
                        kind: "http".into(),
                        interval_ms: 300,
                        timeout_ms: 200,
                        failure_threshold: 2,
                        ..Default::default()
                    });
                },
            ),
            "probe",
            // While unhealthy, the probe's own latest failure; between
            // failures, "restarted by the launcher after 2 failed probes
            // (last: ... 503)".
            "503",
        ),
    ];
    let mut cp = f.cp().await;
    for (wire, _, _) in &processes {
        cp.assign_process(wire.clone()).await.expect("assign");
    }
    let killed = eventually("killed-9 running", DEADLINE, || async {
        let p = f.process("killed-9").await;
        p.health
            .filter(|h| h.detailed_status == "running" && h.pid > 0)
            .map(|_| p.unit_name)
    })
    .await;
    host.h.systemctl(&["kill", "--signal=SIGKILL", &killed]);
    for (wire, cause, words) in &processes {
        let id = wire.process_id.as_str();
        let health = eventually(&format!("{id} to report {cause}"), DEADLINE, || async {
            f.process(id)
                .await
                .health
                .filter(|h| h.exit_reason == *cause)
        })
        .await;
        assert!(
            health.last_error.contains(words),
            "{id}: {:?}",
            health.last_error
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args([
            "--admin",
            &format!("unix:{}", f.dir.path().join("admin.sock").display()),
        ])
        .args(["ps", "-o", "wide"])
        .output()
        .expect("run prismctl");
    let table = String::from_utf8_lossy(&out.stdout);
    // The transcript, for the record.
    let _ = writeln!(std::io::stderr(), "$ prismctl ps -o wide\n{table}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (wire, cause, _) in &processes {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{} ", wire.process_id)))
            .unwrap_or_else(|| panic!("no row for {} in\n{table}", wire.process_id));
        assert!(row.contains(&format!(" {cause} ")), "{row}");
    }
    let metrics = scrape(&host.launcher.metrics_addr().await).await;
    for (_, cause, _) in &processes {
        let series = format!("prism_launcher_restarts_total{{cause=\"{cause}\"}}");
        assert!(
            sample(&metrics, &series).is_some_and(|n| n >= 1.0),
            "{series} in\n{metrics}"
        );
    }
}

/// Spread and affinity: replicas of a group never share a host, required
/// labels confine a process, preferred ones order the launchers, and a
/// refusal says why for each launcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_groups_and_labels_decide_placement() {
    let Some(f) = Fleet::start(
        &[
            ("host-a", &["--label", "zone=z1", "--label", "disk=ssd"]),
            ("host-b", &["--label", "zone=z2", "--label", "disk=hdd"]),
            ("host-c", &["--label", "zone=z3", "--label", "disk=hdd"]),
        ],
        &[],
    )
    .await
    else {
        return;
    };
    let ls = f.launchers().await;
    assert_eq!(
        ls["host-a"].metadata.get("zone").map(String::as_str),
        Some("z1"),
        "{:?}",
        ls["host-a"].metadata
    );
    let demo = f.hosts[0].h.demo.clone();
    let rules = |group: &str, require: &[(&str, &str)], prefer: &[(&str, &str)]| {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        pb::PlacementRules {
            spread_group: group.into(),
            require_labels: map(require),
            prefer_labels: map(prefer),
            ..Default::default()
        }
    };
    let mut cp = f.cp().await;
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..3 {
        let wire = with_config(proxy(&format!("edge-{i}"), &demo, &[]), |c| {
            c.placement = Some(rules("edge", &[], &[]));
        });
        let ack = cp.assign_process(wire).await.expect("assign").into_inner();
        assert!(
            hosts.insert(ack.launcher_id.clone()),
            "{ack:?} shares a host"
        );
    }
    assert_eq!(hosts.len(), 3);
    let refused = cp
        .assign_process(with_config(proxy("edge-3", &demo, &[]), |c| {
            c.placement = Some(rules("edge", &[], &[]));
        }))
        .await
        .expect_err("a fourth replica has no host of its own");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    for host in ["host-a", "host-b", "host-c"] {
        assert!(
            refused.message().contains(&format!(
                "{host}: it runs 1 of spread group edge already (at most 1 per launcher)"
            )),
            "{}",
            refused.message()
        );
    }
    // Required labels confine; a refusal names each launcher's label.
    let ack = cp
        .assign_process(with_config(utility("fast-disk", &demo, &[]), |c| {
            c.placement = Some(rules("", &[("disk", "ssd")], &[]));
        }))
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(ack.launcher_id, "host-a");
    let refused = cp
        .assign_process(with_config(utility("nvme", &demo, &[]), |c| {
            c.placement = Some(rules("", &[("disk", "nvme")], &[]));
        }))
        .await
        .expect_err("no launcher has nvme");
    assert!(
        refused
            .message()
            .contains("host-b: its label disk is \"hdd\", not \"nvme\""),
        "{}",
        refused.message()
    );
    // Preferred labels choose among those that can take it.
    let ack = cp
        .assign_process(with_config(utility("near-z3", &demo, &[]), |c| {
            c.placement = Some(rules("", &[], &[("zone", "z3")]));
        }))
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(ack.launcher_id, "host-c");
    // Bad rules are refused naming the field, and nothing is placed.
    let bad = cp
        .assign_process(with_config(utility("bad-rules", &demo, &[]), |c| {
            c.placement = Some(pb::PlacementRules {
                max_per_launcher: 2,
                ..Default::default()
            });
        }))
        .await
        .expect_err("max_per_launcher without a group");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("config.placement.max_per_launcher"),
        "{}",
        bad.message()
    );
    let err = f
        .api()
        .await
        .get_process(apb::GetProcessRequest {
            process_id: "bad-rules".into(),
            history_limit: 0,
        })
        .await
        .expect_err("nothing placed");
    assert_eq!(err.code(), Code::NotFound);
}

fn on_launcher(a: pb::ProcessAssignment, launcher: &str) -> tonic::Request<pb::ProcessAssignment> {
    let mut r = tonic::Request::new(a);
    r.metadata_mut()
        .insert("prism-launcher-id", launcher.parse().unwrap());
    r
}

/// Across launchers the admin holds a dependent until its dependency
/// reports running, refuses unknown dependencies and cycles, and
/// `prismctl describe` shows the graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_on_another_launcher_is_held_until_its_dependency_runs() {
    let Some(f) = Fleet::start(&[("host-a", &[]), ("host-b", &[])], &[]).await else {
        return;
    };
    let demo = f.hosts[0].h.demo.clone();
    // The driver takes 2 s to report READY=1.
    let driver = with_config(
        backend("redis-1", &demo, &["--ready-delay-ms", "2000"]),
        |c| c.notify_ready = true,
    );
    let mut cp = f.cp().await;
    let starting =
        tokio::spawn(async move { cp.assign_process(on_launcher(driver, "host-a")).await });
    eventually("redis-1 placed", DEADLINE, || async {
        f.api()
            .await
            .get_process(apb::GetProcessRequest {
                process_id: "redis-1".into(),
                history_limit: 0,
            })
            .await
            .ok()
    })
    .await;
    let kv = with_config(pattern("kv-1", &demo, &[]), |c| {
        c.depends_on = vec![pb::Dependency {
            process_id: "redis-1".into(),
            bind: false,
        }];
    });
    let mut cp = f.cp().await;
    let ack = cp
        .assign_process(on_launcher(kv, "host-b"))
        .await
        .expect("assign kv-1")
        .into_inner();
    assert!(
        ack.message
            .contains("held until its dependencies run: redis-1"),
        "{ack:?}"
    );
    let redis_unit = starting
        .await
        .unwrap()
        .expect("assign redis-1")
        .into_inner()
        .unit_name;
    let kv_info = eventually("kv-1 running on host-b", DEADLINE, || async {
        let p = f.process("kv-1").await;
        p.health
            .as_ref()
            .is_some_and(|h| h.detailed_status == "running")
            .then_some(p)
    })
    .await;
    assert_eq!(kv_info.launcher_id, "host-b");
    assert!(
        kv_info.history.iter().any(|e| e.event == "held"),
        "{:?}",
        kv_info.history
    );
    // It started after the driver was ready (one clock: same machine).
    let redis_ready = f.hosts[0]
        .h
        .show(&redis_unit, &["ActiveEnterTimestampMonotonic"]);
    let kv_started = f.hosts[1]
        .h
        .show(&kv_info.unit_name, &["ActiveEnterTimestampMonotonic"]);
    let (r, k): (u64, u64) = (
        redis_ready["ActiveEnterTimestampMonotonic"]
            .parse()
            .unwrap(),
        kv_started["ActiveEnterTimestampMonotonic"].parse().unwrap(),
    );
    assert!(k > r, "kv-1 active at {k} µs, redis-1 ready at {r} µs");
    // Unknown dependencies and cycles are refused naming the field.
    let err = cp
        .assign_process(with_config(pattern("kv-2", &demo, &[]), |c| {
            c.depends_on = vec![pb::Dependency {
                process_id: "nowhere".into(),
                bind: false,
            }];
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.depends_on[0].process_id: no process nowhere is assigned"),
        "{}",
        err.message()
    );
    let mut cyclic = with_config(backend("redis-1", &demo, &[]), |c| {
        c.depends_on = vec![pb::Dependency {
            process_id: "kv-1".into(),
            bind: false,
        }];
    });
    cyclic.version = 2;
    let err = cp.assign_process(cyclic).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.depends_on: a dependency cycle: redis-1 → kv-1 → redis-1"),
        "{}",
        err.message()
    );
    // The graph, from either end.
    let describe = |id: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
            .args([
                "--admin",
                &format!("unix:{}", f.dir.path().join("admin.sock").display()),
            ])
            .args(["describe", id])
            .output()
            .expect("run prismctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kv = describe("kv-1");
    assert!(kv.contains("Depends on:  redis-1 (running)"), "{kv}");
    let redis = describe("redis-1");
    assert!(redis.contains("Needed by:   kv-1 (running)"), "{redis}");
    // Not revoked from under what needs it; in order, both go.
    let revoke = |id: &str| pb::ProcessRevocation {
        process_id: id.into(),
        ..Default::default()
    };
    let err = cp.revoke_process(revoke("redis-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("redis-1 is needed by kv-1"),
        "{}",
        err.message()
    );
    assert_eq!(f.hosts[0].h.prop(&redis_unit, "ActiveState"), "active");
    cp.revoke_process(revoke("kv-1"))
        .await
        .expect("revoke kv-1");
    cp.revoke_process(revoke("redis-1"))
        .await
        .expect("revoke redis-1");
    assert!(f.hosts[0].h.listed_units().is_empty());
    assert!(f.hosts[1].h.listed_units().is_empty());
}

/// Read a stream until `pred` holds for the events read so far (bookmarks
/// left out), within the deadline.
async fn read_until(
    stream: &mut tonic::Streaming<apb::Event>,
    got: &mut Vec<apb::Event>,
    what: &str,
    pred: impl Fn(&[apb::Event]) -> bool,
) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !pred(got) {
        let next = tokio::time::timeout_at(end, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {got:#?}"))
            .unwrap_or_else(|s| panic!("stream ended with {s:?} waiting for {what}"))
            .unwrap_or_else(|| panic!("stream ended waiting for {what}"));
        if next.kind != "bookmark" {
            got.push(next);
        }
    }
}

fn kinds(events: &[apb::Event], process: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.process_id == process)
        .map(|e| e.kind.clone())
        .collect()
}

/// A process crashes and systemd restarts it: a watcher sees it placed,
/// delivered, started, running, restarted (why) and running again, with
/// revisions that follow one another; a watch from a listing's revision
/// misses nothing and repeats nothing; `prismctl events -f` prints it as
/// it happens, one JSON object per line; bad requests name their field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_a_crash_and_its_restart_and_list_then_watch_is_exact() {
    let Some(f) = Fleet::start(&[("host-a", &["--max-processes", "10"])], &[]).await else {
        return;
    };
    let host = &f.hosts[0];
    let mut api = f.api().await;
    // Everything, from now on.
    let mut all = api
        .watch_events(apb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let demo = host.h.demo.clone();
    let crashy = with_config(utility("crashy", &demo, &[]), |c| {
        c.restart_policy = Some(pb::RestartPolicy {
            delay_ms: 300,
            max_restarts: 10,
            window_seconds: 60,
            ..Default::default()
        });
    });
    f.cp().await.assign_process(crashy).await.expect("assign");
    let mut seen = Vec::new();
    read_until(&mut all, &mut seen, "crashy running", |e| {
        kinds(e, "crashy").contains(&"process.running".to_owned())
    })
    .await;
    let k = kinds(&seen, "crashy");
    // Placed first; delivered once the launcher's answer is back (its
    // first report may come sooner).
    assert_eq!(k[0], "process.placed", "{seen:#?}");
    read_until(&mut all, &mut seen, "crashy delivered", |e| {
        kinds(e, "crashy").contains(&"process.delivered".to_owned())
    })
    .await;
    let placed = &seen.iter().find(|e| e.kind == "process.placed").unwrap();
    assert_eq!(placed.launcher_id, "host-a");
    assert_eq!(placed.process.as_ref().unwrap().process_type, "utility");

    // List, then watch from the listing's revision (only crashy).
    let listing = api
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let row = &listing.processes[0];
    assert_eq!(row.health.as_ref().unwrap().detailed_status, "running");
    assert!(
        listing.revision >= seen.last().unwrap().revision,
        "{listing:?}"
    );
    let mut from_list = api
        .watch_events(apb::WatchRequest {
            process_id: "crashy".into(),
            since_revision: Some(listing.revision),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // prismctl follows it too, as JSON lines.
    let socket = format!("unix:{}", f.dir.path().join("admin.sock").display());
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args(["--admin", &socket, "events", "-f", "-o", "json"])
        .args(["--kind", "process.restarted,process.running"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prismctl events -f");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follower.stdout.take().unwrap(),
    ));
    // It is watching once a bookmark would come; give it its first
    // bookmark's worth of time by waiting for the process's PID first.
    let unit = row.unit_name.clone();
    let pid = host.h.prop(&unit, "MainPID");
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.h.systemctl(&["kill", "--signal=SIGKILL", &unit]);
    read_until(&mut all, &mut seen, "crashy restarted and running", |e| {
        let k = kinds(e, "crashy");
        k.iter()
            .rposition(|k| k == "process.restarted")
            .is_some_and(|r| k[r..].contains(&"process.running".to_owned()))
    })
    .await;
    let restarted = seen
        .iter()
        .find(|e| e.kind == "process.restarted")
        .unwrap()
        .clone();
    let change = restarted.process.as_ref().unwrap();
    assert_eq!(change.exit_reason, "signal", "{restarted:?}");
    assert!(change.restart_count >= 1, "{restarted:?}");
    assert!(
        restarted.message.contains("signal"),
        "{}",
        restarted.message
    );
    assert_ne!(host.h.prop(&unit, "MainPID"), pid);
    // Revisions follow one another, whatever the kind.
    for pair in seen.windows(2) {
        assert_eq!(pair[1].revision, pair[0].revision + 1, "{seen:#?}");
    }
    // From the listing: exactly what came after it.
    let mut after = Vec::new();
    read_until(
        &mut from_list,
        &mut after,
        "the restart, from the listing",
        |e| e.iter().any(|e| e.kind == "process.running"),
    )
    .await;
    let expected: Vec<i64> = seen
        .iter()
        .filter(|e| e.process_id == "crashy" && e.revision > listing.revision)
        .map(|e| e.revision)
        .collect();
    let got: Vec<i64> = after.iter().map(|e| e.revision).collect();
    assert_eq!(got, expected[..got.len()], "{after:#?}");
    assert_eq!(after[0].kind, "process.restarted", "{after:#?}");
    // prismctl printed the restart, one JSON object per line.
    let line = tokio::time::timeout(DEADLINE, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("a line");
            let e: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
            if e["kind"] == "process.restarted" {
                return e;
            }
        }
    })
    .await
    .expect("prismctl events -f printed the restart");
    assert_eq!(line["process_id"], "crashy");
    assert_eq!(line["revision"], restarted.revision);
    follower.kill().await.unwrap();

    // Bad requests name their field; the admin goes on serving.
    for (req, field) in [
        (
            apb::WatchRequest {
                kinds: vec!["process.exploded".into()],
                ..Default::default()
            },
            "kinds",
        ),
        (
            apb::WatchRequest {
                process_id: "a*b".into(),
                ..Default::default()
            },
            "process_id",
        ),
        (
            apb::WatchRequest {
                bookmark_interval_ms: 5,
                ..Default::default()
            },
            "bookmark_interval_ms",
        ),
    ] {
        let e = api.watch_events(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }
    let ahead = api
        .watch_events(apb::WatchRequest {
            since_revision: Some(listing.revision + 1_000_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
    // `prismctl events` without -f: the last events, then it exits.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args(["--admin", &socket, "events", "--process", "crash*"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("process.restarted"), "{table}");
    let _ = writeln_table("prismctl events --process 'crash*'", &table);
    let metrics = scrape(&f.admin.metrics_addr().await).await;
    assert!(
        sample(&metrics, "prism_admin_watchers").is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
}

fn writeln_table(cmd: &str, table: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "$ {cmd}\n{table}")
}

/// An admin asked to stop (SIGTERM) with watchers open ends their streams,
/// saying where to resume, and exits: an open stream never holds it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_admin_ends_its_watchers_saying_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Daemon::admin(dir.path(), &["--heartbeat-interval", HEARTBEAT]).await;
    let mut cp = ControlPlaneClient::new(admin.channel().await);
    cp.register_launcher(pb::LauncherRegistration {
        launcher_id: "up-1".into(),
        address: "127.0.0.1:9".into(),
        region: "local".into(),
        version: "test".into(),
        capabilities: vec!["pattern".into()],
        max_processes: 1,
        process_types: vec!["pattern".into()],
        ..Default::default()
    })
    .await
    .expect("register");
    let mut watcher = AdminClient::new(admin.channel().await)
        .watch_events(apb::WatchRequest {
            since_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    read_until(&mut watcher, &mut seen, "the registration", |e| {
        e.iter().any(|e| e.kind == "launcher.registered")
    })
    .await;
    let mut last = seen.last().unwrap().revision;
    let status = admin.terminate().await;
    assert!(status.success(), "{status:?}\n{}", admin.log_text());
    let ended = loop {
        match tokio::time::timeout(DEADLINE, watcher.message()).await {
            // What was sent before it stopped (the leader's election may
            // follow the registration).
            Ok(Ok(Some(e))) => {
                if e.kind != "bookmark" {
                    last = e.revision;
                }
            }
            Ok(Err(s)) => break s,
            other => panic!("the stream did not end with a status: {other:?}"),
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains(&format!(
            "resume on another admin with since_revision {last}"
        )),
        "{ended:?}"
    );
}

/// A watcher that reads nothing is ended once its queue is full, without
/// slowing the others; its stream says where to resume, and resuming
/// there misses nothing. A revision no longer kept is OUT_OF_RANGE,
/// naming the oldest kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_is_ended_and_resumes_and_pruned_revisions_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin(
        dir.path(),
        &[
            // Long: the launchers registered below stay healthy (no more
            // events) while the test reads, so what it saw stays kept.
            "--heartbeat-interval",
            "60s",
            "--watcher-queue",
            "8",
            "--events-keep",
            "40",
        ],
    )
    .await;
    // A client that reads nothing: a tiny HTTP/2 window, filled at once.
    let stalled_channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", admin.port))
            .unwrap()
            .initial_stream_window_size(256)
            .connect()
            .await
            .unwrap();
    let mut stalled = AdminClient::new(stalled_channel)
        .watch_events(apb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut reader = AdminClient::new(admin.channel().await)
        .watch_events(apb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Launchers registering: one event each (an upstream client's wire).
    let mut cp = ControlPlaneClient::new(admin.channel().await);
    // More than a stalled stream can hold: its queue, the batches in
    // flight, and the chunk (up to 32 KiB, some 300 of these events) that
    // HTTP/2 took before its window closed.
    let n = 1000;
    for i in 0..n {
        cp.register_launcher(pb::LauncherRegistration {
            launcher_id: format!("up-{i:03}"),
            address: "127.0.0.1:9".into(),
            region: "local".into(),
            version: "test".into(),
            capabilities: vec!["pattern".into()],
            max_processes: 1,
            process_types: vec!["pattern".into()],
            ..Default::default()
        })
        .await
        .expect("register");
    }
    let mut seen = Vec::new();
    read_until(&mut reader, &mut seen, "every registration", |e| {
        e.iter().filter(|e| e.kind == "launcher.registered").count() == n
    })
    .await;
    for pair in seen.windows(2) {
        assert_eq!(pair[1].revision, pair[0].revision + 1, "{seen:#?}");
    }
    // The stalled one: what was in flight, then the status that ended it.
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    let ended = loop {
        match tokio::time::timeout_at(end, stalled.message())
            .await
            .expect("ended")
        {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("ended without a status after {got:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    let resume: i64 = ended
        .message()
        .split("since_revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {:?}", ended.message()));
    assert_eq!(resume, got.last().map_or(0, |e| e.revision), "{got:?}");
    assert!(
        got.len() < n,
        "{} events reached the stalled watcher",
        got.len()
    );
    let metrics = scrape(&admin.metrics_addr().await).await;
    assert_eq!(
        sample(&metrics, "prism_admin_watchers_ended_slow_total"),
        Some(1.0),
        "{metrics}"
    );
    // Only the newest 40 are kept (pruned in the background, at once once
    // the log outgrows that by a tenth): resuming that far back is
    // OUT_OF_RANGE, naming the oldest kept.
    let oldest = eventually("old events pruned", DEADLINE, || async {
        let m = scrape(&admin.metrics_addr().await).await;
        sample(&m, "prism_admin_events_oldest_revision").filter(|o| *o > 1.0)
    })
    .await as i64;
    let mut api = AdminClient::new(admin.channel().await);
    let status = match api
        .watch_events(apb::WatchRequest {
            since_revision: Some(0),
            ..Default::default()
        })
        .await
    {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.expect_err("out of range"),
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("oldest kept is {oldest}")),
        "{status:?} (oldest {oldest})"
    );
    // From within what is kept, it resumes where it stopped.
    let mut resumed = api
        .watch_events(apb::WatchRequest {
            since_revision: Some(oldest - 1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    read_until(&mut resumed, &mut rest, "the rest", |e| {
        e.last().map(|e| e.revision) == seen.last().map(|e| e.revision)
    })
    .await;
    assert_eq!(rest[0].revision, oldest);
    drop(admin);
}
