//! Who may do what, against real daemons: certificates name roles, the
//! local socket knows callers by uid, transports are refused where they
//! cannot tell who calls. Every refusal checks that nothing changed.

mod support;

use std::{os::unix::fs::PermissionsExt, os::unix::process::CommandExt, time::Duration};

use prism_launcher::{
    auth::dial::{Address, Expect, channel},
    pb::prism::{
        self as pb,
        admin::v1::{self as apb, admin_client::AdminClient},
        control_plane_client::ControlPlaneClient,
        launcher::v1::launcher_client::LauncherClient,
    },
};
use support::{
    DEADLINE,
    daemon::*,
    eventually,
    pki::{Pair, Pki, unix_channel},
    text,
};
use tonic::{Code, transport::Channel};

fn registration(id: &str, address: &str) -> pb::LauncherRegistration {
    pb::LauncherRegistration {
        launcher_id: id.into(),
        address: address.into(),
        region: "local".into(),
        version: "test".into(),
        capabilities: vec!["pattern".into()],
        max_processes: 5,
        process_types: vec!["pattern".into()],
        metadata: Default::default(),
        ..Default::default()
    }
}

/// A call's outcome as the name of its code (`Ok`, `PermissionDenied`...).
fn code<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "Ok".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    }
}

fn heartbeat(id: &str) -> pb::LauncherHeartbeatRequest {
    pb::LauncherHeartbeatRequest {
        launcher_id: id.into(),
        ..Default::default()
    }
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> String {
    match r {
        Err(s) if s.code() == Code::PermissionDenied => s.message().to_owned(),
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

async fn launchers(api: &mut AdminClient<Channel>) -> Vec<apb::LauncherInfo> {
    api.list_launchers(apb::ListLaunchersRequest {})
        .await
        .expect("list launchers")
        .into_inner()
        .launchers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_certificate_acts_only_as_its_launcher_and_roles_decide_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let admin_cert = pki.issue("admin", "spiffe://prism/admin");
    let host_a = pki.issue("host-a", "spiffe://prism/launcher/host-a");
    let host_b = pki.issue("host-b", "spiffe://prism/launcher/host-b");
    let operator = pki.issue("alice", "spiffe://prism/operator/alice");
    let viewer = pki.issue("bob", "spiffe://prism/viewer/bob");
    let nobody = pki.issue("nobody", "");
    let flags = pki.flags(&admin_cert);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--heartbeat-interval", "1s"]);
    let admin = Daemon::admin_secure(dir.path(), &args).await;
    let cp = |who: &Pair| ControlPlaneClient::new(pki.channel(admin.port, who, Expect::Admin));
    let api = |who: &Pair| AdminClient::new(pki.channel(admin.port, who, Expect::Admin));

    // host-a registers as itself.
    let ack = cp(&host_a)
        .register_launcher(registration("host-a", "127.0.0.1:1111"))
        .await
        .expect("host-a registers as itself")
        .into_inner();
    assert!(ack.success, "{ack:?}");
    cp(&host_a)
        .launcher_heartbeat(heartbeat("host-a"))
        .await
        .expect("host-a heartbeats as itself");

    // host-b's certificate cannot register or heartbeat as host-a: nothing
    // is returned, and host-a's address is unchanged.
    let msg = denied(
        cp(&host_b)
            .register_launcher(registration("host-a", "127.0.0.1:6666"))
            .await,
        "host-b registering as host-a",
    );
    assert!(msg.contains("launcher \"host-b\""), "{msg}");
    assert!(msg.contains("host-a"), "{msg}");
    denied(
        cp(&host_b).launcher_heartbeat(heartbeat("host-a")).await,
        "host-b heartbeating as host-a",
    );
    let mut operator_api = api(&operator);
    let ls = launchers(&mut operator_api).await;
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0].address, "127.0.0.1:1111");

    // A launcher's certificate cannot use the operator API or assign
    // through the admin; an operator can; a viewer only reads.
    denied(
        api(&host_b)
            .list_launchers(apb::ListLaunchersRequest {})
            .await,
        "a launcher listing launchers",
    );
    let drain = apb::DrainRequest {
        launcher_id: "host-a".into(),
    };
    denied(
        api(&host_b).drain_launcher(drain.clone()).await,
        "a launcher draining",
    );
    denied(
        cp(&host_b)
            .assign_process(support::pattern(
                "p-1",
                std::path::Path::new("/bin/true"),
                &[],
            ))
            .await,
        "a launcher assigning through the admin",
    );
    let msg = denied(
        api(&viewer).drain_launcher(drain.clone()).await,
        "a viewer draining",
    );
    assert!(msg.contains("requires the operator role"), "{msg}");
    assert!(msg.contains("viewer"), "{msg}");
    let mut viewer_api = api(&viewer);
    assert!(!launchers(&mut viewer_api).await[0].draining);
    // A certificate of this CA naming no role is nobody.
    denied(
        api(&nobody)
            .list_launchers(apb::ListLaunchersRequest {})
            .await,
        "a certificate without a role",
    );
    denied(
        cp(&nobody)
            .register_launcher(registration("host-a", "127.0.0.1:6666"))
            .await,
        "a certificate without a role registering",
    );
    let info = operator_api
        .drain_launcher(drain)
        .await
        .expect("an operator drains")
        .into_inner();
    assert!(info.draining);
    assert_eq!(
        launchers(&mut operator_api).await[0].address,
        "127.0.0.1:1111"
    );

    // Bounded fields: named, nothing changed.
    let mut big = registration("host-a", "127.0.0.1:1111");
    big.metadata = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
    let e = cp(&host_a).register_launcher(big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("metadata"), "{e:?}");
    let mut bad_region = registration("host-a", "127.0.0.1:1111");
    bad_region.region = "eu\nwest".into();
    let e = cp(&host_a).register_launcher(bad_region).await.unwrap_err();
    assert!(e.message().contains("region"), "{e:?}");
    let e = operator_api
        .get_process(apb::GetProcessRequest {
            process_id: "p-1".into(),
            history_limit: 100_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("history_limit"), "{e:?}");

    // Refusals are counted by RPC and kind of caller.
    let metrics = support::scrape(&admin.metrics_addr().await).await;
    assert_eq!(
        support::sample(
            &metrics,
            r#"prism_admin_auth_denied_total{rpc="prism.admin.v1.Admin/DrainLauncher",caller="viewer"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        support::sample(
            &metrics,
            r#"prism_admin_auth_denied_total{rpc="prism.ControlPlane/RegisterLauncher",caller="launcher"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    // Logged once per caller: host-b was refused five times.
    let log = admin.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("permission denied") && l.contains("host-b"))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(log.contains("host-b"), "{log}");
}

/// The calls a local user makes in `as_a_local_user`, and what each got.
const SOCKET_ENV: &str = "PRISM_TEST_ADMIN_SOCKET";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the_local_socket_knows_its_callers_by_uid as another user"]
async fn as_a_local_user() {
    let Ok(socket) = std::env::var(SOCKET_ENV) else {
        return;
    };
    let ch = unix_channel(std::path::Path::new(&socket));
    let mut cp = ControlPlaneClient::new(ch.clone());
    let mut api = AdminClient::new(ch);
    let assign = code(
        cp.assign_process(support::pattern(
            "p-1",
            std::path::Path::new("/bin/true"),
            &[],
        ))
        .await,
    );
    let revoke = code(
        cp.revoke_process(pb::ProcessRevocation {
            process_id: "p-1".into(),
            ..Default::default()
        })
        .await,
    );
    let drain = code(
        api.drain_launcher(apb::DrainRequest {
            launcher_id: "host-a".into(),
        })
        .await,
    );
    let register = code(
        cp.register_launcher(registration("host-x", "unix:/tmp/x.sock"))
            .await,
    );
    println!("RESULT assign={assign} revoke={revoke} drain={drain} register={register}");
}

/// Run `as_a_local_user` as `uid`:`gid` and return its results.
fn as_user(socket: &std::path::Path, uid: u32, gid: u32) -> String {
    let dir = socket.parent().unwrap();
    run_as(dir, "as_a_local_user", &[(SOCKET_ENV, socket)], uid, gid)
}

/// Run the ignored test `name` as `uid`:`gid` with `env`, and return its
/// RESULT line. The test binary is copied into `dir` (searchable by
/// anyone) first: the checkout it was built in may not be.
fn run_as(
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, &std::path::Path)],
    uid: u32,
    gid: u32,
) -> String {
    let exe = dir.join("auth-test-binary");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new(&exe)
        .args(["--exact", name, "--ignored", "--nocapture"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let text = text(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result from uid {uid}: {text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_socket_knows_its_callers_by_uid() {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        assert!(std::env::var("CI").is_err(), "needs root in CI");
        eprintln!("SKIPPED: needs root to run a client as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Other users must reach the socket: the directory is searchable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // nogroup (65534) is the operator group here.
    let admin = Daemon::admin_secure(
        dir.path(),
        &["--listen", "none", "--operator-group", "nogroup"],
    )
    .await;
    let socket = dir.path().join("admin.sock");
    let _ = admin.port;

    // Anyone else: every write refused, nothing registered.
    let stranger = as_user(&socket, 65534, 4242);
    assert_eq!(
        stranger,
        "assign=PermissionDenied revoke=PermissionDenied drain=PermissionDenied register=PermissionDenied",
    );
    // A member of the operator group operates (the calls reach the admin,
    // which answers them), but is no launcher.
    let operator = as_user(&socket, 65534, 65534);
    assert!(operator.contains("drain=NotFound"), "{operator}");
    assert!(operator.contains("register=PermissionDenied"), "{operator}");
    assert!(!operator.contains("assign=PermissionDenied"), "{operator}");
    // Root may do everything; nothing was registered by the others.
    let mut api = AdminClient::new(unix_channel(&socket));
    assert!(launchers(&mut api).await.is_empty());
    let log = admin.log_text();
    assert!(log.contains("uid 65534 on the local socket"), "{log}");
}

#[test]
fn transports_that_cannot_tell_who_calls_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let admin_cert = pki.issue("admin", "spiffe://prism/admin");
    let launcher_cert = pki.issue("host-a", "spiffe://prism/launcher/host-a");
    let port = free_port().to_string();
    let any = format!("0.0.0.0:{port}");
    let data = dir.path().join("data").display().to_string();
    let admin = |extra: Vec<String>| {
        let mut args = vec![
            "serve".to_owned(),
            "--data-dir".into(),
            data.clone(),
            "--socket".into(),
            "none".into(),
            "--metrics-listen".into(),
            "none".into(),
        ];
        args.extend(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_prism-admin"))
            .args(&args)
            .output()
            .unwrap()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cert_only = |p: &Pair| p.flags();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (s(&["--listen", &any]), "--listen (listen): plaintext gRPC"),
        (
            s(&["--listen", "127.0.0.1:1"]),
            "--listen (listen): plaintext gRPC",
        ),
        (
            [s(&["--listen", &any]), cert_only(&admin_cert)].concat(),
            "--tls-ca (tls.ca): TLS on non-loopback",
        ),
        (
            [s(&["--listen", &any]), pki.flags(&launcher_cert)].concat(),
            "--tls-cert (tls.cert): the certificate names launcher",
        ),
    ];
    for (flags, expected) in cases {
        let out = admin(flags.clone());
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{flags:?}: {}", text(&out));
        assert!(!std::path::Path::new(&data).exists(), "nothing created");
    }
    // The launcher likewise, and it will not speak plaintext to an admin
    // on another host.
    let state = dir.path().join("state").display().to_string();
    let launcher_cases: Vec<(Vec<String>, &str)> = vec![
        (s(&["--listen", &any]), "--listen (listen): plaintext gRPC"),
        (
            [s(&["--listen", &any]), cert_only(&launcher_cert)].concat(),
            "--tls-ca (tls.ca): TLS on non-loopback",
        ),
        // A name that resolves nowhere: were it accepted, nothing would
        // leave this host.
        (
            s(&["--admin-endpoint", "prism-admin.invalid:8981"]),
            "--admin-endpoint (admin_endpoint): plaintext to http://prism-admin.invalid:8981",
        ),
        (
            [s(&["--launcher-id", "host-b"]), pki.flags(&launcher_cert)].concat(),
            "--launcher-id (launcher_id): \"host-b\" is not the launcher its certificate names",
        ),
    ];
    let socket = dir.path().join("launcher.sock").display().to_string();
    for (mut flags, expected) in launcher_cases {
        flags.extend(s(&[
            "--state-dir",
            &state,
            "--socket",
            &socket,
            "--metrics-listen",
            "none",
        ]));
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (code, out) = run_to_exit(&args, Duration::from_secs(10));
        assert_eq!(code, Some(64), "{flags:?}: {out}");
        assert!(out.contains(expected), "{flags:?}: {out}");
        assert!(!std::path::Path::new(&state).exists(), "nothing created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_speaks_tls_to_the_admin_whatever_the_spelling_and_takes_orders_only_from_it()
{
    let Some(h) = harness!() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let admin_cert = pki.issue("admin", "spiffe://prism/admin");
    let host_a = pki.issue("host-a", "spiffe://prism/launcher/host-a");
    let host_b = pki.issue("host-b", "spiffe://prism/launcher/host-b");
    let operator = pki.issue("alice", "spiffe://prism/operator/alice");
    let flags = pki.flags(&admin_cert);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--heartbeat-interval", "1s"]);
    let admin = Daemon::admin_secure(&dir.path().join("admin"), &args).await;

    // host:port, no scheme: TLS all the same, since TLS is configured.
    let endpoint = format!("127.0.0.1:{}", admin.port);
    let lflags = pki.flags(&host_a);
    let mut largs: Vec<&str> = lflags.iter().map(String::as_str).collect();
    largs.extend(["--admin-endpoint", &endpoint, "--heartbeat-interval", "1s"]);
    let launcher = Daemon::start_secure(&h, "host-a", &largs).await;
    let api = AdminClient::new(pki.channel(admin.port, &operator, Expect::Admin));
    eventually("host-a to register over TLS", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let ls = launchers(&mut api).await;
            (ls.len() == 1 && ls[0].health == "healthy" && ls[0].metadata["tls"] == "true")
                .then_some(())
        }
    })
    .await;

    // Its own service takes assignments from the admin only: another
    // launcher's certificate, or an operator's while an admin leads, are
    // refused, and nothing is created.
    let mut as_b =
        LauncherClient::new(pki.channel(launcher.port, &host_b, Expect::Launcher("host-a".into())));
    let msg = denied(
        as_b.assign_process(support::pattern("p-b", &h.demo, &[]))
            .await,
        "host-b assigning on host-a",
    );
    assert!(msg.contains("requires the admin role"), "{msg}");
    let mut as_op = LauncherClient::new(pki.channel(
        launcher.port,
        &operator,
        Expect::Launcher("host-a".into()),
    ));
    denied(
        as_op
            .assign_process(support::pattern("p-op", &h.demo, &[]))
            .await,
        "an operator assigning past the admin",
    );
    assert!(
        launcher.state_files().is_empty(),
        "{:?}",
        launcher.state_files()
    );
    // A client expecting host-b refuses host-a's certificate.
    let mut wrong = LauncherClient::new(pki.channel(
        launcher.port,
        &operator,
        Expect::Launcher("host-b".into()),
    ));
    let e = wrong
        .list_processes(pb::launcher::v1::ListProcessesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Through the admin (which checks host-a's certificate) it runs.
    let mut cp = ControlPlaneClient::new(pki.channel(admin.port, &operator, Expect::Admin));
    let ack = cp
        .assign_process(support::pattern("p-1", &h.demo, &[]))
        .await
        .expect("assign through the admin")
        .into_inner();
    assert_eq!(ack.launcher_id, "host-a");
    assert_eq!(h.prop(&ack.unit_name, "ActiveState"), "active", "{ack:?}");

    // A launcher with TLS never speaks plaintext to an admin that has no
    // TLS: it does not register.
    let plain = Daemon::admin(&dir.path().join("plain"), &["--heartbeat-interval", "1s"]).await;
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let endpoint = format!("127.0.0.1:{}", plain.port);
    let host_c = pki.issue("host-c", "spiffe://prism/launcher/host-c");
    let cflags = pki.flags(&host_c);
    let mut cargs: Vec<&str> = cflags.iter().map(String::as_str).collect();
    cargs.extend(["--admin-endpoint", &endpoint]);
    let c = Daemon::start_secure(&h, "host-c", &cargs).await;
    eventually("host-c to fail to register", DEADLINE, || async {
        c.log_text()
            .contains("cannot register with the admin")
            .then_some(())
    })
    .await;
    let mut plain_api = AdminClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", plain.port))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    assert!(launchers(&mut plain_api).await.is_empty());
}

const LAUNCHER_SOCKET_ENV: &str = "PRISM_TEST_LAUNCHER_SOCKET";

/// What the issue's reproduction did, step by step, as a local user on the
/// packaged configuration's sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the_reproduction_fails_at_every_step as another user"]
async fn the_reproduction_as_a_local_user() {
    let (Ok(admin), Ok(launcher)) = (
        std::env::var(SOCKET_ENV),
        std::env::var(LAUNCHER_SOCKET_ENV),
    ) else {
        return;
    };
    let dial = |s: &str| unix_channel(std::path::Path::new(s));
    let mut cp = ControlPlaneClient::new(dial(&admin));
    let mut api = AdminClient::new(dial(&admin));
    let mut l = LauncherClient::new(dial(&launcher));
    let mut results = Vec::new();
    // RegisterLauncher as the existing launcher, with an address of ours:
    // its processes and their credentials would come back.
    results.push(code(
        cp.register_launcher(registration("packaged", "127.0.0.1:6666"))
            .await,
    ));
    // The operator API: drain, move, revoke; and reading the fleet.
    results.push(code(
        api.drain_launcher(apb::DrainRequest {
            launcher_id: "packaged".into(),
        })
        .await,
    ));
    results.push(code(
        api.move_processes(apb::MoveProcessesRequest {
            launcher_id: "packaged".into(),
        })
        .await,
    ));
    results.push(code(
        cp.revoke_process(pb::ProcessRevocation {
            process_id: "secret-1".into(),
            ..Default::default()
        })
        .await,
    ));
    results.push(code(
        api.get_process(apb::GetProcessRequest {
            process_id: "secret-1".into(),
            history_limit: 0,
        })
        .await,
    ));
    // The launcher's own service: a shell; another process's namespace
    // (its dynamic user); a higher version of an existing id; revoke.
    let mut shell = support::pattern("shell-1", std::path::Path::new("/usr/bin/bash"), &[]);
    shell.config.as_mut().unwrap().args = vec!["-c".into(), "id".into()];
    results.push(code(l.assign_process(shell).await));
    let mut hijack = support::pattern("secret-1", std::path::Path::new("/usr/bin/bash"), &[]);
    hijack.version = 99;
    hijack.namespace = "demo".into();
    results.push(code(l.assign_process(hijack).await));
    results.push(code(
        l.revoke_process(pb::ProcessRevocation {
            process_id: "secret-1".into(),
            ..Default::default()
        })
        .await,
    ));
    results.push(code(
        l.list_processes(pb::launcher::v1::ListProcessesRequest::default())
            .await,
    ));
    println!("RESULT {}", results.join(" "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reproduction_fails_at_every_step() {
    let Some(h) = harness!() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = |f: &str| format!("{}/packaging/etc/{f}", env!("CARGO_MANIFEST_DIR"));
    // Both daemons on their packaged configuration (local sockets, no TCP).
    let admin_config = etc("admin.toml");
    let admin = Daemon::admin_secure(
        dir.path(),
        &[
            "--config",
            &admin_config,
            "--listen",
            "none",
            "--heartbeat-interval",
            "1s",
        ],
    )
    .await;
    assert!(admin.log_text().contains("no TCP"), "{}", admin.log_text());
    let admin_socket = dir.path().join("admin.sock");
    let launcher_socket = dir.path().join("launcher.sock");
    let launcher_config = etc("launcher.toml");
    let admin_endpoint = format!("unix:{}", admin_socket.display());
    let launcher_socket_arg = launcher_socket.display().to_string();
    let launcher = Daemon::start_secure(
        &h,
        "packaged",
        &[
            "--config",
            &launcher_config,
            "--listen",
            "none",
            "--socket",
            &launcher_socket_arg,
            "--admin-endpoint",
            &admin_endpoint,
            "--heartbeat-interval",
            "1s",
        ],
    )
    .await;
    // Root places a process with a secret on it, through the admin's socket.
    let root = unix_channel(&admin_socket);
    let mut api = AdminClient::new(root.clone());
    eventually("the launcher to register over the socket", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let ls = launchers(&mut api).await;
            (ls.len() == 1 && ls[0].health == "healthy").then_some(())
        }
    })
    .await;
    let mut secret = support::backend("secret-1", &h.demo, &[]);
    secret.namespace = "demo".into();
    secret
        .config
        .as_mut()
        .unwrap()
        .backend
        .as_mut()
        .unwrap()
        .credentials
        .insert("password".into(), "hunter2".into());
    let ack = ControlPlaneClient::new(root)
        .assign_process(secret)
        .await
        .expect("root assigns")
        .into_inner();
    let pid = h.prop(&ack.unit_name, "MainPID");
    assert_ne!(pid, "0");
    let units = h.listed_units();

    // Every step, as uid 65534: refused.
    let result = run_as(
        dir.path(),
        "the_reproduction_as_a_local_user",
        &[
            (SOCKET_ENV, admin_socket.as_path()),
            (LAUNCHER_SOCKET_ENV, launcher_socket.as_path()),
        ],
        65534,
        65534,
    );
    assert_eq!(
        result,
        ["PermissionDenied"; 9].join(" "),
        "register, drain, move, revoke, read (admin); shell, hijack, revoke, list (launcher)"
    );

    // Nothing changed: the launcher's address, its placement, the
    // process (same PID), the units, the launcher's state.
    let ls = launchers(&mut api).await;
    assert_eq!(ls[0].address, format!("unix:{launcher_socket_arg}"));
    assert!(!ls[0].draining);
    assert_eq!(h.prop(&ack.unit_name, "MainPID"), pid);
    assert_eq!(h.listed_units(), units);
    assert_eq!(
        launcher.state_files().len(),
        1,
        "{:?}",
        launcher.state_files()
    );
    // The secret never left the admin for an operator: redacted.
    let info = api
        .get_process(apb::GetProcessRequest {
            process_id: "secret-1".into(),
            history_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let creds = &info
        .assignment
        .unwrap()
        .config
        .unwrap()
        .backend
        .unwrap()
        .credentials;
    assert_eq!(creds["password"], "(redacted)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_ack_of_many_large_specs_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin(dir.path(), &[]).await;
    let url = format!("http://127.0.0.1:{}", admin.port);
    let address = Address::parse(&url).unwrap();
    let ch = channel(&address, None, Duration::from_secs(5)).unwrap();
    // Sized as the launcher's own link to the admin is.
    let mut cp = ControlPlaneClient::new(ch.clone())
        .max_decoding_message_size(prism_launcher::serve::MAX_RESPONSE_BYTES);
    // Nothing listens at its address: every push stays pending.
    let gone = format!("127.0.0.1:{}", free_port());
    let mut reg = registration("big", &gone);
    reg.max_processes = 100;
    cp.register_launcher(reg.clone()).await.unwrap();
    let n = 40;
    for i in 0..n {
        let mut a = support::pattern(
            &format!("big-{i}"),
            std::path::Path::new("/usr/bin/true"),
            &[],
        );
        let c = a.config.as_mut().unwrap();
        c.env.insert("PAYLOAD".into(), "e".repeat(60_000));
        c.args = vec!["a".repeat(60_000)];
        let mut request = tonic::Request::new(a);
        request
            .metadata_mut()
            .insert("prism-launcher-id", "big".parse().unwrap());
        let ack = cp.assign_process(request).await.unwrap().into_inner();
        assert!(ack.message.contains("pending"), "{ack:?}");
    }
    // Over gRPC's default 4 MiB, the ack still arrives whole.
    let ack = cp
        .register_launcher(reg.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.initial_processes.len(), n);
    let size: usize = ack
        .initial_processes
        .iter()
        .map(prost::Message::encoded_len)
        .sum();
    assert!(size > 4 << 20, "{size} bytes");
    // A client with the default limit could not have taken it.
    let e = ControlPlaneClient::new(ch)
        .register_launcher(reg)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
}
