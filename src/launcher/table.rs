//! The table of held processes: one entry per process, with the indexes
//! (unit name, dynamic user) kept in step, and each entry's restore and
//! retry timers.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use crate::{
    backoff,
    health::{Phase, ProbeState},
    model::ManagedProcess,
    pb::prism as pb,
    systemd::UnitStatus,
    unit,
};

/// Restoring a unit that keeps disappearing backs off up to this.
const RESTORE_BACKOFF: backoff::Policy =
    backoff::Policy::new(Duration::from_secs(1), Duration::from_secs(300));
/// A process the host cannot start (missing binary) is retried at least
/// this often: a package install or a late mount heals it soon.
const BLOCKED_RETRY: backoff::Policy =
    backoff::Policy::new(Duration::from_secs(1), Duration::from_secs(30));
/// A unit that ran this long before vanishing is restored at once.
const RESTORE_STABLE_AFTER: Duration = Duration::from_secs(60);

/// One process the launcher holds.
#[derive(Debug)]
pub struct Entry {
    pub process: ManagedProcess,
    /// The assignment as received (secrets included: it is what is stored).
    pub wire: pb::ProcessAssignment,
    pub unit: String,
    pub phase: Phase,
    pub unit_status: Option<UnitStatus>,
    pub probe: ProbeState,
    pub probe_task: Option<tokio::task::AbortHandle>,
    /// Restarts the launcher caused (probe failures, restorations).
    pub launcher_restarts: u32,
    pub start_failures: u32,
    pub last_error: Option<String>,
    /// How the process last ended, if it did.
    pub exit: Option<crate::health::exit::ExitReason>,
    /// Restarts the launcher paces (a manager older than systemd 254).
    pub pace: super::pace::Pace,
    /// A revocation is being recorded: no new dependent is accepted.
    pub revoke_pending: bool,
    /// Consecutive quick restorations, for backoff.
    pub restorations: u32,
    pub restore_not_before: Option<Instant>,
    pub circuit_opened_at: Option<Instant>,
    /// When it was assigned, in the supervisor's assignment sequence.
    pub assigned_seq: u64,
    /// When its state file was written (Unix milliseconds): what an admin
    /// that lost the process compares its own records with.
    pub recorded_at_ms: i64,
    /// The admin placed it (see `StoredProcess.placed_by_admin`).
    pub placed_by_admin: bool,
}

impl Entry {
    pub fn new(process: ManagedProcess, wire: pb::ProcessAssignment, phase: Phase) -> Self {
        let unit = unit::unit_name(process.process_type(), &process.id);
        Self {
            process,
            wire,
            unit,
            phase,
            unit_status: None,
            probe: ProbeState::default(),
            probe_task: None,
            launcher_restarts: 0,
            start_failures: 0,
            last_error: None,
            exit: None,
            pace: super::pace::Pace::default(),
            revoke_pending: false,
            restorations: 0,
            restore_not_before: None,
            circuit_opened_at: None,
            assigned_seq: 0,
            recorded_at_ms: crate::clock::unix_ms(),
            placed_by_admin: false,
        }
    }

    /// A revocation is being recorded or carried out.
    pub fn is_being_revoked(&self) -> bool {
        self.revoke_pending || self.phase == Phase::Revoking
    }

    /// The unit disappeared behind the launcher's back: restore it, after a
    /// backoff that grows while it keeps vanishing quickly.
    pub fn schedule_restore(&mut self, now: Instant) {
        let ran_long = self
            .unit_status
            .as_ref()
            .filter(|s| s.active_enter_usec > 0)
            .map(|s| {
                let ran = crate::clock::unix_usec().saturating_sub(s.active_enter_usec);
                Duration::from_micros(ran) >= RESTORE_STABLE_AFTER
            })
            .unwrap_or(false);
        if ran_long {
            self.restorations = 0;
        }
        let delay = match self.restorations {
            0 => Duration::ZERO,
            n => RESTORE_BACKOFF.step(n - 1),
        };
        self.restorations = self.restorations.saturating_add(1);
        self.restore_not_before = Some(now + delay);
        self.phase = Phase::Restoring;
        self.unit_status = None;
    }

    /// This host cannot start the process now: report it failed with the
    /// reason, and retry after a backoff.
    pub fn block(&mut self, now: Instant, reason: String) {
        let delay = BLOCKED_RETRY.step(self.restorations);
        self.restorations = self.restorations.saturating_add(1);
        self.restore_not_before = Some(now + delay);
        self.phase = Phase::Blocked;
        self.start_failures += 1;
        self.last_error = Some(reason);
    }

    /// Stop the probe task, if any.
    pub fn stop_probe(&mut self) {
        if let Some(task) = self.probe_task.take() {
            task.abort();
        }
    }
}

/// A dependency the launcher refuses: unknown here, or a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyError {
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Table {
    /// Boxed: an entry is about 1.7 KiB, and a map's spare capacity would
    /// otherwise cost that much per empty bucket.
    pub entries: HashMap<String, Box<Entry>>,
    /// Unit name to process id.
    pub units: HashMap<String, String>,
    /// Dynamic user name to who it belongs to ([`unit::user_owner`]) and
    /// how many held processes run as it.
    users: HashMap<String, (String, usize)>,
}

/// Two owners (namespaces, processes) hash to one dynamic user name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCollision {
    pub user: String,
    pub owner: String,
    pub holder: String,
}

