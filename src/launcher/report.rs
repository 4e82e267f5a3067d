//! Health reports: per process (upstream `ProcessHealth` plus extensions),
//! per launcher (`LauncherResourceUsage`, counts by status), and the
//! `STATUS=` line systemd shows.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};

use super::supervisor::{Entry, Supervisor};
use crate::serve::Shutdown;
use crate::{
    health::{Status, verdict},
    pb::prism::{self as pb, launcher::v1 as lpb},
    systemd::ConnectionState,
};

impl Supervisor {
    pub fn status_of(&self, e: &Entry) -> Status {
        match verdict(
            e.phase,
            e.unit_status.as_ref(),
            &e.probe,
            e.process.health.failure_threshold,
        ) {
            // The launcher saw the start limit stop it (also where systemd
            // alone cannot tell: restarts the launcher paced).
            Status::Failed if e.circuit_opened_at.is_some() => Status::CircuitOpen,
            status => status,
        }
    }

    fn health_of(&self, e: &Entry) -> pb::ProcessHealth {
        let status = self.status_of(e);
        let unit = e.unit_status.clone().unwrap_or_default();
        let running = unit.is_active();
        let usage = if running {
            self.usage.read(&unit.control_group)
        } else {
            Default::default()
        };
        let uptime = if running && unit.active_enter_usec > 0 {
            crate::clock::unix_usec().saturating_sub(unit.active_enter_usec) / 1_000_000
        } else {
            0
        };
        let last_error = e
            .probe
            .last_error
            .clone()
            .filter(|_| status == Status::Unhealthy)
            .or_else(|| e.last_error.clone())
            .unwrap_or_default();
        pb::ProcessHealth {
            status: status.upstream().into(),
            pid: if running { unit.main_pid as i32 } else { 0 },
            restart_count: (unit.n_restarts + e.launcher_restarts) as i32,
            error_count: (e.probe.total_failures + e.start_failures) as i32,
            memory_mb: usage.memory_bytes.map_or(0, |b| (b / (1024 * 1024)) as i64),
            uptime_seconds: uptime as i64,
            last_error,
            cpu_percent: usage.cpu_percent.unwrap_or(0.0),
            detailed_status: status.as_str().into(),
            unit_name: e.unit.clone(),
            active_state: unit.active_state,
            sub_state: unit.sub_state,
            version: e.process.version,
            exit_reason: e
                .exit
                .as_ref()
                .map(|r| r.cause().to_owned())
                .unwrap_or_default(),
        }
    }

    fn info_of(&self, e: &Entry) -> lpb::ProcessInfo {
        lpb::ProcessInfo {
            assignment: Some(crate::protocol::redact(&e.wire)),
            health: Some(self.health_of(e)),
            unit_name: e.unit.clone(),
        }
    }

    /// Read the full status of held units the signals have not described
    /// yet (adopted at start-up): one read per unit, once.
    async fn fill_statuses(self: &Arc<Self>, ids: Vec<String>) {
        let units: Vec<(String, String)> = {
            let table = self.table();
            ids.iter()
                .filter_map(|id| table.entries.get(id))
                .filter(|e| {
                    e.unit_status
                        .as_ref()
                        .is_none_or(|s| s.active_state.is_empty() || s.control_group.is_empty())
                })
                .map(|e| (e.process.id.clone(), e.unit.clone()))
                .collect()
        };
        stream::iter(units)
            .for_each_concurrent(16, |(id, unit)| {
                let this = self.clone();
                async move {
                    if let Ok(read) = this.systemd.status(&unit).await
                        && let Some(e) = this.table().entries.get_mut(&id)
                        && e.unit == unit
                    {
                        // Signals may have arrived during the read: they win.
                        e.unit_status
                            .get_or_insert_with(|| crate::systemd::UnitStatus::new(&unit))
                            .absorb_read(&read);
                    }
                }
            })
            .await;
    }

    pub async fn get(self: &Arc<Self>, id: &str) -> Option<lpb::ProcessInfo> {
        self.fill_statuses(vec![id.to_owned()]).await;
        let table = self.table();
        table.entries.get(id).map(|e| self.info_of(e))
    }

