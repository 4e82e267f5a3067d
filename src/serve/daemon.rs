//! One daemon's life, the same for both: its servers (gRPC on TCP and the
//! local socket, metrics) and tasks are started here, it tells systemd
//! when it is ready, stopping, and alive, and it stops in order.
//!
//! Shutdown is a type: [`Stopper::trigger`] tells every holder of a
//! [`Shutdown`] (a broadcast), and each holder confirms it finished by
//! dropping its handle. Tasks drain (they finish the pass they are in and
//! return); servers stop taking connections and finish their requests.
//! Only what outlives a deadline is aborted, and that is logged.

use std::{future::Future, time::Duration};

use tokio::sync::{mpsc, watch};

use std::path::Path;

use super::{GatedRouter, GatedServer, Serving, limited};
use crate::{auth::Gate, settings::Tls};

/// How long a stopping daemon waits for its tasks and servers.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// What the daemon needs could not be set up (its state directory, its
    /// store).
    #[error("{0}")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Bind(#[from] super::BindError),
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// An admin that led lost its lease (it exits; systemd starts it again
    /// as a follower).
    #[error("lost the leadership: {0}")]
    Deposed(String),
}

impl RunError {
    pub fn setup(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Setup(e.into())
    }
}

/// Tells every [`Shutdown`] handle to stop, and waits for all of them to
/// be dropped.
pub struct Stopper {
    notify: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl Default for Stopper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stopper {
    pub fn new() -> Self {
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            notify: watch::channel(false).0,
            done_tx,
            done_rx,
        }
    }

    /// A handle for one task or server; drop it when finished.
    pub fn handle(&self) -> Shutdown {
        Shutdown {
            notify: self.notify.subscribe(),
            _done: self.done_tx.clone(),
        }
    }

    /// Tell every handle to stop.
    pub fn trigger(&self) {
        let _ = self.notify.send(true);
    }

    /// Trigger, then wait until every handle was dropped or `within`
    /// passed; whether all were.
    pub async fn drained(self, within: Duration) -> bool {
        self.trigger();
        let Self {
            done_tx,
            mut done_rx,
            ..
        } = self;
        drop(done_tx);
        tokio::time::timeout(within, done_rx.recv()).await.is_ok()
    }
}

/// A task's view of the daemon's shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown {
    notify: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        *self.notify.borrow()
    }

    /// Resolves once shutdown is requested (or its [`Stopper`] is gone).
    pub async fn requested(&mut self) {
        let _ = self.notify.wait_for(|s| *s).await;
    }

    /// `f`'s output, or `None` if shutdown was requested first (`f` is
    /// dropped then). For the waits between a task's passes, never for the
    /// work of a pass.
    pub async fn until<T>(&mut self, f: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.requested() => None,
            out = f => Some(out),
        }
    }
}

/// Tell systemd (outside systemd, with no `NOTIFY_SOCKET`, nothing happens).
pub fn notify(states: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(states);
}

/// A daemon being set up, then run until shutdown.
pub struct Daemon {
    name: &'static str,
    stopper: Stopper,
    tasks: tokio::task::JoinSet<()>,
    /// The gRPC servers, each its own task: the daemon ends when they do.
    servers: Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    /// `grpc.health.v1`, served beside the daemon's own services.
    health: tonic_health::server::HealthReporter,
}

