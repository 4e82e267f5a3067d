//! What both daemons do to start and serve: exit codes, signals, the
//! runtime, binding their sockets before anything else runs, and the gRPC
//! server with TLS and reflection.

use std::{fmt::Display, future::Future, net::SocketAddr, process::ExitCode};

use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Server;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::settings::Tls;

/// sysexits.h EX_USAGE: a bad flag or setting. The units do not restart on
/// it (`RestartPreventExitStatus=64`).
pub const EX_USAGE: u8 = 64;

/// Resolves on SIGTERM or SIGINT.
pub async fn terminated() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Run a daemon's main future on a multi-threaded runtime until it ends:
/// success exits 0; an error is logged, printed on stderr and exits 1.
pub fn run<E: Display>(name: &str, daemon: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} failed");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A daemon's listening address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A daemon's sockets, bound before anything else runs so that a busy port
/// fails start-up with an error naming the address.
pub struct Listeners {
    pub api: tokio::net::TcpListener,
    /// The API's bound address (the real port when asked for port 0).
    pub local: SocketAddr,
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Bind the API address and, unless disabled, the metrics address.
pub async fn bind(listen: SocketAddr, metrics: Option<SocketAddr>) -> Result<Listeners, BindError> {
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })
    };
    let api = bind(listen).await?;
    let local = api.local_addr().unwrap_or(listen);
    let metrics = match metrics {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok(Listeners {
        api,
        local,
        metrics,
    })
}

/// The gRPC server for the API bound at `local`: TLS when configured,
/// otherwise plaintext, with a warning when that is not on loopback
/// (configuration only allows it with `--insecure`).
pub fn grpc_server(
    tls: Option<&Tls>,
    local: SocketAddr,
) -> Result<Server, tonic::transport::Error> {
    let server = Server::builder();
    match tls {
        Some(tls) => server.tls_config(tls.server_config()),
        None => {
            if !local.ip().is_loopback() {
                tracing::warn!(
                    addr = %local,
                    "serving plaintext gRPC on non-loopback address {local} (--insecure)"
                );
            }
            Ok(server)
        }
    }
}

/// gRPC server reflection over every service of this crate.
pub fn reflection() -> ServerReflectionServer<impl ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor set built in")
}
