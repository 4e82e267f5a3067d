//! `prismctl local`: a Prism stack on this machine.
//!
//! On a host whose PID 1 is systemd, processes run as units of the system
//! manager. Elsewhere (containers, CI, build VMs) `up` starts a private
//! systemd user manager under the state directory and leaves it running
//! until `down`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};

use super::{Error, table};
use tonic::transport::Channel;

use crate::{
    pb::prism::{
        self as pb,
        launcher::v1::{ListProcessesRequest, launcher_client::LauncherClient},
    },
    sandbox::Sandbox,
    systemd::{DbusSystemd, Options, Systemd, SystemdError, Target},
    unit,
};

/// Name of the sandbox directory, which also names its cgroup.
const SANDBOX_DIR: &str = "prism-local-manager";

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Where the local stack keeps its manager, binaries and credentials.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/prism-local",
        env = "PRISM_LOCAL_STATE"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub action: LocalAction,
}

#[derive(Subcommand, Debug)]
pub enum LocalAction {
    /// Bring the stack up; running it twice reports what is already up.
    Up {
        /// Also run one demo process of each type.
        #[arg(long)]
        demo: bool,
    },
    /// Show the stack's processes.
    Status,
    /// Stop everything `up` started and remove it.
    Down,
}

pub async fn run(args: LocalArgs) -> Result<(), Error> {
    match args.action {
        LocalAction::Up { demo } => up(&args.state_dir, demo).await,
        LocalAction::Status => status(&args.state_dir).await,
        LocalAction::Down => down(&args.state_dir).await,
    }
}

