//! A rollout's next step: a pure function of what is stored (the rollout
//! and its processes' rows) and what the admin observes now (each
//! process's latest report, its launcher's liveness). The controller
//! carries the actions out, writing each to the store before acting, so a
//! new leader plans from the same rows and never updates a process twice.
//!
//! Batches are strict: batch k+1 starts when every process of batch k is
//! healthy (or gone, or waiting on a launcher that is not healthy), so at
//! most `max_parallel` processes are ever updating, whichever admin leads.

use std::time::Duration;

use crate::admin::placement::Liveness;

/// A rollout's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Running,
    /// The canaries are healthy: an operator promotes or aborts.
    AwaitingPromotion,
    /// A process failed (or an operator paused it): no batch starts.
    Paused,
    /// Going back: each process it updated returns to its old version.
    Reverting,
    Completed,
    Aborted,
    Reverted,
    /// A revert that failed, or nothing left to update.
    Failed,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Running,
        State::AwaitingPromotion,
        State::Paused,
        State::Reverting,
        State::Completed,
        State::Aborted,
        State::Reverted,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::AwaitingPromotion => "awaiting_promotion",
            State::Paused => "paused",
            State::Reverting => "reverting",
            State::Completed => "completed",
            State::Aborted => "aborted",
            State::Reverted => "reverted",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Nothing more happens to it; its processes are free.
    pub fn finished(self) -> bool {
        matches!(
            self,
            State::Completed | State::Aborted | State::Reverted | State::Failed
        )
    }
}

/// One process's place in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowState {
    /// Not updated yet.
    Pending,
    /// Its new version is stored (and pushed): being judged.
    Updating,
    /// Updated, but its launcher stopped reporting: judged when it is back.
    Waiting,
    Healthy,
    Failed,
    /// Its old version is stored again (at a newer version number).
    Reverting,
    Reverted,
    /// Revoked meanwhile: nothing to update.
    Gone,
}

impl RowState {
    pub const ALL: [RowState; 8] = [
        RowState::Pending,
        RowState::Updating,
        RowState::Waiting,
        RowState::Healthy,
        RowState::Failed,
        RowState::Reverting,
        RowState::Reverted,
        RowState::Gone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Updating => "updating",
            RowState::Waiting => "waiting",
            RowState::Healthy => "healthy",
            RowState::Failed => "failed",
            RowState::Reverting => "reverting",
            RowState::Reverted => "reverted",
            RowState::Gone => "gone",
        }
    }

    pub fn parse(s: &str) -> Option<RowState> {
        RowState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// How a rollout goes (defaults filled in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    pub max_parallel: usize,
    pub min_healthy: Duration,
    pub deadline: Duration,
    pub canary: usize,
    pub auto_revert: bool,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            max_parallel: 1,
            min_healthy: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
            canary: 0,
            auto_revert: false,
        }
    }
}

/// A process's row, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub process_id: String,
    pub state: RowState,
    /// 0 until updated; canaries are batch 1.
    pub batch: u32,
    /// The version it had, and the one the rollout gives it.
    pub from_version: i64,
    pub to_version: i64,
    /// Set while reverting: the version its old spec is stored at.
    pub revert_version: Option<i64>,
    /// When its update (or revert) was stored; the deadline counts from
    /// here, less the time spent waiting for its launcher.
    pub started_at_ms: i64,
}

/// What the admin knows of a process now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The version placed (stored): another change (a refused push
    /// restored, a revocation) shows here.
    pub placed_version: Option<i64>,
    /// Its launcher's latest report, if any since this admin leads.
    pub reported: Option<Report>,
    pub launcher: Liveness,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub version: i64,
    /// running (active, probe passing), starting, failed, circuit_open…
    pub status: String,
    pub pid: i32,
    pub restart_count: i32,
    pub last_error: String,
}

