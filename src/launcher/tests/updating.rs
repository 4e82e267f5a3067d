//! New versions applied in place or by a new unit, and how processes end
//! (exit reasons), against the in-memory manager. The same against a real
//! one: `tests/engine.rs`, `tests/daemon.rs`.

use super::*;
use crate::health::exit::ExitReason;

fn with_memory(id: &str, version: i64, max: i64) -> Assignment {
    let mut w = wire(id, version);
    w.config.as_mut().unwrap().resources = Some(pb::ResourceLimits {
        memory_max_bytes: max,
        ..Default::default()
    });
    assignment_of(w)
}

/// A harness following events, holding `a` (kv-1) with its unit running.
async fn holding_running(a: Assignment) -> Harness {
    let h = harness();
    h.run_loops().await;
    h.sup.assign(a, false).await.unwrap();
    until(Duration::from_secs(1), "kv-1 running", || {
        h.entry("kv-1", |e| {
            e.unit_status.as_ref().is_some_and(|s| s.is_active())
        })
    })
    .await;
    h
}

#[tokio::test(start_paused = true)]
async fn new_limits_reach_the_running_unit_and_nothing_restarts() {
    let h = holding_running(with_memory("kv-1", 1, 64 << 20)).await;
    h.sd.clear_calls();
    let a = h
        .sup
        .assign(with_memory("kv-1", 2, 128 << 20), false)
        .await
        .unwrap();
    assert_eq!(a.outcome, AssignOutcome::UpdatedInPlace { previous: 1 });
    assert_eq!(a.outcome.applied(), "updated in place");
    assert_eq!(
        h.sd.calls(),
        vec![Call::SetProperties(
            unit_of("kv-1"),
            vec!["MemoryMax", "Description"]
        )],
        "no stop, no start"
    );
    let held = h.sd.unit(&unit_of("kv-1")).unwrap();
    assert_eq!(
        held.spec.unwrap().get(unit::props::MEMORY_MAX),
        Some(&unit::PropValue::U64(128 << 20))
    );
    assert_eq!(
        unit::parse_description(&held.status.description)
            .unwrap()
            .version,
        2
    );
    h.entry("kv-1", |e| {
        assert_eq!(e.process.version, 2);
        assert_eq!(e.wire.version, 2);
        assert_eq!(e.phase, Phase::Held);
    });
    // Durable: a restarted launcher holds version 2.
    let stored = h.sup.store.load(|_| Ok(())).unwrap();
    assert_eq!(stored.desired[0].assignment.version, 2);
}

