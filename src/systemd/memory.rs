//! An in-memory manager behind the [`Systemd`] trait, for unit tests of the
//! logic above it (supervision, reconciliation, restore and circuit
//! timers). It keeps units, jobs as calls, and events, and fails on request.
//!
//! It models what the launcher relies on and nothing more: a started unit is
//! `active/running` at once, a stopped one is unloaded at once (with a
//! `Removed` event), a restart bumps `NRestarts`. Integration tests drive a
//! real systemd user manager instead; this is never a stand-in for those.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    ConnectionState, Stopped, Systemd, SystemdError, UnitEvent, UnitStatus, UnitSummary, Whom,
};
use crate::unit::{PropValue, UnitSpec, props};

/// A call the launcher made, in order, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Start(String),
    Stop(String),
    Restart(String),
    Kill(String, i32),
    ResetFailed(String),
    StartExisting(String),
    SetProperties(String, Vec<&'static str>),
    List,
    Status(String),
}

/// Which call a scripted failure applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Start,
    Stop,
    Restart,
    List,
    SetProperties,
}

/// A unit as this manager holds it.
#[derive(Clone, Debug)]
pub struct MemoryUnit {
    pub spec: Option<UnitSpec>,
    pub status: UnitStatus,
}

#[derive(Default)]
struct Inner {
    units: BTreeMap<String, MemoryUnit>,
    calls: Vec<Call>,
    failures: BTreeMap<Op, VecDeque<SystemdError>>,
    /// Units whose start job ends in failure (with this status).
    failing_starts: BTreeMap<String, UnitStatus>,
    next_pid: u32,
    state: Option<ConnectionState>,
    /// The major version it claims (0: unknown, assume current).
    version: u32,
}

/// The in-memory manager. Cheap to create; share it as `Arc<MemorySystemd>`
/// and hand the launcher an `Arc<dyn Systemd>` of the same value.
pub struct MemorySystemd {
    inner: Mutex<Inner>,
    events: broadcast::Sender<UnitEvent>,
}

