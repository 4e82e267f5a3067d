//! Assignments: outcomes, capacity, capabilities, adoption, and starts
//! that fail or wait for systemd.

use super::*;

#[tokio::test(start_paused = true)]
async fn an_assignment_starts_the_translated_unit_and_records_it() {
    let h = harness();
    let a = h.sup.assign(assignment("kv-1", 1), true).await.unwrap();
    assert_eq!(a.outcome, AssignOutcome::Started);
    assert_eq!(a.unit, unit_of("kv-1"));
    let process = ManagedProcess::try_from((wire("kv-1", 1), &h.policy)).unwrap();
    let held = h.sd.unit(&a.unit).expect("unit loaded");
    assert_eq!(held.spec, Some(unit::translate(&process)));
    assert_eq!(held.status.active_state, "active");
    assert_eq!(h.phase("kv-1"), Some(Phase::Held));
    assert!(h.state_file("kv-1").exists());
    assert_eq!(h.sup.held().len(), 1, "placed by the admin: held for it");
}

#[tokio::test(start_paused = true)]
async fn the_same_version_again_changes_nothing() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.sd.clear_calls();
    let a = h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    assert_eq!(a.outcome, AssignOutcome::Unchanged);
    assert!(h.sd.calls().is_empty(), "{:?}", h.sd.calls());
    assert!(h.sup.held().is_empty(), "not placed by an admin");
}

#[tokio::test(start_paused = true)]
async fn a_newer_version_stops_the_old_unit_first() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    h.sd.clear_calls();
    let a = h.sup.assign(assignment("kv-1", 2), false).await.unwrap();
    assert_eq!(
        a.outcome,
        AssignOutcome::Replaced {
            previous: 1,
            reason: None
        }
    );
    assert_eq!(
        h.sd.calls(),
        vec![Call::Stop(unit_of("kv-1")), Call::Start(unit_of("kv-1"))]
    );
    let desc = h.sd.unit(&unit_of("kv-1")).unwrap().status.description;
    assert_eq!(unit::parse_description(&desc).unwrap().version, 2);
}