/// What the controller keeps in memory per row: since when it has been
/// seen healthy, unchanged (a new leader starts counting again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Healthy {
    pub since_ms: i64,
    pub pid: i32,
    pub restart_count: i32,
}

/// One thing to do. The controller stores each before it acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Store these processes' new version (rows `updating`, batch `batch`)
    /// and push them.
    Update { ids: Vec<String>, batch: u32 },
    /// Store these processes' old spec again (rows `reverting`).
    Revert { ids: Vec<String> },
    /// A row changes state (with why). One back to `updating` (its
    /// launcher back) starts its deadline afresh.
    Mark {
        id: String,
        state: RowState,
        detail: String,
    },
    /// Start counting a row healthy (memory only).
    Watch { id: String, healthy: Healthy },
    /// Stop counting (a restart, a change of status).
    Unwatch { id: String },
    /// The rollout changes state (with why).
    Become { state: State, message: String },
}

/// A row's verdict from what is observed.
fn judge(
    row: &Row,
    target: i64,
    seen: &Observed,
    healthy: Option<&Healthy>,
    pacing: &Pacing,
    now_ms: i64,
) -> Vec<Action> {
    let id = row.process_id.clone();
    if seen.placed_version.is_none() {
        return vec![Action::Mark {
            id,
            state: RowState::Gone,
            detail: "revoked during the rollout".into(),
        }];
    }
    if seen.placed_version != Some(target) {
        return vec![Action::Mark {
            id,
            state: RowState::Failed,
            detail: format!(
                "v{} is placed, not v{target} (its launcher refused it, or it was changed meanwhile)",
                seen.placed_version.unwrap_or_default()
            ),
        }];
    }
    if seen.launcher != Liveness::Healthy {
        return vec![
            Action::Unwatch { id: id.clone() },
            Action::Mark {
                id,
                state: RowState::Waiting,
                detail: format!("its launcher is {}", seen.launcher.as_str()),
            },
        ];
    }
    let overdue = now_ms - row.started_at_ms >= pacing.deadline.as_millis() as i64;
    let report = seen.reported.as_ref().filter(|r| r.version == target);
    match report {
        Some(r) if matches!(r.status.as_str(), "failed" | "circuit_open") => {
            let why = if r.last_error.is_empty() {
                r.status.clone()
            } else {
                format!("{}: {}", r.status, r.last_error)
            };
            vec![
                Action::Unwatch { id: id.clone() },
                Action::Mark {
                    id,
                    state: RowState::Failed,
                    detail: format!("v{target} {why}"),
                },
            ]
        }
        Some(r) if r.status == "running" => match healthy {
            Some(h) if h.pid == r.pid && h.restart_count == r.restart_count => {
                if now_ms - h.since_ms >= pacing.min_healthy.as_millis() as i64 {
                    vec![Action::Mark {
                        id,
                        state: if row.state == RowState::Reverting {
                            RowState::Reverted
                        } else {
                            RowState::Healthy
                        },
                        detail: format!(
                            "v{target} running for {:?}",
                            Duration::from_millis((now_ms - h.since_ms) as u64)
                        ),
                    }]
                } else if overdue {
                    vec![overdue_failure(id, target, pacing)]
                } else {
                    vec![]
                }
            }
            // Not seen running before, or restarted since: count afresh.
            _ if overdue => vec![overdue_failure(id, target, pacing)],
            _ => vec![Action::Watch {
                id,
                healthy: Healthy {
                    since_ms: now_ms,
                    pid: r.pid,
                    restart_count: r.restart_count,
                },
            }],
        },
        _ if overdue => vec![
            Action::Unwatch { id: id.clone() },
            overdue_failure(id, target, pacing),
        ],
        // Starting, restarting, or still at the old version: not yet.
        _ => match healthy {
            Some(_) => vec![Action::Unwatch { id }],
            None => vec![],
        },
    }
}

