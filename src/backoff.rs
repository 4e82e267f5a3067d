//! One backoff for every retry: exponential from a minimum, doubling to a
//! maximum, with jitter so that a fleet does not retry in step. Used by the
//! systemd connection, the launcher's link to the admin, the admin's
//! pushes, and the launcher's restore and blocked-host retries.

use std::time::Duration;

/// Bounds of a backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub min: Duration,
    pub max: Duration,
}

impl Policy {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The step after `attempts` failures: `min` doubled `attempts` times,
    /// at most `max` (and never below `min`).
    pub fn step(&self, attempts: u32) -> Duration {
        let doubled = self
            .min
            .checked_mul(2u32.saturating_pow(attempts.min(31)))
            .unwrap_or(Duration::MAX);
        doubled.min(self.max).max(self.min)
    }

    /// [`Self::step`] with jitter: between half and all of it, chosen by
    /// `seed` (the same seed gives the same wait).
    pub fn jittered(&self, attempts: u32, seed: u64) -> Duration {
        let step = self.step(attempts);
        let half = step / 2;
        let span = (step - half).as_nanos().max(1) as u64;
        half + Duration::from_nanos(mix(seed) % span)
    }
}

/// A seed that differs between processes and moments.
pub fn seed() -> u64 {
    let now = crate::clock::since_epoch().as_nanos() as u64;
    now ^ u64::from(std::process::id()).rotate_left(32)
}

/// xorshift64*: jitter needs no cryptographic quality, only spread.
fn mix(seed: u64) -> u64 {
    let mut x = seed | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The state of one retry loop: failures so far, and its own seed.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    attempts: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            attempts: 0,
            seed: seed(),
        }
    }

    /// The wait before the next try; each call counts a failure.
    pub fn next_wait(&mut self) -> Duration {
        self.seed = mix(self.seed);
        let wait = self.policy.jittered(self.attempts, self.seed);
        self.attempts = self.attempts.saturating_add(1);
        wait
    }

    /// Wait at most `max` from now on (at least the policy's minimum).
    pub fn set_max(&mut self, max: Duration) {
        self.policy.max = max.max(self.policy.min);
    }

    /// A success: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Policy = Policy::new(Duration::from_millis(500), Duration::from_secs(60));

    #[test]
    fn steps_double_from_min_to_max() {
        let steps: Vec<u64> = (0..9).map(|a| P.step(a).as_millis() as u64).collect();
        assert_eq!(
            steps,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(P.step(u32::MAX), P.max);
    }

    #[test]
    fn a_loop_grows_then_resets() {
        let mut b = Backoff::new(Policy::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
        ));
        let first = b.next_wait();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            b.next_wait();
        }
        let late = b.next_wait();
        assert!(late >= Duration::from_millis(2500), "{late:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn waits_stay_within_their_bounds(
            min_ms in 1u64..10_000,
            extra_ms in 0u64..600_000,
            attempts in 0u32..100,
            seed in any::<u64>(),
        ) {
            let p = Policy::new(
                Duration::from_millis(min_ms),
                Duration::from_millis(min_ms + extra_ms),
            );
            let step = p.step(attempts);
            prop_assert!(step >= p.min && step <= p.max);
            // Never shrinks as failures add up.
            prop_assert!(p.step(attempts + 1) >= step);
            let wait = p.jittered(attempts, seed);
            prop_assert!(wait >= step / 2 && wait <= step, "{wait:?} outside half..{step:?}");
            // The same seed, the same wait.
            prop_assert_eq!(wait, p.jittered(attempts, seed));
        }

        #[test]
        fn jitter_spreads_a_fleet(seeds in proptest::collection::vec(any::<u64>(), 64)) {
            let waits: std::collections::BTreeSet<Duration> =
                seeds.iter().map(|s| P.jittered(4, *s)).collect();
            // 64 launchers retrying after the same failure do not all wait
            // the same.
            prop_assert!(waits.len() > 32, "{} distinct waits of 64", waits.len());
        }
    }
}
