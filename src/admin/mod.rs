//! prism-admin: the control plane. Launchers register and heartbeat over
//! `prism.ControlPlane`; the admin places each process on a launcher by
//! capability and free capacity, pushes it there, and keeps it there.
//! Operators use `prism.admin.v1.Admin`, and browsers its fleet status
//! page ([`ui`]).

pub mod config;
pub mod disconnect;
pub mod dispatch;
pub mod events;
pub mod fleet;
pub mod leader;
pub mod pending;
pub mod placement;
pub mod rollout;
pub mod service;
pub mod store;
mod tasks;
#[cfg(test)]
mod tests;
pub mod ui;

use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};

pub use config::{Cli, Command, Config, ConfigError, ServeArgs};
pub use fleet::{Fleet, Timing};

use crate::{
    pb::prism::{admin::v1::admin_server::AdminServer, control_plane_server::ControlPlaneServer},
    serve::{Daemon, limited_service},
};

pub use crate::serve::RunError;

/// The upstream service's proxy RPCs, which the admin does not serve.
const PROXY_RPCS: [&str; 5] = [
    "RegisterProxy",
    "AssignNamespace",
    "CreateNamespace",
    "Heartbeat",
    "RevokeNamespace",
];

/// `prism.ControlPlane`, answering the upstream proxy RPCs with an
/// UNIMPLEMENTED that says why (tonic's default says nothing).
#[derive(Clone)]
pub struct ControlPlaneWithNotice<S>(S);

impl<S: NamedService> NamedService for ControlPlaneWithNotice<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for ControlPlaneWithNotice<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix("/prism.ControlPlane/")
            .map(str::to_owned);
        if let Some(m) = method.filter(|m| PROXY_RPCS.contains(&m.as_str())) {
            let status = Status::unimplemented(format!(
                "prism-admin serves the launcher part of prism.ControlPlane; {m} (a proxy RPC) \
                 is not implemented"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.0.call(req))
    }
}

/// Create the data directory 0700 and the database file 0600, whatever
/// the umask: the database holds every credential of the fleet. SQLite
/// gives its WAL and shared-memory files the database file's mode.
fn private_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for name in ["admin.db", "admin.db-wal", "admin.db-shm"] {
        let path = dir.join(name);
        if name == "admin.db" {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
        }
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// What the admin runs on, made by its caller: the binary binds the
/// configured addresses and opens the configured database; a test passes
/// listeners on `127.0.0.1:0` and a store of its own.
pub struct Io {
    pub listeners: crate::serve::Listeners,
    pub store: Arc<dyn store::AdminStore>,
    /// The fleet status page's listener, unless `--ui-listen none`.
    pub ui: Option<tokio::net::TcpListener>,
}

impl Io {
    /// What `config` names: its database (SQLite in a private data
    /// directory, or PostgreSQL), and its addresses bound (a busy one is an
    /// error naming it).
    pub async fn open(config: &Config) -> Result<Self, RunError> {
        if let store::Database::Sqlite(dir) = &config.database {
            private_data_dir(dir).map_err(|source| {
                RunError::setup(format!("cannot create {}: {source}", dir.display()))
            })?;
        }
        let store = config
            .database
            .open(&store::StoreOptions::default())
            .await
            .map_err(|e| RunError::setup(format!("{}: {e}", config.database.display())))?;
        let listeners = crate::serve::bind(
            config.listen,
            config.socket.as_deref(),
            config.metrics_listen,
        )
        .await?;
        let ui =
            match config.ui.listen {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| crate::serve::BindError {
                        addr: addr.to_string(),
                        source,
                    },
                )?),
                None => None,
            };
        Ok(Self {
            listeners,
            store,
            ui,
        })
    }
}

type ControlPlane = ControlPlaneWithNotice<ControlPlaneServer<service::ControlPlaneService>>;
type Operators = AdminServer<service::AdminService>;

/// Where the other admins reach this one: `--advertise`, else this host's
/// name with the TCP port, else the local socket.
fn advertised(config: &Config) -> String {
    if let Some(a) = &config.advertise {
        return a.clone();
    }
    match config.listen {
        Some(addr) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| addr.ip().to_string());
            let host = if addr.ip().is_unspecified() {
                host
            } else {
                addr.ip().to_string()
            };
            format!("{host}:{}", addr.port())
        }
        None => config
            .socket
            .as_ref()
            .map(|s| format!("unix:{}", s.display()))
            .unwrap_or_default(),
    }
}

