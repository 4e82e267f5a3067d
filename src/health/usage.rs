//! Memory and CPU of a unit, read from its cgroup: systemd is not asked, so
//! reporting costs the manager nothing however many units there are.

use std::{collections::HashMap, fs, path::PathBuf, sync::Mutex, time::Instant};

/// The cgroup v2 hierarchy: `/sys/fs/cgroup/unified` on hybrid hosts.
fn cgroup2_root() -> PathBuf {
    let hybrid = PathBuf::from("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.controllers").exists() {
        hybrid
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    /// Percent of one CPU since the previous reading of this cgroup.
    pub cpu_percent: Option<f32>,
}

/// Reads usage and remembers the last CPU counter per cgroup for rates.
#[derive(Debug, Default)]
pub struct UsageReader {
    last_cpu: Mutex<HashMap<String, (u64, Instant)>>,
}

impl UsageReader {
    /// Usage of the cgroup at `control_group` (as systemd's `ControlGroup`
    /// names it); missing controllers read as `None`.
    pub fn read(&self, control_group: &str) -> Usage {
        if control_group.is_empty() {
            return Usage::default();
        }
        let dir = cgroup2_root().join(control_group.trim_start_matches('/'));
        let memory_bytes = fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let usage_usec: Option<u64> = fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
        let cpu_percent = usage_usec.and_then(|now_usec| {
            let now = Instant::now();
            let mut last = self.last_cpu.lock().expect("poisoned");
            let previous = last.insert(control_group.to_owned(), (now_usec, now));
            previous.and_then(|(before_usec, at)| {
                let wall = now.duration_since(at).as_micros() as f64;
                (wall > 0.0)
                    .then(|| (now_usec.saturating_sub(before_usec) as f64 / wall * 100.0) as f32)
            })
        });
        Usage {
            memory_bytes,
            cpu_percent,
        }
    }

    /// Forget a cgroup's CPU history (its unit is gone).
    pub fn forget(&self, control_group: &str) {
        self.last_cpu
            .lock()
            .expect("poisoned")
            .remove(control_group);
    }
}
