//! A new version of a running process: what can change in place, and what
//! needs a new unit.
//!
//! systemd changes a loaded unit's cgroup limits and description at runtime
//! (`SetUnitProperties`) and nothing else of a service: `Restart=`,
//! `RestartUSec=`, the start limit, `WatchdogUSec=`, `OOMPolicy=` and the
//! journal's rate limit are refused ("Cannot set property"). Probes are the
//! launcher's own, and so is the pace of restarts on a manager older than
//! systemd 254 (`launcher::pace`). So a version that changes only resource
//! limits, HTTP, TCP or gRPC probe settings, or (there) how the restart
//! delay grows up to an unchanged longest delay, keeps its process; anything
//! else replaces it.

use super::{PropValue, Props, description, limits_update, props, restart_properties};
use crate::model::{ManagedProcess, Probe};

/// How a new version is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Set these properties on the running unit; restart the probe if it
    /// changed. The process keeps running.
    InPlace { properties: Props, probe: bool },
    /// Stop the old unit and start a new one, for this reason.
    Replace { reason: String },
}

/// The plan from `old` (running) to `new` (same id, newer version) on a
/// manager of `version` (0: unknown, assume current).
pub fn plan(old: &ManagedProcess, new: &ManagedProcess, version: u32) -> Update {
    let replace = |reason: String| Update::Replace { reason };
    if let Some(field) = first_other_change(old, new, version) {
        return replace(field);
    }
    let Some(mut properties) = limits_update(&old.resources, &new.resources) else {
        return replace(
            "config.resources.tasks_max was dropped: only a new unit gets the manager's \
             DefaultTasksMax back"
                .into(),
        );
    };
    // The reconciler reads the running version from the description.
    properties.push((props::DESCRIPTION, PropValue::Str(description(new))));
    Update::InPlace {
        properties,
        probe: old.health != new.health,
    }
}

