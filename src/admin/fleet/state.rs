//! The fleet in memory, with the indexes that keep heartbeats and
//! placements from scanning it whole.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Duration,
};

use prost::Message;

use super::super::{
    pending::Pending,
    placement::{self, Candidate, Liveness},
    store::{HealthRecord, LauncherRecord, ProcessRecord},
};

/// When each launcher was last heard, kept apart from the fleet's state: a
/// heartbeat notes it at once, even while the state is held by a slow
/// database write, so that a slow database never makes launchers look
/// silent.
#[derive(Default, Debug)]
pub struct Heard(std::sync::Mutex<HashMap<String, i64>>);

impl Heard {
    pub fn note(&self, launcher: &str, at_ms: i64) {
        let mut heard = self.0.lock().expect("heard poisoned");
        match heard.get_mut(launcher) {
            Some(t) => *t = (*t).max(at_ms),
            None => {
                heard.insert(launcher.to_owned(), at_ms);
            }
        }
    }

    pub fn get(&self, launcher: &str) -> Option<i64> {
        self.0
            .lock()
            .expect("heard poisoned")
            .get(launcher)
            .copied()
    }
}

#[derive(Default)]
pub struct State {
    /// When each launcher was last heard (see [`Heard`]).
    pub heard: std::sync::Arc<Heard>,
    pub launchers: BTreeMap<String, LauncherRecord>,
    /// Read freely; change only through [`State::put`] and [`State::take`],
    /// which keep `by_launcher` in step. Hashed: a heartbeat looks up each
    /// process it reports, and a tree of 10,000 string keys costs a cache
    /// miss per key compared; listings sort.
    pub processes: HashMap<String, ProcessRecord>,
    /// Process ids placed on (or being revoked from) each launcher, so a
    /// heartbeat or a placement never scans the whole fleet.
    by_launcher: HashMap<String, BTreeSet<String>>,
    /// Encoded size of the specs on each launcher (its registration ack).
    spec_bytes: BTreeMap<String, usize>,
    /// Spread group to launcher to how many of the group it holds, so a
    /// placement counts its group without scanning the fleet.
    groups: HashMap<String, HashMap<String, u32>>,
    pub health: HashMap<String, HealthRecord>,
    /// (launcher, process) to deliver.
    pub pending: Pending,
    /// (process, launcher it moves away from): its copy there is kept until
    /// the move finishes.
    pub moving: BTreeSet<(String, String)>,
    pub last_liveness: BTreeMap<String, Liveness>,
    /// Launchers that registered with this admin process. A launcher that
    /// heartbeats without having done so (the admin restarted) is asked to
    /// register again, so it reconciles to the admin's placement.
    pub registered: HashSet<String>,
    /// (launcher, process) the admin lost and asked that launcher, at its
    /// registration, to hand back (`ReclaimProcesses`); never revoked
    /// meanwhile.
    pub reclaimable: BTreeSet<(String, String)>,
    /// When each launcher's heartbeat was last written: again once an
    /// interval has passed, so that a follower reading the database judges
    /// liveness within an interval of the leader.
    pub stored_heartbeat: HashMap<String, i64>,
}

impl State {
    /// When `l` was last heard: its record, or a heartbeat noted since.
    pub fn last_heard(&self, l: &LauncherRecord) -> i64 {
        self.heard
            .get(&l.id)
            .map_or(l.last_heartbeat_ms, |t| t.max(l.last_heartbeat_ms))
    }

    /// Insert or replace a process record.
    pub fn put(&mut self, record: ProcessRecord) {
        let id = record.id().to_owned();
        self.take(&id);
        if let Some(l) = &record.launcher_id {
            self.by_launcher
                .entry(l.clone())
                .or_default()
                .insert(id.clone());
            *self.spec_bytes.entry(l.clone()).or_default() += record.spec.encoded_len();
            if let Some(g) = spread_group(&record) {
                *self
                    .groups
                    .entry(g.to_owned())
                    .or_default()
                    .entry(l.clone())
                    .or_default() += 1;
            }
        }
        self.processes.insert(id, record);
    }

