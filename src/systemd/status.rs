//! Unit state as systemd reports it, decoded from D-Bus property maps.

use std::collections::HashMap;

use zbus::OwnedVariant;

use crate::unit::props;

/// One row of `ListUnitsByPatterns`: enough to reconcile without reading
/// properties unit by unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSummary {
    pub name: String,
    pub description: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// A job (start, stop, restart) is queued or running.
    pub has_job: bool,
}

/// What systemd says about one unit. Fields start empty/zero and are filled
/// from `GetAll` replies and `PropertiesChanged` signals as they arrive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    pub description: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// `success`, `exit-code`, `signal`, `timeout`, `core-dump`,
    /// `watchdog`, `start-limit-hit`, `resources`…
    pub result: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    /// `ExecMainCode`: 1 exited, 2 killed, 3 dumped core.
    pub exec_main_code: i32,
    /// `ExecMainStatus`: exit status or signal number.
    pub exec_main_status: i32,
    /// `ActiveEnterTimestamp`, µs since the epoch; 0 if never active.
    pub active_enter_usec: u64,
    /// `InactiveEnterTimestamp`, µs since the epoch.
    pub inactive_enter_usec: u64,
    pub restart: String,
    pub start_limit_burst: u32,
    pub memory_current: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub tasks_current: Option<u64>,
    /// `ControlGroup`: the unit's cgroup path below the hierarchy root.
    pub control_group: String,
}

/// systemd's "not set" for unsigned properties.
const UNSET: u64 = u64::MAX;