impl Daemon {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            stopper: Stopper::new(),
            tasks: tokio::task::JoinSet::new(),
            servers: Vec::new(),
            health: tonic_health::server::HealthReporter::new(),
        }
    }

    /// The daemon's `grpc.health.v1` statuses, to set.
    pub fn health(&self) -> tonic_health::server::HealthReporter {
        self.health.clone()
    }

    /// A shutdown handle, for a task started elsewhere.
    pub fn shutdown(&self) -> Shutdown {
        self.stopper.handle()
    }

    /// Run `task` with its own shutdown handle; it returns soon after
    /// shutdown is requested (finishing the pass it is in).
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stopper.handle()));
    }

    /// Serve `/metrics` (rendered by `render`) on `listener`, if any, until
    /// shutdown. A task, not one of the servers the daemon's life follows:
    /// metrics that stop serving are logged and the daemon keeps serving.
    fn serve_metrics<F, Fut>(&mut self, listener: Option<tokio::net::TcpListener>, render: F)
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        let Some(listener) = listener else { return };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("metrics at http://{addr}/metrics");
        }
        self.spawn(move |mut shutdown| async move {
            let stop = async move { shutdown.requested().await };
            if let Err(e) = crate::metrics::serve(listener, render, stop).await {
                tracing::error!("the metrics server stopped: {e}");
            }
        });
    }

    /// Serve gRPC on the API listener and the local socket (`socket` is its
    /// path): health, reflection, and the services `routes` adds, each call
    /// through `gate`; and metrics on theirs. Returns what is served, for
    /// the start-up line.
    pub fn serve<F, Fut>(
        &mut self,
        listeners: super::Listeners,
        socket: Option<&Path>,
        grpc: (
            &[&'static str],
            &dyn Fn(GatedRouter) -> GatedRouter,
            &Gate,
            Option<&Tls>,
        ),
        metrics: F,
    ) -> Result<String, RunError>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        let super::Listeners {
            api,
            local,
            unix,
            metrics: metrics_listener,
        } = listeners;
        let (services, routes, gate, tls) = grpc;
        let health = self.health.clone();
        let all = move |mut server: GatedServer| {
            let health = tonic_health::server::HealthService::from_health_reporter(health.clone());
            let (reflection, reflection_v1alpha) = super::reflection(services);
            routes(
                server
                    .add_service(tonic_health::pb::health_server::HealthServer::new(health))
                    .add_service(reflection)
                    .add_service(reflection_v1alpha),
            )
        };
        let serving = serve_grpc(all, gate, tls, (api, unix), self.stopper.handle())
            .map_err(RunError::Tls)?;
        self.servers.push(tokio::spawn(serving));
        self.serve_metrics(metrics_listener, metrics);
        Ok(super::serving(local, socket))
    }

    /// With a systemd watchdog, ping it every half interval while `alive`
    /// answers true within that time: a wedged daemon stops pinging and
    /// systemd restarts it.
    pub fn watchdog<F, Fut>(&mut self, alive: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        self.spawn(move |mut shutdown| async move {
            loop {
                if let Ok(true) = tokio::time::timeout(interval / 2, alive()).await {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
                if shutdown
                    .until(tokio::time::sleep(interval / 2))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        });
    }

    /// Tell systemd the daemon is ready, with a status line.
    pub fn ready(&self, status: &str) {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
    }

    /// Serve until `shutdown` resolves or the gRPC servers end, then stop
    /// in order: servers stop taking connections, tasks (the metrics
    /// server among them) finish their pass, and whatever outlives
    /// [`DRAIN_DEADLINE`] is aborted.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let Self {
            name,
            stopper,
            mut tasks,
            servers,
            ..
        } = self;
        // Servers end on their own only when they fail.
        let serving = !servers.is_empty();
        let servers = futures_util::future::join_all(servers.into_iter().map(|server| async {
            // A server task that panicked (the panic is logged) counts as
            // stopped, as it did before servers were tasks of the daemon.
            server.await.unwrap_or(Ok(()))
        }));
        tokio::pin!(servers);
        tokio::pin!(shutdown);
        let failed = tokio::select! {
            results = &mut servers, if serving => Some(results),
            _ = &mut shutdown => None,
        };
        notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("{name} stopping");
        stopper.trigger();
        let results = match failed {
            Some(results) => results,
            None => servers.await,
        };
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                "{name}: {} tasks did not finish within {DRAIN_DEADLINE:?}; aborting them",
                tasks.len()
            );
            tasks.shutdown().await;
        }
        if !stopper.drained(Duration::from_secs(1)).await {
            tracing::warn!("{name}: a shutdown handle outlived its task");
        }
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(drop)
            .map_err(RunError::Serve)
    }
}

