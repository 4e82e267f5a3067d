//! Why a process ended: one reason per end, from what systemd recorded
//! (`Result=`, `ExecMainCode=`, `ExecMainStatus=`) or what the launcher did
//! (a probe-driven restart). Never a bare "failed".

use std::fmt;

use crate::systemd::UnitStatus;

/// How a process last ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The kernel's OOM killer killed a process of the unit
    /// (`Result=oom-kill`: past `MemoryMax=`, or the host ran out).
    OomKill,
    /// The main process exited with a non-zero status.
    ExitCode(i32),
    /// The main process was killed by a signal.
    Signal(i32),
    /// The main process dumped core on a signal.
    CoreDump(i32),
    /// No `WATCHDOG=1` within `WatchdogSec=`: systemd killed it.
    Watchdog,
    /// systemd could not set the process up or execute its binary: one of
    /// its own exit statuses (203/EXEC: missing, not executable, bad
    /// interpreter; 226/NAMESPACE, 217/USER...).
    Exec(i32),
    /// A start or stop ran past its timeout.
    Timeout,
    /// Restarts came too fast: systemd's start limit stopped them. Carries
    /// how the last run ended.
    StartLimit(Option<Box<ExitReason>>),
    /// The launcher restarted it after this many failed probes.
    Probe { failures: u32, last: String },
}

impl ExitReason {
    /// How the unit ended, as systemd recorded it; `None` for a clean exit
    /// or a unit that has not ended.
    pub fn of(unit: &UnitStatus) -> Option<Self> {
        let run = Self::of_run(unit);
        if unit.start_limit_hit() {
            return Some(Self::StartLimit(run.map(Box::new)));
        }
        run
    }

    fn of_run(unit: &UnitStatus) -> Option<Self> {
        match unit.result.as_str() {
            "oom-kill" => return Some(Self::OomKill),
            "watchdog" => return Some(Self::Watchdog),
            "timeout" => return Some(Self::Timeout),
            _ => {}
        }
        match (unit.exec_main_code, unit.exec_main_status) {
            (1, status) if is_setup_status(status) => Some(Self::Exec(status)),
            (1, 0) => None,
            (1, status) => Some(Self::ExitCode(status)),
            (2, signal) => Some(Self::Signal(signal)),
            (3, signal) => Some(Self::CoreDump(signal)),
            _ => match unit.result.as_str() {
                "exit-code" => Some(Self::ExitCode(unit.exec_main_status)),
                "signal" => Some(Self::Signal(unit.exec_main_status)),
                "core-dump" => Some(Self::CoreDump(unit.exec_main_status)),
                _ => None,
            },
        }
    }

    /// The cause label (`exit_reason`, `prism_launcher_restarts_total{cause}`).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::OomKill => "oom-kill",
            Self::ExitCode(_) => "exit-code",
            Self::Signal(_) => "signal",
            Self::CoreDump(_) => "core-dump",
            Self::Watchdog => "watchdog",
            Self::Exec(_) => "exec",
            Self::Timeout => "timeout",
            Self::StartLimit(_) => "start-limit",
            Self::Probe { .. } => "probe",
        }
    }

    /// Every cause label, for documentation and tests.
    pub const CAUSES: [&'static str; 9] = [
        "oom-kill",
        "exit-code",
        "signal",
        "core-dump",
        "watchdog",
        "exec",
        "timeout",
        "start-limit",
        "probe",
    ];
}

/// systemd's own exit statuses (200..=245) for a failure to set up or
/// execute the process, never the program's.
fn is_setup_status(status: i32) -> bool {
    (200..=245).contains(&status)
}

