//! Where systemd's signals land: job completions for callers waiting on a
//! job, and unit state for event subscribers.
//!
//! Waiting for a job is race-free: the signal subscription exists before
//! any job is created, and a completion that arrives before its waiter
//! registers (the reply to `StartUnit` can trail the `JobRemoved` signal) is
//! kept until the waiter asks for it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, oneshot};
use zbus::OwnedVariant;

use super::{UnitEvent, UnitStatus, UnitSummary};
use crate::unit::props;

/// Completions nobody waited for are kept this long.
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);
/// Event buffer per subscriber before it lags.
const EVENT_CAPACITY: usize = 8192;

/// How a job ended, as `JobRemoved` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// `done`, `canceled`, `timeout`, `failed`, `dependency` or `skipped`.
    Finished(String),
    /// The connection dropped before the job's end was seen.
    Disconnected,
}

#[derive(Default)]
struct Jobs {
    /// Bumped at every disconnect; a job belongs to the epoch it was made in.
    epoch: u64,
    waiting: HashMap<String, oneshot::Sender<JobOutcome>>,
    unclaimed: HashMap<String, (String, Instant)>,
}

pub struct Hub {
    jobs: Mutex<Jobs>,
    units: Mutex<Units>,
    tx: broadcast::Sender<UnitEvent>,
}

/// The latest state of each unit, and when it last changed, so that a
/// read or list taken meanwhile is known to be older than a signal.
#[derive(Default)]
struct Units {
    cache: HashMap<String, Cached>,
    /// Bumped by every change applied (signal, read, list, removal).
    seq: u64,
    /// `seq` at the latest removal.
    removed_at: u64,
}

struct Cached {
    status: UnitStatus,
    /// `seq` when it last changed.
    changed: u64,
}

impl Units {
    fn bump(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A read or list begun at `seen` is the newest word on `unit`: no
    /// signal about it came since, and it was not removed meanwhile.
    fn newer_than_cache(&self, unit: &str, seen: u64) -> bool {
        match self.cache.get(unit) {
            Some(c) => c.changed <= seen,
            None => self.removed_at <= seen,
        }
    }

    fn entry(&mut self, unit: &str) -> &mut Cached {
        self.cache.entry(unit.to_owned()).or_insert_with(|| Cached {
            status: UnitStatus::new(unit),
            changed: 0,
        })
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            jobs: Mutex::default(),
            units: Mutex::default(),
            tx: broadcast::channel(EVENT_CAPACITY).0,
        }
    }
}

