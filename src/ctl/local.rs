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
use crate::{
    model::{ManagedProcess, Policy},
    pb::prism as pb,
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
    sandbox: Option<Sandbox>,
}

impl Manager {
    fn inspect_hints(&self, ids: &[String]) -> String {
        let first = ids.first().map(String::as_str).unwrap_or("<process id>");
        match &self.sandbox {
            None => {
                format!("Inspect with:\n  systemctl status 'prism-*'\n  journalctl -t {first}\n")
            }
            Some(s) => format!(
                "These run in a private systemd manager (this host's PID 1 is not systemd).\n\
                 Inspect with:\n  XDG_RUNTIME_DIR={} systemctl --user status 'prism-*'\n  \
                 journalctl -D {} -t {first}\n",
                s.runtime_dir().display(),
                s.journal_dir().display()
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
    Ok(Some(Manager {
        target: Target::Private(sandbox.private_address()),
        sandbox: Some(sandbox),
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

/// The demo workload, installed where dynamic users can execute it.
fn install_demo(state: &Path) -> Result<PathBuf, Error> {
    let candidates = [
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("prism-demo"))),
        Some(PathBuf::from("/usr/lib/prism/prism-demo")),
    ];
    let source = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Failed(
                "prism-demo not found next to prismctl or in /usr/lib/prism; \
                 build it with `cargo build --bins`"
                    .into(),
            )
        })?;
    let bin = state.join("bin");
    fs::create_dir_all(&bin).map_err(io(format!("creating {}", bin.display())))?;
    for dir in [state, bin.as_path()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", dir.display())))?;
    }
    let target = bin.join("prism-demo");
    let staged = bin.join(".prism-demo.new");
    fs::copy(&source, &staged).map_err(io(format!("copying {}", source.display())))?;
    fs::rename(&staged, &target).map_err(io(format!("installing {}", target.display())))?;
    Ok(target)
}

/// One process of each type, each with its own health port.
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

async fn up(state: &Path, demo: bool) -> Result<(), Error> {
    ensure_root()?;
    let manager = manager(state, true)?.expect("started when missing");
    let engine = engine(state, manager.target.clone()).await?;
    let mut ids = Vec::new();
    if demo {
        let binary = install_demo(state)?;
        let policy = Policy::with_binary_dirs([state.join("bin")])?;
        for wire in demo_assignments(&binary) {
            let process = ManagedProcess::try_from((wire, &policy))?;
            let spec = unit::translate(&process);
            match engine.start_transient(&spec).await {
                Ok(()) => eprintln!("started {} as {}", process.id, spec.name),
                Err(SystemdError::UnitExists { .. }) => {
                    eprintln!("{} is already running as {}", process.id, spec.name)
                }
                Err(e) => return Err(e.into()),
            }
            ids.push(process.id);
        }
    }
    print!("{}", status_table(&engine).await?);
    print!("{}", manager.inspect_hints(&ids));
    if let Some(s) = manager.sandbox {
        s.detach();
    }
    Ok(())
}

async fn status(state: &Path) -> Result<(), Error> {
    ensure_root()?;
    let Some(manager) = manager(state, false)? else {
        println!("The local stack is not running; start it with `prismctl local up --demo`.");
        return Ok(());
    };
    let engine = engine(state, manager.target.clone()).await?;
    print!("{}", status_table(&engine).await?);
    if let Some(s) = manager.sandbox {
        s.detach();
    }
    Ok(())
}

async fn down(state: &Path) -> Result<(), Error> {
    ensure_root()?;
    let Some(manager) = manager(state, false)? else {
        println!("The local stack is not running.");
        return Ok(());
    };
    let engine = engine(state, manager.target.clone()).await?;
    let demo_units: Vec<String> = demo_assignments(Path::new("/"))
        .iter()
        .map(|a| {
            let ty = a.process_type.parse().expect("demo types are valid");
            unit::unit_name(ty, &a.process_id)
        })
        .collect();
    for summary in engine.list().await? {
        // On a real host only the demo's own units are ours to stop.
        if manager.sandbox.is_none() && !demo_units.contains(&summary.name) {
            continue;
        }
        let stopped = engine.stop(&summary.name, Duration::from_secs(30)).await?;
        eprintln!(
            "stopped {}{}",
            summary.name,
            if stopped.killed { " (killed)" } else { "" }
        );
    }
    drop(engine);
    if let Some(sandbox) = manager.sandbox {
        // Dropping it stops the manager and removes its directory and cgroups.
        drop(sandbox);
        eprintln!("stopped the private systemd manager");
    }
    for leftover in ["bin", "credentials"] {
        let path = state.join(leftover);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
        }
    }
    let _ = fs::remove_dir(state);
    Ok(())
}

/// `ID TYPE UNIT STATE PID` of every launcher-owned unit.
async fn status_table(engine: &DbusSystemd) -> Result<String, Error> {
    let mut rows = Vec::new();
    for summary in engine.list().await? {
        let identity = unit::parse_description(&summary.description);
        let pid = match engine.status(&summary.name).await {
            Ok(s) if s.main_pid > 0 => s.main_pid.to_string(),
            _ => "-".into(),
        };
        rows.push(vec![
            identity.as_ref().map_or("?".into(), |i| i.id.clone()),
            identity
                .as_ref()
                .map_or("?".into(), |i| i.process_type.to_string()),
            summary.name.clone(),
            format!("{}/{}", summary.active_state, summary.sub_state),
            pid,
        ]);
    }
    if rows.is_empty() {
        return Ok("No Prism processes are running.\n".into());
    }
    rows.sort();
    Ok(table::render(
        &["ID", "TYPE", "UNIT", "STATE", "PID"],
        &rows,
    ))
}
