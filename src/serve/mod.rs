//! What both daemons do to start and serve: exit codes, signals, the
//! runtime, binding their sockets before anything else runs, and the gRPC
//! server with TLS and reflection.

pub mod daemon;
pub mod flags;

pub use daemon::{Daemon, RunError, Shutdown, Stopper};

use std::{fmt::Display, future::Future, net::SocketAddr, path::Path, process::ExitCode};

use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::{Server, server::Router};
use tower::layer::util::{Identity, Stack};

use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{auth::Gate, metrics::Denial};

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

/// A daemon's `main` up to running: its command line (after `--help` and
/// `--version`, exit 0; on an error, 64), its configuration (64 naming the
/// bad setting, before anything is bound), and its logs.
pub fn start<A, C>(
    name: &str,
    args: Result<A, clap::Error>,
    resolve: impl FnOnce(A) -> Result<C, crate::settings::ConfigError>,
    logs: impl FnOnce(&C) -> Result<(), String>,
) -> Result<C, ExitCode> {
    let args = args.map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EX_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })?;
    let config = resolve(args).map_err(|e| {
        eprintln!("{name}: bad configuration: {e}");
        ExitCode::from(EX_USAGE)
    })?;
    logs(&config).map_err(|e| {
        eprintln!("{name}: {e}");
        ExitCode::from(EX_USAGE)
    })?;
    Ok(config)
}

/// Run a daemon's main future on a multi-threaded runtime until it ends:
/// success exits 0; an error is logged, printed on stderr and exits 1.
pub fn run<E: Display>(name: &str, daemon: impl Future<Output = Result<(), E>>) -> ExitCode {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is state-file writes and small file reads; a burst
        // of assignments queues on these rather than growing a thread (and
        // its stack and allocator arena) per write in flight.
        .max_blocking_threads(BLOCKING_THREADS)
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

/// Threads for blocking work (tokio's default is 512).
pub const BLOCKING_THREADS: usize = 8;

/// glibc gives each thread that allocates its own arena (up to 8 per
/// core), and memory freed in one is not reused by another: a daemon with
/// a pool of threads holds several partly empty arenas. Two are plenty for
/// these daemons (the same as `MALLOC_ARENA_MAX=2`, which still wins when
/// set). Called before any thread starts.
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread
        // exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Give memory freed since to the kernel: glibc keeps freed pages inside
/// its heap until asked. Cheap next to the work it follows (it walks the
/// free lists once); call it after bursts, not per request.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A daemon's listening address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// A daemon's sockets, bound before anything else runs so that a busy port
/// fails start-up with an error naming the address.
pub struct Listeners {
    /// gRPC over TCP, if configured.
    pub api: Option<tokio::net::TcpListener>,
    /// The API's bound address (the real port when asked for port 0).
    pub local: Option<SocketAddr>,
    /// gRPC on the local Unix socket, if configured.
    pub unix: Option<tokio::net::UnixListener>,
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Bind the TCP API address, the local socket and, unless disabled, the
/// metrics address.
pub async fn bind(
    listen: Option<SocketAddr>,
    socket: Option<&Path>,
    metrics: Option<SocketAddr>,
) -> Result<Listeners, BindError> {
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BindError {
                addr: addr.to_string(),
                source,
            })
    };
    let (api, local) = match listen {
        Some(addr) => {
            let api = bind(addr).await?;
            let local = api.local_addr().unwrap_or(addr);
            (Some(api), Some(local))
        }
        None => (None, None),
    };
    let unix = match socket {
        Some(path) => Some(bind_unix(path).map_err(|source| BindError {
            addr: format!("unix:{}", path.display()),
            source,
        })?),
        None => None,
    };
    let metrics = match metrics {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok(Listeners {
        api,
        local,
        unix,
        metrics,
    })
}

/// Bind the local socket: a stale one (nobody answers) is replaced, a live
/// one is an error. Anyone may connect (mode 0666): the gate decides by
/// the peer's uid, which the kernel vouches for.
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another daemon is serving this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// A generated gRPC server within the message sizes both ends agree on
/// ([`MAX_REQUEST_BYTES`] in, [`MAX_RESPONSE_BYTES`] out).
macro_rules! limited_service {
    ($server:expr) => {
        $server
            .max_decoding_message_size($crate::serve::MAX_REQUEST_BYTES)
            .max_encoding_message_size($crate::serve::MAX_RESPONSE_BYTES)
    };
}
pub(crate) use limited_service;

/// HTTP/2 streams one connection may open; the gate answers
/// RESOURCE_EXHAUSTED well before (`auth::layer::MAX_IN_FLIGHT_PER_CONNECTION`).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest request a daemon decodes (a heartbeat of thousands of
/// processes fits), and largest message it sends or a client accepts (a
/// registration ack carrying every process placed on a launcher).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The server side limits every listener has: streams per connection and
/// keepalive pings that find peers gone without a word (the gate limits
/// requests in flight and their time).
fn limited() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
}

/// The gate in front of a daemon's servers (see [`crate::auth`]); says at
/// start when its operator group does not exist on this host.
pub fn gate(
    socket: Option<&Path>,
    operator_group: &str,
    trust_domain: &str,
    insecure: bool,
    standalone: bool,
    denied: Family<Denial, Counter>,
) -> Gate {
    let group = crate::auth::OperatorGroup::resolve(operator_group);
    if socket.is_some() && group.gid.is_none() {
        tracing::info!(
            "no group {operator_group:?} on this host: only root may use the local socket"
        );
    }
    Gate::new(trust_domain, group, insecure, standalone, denied)
}

/// What a daemon serves, for its start-up line:
/// `127.0.0.1:8981 and unix:/run/prism-admin/admin.sock`.
pub fn serving(local: Option<SocketAddr>, socket: Option<&Path>) -> String {
    let tcp = local.map_or_else(|| "no TCP".to_owned(), |a| a.to_string());
    let socket = socket.map_or_else(
        || "no socket".to_owned(),
        |p| format!("unix:{}", p.display()),
    );
    format!("{tcp} and {socket}")
}

/// A gRPC server whose every call passes the gate.
pub type GatedServer = Server<Stack<Gate, Identity>>;
pub type GatedRouter = Router<Stack<Gate, Identity>>;

/// The gRPC servers of a daemon, until they stop.
pub type Serving =
    std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Services both daemons serve besides their own.
pub const COMMON_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// gRPC server reflection, in both versions (`v1`, and `v1alpha` for older
/// tools), listing exactly `services` and [`COMMON_SERVICES`]: what this
/// daemon serves, no more.
pub fn reflection(
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in services.iter().chain(COMMON_SERVICES.iter()) {
            b = b.with_service_name(*name);
        }
        b
    };
    (
        builder().build_v1().expect("descriptor sets built in"),
        builder().build_v1alpha().expect("descriptor sets built in"),
    )
}
