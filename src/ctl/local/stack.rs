//! The stack itself: the systemd manager it runs in, its PKI, and the
//! admin's and launcher's units, started and waited for.

use super::*;

/// The manager the stack runs in: a private one already running here, else
/// the user manager if it answers, else a new private one (when `start`).
pub(super) async fn manager(
    state: &Path,
    saved: Option<&Saved>,
    start: bool,
) -> Result<Option<Target>, Error> {
    let dir = sandbox_dir(state);
    if let Some(sandbox) = Sandbox::attach(&dir) {
        let target = Target::Private(sandbox.private_address());
        sandbox.detach();
        return Ok(Some(target));
    }
    if saved.is_none_or(|s| s.manager == "user") {
        let probe = DbusSystemd::connect(Options {
            target: Target::User,
            call_timeout: Duration::from_secs(2),
            credentials_dir: state.join("credentials"),
            ..Options::default()
        })
        .await;
        if probe.is_ok() {
            return Ok(Some(Target::User));
        }
    }
    if !start {
        return Ok(None);
    }
    eprintln!(
        "No systemd user manager is reachable (this host's PID 1 is not systemd?): starting a \
         private one in {}",
        dir.display()
    );
    let sandbox = Sandbox::start_in(&dir)?;
    let target = Target::Private(sandbox.private_address());
    // Only `down` stops it: never an error or a panic on the way out.
    sandbox.detach();
    Ok(Some(target))
}

pub(super) async fn engine(state: &Path, target: Target) -> Result<DbusSystemd, Error> {
    Ok(DbusSystemd::connect(Options {
        target,
        credentials_dir: state.join("credentials"),
        ..Options::default()
    })
    .await?)
}

/// Install `name` (found next to prismctl, or where packages put it) into
/// `<state>/bin`, where dynamic users can execute it.
/// The stack's own throwaway CA and the daemons' certificates, in
/// `<state>/pki`: the admin's (for localhost and 127.0.0.1) and the
/// launcher's (naming its id). Made once; kept until `down`.
pub(super) fn pki(state: &Path) -> Result<PathBuf, Error> {
    use crate::auth::{Role, pki::Authority};
    let dir = state.join("pki");
    if dir.join("launcher.key").is_file() {
        return Ok(dir);
    }
    let _ = fs::remove_dir_all(&dir);
    let failed = |e: crate::auth::pki::PkiError| Error::Failed(format!("the local CA: {e}"));
    let ca = Authority::create("prism local stack CA", 30).map_err(failed)?;
    ca.save_dir(&dir).map_err(failed)?;
    let names = ["localhost".to_owned()];
    let ips = [std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
    let domain = crate::auth::DEFAULT_TRUST_DOMAIN;
    ca.issue(&Role::Admin, "admin", domain, &names, &ips, 30)
        .and_then(|c| c.save(&dir, "admin"))
        .map_err(failed)?;
    ca.issue(
        &Role::Launcher(LAUNCHER_ID.into()),
        LAUNCHER_ID,
        domain,
        &names,
        &ips,
        30,
    )
    .and_then(|c| c.save(&dir, "launcher"))
    .map_err(failed)?;
    Ok(dir)
}

/// `--tls-cert`, `--tls-key`, `--tls-ca` for `who` (admin or launcher).
pub(super) fn tls_flags(pki: &Path, who: &str) -> Vec<String> {
    let file = |name: String| pki.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        file(format!("{who}.crt")),
        "--tls-key".into(),
        file(format!("{who}.key")),
        "--tls-ca".into(),
        file("ca.crt".into()),
    ]
}

pub(super) fn install(state: &Path, name: &str) -> Result<PathBuf, Error> {
    let candidates = [
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(name))),
        Some(PathBuf::from("/usr/bin").join(name)),
        Some(PathBuf::from("/usr/lib/prism").join(name)),
    ];
    let source = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Failed(format!(
                "{name} not found next to prismctl, in /usr/bin or in /usr/lib/prism; build it \
                 with `cargo build --bins`"
            ))
        })?;
    let bin = state.join("bin");
    fs::create_dir_all(&bin).map_err(io(format!("creating {}", bin.display())))?;
    for dir in [state, bin.as_path()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", dir.display())))?;
    }
    let target = bin.join(name);
    let staged = bin.join(format!(".{name}.new"));
    fs::copy(&source, &staged).map_err(io(format!("copying {}", source.display())))?;
    fs::rename(&staged, &target).map_err(io(format!("installing {}", target.display())))?;
    Ok(target)
}

