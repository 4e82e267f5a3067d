//! Keeping processes running: circuit cool-down and half-open, restore
//! backoff, revocations, reconciliation, restarts of launcher and manager,
//! blocked binaries, failed state writes.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_circuit_half_opens_once_after_the_cooldown() {
    let h = harness();
    h.sd.fail_starts(&unit_of("kv-1"), limit_hit());
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    assert!(h.entry("kv-1", |e| e.circuit_opened_at.is_some()));
    assert_eq!(Some(h.status("kv-1")), Some(Status::CircuitOpen));
    // Within the cool-down: nothing is tried.
    tokio::time::advance(COOLDOWN - Duration::from_secs(1)).await;
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(h.starts("kv-1"), 1);
    // After it: one more try, which works now.
    h.sd.heal(&unit_of("kv-1"));
    tokio::time::advance(Duration::from_secs(1)).await;
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(h.starts("kv-1"), 2);
    h.entry("kv-1", |e| {
        assert!(e.circuit_opened_at.is_none());
        assert_eq!(e.launcher_restarts, 1);
    });
    assert_eq!(
        h.sd.unit(&unit_of("kv-1")).unwrap().status.active_state,
        "active"
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_open_try_that_fails_keeps_the_circuit_open_for_another_cooldown() {
    let h = harness();
    h.sd.fail_starts(&unit_of("kv-1"), limit_hit());
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    let first = h.entry("kv-1", |e| e.circuit_opened_at).unwrap();
    tokio::time::advance(COOLDOWN).await;
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(h.starts("kv-1"), 2);
    // Opened again (at the try), so the next try waits a whole cool-down.
    let again = h.entry("kv-1", |e| e.circuit_opened_at).unwrap();
    assert!(again > first);
    assert!(h.sup.next_wake(Duration::from_secs(3600)) >= COOLDOWN - Duration::from_millis(1));
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(h.starts("kv-1"), 2);
}

#[tokio::test(start_paused = true)]
async fn systemd_giving_up_on_a_unit_opens_its_circuit_and_activity_closes_it() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.run_loops().await;
    h.sd.update(&unit_of("kv-1"), |s| {
        s.active_state = "failed".into();
        s.sub_state = "failed".into();
        s.result = "start-limit-hit".into();
    });
    until(Duration::from_secs(1), "the circuit to open", || {
        h.entry("kv-1", |e| e.circuit_opened_at.is_some())
    })
    .await;
    assert!(
        h.entry("kv-1", |e| e.last_error.clone())
            .unwrap()
            .contains("start limit")
    );
    h.sd.update(&unit_of("kv-1"), |s| {
        s.active_state = "active".into();
        s.sub_state = "running".into();
        s.result = "success".into();
    });
    until(Duration::from_secs(1), "the circuit to close", || {
        h.entry("kv-1", |e| e.circuit_opened_at.is_none())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_vanishing_unit_is_restored_with_a_growing_backoff() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.run_loops().await;
    let mut waits = Vec::new();
    for n in 2..=5 {
        h.sd.vanish(&unit_of("kv-1"));
        waits.push(
            until(Duration::from_secs(60), "the restore", || {
                h.starts("kv-1") == n
            })
            .await,
        );
    }
    // At once, then 1 s, 2 s, 4 s (the backoff has no jitter here).
    let secs: Vec<u64> = waits.iter().map(|w| w.as_millis() as u64 / 100).collect();
    assert_eq!(secs, vec![0, 10, 20, 40], "{waits:?}");
    assert_eq!(h.entry("kv-1", |e| e.launcher_restarts), 4);
    assert_eq!(h.phase("kv-1"), Some(Phase::Held));
}

#[tokio::test(start_paused = true)]
async fn a_unit_that_ran_long_before_vanishing_is_restored_at_once() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.run_loops().await;
    for n in 2..=4 {
        // It ran for two minutes (as systemd's timestamp says).
        h.sd.update(&unit_of("kv-1"), |s| {
            s.active_enter_usec = crate::clock::unix_usec() - 120_000_000;
        });
        until(Duration::from_secs(1), "the event", || {
            h.entry("kv-1", |e| {
                e.unit_status
                    .as_ref()
                    .is_some_and(|s| s.active_enter_usec < crate::clock::unix_usec() - 60_000_000)
            })
        })
        .await;
        h.sd.vanish(&unit_of("kv-1"));
        let waited = until(Duration::from_secs(60), "the restore", || {
            h.starts("kv-1") == n
        })
        .await;
        assert!(waited < Duration::from_millis(100), "{waited:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_revocation_stops_the_unit_and_forgets_the_process() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    let r = h
        .sup
        .revoke("kv-1", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(r.was_running);
    assert!(!r.killed);
    assert_eq!(r.exit_code, 128 + libc::SIGTERM);
    assert!(h.sd.unit(&unit_of("kv-1")).is_none());
    assert!(h.sup.table().entries.is_empty());
    assert!(!h.state_file("kv-1").exists());
}

#[tokio::test(start_paused = true)]
async fn revoking_an_unknown_process_is_not_found() {
    let h = harness();
    let err = h.sup.revoke("nope", None).await.unwrap_err();
    assert!(matches!(err, LauncherError::NotFound { .. }), "{err}");
    assert!(h.sd.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_revocation_that_could_not_stop_stays_recorded_and_is_finished() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.sd.fail_next(Op::Stop, unavailable());
    assert!(h.sup.revoke("kv-1", None).await.is_err());
    assert_eq!(h.phase("kv-1"), Some(Phase::Revoking));
    let err = h
        .sup
        .assign(assignment("kv-1", 2), false)
        .await
        .unwrap_err();
    assert!(matches!(err, LauncherError::Revoking { .. }), "{err}");
    // A restarted launcher finishes it too: the revocation is durable.
    let again = h.restarted();
    assert_eq!(
        again.table().entries.get("kv-1").map(|e| e.phase),
        Some(Phase::Revoking)
    );
    h.sup.reconcile_once().await.unwrap();
    assert!(h.sup.table().entries.is_empty());
    assert!(h.sd.unit(&unit_of("kv-1")).is_none());
    assert!(!h.state_file("kv-1").exists());
}

#[tokio::test(start_paused = true)]
async fn units_nobody_wants_are_stopped_unless_the_admin_has_not_spoken() {
    let h = harness();
    let stray = unit_of("stray");
    h.sd.insert(&stray, "prism pattern stray v1: /usr/bin/true", "active");
    h.sup.allow_stopping_undesired(false);
    h.sup.reconcile_once().await.unwrap();
    assert!(
        h.sd.unit(&stray).is_some(),
        "kept until the placement is known"
    );
    h.sup.allow_stopping_undesired(true);
    h.sup.reconcile_once().await.unwrap();
    assert!(h.sd.unit(&stray).is_none());
    // Units outside the launcher's names are never touched.
    h.sd.insert("redis.service", "redis", "active");
    h.sup.reconcile_once().await.unwrap();
    assert!(h.sd.unit("redis.service").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_manager_gets_every_unit_back() {
    let h = harness();
    for id in ["a", "b", "c"] {
        h.sup.assign(assignment(id, 1), false).await.unwrap();
    }
    h.run_loops().await;
    h.sd.restart_manager();
    until(Duration::from_secs(5), "all three back", || {
        h.sd.names().len() == 3
    })
    .await;
    for id in ["a", "b", "c"] {
        assert_eq!(h.starts(id), 2, "{id}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_unit_is_recreated() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.sd.update(&unit_of("kv-1"), |s| {
        s.active_state = "inactive".into();
        s.sub_state = "dead".into();
    });
    h.sd.clear_calls();
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(
        h.sd.calls(),
        vec![
            Call::List,
            Call::Stop(unit_of("kv-1")),
            Call::Start(unit_of("kv-1"))
        ]
    );
    assert_eq!(
        h.sd.unit(&unit_of("kv-1")).unwrap().status.active_state,
        "active"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_launcher_adopts_what_runs_without_restarting_it() {
    let h = harness();
    for id in ["a", "b"] {
        h.sup.assign(assignment(id, 1), true).await.unwrap();
    }
    h.sd.clear_calls();
    let again = h.restarted();
    again.reconcile_once().await.unwrap();
    assert_eq!(h.sd.calls(), vec![Call::List]);
    let table = again.table();
    assert!(table.entries.values().all(|e| e.phase == Phase::Held));
    assert!(table.entries.values().all(|e| e.placed_by_admin));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_launcher_replaces_a_unit_of_an_older_version() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 2), false).await.unwrap();
    // The unit is an old one (the launcher crashed mid-replacement).
    let old = ManagedProcess::try_from((wire("kv-1", 1), &h.policy)).unwrap();
    h.sd.vanish(&unit_of("kv-1"));
    h.sd.insert(&unit_of("kv-1"), &unit::description(&old), "active");
    let again = h.restarted();
    again.reconcile_once().await.unwrap();
    let desc = h.sd.unit(&unit_of("kv-1")).unwrap().status.description;
    assert_eq!(unit::parse_description(&desc).unwrap().version, 2);
}

#[tokio::test(start_paused = true)]
async fn a_missing_binary_blocks_the_process_until_it_appears() {
    let bin = tempfile::tempdir().unwrap();
    let runner = bin.path().join("runner");
    let install = || {
        std::fs::write(&runner, "#!/bin/false\n").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&runner).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(&runner, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    install();
    let policy = Policy::with_binary_dirs([bin.path().to_path_buf()]).unwrap();
    let h = harness_with(policy, 10, ProcessType::ALL.into_iter().collect());
    let path = runner.display().to_string();
    h.sup
        .assign(assignment_of(wire_at("kv-1", 1, &path)), false)
        .await
        .unwrap();
    h.run_loops().await;
    // The package is removed, and the unit exits.
    std::fs::remove_file(&runner).unwrap();
    h.sd.vanish(&unit_of("kv-1"));
    until(Duration::from_secs(1), "blocked", || {
        h.phase("kv-1") == Some(Phase::Blocked)
    })
    .await;
    let error = h.entry("kv-1", |e| e.last_error.clone()).unwrap();
    assert!(error.contains("runner"), "{error}");
    assert_eq!(Some(h.status("kv-1")), Some(Status::Failed));
    // Retried (1 s, 2 s…) without creating a unit.
    until(Duration::from_secs(10), "two more tries", || {
        h.entry("kv-1", |e| e.start_failures) >= 3
    })
    .await;
    assert_eq!(h.starts("kv-1"), 1);
    install();
    until(Duration::from_secs(60), "the start", || {
        h.starts("kv-1") == 2
    })
    .await;
    until(Duration::from_secs(1), "held", || {
        h.phase("kv-1") == Some(Phase::Held)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_state_write_that_fails_leaves_nothing_behind() {
    let h = harness();
    h.sup.assign(assignment("old", 1), false).await.unwrap();
    std::fs::remove_dir_all(h.dir.path()).unwrap();
    let err = h
        .sup
        .assign(assignment("kv-1", 1), false)
        .await
        .unwrap_err();
    assert!(matches!(err, LauncherError::Store(_)), "{err}");
    assert!(
        h.sd.unit(&unit_of("kv-1")).is_none(),
        "its unit was stopped"
    );
    assert!(!h.sup.table().entries.contains_key("kv-1"));
    assert!(h.sup.table().entries.contains_key("old"));
    // A revocation that cannot be recorded changes nothing either, and
    // leaves the process open to new dependents.
    let err = h.sup.revoke("old", None).await.unwrap_err();
    assert!(matches!(err, LauncherError::Store(_)), "{err}");
    assert!(h.sd.unit(&unit_of("old")).is_some());
    let (phase, pending) = h.entry("old", |e| (e.phase, e.revoke_pending));
    assert_eq!((phase, pending), (Phase::Held, false));
}

#[tokio::test(start_paused = true)]
async fn a_replacement_whose_state_cannot_be_written_keeps_the_old_version_desired() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    std::fs::remove_dir_all(h.dir.path()).unwrap();
    assert!(h.sup.assign(assignment("kv-1", 2), false).await.is_err());
    assert_eq!(h.entry("kv-1", |e| e.process.version), 1);
    // The reconciler puts version 1 back.
    std::fs::create_dir_all(h.dir.path()).unwrap();
    h.sup.reconcile_once().await.unwrap();
    let desc = h.sd.unit(&unit_of("kv-1")).unwrap().status.description;
    assert_eq!(unit::parse_description(&desc).unwrap().version, 1);
}

#[tokio::test(start_paused = true)]
async fn an_assignment_while_disconnected_is_held_and_started_on_reconnect() {
    let h = harness();
    h.run_loops().await;
    h.sd.disconnect();
    let err = h
        .sup
        .assign(assignment("kv-1", 1), false)
        .await
        .unwrap_err();
    assert!(matches!(err, LauncherError::Pending { .. }), "{err}");
    assert!(
        h.sup.status_line().contains("unreachable"),
        "{}",
        h.sup.status_line()
    );
    h.sd.reconnect();
    until(Duration::from_secs(5), "the start", || {
        h.sd.unit(&unit_of("kv-1")).is_some()
    })
    .await;
    assert_eq!(h.phase("kv-1"), Some(Phase::Held));
}

#[tokio::test(start_paused = true)]
async fn what_changed_while_disconnected_is_taken_from_the_list_on_reconnect() {
    let h = harness();
    h.run_loops().await;
    for id in ["kv-1", "kv-2"] {
        h.sup.assign(assignment(id, 1), false).await.unwrap();
    }
    h.sd.update(&unit_of("kv-1"), |s| {
        s.active_state = "activating".into();
        s.sub_state = "start".into();
    });
    until(Duration::from_secs(1), "kv-1 starting", || {
        h.status("kv-1") == Status::Starting
    })
    .await;
    until(Duration::from_secs(1), "kv-2 running", || {
        h.status("kv-2") == Status::Running
    })
    .await;
    h.sd.disconnect();
    // Unheard: kv-1 came up, kv-2's unit went away.
    h.sd.update_unheard(&unit_of("kv-1"), |s| {
        s.active_state = "active".into();
        s.sub_state = "running".into();
    });
    h.sd.vanish_unheard(&unit_of("kv-2"));
    h.sd.clear_calls();
    h.sd.reconnect();
    until(Duration::from_secs(5), "kv-1 running", || {
        h.status("kv-1") == Status::Running
    })
    .await;
    // kv-2 is not reported running on stale news: the reconciler starts
    // it again, and it runs.
    until(Duration::from_secs(5), "kv-2 started again", || {
        h.starts("kv-2") == 1 && h.status("kv-2") == Status::Running
    })
    .await;
    assert_eq!(h.starts("kv-1"), 0);
}

#[tokio::test(start_paused = true)]
async fn held_lists_only_what_the_admin_placed_and_is_not_being_revoked() {
    let h = harness();
    h.sup.assign(assignment("admin-1", 1), true).await.unwrap();
    h.sup.assign(assignment("admin-2", 1), true).await.unwrap();
    h.sup.assign(assignment("local", 1), false).await.unwrap();
    h.sd.fail_next(Op::Stop, unavailable());
    let _ = h.sup.revoke("admin-2", None).await;
    let held: Vec<String> = h.sup.held().into_iter().map(|p| p.process_id).collect();
    assert_eq!(held, vec!["admin-1".to_owned()]);
    let back = h
        .sup
        .assignments(&["admin-1".into(), "admin-2".into(), "none".into()]);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0], wire("admin-1", 1));
}

#[tokio::test(start_paused = true)]
async fn the_next_wake_follows_the_earliest_timer() {
    let h = harness();
    let hour = Duration::from_secs(3600);
    assert_eq!(h.sup.next_wake(hour), hour);
    h.sd.fail_starts(&unit_of("kv-1"), limit_hit());
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    assert_eq!(h.sup.next_wake(hour), COOLDOWN);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(h.sup.next_wake(hour), COOLDOWN - Duration::from_secs(10));
    // Never a busy loop.
    tokio::time::advance(hour).await;
    assert_eq!(h.sup.next_wake(hour), Duration::from_millis(20));
}
