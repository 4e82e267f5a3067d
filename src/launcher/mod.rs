//! The prism-launcher daemon: gRPC service, durable desired state,
//! reconciliation against systemd, health aggregation, and its lifetime
//! under systemd (sd_notify readiness, status and watchdog).
//!
//! Stopping the daemon never stops a workload: each runs in its own
//! transient unit, owned by systemd. Only a revocation stops one.

mod admin_link;
mod assign;
pub mod config;
pub mod legacy;
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
    systemd::{ConnectionState, DbusSystemd, Options, Systemd},
};

/// The daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Bind(#[from] crate::serve::BindError),
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
}

fn notify(states: &[sd_notify::NotifyState]) {
    // Outside systemd (no NOTIFY_SOCKET) this does nothing.
    let _ = sd_notify::notify(states);
}

/// Run the daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let store = store::Store::open(&config.state_dir)?;
    let systemd: Arc<dyn Systemd> = Arc::new(DbusSystemd::spawn(Options {
        target: config.systemd.clone(),
        credentials_dir: config.credentials_dir.clone(),
        ..Options::default()
    }));
    let supervisor = Supervisor::new(
        systemd.clone(),
        store,
        config.policy.clone(),
        config.capabilities.clone(),
        config.max_processes,
        config.circuit_cooldown,
    );
    // With an admin, what is not desired here may be about to be handed back
    // (a wiped state directory): wait for its placement before stopping.
    supervisor.allow_stopping_undesired(config.admin_endpoint.is_none());
    for c in supervisor.load()? {
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

    let crate::serve::Listeners {
        api: listener,
        local,
        unix,
        metrics: metrics_listener,
    } = crate::serve::bind(
        config.listen,
        config.socket.as_deref(),
        config.metrics_listen,
    )
    .await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<LauncherServer<service::LauncherService>>()
        .await;
    let gate = crate::serve::gate(
        config.socket.as_deref(),
        &config.operator_group,
        &config.trust_domain,
        config.insecure,
        config.admin_endpoint.is_none(),
        supervisor.metrics.auth_denied.clone(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let routes = |server: crate::serve::GatedServer| {
        let mut server = server;
        server
            .add_service(health_service.clone())
            .add_service(crate::serve::reflection())
            .add_service(
                LauncherServer::new(service::LauncherService::new(
                    supervisor.clone(),
                    config.launcher_id.clone(),
                ))
                .max_decoding_message_size(crate::serve::MAX_REQUEST_BYTES)
                .max_encoding_message_size(crate::serve::MAX_RESPONSE_BYTES),
            )
    };
    let server_task = tokio::spawn(
        crate::serve::serve_grpc(
            routes,
            &gate,
            config.tls.as_ref(),
            (listener, unix),
            stop_rx.clone(),
        )
        .map_err(RunError::Tls)?,
    );
    let serving = crate::serve::serving(local, config.socket.as_deref());
    tracing::info!(
        launcher_id = %config.launcher_id,
        tls = config.tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        insecure = config.insecure,
        "listening on {serving}"
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(supervisor.clone().follow_events());
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().ok();
        let sup = supervisor.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let render = move || {
                let sup = sup.clone();
                async move { sup.render_metrics() }
            };
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::metrics::serve(listener, render, shutdown).await {
                tracing::error!("the metrics server stopped: {e}");
            }
        });
        if let Some(addr) = addr {
            tracing::info!("metrics at http://{addr}/metrics");
        }
    }

    let ready = async {
        // Reconciliation needs systemd; until it answers, keep trying.
        loop {
            match supervisor.reconcile_once().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for systemd before the first reconciliation: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    tokio::pin!(shutdown);
    tokio::select! {
        _ = ready => {}
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            let _ = server_task.await;
            return Ok(());
        }
    }

    // Credentials of units that no longer exist (a crash between a stop
    // and its cleanup): nothing will load them again.
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
    tasks.spawn(supervisor.clone().reconcile_loop(config.reconcile_interval));
    // After each settled change (at most once a second): the status line,
    // and the memory a burst of assignments or revocations freed.
    tasks.spawn(supervisor.clone().report_status(|line| {
        notify(&[sd_notify::NotifyState::Status(line)]);
        crate::serve::release_free_memory();
    }));
    // gRPC health follows the systemd connection.
    {
        let supervisor = supervisor.clone();
        let health = health.clone();
        tasks.spawn(async move {
            let mut last = None;
            loop {
                let up = supervisor.systemd().connection_state() == ConnectionState::Connected;
                if last != Some(up) {
                    // The status line says whether systemd is connected.
                    supervisor.changed.notify_one();
                    if up {
                        health
                            .set_serving::<LauncherServer<service::LauncherService>>()
                            .await;
                        health
                            .set_service_status("", tonic_health::ServingStatus::Serving)
                            .await;
                    } else {
                        health
                            .set_not_serving::<LauncherServer<service::LauncherService>>()
                            .await;
                        health
                            .set_service_status("", tonic_health::ServingStatus::NotServing)
                            .await;
                    }
                    last = Some(up);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tasks.spawn(async move {
            loop {
                notify(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(interval / 2).await;
            }
        });
    }
    if let Some(endpoint) = &config.admin_endpoint {
        match admin_link::AdminLink::new(&config, endpoint, supervisor.clone()) {
            Ok(link) => {
                tasks.spawn(link.run());
            }
            Err(e) => tracing::error!("cannot set up the link to the admin at {endpoint}: {e}"),
        }
    } else {
        tracing::info!("standalone: no --admin-endpoint; taking assignments on its own service");
    }
    let line = supervisor.status_line();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&line),
    ]);
    tracing::info!(status = %line, "ready: {line}");

    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = server_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Serve(e)),
            Err(_) => Ok(()),
        },
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down; workloads keep running under systemd");
    let _ = stop_tx.send(true);
    tasks.abort_all();
    result
}