/// The first change systemd cannot apply to a running unit, named by its
/// wire field and why, if any.
fn first_other_change(old: &ManagedProcess, new: &ManagedProcess, version: u32) -> Option<String> {
    let watchdog = |p: &ManagedProcess| matches!(p.health.probe, Probe::Watchdog { .. });
    let fixed =
        |what: &str| format!("{what} changed, which systemd cannot change in a running unit");
    let checks: [(bool, &str); 18] = [
        (
            old.binary != new.binary || old.executable != new.executable,
            "config.binary",
        ),
        (old.args != new.args, "config.args"),
        (old.env != new.env, "config.env"),
        (old.port != new.port, "config.port"),
        (old.health_port != new.health_port, "config.health_port"),
        (old.log_level != new.log_level, "config.log_level"),
        (old.kind != new.kind, "the process type's config"),
        (old.namespace != new.namespace, "namespace"),
        (old.isolation != new.isolation, "config.isolation_level"),
        (
            old.restart.mode != new.restart.mode,
            "config.restart_policy.policy (Restart=)",
        ),
        (
            old.restart.max_starts != new.restart.max_starts
                || old.restart.window != new.restart.window,
            "config.restart_policy's start limit (StartLimitBurst=, StartLimitIntervalUSec=)",
        ),
        (
            restart_properties(old, version) != restart_properties(new, version),
            "config.restart_policy's delay (RestartUSec=, RestartSteps=, RestartMaxDelayUSec=)",
        ),
        (
            (watchdog(old) || watchdog(new)) && old.health.probe != new.health.probe,
            "config.health_check's watchdog (WatchdogUSec=)",
        ),
        (
            old.resources.oom_policy != new.resources.oom_policy,
            "config.resources.oom_policy (OOMPolicy=)",
        ),
        (old.sandbox != new.sandbox, "config.sandbox"),
        (old.logs != new.logs, "config.logs (LogRateLimit*=)"),
        (
            old.depends_on != new.depends_on,
            "config.depends_on (After=, Wants=, BindsTo=)",
        ),
        (
            old.stop_timeout != new.stop_timeout || old.notify_ready != new.notify_ready,
            "config.graceful_timeout_seconds or config.notify_ready",
        ),
    ];
    checks
        .into_iter()
        .find(|(changed, _)| *changed)
        .map(|(_, what)| fixed(what))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{HealthCheck, OomPolicy, Resources};
    use crate::unit::tests::{pattern, process};

    fn newer(f: impl FnOnce(&mut ManagedProcess)) -> (ManagedProcess, ManagedProcess) {
        let old = process(pattern());
        let mut new = old.clone();
        new.version += 1;
        f(&mut new);
        (old, new)
    }

    fn names(u: &Update) -> Vec<&'static str> {
        match u {
            Update::InPlace { properties, .. } => properties.iter().map(|(n, _)| *n).collect(),
            Update::Replace { .. } => vec![],
        }
    }

    #[test]
    fn limits_and_probe_settings_change_in_place() {
        let (old, new) = newer(|p| {
            p.resources.memory_max_bytes = Some(256 << 20);
            p.resources.memory_high_bytes = Some(200 << 20);
            p.resources.cpu_weight = Some(500);
        });
        let planned = plan(&old, &new, 0);
        assert_eq!(
            names(&planned),
            ["MemoryMax", "MemoryHigh", "CPUWeight", "Description"]
        );
        assert!(matches!(planned, Update::InPlace { probe: false, .. }));
        let Update::InPlace { properties, .. } = planned else {
            unreachable!()
        };
        assert!(properties.contains(&(props::DESCRIPTION, PropValue::Str(description(&new)))));

        let (old, new) = newer(|p| {
            p.health = HealthCheck {
                probe: Probe::Tcp { port: 9093 },
                interval: Duration::from_secs(2),
                ..HealthCheck::default()
            }
        });
        assert!(matches!(
            plan(&old, &new, 0),
            Update::InPlace { probe: true, .. }
        ));
    }

    #[test]
    fn a_dropped_limit_goes_back_to_the_default() {
        let mut old = process(pattern());
        old.resources = Resources {
            memory_max_bytes: Some(1 << 30),
            io_weight: Some(20),
            ..Resources::default()
        };
        let mut new = old.clone();
        new.version += 1;
        new.resources.memory_max_bytes = None;
        let Update::InPlace { properties, .. } = plan(&old, &new, 0) else {
            panic!("not in place")
        };
        assert_eq!(properties[0], (props::MEMORY_MAX, PropValue::U64(u64::MAX)));
        assert_eq!(properties.len(), 2, "{properties:?}");
    }

    #[test]
    fn everything_else_replaces_the_unit_naming_the_field() {
        type Change = Box<dyn Fn(&mut ManagedProcess)>;
        let cases: Vec<(&str, Change)> = vec![
            ("config.args", Box::new(|p| p.args.push("-v".into()))),
            (
                "config.env",
                Box::new(|p| {
                    p.env.insert("X".into(), "1".into());
                }),
            ),
            (
                "RestartUSec",
                Box::new(|p| p.restart.delay = Duration::from_secs(5)),
            ),
            ("StartLimitBurst", Box::new(|p| p.restart.max_starts = 9)),
            (
                "OOMPolicy",
                Box::new(|p| p.resources.oom_policy = Some(OomPolicy::Kill)),
            ),
            (
                "WatchdogUSec",
                Box::new(|p| {
                    p.health.probe = Probe::Watchdog {
                        timeout: Duration::from_secs(3),
                    }
                }),
            ),
            ("LogRateLimit", Box::new(|p| p.logs.burst = Some(10))),
            ("DefaultTasksMax", Box::new(|_| {})),
        ];
        for (field, change) in cases {
            let (mut old, mut new) = newer(|p| change(p));
            if field == "DefaultTasksMax" {
                old.resources.tasks_max = Some(64);
                new.resources.tasks_max = None;
            }
            match plan(&old, &new, 0) {
                Update::Replace { reason } => assert!(reason.contains(field), "{field}: {reason}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn where_the_launcher_paces_restarts_their_curve_changes_in_place() {
        let growing = |delay_ms: u64, steps: u32, max_s: u64| {
            move |p: &mut ManagedProcess| {
                p.restart.delay = Duration::from_millis(delay_ms);
                p.restart.steps = steps;
                p.restart.max_delay = Some(Duration::from_secs(max_s));
            }
        };
        let mut old = process(pattern());
        growing(100, 4, 10)(&mut old);
        let next = |f: &dyn Fn(&mut ManagedProcess)| {
            let mut new = old.clone();
            new.version += 1;
            f(&mut new);
            new
        };
        // systemd 252 has the longest delay as RestartUSec=; the launcher
        // paces the rest, so a new first delay or number of steps is its own.
        for new in [next(&growing(500, 4, 10)), next(&growing(100, 8, 10))] {
            assert_eq!(names(&plan(&old, &new, 252)), ["Description"]);
            // systemd 254 has them as properties it cannot change.
            assert!(
                matches!(plan(&old, &new, 254), Update::Replace { ref reason } if reason.contains("RestartSteps")),
                "{:?}",
                plan(&old, &new, 254)
            );
        }
        // The longest delay is RestartUSec= on 252: a new unit.
        let new = next(&growing(100, 4, 30));
        assert!(matches!(plan(&old, &new, 252), Update::Replace { .. }));
    }
}
