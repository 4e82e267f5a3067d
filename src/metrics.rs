//! Prometheus metrics of both daemons, served at `GET /metrics` on
//! `--metrics-listen` (OpenMetrics text). Counters are bumped where things
//! happen; gauges are computed from live state at each scrape.

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeStatus {
    pub r#type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cause {
    pub cause: String,
}

/// A call refused by the authorization gate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Denial {
    pub rpc: String,
    /// The kind of caller (root, local_user, launcher, operator, anonymous...).
    pub caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotState {
    pub state: String,
}

/// The launcher's metrics (`prism_launcher_*`).
pub struct LauncherMetrics {
    registry: Mutex<Registry>,
    pub processes: Family<TypeStatus, Gauge>,
    pub slots: Family<SlotState, Gauge>,
    pub assignments: Family<Outcome, Counter>,
    pub unit_start: Histogram,
    pub systemd_call_errors: Counter,
    pub systemd_reconnects: Counter,
    pub systemd_connected: Gauge,
    pub restarts: Family<Cause, Counter>,
    pub heartbeat_failures: Counter,
    /// Processes stopped because no admin answered for their
    /// `on_disconnect.stop_after_ms`.
    pub disconnect_stops: Counter,
    /// Seconds since an admin last answered this launcher.
    pub admin_silence: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Orders refused as a deposed leader's (fencing).
    pub stale_epoch_refusals: Counter,
    pub auth_denied: Family<Denial, Counter>,
    /// Engine counters already folded in (they are cumulative there).
    seen_errors: AtomicU64,
    seen_reconnects: AtomicU64,
}

impl Default for LauncherMetrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            processes: Family::default(),
            slots: Family::default(),
            assignments: Family::default(),
            // 5 ms .. ~10 s
            unit_start: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            systemd_call_errors: Counter::default(),
            systemd_reconnects: Counter::default(),
            systemd_connected: Gauge::default(),
            restarts: Family::default(),
            heartbeat_failures: Counter::default(),
            disconnect_stops: Counter::default(),
            admin_silence: Gauge::default(),
            stale_epoch_refusals: Counter::default(),
            auth_denied: Family::default(),
            seen_errors: AtomicU64::new(0),
            seen_reconnects: AtomicU64::new(0),
        };
        {
            let mut r = m.registry.lock().expect("poisoned");
            r.register(
                "prism_launcher_processes",
                "Processes held, by type and status",
                m.processes.clone(),
            );
            r.register(
                "prism_launcher_slots",
                "Process slots, used and free",
                m.slots.clone(),
            );
            r.register(
                "prism_launcher_assignments",
                "Assignments received, by result",
                m.assignments.clone(),
            );
            r.register_with_unit(
                "prism_launcher_unit_start_duration",
                "From StartTransientUnit to the start job's end",
                Unit::Seconds,
                m.unit_start.clone(),
            );
            r.register(
                "prism_launcher_systemd_call_errors",
                "D-Bus calls to systemd that failed or timed out",
                m.systemd_call_errors.clone(),
            );
            r.register(
                "prism_launcher_systemd_reconnects",
                "Connections to systemd re-established after a loss",
                m.systemd_reconnects.clone(),
            );
            r.register(
                "prism_launcher_systemd_connected",
                "1 while connected to systemd",
                m.systemd_connected.clone(),
            );
            r.register(
                "prism_launcher_restarts",
                "Process restarts by cause: how the process ended (oom-kill, exit-code, signal, core-dump, \
                 watchdog, exec, timeout, probe), start-limit when systemd stopped restarting it, \
                 restore (its unit vanished) or half_open (the circuit's retry)",
                m.restarts.clone(),
            );
            r.register(
                "prism_launcher_heartbeat_failures",
                "Heartbeats to prism-admin that failed",
                m.heartbeat_failures.clone(),
            );
            r.register(
                "prism_launcher_disconnect_stops",
                "Processes this launcher stopped because no admin had answered it for their \
                 on_disconnect.stop_after_ms",
                m.disconnect_stops.clone(),
            );
            r.register(
                "prism_launcher_admin_silence_seconds",
                "Seconds since an admin last answered this launcher (0 without admins)",
                m.admin_silence.clone(),
            );
            r.register(
                "prism_launcher_stale_epoch_refusals",
                "Orders refused because they came from an admin older than the newest this \
                 launcher obeyed (a deposed leader)",
                m.stale_epoch_refusals.clone(),
            );
            r.register(
                "prism_launcher_auth_denied",
                "Calls refused by authorization, by RPC and kind of caller",
                m.auth_denied.clone(),
            );
        }
        m
    }
}

impl LauncherMetrics {
    /// Fold in the engine's cumulative counters.
    pub fn engine_totals(&self, call_errors: u64, reconnects: u64) {
        let prev = self.seen_errors.swap(call_errors, Ordering::Relaxed);
        self.systemd_call_errors
            .inc_by(call_errors.saturating_sub(prev));
        let prev = self.seen_reconnects.swap(reconnects, Ordering::Relaxed);
        self.systemd_reconnects
            .inc_by(reconnects.saturating_sub(prev));
    }