pub(super) async fn start_daemon(
    engine: &DbusSystemd,
    state: &Path,
    spec: &UnitSpec,
    what: &str,
) -> Result<(), Error> {
    match engine.start_transient(spec).await {
        Ok(()) => eprintln!("started {what} as {}", spec.name),
        Err(SystemdError::UnitExists { .. }) => {
            eprintln!("{what} is already running as {}", spec.name)
        }
        Err(e @ SystemdError::StartFailed { .. }) => {
            return Err(Error::Failed(format!(
                "{e}; its last words:\n{}",
                journal_tail(state, what)
            )));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The last lines a daemon of the stack logged (its syslog identifier is
/// its name), from the sandbox's journal or the user's.
pub(super) fn journal_tail(state: &Path, identifier: &str) -> String {
    let journal = sandbox_dir(state).join("log/journal");
    let mut cmd = std::process::Command::new("journalctl");
    if journal.is_dir() {
        cmd.arg("-D").arg(&journal);
    } else {
        cmd.arg("--user");
    }
    match cmd
        .args(["--no-pager", "-o", "cat", "-n", "20", "-t", identifier])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(journalctl: {e})"),
    }
}

pub(super) async fn connect(state: &Path) -> Result<Admin, Error> {
    Saved::admin(state).connect().await.map_err(|e| match e {
        Error::Unreachable(_) => Error::Unreachable(format!(
            "the local stack's prism-admin does not answer on unix:{}; see \
             `prismctl local status`, or restart the stack with `prismctl local down` then `up`",
            Saved::admin_socket(state).display()
        )),
        other => other,
    })
}

pub(super) async fn up(
    g: &Global,
    state: &Path,
    demo: bool,
    (admin_port, launcher_port): (u16, u16),
    ha: bool,
) -> Result<(), Error> {
    ensure_root()?;
    fs::create_dir_all(state).map_err(io(format!("creating {}", state.display())))?;
    let previous = Saved::load(state);
    if let Some(p) = &previous
        && p.ha != ha
    {
        return Err(Error::Usage(format!(
            "the local stack runs {}; `prismctl local down` first to change that",
            if p.ha { "with --ha" } else { "without --ha" }
        )));
    }
    let saved = Saved {
        manager: String::new(),
        // A stack that runs keeps its ports.
        admin_port: previous.as_ref().map_or(admin_port, |p| p.admin_port),
        launcher_port: previous.as_ref().map_or(launcher_port, |p| p.launcher_port),
        ha,
    };
    // Each daemon also serves metrics on its port + 1.
    for k in 0..admin_units(ha).len() {
        let port = saved.admin_port(k);
        if port.abs_diff(saved.launcher_port) < 2 {
            return Err(Error::Usage(format!(
                "--admin-port {admin_port} and --launcher-port {launcher_port} overlap: each \
                 daemon also serves metrics on its port + 1{}",
                if ha {
                    ", and the other admins take the two even ports after --admin-port"
                } else {
                    ""
                }
            )));
        }
    }
    let target = manager(state, previous.as_ref(), true)
        .await?
        .expect("started when missing");
    let saved = Saved {
        manager: if target == Target::User {
            "user"
        } else {
            "sandbox"
        }
        .into(),
        ..saved
    };
    saved.save(state)?;
    let engine = engine(state, target.clone()).await?;
    let admin_bin = install(state, "prism-admin")?;
    let launcher_bin = install(state, "prism-launcher")?;
    let demo_bin = install(state, "prism-demo")?;
    let redis = Path::new(REDIS).is_file().then_some(Path::new(REDIS));
    let database = if ha {
        Some(ha::postgres(&engine, state).await?)
    } else {
        None
    };

    // The production security model: mutual TLS between the daemons with
    // the stack's own CA, and local sockets for prismctl.
    let pki = pki(state)?;
    let mut endpoints = Vec::new();
    for (k, unit_name) in admin_units(ha).iter().enumerate() {
        let listen = format!("127.0.0.1:{}", saved.admin_port(k));
        let data = if k == 0 {
            state.join("admin")
        } else {
            state.join(format!("admin-{}", k + 1))
        };
        let mut admin_argv = vec![
            admin_bin.display().to_string(),
            "serve".into(),
            "--listen".into(),
            listen.clone(),
            "--socket".into(),
            admin_socket(state, k).display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            // Quick health for a local demo.
            "--heartbeat-interval".into(),
            "2s".into(),
            "--metrics-listen".into(),
            Saved::metrics(saved.admin_port(k)),
            "--ui-listen".into(),
            Saved::ui(saved.admin_port(k)),
        ];
        if let Some(url) = &database {
            admin_argv.extend(["--database".into(), url.clone()]);
        }
        admin_argv.extend(tls_flags(&pki, "admin"));
        let description = if ha {
            format!("prism-admin {} of 3 of the local stack", k + 1)
        } else {
            "prism-admin of the local stack".to_owned()
        };
        start_daemon(
            &engine,
            state,
            &unit::daemon(unit_name, &description, admin_argv, "prism-admin"),
            "prism-admin",
        )
        .await?;
        endpoints.push(listen);
    }
    let mut launcher_argv = vec![
        launcher_bin.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", saved.launcher_port),
        "--socket".into(),
        Saved::launcher_socket(state).display().to_string(),
        "--metrics-listen".into(),
        Saved::metrics(saved.launcher_port),
        "--admin-endpoint".into(),
        endpoints.join(","),
        "--systemd".into(),
        target.to_string(),
        "--launcher-id".into(),
        LAUNCHER_ID.into(),
        "--capabilities".into(),
        "pattern,proxy,backend,utility".into(),
        // Room for the demo and a `prismctl bench` of a few hundred.
        "--max-processes".into(),
        "500".into(),
        "--state-dir".into(),
        state.join("launcher").display().to_string(),
        "--credentials-dir".into(),
        state.join("credentials").display().to_string(),
        "--allow-binary-dir".into(),
        state.join("bin").display().to_string(),
    ];
    launcher_argv.extend(tls_flags(&pki, "launcher"));
    if redis.is_some() {
        launcher_argv.extend(["--allow-binary-dir".into(), "/usr/bin".into()]);
    }
    start_daemon(
        &engine,
        state,
        &unit::daemon(
            LAUNCHER_UNIT,
            "prism-launcher of the local stack",
            launcher_argv,
            "prism-launcher",
        ),
        "prism-launcher",
    )
    .await?;

    let mut admin = connect(state).await?;
    // The launcher registers with the admin within a heartbeat or two.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let launchers = admin
            .api
            .list_launchers(apb::ListLaunchersRequest {})
            .await
            .map_err(|s| call_failed("listing launchers", s))?
            .into_inner()
            .launchers;
        if launchers
            .iter()
            .any(|l| l.launcher_id == LAUNCHER_ID && l.health == "healthy")
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Failed(
                "prism-launcher did not register with prism-admin within 30 s; see `journalctl` \
                 for prism-launcher (the commands are in `prismctl local status`)"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if demo {
        eprintln!(
            "backend: {}",
            if redis.is_some() {
                "redis-server (installed on this host)"
            } else {
                "the demo workload (install redis-server to run a real one)"
            }
        );
        for wire in demo_assignments(&demo_bin, redis) {
            let id = wire.process_id.clone();
            let ack = admin
                .cp
                .assign_process(wire)
                .await
                .map_err(|s| call_failed(&format!("assigning {id}"), s))?
                .into_inner();
            eprintln!("{}", ack.message);
        }
        // Show them once they are running (or a deadline passed).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let list = processes(&mut admin).await?;
            if list.len() >= 4 && list.iter().all(|p| status_of(p) == "running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let list = processes(&mut admin).await?;
    if let Some(text) = structured(
        g.output,
        &apb::ListProcessesResponse {
            processes: list.clone(),
            revision: 0,
        },
    )? {
        out(&text);
    } else {
        out(&ps_table(&list, g.output == Format::Wide));
        out(&hints(state, &target, &list));
    }
    Ok(())
}

pub(super) async fn processes(admin: &mut Admin) -> Result<Vec<apb::ProcessInfo>, Error> {
    Ok(admin
        .api
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .map_err(|s| call_failed("listing processes", s))?
        .into_inner()
        .processes)
}

/// How to look at the stack with systemd's own tools.
pub(super) fn hints(state: &Path, target: &Target, list: &[apb::ProcessInfo]) -> String {
    let first = list
        .iter()
        .filter_map(|p| p.assignment.as_ref())
        .map(|a| a.process_id.as_str())
        .find(|id| *id == "kv-demo")
        .or_else(|| {
            list.first()
                .and_then(|p| p.assignment.as_ref())
                .map(|a| a.process_id.as_str())
        })
        .unwrap_or("<process id>");
    match target {
        Target::Private(_) => {
            let dir = sandbox_dir(state);
            format!(
                "\nThe stack runs in a private systemd manager (no user manager was reachable).\n\
                 Inspect it with systemd's tools:\n  \
                 XDG_RUNTIME_DIR={run} systemctl --user status 'prism-*'\n  \
                 journalctl -D {journal} -t {first}\n  \
                 journalctl -D {journal} -t prism-launcher\n\
                 Or with prismctl: `prismctl ps`, `prismctl describe {first}`, `prismctl logs {first}`.\n\
                 The fleet status page: run `prismctl ui` and open the address it prints.\n\
                 Stop everything with `prismctl local down`.\n",
                run = dir.join("run").display(),
                journal = dir.join("log/journal").display(),
            )
        }
        _ => format!(
            "\nInspect it with systemd's tools:\n  systemctl --user status 'prism-*'\n  \
             journalctl --user -t {first}\n\
             Or with prismctl: `prismctl ps`, `prismctl describe {first}`, `prismctl logs {first}`.\n\
             The fleet status page: run `prismctl ui` and open the address it prints.\n\
             Stop everything with `prismctl local down`.\n"
        ),
    }
}