fn get<T>(props: &HashMap<String, OwnedVariant>, name: &str) -> Option<T>
where
    T: TryFrom<OwnedVariant>,
{
    props
        .get(name)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

impl UnitStatus {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Fold in properties of the Unit or Service interface (any subset).
    pub fn merge(&mut self, props: &HashMap<String, OwnedVariant>) {
        let set_str = |field: &mut String, name: &str| {
            if let Some(v) = get::<String>(props, name) {
                *field = v;
            }
        };
        set_str(&mut self.description, props::DESCRIPTION);
        set_str(&mut self.load_state, props::LOAD_STATE);
        set_str(&mut self.active_state, props::ACTIVE_STATE);
        set_str(&mut self.sub_state, props::SUB_STATE);
        set_str(&mut self.result, props::RESULT);
        set_str(&mut self.restart, props::RESTART);
        set_str(&mut self.control_group, props::CONTROL_GROUP);
        if let Some(v) = get::<u32>(props, props::MAIN_PID) {
            self.main_pid = v;
        }
        if let Some(v) = get::<u32>(props, props::N_RESTARTS) {
            self.n_restarts = v;
        }
        if let Some(v) = get::<i32>(props, props::EXEC_MAIN_CODE) {
            self.exec_main_code = v;
        }
        if let Some(v) = get::<i32>(props, props::EXEC_MAIN_STATUS) {
            self.exec_main_status = v;
        }
        if let Some(v) = get::<u64>(props, props::ACTIVE_ENTER_TIMESTAMP) {
            self.active_enter_usec = v;
        }
        if let Some(v) = get::<u64>(props, props::INACTIVE_ENTER_TIMESTAMP) {
            self.inactive_enter_usec = v;
        }
        if let Some(v) = get::<u32>(props, props::START_LIMIT_BURST) {
            self.start_limit_burst = v;
        }
        let counter = |name: &str| get::<u64>(props, name).map(|v| (v != UNSET).then_some(v));
        if let Some(v) = counter(props::MEMORY_CURRENT) {
            self.memory_current = v;
        }
        if let Some(v) = counter(props::CPU_USAGE_NSEC) {
            self.cpu_usage_nsec = v;
        }
        if let Some(v) = counter(props::TASKS_CURRENT) {
            self.tasks_current = v;
        }
    }

    /// Take a full read (`GetAll`) into a status built from signals,
    /// without going back in time: the read may be older than the latest
    /// signal. Only what systemd never signals (constant properties and the
    /// cgroup path) is filled in, unless no signal has arrived at all.
    pub fn absorb_read(&mut self, read: &UnitStatus) {
        if self.active_state.is_empty() {
            *self = read.clone();
            return;
        }
        let fill = |field: &mut String, value: &String| {
            if field.is_empty() {
                field.clone_from(value);
            }
        };
        fill(&mut self.control_group, &read.control_group);
        fill(&mut self.restart, &read.restart);
        fill(&mut self.description, &read.description);
        if self.start_limit_burst == 0 {
            self.start_limit_burst = read.start_limit_burst;
        }
        // A signal of the Unit interface alone (a manager that did not
        // describe the unit since the launcher started) has no MainPID;
        // while the unit runs, the read's is the one.
        if self.main_pid == 0 && self.is_active() && read.is_active() {
            self.main_pid = read.main_pid;
        }
    }

    /// Take the state a unit list reports (newer than what is cached).
    pub fn absorb_summary(&mut self, listed: &UnitSummary) {
        self.load_state.clone_from(&listed.load_state);
        self.active_state.clone_from(&listed.active_state);
        self.sub_state.clone_from(&listed.sub_state);
        if !listed.description.is_empty() {
            self.description.clone_from(&listed.description);
        }
    }

    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }

    /// `failed` with no restart pending: systemd has given up on the unit.
    /// (Between restarts a unit is briefly `failed` with sub-state
    /// `auto-restart` pending; that is not final.)
    pub fn is_finally_failed(&self) -> bool {
        self.active_state == "failed" && self.sub_state == "failed"
    }

    /// The circuit breaker tripped: the unit restarts on failure, yet systemd
    /// stopped restarting it because its start limit was hit. systemd keeps
    /// `Result` at the last failure (e.g. `exit-code`), so the evidence is a
    /// final `failed` with restarts enabled and the burst used up.
    pub fn start_limit_hit(&self) -> bool {
        if self.result == "start-limit-hit" {
            return true;
        }
        self.is_finally_failed()
            && !self.restart.is_empty()
            && self.restart != "no"
            && self.start_limit_burst > 0
            && self.n_restarts >= self.start_limit_burst
    }

    /// One line on why the unit failed, for errors and `last_error`.
    pub fn describe_failure(&self) -> String {
        let how = match self.exec_main_code {
            1 => format!("exited with status {}", self.exec_main_status),
            2 => format!("killed by signal {}", self.exec_main_status),
            3 => format!("dumped core (signal {})", self.exec_main_status),
            _ => "did not run".to_owned(),
        };
        let mut s = format!(
            "state {}/{}, result {}, main process {}",
            self.active_state,
            self.sub_state,
            if self.result.is_empty() {
                "unknown"
            } else {
                &self.result
            },
            how
        );
        // 203/EXEC and friends: systemd's own exit codes for setup failures.
        if self.exec_main_code == 1 && (200..=245).contains(&self.exec_main_status) {
            s.push_str(" (a systemd setup failure, see the unit's journal)");
        }
        if self.start_limit_hit() {
            s.push_str(&format!(
                "; start limit hit after {} restarts",
                self.n_restarts
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_never_takes_signalled_state_back_in_time() {
        let read = UnitStatus {
            name: "u".into(),
            active_state: "activating".into(),
            sub_state: "start".into(),
            control_group: "/prism.slice/u".into(),
            restart: "on-failure".into(),
            start_limit_burst: 5,
            ..UnitStatus::default()
        };
        // Signals said "active" meanwhile: the older read must not undo it.
        let mut signalled = UnitStatus {
            name: "u".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 42,
            ..UnitStatus::default()
        };
        signalled.absorb_read(&read);
        assert_eq!(
            (signalled.active_state.as_str(), signalled.main_pid),
            ("active", 42)
        );
        assert_eq!(signalled.control_group, "/prism.slice/u");
        assert_eq!(
            (signalled.restart.as_str(), signalled.start_limit_burst),
            ("on-failure", 5)
        );
        // With no signal yet, the read is all there is.
        let mut fresh = UnitStatus::new("u");
        fresh.absorb_read(&read);
        assert_eq!(fresh, read);
        // A signal of the Unit interface alone has no MainPID: a read of
        // the running unit gives it.
        let running = UnitStatus {
            active_state: "active".into(),
            main_pid: 7,
            ..read.clone()
        };
        let mut unit_only = UnitStatus {
            name: "u".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            ..UnitStatus::default()
        };
        unit_only.absorb_read(&running);
        assert_eq!(unit_only.main_pid, 7);
        // Not from a read of a unit that was not running.
        let mut stopped = unit_only.clone();
        stopped.main_pid = 0;
        stopped.absorb_read(&read);
        assert_eq!(stopped.main_pid, 0);
    }
}