    pub fn restart(&self, cause: &str, n: u64) {
        if n > 0 {
            self.restarts
                .get_or_create(&Cause {
                    cause: cause.into(),
                })
                .inc_by(n);
        }
    }

    pub fn assignment(&self, result: &str) {
        self.assignments
            .get_or_create(&Outcome {
                result: result.into(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("poisoned"));
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Health {
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Leader {
    pub holder: String,
    pub address: String,
}

/// The admin's metrics (`prism_admin_*`).
pub struct AdminMetrics {
    registry: Mutex<Registry>,
    pub leading: Gauge,
    pub lease_epoch: Gauge,
    pub leader: Family<Leader, Gauge>,
    pub launchers: Family<Health, Gauge>,
    pub processes: Family<Status, Gauge>,
    pub placement_failures: Family<Reason, Counter>,
    pub dispatch_retries: Family<Kind, Counter>,
    pub auth_denied: Family<Denial, Counter>,
    pub watchers: Gauge,
    pub watchers_slow: Counter,
    pub events_streamed: Counter,
    pub events_oldest_revision: Gauge,
    pub events_head_revision: Gauge,
}

impl Default for AdminMetrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            leading: Gauge::default(),
            lease_epoch: Gauge::default(),
            leader: Family::default(),
            launchers: Family::default(),
            processes: Family::default(),
            placement_failures: Family::default(),
            dispatch_retries: Family::default(),
            auth_denied: Family::default(),
            watchers: Gauge::default(),
            watchers_slow: Counter::default(),
            events_streamed: Counter::default(),
            events_oldest_revision: Gauge::default(),
            events_head_revision: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().expect("poisoned");
            r.register(
                "prism_admin_leading",
                "1 while this admin leads, 0 while it follows",
                m.leading.clone(),
            );
            r.register(
                "prism_admin_lease_epoch",
                "The leader's epoch, as this admin last read the lease",
                m.lease_epoch.clone(),
            );
            r.register(
                "prism_admin_leader",
                "The admin that leads, as this one last read the lease (always 1)",
                m.leader.clone(),
            );
            r.register(
                "prism_admin_launchers",
                "Registered launchers, by health",
                m.launchers.clone(),
            );
            r.register(
                "prism_admin_processes",
                "Placed processes, by status",
                m.processes.clone(),
            );
            r.register(
                "prism_admin_placement_failures",
                "Assignments no launcher could take, by reason",
                m.placement_failures.clone(),
            );
            r.register(
                "prism_admin_dispatch_retries",
                "Pushes to launchers that failed and are retried, by kind",
                m.dispatch_retries.clone(),
            );
            r.register(
                "prism_admin_auth_denied",
                "Calls refused by authorization, by RPC and kind of caller",
                m.auth_denied.clone(),
            );
            r.register(
                "prism_admin_watchers",
                "Event streams (WatchEvents) open on this admin",
                m.watchers.clone(),
            );
            r.register(
                "prism_admin_watchers_ended_slow",
                "Event streams ended for falling too far behind",
                m.watchers_slow.clone(),
            );
            r.register(
                "prism_admin_events_streamed",
                "Events this admin read from the log for its watchers",
                m.events_streamed.clone(),
            );
            r.register(
                "prism_admin_events_oldest_revision",
                "The oldest event revision kept (a watcher resumes from one after it or later)",
                m.events_oldest_revision.clone(),
            );
            r.register(
                "prism_admin_events_head_revision",
                "The fleet's last event revision",
                m.events_head_revision.clone(),
            );
            r.register(
                "prism_admin_watchers",
                "Event streams (WatchEvents) open on this admin",
                m.watchers.clone(),
            );
            r.register(
                "prism_admin_watchers_ended_slow",
                "Event streams ended for falling too far behind",
                m.watchers_slow.clone(),
            );
            r.register(
                "prism_admin_events_streamed",
                "Events this admin read from the log for its watchers",
                m.events_streamed.clone(),
            );
            r.register(
                "prism_admin_events_oldest_revision",
                "The oldest event revision kept (a watcher resumes from one after it or later)",
                m.events_oldest_revision.clone(),
            );
            r.register(
                "prism_admin_events_head_revision",
                "The fleet's last event revision",
                m.events_head_revision.clone(),
            );
        }
        m
    }
}

impl AdminMetrics {
    /// Who leads, as this admin last read the lease (`None`: not read yet).
    pub fn set_leader(&self, leading: bool, leader: Option<(&str, &str, i64)>) {
        self.leading.set(i64::from(leading));
        self.leader.clear();
        if let Some((holder, address, epoch)) = leader {
            self.lease_epoch.set(epoch);
            self.leader
                .get_or_create(&Leader {
                    holder: holder.into(),
                    address: address.into(),
                })
                .set(1);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("poisoned"));
        out
    }
}

/// Serve `GET /metrics` on `listener` until `shutdown`; `render` produces
/// the text (refreshing gauges first).
pub async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    render: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render().await,
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
