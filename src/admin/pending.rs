//! Pushes the admin still owes its launchers, and when each is next tried.
//!
//! A queue ordered by time says what is due, so the delivery loop's work
//! is the deliveries that are due, not every one that is pending. A
//! launcher that cannot be reached backs off as a whole: while it does,
//! its deliveries wait, and when it is due again one delivery probes it;
//! the others follow once one gets through. So a fleet of unreachable
//! launchers costs a connection attempt per launcher and backoff, not one
//! per pending delivery.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use tokio::time::Instant;

use super::fleet::{Delivery, DeliveryKind};
use crate::backoff::Policy;

/// The longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Retries of a push: from 0.5 s, doubling to [`BACKOFF_MAX`].
pub const BACKOFF: Policy = Policy::new(Duration::from_millis(500), BACKOFF_MAX);

/// A launcher that could not be reached.
#[derive(Clone, Debug)]
struct Unreachable {
    attempts: u32,
    next_at: Instant,
    /// The process whose delivery probes it now.
    probe: Option<String>,
}

#[derive(Default)]
pub struct Pending {
    /// launcher → process → delivery: a heartbeat asks about its own
    /// launcher's, without building keys.
    items: HashMap<String, BTreeMap<String, Delivery>>,
    /// (due at, launcher, process), one entry per item.
    queue: BTreeSet<(Instant, String, String)>,
    unreachable: HashMap<String, Unreachable>,
}

impl Pending {
    /// How many pushes are owed (a launcher owed nothing has no entry).
    pub fn len(&self) -> usize {
        self.items.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn get_mut(&mut self, launcher: &str, process: &str) -> Option<&mut Delivery> {
        self.items.get_mut(launcher)?.get_mut(process)
    }

    pub fn contains(&self, launcher: &str, process: &str) -> bool {
        self.items
            .get(launcher)
            .is_some_and(|m| m.contains_key(process))
    }

    fn requeue(&mut self, launcher: &str, process: &str, at: Instant) {
        let Some(d) = self.get_mut(launcher, process) else {
            return;
        };
        let before = std::mem::replace(&mut d.next_at, at);
        self.queue
            .remove(&(before, launcher.to_owned(), process.to_owned()));
        self.queue
            .insert((at, launcher.to_owned(), process.to_owned()));
    }

    /// Owe `launcher` a `kind` push of `process`: due now if new; an owed
    /// one changes its kind and keeps its time.
    pub fn schedule(&mut self, launcher: &str, process: &str, kind: DeliveryKind, now: Instant) {
        let owed = self.items.entry(launcher.to_owned()).or_default();
        if let Some(d) = owed.get_mut(process) {
            d.kind = kind;
            return;
        }
        owed.insert(
            process.to_owned(),
            Delivery {
                kind,
                attempts: 0,
                next_at: now,
                last_error: String::new(),
            },
        );
        self.queue
            .insert((now, launcher.to_owned(), process.to_owned()));
    }

    /// No longer owed (delivered, or moot).
    pub fn remove(&mut self, launcher: &str, process: &str) -> Option<Delivery> {
        let owed = self.items.get_mut(launcher)?;
        let d = owed.remove(process)?;
        if owed.is_empty() {
            // Nothing owed: the next push to it is tried at once.
            self.items.remove(launcher);
            self.unreachable.remove(launcher);
        }
        if let Some(u) = self.unreachable.get_mut(launcher)
            && u.probe.as_deref() == Some(process)
        {
            u.probe = None;
        }
        self.queue
            .remove(&(d.next_at, launcher.to_owned(), process.to_owned()));
        Some(d)
    }

    /// Nothing owed for `process`, on any launcher.
    pub fn remove_process(&mut self, process: &str) {
        let launchers: Vec<String> = self
            .items
            .iter()
            .filter(|(_, owed)| owed.contains_key(process))
            .map(|(l, _)| l.clone())
            .collect();
        for l in launchers {
            self.remove(&l, process);
        }
    }

    /// Nothing owed to `launcher` (it registered and reconciles to the
    /// admin's placement by itself).
    pub fn remove_launcher(&mut self, launcher: &str) {
        let processes: Vec<String> = self.of(launcher).map(|(p, _)| p.to_owned()).collect();
        for p in processes {
            self.remove(launcher, &p);
        }
        self.unreachable.remove(launcher);
    }

    /// What is owed to `launcher`.
    pub fn of<'a>(&'a self, launcher: &str) -> impl Iterator<Item = (&'a str, &'a Delivery)> {
        self.items
            .get(launcher)
            .into_iter()
            .flatten()
            .map(|(p, d)| (p.as_str(), d))
    }

