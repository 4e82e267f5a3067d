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

use super::{UnitEvent, UnitStatus};
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
    units: Mutex<HashMap<String, UnitStatus>>,
    tx: broadcast::Sender<UnitEvent>,
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
        } else if is_prism_service(unit) {
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
        self.units.lock().expect("unit cache poisoned").clear();
        self.emit(UnitEvent::Disconnected);
    }

    pub fn properties_changed(&self, unit: &str, props: &HashMap<String, OwnedVariant>) {
        let status = {
            let mut units = self.units.lock().expect("unit cache poisoned");
            let status = units
                .entry(unit.to_owned())
                .or_insert_with(|| UnitStatus::new(unit));
            status.merge(props);
            status.clone()
        };
        self.emit(UnitEvent::Changed(Box::new(status)));
    }

    /// Settings of a unit that systemd never signals (they are constant).
    pub fn seed(&self, unit: &str, spec: &crate::unit::UnitSpec) {
        use crate::unit::PropValue;
        let mut units = self.units.lock().expect("unit cache poisoned");
        let status = units
            .entry(unit.to_owned())
            .or_insert_with(|| UnitStatus::new(unit));
        if let Some(PropValue::Str(restart)) = spec.get(props::RESTART) {
            status.restart = restart.clone();
        }
        if let Some(PropValue::U32(burst)) = spec.get(props::START_LIMIT_BURST) {
            status.start_limit_burst = *burst;
        }
        if let Some(PropValue::Str(d)) = spec.get(props::DESCRIPTION) {
            status.description = d.clone();
        }
    }

    /// Keep what a full status read (e.g. of an adopted unit) knows that
    /// signals never tell, without overwriting newer signalled state.
    pub fn remember(&self, status: &UnitStatus) {
        self.units
            .lock()
            .expect("unit cache poisoned")
            .entry(status.name.clone())
            .or_insert_with(|| UnitStatus::new(&status.name))
            .absorb_read(status);
    }

    pub fn unit_removed(&self, unit: &str) {
        self.units.lock().expect("unit cache poisoned").remove(unit);
        self.emit(UnitEvent::Removed {
            unit: unit.to_owned(),
        });
    }

    /// The latest state seen in signals, if any.
    pub fn last_known(&self, unit: &str) -> Option<UnitStatus> {
        self.units
            .lock()
            .expect("unit cache poisoned")
            .get(unit)
            .cloned()
    }
}