#[tokio::test(start_paused = true)]
async fn an_older_version_is_refused_and_nothing_changes() {
    let h = harness();
    h.sup.assign(assignment("kv-1", 3), false).await.unwrap();
    h.sd.clear_calls();
    let err = h
        .sup
        .assign(assignment("kv-1", 2), false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LauncherError::StaleVersion {
                held: 3,
                requested: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(h.sd.calls().is_empty());
    assert_eq!(h.entry("kv-1", |e| e.process.version), 3);
}

#[tokio::test(start_paused = true)]
async fn capacity_is_a_hard_limit_and_frees_on_revocation() {
    let h = harness_with(policy(), 2, ProcessType::ALL.into_iter().collect());
    h.sup.assign(assignment("a", 1), false).await.unwrap();
    h.sup.assign(assignment("b", 1), false).await.unwrap();
    let err = h.sup.assign(assignment("c", 1), false).await.unwrap_err();
    assert!(
        matches!(err, LauncherError::CapacityExhausted { used: 2, max: 2 }),
        "{err}"
    );
    assert_eq!(h.starts("c"), 0);
    assert!(!h.state_file("c").exists());
    h.sup.revoke("a", None).await.unwrap();
    h.sup.assign(assignment("c", 1), false).await.unwrap();
    assert_eq!(h.sd.names().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_assignments_never_overbook() {
    let h = harness_with(policy(), 4, ProcessType::ALL.into_iter().collect());
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let sup = h.sup.clone();
            tokio::spawn(async move { sup.assign(assignment(&format!("p{i}"), 1), false).await })
        })
        .collect();
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LauncherError::CapacityExhausted { max: 4, .. }) => full += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok, full), (4, 8));
    assert_eq!(h.sd.names().len(), 4);
    assert_eq!(h.sup.table().entries.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_type_outside_the_capabilities_is_refused_before_anything_happens() {
    let h = harness_with(policy(), 10, [ProcessType::Proxy].into_iter().collect());
    let err = h
        .sup
        .assign(assignment("kv-1", 1), false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LauncherError::NotCapable {
                process_type: ProcessType::Pattern,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("(proxy)"), "{err}");
    assert!(h.sd.calls().is_empty());
    assert!(h.sup.table().entries.is_empty());
}

#[tokio::test(start_paused = true)]
async fn invalid_input_names_the_field_and_changes_nothing() {
    let h = harness();
    let mut bad = wire("kv-1", 1);
    bad.namespace = "Not A Token!".into();
    // Refused at the edge, by the pure conversion.
    let err = Assignment::try_from((bad, h.sup.policy())).unwrap_err();
    assert!(err.to_string().starts_with("namespace"), "{err}");
    assert!(h.sd.calls().is_empty());
    assert!(h.sup.table().entries.is_empty());
    assert!(!h.state_file("kv-1").exists());
}

#[tokio::test(start_paused = true)]
async fn a_running_unit_of_the_same_version_is_adopted_not_restarted() {
    let h = harness();
    let process = ManagedProcess::try_from((wire("kv-1", 1), &h.policy)).unwrap();
    h.sd.insert(&unit_of("kv-1"), &unit::description(&process), "active");
    let a = h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    assert_eq!(a.outcome, AssignOutcome::Adopted);
    assert_eq!(h.sd.count(&Call::Stop(unit_of("kv-1"))), 0);
}

#[tokio::test(start_paused = true)]
async fn a_unit_of_another_version_under_the_name_is_replaced() {
    let h = harness();
    let old = ManagedProcess::try_from((wire("kv-1", 7), &h.policy)).unwrap();
    h.sd.insert(&unit_of("kv-1"), &unit::description(&old), "active");
    let a = h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    assert_eq!(a.outcome, AssignOutcome::Started);
    assert_eq!(h.sd.count(&Call::Stop(unit_of("kv-1"))), 1);
    let desc = h.sd.unit(&unit_of("kv-1")).unwrap().status.description;
    assert_eq!(unit::parse_description(&desc).unwrap().version, 1);
}

#[tokio::test(start_paused = true)]
async fn a_briefly_absent_manager_is_retried_with_backoff() {
    let h = harness();
    h.sd.fail_next(Op::Start, unavailable());
    h.sd.fail_next(Op::Start, unavailable());
    let began = Instant::now();
    let a = h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    assert_eq!(a.outcome, AssignOutcome::Started);
    assert_eq!(h.starts("kv-1"), 3);
    // 100 ms, then 200 ms.
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(400),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_retry_budget_it_answers_pending_and_starts_later() {
    let h = harness();
    for _ in 0..50 {
        h.sd.fail_next(Op::Start, unavailable());
    }
    let began = Instant::now();
    let err = h.sup.assign(assignment("kv-1", 1), true).await.unwrap_err();
    assert!(matches!(err, LauncherError::Pending { .. }), "{err}");
    assert!(began.elapsed() <= Duration::from_secs(10), "within budget");
    // Held and durable: the reconciler starts it once systemd answers.
    assert_eq!(h.phase("kv-1"), Some(Phase::Held));
    assert!(h.state_file("kv-1").exists());
    h.sd.clear_failures();
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(
        h.sd.unit(&unit_of("kv-1")).unwrap().status.active_state,
        "active"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_job_is_recorded_with_its_reason() {
    let h = harness();
    h.sd.fail_starts(
        &unit_of("kv-1"),
        UnitStatus {
            result: "exit-code".into(),
            exec_main_code: 1,
            exec_main_status: 203,
            ..UnitStatus::default()
        },
    );
    let a = h.sup.assign(assignment("kv-1", 1), false).await.unwrap();
    let AssignOutcome::StartFailed { reason } = a.outcome else {
        panic!("{:?}", a.outcome)
    };
    assert!(reason.contains("203/EXEC"), "{reason}");
    assert!(reason.contains("could not set up or execute"), "{reason}");
    h.entry("kv-1", |e| {
        assert_eq!(e.start_failures, 1);
        assert_eq!(e.exit, Some(crate::health::exit::ExitReason::Exec(203)));
        assert_eq!(e.last_error.as_deref(), Some(reason.as_str()));
        assert!(e.circuit_opened_at.is_none());
    });
    // Failed stays failed: systemd chose not to restart it.
    h.sd.clear_calls();
    h.sup.reconcile_once().await.unwrap();
    assert_eq!(h.sd.calls(), vec![Call::List]);
}