    /// Take what is due at `now`, marking it in flight (not due again
    /// before it settles); and when the next one comes due. Of an
    /// unreachable launcher's deliveries, one probes it when its backoff
    /// ends; the rest wait for the probe.
    pub fn take_due(
        &mut self,
        now: Instant,
    ) -> (Vec<(String, String, DeliveryKind)>, Option<Instant>) {
        let mut due = Vec::new();
        while let Some(first) = self.queue.first().cloned() {
            let (at, launcher, process) = first;
            if at > now {
                break;
            }
            self.queue.pop_first();
            let Some(d) = self
                .items
                .get_mut(&launcher)
                .and_then(|m| m.get_mut(&process))
            else {
                continue;
            };
            let wait_for = match self.unreachable.get_mut(&launcher) {
                Some(u) if u.probe.is_some() => Some(now + BACKOFF_MAX),
                Some(u) if u.next_at > now => Some(u.next_at),
                Some(u) => {
                    u.probe = Some(process.clone());
                    None
                }
                None => None,
            };
            match wait_for {
                Some(later) => {
                    d.next_at = later;
                    self.queue.insert((later, launcher, process));
                }
                None => {
                    due.push((launcher.clone(), process.clone(), d.kind));
                    d.next_at = now + BACKOFF_MAX;
                    self.queue.insert((d.next_at, launcher, process));
                }
            }
        }
        (due, self.queue.first().map(|(at, _, _)| *at))
    }

    /// Why pushes to `launcher` fail, while it is unreachable and owed
    /// something (its heartbeats then ask it to register again, which
    /// hands it everything placed on it: the way round a push that cannot
    /// get through).
    pub fn stuck(&self, launcher: &str) -> Option<String> {
        self.unreachable.get(launcher)?;
        self.of(launcher)
            .find(|(_, d)| d.attempts > 0)
            .map(|(_, d)| d.last_error.clone())
    }

    /// `launcher` answered: if it was unreachable, what waited for it is
    /// due now. Returns whether anything became due (the delivery loop
    /// should look again).
    pub fn reached(&mut self, launcher: &str, now: Instant) -> bool {
        if self.unreachable.remove(launcher).is_none() {
            return false;
        }
        let waiting: Vec<String> = self.of(launcher).map(|(p, _)| p.to_owned()).collect();
        for p in &waiting {
            self.requeue(launcher, p, now);
        }
        !waiting.is_empty()
    }

    /// A delivery failed: `unreachable`, the launcher backs off as a whole
    /// (the delivery waits with it); else (a refusal) the delivery alone.
    /// Returns how long it waits.
    pub fn failed(
        &mut self,
        launcher: &str,
        process: &str,
        error: &str,
        unreachable: bool,
        now: Instant,
        seed: u64,
    ) -> Option<Duration> {
        let d = self.get_mut(launcher, process)?;
        d.attempts += 1;
        d.last_error = error.to_owned();
        let attempts = d.attempts;
        let wait = if unreachable {
            let u = self
                .unreachable
                .entry(launcher.to_owned())
                .or_insert(Unreachable {
                    attempts: 0,
                    next_at: now,
                    probe: None,
                });
            // One backoff step per probe (or per first failure), however
            // many deliveries were in flight to it.
            let probe = u.probe.as_deref() == Some(process);
            if probe || u.next_at <= now {
                u.attempts += 1;
                u.next_at = now + BACKOFF.jittered(u.attempts, seed);
            }
            if probe {
                u.probe = None;
            }
            u.next_at.saturating_duration_since(now)
        } else {
            // It answered, if only to refuse.
            self.reached(launcher, now);
            BACKOFF.jittered(attempts, seed)
        };
        self.requeue(launcher, process, now + wait);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSIGN: DeliveryKind = DeliveryKind::Assign;

    fn ids(due: &[(String, String, DeliveryKind)]) -> Vec<String> {
        due.iter().map(|(l, p, _)| format!("{l}/{p}")).collect()
    }

    #[test]
    fn only_what_is_due_is_taken_and_in_flight_is_not_taken_twice() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.schedule("a", "x", ASSIGN, t0);
        p.schedule("a", "y", ASSIGN, t0 + Duration::from_secs(5));
        let (due, next) = p.take_due(t0);
        assert_eq!(ids(&due), ["a/x"]);
        assert_eq!(next, Some(t0 + Duration::from_secs(5)));
        // In flight: not due again.
        assert!(p.take_due(t0 + Duration::from_secs(1)).0.is_empty());
        p.remove("a", "x");
        assert_eq!(ids(&p.take_due(t0 + Duration::from_secs(5)).0), ["a/y"]);
        assert_eq!(p.len(), 1);
        // A second schedule changes the kind, not the time.
        p.schedule("a", "y", DeliveryKind::Revoke { grace: 0 }, t0);
        assert_eq!(
            p.of("a").next().unwrap().1.kind,
            DeliveryKind::Revoke { grace: 0 }
        );
        assert_eq!(p.queue.len(), p.len());
    }

