//! Launchers: registration, heartbeats and drift, liveness, draining, and
//! the admin's own restart.

use super::*;

#[tokio::test]
async fn registration_hands_back_what_is_placed_and_asks_for_what_was_lost() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    let address = format!("unix:{}", h.socket("kv-host").display());
    let mut reg = registration("kv-host", &address, &["pattern"], 5);
    reg.held = vec![
        pb::HeldProcess {
            process_id: "kv-1".into(),
            version: 1,
            recorded_at_ms: 1,
        },
        // Recorded by the launcher; this admin has no record of it.
        pb::HeldProcess {
            process_id: "lost-1".into(),
            version: 3,
            recorded_at_ms: crate::clock::unix_ms(),
        },
    ];
    let ack = h.fleet.register(checked(reg)).await.unwrap();
    let initial: Vec<&str> = ack
        .initial_processes
        .iter()
        .map(|p| p.process_id.as_str())
        .collect();
    assert_eq!(initial, vec!["kv-1"]);
    assert_eq!(ack.reclaim, vec!["lost-1"]);
    assert_eq!(ack.heartbeat_interval_ms, INTERVAL.as_millis() as i64);
    // Handed back: recorded on that launcher.
    let back = h
        .fleet
        .reclaim(Reclaim::from(pb::ReclaimRequest {
            launcher_id: "kv-host".into(),
            processes: vec![spec("lost-1", 3)],
        }))
        .await
        .unwrap();
    assert_eq!(back.recorded, vec!["lost-1"]);
    assert_eq!(
        h.placed_on("lost-1").await,
        Some(("kv-host".into(), PlacementState::Placed))
    );
    // Only what was asked for, only from that launcher.
    let other = h
        .fleet
        .reclaim(Reclaim::from(pb::ReclaimRequest {
            launcher_id: "kv-host".into(),
            processes: vec![spec("never-asked", 1)],
        }))
        .await
        .unwrap();
    assert!(other.recorded.is_empty());
    assert!(other.refused.contains_key("never-asked"));
    // One that fails the structural checks is refused alone, naming why.
    let mut bad = spec("bad-1", 1);
    bad.namespace = "not a token".into();
    let mixed = h
        .fleet
        .reclaim(Reclaim::from(pb::ReclaimRequest {
            launcher_id: "kv-host".into(),
            processes: vec![bad],
        }))
        .await
        .unwrap();
    assert!(mixed.refused["bad-1"].starts_with("namespace"), "{mixed:?}");
}