/// Only workload services are tracked.
pub fn is_prism_service(unit: &str) -> bool {
    crate::unit::is_workload_unit(unit)
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<UnitEvent> {
        self.tx.subscribe()
    }

    pub fn emit(&self, event: UnitEvent) {
        // No subscribers is fine: events are a notification, not a queue.
        let _ = self.tx.send(event);
    }

    /// The current connection epoch; read it before creating a job.
    pub fn epoch(&self) -> u64 {
        self.jobs.lock().expect("job table poisoned").epoch
    }

    /// A receiver for the end of `job`, created in `epoch`, which may
    /// already have ended. If the connection was lost since, its end can
    /// no longer be observed and the receiver says so at once.
    pub fn watch_job(&self, job: &str, epoch: u64) -> oneshot::Receiver<JobOutcome> {
        let (tx, rx) = oneshot::channel();
        let mut jobs = self.jobs.lock().expect("job table poisoned");
        if jobs.epoch != epoch {
            let _ = tx.send(JobOutcome::Disconnected);
        } else if let Some((result, _)) = jobs.unclaimed.remove(job) {
            let _ = tx.send(JobOutcome::Finished(result));
        } else {
            jobs.waiting.insert(job.to_owned(), tx);
        }
        rx
    }

    /// Stop waiting for `job` (the caller gave up on it).
    pub fn unwatch_job(&self, job: &str) {
        self.jobs
            .lock()
            .expect("job table poisoned")
            .waiting
            .remove(job);
    }

    pub fn job_removed(&self, job: &str, unit: &str, result: &str) {
        let mut jobs = self.jobs.lock().expect("job table poisoned");
        if let Some(tx) = jobs.waiting.remove(job) {
            let _ = tx.send(JobOutcome::Finished(result.to_owned()));
        } else if unit.starts_with(crate::unit::UNIT_PREFIX) {
            // A job of the project's own (a workload's, or one of the local
            // stack's daemons') may end before its caller watches for it
            // (a stop takes a millisecond): kept a while for that caller.
            // Other units' jobs on a busy system bus are none of its
            // business.
            let now = Instant::now();
            jobs.unclaimed
                .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
            jobs.unclaimed
                .insert(job.to_owned(), (result.to_owned(), now));
        }
    }

    /// The connection is gone: every waiter learns it now, and job paths of
    /// the next connection (a restarted manager counts from 1 again) must
    /// not match stale completions.
    pub fn disconnected(&self) {
        let mut jobs = self.jobs.lock().expect("job table poisoned");
        jobs.epoch += 1;
        for (_, tx) in jobs.waiting.drain() {
            let _ = tx.send(JobOutcome::Disconnected);
        }
        jobs.unclaimed.clear();
        drop(jobs);
        // The unit cache stays: a re-executed manager keeps its units, and
        // what signals never repeat (restart policy, start limit, cgroup)
        // would be lost. The list after reconnecting corrects it.
        self.emit(UnitEvent::Disconnected);
    }

    fn units(&self) -> std::sync::MutexGuard<'_, Units> {
        self.units.lock().expect("unit cache poisoned")
    }

    /// Where the unit state stands now; pass it to [`Self::refreshed`] or
    /// [`Self::listed`] with what a read or list begun now returned.
    pub fn mark(&self) -> u64 {
        self.units().seq
    }

    /// The manager's list after (re)connecting, taken after subscribing:
    /// units it does not list are gone, and the state of those it lists is
    /// the list's (changes while disconnected were never signalled).
    /// Signals queued before the list's reply are applied after this, in
    /// order, and end at the same state.
    /// `seen` is [`Self::mark`] before the list began: what changed since
    /// (a unit being created, a signal) is newer than the list and kept.
    pub fn resynced(&self, units: Vec<UnitSummary>, seen: u64) {
        {
            let mut cached = self.units();
            let seq = cached.bump();
            let listed: HashMap<&str, &UnitSummary> =
                units.iter().map(|u| (u.name.as_str(), u)).collect();
            cached
                .cache
                .retain(|name, c| listed.contains_key(name.as_str()) || c.changed > seen);
            for u in units.iter().filter(|u| is_prism_service(&u.name)) {
                if cached.newer_than_cache(&u.name, seen) {
                    let c = cached.entry(&u.name);
                    c.status.absorb_summary(u);
                    c.changed = seq;
                }
            }
        }
        self.emit(UnitEvent::Resynced { units });
    }

    /// A list begun at `seen` (see [`Self::mark`]): a unit whose listed
    /// state differs from what signals said, with no signal since, changed
    /// unsignalled (a re-executed manager announces a unit's first change
    /// as `UnitNew`, or not at all): the list's state is taken, and
    /// subscribers hear of it. Units it does not list are left to
    /// `UnitRemoved` and the reconciler.
    pub fn listed(&self, units: &[UnitSummary], seen: u64) {
        let changed: Vec<UnitStatus> = {
            let mut cached = self.units();
            let mut changed = Vec::new();
            for u in units.iter().filter(|u| is_prism_service(&u.name)) {
                if !cached.newer_than_cache(&u.name, seen) {
                    continue;
                }
                let differs = cached.cache.get(&u.name).is_none_or(|c| {
                    (
                        c.status.load_state.as_str(),
                        c.status.active_state.as_str(),
                        c.status.sub_state.as_str(),
                    ) != (
                        u.load_state.as_str(),
                        u.active_state.as_str(),
                        u.sub_state.as_str(),
                    )
                });
                if differs {
                    let seq = cached.bump();
                    let c = cached.entry(&u.name);
                    c.status.absorb_summary(u);
                    c.changed = seq;
                    changed.push(c.status.clone());
                }
            }
            changed
        };
        for status in changed {
            tracing::debug!(unit = %status.name, state = %status.active_state, sub = %status.sub_state, "{} changed unsignalled; the list says {}/{}", status.name, status.active_state, status.sub_state);
            self.emit(UnitEvent::Changed(Box::new(status)));
        }
    }

    /// The state of `unit` is known (it was listed or signalled), so a
    /// `UnitNew` for it is not a unit being created but a manager that
    /// forgot having announced it (re-executed): its first change since
    /// came as `UnitNew` instead of `PropertiesChanged`.
    pub fn knows_state(&self, unit: &str) -> bool {
        self.units()
            .cache
            .get(unit)
            .is_some_and(|c| !c.status.active_state.is_empty())
    }

    /// A full read of a unit, begun at `seen` (see [`Self::mark`]): its
    /// state unless a signal came meanwhile (a signal carries every
    /// changing property, and is as new), and subscribers hear of it.
    pub fn refreshed(&self, read: &UnitStatus, seen: u64) {
        let status = {
            let mut cached = self.units();
            if !cached.newer_than_cache(&read.name, seen) {
                return;
            }
            let unchanged = cached
                .cache
                .get(&read.name)
                .is_some_and(|c| c.status == *read);
            if unchanged {
                return;
            }
            let seq = cached.bump();
            let c = cached.entry(&read.name);
            c.status = read.clone();
            c.changed = seq;
            c.status.clone()
        };
        self.emit(UnitEvent::Changed(Box::new(status)));
    }

    pub fn properties_changed(&self, unit: &str, props: &HashMap<String, OwnedVariant>) {
        let status = {
            let mut cached = self.units();
            let seq = cached.bump();
            let c = cached.entry(unit);
            c.status.merge(props);
            c.changed = seq;
            c.status.clone()
        };
        self.emit(UnitEvent::Changed(Box::new(status)));
    }

    /// Settings of a unit that systemd never signals (they are constant).
    pub fn seed(&self, unit: &str, properties: &[(&'static str, crate::unit::PropValue)]) {
        use crate::unit::PropValue;
        let get = |name: &str| properties.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        let mut cached = self.units();
        let seq = cached.bump();
        let c = cached.entry(unit);
        c.changed = seq;
        let status = &mut c.status;
        if let Some(PropValue::Str(restart)) = get(props::RESTART) {
            status.restart = restart.clone();
        }
        if let Some(PropValue::U32(burst)) = get(props::START_LIMIT_BURST) {
            status.start_limit_burst = *burst;
        }
        if let Some(PropValue::Str(d)) = get(props::DESCRIPTION) {
            status.description = d.clone();
        }
    }

    pub fn unit_removed(&self, unit: &str) {
        {
            let mut cached = self.units();
            let seq = cached.bump();
            cached.removed_at = seq;
            cached.cache.remove(unit);
        }
        self.emit(UnitEvent::Removed {
            unit: unit.to_owned(),
        });
    }

    /// The latest state seen in signals, if any.
    pub fn last_known(&self, unit: &str) -> Option<UnitStatus> {
        self.units().cache.get(unit).map(|c| c.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, active: &str, sub: &str) -> UnitSummary {
        UnitSummary {
            name: name.into(),
            description: String::new(),
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            has_job: false,
        }
    }

    fn signal(hub: &Hub, unit: &str, active: &str, sub: &str) {
        let props: HashMap<String, OwnedVariant> =
            [(props::ACTIVE_STATE, active), (props::SUB_STATE, sub)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), zbus::Variant::from(v).try_into().unwrap()))
                .collect();
        hub.properties_changed(unit, &props);
    }

    fn changes(rx: &mut broadcast::Receiver<UnitEvent>) -> Vec<(String, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|e| match e {
                UnitEvent::Changed(s) => Some((s.name.clone(), s.active_state.clone())),
                _ => None,
            })
            .collect()
    }

    const U: &str = "prism-pattern-a.service";

    #[test]
    fn a_list_corrects_state_that_changed_unsignalled_but_never_a_newer_signal() {
        let hub = Hub::default();
        hub.resynced(vec![summary(U, "activating", "start")], hub.mark());
        let mut rx = hub.subscribe();
        // Went active, unsignalled: the next list says so.
        let seen = hub.mark();
        hub.listed(&[summary(U, "active", "running")], seen);
        assert_eq!(changes(&mut rx), vec![(U.into(), "active".into())]);
        assert_eq!(hub.last_known(U).unwrap().sub_state, "running");
        // A list that agrees changes nothing.
        hub.listed(&[summary(U, "active", "running")], hub.mark());
        assert!(changes(&mut rx).is_empty());
        // A signal after the list began is newer than the list.
        let seen = hub.mark();
        signal(&hub, U, "deactivating", "stop-sigterm");
        hub.listed(&[summary(U, "active", "running")], seen);
        assert_eq!(changes(&mut rx), vec![(U.into(), "deactivating".into())]);
        assert_eq!(hub.last_known(U).unwrap().active_state, "deactivating");
    }

    #[test]
    fn a_resync_keeps_what_began_after_its_list_and_drops_what_it_does_not_list() {
        let hub = Hub::default();
        hub.resynced(vec![summary(U, "active", "running")], hub.mark());
        let seen = hub.mark();
        // Created while the list was under way.
        let b = "prism-pattern-b.service";
        signal(&hub, b, "activating", "start");
        hub.resynced(Vec::new(), seen);
        assert!(hub.last_known(U).is_none());
        assert_eq!(hub.last_known(b).unwrap().active_state, "activating");
    }

    #[test]
    fn a_read_is_taken_unless_a_signal_or_removal_came_meanwhile() {
        let hub = Hub::default();
        hub.resynced(vec![summary(U, "activating", "start")], hub.mark());
        let mut rx = hub.subscribe();
        let read = |active: &str| UnitStatus {
            name: U.into(),
            active_state: active.into(),
            main_pid: 42,
            ..UnitStatus::default()
        };
        hub.refreshed(&read("active"), hub.mark());
        assert_eq!(changes(&mut rx), vec![(U.into(), "active".into())]);
        assert_eq!(hub.last_known(U).unwrap().main_pid, 42);
        let seen = hub.mark();
        signal(&hub, U, "failed", "failed");
        hub.refreshed(&read("active"), seen);
        assert_eq!(hub.last_known(U).unwrap().active_state, "failed");
        // Removed while the read was under way: not brought back.
        let seen = hub.mark();
        hub.unit_removed(U);
        hub.refreshed(&read("active"), seen);
        assert!(hub.last_known(U).is_none());
        // UnitNew for a unit never listed nor signalled is a new unit.
        assert!(!hub.knows_state("prism-pattern-b.service"));
    }
}
