//! The prism-launcher daemon: gRPC service, durable desired state,
//! reconciliation against systemd, health aggregation, and its lifetime
//! under systemd (sd_notify readiness, status and watchdog).
//!
//! Stopping the daemon never stops a workload: each runs in its own
//! transient unit, owned by systemd. Only a revocation stops one.

mod admin_link;
mod assign;
pub mod config;
mod disconnect;
pub mod legacy;
mod pace;
pub mod patterns;
mod reconcile;
mod report;
pub mod service;
pub mod store;
pub mod supervisor;
mod table;
#[cfg(test)]
mod tests;
mod watch;

use std::{future::Future, sync::Arc, time::Duration};

pub use config::{Args, Config, ConfigError};
pub use reconcile::{Action, Want, plan};
pub use supervisor::{LauncherError, Supervisor};

use crate::{
    pb::prism::launcher::v1::launcher_server::LauncherServer,
    serve::{Daemon, limited_service},
    systemd::{ConnectionState, DbusSystemd, Options, Systemd},
};

pub use crate::serve::RunError;

/// What the launcher runs on, made by its caller: the binary binds the
/// configured addresses, opens the state directory and connects to the
/// configured manager; a test passes listeners on `127.0.0.1:0`, a
/// temporary directory and an in-memory manager.
pub struct Io {
    pub listeners: crate::serve::Listeners,
    pub systemd: Arc<dyn Systemd>,
    pub store: store::Store,
}

impl Io {
    /// What `config` names: its addresses bound (a busy one is an error
    /// naming it), its state directory, and its systemd manager.
    pub async fn open(config: &Config) -> Result<Self, RunError> {
        let store = store::Store::open(&config.state_dir).map_err(RunError::setup)?;
        let listeners = crate::serve::bind(
            config.listen,
            config.socket.as_deref(),
            config.metrics_listen,
        )
        .await?;
        let systemd: Arc<dyn Systemd> = Arc::new(DbusSystemd::spawn(Options {
            target: config.systemd.clone(),
            credentials_dir: config.credentials_dir.clone(),
            ..Options::default()
        }));
        Ok(Self {
            listeners,
            systemd,
            store,
        })
    }
}

/// The address the admin dials: as configured, with the port the listener
/// really got when the configuration asked for any free one (`:0`).
fn advertised(
    configured: &str,
    listen: Option<std::net::SocketAddr>,
    bound: Option<std::net::SocketAddr>,
) -> String {
    match (listen, bound, configured.strip_suffix(":0")) {
        (Some(l), Some(b), Some(host)) if l.port() == 0 => format!("{host}:{}", b.port()),
        _ => configured.to_owned(),
    }
}