#[tokio::test]
async fn a_registration_with_a_bad_field_names_it_and_records_nothing() {
    let h = harness().await;
    let good = registration("kv-host", "unix:/run/prism/launcher.sock", &["pattern"], 5);
    type Edit = fn(&mut pb::LauncherRegistration);
    let cases: Vec<(&str, Edit)> = vec![
        ("launcher_id", |r| r.launcher_id = "no spaces".into()),
        ("address", |r| r.address = "unix:relative.sock".into()),
        ("address", |r| {
            r.address = format!("unix:/{}", "a".repeat(300))
        }),
        ("region", |r| r.region = "eu west".into()),
        ("version", |r| r.version = "1\n2".into()),
        ("max_processes", |r| r.max_processes = 0),
        ("process_types", |r| {
            r.process_types = vec!["database".into()]
        }),
        ("process_types", |r| {
            r.process_types.clear();
            r.capabilities = vec!["gpu".into()];
        }),
        ("metadata", |r| {
            r.metadata = (0..40).map(|i| (format!("k{i}"), "v".into())).collect()
        }),
        ("held", |r| {
            r.held = vec![pb::HeldProcess {
                process_id: "bad id".into(),
                ..Default::default()
            }]
        }),
    ];
    for (field, edit) in cases {
        let mut reg = good.clone();
        edit(&mut reg);
        let err = Registration::try_from(reg).unwrap_err();
        assert!(
            matches!(&err, FleetError::BadRequest { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
    assert!(h.fleet.state.lock().await.launchers.is_empty());
    h.fleet.register(checked(good)).await.unwrap();
}

#[tokio::test]
async fn a_heartbeat_from_a_launcher_not_registered_here_asks_it_to_register() {
    let h = harness().await;
    let ack = h
        .fleet
        .heartbeat(Heartbeat::from(pb::LauncherHeartbeatRequest {
            launcher_id: "stranger".into(),
            ..Default::default()
        }))
        .await;
    assert!(!ack.success);
    assert!(ack.reregister);
    assert!(ack.message.contains("register"), "{}", ack.message);
}

#[test]
fn liveness_turns_at_three_and_six_missed_heartbeats() {
    let i = Duration::from_secs(10);
    let ms = |d: Duration| d.as_millis() as i64;
    let cases = [
        (0, Liveness::Healthy),
        (ms(i * 3) - 1, Liveness::Healthy),
        (ms(i * 3), Liveness::Unhealthy),
        (ms(i * 6) - 1, Liveness::Unhealthy),
        (ms(i * 6), Liveness::Disconnected),
        // A heartbeat stamped ahead of the admin's clock is fresh.
        (-5_000, Liveness::Healthy),
    ];
    for (silent, expected) in cases {
        assert_eq!(
            placement::liveness(1_000_000 - silent, 1_000_000, i),
            expected,
            "silent {silent} ms"
        );
    }
}

#[tokio::test]
async fn an_unhealthy_launcher_gets_nothing_new_until_it_heartbeats() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    h.silence("kv-host", 3).await;
    h.fleet.judge_liveness(crate::clock::unix_ms()).await;
    assert_eq!(
        h.fleet.state.lock().await.last_liveness["kv-host"],
        Liveness::Unhealthy
    );
    let err = h
        .fleet
        .assign(assignment("kv-1", 1), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::NoCandidate(_)), "{err}");
    h.fleet
        .heartbeat(Heartbeat::from(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            ..Default::default()
        }))
        .await;
    h.fleet.judge_liveness(crate::clock::unix_ms()).await;
    assert_eq!(
        h.fleet.state.lock().await.last_liveness["kv-host"],
        Liveness::Healthy
    );
    h.place("kv-1", 1).await;
}

/// `on_disconnect` of a test process: stop after, replace after (seconds),
/// at least once; a graceful stop of 10 s.
fn disconnecting(stop: Option<i64>, replace: Option<i64>, twice: bool) -> Assignment {
    let mut wire = spec("kv-1", 1);
    let config = wire.config.as_mut().expect("config");
    config.graceful_timeout_seconds = 10;
    config.on_disconnect = Some(pb::OnDisconnect {
        stop_after_ms: stop.map(|s| s * 1000),
        replace_after_ms: replace.map(|s| s * 1000),
        at_least_once: twice,
    });
    Assignment::try_from((wire, &Policy::structural())).expect("valid")
}

#[tokio::test]
async fn processes_of_a_disconnected_launcher_move_only_when_they_allow_it() {
    // Intervals are 10 s, the lease 5 s: a stop after 30 s with a 10 s
    // graceful stop leaves no overlap past 30 + 10 + 10 + 5 = 55 s.
    let fleet_wide = |s: u64| Some(Duration::from_secs(s));
    let cases = [
        // (fleet-wide replace_after, process, silent intervals, moves)
        (None, disconnecting(None, None, false), 7, false),
        // Fleet-wide replacement skips a process that never stops itself.
        (fleet_wide(1), assignment("kv-1", 1), 7, false),
        (fleet_wide(1), disconnecting(None, None, true), 7, true),
        (
            fleet_wide(56),
            disconnecting(Some(30), None, false),
            7,
            true,
        ),
        (
            fleet_wide(56),
            disconnecting(Some(30), None, false),
            5,
            false,
        ),
        (
            fleet_wide(50),
            disconnecting(Some(30), None, false),
            7,
            false,
        ),
        // Its own replace_after wins, and only counts once disconnected.
        (None, disconnecting(Some(30), Some(56), false), 6, true),
        (None, disconnecting(Some(30), Some(80), false), 7, false),
        (None, disconnecting(Some(30), Some(80), false), 9, true),
    ];
    for (i, (fleet, process, silent, moves)) in cases.into_iter().enumerate() {
        let mut h = harness_with(fleet).await;
        h.launcher("a", &["pattern"], 5, true).await;
        h.fleet.assign(process, None, None).await.expect("placed");
        h.launcher("b", &["pattern"], 5, true).await;
        h.silence("a", silent).await;
        h.fleet.judge_liveness(crate::clock::unix_ms()).await;
        let on = h.placed_on("kv-1").await.unwrap().0;
        assert_eq!(on == "b", moves, "case {i}: on {on}");
        assert_eq!(h.pending("b", "kv-1").await, moves, "case {i}");
    }
}

#[tokio::test]
async fn a_replacement_that_could_overlap_is_refused_naming_both_fields_and_the_margin() {
    let mut h = harness().await;
    h.launcher("a", &["pattern"], 5, true).await;
    let e = h
        .fleet
        .assign(disconnecting(Some(30), Some(55), false), None, None)
        .await
        .unwrap_err();
    let status = crate::admin::service::to_status(e);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let m = status.message();
    assert!(
        m.starts_with("config.on_disconnect.replace_after_ms: 55s"),
        "{m}"
    );
    assert!(
        m.contains("config.on_disconnect.stop_after_ms (30s)"),
        "{m}"
    );
    assert!(m.contains("= 55s"), "{m}");
    // A stop sooner than three heartbeats would stop it between two.
    let e = h
        .fleet
        .assign(disconnecting(Some(20), None, false), None, None)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("config.on_disconnect.stop_after_ms: 20000 ms is shorter than three"),
        "{e}"
    );
    // Nothing was placed.
    assert!(h.placed_on("kv-1").await.is_none());
}