impl Table {
    pub fn insert(&mut self, entry: Entry) {
        if let Some(mut old) = self.remove(&entry.process.id) {
            old.stop_probe();
        }
        self.units
            .insert(entry.unit.clone(), entry.process.id.clone());
        let claim = self
            .users
            .entry(unit::dynamic_user(&entry.process))
            .or_insert_with(|| (unit::user_owner(&entry.process), 0));
        claim.1 += 1;
        self.entries
            .insert(entry.process.id.clone(), Box::new(entry));
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let mut entry = *self.entries.remove(id)?;
        if self.units.get(&entry.unit).is_some_and(|i| i == id) {
            self.units.remove(&entry.unit);
        }
        self.release_user(&unit::dynamic_user(&entry.process));
        entry.stop_probe();
        Some(entry)
    }

    fn release_user(&mut self, user: &str) {
        if let Some(claim) = self.users.get_mut(user) {
            claim.1 -= 1;
            if claim.1 == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Would `process` share a dynamic user with an owner other than its
    /// own? Processes of one namespace share theirs by design; two
    /// namespaces (or processes) whose names hash alike must not.
    pub fn user_collision(&self, process: &ManagedProcess) -> Option<UserCollision> {
        self.user_collision_as(&unit::dynamic_user(process), &unit::user_owner(process))
    }

    fn user_collision_as(&self, user: &str, owner: &str) -> Option<UserCollision> {
        let (holder, _) = self.users.get(user)?;
        (holder != owner).then(|| UserCollision {
            user: user.to_owned(),
            owner: owner.to_owned(),
            holder: holder.clone(),
        })
    }

    pub fn by_unit(&mut self, unit: &str) -> Option<&mut Entry> {
        let id = self.units.get(unit)?;
        self.entries.get_mut(id).map(|e| &mut **e)
    }
}

impl Table {
    /// The dependencies of `p` this launcher holds (and is not revoking),
    /// as `(unit, bind)`.
    pub fn dependency_units(&self, p: &ManagedProcess) -> Vec<(String, bool)> {
        p.depends_on
            .iter()
            .filter_map(|d| {
                self.entries
                    .get(&d.id)
                    .filter(|e| !e.is_being_revoked())
                    .map(|e| (e.unit.clone(), d.bind))
            })
            .collect()
    }

    /// The processes held here that depend on `id` and are not being
    /// revoked themselves, by id. (A scan: revocations only, never on the
    /// assignment path.)
    pub fn dependents_of(&self, id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.phase != Phase::Revoking && e.process.depends_on(id))
            .map(|e| e.process.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// `p`'s dependencies must be held here, unless the admin placed it
    /// (it holds `p` until dependencies on other launchers run), and must
    /// not lead back to `p`.
    pub fn check_dependencies(
        &self,
        p: &ManagedProcess,
        placed_by_admin: bool,
    ) -> Result<(), DependencyError> {
        if p.depends_on.is_empty() {
            return Ok(());
        }
        // Only what runs beside it, unless the admin placed it; and not
        // what is being revoked (prism-admin moves processes: for its
        // placements a copy revoked here is just not here,
        // `dependency_units`).
        if !placed_by_admin {
            for (i, d) in p.depends_on.iter().enumerate() {
                let reason = match self.entries.get(&d.id) {
                    None => format!(
                        "no process {} on this launcher (a process depends only on what runs \
                         beside it, unless prism-admin placed it)",
                        d.id
                    ),
                    Some(e) if e.is_being_revoked() => format!("process {} is being revoked", d.id),
                    Some(_) => continue,
                };
                return Err(DependencyError {
                    field: format!("config.depends_on[{i}].process_id"),
                    reason,
                });
            }
        }
        let deps_of = |id: &str| {
            self.entries
                .get(id)
                .map(|e| e.process.dependency_ids())
                .unwrap_or_default()
        };
        match crate::model::validate::find_cycle(&p.id, &p.dependency_ids(), deps_of) {
            Some(cycle) => Err(DependencyError {
                field: "config.depends_on".into(),
                reason: format!("a dependency cycle: {}", cycle.join(" → ")),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::LauncherError;
    use crate::unit::tests::{pattern, process};

    #[test]
    fn dynamic_users_are_claimed_per_owner_and_collisions_refused() {
        let mut table = Table::default();
        let a = process(pattern());
        let user = unit::dynamic_user(&a);
        table.insert(Entry::new(
            a.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        // Another process of the same namespace shares the user by design.
        let mut b = a.clone();
        b.id = "kv-2".into();
        assert_eq!(table.user_collision(&b), None);
        table.insert(Entry::new(
            b.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        // A namespace whose name hashes to the same user is refused (a
        // collision of 110 bits of SHA-256 is forged here).
        let collision = table
            .user_collision_as(&user, "ns:billing")
            .expect("collision");
        assert_eq!(collision.holder, "ns:orders");
        assert_eq!(collision.owner, "ns:billing");
        let message = LauncherError::UserCollision(collision).to_string();
        assert!(
            message.starts_with("namespace: ns:billing and ns:orders"),
            "{message}"
        );
        // The claim goes with its last holder.
        table.remove(&a.id);
        assert!(table.user_collision_as(&user, "ns:billing").is_some());
        table.remove(&b.id);
        assert_eq!(table.user_collision_as(&user, "ns:billing"), None);
        // Replacing a process keeps one claim.
        table.insert(Entry::new(
            a.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        table.insert(Entry::new(
            a.clone(),
            pb::ProcessAssignment::default(),
            Phase::Held,
        ));
        table.remove(&a.id);
        assert!(table.users.is_empty());
    }
}
