//! Placing, pushing and revoking processes.

use super::*;

#[tokio::test]
async fn an_assignment_goes_to_a_capable_launcher_marked_as_the_admins() {
    let mut h = harness().await;
    let proxy = h.launcher("proxy-host", &["proxy"], 5, true).await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    let a = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    assert_eq!(a.launcher, "kv-host");
    assert_eq!(
        a.unit, "prism-pattern-kv-1.service",
        "the launcher's answer"
    );
    assert_eq!(kv.assigned_ids(), vec!["kv-1"]);
    assert_eq!(kv.script().assigned[0].1.as_deref(), Some("admin"));
    assert!(proxy.assigned_ids().is_empty());
    assert_eq!(
        h.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
}

#[tokio::test]
async fn a_type_no_launcher_runs_is_refused_naming_it() {
    let mut h = harness().await;
    h.launcher("proxy-host", &["proxy"], 5, true).await;
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::NoCandidate(NoCandidate::Unsupported(_))),
        "{err}"
    );
    assert!(err.to_string().contains("pattern"), "{err}");
    assert_eq!(h.placed_on("kv-1").await, None);
}

#[tokio::test]
async fn a_refusal_undoes_the_placement_and_is_in_the_history() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    kv.script().refuse.insert("kv-1".into());
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("config.binary"), "{err}");
    assert_eq!(h.placed_on("kv-1").await, None);
    let history = h.fleet.history("kv-1", 10).await.unwrap();
    assert_eq!(history[0].event, "refused", "{history:?}");
}

#[tokio::test]
async fn a_new_version_stays_on_its_launcher() {
    let mut h = harness().await;
    let a = h.launcher("a", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    let b = h.launcher("b", &["pattern"], 5, true).await;
    let placed = h
        .fleet
        .assign(assignment("kv-1", 2), None, None)
        .await
        .unwrap();
    assert_eq!(placed.launcher, "a");
    assert_eq!(a.assigned_ids().len(), 2);
    assert!(b.assigned_ids().is_empty());
}

#[tokio::test]
async fn an_unreachable_launcher_gets_its_assignment_when_it_is_back() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, false).await;
    let a = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap();
    assert!(a.message.contains("delivery pending"), "{}", a.message);
    assert!(h.pending("kv-host", "kv-1").await);
    h.up("kv-host");
    tokio::spawn(h.fleet.clone().delivery_loop(h.stopper.handle()));
    until(Duration::from_secs(10), "the delivery", || {
        let kv = kv.clone();
        async move { kv.assigned_ids() == vec!["kv-1".to_owned()] }
    })
    .await;
    until(Duration::from_secs(5), "the queue to empty", || async {
        !h.pending("kv-host", "kv-1").await
    })
    .await;
}

#[tokio::test]
async fn a_revocation_is_delivered_and_the_process_forgotten() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    let ack = h.fleet.revoke(revocation("kv-1")).await.unwrap();
    assert!(ack.success);
    assert!(ack.message.contains("(on kv-host)"), "{}", ack.message);
    assert_eq!(kv.script().revoked, vec!["kv-1"]);
    assert_eq!(h.placed_on("kv-1").await, None);
    h.fleet.flush().await;
    let history = h.fleet.history("kv-1", 10).await.unwrap();
    assert_eq!(history[0].event, "revoked", "{history:?}");
}