impl Default for MemorySystemd {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySystemd {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                next_pid: 1000,
                ..Inner::default()
            }),
            events: broadcast::channel(4096).0,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("memory systemd poisoned")
    }

    fn emit(&self, event: UnitEvent) {
        let _ = self.events.send(event);
    }

    /// Claim to be systemd `version` (a manager without `RestartSteps=`
    /// below 254).
    pub fn set_version(&self, version: u32) {
        self.inner().version = version;
    }

    /// The next call of `op` fails with `error` (queued: several calls to
    /// this fail the next several calls).
    pub fn fail_next(&self, op: Op, error: SystemdError) {
        self.inner()
            .failures
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// Drop every scripted failure not yet used.
    pub fn clear_failures(&self) {
        self.inner().failures.clear();
    }

    /// Starts of `unit` end in a failed start job with `status` (the unit
    /// stays loaded, failed), until [`Self::heal`].
    pub fn fail_starts(&self, unit: &str, status: UnitStatus) {
        self.inner().failing_starts.insert(unit.to_owned(), status);
    }

    /// Starts of `unit` succeed again.
    pub fn heal(&self, unit: &str) {
        self.inner().failing_starts.remove(unit);
    }

    /// How many receivers follow the events (a test waits for its
    /// follower to subscribe before making anything happen).
    pub fn followers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner().calls.clone()
    }

    /// How many calls equal `call`.
    pub fn count(&self, call: &Call) -> usize {
        self.inner().calls.iter().filter(|c| *c == call).count()
    }

    /// Forget the calls so far.
    pub fn clear_calls(&self) {
        self.inner().calls.clear();
    }

    /// The unit's current status, if loaded.
    pub fn unit(&self, name: &str) -> Option<MemoryUnit> {
        self.inner().units.get(name).cloned()
    }

    /// Names of the loaded units.
    pub fn names(&self) -> BTreeSet<String> {
        self.inner().units.keys().cloned().collect()
    }

    /// Load a unit that the launcher did not create (left from an earlier
    /// run, or started by hand), active, with this description.
    pub fn insert(&self, name: &str, description: &str, active_state: &str) {
        let mut inner = self.inner();
        let status = UnitStatus {
            name: name.to_owned(),
            description: description.to_owned(),
            load_state: "loaded".into(),
            active_state: active_state.into(),
            sub_state: if active_state == "active" {
                "running".into()
            } else {
                active_state.into()
            },
            ..UnitStatus::default()
        };
        inner.units.insert(
            name.to_owned(),
            MemoryUnit {
                spec: None,
                status: status.clone(),
            },
        );
    }

    /// Change a unit's status as systemd would signal it (a crash, a
    /// start limit): `f` edits the status, and a `Changed` event follows.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut UnitStatus)) {
        let status = {
            let mut inner = self.inner();
            let Some(u) = inner.units.get_mut(name) else {
                return;
            };
            f(&mut u.status);
            u.status.clone()
        };
        self.emit(UnitEvent::Changed(Box::new(status)));
    }

    /// Change a unit's status while nobody hears it (the connection is
    /// down): no event follows.
    pub fn update_unheard(&self, name: &str, f: impl FnOnce(&mut UnitStatus)) {
        if let Some(u) = self.inner().units.get_mut(name) {
            f(&mut u.status);
        }
    }

    /// The unit goes away behind the launcher's back (stopped by hand,
    /// exited and collected): unloaded, with a `Removed` event.
    pub fn vanish(&self, name: &str) {
        if self.inner().units.remove(name).is_some() {
            self.emit(UnitEvent::Removed {
                unit: name.to_owned(),
            });
        }
    }

    /// The connection drops (`Disconnected`); calls fail `Unavailable`
    /// until [`Self::reconnect`].
    pub fn disconnect(&self) {
        self.inner().state = Some(ConnectionState::Disconnected);
        self.emit(UnitEvent::Disconnected);
    }

    /// The connection is back: a `Resynced` with what the manager holds.
    pub fn reconnect(&self) {
        let units = {
            let mut inner = self.inner();
            inner.state = None;
            inner.units.values().map(|u| summary(&u.status)).collect()
        };
        self.emit(UnitEvent::Resynced { units });
    }

    /// The unit goes away while nobody hears it: no event follows.
    pub fn vanish_unheard(&self, name: &str) {
        self.inner().units.remove(name);
    }

    /// The manager restarted (or the host rebooted): every transient unit
    /// is gone, and a `Resynced` with nothing follows.
    pub fn restart_manager(&self) {
        self.inner().units.clear();
        self.emit(UnitEvent::Resynced { units: Vec::new() });
    }

    fn begin(&self, call: Call, op: Option<Op>, unit: &str) -> Result<(), SystemdError> {
        let mut inner = self.inner();
        inner.calls.push(call);
        if inner.state == Some(ConnectionState::Disconnected) {
            return Err(SystemdError::Unavailable {
                target: "memory".into(),
                reason: format!("disconnected (calling for {unit})"),
            });
        }
        match op.and_then(|op| inner.failures.get_mut(&op)?.pop_front()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A loaded unit runs again (restarted, or started once more) under a
    /// new main process; a `Changed` event follows.
    fn run_again(&self, unit: &str) -> Result<(), SystemdError> {
        let status = {
            let mut inner = self.inner();
            inner.next_pid += 1;
            let pid = inner.next_pid;
            let u = inner
                .units
                .get_mut(unit)
                .ok_or_else(|| SystemdError::NoSuchUnit {
                    unit: unit.to_owned(),
                })?;
            u.status.main_pid = pid;
            u.status.active_state = "active".into();
            u.status.sub_state = "running".into();
            u.status.clone()
        };
        self.emit(UnitEvent::Changed(Box::new(status)));
        Ok(())
    }

    fn status_of(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        self.inner()
            .units
            .get(unit)
            .map(|u| u.status.clone())
            .ok_or_else(|| SystemdError::NoSuchUnit {
                unit: unit.to_owned(),
            })
    }
}

fn summary(s: &UnitStatus) -> UnitSummary {
    UnitSummary {
        name: s.name.clone(),
        description: s.description.clone(),
        load_state: s.load_state.clone(),
        active_state: s.active_state.clone(),
        sub_state: s.sub_state.clone(),
        has_job: false,
    }
}

fn str_prop(spec: &UnitSpec, name: &str) -> String {
    match spec.get(name) {
        Some(PropValue::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

#[async_trait]
impl Systemd for MemorySystemd {
    async fn start_transient(&self, spec: &UnitSpec) -> Result<(), SystemdError> {
        self.begin(Call::Start(spec.name.clone()), Some(Op::Start), &spec.name)?;
        let (status, failed) = {
            let mut inner = self.inner();
            if inner.units.contains_key(&spec.name) {
                return Err(SystemdError::UnitExists {
                    unit: spec.name.clone(),
                });
            }
            inner.next_pid += 1;
            // A start scripted to fail ends as that status says, failed.
            let failing = inner.failing_starts.get(&spec.name).cloned();
            let mut status = failing.clone().unwrap_or_default();
            status.name = spec.name.clone();
            status.description = str_prop(spec, props::DESCRIPTION);
            status.load_state = "loaded".into();
            status.restart = str_prop(spec, props::RESTART);
            status.control_group = format!("/prism.slice/{}", spec.name);
            if failing.is_some() {
                status.active_state = "failed".into();
                status.sub_state = "failed".into();
            } else {
                status.active_state = "active".into();
                status.sub_state = "running".into();
                status.main_pid = inner.next_pid;
                status.active_enter_usec = crate::clock::unix_usec();
            }
            inner.units.insert(
                spec.name.clone(),
                MemoryUnit {
                    spec: Some(spec.clone()),
                    status: status.clone(),
                },
            );
            (status, failing.is_some())
        };
        self.emit(UnitEvent::Changed(Box::new(status.clone())));
        if failed {
            return Err(SystemdError::StartFailed {
                unit: spec.name.clone(),
                job_result: "failed".into(),
                status: Box::new(status),
            });
        }
        Ok(())
    }

    async fn stop(&self, unit: &str, _grace: Duration) -> Result<Stopped, SystemdError> {
        self.begin(Call::Stop(unit.to_owned()), Some(Op::Stop), unit)?;
        let removed = self.inner().units.remove(unit);
        let Some(removed) = removed else {
            return Ok(Stopped::default());
        };
        self.emit(UnitEvent::Removed {
            unit: unit.to_owned(),
        });
        let running = removed.status.is_active();
        Ok(Stopped {
            was_loaded: true,
            killed: false,
            // SIGTERM ended a running main process; a dead one keeps its
            // own exit.
            exit_status: Some(if running {
                libc::SIGTERM
            } else {
                removed.status.exec_main_status
            }),
            exit_code: Some(if running {
                2
            } else {
                removed.status.exec_main_code
            }),
        })
    }

    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.begin(Call::Restart(unit.to_owned()), Some(Op::Restart), unit)?;
        self.run_again(unit)
    }

    async fn kill(&self, unit: &str, _whom: Whom, signal: i32) -> Result<(), SystemdError> {
        self.begin(Call::Kill(unit.to_owned(), signal), None, unit)?;
        self.status_of(unit).map(drop)
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.begin(Call::ResetFailed(unit.to_owned()), None, unit)?;
        self.status_of(unit).map(drop)
    }

    async fn start_existing(&self, unit: &str) -> Result<(), SystemdError> {
        self.begin(Call::StartExisting(unit.to_owned()), None, unit)?;
        self.run_again(unit)
    }

    async fn set_properties(
        &self,
        unit: &str,
        properties: &[(&'static str, PropValue)],
    ) -> Result<(), SystemdError> {
        let names = properties.iter().map(|(n, _)| *n).collect();
        self.begin(
            Call::SetProperties(unit.to_owned(), names),
            Some(Op::SetProperties),
            unit,
        )?;
        let mut inner = self.inner();
        let Some(u) = inner.units.get_mut(unit) else {
            return Err(SystemdError::NoSuchUnit {
                unit: unit.to_owned(),
            });
        };
        // As systemd: cgroup limits and the description only.
        const LIVE: [&str; 7] = [
            props::DESCRIPTION,
            props::MEMORY_MAX,
            props::MEMORY_HIGH,
            props::CPU_QUOTA_PER_SEC_USEC,
            props::CPU_WEIGHT,
            props::IO_WEIGHT,
            props::TASKS_MAX,
        ];
        if let Some((name, _)) = properties.iter().find(|(n, _)| !LIVE.contains(n)) {
            return Err(SystemdError::Refused {
                method: "SetUnitProperties",
                unit: unit.to_owned(),
                name: "org.freedesktop.DBus.Error.PropertyReadOnly".into(),
                message: format!("Cannot set property {name}, or unknown property."),
            });
        }
        if let Some(spec) = u.spec.as_mut() {
            for (name, value) in properties {
                spec.properties.retain(|(n, _)| n != name);
                spec.properties.push((name, value.clone()));
            }
        }
        if let Some((_, PropValue::Str(d))) =
            properties.iter().find(|(n, _)| *n == props::DESCRIPTION)
        {
            u.status.description = d.clone();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UnitSummary>, SystemdError> {
        self.begin(Call::List, Some(Op::List), "*")?;
        Ok(self
            .inner()
            .units
            .values()
            .filter(|u| crate::unit::is_workload_unit(&u.status.name))
            .map(|u| summary(&u.status))
            .collect())
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        self.begin(Call::Status(unit.to_owned()), None, unit)?;
        self.status_of(unit)
    }

    fn events(&self) -> broadcast::Receiver<UnitEvent> {
        self.events.subscribe()
    }

    fn connection_state(&self) -> ConnectionState {
        self.inner().state.unwrap_or(ConnectionState::Connected)
    }

    fn manager_version(&self) -> u32 {
        self.inner().version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::tests::{pattern, process};

    fn spec() -> UnitSpec {
        crate::unit::translate(&process(pattern()))
    }

    #[tokio::test]
    async fn starts_lists_and_stops_like_a_manager() {
        let m = MemorySystemd::new();
        let mut events = m.events();
        let spec = spec();
        m.start_transient(&spec).await.unwrap();
        let listed = m.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].active_state, "active");
        assert!(listed[0].description.starts_with("prism pattern"));
        assert!(matches!(
            m.start_transient(&spec).await,
            Err(SystemdError::UnitExists { .. })
        ));
        let stopped = m.stop(&spec.name, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            (stopped.was_loaded, stopped.exit_code, stopped.exit_status),
            (true, Some(2), Some(libc::SIGTERM))
        );
        assert!(!m.stop(&spec.name, Duration::ZERO).await.unwrap().was_loaded);
        assert!(matches!(events.recv().await, Ok(UnitEvent::Changed(_))));
        assert!(matches!(events.recv().await, Ok(UnitEvent::Removed { .. })));
    }

    #[tokio::test]
    async fn fails_on_request_and_while_disconnected() {
        let m = MemorySystemd::new();
        let spec = spec();
        m.fail_next(
            Op::Start,
            SystemdError::Unavailable {
                target: "t".into(),
                reason: "r".into(),
            },
        );
        assert!(m.start_transient(&spec).await.unwrap_err().is_transient());
        m.start_transient(&spec).await.unwrap();
        m.disconnect();
        assert_eq!(m.connection_state(), ConnectionState::Disconnected);
        assert!(m.list().await.unwrap_err().is_transient());
        m.reconnect();
        assert_eq!(m.list().await.unwrap().len(), 1);
        m.restart_manager();
        assert!(m.list().await.unwrap().is_empty());
        assert_eq!(m.count(&Call::Start(spec.name.clone())), 2);
    }

    #[tokio::test]
    async fn a_failing_start_leaves_a_failed_unit() {
        let m = MemorySystemd::new();
        let spec = spec();
        m.fail_starts(
            &spec.name,
            UnitStatus {
                result: "exit-code".into(),
                exec_main_code: 1,
                exec_main_status: 3,
                ..UnitStatus::default()
            },
        );
        let err = m.start_transient(&spec).await.unwrap_err();
        assert!(err.to_string().contains("exited with status 3"), "{err}");
        assert_eq!(m.unit(&spec.name).unwrap().status.active_state, "failed");
        m.heal(&spec.name);
        m.stop(&spec.name, Duration::ZERO).await.unwrap();
        m.start_transient(&spec).await.unwrap();
    }

    #[tokio::test]
    async fn restarts_and_starts_existing_units_and_refuses_missing_ones() {
        let m = MemorySystemd::new();
        let spec = spec();
        m.start_transient(&spec).await.unwrap();
        let pid = m.unit(&spec.name).unwrap().status.main_pid;
        m.restart(&spec.name).await.unwrap();
        assert_ne!(m.unit(&spec.name).unwrap().status.main_pid, pid);
        m.update(&spec.name, |s| s.active_state = "inactive".into());
        m.start_existing(&spec.name).await.unwrap();
        assert_eq!(m.unit(&spec.name).unwrap().status.active_state, "active");
        for missing in [
            m.restart("prism-pattern-nope.service").await,
            m.kill("prism-pattern-nope.service", Whom::Main, 15).await,
            m.reset_failed("prism-pattern-nope.service").await,
        ] {
            assert!(matches!(missing, Err(SystemdError::NoSuchUnit { .. })));
        }
        assert!(matches!(
            m.status("prism-pattern-nope.service").await,
            Err(SystemdError::NoSuchUnit { .. })
        ));
    }

    #[tokio::test]
    async fn lists_only_workload_units_and_vanishing_ones_are_removed() {
        let m = MemorySystemd::new();
        let mut events = m.events();
        m.insert("redis.service", "redis", "active");
        m.insert(&spec().name, "prism pattern kv-1 v3: /usr/bin/x", "active");
        let listed: Vec<String> = m
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(listed, vec![spec().name]);
        m.vanish(&spec().name);
        assert!(matches!(
            events.recv().await,
            Ok(UnitEvent::Removed { unit }) if unit == spec().name
        ));
        assert!(m.list().await.unwrap().is_empty());
        assert_eq!(m.names().len(), 1, "redis.service is left alone");
    }
}
