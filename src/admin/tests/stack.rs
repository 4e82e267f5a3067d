//! prism-admin and a prism-launcher in-process, on Unix sockets in a
//! temporary directory, with an in-memory store and an in-memory manager:
//! registration, placement and delivery end to end, without root.

use crate::{
    admin::{self, Cli, Command},
    auth::dial::{Address, channel},
    launcher,
    pb::prism::admin::v1::{ListLaunchersRequest, admin_client::AdminClient},
    serve,
    systemd::{MemorySystemd, Systemd},
};

use super::*;

#[tokio::test]
async fn a_launcher_registers_and_runs_what_the_admin_places() {
    let dir = tempfile::tempdir().unwrap();
    let admin_sock = dir.path().join("admin.sock");
    let launcher_sock = dir.path().join("launcher.sock");
    let Command::Serve(args) = <Cli as clap::Parser>::try_parse_from([
        "prism-admin",
        "serve",
        "--socket",
        admin_sock.to_str().unwrap(),
        "--metrics-listen",
        "none",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--heartbeat-interval",
        "200ms",
    ])
    .unwrap()
    .command;
    let config = args.resolve().unwrap();
    let io = admin::Io {
        listeners: serve::bind(None, config.socket.as_deref(), None)
            .await
            .unwrap(),
        store: Arc::new(SqliteStore::in_memory().await.unwrap()),
        ui: None,
    };
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_done = tokio::spawn(admin::run(config, io, async {
        let _ = admin_stopped.await;
    }));

    let state = dir.path().join("state");
    let args = <launcher::Args as clap::Parser>::try_parse_from([
        "prism-launcher",
        "--admin-endpoint",
        &format!("unix:{}", admin_sock.display()),
        "--socket",
        launcher_sock.to_str().unwrap(),
        "--metrics-listen",
        "none",
        "--state-dir",
        state.to_str().unwrap(),
        "--launcher-id",
        "host-1",
        "--systemd",
        "user",
        "--heartbeat-interval",
        "200ms",
    ])
    .unwrap();
    let config = args.resolve().unwrap();
    let sd = Arc::new(MemorySystemd::new());
    let systemd: Arc<dyn Systemd> = sd.clone();
    let io = launcher::Io {
        listeners: serve::bind(None, config.socket.as_deref(), None)
            .await
            .unwrap(),
        systemd,
        store: crate::launcher::store::Store::open(&state).unwrap(),
    };
    let (launcher_stop, launcher_stopped) = tokio::sync::oneshot::channel::<()>();
    let launcher_done = tokio::spawn(launcher::run(config, io, async {
        let _ = launcher_stopped.await;
    }));

    let ch = channel(
        &Address::parse(&format!("unix:{}", admin_sock.display())).unwrap(),
        None,
        Duration::from_secs(3),
    )
    .unwrap();
    let client = AdminClient::new(ch);
    let mut control = crate::pb::prism::control_plane_client::ControlPlaneClient::new(
        channel(
            &Address::parse(&format!("unix:{}", admin_sock.display())).unwrap(),
            None,
            Duration::from_secs(3),
        )
        .unwrap(),
    );
    until(Duration::from_secs(10), "the launcher to register", || {
        let mut client = client.clone();
        async move {
            client
                .list_launchers(ListLaunchersRequest::default())
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .launchers
                        .iter()
                        .any(|l| l.launcher_id == "host-1")
                })
        }
    })
    .await;
    // A binary this host has: the launcher checks its own disk.
    let mut wire = spec("kv-1", 1);
    wire.config.as_mut().unwrap().binary = "/usr/bin/true".into();
    let ack = control
        .assign_process(wire)
        .await
        .expect("placed")
        .into_inner();
    assert_eq!(ack.launcher_id, "host-1");
    let unit = crate::unit::unit_name(crate::model::ProcessType::Pattern, "kv-1");
    assert_eq!(sd.unit(&unit).unwrap().status.active_state, "active");
    // Its health comes back with the heartbeats.
    until(
        Duration::from_secs(10),
        "a heartbeat with its health",
        || {
            let mut client = client.clone();
            async move {
                client
                    .get_process(crate::pb::prism::admin::v1::GetProcessRequest {
                        process_id: "kv-1".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().health.is_some_and(|h| h.status == "running"))
            }
        },
    )
    .await;

    let _ = launcher_stop.send(());
    let _ = admin_stop.send(());
    for done in [launcher_done, admin_done] {
        tokio::time::timeout(Duration::from_secs(15), done)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
    assert!(!admin_sock.exists() && !launcher_sock.exists());
}
