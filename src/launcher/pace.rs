//! A growing restart delay on a manager older than systemd 254.
//!
//! systemd 254 grows the delay between restarts in a row itself
//! (`RestartSteps=`, `RestartMaxDelaySec=`). systemd 252 (Debian 12) has
//! neither and refuses a new `RestartUSec=` on a loaded unit, so the delay
//! cannot be raised there after each restart either. So there the unit gets
//! the policy's longest delay as `RestartUSec=` (`unit::for_manager`): with
//! the launcher down, systemd still restarts it, after that. The launcher,
//! which sees the unit enter `auto-restart`, restarts it sooner, after the
//! delay on the same curve (`RestartPolicy::delay_of`), by `RestartUnit`,
//! which ends the wait. A run that lasts as long as the start-limit window
//! (or the longest delay, if longer) starts the curve again.
//!
//! systemd counts these restarts against the unit's start limit like its
//! own, but not in `NRestarts`: the launcher counts them, so the restart
//! count and the start-limit verdict stay right.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

use super::supervisor::{Entry, Supervisor};
use crate::{health::Phase, model::RestartPolicy, systemd::SystemdError};

/// A delay this close to the longest (a tenth of it, at least 250 ms) is
/// left to systemd's own timer, which was armed before the launcher heard.
fn leave_to_systemd(longest: Duration) -> Duration {
    (longest / 10).max(Duration::from_millis(250))
}

/// Episodes are numbered across all units and entries, so a restart
/// scheduled for one never matches another.
static EPISODES: AtomicU64 = AtomicU64::new(1);

/// The pace of one unit's restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// Restarts in a row so far: the next one's step on the curve.
    pub step: u32,
    /// Restarts the launcher made (or tried) in this unit, which systemd's
    /// `NRestarts` leaves out.
    pub restarts: u32,
    /// Which wait in `auto-restart` a scheduled restart is for; unique, so
    /// a restart scheduled for an older unit or wait does nothing.
    pub episode: u64,
    /// Since when the process has been seen running.
    pub running_since: Option<Instant>,
}

impl Pace {
    /// The unit is running (seen at `now`).
    pub fn running(&mut self, now: Instant) {
        self.running_since.get_or_insert(now);
    }

    /// The unit stopped other than to be restarted by systemd (a probe's
    /// restart, a stop): the next run is measured anew.
    pub fn stopped(&mut self) {
        self.running_since = None;
    }

    /// The unit entered `auto-restart` at `now`: how long the launcher waits
    /// before restarting it, if it should not leave that to systemd's
    /// timer at the longest delay.
    pub fn next(&mut self, policy: &RestartPolicy, now: Instant) -> Option<Duration> {
        self.episode = EPISODES.fetch_add(1, Ordering::Relaxed);
        let ran = self.running_since.take().map(|t| now.duration_since(t));
        let longest = policy.max_delay.filter(|m| *m > policy.delay)?;
        if ran.is_some_and(|r| r >= stable_after(policy)) {
            self.step = 0;
        }
        let delay = policy.delay_of(self.step);
        self.step = self.step.saturating_add(1);
        (delay + leave_to_systemd(longest) <= longest).then_some(delay)
    }
}

/// A run at least this long starts the curve again.
pub fn stable_after(policy: &RestartPolicy) -> Duration {
    policy.window.max(policy.max_delay.unwrap_or_default())
}