    #[test]
    fn an_unreachable_launcher_is_probed_by_one_delivery_and_the_rest_follow() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        for x in ["x1", "x2", "x3"] {
            p.schedule("a", x, ASSIGN, t0);
        }
        p.schedule("b", "y", ASSIGN, t0);
        let (due, _) = p.take_due(t0);
        assert_eq!(due.len(), 4);
        // a is unreachable: its three back off together.
        let wait = p.failed("a", "x1", "refused", true, t0, 0).unwrap();
        assert!(wait >= Duration::from_millis(500) && wait <= Duration::from_secs(1));
        // The others in flight with it do not compound the backoff.
        assert_eq!(p.failed("a", "x2", "refused", true, t0, 0), Some(wait));
        assert_eq!(p.failed("a", "x3", "refused", true, t0, 0), Some(wait));
        // Before the backoff ends, nothing of a's is due.
        assert!(
            p.take_due(t0 + wait - Duration::from_millis(1))
                .0
                .is_empty()
        );
        // b answered.
        p.remove("b", "y");
        p.reached("b", t0);
        // When a's backoff ends, one delivery probes it.
        let later = t0 + Duration::from_secs(60);
        let (due, _) = p.take_due(later);
        assert_eq!(due.len(), 1, "{:?}", ids(&due));
        let probe = due[0].1.clone();
        // The probe gets through: the others are due at once.
        p.remove("a", &probe);
        p.reached("a", later);
        let (due, _) = p.take_due(later);
        assert_eq!(due.len(), 2, "{:?}", ids(&due));
        assert_eq!(p.queue.len(), p.len());
    }

    #[test]
    fn a_refusal_backs_off_the_delivery_alone() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.schedule("a", "x", ASSIGN, t0);
        p.schedule("a", "y", ASSIGN, t0);
        p.take_due(t0);
        p.failed("a", "x", "binary not allowed", false, t0, 0);
        p.remove("a", "y");
        p.schedule("a", "z", ASSIGN, t0);
        assert_eq!(ids(&p.take_due(t0).0), ["a/z"]);
        assert_eq!(p.of("a").find(|(id, _)| *id == "x").unwrap().1.attempts, 1);
    }

    #[test]
    fn removals_keep_the_queue_in_step() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.schedule("a", "x", ASSIGN, t0);
        p.schedule("b", "x", ASSIGN, t0);
        p.schedule("b", "y", ASSIGN, t0);
        p.remove_process("x");
        assert_eq!(p.len(), 1);
        p.remove_launcher("b");
        assert!(p.is_empty());
        assert!(p.queue.is_empty());
    }

    #[test]
    fn a_launcher_owed_nothing_forgets_its_backoff() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.schedule("a", "x", ASSIGN, t0);
        p.take_due(t0);
        p.failed("a", "x", "refused", true, t0, 0);
        // Nothing else was waiting for a: reaching it makes nothing due.
        p.remove("a", "x");
        assert!(!p.reached("a", t0));
        // A new push to it is tried at once, not after the old backoff.
        p.schedule("a", "y", ASSIGN, t0);
        assert_eq!(ids(&p.take_due(t0).0), ["a/y"]);
        // With others waiting, reaching it says so.
        p.schedule("a", "z", ASSIGN, t0);
        p.failed("a", "y", "refused", true, t0, 0);
        assert!(p.reached("a", t0));
    }
}