/// Run the admin on `io` until `shutdown` resolves. On a shared database
/// it serves as a follower until it holds the lease, then loads the fleet
/// and leads; a leader that loses the lease returns
/// [`RunError::Deposed`].
pub async fn run(
    config: Config,
    io: Io,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Io {
        listeners,
        store,
        ui: ui_listener,
    } = io;
    let metrics = Arc::new(crate::metrics::AdminMetrics::default());
    let mut daemon = Daemon::new("prism-admin");
    let health = daemon.health();
    // Every admin that can answer serves: a follower answers with where
    // the leader is.
    health
        .set_serving::<ControlPlaneServer<service::ControlPlaneService>>()
        .await;
    health.set_serving::<Operators>().await;
    let gate = crate::serve::gate(
        config.socket.as_deref(),
        &config.operator_group,
        &config.trust_domain,
        config.insecure,
        false,
        metrics.auth_denied.clone(),
    )
    .heeding_forwarded();
    let forwarder = Arc::new(leader::Forwarder::new(
        config.tls.clone(),
        config.trust_domain.clone(),
        config.insecure,
    ));
    let (standing, standing_rx) = tokio::sync::watch::channel(leader::Standing::Unknown);
    let fleet_slot: Arc<OnceLock<Arc<Fleet>>> = Arc::default();
    let control_slot: Arc<OnceLock<ControlPlane>> = Arc::default();
    let operators_slot: Arc<OnceLock<Operators>> = Arc::default();
    // Every admin streams the fleet's events, leader or follower.
    let hub = events::Hub::new(store.clone(), &config.retention, metrics.clone());
    daemon.spawn({
        let hub = hub.clone();
        move |shutdown| hub.tail(shutdown)
    });
    // The fleet status page, on this admin whether it leads or follows.
    let ui = ui_listener.and_then(|listener| {
        let bound = listener.local_addr().ok()?;
        let page = ui::Ui::new(
            ui::Parts {
                hub: hub.clone(),
                store: store.clone(),
                interval: config.heartbeat_interval,
                fleet: fleet_slot.clone(),
                session_idle: config.ui.session_idle,
                session_max: config.ui.session_max,
            },
            bound,
            config.tls.is_some(),
        );
        tracing::info!(
            "fleet status page at {} (sign in with `prismctl ui`)",
            page.login.base_url
        );
        let tls = config.tls.clone();
        daemon.spawn({
            let page = page.clone();
            move |shutdown| page.serve(listener, tls, shutdown)
        });
        Some(page.login.clone())
    });
    // A follower answers operators' reads from the database itself.
    let follower_reads: leader::LocalReads<Operators> = {
        let (store, interval, hub) = (store.clone(), config.heartbeat_interval, hub.clone());
        let ui = ui.clone();
        Arc::new(move || {
            let service = service::AdminService::following(store.clone(), interval, hub.clone())
                .with_ui(ui.clone());
            Box::pin(async move { Ok(limited_service!(AdminServer::new(service))) })
        })
    };
    let routes = |router: crate::serve::GatedRouter| {
        router
            .add_service(leader::Standby::new(
                control_slot.clone(),
                standing_rx.clone(),
                forwarder.clone(),
            ))
            .add_service(events::Streams::new(
                hub.clone(),
                leader::Standby::new(
                    operators_slot.clone(),
                    standing_rx.clone(),
                    forwarder.clone(),
                )
                .with_local_reads(service::is_read, follower_reads.clone()),
            ))
    };
    let render = {
        let fleet = fleet_slot.clone();
        let metrics = metrics.clone();
        let standing = standing_rx.clone();
        move || {
            let fleet = fleet.get().cloned();
            let metrics = metrics.clone();
            {
                let standing = standing.borrow();
                metrics.set_leader(
                    standing.leading(),
                    standing
                        .lease()
                        .map(|l| (l.holder.as_str(), l.address.as_str(), l.epoch)),
                );
            }
            async move {
                match fleet {
                    Some(f) => f.render_metrics().await,
                    None => metrics.render(),
                }
            }
        }
    };
    let serving = daemon.serve(
        listeners,
        config.socket.as_deref(),
        (
            &[
                crate::pb::prism::control_plane_server::SERVICE_NAME,
                crate::pb::prism::admin::v1::admin_server::SERVICE_NAME,
            ],
            &routes,
            &gate,
            config.tls.as_ref(),
        ),
        render,
    )?;
    let me = store::Candidate {
        holder: leader::instance_id(),
        address: advertised(&config),
    };
    let this_admin = me.clone();
    // Loads the fleet and starts serving it, once this admin leads.
    let lead = {
        let (store, config, gate, metrics, hub, me, ui) = (
            store.clone(),
            config.clone(),
            gate.clone(),
            metrics.clone(),
            hub.clone(),
            me.clone(),
            ui.clone(),
        );
        let (fleet_slot, control_slot, operators_slot) = (
            fleet_slot.clone(),
            control_slot.clone(),
            operators_slot.clone(),
        );
        let stopper = daemon.shutdown();
        move |lease: store::Lease| async move {
            let fleet = Fleet::open_with(
                store,
                // Every order it pushes carries its epoch (fencing).
                dispatch::Dispatcher::new(
                    config.tls.clone(),
                    config.trust_domain.clone(),
                    config.insecure,
                )
                .with_epoch(lease.epoch),
                fleet::Timing {
                    interval: config.heartbeat_interval,
                    lease: config.lease,
                    replace_after: config.replace_after,
                },
                metrics,
            )
            .await
            .map_err(|e| format!("loading the fleet: {e}"))?;
            // Their shutdown handles keep the daemon's drain waiting for
            // them.
            tokio::spawn(fleet.clone().delivery_loop(stopper.clone()));
            tokio::spawn(fleet.clone().liveness_loop(stopper.clone()));
            tokio::spawn(fleet.clone().flush_loop(stopper.clone()));
            tokio::spawn(hub.clone().prune_loop(config.retention, stopper));
            fleet.elected(lease.epoch, &me.holder, &me.address);
            let _ = control_slot.set(ControlPlaneWithNotice(limited_service!(
                ControlPlaneServer::new(service::ControlPlaneService::new(fleet.clone(), gate))
            )));
            let _ = operators_slot.set(limited_service!(AdminServer::new(
                service::AdminService::new(fleet.clone(), hub).with_ui(ui)
            )));
            let _ = fleet_slot.set(fleet);
            Ok(())
        }
    };
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let (store, ttl) = (store.clone(), config.lease);
        daemon.spawn(move |shutdown| async move {
            if let Err(leader::Lost(why)) =
                leader::campaign(store, me, ttl, standing, lead, shutdown).await
            {
                let _ = lost_tx.send(why);
            }
        });
    }
    {
        // Only while the fleet's state can be reached: a wedged admin stops
        // pinging and systemd restarts it.
        let f = fleet_slot.clone();
        daemon.watchdog(move || {
            let f = f.get().cloned();
            async move {
                if let Some(f) = f {
                    f.ping().await;
                }
                true
            }
        });
    }

    tracing::info!(
        tls = config.tls.is_some(),
        insecure = config.insecure,
        "prism-admin listening on {serving}; state in {}",
        config.database.display()
    );
    // Ready once it knows where it stands: leading (the fleet loaded; at
    // once with an embedded database) or following. A database that does
    // not answer within a lease leaves it serving as a follower that
    // knows no leader yet.
    let mut standing_now = standing_rx.clone();
    let known = matches!(
        tokio::time::timeout(
            config.lease,
            standing_now.wait_for(|s| *s != leader::Standing::Unknown),
        )
        .await,
        Ok(Ok(_))
    );
    if !known {
        tracing::warn!(
            "the database has not answered within {:?}; serving, and trying again",
            config.lease
        );
    }
    daemon.ready(if standing_rx.borrow().leading() {
        "serving, leading"
    } else {
        "serving"
    });
    let mut lost = None;
    let result = daemon
        .run_until(async {
            tokio::select! {
                _ = shutdown => {}
                Ok(why) = lost_rx => {
                    tracing::error!("prism-admin lost the leadership: {why}; stopping");
                    lost = Some(why);
                }
            }
        })
        .await;
    if let Some(fleet) = fleet_slot.get() {
        // What heartbeats batched since the last write (refused, with
        // nothing written, if another admin leads now).
        fleet.flush().await;
        if lost.is_none() && store.shared() {
            // Another admin leads at once rather than after the lease.
            match store.resign(&this_admin).await {
                Ok(()) => tracing::info!("gave the leadership up"),
                Err(e) => tracing::warn!("could not give the leadership up: {e}"),
            }
        }
    }
    tracing::info!("prism-admin stopped");
    match lost {
        Some(why) => Err(RunError::Deposed(why)),
        None => result,
    }
}