    /// Remove a process record.
    pub fn take(&mut self, id: &str) -> Option<ProcessRecord> {
        let record = self.processes.remove(id)?;
        if let Some(l) = &record.launcher_id
            && let Some(set) = self.by_launcher.get_mut(l)
        {
            set.remove(id);
            if set.is_empty() {
                self.by_launcher.remove(l);
                self.spec_bytes.remove(l);
            } else if let Some(b) = self.spec_bytes.get_mut(l) {
                *b = b.saturating_sub(record.spec.encoded_len());
            }
        }
        if let (Some(l), Some(g)) = (&record.launcher_id, spread_group(&record))
            && let Some(members) = self.groups.get_mut(g)
        {
            if let Some(n) = members.get_mut(l) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    members.remove(l);
                }
            }
            if members.is_empty() {
                self.groups.remove(g);
            }
        }
        Some(record)
    }

    /// Encoded bytes of the specs placed on `launcher`.
    pub fn spec_bytes_on(&self, launcher: &str) -> usize {
        self.spec_bytes.get(launcher).copied().unwrap_or(0)
    }

    /// Is `launcher`'s copy of `process` kept although it is not placed
    /// there: it moves away from there, or the admin waits for that
    /// launcher to hand it back?
    pub fn kept_on(&self, launcher: &str, process: &str) -> bool {
        // Both are empty but during moves and after an admin lost state.
        (!self.moving.is_empty()
            && self
                .moving
                .contains(&(process.to_owned(), launcher.to_owned())))
            || (!self.reclaimable.is_empty()
                && self
                    .reclaimable
                    .contains(&(launcher.to_owned(), process.to_owned())))
    }

    /// How many processes are placed on (or being revoked from) `launcher`.
    pub fn count_on(&self, launcher: &str) -> usize {
        self.by_launcher.get(launcher).map_or(0, BTreeSet::len)
    }

    /// The processes placed on (or being revoked from) `launcher`.
    pub fn on<'a>(&'a self, launcher: &str) -> impl Iterator<Item = &'a ProcessRecord> + 'a {
        self.by_launcher
            .get(launcher)
            .into_iter()
            .flatten()
            .filter_map(|id| self.processes.get(id))
    }

    /// Processes placed on (or being revoked from) each launcher.
    pub fn used(&self) -> BTreeMap<&str, u32> {
        self.by_launcher
            .iter()
            .map(|(l, ids)| (l.as_str(), ids.len() as u32))
            .collect()
    }

    /// Every launcher as placement sees it, counting the processes of
    /// `group` on each, except `placing` itself (a new version of it).
    pub fn candidates(
        &self,
        now_ms: i64,
        interval: Duration,
        group: Option<&str>,
        placing: &str,
    ) -> Vec<Candidate<'_>> {
        let used = self.used();
        let members = group.and_then(|g| self.groups.get(g));
        // A new version does not count against its own group.
        let itself = self
            .processes
            .get(placing)
            .filter(|p| group.is_some() && spread_group(p) == group)
            .and_then(|p| p.launcher_id.as_deref());
        let in_group = |l: &str| {
            let n = members.and_then(|m| m.get(l)).copied().unwrap_or(0);
            n.saturating_sub(u32::from(itself == Some(l)))
        };
        self.launchers
            .values()
            .map(|l| Candidate {
                id: &l.id,
                region: &l.region,
                process_types: &l.process_types,
                max_processes: l.max_processes,
                used: used.get(l.id.as_str()).copied().unwrap_or(0),
                spec_bytes: self.spec_bytes.get(&l.id).copied().unwrap_or(0),
                draining: l.draining,
                liveness: placement::liveness(self.last_heard(l), now_ms, interval),
                silent: placement::silence(self.last_heard(l), now_ms),
                late_after: interval * placement::LATE_AFTER_MISSED,
                labels: &l.metadata,
                in_group: in_group(&l.id),
            })
            .collect()
    }
}

impl State {
    /// The dependencies of `spec` not reported running yet, as
    /// "redis-1 (starting), db-1 (not reported)"; `None` once all run.
    pub fn dependencies_waiting(
        &self,
        spec: &crate::pb::prism::ProcessAssignment,
    ) -> Option<String> {
        let waiting: Vec<String> = crate::model::validate::dependencies_of(spec)
            .into_iter()
            .filter_map(|dep| match self.health.get(&dep) {
                Some(h) if h.health.status == "running" => None,
                Some(h) => {
                    let status = if h.health.detailed_status.is_empty() {
                        &h.health.status
                    } else {
                        &h.health.detailed_status
                    };
                    Some(format!("{dep} ({status})"))
                }
                None => Some(format!("{dep} (not reported)")),
            })
            .collect();
        (!waiting.is_empty()).then(|| waiting.join(", "))
    }

    /// The processes that depend on `id` and are not being revoked
    /// themselves, by id. (A scan: revocations only, never placement.)
    pub fn dependents_of(&self, id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .processes
            .values()
            .filter(|p| {
                p.state != crate::admin::store::PlacementState::Revoking
                    && crate::model::validate::depends_on(&p.spec, id)
            })
            .map(|p| p.spec.process_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Whether `id`, with dependencies `deps`, would close a dependency
    /// cycle among the placed processes: the cycle.
    pub fn dependency_cycle(&self, id: &str, deps: &[String]) -> Option<Vec<String>> {
        crate::model::validate::find_cycle(id, deps, |other| {
            self.processes
                .get(other)
                .map(|p| crate::model::validate::dependencies_of(&p.spec))
                .unwrap_or_default()
        })
    }
}

/// The spread group a process record names, if any.
fn spread_group(record: &ProcessRecord) -> Option<&str> {
    record
        .spec
        .config
        .as_ref()
        .and_then(|c| c.placement.as_ref())
        .map(|p| p.spread_group.as_str())
        .filter(|g| !g.is_empty())
}