/// systemd's name of its setup exit status (`systemctl status` shows
/// `status=203/EXEC`).
fn setup_name(status: i32) -> &'static str {
    match status {
        200 => "CHDIR",
        203 => "EXEC",
        204 => "MEMORY",
        208 => "STDIN",
        209 => "STDOUT",
        210 => "CHROOT",
        214 => "SETSCHEDULER",
        216 => "GROUP",
        217 => "USER",
        218 => "CAPABILITIES",
        219 => "CGROUP",
        222 => "STDERR",
        226 => "NAMESPACE",
        227 => "NO_NEW_PRIVILEGES",
        228 => "SECCOMP",
        232 => "ADDRESS_FAMILIES",
        243 => "CREDENTIALS",
        _ => "SETUP",
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("{name} ({signal})")
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OomKill => f.write_str(
                "killed by the kernel's OOM killer (over MemoryMax=, or the host ran out of memory)",
            ),
            Self::ExitCode(status) => write!(f, "exited with status {status}"),
            Self::Signal(signal) => write!(f, "killed by {}", signal_name(*signal)),
            Self::CoreDump(signal) => write!(f, "dumped core on {}", signal_name(*signal)),
            Self::Watchdog => f.write_str(
                "watchdog timeout: no WATCHDOG=1 within WatchdogSec=, so systemd killed it",
            ),
            Self::Exec(status) => write!(
                f,
                "could not be started: {status}/{} (systemd could not set up or execute the \
                 binary; the unit's journal says why)",
                setup_name(*status)
            ),
            Self::Timeout => f.write_str("did not start or stop within its timeout"),
            Self::StartLimit(None) => {
                f.write_str("start limit hit: restarted too often, systemd stopped restarting it")
            }
            Self::StartLimit(Some(last)) => write!(
                f,
                "start limit hit: restarted too often, systemd stopped restarting it; the last \
                 run {last}"
            ),
            Self::Probe { failures, last } => write!(
                f,
                "restarted by the launcher after {failures} failed probes (last: {last})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(result: &str, code: i32, status: i32) -> UnitStatus {
        UnitStatus {
            active_state: "activating".into(),
            sub_state: "auto-restart".into(),
            result: result.into(),
            exec_main_code: code,
            exec_main_status: status,
            restart: "on-failure".into(),
            start_limit_burst: 5,
            ..UnitStatus::default()
        }
    }

    #[test]
    fn each_way_of_ending_has_its_own_reason() {
        let cases = [
            (
                ended("oom-kill", 2, 9),
                Some(ExitReason::OomKill),
                "oom-kill",
            ),
            (
                ended("exit-code", 1, 3),
                Some(ExitReason::ExitCode(3)),
                "exit-code",
            ),
            (ended("signal", 2, 9), Some(ExitReason::Signal(9)), "signal"),
            (
                ended("core-dump", 3, 11),
                Some(ExitReason::CoreDump(11)),
                "core-dump",
            ),
            (
                ended("watchdog", 2, 6),
                Some(ExitReason::Watchdog),
                "watchdog",
            ),
            (
                ended("exit-code", 1, 203),
                Some(ExitReason::Exec(203)),
                "exec",
            ),
            (
                ended("timeout", 2, 15),
                Some(ExitReason::Timeout),
                "timeout",
            ),
            (ended("success", 1, 0), None, ""),
            (ended("", 0, 0), None, ""),
        ];
        for (unit, reason, cause) in cases {
            let got = ExitReason::of(&unit);
            assert_eq!(got, reason, "{unit:?}");
            if let Some(r) = got {
                assert_eq!(r.cause(), cause);
                assert!(ExitReason::CAUSES.contains(&r.cause()));
            }
        }
        assert_eq!(
            ExitReason::Exec(203).to_string(),
            "could not be started: 203/EXEC (systemd could not set up or execute the binary; \
             the unit's journal says why)"
        );
        assert_eq!(ExitReason::Signal(9).to_string(), "killed by SIGKILL (9)");
    }

    #[test]
    fn the_start_limit_says_how_the_last_run_ended() {
        let mut u = ended("exit-code", 1, 3);
        u.active_state = "failed".into();
        u.sub_state = "failed".into();
        u.n_restarts = 5;
        let reason = ExitReason::of(&u).unwrap();
        assert_eq!(
            reason,
            ExitReason::StartLimit(Some(Box::new(ExitReason::ExitCode(3))))
        );
        assert_eq!(reason.cause(), "start-limit");
        assert!(
            reason
                .to_string()
                .ends_with("the last run exited with status 3")
        );
        // systemd's own verdict, when it gives it.
        let hit = ended("start-limit-hit", 0, 0);
        assert_eq!(ExitReason::of(&hit), Some(ExitReason::StartLimit(None)));
    }
}
