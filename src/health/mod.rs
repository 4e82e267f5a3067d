//! Health: liveness probes, resource usage from cgroups, and the one status
//! per process built from systemd's state and the probe's verdict.

pub mod exit;
pub mod probe;
pub mod usage;

use std::fmt;

use crate::systemd::UnitStatus;

/// A process's status, as the launcher reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Being started, or running without having passed its first probe.
    Starting,
    /// Running, and healthy if it has a probe.
    Running,
    /// Running, but its probe failed `failure_threshold` times in a row.
    Unhealthy,
    /// Between a crash and systemd's restart of it, or being restored.
    Restarting,
    /// systemd's start limit was hit: restarts stopped until a cool-down.
    CircuitOpen,
    Stopping,
    Stopped,
    /// Failed and not restarted (e.g. `Restart=no`), or could not start.
    Failed,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Self::Starting,
        Self::Running,
        Self::Unhealthy,
        Self::Restarting,
        Self::CircuitOpen,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Unhealthy => "unhealthy",
            Self::Restarting => "restarting",
            Self::CircuitOpen => "circuit_open",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    /// The upstream `ProcessHealth.status` vocabulary.
    pub fn upstream(self) -> &'static str {
        match self {
            Self::Running | Self::Unhealthy => "running",
            Self::Starting | Self::Restarting => "starting",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::CircuitOpen | Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the launcher itself is doing with a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; its unit is being created.
    Starting,
    /// Its unit is running or was adopted.
    Held,
    /// Its unit will be recreated (it disappeared).
    Restoring,
    /// A revocation is stopping it.
    Revoking,
    /// This host cannot start it now (its binary is missing or refused,
    /// see `last_error`); retried with backoff until it can.
    Blocked,
    /// Stopped by the launcher, cut off from every admin for its
    /// `on_disconnect.stop_after_ms`; started again when an admin that
    /// places it here answers.
    Suspended,
}

/// The probe's view of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// The process has a probe at all.
    pub configured: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// A probe has succeeded since the process (re)started.
    pub passed: bool,
    /// The probe restarted the process and it has not passed since.
    pub restarted_unhealthy: bool,
    pub total_failures: u32,
    pub last_error: Option<String>,
}

/// The one status of a process.
pub fn verdict(
    phase: Phase,
    unit: Option<&UnitStatus>,
    probe: &ProbeState,
    failure_threshold: u32,
) -> Status {
    if phase == Phase::Revoking {
        return Status::Stopping;
    }
    if phase == Phase::Blocked {
        return Status::Failed;
    }
    if phase == Phase::Suspended {
        return match unit.map(|u| u.active_state.as_str()) {
            Some("active" | "activating" | "deactivating" | "reloading") => Status::Stopping,
            _ => Status::Stopped,
        };
    }
    let Some(u) = unit.filter(|u| !u.active_state.is_empty()) else {
        return match phase {
            Phase::Starting => Status::Starting,
            Phase::Restoring => Status::Restarting,
            _ => Status::Stopped,
        };
    };
    if u.start_limit_hit() {
        return Status::CircuitOpen;
    }
    match u.active_state.as_str() {
        "activating" if u.sub_state == "auto-restart" => Status::Restarting,
        "activating" => Status::Starting,
        "active" | "reloading" => {
            if !probe.configured {
                Status::Running
            } else if probe.consecutive_failures >= failure_threshold || probe.restarted_unhealthy {
                Status::Unhealthy
            } else if probe.passed {
                Status::Running
            } else {
                Status::Starting
            }
        }
        "deactivating" => Status::Stopping,
        "failed" if u.sub_state == "auto-restart" => Status::Restarting,
        "failed" => Status::Failed,
        _ => match phase {
            Phase::Restoring => Status::Restarting,
            _ => Status::Stopped,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: &str, sub: &str) -> UnitStatus {
        UnitStatus {
            active_state: active.into(),
            sub_state: sub.into(),
            restart: "on-failure".into(),
            start_limit_burst: 5,
            ..UnitStatus::default()
        }
    }

    #[test]
    fn verdicts() {
        let none = ProbeState::default();
        let probed = |failures, passed| ProbeState {
            configured: true,
            consecutive_failures: failures,
            passed,
            ..ProbeState::default()
        };
        let mut tripped = unit("failed", "failed");
        tripped.n_restarts = 5;
        let cases = [
            (
                Phase::Revoking,
                Some(unit("active", "running")),
                none.clone(),
                Status::Stopping,
            ),
            (Phase::Starting, None, none.clone(), Status::Starting),
            (Phase::Restoring, None, none.clone(), Status::Restarting),
            (Phase::Held, None, none.clone(), Status::Stopped),
            (
                Phase::Held,
                Some(unit("activating", "start")),
                none.clone(),
                Status::Starting,
            ),
            (
                Phase::Held,
                Some(unit("activating", "auto-restart")),
                none.clone(),
                Status::Restarting,
            ),
            (
                Phase::Held,
                Some(unit("active", "running")),
                none.clone(),
                Status::Running,
            ),
            (
                Phase::Held,
                Some(unit("active", "running")),
                probed(0, false),
                Status::Starting,
            ),
            (
                Phase::Held,
                Some(unit("active", "running")),
                probed(0, true),
                Status::Running,
            ),
            (
                Phase::Held,
                Some(unit("active", "running")),
                probed(2, true),
                Status::Running,
            ),
            (
                Phase::Held,
                Some(unit("active", "running")),
                probed(3, true),
                Status::Unhealthy,
            ),
            (
                Phase::Held,
                Some(unit("deactivating", "stop-sigterm")),
                none.clone(),
                Status::Stopping,
            ),
            (
                Phase::Held,
                Some(unit("failed", "failed")),
                none.clone(),
                Status::Failed,
            ),
            (
                Phase::Held,
                Some(tripped),
                none.clone(),
                Status::CircuitOpen,
            ),
            (
                Phase::Held,
                Some(unit("inactive", "dead")),
                none.clone(),
                Status::Stopped,
            ),
        ];
        for (phase, u, probe, expected) in cases {
            assert_eq!(
                verdict(phase, u.as_ref(), &probe, 3),
                expected,
                "{phase:?} {u:?} {probe:?}"
            );
        }
        let restarted = ProbeState {
            configured: true,
            passed: false,
            restarted_unhealthy: true,
            ..ProbeState::default()
        };
        assert_eq!(
            verdict(Phase::Held, Some(&unit("active", "running")), &restarted, 3),
            Status::Unhealthy
        );
    }

    #[test]
    fn upstream_vocabulary() {
        for s in Status::ALL {
            assert!(
                ["running", "starting", "stopping", "failed", "stopped"].contains(&s.upstream())
            );
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