impl Supervisor {
    /// Restart `unit` of `id` after `delay`, if it is still waiting in the
    /// same `auto-restart` then.
    /// `n_restarts` is systemd's count when the wait began: if it moved,
    /// systemd restarted the unit itself meanwhile.
    pub(super) fn pace_restart(
        &self,
        id: &str,
        unit: &str,
        (episode, n_restarts): (u64, u32),
        delay: Duration,
    ) {
        let Some(this) = self.me() else { return };
        let (id, unit) = (id.to_owned(), unit.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _guard = this.locks.lock(&id).await;
            let current = |e: &Entry| {
                e.unit == unit
                    && e.phase == Phase::Held
                    && e.pace.episode == episode
                    && e.unit_status
                        .as_ref()
                        .is_some_and(|s| s.sub_state == "auto-restart")
            };
            if !this.table().entries.get(&id).is_some_and(|e| current(e)) {
                return;
            }
            // The table may lag the manager: ask it, so a process systemd
            // has just restarted itself is never restarted again.
            match this.systemd.status(&unit).await {
                Ok(s) if s.sub_state == "auto-restart" && s.n_restarts == n_restarts => {}
                _ => return,
            }
            {
                let mut table = this.table();
                let Some(e) = table.entries.get_mut(&id).filter(|e| current(e)) else {
                    return;
                };
                // Counted before the call, as systemd counts its own: a
                // restart its start limit refuses is the one that trips it.
                e.pace.restarts += 1;
                e.launcher_restarts += 1;
            }
            match this.systemd.restart(&unit).await {
                // Started, or refused by the start limit (counted above),
                // or perhaps started (no answer in time).
                Ok(()) | Err(SystemdError::StartFailed { .. } | SystemdError::Timeout { .. }) => {}
                Err(err) => {
                    // Not restarted: systemd's timer does it, and counts it.
                    tracing::warn!(prism_process_id = %id, %unit, error = %err, "cannot restart {id} on its pace; systemd restarts it after the longest delay: {err}");
                    if let Some(e) = this.table().entries.get_mut(&id) {
                        e.pace.restarts = e.pace.restarts.saturating_sub(1);
                        e.launcher_restarts = e.launcher_restarts.saturating_sub(1);
                    }
                }
            }
            this.changed.notify_one();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn growing() -> RestartPolicy {
        RestartPolicy {
            delay: Duration::from_millis(100),
            max_delay: Some(Duration::from_secs(10)),
            steps: 4,
            ..RestartPolicy::default()
        }
    }

    fn ms(d: Option<Duration>) -> Option<u128> {
        d.map(|d| d.as_millis())
    }

    #[test]
    fn restarts_in_a_row_follow_the_curve_and_the_longest_is_systemds() {
        let policy = growing();
        let mut pace = Pace::default();
        let t = Instant::now();
        let delays: Vec<_> = (0..6).map(|_| ms(pace.next(&policy, t))).collect();
        assert_eq!(
            delays,
            [Some(100), Some(316), Some(1000), Some(3162), None, None]
        );
        assert!(pace.episode > 0);
    }

    #[test]
    fn a_stable_run_starts_the_curve_again_and_a_short_one_does_not() {
        let policy = growing();
        let mut pace = Pace::default();
        let t = Instant::now();
        pace.next(&policy, t);
        pace.next(&policy, t);
        pace.running(t);
        pace.running(t + Duration::from_secs(5)); // the first sighting counts
        assert_eq!(
            ms(pace.next(&policy, t + Duration::from_secs(30))),
            Some(1000)
        );
        pace.running(t);
        let stable = stable_after(&policy);
        assert_eq!(stable, Duration::from_secs(60));
        assert_eq!(ms(pace.next(&policy, t + stable)), Some(100));
    }

    #[test]
    fn a_delay_that_does_not_grow_is_systemds_alone() {
        let mut pace = Pace::default();
        let t = Instant::now();
        assert_eq!(pace.next(&RestartPolicy::default(), t), None);
        let flat = RestartPolicy {
            max_delay: Some(RestartPolicy::DEFAULT_DELAY),
            ..RestartPolicy::default()
        };
        assert_eq!(pace.next(&flat, t), None);
    }

    #[test]
    fn a_new_unit_counts_from_zero_and_every_wait_is_its_own_episode() {
        let (mut a, mut b) = (Pace::default(), Pace::default());
        let t = Instant::now();
        a.next(&growing(), t);
        b.next(&growing(), t);
        let first = a.episode;
        a.next(&growing(), t);
        assert!(a.episode > first && first != b.episode);
        // A new unit (`start_unit` takes the pace): systemd counts from zero.
        a.restarts = 3;
        std::mem::take(&mut a);
        assert_eq!((a.step, a.restarts, a.episode), (0, 0, 0));
    }

    #[test]
    fn the_last_tenth_of_the_longest_delay_is_left_to_systemd() {
        let mut pace = Pace::default();
        let t = Instant::now();
        // 1 s doubling to 16 s: 1, 2, 4, 8 s paced; 16 s is systemd's.
        let policy = RestartPolicy {
            delay: Duration::from_secs(1),
            max_delay: Some(Duration::from_secs(16)),
            steps: 4,
            ..RestartPolicy::default()
        };
        let delays: Vec<_> = (0..5).map(|_| ms(pace.next(&policy, t))).collect();
        assert_eq!(
            delays,
            [Some(1000), Some(2000), Some(4000), Some(8000), None]
        );
        // 14.5 s would be within 1.6 s of 16 s: systemd's.
        assert!(14_500 + leave_to_systemd(Duration::from_secs(16)).as_millis() > 16_000);
    }
}