fn overdue_failure(id: String, target: i64, pacing: &Pacing) -> Action {
    Action::Mark {
        id,
        state: RowState::Failed,
        detail: format!(
            "v{target} not healthy for {:?} within the healthy deadline ({:?})",
            pacing.min_healthy, pacing.deadline
        ),
    }
}

/// The next actions of a rollout in `state` (its canaries `promoted` or
/// not), with `rows` in update order.
/// `observe(id)` is what the admin knows of a process now; `healthy(id)`
/// what the controller counts in memory.
pub fn step<'a>(
    state: State,
    promoted: bool,
    pacing: &Pacing,
    rows: &'a [Row],
    observe: impl Fn(&str) -> Observed,
    healthy: impl Fn(&str) -> Option<&'a Healthy>,
    now_ms: i64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if state.finished() {
        return actions;
    }
    // Judge what is in flight, whatever the state (a paused rollout still
    // learns how its updating processes fare).
    for row in rows {
        let target = match row.state {
            RowState::Updating => row.to_version,
            RowState::Reverting => row.revert_version.unwrap_or(row.to_version),
            RowState::Waiting => {
                let seen = observe(&row.process_id);
                if seen.launcher == Liveness::Healthy {
                    actions.push(Action::Mark {
                        id: row.process_id.clone(),
                        state: RowState::Updating,
                        detail: "its launcher is back".into(),
                    });
                }
                continue;
            }
            _ => continue,
        };
        let seen = observe(&row.process_id);
        actions.extend(judge(
            row,
            target,
            &seen,
            healthy(&row.process_id),
            pacing,
            now_ms,
        ));
    }
    // What the rows will be once those verdicts are stored.
    let after = |row: &Row| {
        actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Mark { id, state, .. } if *id == row.process_id => Some(*state),
                _ => None,
            })
            .unwrap_or(row.state)
    };
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| after(r) == RowState::Failed)
        .collect();
    let in_flight = rows
        .iter()
        .filter(|r| matches!(after(r), RowState::Updating | RowState::Reverting))
        .count();
    match state {
        State::Reverting => {
            // Each updated process goes back, max_parallel at a time.
            let reverting = rows
                .iter()
                .filter(|r| after(r) == RowState::Reverting)
                .count();
            let due: Vec<String> = rows
                .iter()
                .filter(|r| {
                    r.revert_version.is_none()
                        && r.batch > 0
                        && matches!(
                            after(r),
                            RowState::Updating
                                | RowState::Healthy
                                | RowState::Failed
                                | RowState::Waiting
                        )
                })
                .take(pacing.max_parallel.saturating_sub(reverting))
                .map(|r| r.process_id.clone())
                .collect();
            if !due.is_empty() {
                actions.push(Action::Revert { ids: due });
            } else if reverting == 0 {
                let stuck = rows
                    .iter()
                    .filter(|r| r.revert_version.is_some() && after(r) == RowState::Failed)
                    .count();
                actions.push(if stuck > 0 {
                    Action::Become {
                        state: State::Failed,
                        message: format!(
                            "{stuck} processes did not come back healthy at their old version"
                        ),
                    }
                } else {
                    Action::Become {
                        state: State::Reverted,
                        message: "every process updated is back at its old version".into(),
                    }
                });
            }
        }
        State::Running | State::AwaitingPromotion | State::Paused => {
            let newly_failed = failed
                .iter()
                .find(|r| r.state != RowState::Failed)
                .map(|r| r.process_id.clone());
            if let Some(id) = newly_failed {
                actions.push(if pacing.auto_revert {
                    Action::Become {
                        state: State::Reverting,
                        message: format!("{id} failed: reverting"),
                    }
                } else {
                    Action::Become {
                        state: State::Paused,
                        message: format!("{id} failed: paused (resume to go on, or abort)"),
                    }
                });
                return actions;
            }
            if state != State::Running || in_flight > 0 {
                return actions;
            }
            let healthy_rows = rows
                .iter()
                .filter(|r| after(r) == RowState::Healthy)
                .count();
            let batch = rows.iter().map(|r| r.batch).max().unwrap_or(0);
            let pending: Vec<&Row> = rows
                .iter()
                .filter(|r| after(r) == RowState::Pending)
                .collect();
            if pending.is_empty() {
                let waiting = rows
                    .iter()
                    .filter(|r| after(r) == RowState::Waiting)
                    .count();
                if waiting == 0 {
                    actions.push(Action::Become {
                        state: State::Completed,
                        message: format!("{healthy_rows} processes updated and healthy"),
                    });
                }
                return actions;
            }
            let mut size = pacing.max_parallel;
            let canaries = pacing.canary.min(rows.len());
            if canaries > 0 && !promoted {
                let updated = rows.iter().filter(|r| r.batch > 0).count();
                if updated >= canaries {
                    actions.push(Action::Become {
                        state: State::AwaitingPromotion,
                        message: format!(
                            "{canaries} canaries healthy: promote to update the other {}, or abort",
                            pending.len()
                        ),
                    });
                    return actions;
                }
                size = size.min(canaries - updated);
            }
            let ids: Vec<String> = pending
                .iter()
                .filter(|r| observe(&r.process_id).launcher == Liveness::Healthy)
                .take(size)
                .map(|r| r.process_id.clone())
                .collect();
            if !ids.is_empty() {
                actions.push(Action::Update {
                    ids,
                    batch: batch + 1,
                });
            }
        }
        _ => {}
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A rollout of `n` processes at v1 → v2, with what the admin sees of
    /// each, carried out as the controller would (memory only).
    struct Sim {
        state: State,
        promoted: bool,
        pacing: Pacing,
        rows: Vec<Row>,
        seen: HashMap<String, Observed>,
        healthy: HashMap<String, Healthy>,
        now: i64,
        /// Updates pushed, by process: never twice.
        pushed: HashMap<String, u32>,
        /// The most updating at once.
        most_in_flight: usize,
    }

    fn running(version: i64, pid: i32) -> Report {
        Report {
            version,
            status: "running".into(),
            pid,
            restart_count: 0,
            last_error: String::new(),
        }
    }

    impl Sim {
        fn new(n: usize, pacing: Pacing) -> Sim {
            let rows = (0..n)
                .map(|i| Row {
                    process_id: format!("p{i}"),
                    state: RowState::Pending,
                    batch: 0,
                    from_version: 1,
                    to_version: 2,
                    revert_version: None,
                    started_at_ms: 0,
                })
                .collect();
            let seen = (0..n)
                .map(|i| {
                    (
                        format!("p{i}"),
                        Observed {
                            placed_version: Some(1),
                            reported: Some(running(1, 100 + i as i32)),
                            launcher: Liveness::Healthy,
                        },
                    )
                })
                .collect();
            Sim {
                state: State::Running,
                promoted: false,
                pacing,
                rows,
                seen,
                healthy: HashMap::new(),
                now: 1_000,
                pushed: HashMap::new(),
                most_in_flight: 0,
            }
        }

        fn step(&mut self) -> Vec<Action> {
            let actions = step(
                self.state,
                self.promoted,
                &self.pacing,
                &self.rows,
                |id| self.seen[id].clone(),
                |id| self.healthy.get(id),
                self.now,
            );
            for a in &actions {
                match a {
                    Action::Update { ids, batch } => {
                        for id in ids {
                            let row = self.rows.iter_mut().find(|r| r.process_id == *id).unwrap();
                            assert_eq!(row.state, RowState::Pending, "{id} updated twice");
                            row.state = RowState::Updating;
                            row.batch = *batch;
                            row.started_at_ms = self.now;
                            self.seen.get_mut(id).unwrap().placed_version = Some(2);
                            *self.pushed.entry(id.clone()).or_default() += 1;
                        }
                    }
                    Action::Revert { ids } => {
                        for id in ids {
                            let row = self.rows.iter_mut().find(|r| r.process_id == *id).unwrap();
                            row.state = RowState::Reverting;
                            row.revert_version = Some(3);
                            row.started_at_ms = self.now;
                            self.seen.get_mut(id).unwrap().placed_version = Some(3);
                        }
                    }
                    Action::Mark { id, state, .. } => {
                        let row = self.rows.iter_mut().find(|r| r.process_id == *id).unwrap();
                        if *state == RowState::Updating {
                            row.started_at_ms = self.now;
                        }
                        row.state = *state;
                    }
                    Action::Watch { id, healthy } => {
                        self.healthy.insert(id.clone(), *healthy);
                    }
                    Action::Unwatch { id } => {
                        self.healthy.remove(id);
                    }
                    Action::Become { state, .. } => self.state = *state,
                }
            }
            let in_flight = self
                .rows
                .iter()
                .filter(|r| matches!(r.state, RowState::Updating | RowState::Reverting))
                .count();
            self.most_in_flight = self.most_in_flight.max(in_flight);
            actions
        }

        /// Time passes; each launcher reports what is placed as running,
        /// unless `bad` says that version fails.
        fn tick(&mut self, bad: Option<i64>) {
            self.now += 1_000;
            for (id, seen) in self.seen.iter_mut() {
                if seen.launcher != Liveness::Healthy {
                    continue;
                }
                let v = seen.placed_version.unwrap();
                seen.reported = Some(if Some(v) == bad {
                    Report {
                        status: "failed".into(),
                        last_error: "exited 1".into(),
                        ..running(v, 0)
                    }
                } else {
                    running(v, 200 + id[1..].parse::<i32>().unwrap())
                });
            }
            self.step();
        }

        fn count(&self, state: RowState) -> usize {
            self.rows.iter().filter(|r| r.state == state).count()
        }
    }

    fn pacing(max_parallel: usize) -> Pacing {
        Pacing {
            max_parallel,
            min_healthy: Duration::from_secs(2),
            ..Pacing::default()
        }
    }

    #[test]
    fn a_good_version_completes_in_batches_of_at_most_max_parallel() {
        let mut sim = Sim::new(10, pacing(3));
        for _ in 0..100 {
            if sim.state.finished() {
                break;
            }
            sim.tick(None);
        }
        assert_eq!(sim.state, State::Completed);
        assert_eq!(sim.count(RowState::Healthy), 10);
        assert_eq!(sim.most_in_flight, 3);
        assert!(sim.pushed.values().all(|n| *n == 1));
        // Batches 1..=4 of 3, 3, 3, 1.
        assert_eq!(sim.rows.iter().map(|r| r.batch).max(), Some(4));
    }

    #[test]
    fn a_process_counts_healthy_only_after_min_healthy_time_unchanged() {
        let mut sim = Sim::new(1, pacing(1));
        sim.step();
        assert_eq!(sim.rows[0].state, RowState::Updating);
        sim.tick(None);
        assert!(sim.healthy.contains_key("p0"));
        // A restart (a new pid) starts the count again.
        sim.seen.get_mut("p0").unwrap().reported = Some(running(2, 999));
        sim.now += 1_500;
        sim.step();
        assert_eq!(sim.rows[0].state, RowState::Updating);
        sim.now += 1_500;
        sim.step();
        assert_eq!(
            sim.rows[0].state,
            RowState::Updating,
            "1.5 s since the restart"
        );
        sim.now += 1_000;
        sim.step();
        assert_eq!(sim.rows[0].state, RowState::Healthy);
    }

    #[test]
    fn a_bad_canary_stops_the_rollout_and_nothing_else_changes() {
        let mut sim = Sim::new(
            5,
            Pacing {
                canary: 1,
                ..pacing(2)
            },
        );
        sim.step();
        assert_eq!(sim.count(RowState::Updating), 1, "the canary alone");
        sim.tick(Some(2));
        assert_eq!(sim.state, State::Paused);
        assert_eq!(sim.count(RowState::Failed), 1);
        assert_eq!(sim.count(RowState::Pending), 4);
        for _ in 0..10 {
            sim.tick(Some(2));
        }
        assert_eq!(sim.count(RowState::Pending), 4, "paused: nothing more");
    }

    #[test]
    fn healthy_canaries_await_promotion_then_the_rest_follow() {
        let mut sim = Sim::new(
            5,
            Pacing {
                canary: 2,
                ..pacing(1)
            },
        );
        for _ in 0..20 {
            sim.tick(None);
        }
        assert_eq!(sim.state, State::AwaitingPromotion);
        assert_eq!(sim.count(RowState::Healthy), 2);
        assert_eq!(
            sim.most_in_flight, 1,
            "canaries too go max_parallel at a time"
        );
        sim.state = State::Running;
        sim.promoted = true;
        for _ in 0..30 {
            sim.tick(None);
        }
        assert_eq!(sim.state, State::Completed);
        assert_eq!(sim.count(RowState::Healthy), 5);
    }

    #[test]
    fn auto_revert_takes_the_first_batch_back_and_the_rest_never_change() {
        let mut sim = Sim::new(
            6,
            Pacing {
                auto_revert: true,
                ..pacing(2)
            },
        );
        sim.step();
        sim.tick(Some(2));
        assert_eq!(sim.state, State::Reverting);
        for _ in 0..10 {
            sim.tick(Some(2));
        }
        assert_eq!(sim.state, State::Reverted);
        assert_eq!(sim.count(RowState::Reverted), 2);
        assert_eq!(sim.count(RowState::Pending), 4);
        assert!(
            sim.rows
                .iter()
                .filter(|r| r.batch == 0)
                .all(|r| r.revert_version.is_none())
        );
    }

    #[test]
    fn a_disconnected_launcher_waits_and_is_finished_when_back() {
        let mut sim = Sim::new(4, pacing(2));
        sim.step();
        // p0 updating; its launcher drops off.
        sim.seen.get_mut("p0").unwrap().launcher = Liveness::Disconnected;
        for _ in 0..10 {
            sim.tick(None);
        }
        assert_eq!(sim.rows[0].state, RowState::Waiting);
        assert_eq!(sim.count(RowState::Healthy), 3, "the others went on");
        assert_eq!(sim.state, State::Running, "not completed without p0");
        sim.seen.get_mut("p0").unwrap().launcher = Liveness::Healthy;
        for _ in 0..10 {
            sim.tick(None);
        }
        assert_eq!(sim.state, State::Completed);
        assert_eq!(sim.pushed["p0"], 1, "never pushed again");
    }

    #[test]
    fn a_new_leader_plans_from_the_stored_rows_and_updates_nothing_twice() {
        let mut sim = Sim::new(6, pacing(2));
        sim.step();
        sim.tick(None);
        // The leader dies: memory (healthy counts) is lost, rows are kept.
        sim.healthy.clear();
        for _ in 0..30 {
            sim.tick(None);
        }
        assert_eq!(sim.state, State::Completed);
        assert!(sim.pushed.values().all(|n| *n == 1));
        assert_eq!(sim.most_in_flight, 2);
    }

    #[test]
    fn a_process_not_healthy_by_the_deadline_fails() {
        let mut sim = Sim::new(
            1,
            Pacing {
                deadline: Duration::from_secs(5),
                ..pacing(1)
            },
        );
        sim.step();
        // It never reports the new version.
        for _ in 0..6 {
            sim.now += 1_000;
            sim.step();
        }
        assert_eq!(sim.rows[0].state, RowState::Failed);
        assert_eq!(sim.state, State::Paused);
    }

    #[test]
    fn states_read_back() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        for s in RowState::ALL {
            assert_eq!(RowState::parse(s.as_str()), Some(s));
        }
    }
}
