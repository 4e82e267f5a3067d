//! The systemd engine against a real systemd manager (a sandboxed user
//! manager, see `prism_launcher::sandbox`). Every assertion reads state back
//! from systemd, its journal, or the engine's signal-driven events.

mod support;

use std::{collections::HashMap, fs, os::unix::fs::PermissionsExt, time::Duration};

use prism_launcher::{
    pb::prism as pb,
    systemd::{ConnectionState, DbusSystemd, Systemd, SystemdError, UnitEvent, UnitStatus},
    unit,
};
use support::*;
use tokio::sync::broadcast;

/// Wait for the first event matching `pred`, with a deadline.
async fn next_event<F>(
    rx: &mut broadcast::Receiver<UnitEvent>,
    what: &str,
    mut pred: F,
) -> UnitEvent
where
    F: FnMut(&UnitEvent) -> bool,
{
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("lagged {n} events"),
                Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Wait until the engine reports `unit` in a state matching `pred`.
async fn unit_state<F>(
    rx: &mut broadcast::Receiver<UnitEvent>,
    unit: &str,
    what: &str,
    mut pred: F,
) -> UnitStatus
where
    F: FnMut(&UnitStatus) -> bool,
{
    match next_event(
        rx,
        what,
        |e| matches!(e, UnitEvent::Changed(s) if s.name == unit && pred(s)),
    )
    .await
    {
        UnitEvent::Changed(s) => *s,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_type_becomes_an_active_unit_with_its_properties() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let demo = h.demo.display().to_string();

    let processes = [
        with_config(pattern("kv-1", &h.demo, &["--print-env"]), |c| {
            c.env.insert("EXTRA".into(), "yes please".into());
            c.health_port = 18081;
            c.log_level = "debug".into();
        }),
        with_config(proxy("proxy-1", &h.demo, &[]), |c| {
            c.isolation_level = "none".into();
            c.graceful_timeout_seconds = 7;
            c.restart_policy = Some(pb::RestartPolicy {
                policy: "always".into(),
                delay_ms: 200,
                max_restarts: 3,
                window_seconds: 20,
                ..Default::default()
            });
        }),
        with_config(backend("redis-1", &h.demo, &[]), |c| {
            c.isolation_level = "session".into();
            c.resources = Some(pb::ResourceLimits {
                memory_max_bytes: 128 << 20,
                cpu_millis: 250,
                tasks_max: 64,
                memory_high_bytes: 100 << 20,
                cpu_weight: 50,
                io_weight: 500,
                oom_policy: "kill".into(),
            });
            c.logs = Some(pb::LogLimits {
                rate_limit_interval_ms: 5000,
                rate_limit_burst: 200,
            });
        }),
        utility("logs-1", &h.demo, &[]),
    ];
    let mut units = Vec::new();
    for wire in processes {
        let p = h.process(wire);
        let spec = unit::translate(&p);
        engine.start_transient(&spec).await.expect("start");
        units.push((p, spec.name));
    }

    for (p, unit) in &units {
        let props = [
            "ActiveState",
            "SubState",
            "Type",
            "ExecStart",
            "Slice",
            "Environment",
            "Restart",
            "RestartUSec",
            "StartLimitBurst",
            "StartLimitIntervalUSec",
            "TimeoutStopUSec",
            "KillMode",
            "Description",
            "SyslogIdentifier",
            "User",
            "DynamicUser",
            "NoNewPrivileges",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "MemoryMax",
            "CPUQuotaPerSecUSec",
            "TasksMax",
            "MemoryHigh",
            "CPUWeight",
            "IOWeight",
            "OOMPolicy",
            "LogRateLimitIntervalUSec",
            "LogRateLimitBurst",
            "MemoryAccounting",
            "StandardOutput",
            "MainPID",
        ];
        let s = h.show(unit, &props);
        let ty = p.process_type();
        assert_eq!(s["ActiveState"], "active", "{unit}");
        assert_eq!(s["SubState"], "running", "{unit}");
        assert_eq!(s["Type"], "exec", "{unit}");
        assert!(
            s["ExecStart"].starts_with(&format!("{{ path={demo} ; argv[]={demo}")),
            "{unit}: {}",
            s["ExecStart"]
        );
        assert_eq!(s["Description"], unit::description(p));
        assert_eq!(s["SyslogIdentifier"], p.id);
        assert_eq!(s["KillMode"], "mixed");
        assert_eq!(s["DynamicUser"], "yes");
        assert_eq!(s["NoNewPrivileges"], "yes");
        assert_eq!(s["ProtectSystem"], "strict");
        assert_eq!(s["ProtectHome"], "read-only");
        assert_eq!(s["PrivateTmp"], "yes");
        assert_eq!(s["MemoryAccounting"], "yes");
        assert_eq!(s["StandardOutput"], "journal");
        assert!(s["User"].starts_with("prism-"), "{}", s["User"]);
        assert_ne!(s["MainPID"], "0");
        let env = &s["Environment"];
        assert!(env.contains(&format!("PRISM_PROCESS_ID={}", p.id)), "{env}");
        assert!(env.contains(&format!("PRISM_PROCESS_TYPE={ty}")), "{env}");
        // Secrets never reach the environment.
        assert!(!env.contains("hunter2") && !env.contains("s3cr3t"), "{env}");
        match ty.as_str() {
            "pattern" => {
                assert_eq!(s["Slice"], "prism-pattern-orders.slice");
                assert!(env.contains("PRISM_PATTERN_TYPE=keyvalue"), "{env}");
                assert!(
                    env.contains("HEALTH_PORT=18081") && env.contains("LOG_LEVEL=debug"),
                    "{env}"
                );
                assert!(env.contains("\"EXTRA=yes please\""), "{env}");
                assert_eq!(s["Restart"], "on-failure");
                assert_eq!(s["RestartUSec"], "1s");
                assert_eq!(s["StartLimitBurst"], "5");
                assert_eq!(s["StartLimitIntervalUSec"], "1min");
                assert_eq!(s["TimeoutStopUSec"], "30s");
                assert_eq!(s["PrivateDevices"], "no");
                assert_eq!(s["MemoryMax"], "infinity");
                // Unset: systemd's defaults.
                assert_eq!(s["MemoryHigh"], "infinity");
                assert_eq!(s["CPUWeight"], "[not set]");
                assert_eq!(s["OOMPolicy"], "stop");
            }
            "proxy" => {
                assert_eq!(s["Slice"], "prism-proxy.slice");
                assert_eq!(s["User"], "prism-proxy");
                assert!(
                    env.contains("PRISM_CONTROL_PORT=9090") && env.contains("PRISM_DATA_PORT=8980"),
                    "{env}"
                );
                assert_eq!(s["Restart"], "always");
                assert_eq!(s["RestartUSec"], "200ms");
                assert_eq!(s["StartLimitBurst"], "3");
                assert_eq!(s["StartLimitIntervalUSec"], "20s");
                assert_eq!(s["TimeoutStopUSec"], "7s");
            }
            "backend" => {
                assert_eq!(s["Slice"], "prism-backend-orders.slice");
                assert!(s["User"].starts_with("prism-p-"), "{}", s["User"]);
                assert_eq!(s["PrivateDevices"], "yes");
                assert_eq!(s["MemoryMax"], (128u64 << 20).to_string());
                assert_eq!(s["CPUQuotaPerSecUSec"], "250ms");
                assert_eq!(s["TasksMax"], "64");
                // Soft limits and weights reach systemd (this sandboxed
                // manager has no memory, cpu or io controller to enforce
                // them: what is checked is that systemd holds them).
                assert_eq!(s["MemoryHigh"], (100u64 << 20).to_string());
                assert_eq!(s["CPUWeight"], "50");
                assert_eq!(s["IOWeight"], "500");
                assert_eq!(s["OOMPolicy"], "kill");
                assert_eq!(s["LogRateLimitIntervalUSec"], "5s");
                assert_eq!(s["LogRateLimitBurst"], "200");
                assert!(env.contains("PRISM_BACKEND_TYPE=redis"), "{env}");
                assert!(
                    env.contains("PRISM_CREDENTIALS=connection_string,password"),
                    "{env}"
                );
            }
            "utility" => {
                assert_eq!(s["Slice"], "prism-utility.slice");
                assert!(env.contains("PRISM_TARGET_PROCESSES=kv-1"), "{env}");
            }
            other => panic!("unexpected type {other}"),
        }
    }

    // The engine's own view agrees, from one ListUnitsByPatterns call.
    let listed = engine.list().await.expect("list");
    assert_eq!(listed.len(), 4);
    for (p, unit) in &units {
        let row = listed.iter().find(|u| &u.name == unit).expect("listed");
        assert_eq!(row.active_state, "active");
        let identity = unit::parse_description(&row.description).expect("our description");
        assert_eq!((identity.id.as_str(), identity.version), (p.id.as_str(), 1));
    }
    let status = engine.status(&units[0].1).await.expect("status");
    assert!(status.is_active() && status.main_pid > 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_on_the_running_unit_and_anything_else_is_refused() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let old = h.process(with_config(backend("redis-1", &h.demo, &[]), |c| {
        c.resources = Some(pb::ResourceLimits {
            memory_max_bytes: 128 << 20,
            cpu_weight: 50,
            ..Default::default()
        });
    }));
    let spec = unit::translate(&old);
    engine.start_transient(&spec).await.expect("start");
    let pid = h.prop(&spec.name, "MainPID");
    assert_ne!(pid, "0");
    let mut new = old.clone();
    new.version = 2;
    new.resources.memory_max_bytes = Some(256 << 20);
    new.resources.memory_high_bytes = Some(200 << 20);
    new.resources.cpu_weight = None;
    new.resources.io_weight = Some(300);
    let unit::update::Update::InPlace { properties, .. } =
        unit::update::plan(&old, &new, engine.manager_version())
    else {
        panic!("not in place")
    };
    engine
        .set_properties(&spec.name, &properties)
        .await
        .expect("set properties");
    let s = h.show(
        &spec.name,
        &[
            "MainPID",
            "MemoryMax",
            "MemoryHigh",
            "CPUWeight",
            "IOWeight",
            "Description",
            "ActiveState",
        ],
    );
    assert_eq!(s["MainPID"], pid, "the process kept running");
    assert_eq!(s["ActiveState"], "active");
    assert_eq!(s["MemoryMax"], (256u64 << 20).to_string());
    assert_eq!(s["MemoryHigh"], (200u64 << 20).to_string());
    assert_eq!(s["CPUWeight"], "[not set]", "a dropped weight is unset");
    assert_eq!(s["IOWeight"], "300");
    assert_eq!(s["Description"], unit::description(&new));
    // What systemd cannot change live is refused whole: nothing applied.
    let refused = engine
        .set_properties(
            &spec.name,
            &[
                ("MemoryMax", unit::PropValue::U64(64 << 20)),
                ("RestartUSec", unit::PropValue::U64(5_000_000)),
            ],
        )
        .await
        .expect_err("RestartUSec is not live");
    assert!(refused.to_string().contains("RestartUSec"), "{refused}");
    assert_eq!(h.prop(&spec.name, "MemoryMax"), (256u64 << 20).to_string());
    assert_eq!(h.prop(&spec.name, "MainPID"), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_restart_delay_maps_to_restart_steps_where_the_manager_has_them() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let version = engine.manager_version();
    let installed = std::process::Command::new("systemctl")
        .arg("--version")
        .output()
        .expect("systemctl --version");
    let first = String::from_utf8_lossy(&installed.stdout).to_string();
    assert!(
        first.starts_with(&format!("systemd {version} ")),
        "manager {version}, installed {first}"
    );
    let p = h.process(with_config(utility("backoff-1", &h.demo, &[]), |c| {
        c.restart_policy = Some(pb::RestartPolicy {
            delay_ms: 100,
            max_delay_ms: 10_000,
            steps: 4,
            ..Default::default()
        });
    }));
    let spec = unit::translate(&p);
    // A manager without RestartSteps= would refuse the whole unit: the
    // engine leaves them out there, and the unit starts either way.
    engine.start_transient(&spec).await.expect("start");
    let s = h.show(&spec.name, &["ActiveState", "RestartUSec"]);
    assert_eq!(s["ActiveState"], "active");
    if version >= unit::props::RESTART_STEPS_SINCE {
        assert_eq!(s["RestartUSec"], "100ms");
        let s = h.show(&spec.name, &["RestartSteps", "RestartMaxDelayUSec"]);
        assert_eq!(s["RestartSteps"], "4");
        assert_eq!(s["RestartMaxDelayUSec"], "10s");
    } else {
        // The longest delay: systemd restarts it after that at the latest,
        // the launcher sooner along the curve (tests/daemon.rs).
        assert_eq!(s["RestartUSec"], "10s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_root_only_files_and_never_visible_in_the_unit() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let p = h.process(backend("redis-1", &h.demo, &[]));
    let spec = unit::translate(&p);
    engine.start_transient(&spec).await.expect("start");

    // systemd loads them from files the launcher wrote, 0400, in 0700 dirs.
    let props = engine
        .unit_properties(&spec.name, "org.freedesktop.systemd1.Service")
        .await
        .expect("properties");
    let load: Vec<(String, String)> = props["LoadCredential"]
        .try_clone()
        .unwrap()
        .try_into()
        .expect("a(ss)");
    let mut ids: Vec<&str> = load.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["connection_string", "password"]);
    let files: HashMap<&str, &str> = load.iter().map(|(i, f)| (i.as_str(), f.as_str())).collect();
    assert_eq!(
        fs::read_to_string(files["password"]).unwrap(),
        "s3cr3t-value"
    );
    assert_eq!(
        fs::read_to_string(files["connection_string"]).unwrap(),
        "redis://:hunter2@127.0.0.1:6379/0"
    );
    for f in files.values() {
        let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400, "{f}");
        let dir_mode = fs::metadata(std::path::Path::new(f).parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700, "{f}");
    }
    // Nowhere in what systemd shows or stores for the unit.
    let dump = format!("{props:?}");
    let unit_props = engine
        .unit_properties(&spec.name, "org.freedesktop.systemd1.Unit")
        .await
        .unwrap();
    let transient = fs::read_to_string(
        h.sandbox
            .runtime_dir()
            .join("systemd/transient")
            .join(&spec.name),
    )
    .expect("transient unit file");
    for secret in ["hunter2", "s3cr3t-value"] {
        assert!(
            !dump.contains(secret),
            "D-Bus Service properties leak {secret}"
        );
        assert!(
            !format!("{unit_props:?}").contains(secret),
            "Unit properties leak {secret}"
        );
        assert!(
            !transient.contains(secret),
            "transient unit file leaks {secret}"
        );
    }
    assert!(transient.contains("LoadCredential="), "{transient}");

    // Stopping the unit removes its credential files.
    engine
        .stop(&spec.name, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(!std::path::Path::new(files["password"]).exists());
    assert!(!engine.credentials().root().join(&spec.name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_leaves_the_unit_gone() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let spec = unit::translate(&h.process(pattern("kv-1", &h.demo, &[])));
    engine.start_transient(&spec).await.expect("start");
    h.wait_ready("kv-1").await;
    let stopped = engine
        .stop(&spec.name, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(stopped.was_loaded && !stopped.killed, "{stopped:?}");
    // SIGTERM handled: a clean exit with status 0 (CLD_EXITED).
    assert_eq!((stopped.exit_code, stopped.exit_status), (Some(1), Some(0)));
    assert!(matches!(
        engine.status(&spec.name).await,
        Err(SystemdError::NoSuchUnit { .. })
    ));
    assert!(h.listed_units().is_empty(), "{:?}", h.listed_units());
    assert!(
        h.journal("kv-1")
            .iter()
            .any(|l| l == "SIGTERM received, exiting")
    );
    // Stopping again is a no-op, not an error.
    let again = engine
        .stop(&spec.name, Duration::from_secs(1))
        .await
        .expect("stop again");
    assert!(!again.was_loaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_ignoring_sigterm_is_killed_at_the_timeout() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;

    // The caller's grace (1 s) is shorter than the unit's stop timeout (30 s):
    // the engine sends SIGKILL itself when the grace ends.
    let spec = unit::translate(&h.process(pattern("stubborn-1", &h.demo, &["--ignore-sigterm"])));
    engine.start_transient(&spec).await.expect("start");
    h.wait_ready("stubborn-1").await;
    let t = std::time::Instant::now();
    let stopped = engine
        .stop(&spec.name, Duration::from_secs(1))
        .await
        .expect("stop");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "killed before the grace ended"
    );
    assert!(stopped.killed, "{stopped:?}");
    assert_eq!(
        (stopped.exit_code, stopped.exit_status),
        (Some(2), Some(9)),
        "SIGKILL"
    );
    assert!(
        h.journal("stubborn-1")
            .iter()
            .any(|l| l.contains("ignored on purpose"))
    );

    // The unit's own stop timeout (1 s) is shorter than the grace: systemd
    // sends SIGKILL itself at TimeoutStopUSec.
    let wire = with_config(pattern("stubborn-2", &h.demo, &["--ignore-sigterm"]), |c| {
        c.graceful_timeout_seconds = 1;
    });
    let spec2 = unit::translate(&h.process(wire));
    engine.start_transient(&spec2).await.expect("start");
    h.wait_ready("stubborn-2").await;
    let stopped = engine
        .stop(&spec2.name, Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(
        !stopped.killed,
        "systemd, not the engine, should have killed it"
    );
    assert_eq!(
        (stopped.exit_code, stopped.exit_status),
        (Some(2), Some(9)),
        "SIGKILL"
    );
    assert!(h.listed_units().is_empty(), "{:?}", h.listed_units());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_ends_in_start_limit_hit() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let mut events = engine.events();
    let wire = with_config(
        utility("crashy-1", &h.demo, &["--crash-at-start", "3"]),
        |c| {
            c.restart_policy = Some(pb::RestartPolicy {
                policy: "on-failure".into(),
                delay_ms: 100,
                max_restarts: 3,
                window_seconds: 60,
                ..Default::default()
            });
        },
    );
    let spec = unit::translate(&h.process(wire));
    // Type=exec: the start job may see the binary run (done) or already die.
    match engine.start_transient(&spec).await {
        Ok(()) | Err(SystemdError::StartFailed { .. }) => {}
        Err(e) => panic!("unexpected: {e}"),
    }
    let status = unit_state(
        &mut events,
        &spec.name,
        "the circuit to open",
        UnitStatus::start_limit_hit,
    )
    .await;
    assert_eq!(status.active_state, "failed");
    assert_eq!(status.n_restarts, 3);
    assert_eq!((status.exec_main_code, status.exec_main_status), (1, 3));
    assert!(
        status.describe_failure().contains("start limit hit"),
        "{}",
        status.describe_failure()
    );
    // The engine's direct read agrees with the signals, and so does systemd.
    let read = engine.status(&spec.name).await.expect("status");
    assert!(read.start_limit_hit(), "{read:?}");
    let s = h.show(&spec.name, &["ActiveState", "NRestarts", "Result"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["NRestarts"].as_str()),
        ("failed", "3")
    );
    // Three starts were allowed (the first and two restarts); the third
    // restart was refused.
    eventually("three crashes in the journal", DEADLINE, || async {
        let n = h
            .journal("crashy-1")
            .iter()
            .filter(|l| l.contains("crashing on purpose"))
            .count();
        (n == 3).then_some(())
    })
    .await;

    // A half-open retry: reset the failure and the limit, start once more.
    engine.reset_failed(&spec.name).await.expect("reset");
    engine
        .stop(&spec.name, Duration::from_secs(5))
        .await
        .expect("cleanup");
    assert!(h.listed_units().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_reaches_the_journal_under_the_syslog_identifier() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let spec = unit::translate(&h.process(pattern("kv-logs", &h.demo, &["--print-env"])));
    engine.start_transient(&spec).await.expect("start");
    let lines = eventually("the workload's output in the journal", DEADLINE, || async {
        let lines = h.journal("kv-logs");
        lines
            .iter()
            .any(|l| l == "prism-demo kv-logs ready")
            .then_some(lines)
    })
    .await;
    assert!(
        lines.iter().any(|l| l == "env PRISM_PATTERN_TYPE=keyvalue"),
        "{lines:?}"
    );
    // The launcher's journal fields are set on the unit. (A nested user
    // manager does not export them to journald; a system manager does, and
    // then `journalctl PRISM_PROCESS_ID=kv-logs` selects these lines.)
    let fields = h.prop(&spec.name, "LogExtraFields");
    assert!(fields.contains("PRISM_PROCESS_ID=kv-logs"), "{fields}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_in_an_argument_reaches_the_program_literally() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let mut wire = pattern(
        "kv-dollar",
        &h.demo,
        &[
            "--echo", "$HOME", "--echo", "${X} y", "--echo", "$$", "--echo", "a$",
        ],
    );
    wire.config
        .as_mut()
        .unwrap()
        .env
        .insert("X".into(), "expanded".into());
    let spec = unit::translate(&h.process(wire));
    engine.start_transient(&spec).await.expect("start");
    let lines = eventually("the echoed arguments in the journal", DEADLINE, || async {
        let lines = h.journal("kv-dollar");
        lines
            .iter()
            .any(|l| l == "prism-demo kv-dollar ready")
            .then_some(lines)
    })
    .await;
    let echoed: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("echo: "))
        .collect();
    assert_eq!(echoed, ["$HOME", "${X} y", "$$", "a$"], "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_an_existing_unit_is_reported_and_changes_nothing() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let spec = unit::translate(&h.process(pattern("kv-1", &h.demo, &[])));
    engine.start_transient(&spec).await.expect("first start");
    let pid = h.prop(&spec.name, "MainPID");
    match engine.start_transient(&spec).await {
        Err(SystemdError::UnitExists { unit }) => assert_eq!(unit, spec.name),
        other => panic!("expected UnitExists, got {other:?}"),
    }
    assert_eq!(h.listed_units(), std::slice::from_ref(&spec.name));
    assert_eq!(
        h.prop(&spec.name, "MainPID"),
        pid,
        "the running unit was disturbed"
    );
    assert_eq!(h.prop(&spec.name, "NRestarts"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_exec_fails_the_start_with_the_reason() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    // Validated while it existed, gone by the time systemd executes it.
    let doomed = h.bin_dir.join("doomed");
    fs::copy(&h.demo, &doomed).unwrap();
    let spec = unit::translate(
        &h.process(with_config(pattern("gone-1", &doomed, &[]), |c| {
            c.restart_policy = Some(pb::RestartPolicy {
                policy: "no".into(),
                ..Default::default()
            });
        })),
    );
    fs::remove_file(&doomed).unwrap();
    match engine.start_transient(&spec).await {
        Err(SystemdError::StartFailed {
            job_result, status, ..
        }) => {
            assert_eq!(job_result, "failed");
            assert_eq!(
                (status.exec_main_code, status.exec_main_status),
                (1, 203),
                "{status:?}"
            );
            assert!(
                status.describe_failure().contains("203"),
                "{}",
                status.describe_failure()
            );
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(matches!(
        engine.status("prism-pattern-nope.service").await,
        Err(SystemdError::NoSuchUnit { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_readiness_and_the_watchdog() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let mut events = engine.events();
    // READY=1 after 300 ms; pings stop after 1 s, the watchdog fires 1 s later.
    let wire = with_config(
        utility(
            "dog-1",
            &h.demo,
            &["--ready-delay-ms", "300", "--stop-watchdog-after", "1"],
        ),
        |c| {
            c.health_check = Some(pb::HealthCheck {
                kind: "watchdog".into(),
                watchdog_ms: 1000,
                ..Default::default()
            });
            c.restart_policy = Some(pb::RestartPolicy {
                delay_ms: 100,
                ..Default::default()
            });
        },
    );
    let spec = unit::translate(&h.process(wire));
    let t = std::time::Instant::now();
    engine.start_transient(&spec).await.expect("start");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "start returned before READY=1"
    );
    let s = h.show(&spec.name, &["Type", "WatchdogUSec", "SubState"]);
    assert_eq!(
        (s["Type"].as_str(), s["WatchdogUSec"].as_str()),
        ("notify", "1s")
    );
    assert_eq!(s["SubState"], "running");
    let restarted = unit_state(&mut events, &spec.name, "a watchdog restart", |s| {
        s.n_restarts >= 1
    })
    .await;
    assert_eq!(restarted.result, "watchdog", "{restarted:?}");
    assert!(
        h.journal("dog-1")
            .iter()
            .any(|l| l.contains("watchdog pings stopped"))
    );
}

/// The production path is the system bus; the sandbox's bus carries the
/// same org.freedesktop.systemd1 API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_manager_restarts_on_the_bus() {
    let Some(mut h) = harness!() else { return };
    reconnect_after_restart(&mut h, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_manager_restarts_on_the_private_socket() {
    let Some(mut h) = harness!() else { return };
    reconnect_after_restart(&mut h, true).await;
}

/// The next `Disconnected` then `Resynced`: what the manager holds now.
async fn wait_resync(
    events: &mut broadcast::Receiver<UnitEvent>,
) -> Vec<prism_launcher::systemd::UnitSummary> {
    next_event(events, "the disconnect", |e| {
        matches!(e, UnitEvent::Disconnected)
    })
    .await;
    match next_event(events, "the resync", |e| {
        matches!(e, UnitEvent::Resynced { .. })
    })
    .await
    {
        UnitEvent::Resynced { units } => units,
        _ => unreachable!(),
    }
}

async fn reconnect_after_restart(h: &mut Harness, private: bool) {
    let target = if private { h.private() } else { h.bus() };
    let engine = DbusSystemd::connect(h.options(target))
        .await
        .expect("connect");
    let mut events = engine.events();
    let mut states = engine.state_changes();
    let spec = unit::translate(&h.process(pattern("kv-1", &h.demo, &[])));
    engine.start_transient(&spec).await.expect("start");
    assert_eq!(engine.connection_state(), ConnectionState::Connected);

    h.sandbox.restart_manager().expect("restart the manager");
    // Every transient unit died with the old manager; the resync says so.
    let units = wait_resync(&mut events).await;
    assert!(units.is_empty(), "{units:?}");
    tokio::time::timeout(
        DEADLINE,
        states.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("connected again")
    .expect("state channel");
    // The new manager is fully usable: signals and job waits work again.
    engine
        .start_transient(&spec)
        .await
        .expect("start on the new manager");
    assert_eq!(h.prop(&spec.name, "ActiveState"), "active");
    engine
        .stop(&spec.name, Duration::from_secs(10))
        .await
        .expect("stop");
}

/// `systemctl daemon-reexec` (as on a systemd upgrade): the connection
/// drops, units survive, and the resync lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_manager_reexec_and_relists_running_units() {
    let Some(h) = harness!() else { return };
    let engine = DbusSystemd::connect(h.options(h.private()))
        .await
        .expect("connect");
    let mut events = engine.events();
    let spec = unit::translate(&h.process(pattern("kv-1", &h.demo, &[])));
    engine.start_transient(&spec).await.expect("start");
    let pid = h.prop(&spec.name, "MainPID");

    h.systemctl(&["daemon-reexec"]);
    let units = wait_resync(&mut events).await;
    assert_eq!(units.len(), 1, "{units:?}");
    assert_eq!(
        (units[0].name.as_str(), units[0].active_state.as_str()),
        (spec.name.as_str(), "active")
    );
    assert_eq!(
        h.prop(&spec.name, "MainPID"),
        pid,
        "the workload was restarted"
    );
    // Signals flow on the new connection.
    engine
        .stop(&spec.name, Duration::from_secs(10))
        .await
        .expect("stop after reexec");
}

/// GET `path` on 127.0.0.1:`port`; the status code, or None if refused.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // One write: `write!` sends each piece of the format on its own, and a
    // server that answers the first piece and closes resets the rest.
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// The demo workload's contract, which the health tests build on: /health
/// answers 200, then 503 once told to fail; SIGTERM exits 0.
#[tokio::test]
async fn demo_workload_serves_health_and_fails_on_request() {
    /// Killed (by its pid) if the test fails midway, so no workload keeps
    /// the port.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = support::daemon::free_port();
    let mut guard = Guard(
        std::process::Command::new(env!("CARGO_BIN_EXE_prism-demo"))
            .args(["--fail-health-after", "1"])
            .env("HEALTH_PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn prism-demo"),
    );
    let child = &mut guard.0;
    eventually("/health to answer 200", DEADLINE, || async {
        (http_status(port, "/health") == Some(200)).then_some(())
    })
    .await;
    assert_eq!(http_status(port, "/nope"), Some(404));
    eventually("/health to answer 503", DEADLINE, || async {
        (http_status(port, "/health") == Some(503)).then_some(())
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = eventually("prism-demo to exit", DEADLINE, || {
        let r = child.try_wait().expect("wait");
        async move { r }
    })
    .await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `systemd-analyze security`'s overall exposure of a running unit.
fn exposure(h: &Harness, unit: &str) -> f64 {
    let out = h
        .sandbox
        .user_command("systemd-analyze")
        .args(["security", "--", unit])
        .output()
        .expect("run systemd-analyze");
    let text = text(&out);
    text.lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_isolation_level_runs_hardened_and_scores_low() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let hardening = unit::hardening_properties();
    let mut scores = Vec::new();
    for (level, jit_free) in [
        ("none", false),
        ("namespace", false),
        ("session", false),
        ("namespace", true),
    ] {
        let id = format!("hard-{level}-{jit_free}");
        let wire = with_config(pattern(&id, &h.demo, &[]), |c| {
            c.isolation_level = level.into();
            if jit_free {
                c.sandbox = Some(pb::SandboxOptions {
                    memory_deny_write_execute: true,
                });
            }
        });
        let spec = unit::translate(&h.process(wire));
        engine.start_transient(&spec).await.expect("start");
        h.wait_ready(&id).await;
        let mut wanted = vec!["ActiveState", "MainPID"];
        wanted.extend(&hardening);
        let props = h.show(&spec.name, &wanted);
        let expected = [
            ("ActiveState", "active"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("ProtectClock", "yes"),
            ("ProtectHostname", "yes"),
            ("ProtectProc", "invisible"),
            ("ProcSubset", "pid"),
            ("RestrictNamespaces", "yes"),
            ("RestrictRealtime", "yes"),
            ("RestrictSUIDSGID", "yes"),
            ("LockPersonality", "yes"),
            ("SystemCallArchitectures", "native"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("CapabilityBoundingSet", ""),
            ("UMask", "0077"),
            (
                "MemoryDenyWriteExecute",
                if jit_free { "yes" } else { "no" },
            ),
        ];
        for (name, value) in expected {
            assert_eq!(props[name], value, "{id}: {name}");
        }
        // Printed by name or by number, depending on systemd's version.
        assert!(
            ["EPERM", "1"].contains(&props["SystemCallErrorNumber"].as_str()),
            "{id}: SystemCallErrorNumber={}",
            props["SystemCallErrorNumber"]
        );
        // In force, as the kernel sees the process: a seccomp filter, no
        // capabilities, no privilege gain.
        let status = fs::read_to_string(format!("/proc/{}/status", props["MainPID"])).unwrap();
        for line in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapBnd:\t0000000000000000"] {
            assert!(
                status.lines().any(|l| l == line),
                "{id}: {line} in {status}"
            );
        }
        let score = exposure(&h, &spec.name);
        if !jit_free {
            // The same unit without the hardening set, as releases up to
            // 0.1 made it: the "before" of the README's table.
            let plain_id = format!("plain-{level}");
            let wire = with_config(pattern(&plain_id, &h.demo, &[]), |c| {
                c.isolation_level = level.into();
            });
            let mut plain = unit::translate(&h.process(wire));
            plain
                .properties
                .retain(|(name, _)| !hardening.contains(name));
            engine.start_transient(&plain).await.expect("start");
            eprintln!(
                "{level}: exposure {:.1} without the hardening set, {score:.1} with it",
                exposure(&h, &plain.name)
            );
        }
        scores.push((id, score));
    }
    eprintln!("systemd-analyze security: {scores:?}");
    for (id, score) in &scores {
        let limit = 2.5;
        assert!(*score <= limit, "{id}: exposure {score} over {limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_ids_get_distinct_units_that_start() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    // 128 bytes each, escaped to 512: cut and hashed, differing only at
    // the end.
    let a = "-".repeat(128);
    let b = format!("{}@", "-".repeat(127));
    let mut names = Vec::new();
    for id in [&a, &b] {
        let spec = unit::translate(&h.process(pattern(id, &h.demo, &[])));
        assert!(spec.name.len() <= unit::WORKLOAD_NAME_MAX, "{}", spec.name);
        engine.start_transient(&spec).await.expect("start");
        assert_eq!(h.prop(&spec.name, "ActiveState"), "active");
        names.push(spec.name);
    }
    assert_ne!(names[0], names[1]);
}