#[tokio::test]
async fn a_draining_launcher_gets_nothing_new_and_moves_its_processes() {
    let mut h = harness().await;
    h.launcher("a", &["pattern"], 5, true).await;
    h.place("kv-1", 1).await;
    let b = h.launcher("b", &["pattern"], 5, true).await;
    h.fleet.set_draining("a", true).await.unwrap();
    let placed = h
        .fleet
        .assign(assignment("kv-2", 1), None, None)
        .await
        .unwrap();
    assert_eq!(placed.launcher, "b");
    let moved = h.fleet.move_processes("a").await.unwrap();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(h.placed_on("kv-1").await.unwrap().0, "b");
    tokio::spawn(h.fleet.clone().delivery_loop(h.stopper.handle()));
    until(Duration::from_secs(10), "the move's delivery", || {
        let b = b.clone();
        async move { b.assigned_ids().contains(&"kv-1".to_owned()) }
    })
    .await;
}

#[tokio::test]
async fn placements_survive_an_admin_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kv.sock");
    let fake = FakeLauncher::default();
    let _serving = fake.serve(&socket);
    let address = format!("unix:{}", socket.display());
    {
        let fleet = open_fleet(dir.path()).await;
        fleet
            .register(checked(registration("kv-host", &address, &["pattern"], 5)))
            .await
            .unwrap();
        fleet
            .assign(assignment("kv-1", 1), None, None)
            .await
            .unwrap();
        fleet.flush().await;
    }
    let fleet = open_fleet(dir.path()).await;
    let st = fleet.state.lock().await;
    assert_eq!(st.processes["kv-1"].launcher_id.as_deref(), Some("kv-host"));
    assert!(st.launchers.contains_key("kv-host"));
    // Not registered with this admin process yet: asked to register.
    assert!(!st.registered.contains("kv-host"));
}

#[tokio::test]
async fn liveness_follows_missed_heartbeats_on_paused_time() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    // Judging liveness writes nothing: the clock can be paused from here.
    tokio::time::pause();
    tokio::spawn(h.fleet.clone().liveness_loop(h.stopper.handle()));
    let liveness = |h: &Harness| {
        let fleet = h.fleet.clone();
        async move {
            fleet
                .state
                .lock()
                .await
                .last_liveness
                .get("kv-host")
                .copied()
        }
    };
    // Judged every half interval; 3 missed heartbeats make it unhealthy, 6
    // lost.
    tokio::time::sleep(INTERVAL * 3 - INTERVAL / 4).await;
    assert_eq!(liveness(&h).await, Some(Liveness::Healthy));
    tokio::time::sleep(INTERVAL / 2).await;
    assert_eq!(liveness(&h).await, Some(Liveness::Unhealthy));
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(liveness(&h).await, Some(Liveness::Disconnected));
    // One heartbeat, and the next pass finds it healthy again.
    h.fleet
        .heartbeat(Heartbeat::from(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            ..Default::default()
        }))
        .await;
    tokio::time::sleep(INTERVAL / 2 + Duration::from_millis(1)).await;
    assert_eq!(liveness(&h).await, Some(Liveness::Healthy));
}

#[tokio::test]
async fn a_launchers_heartbeat_is_stored_once_an_interval_for_followers() {
    let mut h = harness().await;
    h.launcher("kv-host", &["pattern"], 5, true).await;
    let beat = || {
        Heartbeat::from(pb::LauncherHeartbeatRequest {
            launcher_id: "kv-host".into(),
            ..Default::default()
        })
    };
    // Whether the last heartbeat is to be written with the next batch.
    let batched = |h: &Harness| {
        h.fleet
            .batch
            .lock()
            .unwrap()
            .launchers
            .contains_key("kv-host")
    };
    h.fleet.heartbeat(beat()).await;
    assert!(batched(&h), "the first is stored");
    h.fleet.flush().await;
    // Within the interval: in memory only.
    h.fleet.heartbeat(beat()).await;
    assert!(!batched(&h));
    // An interval after the last one stored: stored again.
    {
        let mut st = h.fleet.state.lock().await;
        let at = st.stored_heartbeat["kv-host"];
        st.stored_heartbeat
            .insert("kv-host".into(), at - INTERVAL.as_millis() as i64);
    }
    h.fleet.heartbeat(beat()).await;
    assert!(batched(&h));
    h.fleet.flush().await;
    // A follower's view judges liveness by what was stored.
    let latest = h.fleet.state.lock().await.launchers["kv-host"].last_heartbeat_ms;
    let view = Fleet::view(h.fleet.store.clone(), INTERVAL).await.unwrap();
    assert_eq!(
        view.state.lock().await.launchers["kv-host"].last_heartbeat_ms,
        latest
    );
}