/// The host's own systemd runs as PID 1.
fn host_has_systemd() -> bool {
    fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// Where the stack's processes run.
struct Manager {
    target: Target,
    /// The private manager's directory, when there is one. The handle is
    /// detached at once: only `down` stops it, never an error or a panic.
    sandbox: Option<PathBuf>,
}

impl Manager {
    fn inspect_hints(&self, ids: &[String]) -> String {
        let first = ids.first().map(String::as_str).unwrap_or("<process id>");
        match &self.sandbox {
            None => {
                format!("Inspect with:\n  systemctl status 'prism-*'\n  journalctl -t {first}\n")
            }
            Some(dir) => format!(
                "These run in a private systemd manager (this host's PID 1 is not systemd).\n\
                 Inspect with:\n  XDG_RUNTIME_DIR={} systemctl --user status 'prism-*'\n  \
                 journalctl -D {} -t {first}\n",
                dir.join("run").display(),
                dir.join("log/journal").display()
            ),
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn ensure_root() -> Result<(), Error> {
    let uid = std::os::unix::fs::MetadataExt::uid(
        &fs::metadata("/proc/self").map_err(io("reading /proc/self"))?,
    );
    if uid != 0 {
        return Err(Error::Usage(format!(
            "prismctl local needs root (uid is {uid}): it runs processes as systemd units \
             with dynamic users. Run it with sudo."
        )));
    }
    Ok(())
}

/// The manager to use, starting a sandbox when `start` and none runs.
fn manager(state: &Path, start: bool) -> Result<Option<Manager>, Error> {
    if host_has_systemd() {
        return Ok(Some(Manager {
            target: Target::System,
            sandbox: None,
        }));
    }
    let dir = state.join(SANDBOX_DIR);
    let sandbox = match Sandbox::attach(&dir) {
        Some(s) => s,
        None if start => {
            eprintln!(
                "This host's PID 1 is not systemd: starting a private systemd manager in {}",
                dir.display()
            );
            Sandbox::start_in(&dir)?
        }
        None => return Ok(None),
    };
    let target = Target::Private(sandbox.private_address());
    sandbox.detach();
    Ok(Some(Manager {
        target,
        sandbox: Some(dir),
    }))
}

async fn engine(state: &Path, target: Target) -> Result<DbusSystemd, Error> {
    Ok(DbusSystemd::connect(Options {
        target,
        credentials_dir: state.join("credentials"),
        ..Options::default()
    })
    .await?)
}

/// Install `name` (found next to prismctl, or where packages put it) into
/// `<state>/bin`, where dynamic users can execute it.
fn install(state: &Path, name: &str) -> Result<PathBuf, Error> {
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
                "{name} not found next to prismctl, in /usr/bin or in /usr/lib/prism; \
                 build it with `cargo build --bins`"
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

/// One process of each type, each with its own health port and a quick
/// probe, so the demo shows them healthy within seconds.
pub fn demo_assignments(demo: &Path) -> Vec<pb::ProcessAssignment> {
    let base = |id: &str, ty: &str, ns: &str, health: i32| pb::ProcessAssignment {
        process_id: id.into(),
        process_type: ty.into(),
        namespace: ns.into(),
        version: 1,
        config: Some(pb::ProcessConfig {
            binary: demo.display().to_string(),
            health_port: health,
            log_level: "info".into(),
            health_check: Some(pb::HealthCheck {
                kind: "http".into(),
                interval_ms: 1000,
                timeout_ms: 500,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut kv = base("kv-demo", "pattern", "demo", 18001);
    kv.config.as_mut().expect("config").pattern = Some(pb::PatternProcessConfig {
        pattern_type: "keyvalue".into(),
        ..Default::default()
    });
    let mut proxy = base("proxy-demo", "proxy", "", 18002);
    proxy.config.as_mut().expect("config").proxy = Some(pb::ProxyProcessConfig {
        admin_endpoint: "127.0.0.1:8981".into(),
        control_port: 18010,
        data_port: 18011,
        proxy_id: "proxy-demo".into(),
        partition_ranges: vec![],
    });
    let mut backend = base("redis-demo", "backend", "demo", 18003);
    backend.config.as_mut().expect("config").backend = Some(pb::BackendProcessConfig {
        backend_type: "redis".into(),
        connection_string: "redis://127.0.0.1:6379/0".into(),
        ..Default::default()
    });
    let mut utility = base("logs-demo", "utility", "", 18004);
    utility.config.as_mut().expect("config").utility = Some(pb::UtilityProcessConfig {
        utility_type: "log-collector".into(),
        target_processes: vec!["kv-demo".into()],
        ..Default::default()
    });
    vec![kv, proxy, backend, utility]
}

/// The launcher of the local stack, as a transient unit of the same
/// manager it drives. Its name is outside the workload pattern, so it never
/// manages itself.
fn launcher_unit(state: &Path, binary: &Path, target: &Target, listen: &str) -> unit::UnitSpec {
    use unit::{ExecCommand, PropValue};
    let path = binary.display().to_string();
    let argv = vec![
        path.clone(),
        "--listen".into(),
        listen.into(),
        "--systemd".into(),
        target.to_string(),
        "--launcher-id".into(),
        "local".into(),
        "--state-dir".into(),
        state.join("launcher").display().to_string(),
        "--credentials-dir".into(),
        state.join("credentials").display().to_string(),
        "--allow-binary-dir".into(),
        state.join("bin").display().to_string(),
    ];
    let s = |v: &str| PropValue::Str(v.into());
    unit::UnitSpec {
        name: LAUNCHER_UNIT.into(),
        properties: vec![
            ("Description", s("prism-launcher of the local stack")),
            (
                "ExecStart",
                PropValue::Exec(vec![ExecCommand {
                    path,
                    argv,
                    ignore_failure: false,
                }]),
            ),
            // READY=1 once it listens and has reconciled.
            ("Type", s("notify")),
            ("Restart", s("on-failure")),
            ("SyslogIdentifier", s("prism-launcher")),
            ("StandardError", s("journal")),
            // Stopping the launcher never stops workloads: they are units of
            // their own.
            ("KillMode", s("mixed")),
            ("TimeoutStopUSec", PropValue::U64(10_000_000)),
        ],
        credentials: vec![],
    }
}

/// The unit running the local stack's launcher.
pub const LAUNCHER_UNIT: &str = "prism-local-launcher.service";
const LOCAL_LISTEN: &str = "127.0.0.1:7070";

async fn launcher_client(listen: &str) -> Result<LauncherClient<Channel>, Error> {
    LauncherClient::connect(format!("http://{listen}"))
        .await
        .map_err(|e| Error::Unreachable(format!("prism-launcher at {listen}: {e}")))
}

async fn up(state: &Path, demo: bool) -> Result<(), Error> {
    ensure_root()?;
    let manager = manager(state, true)?.expect("started when missing");
    let engine = engine(state, manager.target.clone()).await?;
    let launcher_bin = install(state, "prism-launcher")?;
    let spec = launcher_unit(state, &launcher_bin, &manager.target, LOCAL_LISTEN);
    match engine.start_transient(&spec).await {
        Ok(()) => eprintln!("started prism-launcher as {LAUNCHER_UNIT} on {LOCAL_LISTEN}"),
        Err(SystemdError::UnitExists { .. }) => {
            eprintln!("prism-launcher is already running as {LAUNCHER_UNIT}")
        }
        Err(e) => return Err(e.into()),
    }
    let mut client = launcher_client(LOCAL_LISTEN).await?;
    let mut ids = Vec::new();
    if demo {
        let binary = install(state, "prism-demo")?;
        for wire in demo_assignments(&binary) {
            let id = wire.process_id.clone();
            let ack = client
                .assign_process(wire)
                .await
                .map_err(|s| Error::Failed(format!("assigning {id}: {}", s.message())))?
                .into_inner();
            eprintln!("{}", ack.message);
            ids.push(id);
        }
        // Show them once they passed their first probe (or a deadline).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let list = client
                .list_processes(ListProcessesRequest::default())
                .await
                .map_err(|s| Error::Unreachable(s.message().to_owned()))?
                .into_inner();
            let settled = list.processes.iter().all(|p| {
                p.health
                    .as_ref()
                    .is_some_and(|h| h.detailed_status != "starting")
            });
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    out(&process_table(&mut client).await?);
    out(&manager.inspect_hints(&ids));
    Ok(())
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

async fn status(state: &Path) -> Result<(), Error> {
    ensure_root()?;
    let Some(manager) = manager(state, false)? else {
        out("The local stack is not running; start it with `prismctl local up --demo`.\n");
        return Ok(());
    };
    let _ = manager;
    let mut client = launcher_client(LOCAL_LISTEN).await?;
    out(&process_table(&mut client).await?);
    Ok(())
}

async fn down(state: &Path) -> Result<(), Error> {
    ensure_root()?;
    let Some(manager) = manager(state, false)? else {
        remove_leftovers(state)?;
        out("The local stack is not running.\n");
        return Ok(());
    };
    // Revoke through the launcher, so each process stops gracefully and the
    // launcher forgets it; then stop the launcher itself.
    if let Ok(mut client) = launcher_client(LOCAL_LISTEN).await
        && let Ok(list) = client.list_processes(ListProcessesRequest::default()).await
    {
        for p in list.into_inner().processes {
            let id = p.assignment.map(|a| a.process_id).unwrap_or_default();
            match client
                .revoke_process(pb::ProcessRevocation {
                    process_id: id.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(ack) => eprintln!("{}", ack.into_inner().message),
                Err(s) => eprintln!("revoking {id}: {}", s.message()),
            }
        }
    }
    let engine = engine(state, manager.target.clone()).await?;
    engine.stop(LAUNCHER_UNIT, Duration::from_secs(10)).await?;
    eprintln!("stopped prism-launcher");
    drop(engine);
    if let Some(sandbox) = manager.sandbox.as_deref().and_then(Sandbox::attach) {
        // Dropping it stops the manager and removes its directory and cgroups.
        drop(sandbox);
        eprintln!("stopped the private systemd manager");
    }
    remove_leftovers(state)
}

/// What `up` put in the state directory.
fn remove_leftovers(state: &Path) -> Result<(), Error> {
    for leftover in ["bin", "credentials", "launcher"] {
        let path = state.join(leftover);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
        }
    }
    let _ = fs::remove_dir(state);
    Ok(())
}

/// `ID TYPE STATUS PID RESTARTS UNIT`, from the launcher.
async fn process_table(client: &mut LauncherClient<Channel>) -> Result<String, Error> {
    let list = client
        .list_processes(ListProcessesRequest::default())
        .await
        .map_err(|s| Error::Unreachable(format!("prism-launcher: {}", s.message())))?
        .into_inner();
    let mut rows: Vec<Vec<String>> = list
        .processes
        .iter()
        .map(|p| {
            let a = p.assignment.clone().unwrap_or_default();
            let h = p.health.clone().unwrap_or_default();
            vec![
                a.process_id,
                if a.process_type.is_empty() {
                    "pattern".into()
                } else {
                    a.process_type
                },
                h.detailed_status,
                if h.pid > 0 {
                    h.pid.to_string()
                } else {
                    "-".into()
                },
                h.restart_count.to_string(),
                p.unit_name.clone(),
            ]
        })
        .collect();
    rows.sort();
    let mut out = if rows.is_empty() {
        "prism-launcher holds no processes.\n".to_owned()
    } else {
        table::render(&["ID", "TYPE", "STATUS", "PID", "RESTARTS", "UNIT"], &rows)
    };
    if let Some(r) = list.resources {
        out.push_str(&format!(
            "{} of {} slots used\n",
            r.process_count, r.max_processes
        ));
    }
    Ok(out)
}
