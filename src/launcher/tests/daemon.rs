//! The whole daemon in-process, on real sockets (`127.0.0.1:0` and a Unix
//! socket in a temporary directory), an in-memory manager and a temporary
//! state directory: its gRPC API, metrics and shutdown, without root.

use std::{net::SocketAddr, time::Duration};

use super::*;
use crate::{
    auth::dial::{Address, channel},
    launcher::{Args, Io, run},
    pb::prism::launcher::v1::{GetProcessRequest, launcher_client::LauncherClient},
    serve,
};

struct Running {
    sd: Arc<MemorySystemd>,
    api: SocketAddr,
    metrics: SocketAddr,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), serve::RunError>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    start_with(|_| {}).await
}

/// Start the daemon; `prepare` sets the in-memory manager up first.
async fn start_with(prepare: impl FnOnce(&MemorySystemd)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("launcher.sock");
    let state = dir.path().join("state");
    let args = <Args as clap::Parser>::try_parse_from([
        "prism-launcher",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--launcher-id",
        "in-process",
        "--systemd",
        "user",
    ])
    .unwrap();
    let config = args.resolve().unwrap();
    let listeners = serve::bind(
        config.listen,
        config.socket.as_deref(),
        config.metrics_listen,
    )
    .await
    .unwrap();
    let api = listeners.local.unwrap();
    let metrics = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
    let sd = Arc::new(MemorySystemd::new());
    prepare(&sd);
    let systemd: Arc<dyn Systemd> = sd.clone();
    let io = Io {
        listeners,
        systemd,
        store: Store::open(&state).unwrap(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(run(config, io, async {
        let _ = stopped.await;
    }));
    Running {
        sd,
        api,
        metrics,
        socket,
        stop: Some(stop),
        done,
        _dir: dir,
    }
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(out)
}

#[tokio::test]
async fn serves_assignments_over_tcp_and_the_socket_and_stops_every_server() {
    let mut d = start().await;
    let tcp = channel(
        &Address::parse(&format!("http://{}", d.api)).unwrap(),
        None,
        Duration::from_secs(3),
    )
    .unwrap();
    let mut client = LauncherClient::new(tcp);
    let ack = client
        .assign_process(wire("kv-1", 1))
        .await
        .expect("assigned over TCP")
        .into_inner();
    assert_eq!(ack.launcher_id, "in-process");
    assert_eq!(ack.unit_name, unit_of("kv-1"));
    assert_eq!(
        d.sd.unit(&unit_of("kv-1")).unwrap().status.active_state,
        "active"
    );
    // The same daemon on its local socket.
    let local = channel(
        &Address::parse(&format!("unix:{}", d.socket.display())).unwrap(),
        None,
        Duration::from_secs(3),
    )
    .unwrap();
    let info = LauncherClient::new(local)
        .get_process(GetProcessRequest {
            process_id: "kv-1".into(),
        })
        .await
        .expect("read over the socket")
        .into_inner();
    assert_eq!(info.health.unwrap().status, "running");
    let page = get(d.metrics, "/metrics").await.unwrap();
    assert!(page.contains("prism_launcher_processes"), "{page}");

    let _ = d.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(15), &mut d.done)
        .await
        .expect("stops within its drain deadline")
        .unwrap()
        .unwrap();
    assert!(
        get(d.metrics, "/metrics").await.is_err(),
        "metrics server stopped"
    );
    assert!(std::net::TcpStream::connect(d.api).is_err(), "gRPC stopped");
    assert!(!d.socket.exists(), "the socket is removed");
    // Stopping the daemon never stops a workload.
    assert!(d.sd.unit(&unit_of("kv-1")).is_some());
}

#[tokio::test]
async fn stops_cleanly_before_systemd_ever_answered() {
    // Waiting for systemd before the first reconciliation.
    let mut d = start_with(MemorySystemd::disconnect).await;
    let _ = d.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(15), &mut d.done)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    assert!(std::net::TcpStream::connect(d.api).is_err(), "gRPC stopped");
}