/// Run the daemon on `io` until `shutdown` resolves.
pub async fn run(
    mut config: Config,
    io: Io,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Io {
        listeners,
        systemd,
        store,
    } = io;
    config.advertise_address =
        advertised(&config.advertise_address, config.listen, listeners.local);
    let supervisor = Supervisor::new(
        systemd,
        store,
        config.policy.clone(),
        config.capabilities.clone(),
        config.max_processes,
        config.circuit_cooldown,
    );
    // With an admin, what is not desired here may be about to be handed back
    // (a wiped state directory): wait for its placement before stopping.
    supervisor.allow_stopping_undesired(config.admin_endpoints.is_empty());
    let corrupt = supervisor.load().map_err(RunError::setup)?;
    if !config.admin_endpoints.is_empty() {
        // Cut off from its admins for longer than a process allows: it
        // stays stopped (see `disconnect`).
        supervisor.suspend_overdue();
    }
    for c in corrupt {
        tracing::error!(
            file = %c.file.display(),
            moved_to = %c.moved_to.display(),
            reason = %c.reason,
            "corrupt state file {} moved aside to {}: it {}; its process is not desired until \
             it is assigned again",
            c.file.display(),
            c.moved_to.display(),
            c.reason
        );
    }

    let mut daemon = Daemon::new("prism-launcher");
    let health = daemon.health();
    health
        .set_not_serving::<LauncherServer<service::LauncherService>>()
        .await;
    let gate = crate::serve::gate(
        config.socket.as_deref(),
        &config.operator_group,
        &config.trust_domain,
        config.insecure,
        config.admin_endpoints.is_empty(),
        supervisor.metrics.auth_denied.clone(),
    );
    let catalog = Arc::new(match &config.patterns.dir {
        Some(dir) => {
            let catalog = patterns::Catalog::discover(dir);
            for e in &catalog.errors {
                tracing::warn!(manifest = %e.path.display(), field = e.field.as_deref().unwrap_or(""), "pattern manifest skipped: {e}");
            }
            tracing::info!(
                dir = %dir.display(),
                patterns = catalog.len(),
                skipped = catalog.errors.len(),
                "{} pattern(s) in {}: {}",
                catalog.len(),
                dir.display(),
                catalog.patterns().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            catalog
        }
        None => patterns::Catalog::default(),
    });
    let ports = Arc::new(patterns::Ports::new(config.patterns.ports.clone()));
    patterns::service::restore_ports(&supervisor, &ports);
    let legacy_api = config
        .patterns
        .api
        .then(|| patterns::PatternService::new(supervisor.clone(), catalog.clone(), ports.clone()));
    let mut services = vec![crate::pb::prism::launcher::v1::launcher_server::SERVICE_NAME];
    if legacy_api.is_some() {
        services.push(crate::pb::prism::launcher::pattern_launcher_server::SERVICE_NAME);
    }
    let legacy_api = legacy_api.map(Arc::new);
    let routes = |router: crate::serve::GatedRouter| {
        let router = router.add_service(limited_service!(LauncherServer::new(
            service::LauncherService::new(supervisor.clone(), config.launcher_id.clone())
                .with_patterns(catalog.clone(), ports.clone())
        )));
        match legacy_api.clone() {
            Some(api) => router.add_service(limited_service!(
                crate::pb::prism::launcher::pattern_launcher_server::PatternLauncherServer::from_arc(api)
            )),
            None => router,
        }
    };
    let sup = supervisor.clone();
    let serving = daemon.serve(
        listeners,
        config.socket.as_deref(),
        (&services, &routes, &gate, config.tls.as_ref()),
        move || {
            let sup = sup.clone();
            async move { sup.render_metrics() }
        },
    )?;
    tracing::info!(
        launcher_id = %config.launcher_id,
        tls = config.tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        insecure = config.insecure,
        "listening on {serving}"
    );
    {
        let sup = supervisor.clone();
        daemon.spawn(move |shutdown| sup.follow_events(shutdown));
    }

    // Reconciliation needs systemd; until it answers, keep trying.
    let mut first = daemon.shutdown();
    let ready = first
        .until(async {
            loop {
                match supervisor.reconcile_once().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for systemd before the first reconciliation: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    tokio::pin!(shutdown);
    let reconciled = tokio::select! {
        r = ready => r.is_some(),
        _ = &mut shutdown => false,
    };
    drop(first);
    if !reconciled {
        return daemon.run_until(async {}).await;
    }

    sweep_stale_credentials(&supervisor).await;
    {
        let sup = supervisor.clone();
        let interval = config.reconcile_interval;
        daemon.spawn(move |shutdown| sup.reconcile_loop(interval, shutdown));
    }
    // After each settled change (at most once a second): the status line,
    // and the memory a burst of assignments or revocations freed.
    {
        let sup = supervisor.clone();
        daemon.spawn(move |shutdown| {
            sup.report_status(
                |line| {
                    crate::serve::daemon::notify(&[sd_notify::NotifyState::Status(line)]);
                    crate::serve::release_free_memory();
                },
                shutdown,
            )
        });
    }
    // gRPC health follows the systemd connection.
    {
        let sup = supervisor.clone();
        daemon.spawn(move |shutdown| follow_connection(sup, health, shutdown));
    }
    daemon.watchdog(|| async { true });
    if !config.admin_endpoints.is_empty() {
        let sup = supervisor.clone();
        daemon.spawn(move |shutdown| sup.disconnect_loop(shutdown));
        match admin_link::AdminLink::new(&config, supervisor.clone()) {
            Ok(link) => daemon.spawn(move |shutdown| link.run(shutdown)),
            Err(e) => tracing::error!("cannot set up the link to the admin: {e}"),
        }
    } else {
        tracing::info!("standalone: no --admin-endpoint; taking assignments on its own service");
    }
    let line = supervisor.status_line();
    daemon.ready(&line);
    tracing::info!(status = %line, "ready: {line}");

    let result = daemon.run_until(shutdown).await;
    supervisor.stop_probes();
    tracing::info!("stopped; workloads keep running under systemd");
    result
}

/// Remove the credentials of units that no longer exist (a crash between a
/// stop and its cleanup): nothing will load them again.
async fn sweep_stale_credentials(supervisor: &Supervisor) {
    match supervisor.systemd().list().await {
        Ok(listed) => {
            let keep: std::collections::BTreeSet<String> = listed
                .into_iter()
                .map(|u| u.name)
                .chain(supervisor.table().entries.values().map(|e| e.unit.clone()))
                .collect();
            match supervisor.systemd().sweep_credentials(&keep) {
                Ok(swept) if !swept.is_empty() => tracing::info!(
                    "removed stale credential files of units that no longer exist: {}",
                    swept.join(", ")
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot sweep stale credential files: {e}"),
            }
        }
        Err(e) => tracing::warn!("not sweeping stale credential files: {e}"),
    }
}

/// gRPC health (and the status line) follow the connection to systemd.
async fn follow_connection(
    supervisor: Arc<Supervisor>,
    health: tonic_health::server::HealthReporter,
    mut shutdown: crate::serve::Shutdown,
) {
    let mut last = None;
    loop {
        let up = supervisor.systemd().connection_state() == ConnectionState::Connected;
        if last != Some(up) {
            // The status line says whether systemd is connected.
            supervisor.changed.notify_one();
            let status = if up {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health
                .set_service_status(
                    <LauncherServer<service::LauncherService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            health.set_service_status("", status).await;
            last = Some(up);
        }
        if shutdown
            .until(tokio::time::sleep(Duration::from_millis(500)))
            .await
            .is_none()
        {
            return;
        }
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::advertised;

    #[test]
    fn a_listener_on_any_free_port_advertises_the_port_it_got() {
        let any = Some("127.0.0.1:0".parse().unwrap());
        let got = Some("127.0.0.1:41234".parse().unwrap());
        assert_eq!(advertised("127.0.0.1:0", any, got), "127.0.0.1:41234");
        assert_eq!(advertised("host-1:0", any, got), "host-1:41234");
        // Given explicitly, or a fixed port: as configured.
        let fixed = Some("127.0.0.1:7070".parse().unwrap());
        assert_eq!(advertised("127.0.0.1:7070", fixed, fixed), "127.0.0.1:7070");
        assert_eq!(
            advertised("unix:/run/l.sock", None, None),
            "unix:/run/l.sock"
        );
        assert_eq!(advertised("lb.example:8000", any, got), "lb.example:8000");
    }
}
