//! prism-admin: the control plane. Launchers register and heartbeat over
//! `prism.ControlPlane`; the admin places each process on a launcher by
//! capability and free capacity, pushes it there, and keeps it there.
//! Operators use `prism.admin.v1.Admin`.

pub mod config;
pub mod dispatch;
pub mod fleet;
pub mod pending;
pub mod placement;
pub mod service;
pub mod store;
mod tasks;
#[cfg(test)]
mod tests;

use std::{
    convert::Infallible,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};

pub use config::{Cli, Command, Config, ConfigError, ServeArgs};
pub use fleet::Fleet;

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
/// configured addresses and opens the SQLite database in its data
/// directory; a test passes listeners on `127.0.0.1:0` and an in-memory
/// store.
pub struct Io {
    pub listeners: crate::serve::Listeners,
    pub store: Arc<dyn store::AdminStore>,
}

impl Io {
    /// What `config` names: its data directory (private), the database in
    /// it, and its addresses bound (a busy one is an error naming it).
    pub async fn open(config: &Config) -> Result<Self, RunError> {
        private_data_dir(&config.data_dir).map_err(|source| {
            RunError::setup(format!(
                "cannot create {}: {source}",
                config.data_dir.display()
            ))
        })?;
        let store: Arc<dyn store::AdminStore> = Arc::new(
            store::SqliteStore::open(&config.data_dir)
                .await
                .map_err(RunError::setup)?,
        );
        let listeners = crate::serve::bind(
            config.listen,
            config.socket.as_deref(),
            config.metrics_listen,
        )
        .await?;
        Ok(Self { listeners, store })
    }
}

/// Run the admin on `io` until `shutdown` resolves.
pub async fn run(
    config: Config,
    io: Io,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Io { listeners, store } = io;
    let fleet = Fleet::open(
        store,
        dispatch::Dispatcher::new(
            config.tls.clone(),
            config.trust_domain.clone(),
            config.insecure,
        ),
        config.heartbeat_interval,
        config.reschedule_lost_after,
    )
    .await
    .map_err(RunError::setup)?;
    let mut daemon = Daemon::new("prism-admin");
    let health = daemon.health();
    health
        .set_serving::<ControlPlaneServer<service::ControlPlaneService>>()
        .await;
    health
        .set_serving::<AdminServer<service::AdminService>>()
        .await;
    let gate = crate::serve::gate(
        config.socket.as_deref(),
        &config.operator_group,
        &config.trust_domain,
        config.insecure,
        false,
        fleet.metrics.auth_denied.clone(),
    );
    let routes = |router: crate::serve::GatedRouter| {
        router
            .add_service(ControlPlaneWithNotice(limited_service!(
                ControlPlaneServer::new(service::ControlPlaneService::new(
                    fleet.clone(),
                    gate.clone()
                ))
            )))
            .add_service(limited_service!(AdminServer::new(
                service::AdminService::new(fleet.clone())
            )))
    };
    let f = fleet.clone();
    let serving = daemon.serve(
        listeners,
        config.socket.as_deref(),
        (&routes, &gate, config.tls.as_ref()),
        move || {
            let f = f.clone();
            async move { f.render_metrics().await }
        },
    )?;
    let f = fleet.clone();
    daemon.spawn(move |shutdown| f.delivery_loop(shutdown));
    let f = fleet.clone();
    daemon.spawn(move |shutdown| f.liveness_loop(shutdown));
    let f = fleet.clone();
    daemon.spawn(move |shutdown| f.flush_loop(shutdown));
    {
        // Only while the fleet's state can be reached: a wedged admin stops
        // pinging and systemd restarts it.
        let f = fleet.clone();
        daemon.watchdog(move || {
            let f = f.clone();
            async move {
                f.ping().await;
                true
            }
        });
    }

    tracing::info!(
        tls = config.tls.is_some(),
        insecure = config.insecure,
        "prism-admin listening on {serving}; data in {}",
        config.data_dir.display()
    );
    daemon.ready("serving");
    let result = daemon.run_until(shutdown).await;
    // What heartbeats batched since the last write.
    fleet.flush().await;
    tracing::info!("prism-admin stopped");
    result
}
