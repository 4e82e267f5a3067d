//! The .deb as built by `packaging/build`: its units verify, and its
//! binaries run under its own unit files (hardening included) in a sandbox
//! systemd manager. These tests need the package: `.ci/run` builds it and
//! runs them with `PRISM_DEB=target/packages/<name>.deb cargo test --test
//! package -- --ignored`.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use prism_launcher::{
    auth::dial::Expect,
    pb::prism::{admin::v1 as apb, launcher::v1::ListProcessesRequest},
};
use support::{daemon::free_port, pki::Pki, *};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The package under test, extracted into `dir`.
fn extract(dir: &Path) -> PathBuf {
    let deb = std::env::var_os("PRISM_DEB").expect(
        "PRISM_DEB must name the .deb to test (build it with packaging/build; .ci/run does)",
    );
    let root = dir.join("pkg");
    fs::create_dir_all(&root).unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .expect("run dpkg-deb");
    assert!(out.status.success(), "dpkg-deb -x: {}", text(&out));
    root
}

const UNITS: [&str; 3] = [
    "prism-launcher.service",
    "prism-admin.service",
    "prism.slice",
];

/// Run `args` in a private mount namespace where the package's /usr/bin
/// is laid over the host's (units name /usr/bin/prism-*) and its man pages
/// are on MANPATH (units name their man pages).
fn with_package_mounted(root: &Path, args: &[&str]) -> std::process::Output {
    let script = format!(
        "mount -t overlay overlay -o lowerdir={root}/usr/bin:/usr/bin /usr/bin && exec \"$@\"",
        root = root.display()
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(args)
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .expect("run unshare")
}

#[test]
#[ignore = "needs the .deb: run by .ci/run with PRISM_DEB"]
fn the_packaged_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let root = extract(dir.path());
    let units: Vec<String> = UNITS
        .iter()
        .map(|u| {
            root.join("lib/systemd/system")
                .join(u)
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["systemd-analyze", "verify"];
    args.extend(units.iter().map(String::as_str));
    let out = with_package_mounted(&root, &args);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    // systemd's own exposure score of each daemon (0 best, 10 worst).
    for unit in &units[..2] {
        let out = with_package_mounted(
            &root,
            &["systemd-analyze", "security", "--offline=true", unit],
        );
        let report = text(&out);
        let score: f64 = report
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level: {report}"));
        assert!(score <= 2.5, "{unit}: exposure {score}\n{report}");
    }
    // The old name is the same binary.
    let link = root.join("usr/bin/pattern-launcher");
    assert_eq!(
        fs::read_link(&link).expect("pattern-launcher is a symlink"),
        Path::new("prism-launcher")
    );
}

/// What the sandbox manager cannot set up in its nesting: a fresh /proc
/// (ProtectProc=) and read-only remounts of /proc/sys and cgroupfs (exit
/// 226/NAMESPACE). Every other setting of the packaged units applies.
const SANDBOX_CANNOT: &str =
    "ProtectProc=default\nProtectKernelTunables=no\nProtectControlGroups=no\n";

/// A unit of the package installed in the sandbox manager, with a drop-in
/// that points it at the extracted binary and the sandbox's manager.
fn install_unit(h: &Harness, root: &Path, unit: &str, exec_start: &str, extra: &str) {
    let dir = h.sandbox.dir().join("home/.config/systemd/user");
    fs::create_dir_all(dir.join(format!("{unit}.d"))).unwrap();
    fs::copy(root.join("lib/systemd/system").join(unit), dir.join(unit)).unwrap();
    fs::write(
        dir.join(format!("{unit}.d/sandbox.conf")),
        format!("[Service]\nExecStart=\nExecStart={exec_start}\n{SANDBOX_CANNOT}{extra}"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the .deb: run by .ci/run with PRISM_DEB"]
async fn the_packaged_daemons_run_under_their_units_and_workloads_outlive_the_launcher() {
    let Some(h) = harness!() else { return };
    let root = extract(h.sandbox.dir());
    let bin = |name: &str| root.join("usr/bin").join(name).display().to_string();
    let etc = |name: &str| root.join("etc/prism").join(name).display().to_string();
    let (admin_port, launcher_port) = (free_port(), free_port());
    // Mutual TLS between the daemons, as a fleet runs them: a CA and a
    // certificate per role (what `prismctl pki` makes).
    let pki = Pki::new(&h.sandbox.dir().join("pki"));
    let admin_pair = pki.issue("admin", "spiffe://prism/admin");
    let launcher_pair = pki.issue("packaged", "spiffe://prism/launcher/packaged");
    let operator = pki.issue("alice", "spiffe://prism/operator/alice");

    // The admin with its packaged configuration (a dynamic user; state in
    // its StateDirectory). On a host it would read its key through
    // LoadCredential= (see prism-admin.service); this nested user manager
    // does not hand credentials to a dynamic user, so the test key is read
    // where it lies, in a directory any user may read.
    install_unit(
        &h,
        &root,
        "prism-admin.service",
        &format!(
            "{} serve --config {} --listen 127.0.0.1:{admin_port} \
             --socket ${{RUNTIME_DIRECTORY}}/admin.sock --data-dir ${{STATE_DIRECTORY}} \
             {} --metrics-listen none --heartbeat-interval 1s",
            bin("prism-admin"),
            etc("admin.toml"),
            pki.flags(&admin_pair).join(" "),
        ),
        "",
    );
    // The launcher with its packaged configuration, registering with it
    // over TLS (a host:port endpoint: TLS because [tls] is configured).
    install_unit(
        &h,
        &root,
        "prism-launcher.service",
        &format!(
            "{} --config {} --systemd bus:{} --state-dir ${{STATE_DIRECTORY}} \
             --credentials-dir ${{RUNTIME_DIRECTORY}}/credentials --listen 127.0.0.1:{launcher_port} \
             --socket ${{RUNTIME_DIRECTORY}}/launcher.sock {} \
             --metrics-listen none --allow-binary-dir {} \
             --admin-endpoint 127.0.0.1:{admin_port}",
            bin("prism-launcher"),
            etc("launcher.toml"),
            h.sandbox.bus_address(),
            pki.flags(&launcher_pair).join(" "),
            h.bin_dir.display(),
        ),
        "",
    );
    h.systemctl(&["daemon-reload"]);
    h.systemctl(&["log-level", "debug"]);
    // Type=notify: `start` returns once each daemon said READY=1.
    h.systemctl(&["start", "prism-admin.service"]);
    h.systemctl(&["start", "prism-launcher.service"]);
    for unit in ["prism-admin.service", "prism-launcher.service"] {
        assert_eq!(h.prop(unit, "ActiveState"), "active", "{unit}");
    }
    assert_eq!(h.prop("prism-admin.service", "DynamicUser"), "yes");
    // The launcher talks to the manager with its hardening in force: no
    // capabilities, a read-only system, no new privileges.
    let hardening = h.show(
        "prism-launcher.service",
        &[
            "CapabilityBoundingSet",
            "ProtectSystem",
            "NoNewPrivileges",
            "PrivateTmp",
        ],
    );
    assert_eq!(hardening["CapabilityBoundingSet"], "", "{hardening:?}");
    assert_eq!(hardening["ProtectSystem"], "strict", "{hardening:?}");
    assert_eq!(hardening["NoNewPrivileges"], "yes", "{hardening:?}");
    assert_eq!(hardening["PrivateTmp"], "yes", "{hardening:?}");

    // Both answer their health checks, over mutual TLS.
    let dial = |port: u16, expect: Expect| pki.channel(port, &operator, expect);
    for (port, expect) in [
        (admin_port, Expect::Admin),
        (launcher_port, Expect::Launcher("packaged".into())),
    ] {
        let mut health = HealthClient::new(dial(port, expect));
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(status.as_str_name(), "SERVING", "port {port}");
    }

    // A process placed through the admin runs on the packaged launcher.
    let api = apb::admin_client::AdminClient::new(dial(admin_port, Expect::Admin));
    eventually("the launcher registered", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let list = api
                .list_launchers(apb::ListLaunchersRequest {})
                .await
                .ok()?
                .into_inner();
            list.launchers
                .iter()
                .any(|l| l.launcher_id == "packaged" && l.health == "healthy")
                .then_some(())
        }
    })
    .await;
    let mut cp = prism_launcher::pb::prism::control_plane_client::ControlPlaneClient::new(dial(
        admin_port,
        Expect::Admin,
    ));
    let ack = cp
        .assign_process(pattern("kv-pkg", &h.demo, &[]))
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(ack.launcher_id, "packaged", "{ack:?}");
    let workload = ack.unit_name.clone();
    assert_eq!(h.prop(&workload, "ActiveState"), "active");
    let pid = h.prop(&workload, "MainPID");

    // The launcher logs to the journal (JOURNAL_STREAM is set under
    // systemd), with its id, the process id and the unit as fields.
    let out = h
        .sandbox
        .journalctl()
        .args([
            "-o",
            "cat",
            "PRISM_LAUNCHER_ID=packaged",
            "PRISM_PROCESS_ID=kv-pkg",
        ])
        .arg(format!("UNIT={workload}"))
        .output()
        .unwrap();
    assert!(text(&out).contains("started kv-pkg"), "{}", text(&out));

    // Restarting or stopping the launcher leaves the workload running.
    h.systemctl(&["restart", "prism-launcher.service"]);
    assert_eq!(h.prop("prism-launcher.service", "ActiveState"), "active");
    let mut launcher =
        prism_launcher::pb::prism::launcher::v1::launcher_client::LauncherClient::new(dial(
            launcher_port,
            Expect::Launcher("packaged".into()),
        ));
    let list = launcher
        .list_processes(ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.processes.len(), 1, "adopted after the restart");
    h.systemctl(&["stop", "prism-launcher.service"]);
    assert_eq!(h.prop(&workload, "ActiveState"), "active");
    assert_eq!(
        h.prop(&workload, "MainPID"),
        pid,
        "the workload never restarted"
    );
    h.systemctl(&["stop", &workload, "prism-admin.service"]);
}