/// Serve the routes that `routes` adds on the TCP listener (TLS when
/// configured) and on the local socket, until `stop` is requested. Both
/// servers pass every call through `gate`. Resolves when both have
/// stopped, with the first error.
fn serve_grpc(
    routes: impl Fn(GatedServer) -> GatedRouter,
    gate: &Gate,
    tls: Option<&Tls>,
    listeners: (
        Option<tokio::net::TcpListener>,
        Option<tokio::net::UnixListener>,
    ),
    stop: Shutdown,
) -> Result<Serving, tonic::transport::Error> {
    let (tcp, unix) = listeners;
    let stopped = |mut stop: Shutdown| async move { stop.requested().await };
    let mut servers: Vec<Serving> = Vec::new();
    if let Some(listener) = tcp {
        let local = listener.local_addr().ok();
        let mut server = limited();
        match tls {
            Some(tls) => server = server.tls_config(tls.server_config())?,
            None => {
                if let Some(addr) = local {
                    tracing::warn!(
                        addr = %addr,
                        "serving plaintext gRPC on {addr} (--insecure): every peer that can \
                         connect is trusted with every role, including every local user"
                    );
                }
            }
        }
        let router = routes(server.layer(gate.clone()));
        // No Nagle: a reply is written in several pieces (headers, data,
        // trailers), and with Nagle the last waits for the peer's delayed
        // ACK, adding up to 40 ms to an answer.
        servers.push(Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop.clone()),
        )));
    }
    if let Some(listener) = unix {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let next = l.accept().await.map(|(stream, _)| stream);
            Some((next, l))
        });
        let router = routes(limited().layer(gate.clone()));
        let serving = router.serve_with_incoming_shutdown(incoming, stopped(stop.clone()));
        servers.push(Box::pin(async move {
            let result = serving.await;
            // Nobody answers there any more.
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
            result
        }));
    }
    Ok(Box::pin(async move {
        let results = futures_util::future::join_all(servers).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tasks_finish_their_pass_and_confirm_by_dropping_their_handle() {
        let mut daemon = Daemon::new("test");
        let (passes_tx, mut passes) = mpsc::unbounded_channel();
        daemon.spawn(move |mut shutdown| async move {
            let mut n = 0;
            while shutdown
                .until(tokio::time::sleep(Duration::from_secs(1)))
                .await
                .is_some()
            {
                // A pass is never cut short.
                tokio::time::sleep(Duration::from_millis(500)).await;
                n += 1;
                let _ = passes_tx.send(n);
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(daemon.run_until(async {
            let _ = stop_rx.await;
        }));
        assert_eq!(passes.recv().await, Some(1));
        let _ = stop_tx.send(());
        run.await.unwrap().unwrap();
        // The task ended (its sender is gone) after its last whole pass.
        while let Some(n) = passes.recv().await {
            assert!(n <= 2, "{n}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_shutdown_is_aborted_after_the_deadline() {
        let mut daemon = Daemon::new("test");
        daemon.spawn(|_shutdown| std::future::pending());
        let began = tokio::time::Instant::now();
        daemon.run_until(async {}).await.unwrap();
        assert!(began.elapsed() >= DRAIN_DEADLINE);
    }

    #[tokio::test]
    async fn the_stopper_waits_for_every_handle() {
        let stopper = Stopper::new();
        let mut a = stopper.handle();
        let b = stopper.handle();
        assert!(!a.is_requested());
        let waiter = tokio::spawn(async move {
            a.requested().await;
            drop(a);
        });
        drop(b);
        assert!(stopper.drained(Duration::from_secs(5)).await);
        waiter.await.unwrap();
    }
}
