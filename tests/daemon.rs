//! The prism-launcher daemon, driven over gRPC, against a real systemd
//! manager (a sandboxed user manager; the daemon talks to it over its bus,
//! its production code path).

mod support;

use std::{collections::HashMap, fs, os::unix::fs::PermissionsExt, time::Duration};

use futures_util::{StreamExt, future::join_all};
use prism_launcher::pb::prism::{
    self as pb,
    launcher::v1::{GetProcessRequest, ListProcessesRequest, ProcessInfo},
};
use support::{daemon::*, *};
use tonic::Code;

async fn get(d: &Daemon, id: &str) -> ProcessInfo {
    d.client()
        .await
        .get_process(GetProcessRequest {
            process_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetProcess {id}: {e}"))
        .into_inner()
}

fn health(info: &ProcessInfo) -> &pb::ProcessHealth {
    info.health.as_ref().expect("health")
}

/// Wait until GetProcess reports `detailed_status`.
async fn wait_status(d: &Daemon, id: &str, status: &str) -> ProcessInfo {
    eventually(&format!("{id} to be {status}"), DEADLINE, || async {
        let info = get(d, id).await;
        (health(&info).detailed_status == status).then_some(info)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_type_is_assigned_listed_and_revoked() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let assignments = [
        with_config(pattern("kv-1", &h.demo, &[]), |c| c.health_port = 19101),
        proxy("proxy-1", &h.demo, &[]),
        backend("redis-1", &h.demo, &[]),
        utility("logs-1", &h.demo, &[]),
    ];
    for a in assignments {
        let ack = client
            .assign_process(a.clone())
            .await
            .expect("assign")
            .into_inner();
        assert!(ack.success, "{ack:?}");
        assert_eq!(ack.launcher_id, "test-launcher");
        assert!(ack.unit_name.starts_with("prism-"), "{ack:?}");
        assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
    }

    // kv-1 has an HTTP probe: running once it passed.
    let kv = wait_status(&d, "kv-1", "running").await;
    let kv_health = health(&kv);
    assert_eq!(kv_health.status, "running");
    assert_eq!(kv_health.unit_name, r"prism-pattern-kv\x2d1.service");
    assert_eq!(kv_health.pid.to_string(), h.prop(&kv.unit_name, "MainPID"));
    assert_eq!(kv_health.active_state, "active");
    assert_eq!(kv_health.version, 1);
    assert_eq!(kv_health.restart_count, 0);

    let list = client
        .list_processes(ListProcessesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let by_id: HashMap<String, &ProcessInfo> = list
        .processes
        .iter()
        .map(|p| (p.assignment.as_ref().unwrap().process_id.clone(), p))
        .collect();
    assert_eq!(by_id.len(), 4);
    for (id, p) in &by_id {
        let hl = health(p);
        assert_eq!(hl.detailed_status, "running", "{id}: {hl:?}");
        assert!(hl.pid > 0, "{id}");
        assert!(hl.uptime_seconds >= 0);
    }
    // Secrets are redacted in what the launcher shows.
    let redis = by_id["redis-1"].assignment.as_ref().unwrap();
    let b = redis.config.as_ref().unwrap().backend.as_ref().unwrap();
    assert_eq!(b.connection_string, "(redacted)");
    assert_eq!(b.credentials["password"], "(redacted)");
    let resources = list.resources.expect("resources");
    assert_eq!(
        (
            resources.process_count,
            resources.max_processes,
            resources.available_slots
        ),
        (4, 50, 46)
    );
    // Filters.
    let proxies = client
        .list_processes(ListProcessesRequest {
            process_type: "proxy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proxies.processes.len(), 1);
    let in_orders = client
        .list_processes(ListProcessesRequest {
            namespace: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_orders.processes.len(), 2);

    // Revoke: the unit is gone, the state file too, exit status reported.
    h.wait_ready("proxy-1").await;
    let ack = client
        .revoke_process(pb::ProcessRevocation {
            launcher_id: "test-launcher".into(),
            process_id: "proxy-1".into(),
            graceful_timeout_seconds: 10,
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(ack.success && ack.stopped_at > 0, "{ack:?}");
    assert_eq!(ack.exit_code, 0, "{ack:?}");
    assert!(!h.listed_units().iter().any(|u| u.contains("proxy")));
    assert!(
        !d.state_files().iter().any(|f| f.contains("proxy")),
        "{:?}",
        d.state_files()
    );
    let e = client
        .get_process(GetProcessRequest {
            process_id: "proxy-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .revoke_process(pb::ProcessRevocation {
            process_id: "proxy-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("proxy-1"), "{}", e.message());

    // sd_notify: READY=1 came, and STATUS= follows the counts.
    eventually("STATUS= with 3 running", DEADLINE, || async {
        d.last_status()
            .filter(|s| s.starts_with("3 running, 47 slots free; systemd connected"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_are_idempotent_by_id_and_version() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let v1 = pattern("kv-1", &h.demo, &[]);
    let ack = client
        .assign_process(v1.clone())
        .await
        .unwrap()
        .into_inner();
    let unit = ack.unit_name;
    let pid = h.prop(&unit, "MainPID");

    // Same version: nothing changes, not even the process.
    let again = client
        .assign_process(v1.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(again.success);
    assert!(
        again.message.contains("nothing changed"),
        "{}",
        again.message
    );
    assert_eq!(h.prop(&unit, "MainPID"), pid);

    // A higher version replaces the unit.
    let mut v2 = with_config(v1.clone(), |c| c.args = vec!["--print-env".into()]);
    v2.version = 2;
    let ack = client
        .assign_process(v2.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        ack.message.contains("replaced kv-1 v1 with v2"),
        "{}",
        ack.message
    );
    let replaced = h.show(&unit, &["MainPID", "Description", "ExecStart"]);
    assert_ne!(replaced["MainPID"], pid);
    assert!(
        replaced["Description"].contains(" v2 "),
        "{}",
        replaced["Description"]
    );
    assert!(replaced["ExecStart"].contains("--print-env"));
    assert_eq!(health(&get(&d, "kv-1").await).version, 2);

    // A lower version is refused and changes nothing.
    let e = client.assign_process(v1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        e.message().contains("version 2") && e.message().contains("version 1"),
        "{}",
        e.message()
    );
    assert_eq!(h.prop(&unit, "MainPID"), replaced["MainPID"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_capacity_are_enforced() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &["--capabilities", "pattern", "--max-processes", "10"]).await;
    let client = d.client().await;

    let e = client
        .clone()
        .assign_process(proxy("p-1", &h.demo, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("proxy") && e.message().contains("capabilities"),
        "{}",
        e.message()
    );

    // 20 at once for 10 slots: exactly 10 get in.
    let results = join_all((0..20).map(|i| {
        let mut c = client.clone();
        let a = pattern(&format!("kv-{i}"), &h.demo, &[]);
        async move { c.assign_process(a).await }
    }))
    .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let exhausted: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(accepted, 10, "{results:?}");
    assert_eq!(exhausted.len(), 10);
    for e in &exhausted {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("10 of 10"), "{}", e.message());
    }
    assert_eq!(h.listed_units().len(), 10);
    assert_eq!(d.state_files().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_naming_the_field_and_creates_nothing() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let demo = h.demo.display().to_string();
    let outside = "/usr/sbin/nologin".to_owned();
    // Inside the allowlist, but anyone could replace it.
    let writable = h.bin_dir.join("prism-demo-writable");
    fs::copy(&h.demo, &writable).unwrap();
    fs::set_permissions(&writable, fs::Permissions::from_mode(0o777)).unwrap();
    let writable = writable.display().to_string();
    type Edit = Box<dyn Fn(&mut pb::ProcessAssignment)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "config.binary",
            Box::new(move |w| w.config.as_mut().unwrap().binary = writable.clone()),
        ),
        (
            // 150 KB of JSON in one environment string: E2BIG at exec.
            "config.pattern.settings",
            Box::new(|w| {
                let p = w.config.as_mut().unwrap().pattern.as_mut().unwrap();
                p.settings.insert("big".into(), "x".repeat(150_000));
            }),
        ),
        ("process_id", Box::new(|w| w.process_id.clear())),
        ("process_id", Box::new(|w| w.process_id = "x".repeat(129))),
        ("process_id", Box::new(|w| w.process_id = "../etc".into())),
        (
            "config.binary",
            Box::new(|w| w.config.as_mut().unwrap().binary = "prism-demo".into()),
        ),
        (
            "config.binary",
            Box::new(move |w| w.config.as_mut().unwrap().binary = outside.clone()),
        ),
        (
            "config.binary",
            Box::new(move |w| w.config.as_mut().unwrap().binary = format!("{demo}-missing")),
        ),
        (
            "config.args[0]",
            Box::new(|w| w.config.as_mut().unwrap().args = vec!["a\0b".into()]),
        ),
        (
            "config.args[0]",
            Box::new(|w| w.config.as_mut().unwrap().args = vec!["a\nb".into()]),
        ),
        (
            "config.env.X",
            Box::new(|w| {
                w.config
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("X".into(), "1\n2".into());
            }),
        ),
        (
            "config.env.1X",
            Box::new(|w| {
                w.config
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("1X".into(), "v".into());
            }),
        ),
        (
            "config.port",
            Box::new(|w| w.config.as_mut().unwrap().port = 70000),
        ),
        (
            "config.pattern",
            Box::new(|w| w.config.as_mut().unwrap().pattern = None),
        ),
        (
            "config.proxy",
            Box::new(|w| {
                w.config.as_mut().unwrap().proxy = Some(pb::ProxyProcessConfig::default());
            }),
        ),
        (
            "config.pattern.pattern_type",
            Box::new(|w| {
                w.config
                    .as_mut()
                    .unwrap()
                    .pattern
                    .as_mut()
                    .unwrap()
                    .pattern_type
                    .clear();
            }),
        ),
        (
            "process_type",
            Box::new(|w| w.process_type = "daemon".into()),
        ),
        (
            "config.isolation_level",
            Box::new(|w| w.config.as_mut().unwrap().isolation_level = "total".into()),
        ),
        (
            "config.args",
            Box::new(|w| w.config.as_mut().unwrap().args = vec!["x".into(); 300]),
        ),
    ];
    for (field, edit) in &cases {
        let mut wire = pattern("bad-1", &h.demo, &[]);
        edit(&mut wire);
        let e = client.assign_process(wire).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    // Nothing half-created, anywhere.
    assert!(h.listed_units().is_empty(), "{:?}", h.listed_units());
    assert!(d.state_files().is_empty(), "{:?}", d.state_files());
    let creds = h.sandbox.dir().join("credentials");
    assert!(!creds.exists() || fs::read_dir(&creds).unwrap().next().is_none());
    // Revocations and reads are checked too.
    let e = client
        .revoke_process(pb::ProcessRevocation {
            process_id: "kv-1".into(),
            graceful_timeout_seconds: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("graceful_timeout_seconds"),
        "{}",
        e.message()
    );
    let e = client
        .revoke_process(pb::ProcessRevocation {
            launcher_id: "another".into(),
            process_id: "kv-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("launcher_id"), "{}", e.message());
    // And the daemon keeps serving.
    let ack = client
        .assign_process(pattern("kv-1", &h.demo, &[]))
        .await
        .expect("a good assignment after bad ones")
        .into_inner();
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_50_units_then_restart_adopts_all_without_restarts() {
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let client = d.client().await;
    let results = join_all((0..50).map(|i| {
        let mut c = client.clone();
        let a = pattern(&format!("kv-{i:02}"), &h.demo, &[]);
        async move { c.assign_process(a).await.map(|r| r.into_inner().unit_name) }
    }))
    .await;
    let units: Vec<String> = results.into_iter().map(|r| r.expect("assign")).collect();
    let pids: HashMap<&String, String> = units.iter().map(|u| (u, h.prop(u, "MainPID"))).collect();
    assert!(pids.values().all(|p| p != "0"));

    d.kill9();
    // Workloads do not depend on the launcher.
    for u in &units {
        assert_eq!(h.prop(u, "ActiveState"), "active", "{u}");
    }
    d.restart().await;
    let listed = d
        .client()
        .await
        .list_processes(ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.processes.len(), 50);
    for u in &units {
        let s = h.show(u, &["MainPID", "NRestarts", "ActiveState"]);
        assert_eq!(s["MainPID"], pids[u], "{u} was restarted");
        assert_eq!(s["NRestarts"], "0", "{u}");
        assert_eq!(s["ActiveState"], "active", "{u}");
    }
    assert_eq!(h.listed_units().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_gets_every_desired_unit_back() {
    let Some(mut h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let mut units = Vec::new();
    for i in 0..5 {
        let a = with_config(utility(&format!("u-{i}"), &h.demo, &[]), |_| {});
        units.push(
            client
                .assign_process(a)
                .await
                .unwrap()
                .into_inner()
                .unit_name,
        );
    }
    h.sandbox.restart_manager().expect("restart the manager");
    // Every transient unit died with the manager; the launcher recreates them.
    eventually("all five units recreated", DEADLINE, || async {
        let listed = h.listed_units();
        units
            .iter()
            .all(|u| listed.contains(u) && h.prop(u, "ActiveState") == "active")
            .then_some(())
    })
    .await;
    eventually("the launcher to report them running", DEADLINE, || async {
        let s = d.last_status()?;
        s.starts_with("5 running").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_launcher_and_leaves_workloads_running() {
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let unit = client
        .assign_process(pattern("kv-1", &h.demo, &[]))
        .await
        .unwrap()
        .into_inner()
        .unit_name;
    let pid = h.prop(&unit, "MainPID");
    let status = d.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(
        d.notifications
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1"
    );
    assert_eq!(h.prop(&unit, "ActiveState"), "active");
    assert_eq!(h.prop(&unit, "MainPID"), pid);
    assert!(
        d.log_text().contains("workloads keep running"),
        "{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_reports_circuit_open_then_half_opens() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &["--circuit-cooldown", "2s"]).await;
    let mut client = d.client().await;
    let wire = with_config(
        utility("crashy-1", &h.demo, &["--crash-at-start", "3"]),
        |c| {
            c.restart_policy = Some(pb::RestartPolicy {
                delay_ms: 100,
                max_restarts: 3,
                ..Default::default()
            });
        },
    );
    client.assign_process(wire).await.expect("assign");
    let info = wait_status(&d, "crashy-1", "circuit_open").await;
    let hl = health(&info);
    assert_eq!(hl.status, "failed");
    assert!(
        hl.last_error.contains("exited with status 3"),
        "{}",
        hl.last_error
    );
    assert!(
        hl.last_error.contains("start limit hit"),
        "{}",
        hl.last_error
    );
    assert!(hl.restart_count >= 3, "{hl:?}");
    // After the cool-down: one half-open round, which trips again.
    eventually("a half-open try", DEADLINE, || async {
        d.log_text().contains("circuit half-open").then_some(())
    })
    .await;
    let before = hl.restart_count;
    eventually(
        "the half-open round to trip the circuit again",
        DEADLINE,
        || async {
            let info = get(&d, "crashy-1").await;
            let now = health(&info);
            (now.detailed_status == "circuit_open" && now.restart_count > before).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_is_unhealthy_then_restarted() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let wire = with_config(
        pattern("sick-1", &h.demo, &["--fail-health-after", "1"]),
        |c| {
            c.health_port = 19201;
            c.health_check = Some(pb::HealthCheck {
                kind: "http".into(),
                interval_ms: 300,
                timeout_ms: 200,
                failure_threshold: 2,
                ..Default::default()
            });
        },
    );
    let unit = client
        .assign_process(wire)
        .await
        .unwrap()
        .into_inner()
        .unit_name;
    let pid = h.prop(&unit, "MainPID");
    wait_status(&d, "sick-1", "running").await;
    let info = wait_status(&d, "sick-1", "unhealthy").await;
    assert!(
        health(&info).last_error.contains("503"),
        "{:?}",
        health(&info)
    );
    let restarted = eventually("a restart through systemd", DEADLINE, || async {
        let info = get(&d, "sick-1").await;
        (health(&info).restart_count >= 1).then_some(info)
    })
    .await;
    assert_ne!(
        h.prop(&unit, "MainPID"),
        pid,
        "the process was not restarted"
    );
    assert!(health(&restarted).error_count >= 2);
    assert!(
        d.log_text()
            .contains("unhealthy: restarting through systemd")
    );
    let metrics = scrape(&d.metrics_addr().await).await;
    assert!(
        sample(&metrics, r#"prism_launcher_restarts_total{cause="probe"}"#)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_at_start_never_drops_desired_state_or_stops_its_unit() {
    let Some(h) = harness!() else { return };
    // A binary of its own, removed while the launcher is down (a package
    // upgrade, a late mount): the running process keeps its copy.
    let bin = h.bin_dir.join("prism-demo-upgraded");
    fs::copy(&h.demo, &bin).unwrap();
    let mut d = Daemon::start(&h, &[]).await;
    let ack = d
        .client()
        .await
        .assign_process(pattern("kv-host", &bin, &[]))
        .await
        .expect("assign")
        .into_inner();
    let pid = h.prop(&ack.unit_name, "MainPID");
    d.kill9();
    fs::remove_file(&bin).unwrap();
    d.restart().await;
    assert_eq!(d.state_files().len(), 1, "desired state kept");
    assert!(!d.state_dir.join("corrupt").exists(), "{}", d.log_text());
    let info = d
        .client()
        .await
        .get_process(GetProcessRequest {
            process_id: "kv-host".into(),
        })
        .await
        .expect("still held")
        .into_inner();
    assert_eq!(info.unit_name, ack.unit_name);
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
    assert_eq!(h.prop(&ack.unit_name, "MainPID"), pid, "never restarted");

    // Once its unit has to be recreated, the process is `failed`, naming
    // the problem; nothing is created in systemd meanwhile.
    h.systemctl(&["stop", "--", &ack.unit_name]);
    let info = wait_status(&d, "kv-host", "failed").await;
    let error = &health(&info).last_error;
    assert!(
        error.contains("config.binary") && error.contains("does not exist"),
        "{error}"
    );
    assert!(
        !h.listed_units().contains(&ack.unit_name),
        "{:?}",
        h.listed_units()
    );
    assert_eq!(d.state_files().len(), 1, "still desired");
    // It recovers by itself when the binary is back.
    fs::copy(&h.demo, &bin).unwrap();
    eventually("kv-host to run again", Duration::from_secs(60), || async {
        (h.prop(&ack.unit_name, "ActiveState") == "active").then_some(())
    })
    .await;
    wait_status(&d, "kv-host", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checked_file_runs_even_if_its_symlink_is_repointed() {
    let Some(h) = harness!() else { return };
    // `current` -> v1 when assigned; re-pointed to another file later.
    let v1 = h.bin_dir.join("prism-demo-v1");
    fs::copy(&h.demo, &v1).unwrap();
    let link = h.bin_dir.join("prism-demo-current");
    std::os::unix::fs::symlink(&v1, &link).unwrap();
    let d = Daemon::start(&h, &[]).await;
    let ack = d
        .client()
        .await
        .assign_process(pattern("kv-link", &link, &[]))
        .await
        .expect("assign")
        .into_inner();
    let exec = h.prop(&ack.unit_name, "ExecStart");
    assert!(
        exec.contains(&format!("path={} ", v1.display()))
            && exec.contains(&format!("argv[]={} ", link.display())),
        "{exec}"
    );
    let v2 = h.bin_dir.join("prism-demo-v2");
    fs::copy(&h.demo, &v2).unwrap();
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&v2, &link).unwrap();
    h.systemctl(&["restart", "--", &ack.unit_name]);
    let pid: u32 = h.prop(&ack.unit_name, "MainPID").parse().unwrap();
    let running = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        running, v1,
        "what was checked runs, not what the link says now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_files_of_units_that_no_longer_exist_are_swept_at_start() {
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let ack = d
        .client()
        .await
        .assign_process(backend("cred-1", &h.demo, &[]))
        .await
        .expect("assign")
        .into_inner();
    let creds = h.sandbox.dir().join("credentials");
    assert!(
        creds.join(&ack.unit_name).is_dir(),
        "held unit's credentials"
    );
    // Left behind by a unit that is gone (a crash between its stop and the
    // cleanup).
    d.kill9();
    let ghost = creds.join("prism-backend-ghost.service/7");
    fs::create_dir_all(&ghost).unwrap();
    fs::write(ghost.join("password"), "stale").unwrap();
    d.restart().await;
    assert!(!creds.join("prism-backend-ghost.service").exists(), "swept");
    assert!(creds.join(&ack.unit_name).is_dir(), "kept: its unit runs");
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
    assert!(
        d.log_text()
            .contains("removed stale credential files of units that no longer exist: prism-backend-ghost.service"),
        "{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_reported_and_moved_aside() {
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    client
        .assign_process(pattern("kv-1", &h.demo, &[]))
        .await
        .unwrap();
    let junk = d.state_dir.join("processes").join("kv-2.pb");
    fs::write(&junk, b"\x0a\xff\xff\xff not protobuf").unwrap();
    d.restart().await;
    assert!(!junk.exists());
    let moved: Vec<_> = fs::read_dir(d.state_dir.join("corrupt"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(moved.len(), 1);
    let log = d.log_text();
    assert!(
        log.contains("corrupt state file") && log.contains("moved aside"),
        "{log}"
    );
    assert!(log.contains("kv-2.pb"), "{log}");
    // The good one is still held, and the daemon serves.
    assert_eq!(health(&get(&d, "kv-1").await).detailed_status, "running");
    client = d.client().await;
    client
        .assign_process(pattern("kv-3", &h.demo, &[]))
        .await
        .expect("still serving");
}

#[tokio::test]
async fn bad_configuration_exits_64_naming_the_setting_before_binding() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--max-processes", "0"], "--max-processes"),
        (vec!["--max-processes", "lots"], "--max-processes"),
        (vec!["--capabilities", "pattern,daemon"], "--capabilities"),
        (vec!["--systemd", "somewhere"], "--systemd"),
        (vec!["--listen", "0.0.0.0:7070"], "--listen"),
        (vec!["--admin-endpoint", "admin"], "--admin-endpoint"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ];
    for (flags, setting) in cases {
        let mut args = vec![
            "--listen",
            listen.as_str(),
            "--state-dir",
            state_arg.as_str(),
        ];
        args.extend(flags.iter());
        let (code, out) = run_to_exit(&args, Duration::from_secs(10));
        assert_eq!(code, Some(64), "{flags:?}: {out}");
        assert!(out.contains(setting), "{flags:?}: {out}");
        // Nothing was bound or created.
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        assert!(!state.exists(), "{flags:?} created the state directory");
    }
    let (code, out) = run_to_exit(&["--help"], Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("--admin-endpoint") && out.contains("--max-processes"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_grpc_health_and_reflection() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", d.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "prism.launcher.v1.Launcher"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(status.as_str_name(), "SERVING", "{service:?}");
    }
    // Exactly what the launcher serves, over both reflection versions:
    // not the admin's services, which would answer UNIMPLEMENTED here.
    let (v1, v1alpha) = support::reflected_services(channel).await;
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "prism.launcher.v1.Launcher",
    ];
    assert_eq!(v1, expected);
    assert_eq!(v1alpha, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_units_that_are_not_desired_are_stopped() {
    let Some(h) = harness!() else { return };
    // A workload-named unit nobody assigned, and a unit outside the pattern.
    let demo = h.demo.display().to_string();
    for unit in [
        "prism-pattern-stray.service",
        "prism-launcher-lookalike.service",
    ] {
        let out = std::process::Command::new("systemd-run")
            .args(["--user", "--unit", unit, "-p", "Type=exec", &demo])
            .env("XDG_RUNTIME_DIR", h.sandbox.runtime_dir())
            .env("DBUS_SESSION_BUS_ADDRESS", h.sandbox.bus_address())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let d = Daemon::start(&h, &["--reconcile-interval", "1s"]).await;
    eventually(
        "the stray workload unit to be stopped",
        DEADLINE,
        || async {
            (!h.listed_units()
                .contains(&"prism-pattern-stray.service".to_owned()))
            .then_some(())
        },
    )
    .await;
    assert!(d.log_text().contains("not desired"), "{}", d.log_text());
    // The launcher never touches units outside its workload pattern.
    assert_eq!(
        h.prop("prism-launcher-lookalike.service", "ActiveState"),
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_revocation_is_finished_after_a_crash() {
    use prism_launcher::launcher::store::Store;
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let wire = pattern("kv-1", &h.demo, &[]);
    let unit = client
        .assign_process(wire.clone())
        .await
        .unwrap()
        .into_inner()
        .unit_name;
    // The launcher dies right after recording a revocation, before the stop.
    d.kill9();
    Store::open(&d.state_dir)
        .unwrap()
        .save(&wire, true, false)
        .unwrap();
    assert_eq!(h.prop(&unit, "ActiveState"), "active");
    d.restart().await;
    eventually("the revocation to be finished", DEADLINE, || async {
        (!h.listed_units().contains(&unit) && d.state_files().is_empty()).then_some(())
    })
    .await;
    let e = client_get_err(&d, "kv-1").await;
    assert_eq!(e.code(), Code::NotFound);
}

async fn client_get_err(d: &Daemon, id: &str) -> tonic::Status {
    d.client()
        .await
        .get_process(GetProcessRequest {
            process_id: id.into(),
        })
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_the_watchdog_when_systemd_asks() {
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    assert!(
        !d.notifications
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("WATCHDOG=1")),
        "pinged without being asked"
    );
    // As systemd sets it for WatchdogSec=: 400 ms.
    d.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    d.restart().await;
    eventually("three watchdog pings", DEADLINE, || async {
        let pings = d
            .notifications
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count();
        (pings >= 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outdated_unit_is_replaced_by_reconciliation() {
    use prism_launcher::launcher::store::Store;
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let v1 = pattern("kv-1", &h.demo, &[]);
    let unit = d
        .client()
        .await
        .assign_process(v1.clone())
        .await
        .unwrap()
        .into_inner()
        .unit_name;
    let pid = h.prop(&unit, "MainPID");
    // The launcher went down after recording v2, before replacing the unit.
    d.kill9();
    let mut v2 = with_config(v1, |c| c.args = vec!["--print-env".into()]);
    v2.version = 2;
    Store::open(&d.state_dir)
        .unwrap()
        .save(&v2, false, false)
        .unwrap();
    d.restart().await;
    let s = h.show(&unit, &["MainPID", "Description", "ActiveState"]);
    assert!(s["Description"].contains(" v2 "), "{s:?}");
    assert_ne!(s["MainPID"], pid);
    assert_eq!(s["ActiveState"], "active");
    assert_eq!(health(&get(&d, "kv-1").await).version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_limits_are_applied_in_place_and_other_changes_replace_the_unit() {
    let Some(h) = harness!() else { return };
    // The launcher's journal rate limit reaches units that set none.
    let d = Daemon::start(&h, &["--log-rate-limit-burst", "300"]).await;
    let mut client = d.client().await;
    let limits = |memory: i64, weight: i32| {
        move |c: &mut pb::ProcessConfig| {
            c.resources = Some(pb::ResourceLimits {
                memory_max_bytes: memory,
                io_weight: weight,
                ..Default::default()
            });
        }
    };
    let v1 = with_config(backend("redis-1", &h.demo, &[]), limits(128 << 20, 0));
    let ack = client
        .assign_process(v1.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.applied, "created");
    let unit = ack.unit_name;
    wait_status(&d, "redis-1", "running").await;
    let pid = h.prop(&unit, "MainPID");
    assert_eq!(h.prop(&unit, "LogRateLimitBurst"), "300");

    let mut v2 = with_config(v1.clone(), limits(256 << 20, 300));
    v2.version = 2;
    let ack = client.assign_process(v2).await.unwrap().into_inner();
    assert_eq!(ack.applied, "updated in place", "{ack:?}");
    assert!(ack.message.contains("kept its process"), "{}", ack.message);
    let s = h.show(&unit, &["MainPID", "MemoryMax", "IOWeight", "Description"]);
    assert_eq!(s["MainPID"], pid, "the process was restarted");
    assert_eq!(s["MemoryMax"], (256u64 << 20).to_string());
    assert_eq!(s["IOWeight"], "300");
    assert!(s["Description"].contains(" v2 "), "{s:?}");
    let info = get(&d, "redis-1").await;
    assert_eq!(health(&info).version, 2);
    assert_eq!(health(&info).pid.to_string(), pid);

    // Arguments are not a cgroup property: a new unit, and the ack says why.
    let mut v3 = with_config(v1, |c| c.args = vec!["--print-env".into()]);
    v3.version = 3;
    let ack = client.assign_process(v3).await.unwrap().into_inner();
    assert!(ack.applied.starts_with("replaced: config.args"), "{ack:?}");
    let info = wait_status(&d, "redis-1", "running").await;
    assert_eq!(health(&info).version, 3);
    assert_ne!(h.prop(&unit, "MainPID"), pid);
    assert_eq!(h.prop(&unit, "MemoryMax"), (128u64 << 20).to_string());
}

/// When each run of `id` started and ended (journal timestamps, seconds).
fn runs(h: &Harness, id: &str) -> Vec<(f64, Option<f64>)> {
    let out = h
        .sandbox
        .journalctl()
        .args(["-o", "short-unix", "-t", id])
        .output()
        .expect("run journalctl");
    let mut runs: Vec<(f64, Option<f64>)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(at) = line.split(' ').next().and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        if line.contains(" starting (pid ") {
            runs.push((at, None));
        } else if line.contains(" crashing on purpose ")
            && let Some(last) = runs.last_mut()
        {
            last.1 = Some(at);
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_in_a_row_wait_longer_each_time_on_any_manager() {
    let Some(h) = harness!() else { return };
    let version = prism_launcher::systemd::Systemd::manager_version(&h.engine().await);
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    // 200 ms doubling to 12.8 s: 200, 400, 800, 1600 ms... and a sixth
    // start within a minute is one too many.
    let growing = |delay_ms: i64| {
        move |c: &mut pb::ProcessConfig| {
            c.restart_policy = Some(pb::RestartPolicy {
                delay_ms,
                max_delay_ms: 12_800,
                steps: 6,
                max_restarts: 5,
                window_seconds: 60,
                ..Default::default()
            });
        }
    };
    let ack = client
        .assign_process(with_config(
            utility("loop-1", &h.demo, &["--crash-at-start", "3"]),
            growing(200),
        ))
        .await
        .expect("assign")
        .into_inner();
    let info = wait_status(&d, "loop-1", "circuit_open").await;
    assert_eq!(health(&info).exit_reason, "start-limit", "{info:?}");
    assert!(health(&info).restart_count >= 4, "{info:?}");
    let runs = runs(&h, "loop-1");
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert_eq!(
        h.prop(&ack.unit_name, "RestartUSec"),
        if version >= 254 {
            "200ms"
        } else {
            "12.800000s"
        }
    );
    for (n, pair) in runs.windows(2).enumerate() {
        let ended = pair[0].1.expect("each run crashed");
        let waited = pair[1].0 - ended;
        let delay = 0.2 * f64::from(1u32 << n);
        // Never sooner than the curve; far sooner than systemd's own
        // timer at the longest delay where the launcher paces.
        assert!(waited >= delay - 0.05, "restart {n}: {waited} s, {runs:?}");
        if version < 254 {
            assert!(waited < 12.8 / 2.0, "restart {n}: {waited} s, {runs:?}");
        }
    }

    // Where the launcher paces restarts, a new curve up to the same
    // longest delay is its own: the process keeps running.
    let steady = with_config(utility("steady-1", &h.demo, &[]), growing(200));
    client.assign_process(steady.clone()).await.expect("assign");
    let info = wait_status(&d, "steady-1", "running").await;
    let mut v2 = with_config(steady, growing(500));
    v2.version = 2;
    let ack = client.assign_process(v2).await.unwrap().into_inner();
    if version >= 254 {
        assert!(
            ack.applied.starts_with("replaced: config.restart_policy"),
            "{ack:?}"
        );
    } else {
        assert_eq!(ack.applied, "updated in place", "{ack:?}");
        assert_eq!(
            h.prop(&ack.unit_name, "MainPID"),
            health(&info).pid.to_string()
        );
        assert_eq!(h.prop(&ack.unit_name, "RestartUSec"), "12.800000s");
    }
}

fn dependency(id: &str, bind: bool) -> pb::Dependency {
    pb::Dependency {
        process_id: id.into(),
        bind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_starts_after_its_dependency_is_ready_and_stops_with_it() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    // The driver takes 1.5 s to report READY=1.
    let driver = with_config(
        backend("redis-1", &h.demo, &["--ready-delay-ms", "1500"]),
        |c| c.notify_ready = true,
    );
    let mut client = d.client().await;
    let starting = tokio::spawn(async move { client.assign_process(driver).await });
    eventually("redis-1 to be held", DEADLINE, || async {
        d.client()
            .await
            .get_process(GetProcessRequest {
                process_id: "redis-1".into(),
            })
            .await
            .ok()
    })
    .await;
    let kv = with_config(pattern("kv-1", &h.demo, &[]), |c| {
        c.depends_on = vec![dependency("redis-1", true)];
    });
    let ack = d
        .client()
        .await
        .assign_process(kv)
        .await
        .unwrap()
        .into_inner();
    let redis_unit = starting.await.unwrap().unwrap().into_inner().unit_name;
    let kv_unit = ack.unit_name;
    let kv_props = h.show(
        &kv_unit,
        &[
            "After",
            "BindsTo",
            "ActiveEnterTimestampMonotonic",
            "ActiveState",
        ],
    );
    assert_eq!(kv_props["ActiveState"], "active");
    // systemctl quotes a name with a backslash, and doubles the backslash.
    let shown = format!("\"{}\"", redis_unit.replace('\\', "\\\\"));
    assert!(kv_props["After"].contains(&shown), "{kv_props:?}");
    assert_eq!(kv_props["BindsTo"], shown);
    let ready: u64 = h
        .prop(&redis_unit, "ActiveEnterTimestampMonotonic")
        .parse()
        .unwrap();
    let started: u64 = kv_props["ActiveEnterTimestampMonotonic"].parse().unwrap();
    assert!(
        started >= ready,
        "kv-1 was active at {started} µs, before redis-1 was ready at {ready} µs"
    );
    // Bound: stopping the driver stops kv-1 too (the launcher then
    // restores both).
    let kv_pid = h.prop(&kv_unit, "MainPID");
    h.systemctl(&["stop", &redis_unit]);
    eventually(
        "kv-1 to be stopped with redis-1, then back",
        DEADLINE,
        || async {
            let pid = h.prop(&kv_unit, "MainPID");
            (pid != kv_pid && pid != "0" && h.prop(&redis_unit, "ActiveState") == "active")
                .then_some(())
        },
    )
    .await;
    // An unknown dependency and a cycle are refused, naming the field.
    let mut client = d.client().await;
    let err = client
        .assign_process(with_config(pattern("kv-2", &h.demo, &[]), |c| {
            c.depends_on = vec![dependency("nowhere", false)];
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.depends_on[0].process_id: no process nowhere"),
        "{}",
        err.message()
    );
    let mut cyclic = with_config(
        backend("redis-1", &h.demo, &["--ready-delay-ms", "1500"]),
        |c| {
            c.notify_ready = true;
            c.depends_on = vec![dependency("kv-1", false)];
        },
    );
    cyclic.version = 2;
    let err = client.assign_process(cyclic).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("redis-1 → kv-1 → redis-1"),
        "{}",
        err.message()
    );
    assert_eq!(health(&get(&d, "redis-1").await).version, 1);
    assert_eq!(h.prop(&h_unit("kv-2"), "LoadState"), "not-found");
    // What kv-1 needs is not revoked from under it; in order, both go.
    let revoke = |id: &str| pb::ProcessRevocation {
        process_id: id.into(),
        ..Default::default()
    };
    let err = client.revoke_process(revoke("redis-1")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("redis-1 is needed by kv-1"),
        "{}",
        err.message()
    );
    assert_eq!(h.prop(&redis_unit, "ActiveState"), "active");
    assert_eq!(health(&get(&d, "kv-1").await).detailed_status, "running");
    client
        .revoke_process(revoke("kv-1"))
        .await
        .expect("revoke kv-1");
    client
        .revoke_process(revoke("redis-1"))
        .await
        .expect("revoke redis-1");
    assert!(h.listed_units().is_empty(), "{:?}", h.listed_units());
}

fn h_unit(id: &str) -> String {
    prism_launcher::unit::unit_name(prism_launcher::model::ProcessType::Pattern, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_json_logs_describe_what_happened() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &["--log-format", "json"]).await;
    let mut client = d.client().await;
    let ack = client
        .assign_process(pattern("kv-m", &h.demo, &[]))
        .await
        .expect("assign")
        .into_inner();
    assert!(ack.success, "{ack:?}");
    let mut bad = utility("logs-m", &h.demo, &[]);
    bad.config.as_mut().unwrap().binary = "relative".into();
    assert!(client.assign_process(bad).await.is_err());
    let pid = health(&wait_status(&d, "kv-m", "running").await).pid;

    let addr = d.metrics_addr().await;
    let metrics = scrape(&addr).await;
    for (series, value) in [
        (r#"prism_launcher_assignments_total{result="started"}"#, 1.0),
        (r#"prism_launcher_assignments_total{result="invalid"}"#, 1.0),
        (
            r#"prism_launcher_processes{type="pattern",status="running"}"#,
            1.0,
        ),
        (r#"prism_launcher_slots{state="used"}"#, 1.0),
        (r#"prism_launcher_slots{state="free"}"#, 49.0),
        ("prism_launcher_systemd_connected", 1.0),
        ("prism_launcher_unit_start_duration_seconds_count", 1.0),
        ("prism_launcher_systemd_call_errors_total", 0.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series}:\n{metrics}"
        );
    }
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    // Every line of the log is a JSON object; the assignment's line carries
    // the process id as a field.
    let log = d.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["prism_process_id"] == "kv-m"
                && v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("started kv-m"))),
        "{log}"
    );

    // A second launcher whose metrics address is taken exits 1 naming the
    // address, before it serves or reconciles anything: the first one's
    // process is untouched and its metrics still answer.
    let other = h.sandbox.dir().join("other-launcher");
    let mut args = host_args(&h, &other.join("state"), &other.join("credentials"));
    args.extend([
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--metrics-listen".into(),
        addr.clone(),
    ]);
    let (code, out) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_exit(&args, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("cannot listen on {addr}")), "{out}");
    let after = get(&d, "kv-m").await;
    assert_eq!(
        (health(&after).status.as_str(), health(&after).pid),
        ("running", pid)
    );
    assert!(scrape(&addr).await.contains("prism_launcher_slots"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoked_as_pattern_launcher_it_takes_the_old_flags_and_runs_patterns_only() {
    let Some(h) = harness!() else { return };
    let (port, metrics_port) = (free_port(), free_port());
    let bin_dir = h.bin_dir.display().to_string();
    // The old flags, Go spellings included; no new flag names the allowlist:
    // the patterns directory is where binaries may come from.
    let d = Daemon::start_legacy(
        &h,
        port,
        &[
            "-grpc-port",
            &port.to_string(),
            // All interfaces, as the old launcher listened; plaintext there
            // must be forced.
            "--insecure",
            &format!("-metrics-port={metrics_port}"),
            "--health-port",
            "9093",
            "--isolation",
            "none",
            "--patterns-dir",
            &bin_dir,
            "-launcher-id",
            "old-launcher",
        ],
    )
    .await;
    let log = d.log_text();
    let notices: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pattern-launcher is deprecated"))
        .collect();
    assert_eq!(notices.len(), 1, "{log}");
    assert!(notices[0].contains("run prism-launcher instead"), "{log}");
    assert!(log.contains("--health-port 9093 is ignored"), "{log}");

    let mut client = d.client().await;
    // An assignment without a process type is a pattern.
    let mut kv = pattern("kv-old", &h.demo, &[]);
    kv.process_type.clear();
    let ack = client
        .assign_process(kv)
        .await
        .expect("assign")
        .into_inner();
    assert!(ack.success, "{ack:?}");
    assert_eq!(ack.launcher_id, "old-launcher");
    assert_eq!(ack.unit_name, r"prism-pattern-kv\x2dold.service");
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
    // --isolation none: the shared per-type user, as the default level.
    assert_eq!(h.prop(&ack.unit_name, "User"), "prism-pattern");
    // Patterns only, 20 slots: the old defaults.
    let e = client
        .assign_process(proxy("proxy-old", &h.demo, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("proxy"), "{}", e.message());
    let resources = client
        .list_processes(ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .resources
        .unwrap();
    assert_eq!((resources.process_count, resources.max_processes), (1, 20));
    // --metrics-port is the metrics listener on 127.0.0.1.
    let metrics = scrape(&format!("127.0.0.1:{metrics_port}")).await;
    assert_eq!(
        sample(
            &metrics,
            r#"prism_launcher_processes{type="pattern",status="running"}"#
        )
        .or(sample(
            &metrics,
            r#"prism_launcher_processes{type="pattern",status="starting"}"#
        )),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn pattern_launcher_help_shows_the_old_flags_and_prism_launcher_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("pattern-launcher");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_prism-launcher"), &link).unwrap();
    let help = std::process::Command::new(&link)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--grpc-port",
        "--patterns-dir",
        "--isolation",
        "[default: pattern]",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    let new = std::process::Command::new(env!("CARGO_BIN_EXE_prism-launcher"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&new.stdout).contains("--grpc-port"));
    let (code, text) = run_to_exit(
        &["--grpc-port", "8982", "--listen", "127.0.0.1:1"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("--grpc-port: is a pattern-launcher flag; prism-launcher takes --listen"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_across_a_daemon_reexec_are_never_internal_and_all_run() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &["--max-processes", "250"]).await;
    let client = d.client().await;
    const N: usize = 200;
    let answered = Arc::new(AtomicUsize::new(0));
    // Two re-executions of the manager while assignments are in flight.
    let reexec = {
        let answered = answered.clone();
        let systemctl = || h.sandbox.systemctl();
        let (mut first, mut second) = (systemctl(), systemctl());
        first.arg("daemon-reexec");
        second.arg("daemon-reexec");
        async move {
            for (at, mut cmd) in [(20, first), (110, second)] {
                eventually(
                    "assignments to be answered",
                    Duration::from_secs(120),
                    || {
                        let n = answered.load(Ordering::SeqCst);
                        async move { (n >= at).then_some(()) }
                    },
                )
                .await;
                let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                    .await
                    .unwrap();
                assert!(out.status.success(), "daemon-reexec: {}", text(&out));
            }
        }
    };
    let assign = async {
        futures_util::stream::iter(0..N)
            .map(|i| {
                let mut c = client.clone();
                let answered = answered.clone();
                let a = pattern(&format!("rx-{i:03}"), &h.demo, &[]);
                async move {
                    let r = c.assign_process(a).await;
                    answered.fetch_add(1, Ordering::SeqCst);
                    r
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
    };
    let (results, ()) = tokio::join!(assign, reexec);
    let mut unavailable = 0;
    for r in &results {
        if let Err(status) = r {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                status.message().contains("will start once systemd answers"),
                "{status:?}"
            );
            unavailable += 1;
        }
    }
    let retried = d.log_text().matches("systemd is briefly away").count();
    eprintln!(
        "{N} assignments across two daemon-reexecs: {unavailable} answered UNAVAILABLE (held), \
         the rest OK; {retried} starts retried"
    );
    // Every one of them runs, the UNAVAILABLE ones included. On a timeout
    // the message shows what the launcher and systemd said of the others.
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let listed = match d
            .client()
            .await
            .list_processes(ListProcessesRequest::default())
            .await
        {
            Ok(r) => r.into_inner().processes,
            Err(e) => panic!("list_processes: {e}"),
        };
        let others: Vec<String> = listed
            .iter()
            .filter_map(|p| {
                let health = p.health.as_ref()?;
                (health.status != "running").then(|| {
                    format!(
                        "{} {} ({}/{}) last error {:?}",
                        p.unit_name,
                        health.detailed_status,
                        health.active_state,
                        health.sub_state,
                        health.last_error
                    )
                })
            })
            .collect();
        if listed.len() == N && others.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= end {
            let units = h.listed_units();
            let log = d.log_text();
            let mut told = String::new();
            for p in &listed {
                if p.health.as_ref().is_some_and(|h| h.status != "running") {
                    let out = h
                        .sandbox
                        .systemctl()
                        .args([
                            "show",
                            "-p",
                            "ActiveState,SubState,Job,MainPID,NRestarts",
                            &p.unit_name,
                        ])
                        .output()
                        .unwrap();
                    told.push_str(&format!(
                        "{}: {}\n",
                        p.unit_name,
                        text(&out).replace('\n', " ")
                    ));
                    let id = p
                        .unit_name
                        .trim_start_matches("prism-pattern-")
                        .replace("\\x2d", "-");
                    let id = id.trim_end_matches(".service");
                    for line in log.lines().filter(|l| l.contains(id)) {
                        told.push_str(&format!("  {line}\n"));
                    }
                }
            }
            panic!(
                "after 120 s, {} of {} listed are not running: {others:#?}\nsystemd lists {} units\n\
                 {told}launcher log (tail):\n{}",
                others.len(),
                listed.len(),
                units.len(),
                log.lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.listed_units().len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_whose_state_cannot_be_written_is_refused_and_leaves_no_unit() {
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    client
        .assign_process(pattern("kept-1", &h.demo, &[]))
        .await
        .expect("assign");
    // The state directory's `processes` becomes a file: nothing can be
    // written there (root ignores permission bits, not this).
    let processes = d.state_dir.join("processes");
    let aside = d.state_dir.join("processes.aside");
    fs::rename(&processes, &aside).unwrap();
    fs::write(&processes, "not a directory").unwrap();
    let err = client
        .assign_process(pattern("unwritten-1", &h.demo, &[]))
        .await
        .expect_err("not durable, so not accepted");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("processes"), "{err:?}");
    // The unit systemd started meanwhile is gone again, and nothing is held.
    let unit =
        prism_launcher::unit::unit_name(prism_launcher::model::ProcessType::Pattern, "unwritten-1");
    eventually("the unwritten unit to be gone", DEADLINE, || async {
        (!h.listed_units().contains(&unit)).then_some(())
    })
    .await;
    let missing = client
        .get_process(GetProcessRequest {
            process_id: "unwritten-1".into(),
        })
        .await
        .expect_err("not held");
    assert_eq!(missing.code(), Code::NotFound);
    // The daemon keeps serving; what it held is untouched.
    fs::remove_file(&processes).unwrap();
    fs::rename(&aside, &processes).unwrap();
    assert_eq!(get(&d, "kept-1").await.health.unwrap().status, "running");
    client
        .assign_process(pattern("unwritten-1", &h.demo, &[]))
        .await
        .expect("assign once the state can be written");
}

/// The manifest of pattern-launcher's `patterns/test-pattern`, with a
/// one-second probe interval (a test need not wait 30 s for health).
const TEST_PATTERN_MANIFEST: &str = "\
name: test-pattern
version: 1.0.0
description: Test pattern for launcher development
author: Prism
executable: ./test-pattern
isolation_level: namespace

healthcheck:
  port: 9090
  path: /health
  interval: 1s
  timeout: 5s
  failure_threshold: 3

resources:
  cpu_limit: 1.0
  memory_limit: 512Mi
  cpu_request: 0.5
  memory_request: 256Mi

backend_slots:
  - name: storage
    type: memstore
    required: true

environment:
  LOG_LEVEL: info
  METRICS_PORT: \"9091\"
";

/// A patterns directory under the sandbox: test-pattern (the demo workload
/// as its executable), and a manifest without an executable, as
/// pattern-launcher's `patterns/mailbox` has.
fn patterns_dir(h: &Harness) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = h.sandbox.dir().join("patterns");
    let pattern = root.join("test-pattern");
    fs::create_dir_all(&pattern).unwrap();
    fs::write(pattern.join("manifest.yaml"), TEST_PATTERN_MANIFEST).unwrap();
    fs::copy(&h.demo, pattern.join("test-pattern")).unwrap();
    let mailbox = root.join("mailbox");
    fs::create_dir_all(&mailbox).unwrap();
    fs::write(
        mailbox.join("manifest.yaml"),
        "name: mailbox\nversion: 0.1.0\npattern_type: consumer\n",
    )
    .unwrap();
    for dir in [&root, &pattern, &mailbox] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_pattern_launcher_client_drives_patterns_from_manifests() {
    /// Generated from the copy of upstream's launcher.proto, as upstream's
    /// clients have it.
    #[allow(clippy::enum_variant_names)]
    mod upstream {
        include!(concat!(env!("OUT_DIR"), "/upstream/prism.launcher.rs"));
    }
    use upstream::{pattern_launcher_client::PatternLauncherClient, *};
    let Some(h) = harness!() else { return };
    let patterns = patterns_dir(&h);
    let port = free_port();
    let mut d = Daemon::start_legacy(
        &h,
        port,
        &[
            "-grpc-port",
            &port.to_string(),
            "--insecure",
            "--patterns-dir",
            &patterns.display().to_string(),
            "--pattern-ports",
            "47100-47199",
        ],
    )
    .await;
    // The broken manifest is reported with its path and field, and skipped.
    let log = d.log_text();
    assert!(
        log.contains("mailbox/manifest.yaml: executable: required"),
        "{log}"
    );
    assert!(log.contains("1 pattern(s)"), "{log}");
    let channel = d.channel().await;
    let mut c = PatternLauncherClient::new(channel.clone());

    // Launched by name with the manifest's isolation (namespace).
    let launch = |namespace: &str, session: &str, isolation: IsolationLevel| LaunchRequest {
        pattern_name: "test-pattern".into(),
        isolation: isolation as i32,
        namespace: namespace.into(),
        session_id: session.into(),
        config: [("EXTRA".to_owned(), "from-the-request".to_owned())].into(),
        grace_period_secs: 0,
    };
    let first = c
        .launch_pattern(launch("orders", "", IsolationLevel::Unspecified))
        .await
        .expect("launch")
        .into_inner();
    // A transcript of the session (cargo test … -- --nocapture).
    eprintln!(
        "LaunchPattern {{pattern_name: test-pattern, namespace: orders, config: {{EXTRA}}}}\n  -> {first:?}"
    );
    assert_eq!(first.process_id, "test-pattern:ns:orders");
    let grpc: u16 = first
        .address
        .strip_prefix("localhost:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("address {:?}", first.address));
    assert!((47100..=47198).contains(&grpc), "{grpc}");
    // The same pattern and namespace: the same process, not a second.
    let again = c
        .launch_pattern(launch("orders", "", IsolationLevel::IsolationNamespace))
        .await
        .unwrap()
        .into_inner();
    eprintln!("LaunchPattern (the same, ISOLATION_NAMESPACE)\n  -> {again:?}");
    assert_eq!(
        (again.process_id.as_str(), again.address.as_str()),
        (first.process_id.as_str(), first.address.as_str())
    );
    // A unit systemd runs, with upstream's variables and the manifest's
    // limits and environment.
    let units = h.listed_units();
    assert_eq!(units.len(), 1, "{units:?}");
    let unit = &units[0];
    assert_eq!(h.prop(unit, "ActiveState"), "active");
    let env = h.prop(unit, "Environment");
    for var in [
        "PATTERN_NAME=test-pattern".to_owned(),
        "NAMESPACE=orders".to_owned(),
        "SESSION_ID=".to_owned(),
        format!("GRPC_PORT={grpc}"),
        format!("HEALTH_PORT={}", grpc + 1),
        format!("PORT={grpc}"),
        "PROCESS_ID=test-pattern:ns:orders".to_owned(),
        "LOG_LEVEL=info".to_owned(),
        "METRICS_PORT=9091".to_owned(),
        "EXTRA=from-the-request".to_owned(),
    ] {
        assert!(env.split(' ').any(|e| e == var), "{var} not in {env}");
    }
    assert_eq!(h.prop(unit, "MemoryMax"), (512u64 << 20).to_string());
    assert_eq!(h.prop(unit, "CPUQuotaPerSecUSec"), "1s");
    // Healthy once its /health on HEALTH_PORT answers.
    let status = eventually(
        "the pattern to run healthy",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let p = c
                    .get_process_status(GetProcessStatusRequest {
                        process_id: "test-pattern:ns:orders".into(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .process?;
                (p.state == ProcessState::StateRunning as i32 && p.healthy).then_some(p)
            }
        },
    )
    .await;
    eprintln!("GetProcessStatus {{test-pattern:ns:orders}}\n  -> {status:?}");
    assert_eq!(
        (status.pattern_name.as_str(), status.namespace.as_str()),
        ("test-pattern", "orders")
    );
    assert!(status.pid > 0);

    // A session gets its own process and ports.
    let session = c
        .launch_pattern(launch("orders", "s-1", IsolationLevel::IsolationSession))
        .await
        .expect("launch a session")
        .into_inner();
    eprintln!("LaunchPattern {{isolation: ISOLATION_SESSION, session_id: s-1}}\n  -> {session:?}");
    assert_eq!(session.process_id, "test-pattern:session:s-1");
    assert_ne!(session.address, first.address);
    // Bad requests name the field and change nothing.
    let e = c
        .launch_pattern(launch("", "s-2", IsolationLevel::IsolationNamespace))
        .await
        .unwrap_err();
    eprintln!(
        "LaunchPattern {{isolation: 2, session_id: s-2}}\n  -> {:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("namespace"), "{}", e.message());
    assert!(e.message().contains("renumbered"), "{}", e.message());
    let mut unknown = launch("orders", "", IsolationLevel::Unspecified);
    unknown.pattern_name = "nope".into();
    let e = c.launch_pattern(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("test-pattern"), "{}", e.message());
    assert_eq!(h.listed_units().len(), 2);

    // Listed and counted as pattern-launcher did, and in prismctl's API.
    let listed = c
        .list_patterns(ListPatternsRequest {
            namespace: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!("ListPatterns {{namespace: orders}}\n  -> {listed:?}");
    assert_eq!(listed.total_count, 2);
    assert_eq!(listed.patterns.len(), 2);
    let health = c
        .health(HealthRequest {
            include_processes: true,
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!("Health {{include_processes: true}}\n  -> {health:?}");
    assert!(health.healthy);
    assert_eq!(health.total_processes, 2);
    assert_eq!(health.processes.len(), 2);
    assert_eq!(
        health.isolation_distribution,
        [("Namespace".to_owned(), 1), ("Session".to_owned(), 1)].into()
    );
    let all = d
        .client()
        .await
        .list_processes(ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.processes.len(), 2);
    // Reflection names pattern-launcher's service too.
    let (v1, v1alpha) = support::reflected_services(channel).await;
    assert!(
        v1.contains(&"prism.launcher.PatternLauncher".to_owned()),
        "{v1:?}"
    );
    assert_eq!(v1, v1alpha);

    // A restart keeps both, running, with their ports.
    d.restart().await;
    let mut c = PatternLauncherClient::new(d.channel().await);
    let kept = c
        .get_process_status(GetProcessStatusRequest {
            process_id: "test-pattern:ns:orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .process
        .expect("kept across a restart");
    assert_eq!(kept.address, first.address);
    assert_eq!(kept.pid, status.pid, "the workload was restarted");

    // Terminated: gone from systemd and from the launcher.
    let done = c
        .terminate_pattern(TerminateRequest {
            process_id: "test-pattern:session:s-1".into(),
            grace_period_secs: 5,
            force: false,
        })
        .await
        .expect("terminate")
        .into_inner();
    eprintln!("TerminatePattern {{test-pattern:session:s-1, grace_period_secs: 5}}\n  -> {done:?}");
    assert!(done.success, "{done:?}");
    let gone = c
        .get_process_status(GetProcessStatusRequest {
            process_id: "test-pattern:session:s-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!("GetProcessStatus {{test-pattern:session:s-1}}\n  -> {gone:?}");
    assert!(gone.not_found && gone.process.is_none(), "{gone:?}");
    assert_eq!(h.listed_units().len(), 1);
    let e = c
        .terminate_pattern(TerminateRequest {
            process_id: "test-pattern:session:s-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // AssignProcess may name a manifest instead of a binary.
    let by_name = |id: &str, pattern_type: &str| pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "pattern".into(),
        namespace: "orders".into(),
        version: 1,
        config: Some(pb::ProcessConfig {
            pattern: Some(pb::PatternProcessConfig {
                pattern_type: pattern_type.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut client = d.client().await;
    let ack = client
        .assign_process(by_name("kv-by-name", "test-pattern"))
        .await
        .expect("assign by pattern name")
        .into_inner();
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active");
    let exec = h.prop(&ack.unit_name, "ExecStart");
    assert!(exec.contains("test-pattern/test-pattern"), "{exec}");
    let env = h.prop(&ack.unit_name, "Environment");
    assert!(env.contains("PATTERN_NAME=test-pattern"), "{env}");
    assert!(env.contains("GRPC_PORT=471"), "{env}");
    let e = client
        .assign_process(by_name("kv-nameless", "no-such-pattern"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("config.pattern.pattern_type"),
        "{}",
        e.message()
    );
    assert_eq!(h.listed_units().len(), 2);

    // prismctl lists the manifests the launcher loaded, and the one skipped.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args([
            "patterns",
            "--launcher-endpoint",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("test-pattern")
            && l.contains("1.0.0")
            && l.contains("namespace")),
        "{text}"
    );
    assert!(
        text.contains("mailbox/manifest.yaml: executable: required"),
        "{text}"
    );
}

/// An admin's order (`prism-placed-by: admin`) naming its epoch.
fn ordered<T>(message: T, epoch: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("prism-placed-by", "admin".parse().unwrap());
    r.metadata_mut()
        .insert("prism-epoch", epoch.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_an_older_admin_epoch_is_refused_naming_both() {
    let Some(h) = harness!() else { return };
    let mut d = Daemon::start(&h, &[]).await;
    let client = d.client().await;
    client
        .clone()
        .assign_process(ordered(pattern("kv-1", &h.demo, &[]), "5"))
        .await
        .unwrap();
    let e = client
        .clone()
        .assign_process(ordered(pattern("kv-2", &h.demo, &[]), "4"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert_eq!(
        e.message(),
        "this launcher has obeyed admin epoch 5; an order of epoch 4 comes from a deposed \
         leader and is refused"
    );
    let e = client
        .clone()
        .revoke_process(ordered(
            pb::ProcessRevocation {
                process_id: "kv-1".into(),
                ..Default::default()
            },
            "3",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    // Nothing changed: kv-1 runs, kv-2 was never created.
    assert_eq!(d.state_files(), ["kv\\x2d1.pb"]);
    let units = h.listed_units();
    assert!(units.iter().any(|u| u.contains("kv\\x2d1")), "{units:?}");
    assert!(!units.iter().any(|u| u.contains("kv\\x2d2")), "{units:?}");
    assert_eq!(
        fs::read_to_string(d.state_dir.join("admin-epoch")).unwrap(),
        "5"
    );
    // The newest epoch obeyed survives a restart; an operator's own order
    // (no epoch) is not fenced.
    d.restart().await;
    let client = d.client().await;
    let e = client
        .clone()
        .assign_process(ordered(pattern("kv-2", &h.demo, &[]), "4"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    client
        .clone()
        .assign_process(pattern("kv-2", &h.demo, &[]))
        .await
        .unwrap();
    client
        .clone()
        .assign_process(ordered(pattern("kv-3", &h.demo, &[]), "6"))
        .await
        .unwrap();
    assert_eq!(
        fs::read_to_string(d.state_dir.join("admin-epoch")).unwrap(),
        "6"
    );
}

/// A launcher without an admin streams its processes' changes: each
/// listed, a crash and systemd's restart as they happen (read from its
/// signals), and the process gone once revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_launcher_streams_its_processes_changes() {
    use prism_launcher::pb::prism::launcher::v1 as lpb;
    let Some(h) = harness!() else { return };
    let d = Daemon::start(&h, &[]).await;
    let mut client = d.client().await;
    let wire = with_config(utility("watched", &h.demo, &[]), |c| {
        c.restart_policy = Some(pb::RestartPolicy {
            delay_ms: 300,
            max_restarts: 10,
            window_seconds: 60,
            ..Default::default()
        });
    });
    let unit = client
        .assign_process(wire)
        .await
        .expect("assign")
        .into_inner()
        .unit_name;
    h.wait_ready("watched").await;
    let mut stream = client
        .watch_processes(lpb::WatchProcessesRequest::default())
        .await
        .expect("watch")
        .into_inner();
    async fn next(stream: &mut tonic::Streaming<lpb::ProcessChange>) -> lpb::ProcessChange {
        tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("a change within the deadline")
            .expect("no error")
            .expect("not ended")
    }
    // And prismctl, asking the launcher itself: its table, then the rows
    // that change, as lines (read on a thread of their own).
    let mut ctl = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args([
            "ps",
            "-w",
            "--launcher-endpoint",
            &format!("127.0.0.1:{}", d.port),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prismctl");
    let lines = {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = ctl.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let mut printed = Vec::new();
    let mut line_with = |want: &dyn Fn(&str) -> bool| {
        let until = std::time::Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) => {
                    printed.push(l.clone());
                    if want(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no such line from prismctl ps -w: {printed:#?}"),
            }
        }
    };
    let header = line_with(&|l| l.starts_with("ID"));
    assert!(header.contains("RESTARTS"), "{header}");
    let row = line_with(&|l| l.starts_with("watched"));
    assert!(row.contains("running"), "{row}");
    let listed = next(&mut stream).await;
    assert_eq!(listed.kind, "listed", "{listed:?}");
    let health = listed.process.unwrap().health.unwrap();
    assert_eq!(health.detailed_status, "running");
    let pid = health.pid;
    assert_eq!(next(&mut stream).await.kind, "synced");
    h.systemctl(&["kill", "--signal=SIGKILL", &unit]);
    // Changes until it runs again, with a new PID and a restart counted.
    let mut statuses = Vec::new();
    let back = loop {
        let c = next(&mut stream).await;
        assert_eq!(c.kind, "changed", "{c:?}");
        let h = c.process.unwrap().health.unwrap();
        statuses.push(h.detailed_status.clone());
        if h.detailed_status == "running" && h.pid != pid && h.pid > 0 {
            break h;
        }
    };
    assert!(back.restart_count >= 1, "{back:?}");
    assert_eq!(back.exit_reason, "signal", "{back:?}");
    assert_eq!(h.prop(&unit, "MainPID"), back.pid.to_string());
    assert!(statuses.len() >= 2, "{statuses:?}");
    // prismctl printed the row again, running with one restart.
    let again = line_with(&|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.first() == Some(&"watched") && cols.contains(&"running") && cols.get(5) == Some(&"1")
    });
    assert!(again.contains(&back.pid.to_string()), "{again}");
    client
        .revoke_process(pb::ProcessRevocation {
            process_id: "watched".into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let gone = loop {
        let c = next(&mut stream).await;
        if c.kind == "removed" {
            break c;
        }
    };
    assert_eq!(
        gone.process.unwrap().assignment.unwrap().process_id,
        "watched"
    );
    let removed = line_with(&|l| l.starts_with("watched") && l.contains("removed"));
    assert!(!removed.contains("running"), "{removed}");
    ctl.kill().expect("stop prismctl");
    ctl.wait().expect("prismctl ended");
}