#[tokio::test]
async fn a_revocation_checks_its_fields_first() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    for (req, field) in [
        (pb::ProcessRevocation::default(), "process_id"),
        (
            pb::ProcessRevocation {
                process_id: "kv-1".into(),
                graceful_timeout_seconds: 7200,
                ..Default::default()
            },
            "graceful_timeout_seconds",
        ),
        (
            pb::ProcessRevocation {
                process_id: "kv-1".into(),
                launcher_id: "elsewhere".into(),
                ..Default::default()
            },
            "launcher_id",
        ),
    ] {
        let err = match Revocation::try_from(req) {
            Ok(r) => h.fleet.revoke(r).await.unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().starts_with(field), "{field}: {err}");
    }
    assert_eq!(
        h.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
    let err = h.fleet.revoke(revocation("nope")).await.unwrap_err();
    assert!(matches!(err, FleetError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn a_revocation_for_an_unreachable_launcher_is_recorded_and_finished_later() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    // The launcher goes away.
    h.down("kv-host").await;
    let err = h.fleet.revoke(revocation("kv-1")).await.unwrap_err();
    assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
    assert_eq!(
        h.placed_on("kv-1").await,
        Some(("kv-host".into(), PlacementState::Revoking))
    );
    let err = h
        .fleet
        .assign(assignment("kv-1", 2), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::Revoking { .. }), "{err}");
    h.up("kv-host");
    tokio::spawn(h.fleet.clone().delivery_loop(h.stopper.handle()));
    until(Duration::from_secs(10), "the revocation", || {
        let kv = kv.clone();
        async move { kv.script().revoked == vec!["kv-1".to_owned()] }
    })
    .await;
    until(Duration::from_secs(5), "the record to go", || async {
        h.placed_on("kv-1").await.is_none()
    })
    .await;
}

#[tokio::test]
async fn delivery_to_an_unreachable_launcher_backs_off_on_paused_time() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, false).await;
    h.place("kv-1", 1).await;
    // From here on, no store is written (a failed push only requeues): the
    // clock can be paused, and the delivery loop's timers run on it.
    tokio::time::pause();
    async fn attempts(h: &Harness) -> u32 {
        let st = h.fleet.state.lock().await;
        st.pending.of("kv-host").map(|(_, d)| d.attempts).sum()
    }
    tokio::spawn(h.fleet.clone().delivery_loop(h.stopper.handle()));
    let began = tokio::time::Instant::now();
    let mut seen = attempts(&h).await;
    let mut at = Vec::new();
    while began.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = attempts(&h).await;
        if now > seen {
            at.push(began.elapsed());
            seen = now;
        }
    }
    // 0.5 s doubling to 60 s, jittered: a handful of tries, further apart
    // each time, never a busy loop.
    assert!((4..=8).contains(&at.len()), "{at:?}");
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(at[0] <= Duration::from_secs(2), "{at:?}");
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(200)),
        "{gaps:?}"
    );
    assert!(gaps.last().unwrap() > gaps.first().unwrap(), "{gaps:?}");
    assert!(h.pending("kv-host", "kv-1").await, "still owed");
}

fn depending(id: &str, on: &str) -> Assignment {
    let mut w = spec(id, 1);
    w.config.as_mut().unwrap().depends_on = vec![pb::Dependency {
        process_id: on.into(),
        bind: true,
    }];
    Assignment::try_from((w, &Policy::structural())).expect("valid")
}

#[tokio::test]
async fn what_others_depend_on_is_not_revoked_and_takes_no_dependent_while_revoked() {
    let mut h = harness().await;
    let kv = h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("redis-1", 1).await;
    h.fleet
        .assign(depending("kv-1", "redis-1"), None, None)
        .await
        .expect("kv-1");
    let err = h.fleet.revoke(revocation("redis-1")).await.unwrap_err();
    assert!(matches!(err, FleetError::Needed { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "process redis-1 is needed by kv-1 (their config.depends_on); revoke them first, or \
         assign them a version without the dependency"
    );
    assert_eq!(
        h.placed_on("redis-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
    assert!(kv.script().revoked.is_empty());
    // In order: the dependent, then the dependency (recorded while its
    // launcher is away). Meanwhile nothing new may depend on it.
    h.fleet.revoke(revocation("kv-1")).await.expect("kv-1");
    h.down("kv-host").await;
    let err = h.fleet.revoke(revocation("redis-1")).await.unwrap_err();
    assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
    let err = h
        .fleet
        .assign(depending("kv-2", "redis-1"), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config.depends_on[0].process_id: process redis-1 is being revoked"
    );
}