#[tokio::test(start_paused = true)]
async fn a_change_systemd_cannot_apply_live_replaces_the_unit_and_says_why() {
    let h = holding_running(assignment("kv-1", 1)).await;
    let mut w = wire("kv-1", 2);
    w.config.as_mut().unwrap().args = vec!["--verbose".into()];
    h.sd.clear_calls();
    let a = h.sup.assign(assignment_of(w), false).await.unwrap();
    let AssignOutcome::Replaced {
        previous: 1,
        reason: Some(reason),
    } = &a.outcome
    else {
        panic!("{:?}", a.outcome)
    };
    assert!(reason.contains("config.args"), "{reason}");
    assert!(a.outcome.applied().starts_with("replaced: config.args"));
    let calls: Vec<Call> =
        h.sd.calls()
            .into_iter()
            .filter(|c| *c != Call::List)
            .collect();
    assert_eq!(
        calls,
        vec![Call::Stop(unit_of("kv-1")), Call::Start(unit_of("kv-1"))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_live_update_falls_back_to_a_new_unit() {
    let h = holding_running(with_memory("kv-1", 1, 64 << 20)).await;
    // The unit went away behind the launcher's back just before.
    h.sd.fail_next(
        Op::SetProperties,
        SystemdError::NoSuchUnit {
            unit: unit_of("kv-1"),
        },
    );
    let a = h
        .sup
        .assign(with_memory("kv-1", 2, 128 << 20), false)
        .await
        .unwrap();
    let AssignOutcome::Replaced {
        reason: Some(reason),
        ..
    } = &a.outcome
    else {
        panic!("{:?}", a.outcome)
    };
    assert!(
        reason.contains("systemd refused the update in place"),
        "{reason}"
    );
    let held = h.sd.unit(&unit_of("kv-1")).unwrap();
    assert_eq!(
        unit::parse_description(&held.status.description)
            .unwrap()
            .version,
        2
    );
    assert_eq!(held.status.active_state, "active");
}

/// systemd's record of an end, as a unit between restarts shows it.
fn ended(result: &str, code: i32, status: i32) -> impl FnOnce(&mut UnitStatus) {
    let result = result.to_owned();
    move |s: &mut UnitStatus| {
        s.active_state = "activating".into();
        s.sub_state = "auto-restart".into();
        s.result = result;
        s.exec_main_code = code;
        s.exec_main_status = status;
        s.main_pid = 0;
    }
}

fn running(s: &mut UnitStatus) {
    s.active_state = "active".into();
    s.sub_state = "running".into();
    s.result = "success".into();
    s.n_restarts += 1;
}

#[tokio::test(start_paused = true)]
async fn each_end_is_reported_with_its_reason_and_counted_by_cause() {
    let h = harness();
    h.run_loops().await;
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    let unit = unit_of("kv-1");
    // An OOM kill cannot be provoked in the sandboxed manager (no memory
    // controller); systemd reports it as Result=oom-kill.
    let cases = [
        (ended("oom-kill", 2, 9), "oom-kill", "OOM killer"),
        (
            ended("exit-code", 1, 3),
            "exit-code",
            "exited with status 3",
        ),
        (ended("signal", 2, 9), "signal", "killed by SIGKILL (9)"),
        (ended("watchdog", 2, 6), "watchdog", "watchdog timeout"),
        (ended("exit-code", 1, 203), "exec", "203/EXEC"),
    ];
    for (end, cause, words) in cases {
        h.sd.update(&unit, end);
        until(Duration::from_secs(1), cause, || {
            h.entry("kv-1", |e| {
                e.exit.as_ref().map(ExitReason::cause) == Some(cause)
            })
        })
        .await;
        let info = h.sup.get("kv-1").await.unwrap();
        let health = info.health.unwrap();
        assert_eq!(health.exit_reason, cause);
        assert_eq!(health.detailed_status, "restarting");
        assert!(
            health.last_error.contains(words),
            "{cause}: {}",
            health.last_error
        );
        h.sd.update(&unit, running);
        until(Duration::from_secs(1), "running again", || {
            h.status("kv-1") == Status::Running
        })
        .await;
        // The reason of the last end stays until the next one.
        assert_eq!(
            h.entry("kv-1", |e| e.exit.as_ref().map(ExitReason::cause)),
            Some(cause)
        );
    }
    // Then the start limit.
    h.sd.update(&unit, |s| {
        s.active_state = "failed".into();
        s.sub_state = "failed".into();
        s.result = "exit-code".into();
        s.exec_main_code = 1;
        s.exec_main_status = 3;
        s.restart = "on-failure".into();
        s.start_limit_burst = 5;
        s.n_restarts = 5;
    });
    until(Duration::from_secs(1), "the circuit", || {
        h.status("kv-1") == Status::CircuitOpen
    })
    .await;
    let health = h.sup.get("kv-1").await.unwrap().health.unwrap();
    assert_eq!(health.exit_reason, "start-limit");
    assert!(
        health.last_error.contains("start limit hit"),
        "{}",
        health.last_error
    );
    assert!(
        health.last_error.contains("exited with status 3"),
        "{}",
        health.last_error
    );
    let metrics = h.sup.render_metrics();
    for cause in [
        "oom-kill",
        "exit-code",
        "signal",
        "watchdog",
        "exec",
        "start-limit",
    ] {
        let line = format!("prism_launcher_restarts_total{{cause=\"{cause}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

fn depending(id: &str, version: i64, deps: &[(&str, bool)]) -> pb::ProcessAssignment {
    let mut w = wire(id, version);
    w.config.as_mut().unwrap().depends_on = deps
        .iter()
        .map(|(d, bind)| pb::Dependency {
            process_id: (*d).into(),
            bind: *bind,
        })
        .collect();
    w
}

#[tokio::test(start_paused = true)]
async fn dependencies_held_here_become_unit_ordering() {
    let h = harness();
    h.sup.assign(assignment("redis-1", 1), false).await.unwrap();
    h.sup.assign(assignment("cache-1", 1), false).await.unwrap();
    h.sup
        .assign(
            assignment_of(depending(
                "kv-1",
                1,
                &[("redis-1", true), ("cache-1", false)],
            )),
            false,
        )
        .await
        .unwrap();
    let spec = h.sd.unit(&unit_of("kv-1")).unwrap().spec.unwrap();
    let list = |v: &[&str]| unit::PropValue::StrList(v.iter().map(|u| unit_of(u)).collect());
    assert_eq!(spec.get("After"), Some(&list(&["redis-1", "cache-1"])));
    assert_eq!(spec.get("BindsTo"), Some(&list(&["redis-1"])));
    assert_eq!(spec.get("Wants"), Some(&list(&["cache-1"])));
}

#[tokio::test(start_paused = true)]
async fn unknown_dependencies_and_cycles_are_refused_and_change_nothing() {
    let h = harness();
    h.sup.assign(assignment("a", 1), false).await.unwrap();
    h.sup
        .assign(assignment_of(depending("b", 1, &[("a", false)])), false)
        .await
        .unwrap();
    h.sd.clear_calls();
    let err = h
        .sup
        .assign(
            assignment_of(depending("c", 1, &[("a", false), ("zz", false)])),
            false,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("config.depends_on[1].process_id: no process zz on this launcher"),
        "{err}"
    );
    // a v2 needing b, which needs a.
    let err = h
        .sup
        .assign(assignment_of(depending("a", 2, &[("b", false)])), false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config.depends_on: a dependency cycle: a → b → a"
    );
    assert!(h.sd.calls().is_empty(), "{:?}", h.sd.calls());
    assert!(!h.sup.table().entries.contains_key("c"));
    h.entry("a", |e| assert_eq!(e.process.version, 1));
    // Placed by prism-admin, a dependency may run on another launcher.
    h.sup
        .assign(
            assignment_of(depending("d", 1, &[("elsewhere", true)])),
            true,
        )
        .await
        .unwrap();
    let spec = h.sd.unit(&unit_of("d")).unwrap().spec.unwrap();
    assert_eq!(spec.get("After"), None);
}

#[tokio::test(start_paused = true)]
async fn an_update_in_place_whose_state_cannot_be_written_puts_the_old_limits_back() {
    let h = holding_running(with_memory("kv-1", 1, 64 << 20)).await;
    std::fs::remove_dir_all(h.dir.path()).unwrap();
    let err = h
        .sup
        .assign(with_memory("kv-1", 2, 128 << 20), false)
        .await
        .unwrap_err();
    assert!(matches!(err, LauncherError::Store(_)), "{err}");
    let held = h.sd.unit(&unit_of("kv-1")).unwrap();
    assert_eq!(
        held.spec.unwrap().get(unit::props::MEMORY_MAX),
        Some(&unit::PropValue::U64(64 << 20)),
        "the old limit is back"
    );
    assert_eq!(
        unit::parse_description(&held.status.description)
            .unwrap()
            .version,
        1
    );
    assert_eq!(h.entry("kv-1", |e| e.process.version), 1);
}

#[tokio::test(start_paused = true)]
async fn what_others_need_is_not_revoked_from_under_them() {
    let h = harness();
    h.sup.assign(assignment("a", 1), false).await.unwrap();
    h.sup
        .assign(assignment_of(depending("b", 1, &[("a", true)])), false)
        .await
        .unwrap();
    h.sd.clear_calls();
    let err = h.sup.revoke("a", None).await.unwrap_err();
    assert!(matches!(err, LauncherError::Needed { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("process a is needed by b (their config.depends_on)"),
        "{err}"
    );
    assert!(h.sd.calls().is_empty(), "{:?}", h.sd.calls());
    h.entry("a", |e| assert_eq!(e.phase, Phase::Held));
    h.sup.revoke("b", None).await.expect("revoke b");
    h.sup.revoke("a", None).await.expect("then a");
    assert!(h.sup.table().entries.is_empty());
    // A dependency being revoked takes no new dependent.
    h.sup.assign(assignment("a", 1), false).await.unwrap();
    h.sup.table().entries.get_mut("a").unwrap().revoke_pending = true;
    let err = h
        .sup
        .assign(assignment_of(depending("c", 1, &[("a", false)])), false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config.depends_on[0].process_id: process a is being revoked"
    );
    // prism-admin may have moved it: for its placement the copy being
    // revoked here is not there, and nothing is bound to it.
    h.sup
        .assign(assignment_of(depending("d", 1, &[("a", true)])), true)
        .await
        .unwrap();
    let spec = h.sd.unit(&unit_of("d")).unwrap().spec.unwrap();
    assert_eq!(spec.get("BindsTo"), None);
    h.sup.revoke("d", None).await.unwrap();
    h.sup.table().entries.get_mut("a").unwrap().revoke_pending = false;
    // prism-admin checked its fleet (and moves processes for reasons of
    // its own): its revocation is not refused.
    h.sup
        .assign(assignment_of(depending("b", 1, &[("a", true)])), false)
        .await
        .unwrap();
    h.sup
        .revoke_for_admin("a", None)
        .await
        .expect("the admin's");
    assert!(!h.sup.table().entries.contains_key("a"));
}

/// On a manager without `RestartSteps=` the launcher ends systemd's wait
/// (`RestartUnit`) along the curve, only for the wait it was scheduled for,
/// and counts its restarts for the start limit.
#[tokio::test(start_paused = true)]
async fn restarts_are_paced_where_the_manager_cannot_grow_the_delay() {
    let h = harness();
    h.sd.set_version(252);
    h.run_loops().await;
    let mut w = wire("kv-1", 1);
    w.config.as_mut().unwrap().restart_policy = Some(pb::RestartPolicy {
        delay_ms: 100,
        max_delay_ms: 10_000,
        steps: 4,
        ..Default::default()
    });
    h.sup.assign(assignment_of(w), false).await.unwrap();
    let unit = unit_of("kv-1");
    let restart = Call::Restart(unit.clone());
    // 100 ms, then 316 ms: each wait ends at the curve's delay.
    for (n, ms) in [(1, 100), (2, 316)] {
        h.sd.update(&unit, ended("exit-code", 1, 3));
        let waited = until(Duration::from_secs(5), "a paced restart", || {
            h.sd.count(&restart) == n
        })
        .await;
        assert!(
            waited >= Duration::from_millis(ms) && waited < Duration::from_millis(ms + 50),
            "restart {n} after {waited:?}"
        );
        until(Duration::from_secs(1), "running", || {
            h.status("kv-1") == Status::Running
        })
        .await;
    }
    // systemd's own timer came first: the launcher's restart (due at 1 s)
    // is for a wait that is over, and does nothing.
    h.sd.update(&unit, ended("exit-code", 1, 3));
    until(Duration::from_secs(1), "restarting", || {
        h.status("kv-1") == Status::Restarting
    })
    .await;
    h.sd.update(&unit, running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.sd.count(&restart), 2);
    // systemd's NRestarts leaves the two paced restarts out: the launcher
    // adds them, so a final failure at a burst of 3 is the start limit.
    h.sd.update(&unit, |s| {
        s.active_state = "failed".into();
        s.sub_state = "failed".into();
        s.result = "exit-code".into();
        s.restart = "on-failure".into();
        s.start_limit_burst = 3;
        s.n_restarts = 1;
    });
    until(Duration::from_secs(1), "the circuit", || {
        h.status("kv-1") == Status::CircuitOpen
    })
    .await;
    let health = h.sup.get("kv-1").await.unwrap().health.unwrap();
    assert_eq!(health.exit_reason, "start-limit");
    assert_eq!(health.restart_count, 3, "{health:?}");
}