    /// Every process matching the filters (empty strings match all).
    pub async fn list(
        self: &Arc<Self>,
        process_type: &str,
        namespace: &str,
        status: &str,
    ) -> lpb::ListProcessesResponse {
        let ids: Vec<String> = self.table().entries.keys().cloned().collect();
        self.fill_statuses(ids).await;
        let table = self.table();
        let mut processes: Vec<lpb::ProcessInfo> = table
            .entries
            .values()
            .filter(|e| {
                process_type.is_empty() || e.process.process_type().as_str() == process_type
            })
            .filter(|e| namespace.is_empty() || e.process.namespace == namespace)
            .filter(|e| {
                status.is_empty()
                    || self.status_of(e).as_str() == status
                    || self.status_of(e).upstream() == status
            })
            .map(|e| self.info_of(e))
            .collect();
        processes.sort_by(|a, b| a.unit_name.cmp(&b.unit_name));
        drop(table);
        lpb::ListProcessesResponse {
            processes,
            resources: Some(self.resources()),
        }
    }

    /// Slots and usage of the whole launcher.
    pub fn resources(&self) -> pb::LauncherResourceUsage {
        let table = self.table();
        let mut memory = 0u64;
        let mut cpu = 0f32;
        for e in table.entries.values() {
            if let Some(s) = e.unit_status.as_ref().filter(|s| s.is_active()) {
                let u = self.usage.read(&s.control_group);
                memory += u.memory_bytes.unwrap_or(0);
                cpu += u.cpu_percent.unwrap_or(0.0);
            }
        }
        let used = table.entries.len();
        pb::LauncherResourceUsage {
            process_count: used as i32,
            max_processes: self.max_processes as i32,
            total_memory_mb: (memory / (1024 * 1024)) as i64,
            cpu_percent: cpu,
            available_slots: self.max_processes.saturating_sub(used) as i32,
        }
    }

    /// Processes by status.
    pub fn counts(&self) -> BTreeMap<Status, usize> {
        let table = self.table();
        let mut counts = BTreeMap::new();
        for e in table.entries.values() {
            *counts.entry(self.status_of(e)).or_default() += 1;
        }
        counts
    }

    /// The metrics text, with gauges refreshed from the live state.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.processes.clear();
        let mut used = 0usize;
        {
            let table = self.table();
            for e in table.entries.values() {
                m.processes
                    .get_or_create(&crate::metrics::TypeStatus {
                        r#type: e.process.process_type().to_string(),
                        status: self.status_of(e).as_str().to_owned(),
                    })
                    .inc();
                used += 1;
            }
        }
        for (state, n) in [
            ("used", used),
            ("free", self.max_processes.saturating_sub(used)),
        ] {
            m.slots
                .get_or_create(&crate::metrics::SlotState {
                    state: state.into(),
                })
                .set(n as i64);
        }
        m.systemd_connected.set(i64::from(
            self.systemd.connection_state() == ConnectionState::Connected,
        ));
        let (errors, reconnects) = self.systemd.stats();
        m.engine_totals(errors, reconnects);
        m.render()
    }

    /// `12 running, 1 unhealthy, 37 slots free; systemd connected`.
    pub fn status_line(&self) -> String {
        let counts = self.counts();
        let used: usize = counts.values().sum();
        let mut parts: Vec<String> = counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.as_str().replace('_', " ")))
            .collect();
        if parts.is_empty() {
            parts.push("no processes".into());
        }
        let free = self.max_processes.saturating_sub(used);
        let systemd = match self.systemd.connection_state() {
            ConnectionState::Connected => "systemd connected",
            ConnectionState::Connecting => "connecting to systemd",
            ConnectionState::Disconnected => "systemd unreachable, reconnecting",
            ConnectionState::Closed => "systemd connection closed",
        };
        format!("{}, {free} slots free; {systemd}", parts.join(", "))
    }

    /// Call `f` with the status line whenever it changes (at most once a
    /// second), until the task is dropped. The line counts every process,
    /// so it is computed only after a change: never while idle, and not
    /// once per assignment under load.
    pub async fn report_status(
        self: Arc<Self>,
        mut f: impl FnMut(&str) + Send,
        mut shutdown: Shutdown,
    ) {
        let mut last = String::new();
        loop {
            let line = self.status_line();
            if line != last {
                f(&line);
                last = line;
            }
            let settled = shutdown
                .until(async {
                    self.changed.notified().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                })
                .await;
            if settled.is_none() {
                return;
            }
        }
    }
}
