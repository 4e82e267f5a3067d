//! `prismctl local`: a whole Prism stack on this machine — prism-admin and
//! one prism-launcher (all four process types) registered with it, both as
//! transient units of a systemd user manager, started by the project's own
//! systemd client, so the stack is launched the way it launches everything.
//!
//! Where no user manager is reachable (a container, CI, a build VM), `up`
//! starts a private one under the state directory and says so; it needs
//! root. `down` stops everything `up` started and removes it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::{
    Error, Global,
    client::{Admin, AdminOpts, call_failed},
    fleet::{ps_table, status_of},
    output::{Format, out, structured},
};
use crate::{
    pb::prism::{self as pb, admin::v1 as apb},
    sandbox::Sandbox,
    systemd::{DbusSystemd, Options, Systemd, SystemdError, Target},
    unit::{self, ExecCommand, PropValue, UnitSpec, props},
};

/// The private manager's directory. Its name also names its cgroup
/// (`/sys/fs/cgroup/<name>`), which is global: it is unique per state
/// directory, so two stacks never share one.
pub fn sandbox_dir(state: &Path) -> PathBuf {
    let canonical = fs::canonicalize(state).unwrap_or_else(|_| state.to_owned());
    let hash = unit::fnv1a(&canonical.display().to_string());
    state.join(format!("prism-local-{:08x}", hash >> 32))
}
pub const ADMIN_UNIT: &str = "prism-local-admin.service";
pub const LAUNCHER_UNIT: &str = "prism-local-launcher.service";
const LAUNCHER_ID: &str = "local";
const REDIS: &str = "/usr/bin/redis-server";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/prism-local";

/// The local stack's state directory, as the other commands find it
/// (`PRISM_LOCAL_STATE`, or the default).
pub fn state_dir() -> PathBuf {
    std::env::var_os("PRISM_LOCAL_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Where the local stack keeps its manager, binaries and data.
    #[arg(
        long,
        global = true,
        default_value = DEFAULT_STATE_DIR,
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
        /// prism-admin's mutual-TLS port on 127.0.0.1 (the stack's own CA);
        /// its metrics are on the next port. prismctl uses its local socket.
        #[arg(long, default_value_t = 8981)]
        admin_port: u16,
        /// prism-launcher's mutual-TLS port on 127.0.0.1, where the admin
        /// reaches it; its metrics are on the next port.
        #[arg(long, default_value_t = 7070)]
        launcher_port: u16,
    },
    /// Show the stack and its processes.
    Status,
    /// Stop everything `up` started and remove it.
    Down,
}

/// What `up` decided, kept for `status` and `down`.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Saved {
    /// "user" or "sandbox".
    manager: String,
    admin_port: u16,
    launcher_port: u16,
}

impl Saved {
    fn path(state: &Path) -> PathBuf {
        state.join("local.toml")
    }

    fn load(state: &Path) -> Option<Self> {
        toml::from_str(&fs::read_to_string(Self::path(state)).ok()?).ok()
    }

    fn save(&self, state: &Path) -> Result<(), Error> {
        fs::write(Self::path(state), toml::to_string(self).unwrap_or_default())
            .map_err(io(format!("writing {}", Self::path(state).display())))
    }

    /// Each daemon serves /metrics on the port after its gRPC port.
    fn metrics(port: u16) -> String {
        format!("127.0.0.1:{}", port.wrapping_add(1))
    }

    /// The admin's local socket: the stack serves no plaintext TCP, and
    /// the socket knows its callers by uid.
    fn admin_socket(state: &Path) -> PathBuf {
        state.join("admin.sock")
    }

    fn launcher_socket(state: &Path) -> PathBuf {
        state.join("launcher.sock")
    }

    fn admin(state: &Path) -> AdminOpts {
        AdminOpts {
            admin: Some(format!("unix:{}", Self::admin_socket(state).display())),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            trust_domain: crate::auth::DEFAULT_TRUST_DOMAIN.into(),
        }
    }
}

pub async fn run(g: &Global, args: &LocalArgs) -> Result<(), Error> {
    match args.action {
        LocalAction::Up {
            demo,
            admin_port,
            launcher_port,
        } => up(g, &args.state_dir, demo, admin_port, launcher_port).await,
        LocalAction::Status => status(g, &args.state_dir).await,
        LocalAction::Down => down(&args.state_dir).await,
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
            "prismctl local needs root (uid is {uid}): its processes run as systemd units with \
             dynamic users. Run it with sudo."
        )));
    }
    Ok(())
}

/// The manager the stack runs in: a private one already running here, else
/// the user manager if it answers, else a new private one (when `start`).
async fn manager(
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
/// The stack's own throwaway CA and the daemons' certificates, in
/// `<state>/pki`: the admin's (for localhost and 127.0.0.1) and the
/// launcher's (naming its id). Made once; kept until `down`.
fn pki(state: &Path) -> Result<PathBuf, Error> {
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
fn tls_flags(pki: &Path, who: &str) -> Vec<String> {
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

/// A daemon of the stack as a transient unit. Its name is outside the
/// workload pattern, so the launcher never manages it.
fn daemon_unit(name: &str, description: &str, argv: Vec<String>, identifier: &str) -> UnitSpec {
    let s = |v: &str| PropValue::Str(v.into());
    UnitSpec {
        name: name.into(),
        properties: vec![
            (props::DESCRIPTION, s(description)),
            (
                props::EXEC_START,
                PropValue::Exec(vec![ExecCommand {
                    path: argv[0].clone(),
                    argv,
                    ignore_failure: false,
                }]),
            ),
            // READY=1 once it listens (and, for the launcher, has reconciled).
            (props::TYPE, s("notify")),
            (props::RESTART, s("on-failure")),
            (props::SYSLOG_IDENTIFIER, s(identifier)),
            (props::STANDARD_ERROR, s("journal")),
            // Stopping the launcher never stops workloads: they are units of
            // their own.
            (props::KILL_MODE, s("mixed")),
            (props::TIMEOUT_STOP_USEC, PropValue::U64(10_000_000)),
        ],
        credentials: vec![],
    }
}

/// One process of each type, each with its own health port and a quick
/// probe. The backend is a real redis-server when one is installed.
pub fn demo_assignments(demo: &Path, redis: Option<&Path>) -> Vec<pb::ProcessAssignment> {
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
    {
        let c = backend.config.as_mut().expect("config");
        c.backend = Some(pb::BackendProcessConfig {
            backend_type: "redis".into(),
            connection_string: "redis://127.0.0.1:18003/0".into(),
            ..Default::default()
        });
        if let Some(redis) = redis {
            c.binary = redis.display().to_string();
            // Nothing to save: the demo's redis lives in memory only.
            c.args = [
                "--port",
                "18003",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec();
            // Its own port: the one the probe checks.
            c.port = 18003;
            c.health_port = 0;
            c.health_check = Some(pb::HealthCheck {
                kind: "tcp".into(),
                port: 18003,
                interval_ms: 1000,
                timeout_ms: 500,
                ..Default::default()
            });
        }
    }
    let mut utility = base("logs-demo", "utility", "", 18004);
    utility.config.as_mut().expect("config").utility = Some(pb::UtilityProcessConfig {
        utility_type: "log-collector".into(),
        target_processes: vec!["kv-demo".into()],
        ..Default::default()
    });
    vec![kv, proxy, backend, utility]
}

async fn start_daemon(
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
fn journal_tail(state: &Path, identifier: &str) -> String {
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

async fn connect(state: &Path) -> Result<Admin, Error> {
    Saved::admin(state).connect().await.map_err(|e| match e {
        Error::Unreachable(_) => Error::Unreachable(format!(
            "the local stack's prism-admin does not answer on unix:{}; see \
             `prismctl local status`, or restart the stack with `prismctl local down` then `up`",
            Saved::admin_socket(state).display()
        )),
        other => other,
    })
}

async fn up(
    g: &Global,
    state: &Path,
    demo: bool,
    admin_port: u16,
    launcher_port: u16,
) -> Result<(), Error> {
    // Each daemon also serves metrics on its port + 1.
    if admin_port.abs_diff(launcher_port) < 2 {
        return Err(Error::Usage(format!(
            "--admin-port {admin_port} and --launcher-port {launcher_port} overlap: each daemon \
             also serves metrics on its port + 1"
        )));
    }
    ensure_root()?;
    fs::create_dir_all(state).map_err(io(format!("creating {}", state.display())))?;
    let previous = Saved::load(state);
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
        // A stack that runs keeps its ports.
        admin_port: previous.as_ref().map_or(admin_port, |p| p.admin_port),
        launcher_port: previous.as_ref().map_or(launcher_port, |p| p.launcher_port),
    };
    saved.save(state)?;
    let engine = engine(state, target.clone()).await?;
    let admin_bin = install(state, "prism-admin")?;
    let launcher_bin = install(state, "prism-launcher")?;
    let demo_bin = install(state, "prism-demo")?;
    let redis = Path::new(REDIS).is_file().then_some(Path::new(REDIS));

    // The production security model: mutual TLS between the daemons with
    // the stack's own CA, and local sockets for prismctl.
    let pki = pki(state)?;
    let admin_socket = Saved::admin_socket(state);
    let admin_listen = format!("127.0.0.1:{}", saved.admin_port);
    let mut admin_argv = vec![
        admin_bin.display().to_string(),
        "serve".into(),
        "--listen".into(),
        admin_listen.clone(),
        "--socket".into(),
        admin_socket.display().to_string(),
        "--data-dir".into(),
        state.join("admin").display().to_string(),
        // Quick health for a local demo.
        "--heartbeat-interval".into(),
        "2s".into(),
        "--metrics-listen".into(),
        Saved::metrics(saved.admin_port),
    ];
    admin_argv.extend(tls_flags(&pki, "admin"));
    start_daemon(
        &engine,
        state,
        &daemon_unit(
            ADMIN_UNIT,
            "prism-admin of the local stack",
            admin_argv,
            "prism-admin",
        ),
        "prism-admin",
    )
    .await?;
    let mut launcher_argv = vec![
        launcher_bin.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", saved.launcher_port),
        "--socket".into(),
        Saved::launcher_socket(state).display().to_string(),
        "--metrics-listen".into(),
        Saved::metrics(saved.launcher_port),
        "--admin-endpoint".into(),
        admin_listen,
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
        &daemon_unit(
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
        },
    )? {
        out(&text);
    } else {
        out(&ps_table(&list, g.output == Format::Wide));
        out(&hints(state, &target, &list));
    }
    Ok(())
}

async fn processes(admin: &mut Admin) -> Result<Vec<apb::ProcessInfo>, Error> {
    Ok(admin
        .api
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .map_err(|s| call_failed("listing processes", s))?
        .into_inner()
        .processes)
}

/// How to look at the stack with systemd's own tools.
fn hints(state: &Path, target: &Target, list: &[apb::ProcessInfo]) -> String {
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
                 Stop everything with `prismctl local down`.\n",
                run = dir.join("run").display(),
                journal = dir.join("log/journal").display(),
            )
        }
        _ => format!(
            "\nInspect it with systemd's tools:\n  systemctl --user status 'prism-*'\n  \
             journalctl --user -t {first}\n\
             Or with prismctl: `prismctl ps`, `prismctl describe {first}`, `prismctl logs {first}`.\n\
             Stop everything with `prismctl local down`.\n"
        ),
    }
}

async fn status(g: &Global, state: &Path) -> Result<(), Error> {
    ensure_root()?;
    let saved = Saved::load(state);
    let target = match &saved {
        Some(s) => manager(state, Some(s), false).await?,
        None => None,
    };
    let (Some(saved), Some(target)) = (saved, target) else {
        out("The local stack is not running; start it with `prismctl local up --demo`.\n");
        return Ok(());
    };
    let engine = engine(state, target.clone()).await?;
    let mut text = String::new();
    for unit in [ADMIN_UNIT, LAUNCHER_UNIT] {
        let state = match engine.status(unit).await {
            Ok(s) => format!("{}/{} (pid {})", s.active_state, s.sub_state, s.main_pid),
            Err(SystemdError::NoSuchUnit { .. }) => "not running".into(),
            Err(e) => return Err(e.into()),
        };
        text.push_str(&format!("{unit:<30} {state}\n"));
    }
    text.push_str(&format!(
        "metrics: http://{}/metrics (admin), http://{}/metrics (launcher)\n",
        Saved::metrics(saved.admin_port),
        Saved::metrics(saved.launcher_port)
    ));
    let mut admin = connect(state).await?;
    let list = processes(&mut admin).await?;
    if let Some(structured) = structured(
        g.output,
        &apb::ListProcessesResponse {
            processes: list.clone(),
        },
    )? {
        out(&structured);
        return Ok(());
    }
    text.push('\n');
    text.push_str(&ps_table(&list, g.output == Format::Wide));
    text.push_str(&hints(state, &target, &list));
    out(&text);
    Ok(())
}

async fn down(state: &Path) -> Result<(), Error> {
    ensure_root()?;
    let saved = Saved::load(state);
    let target = match &saved {
        Some(s) => manager(state, Some(s), false).await?,
        None => None,
    };
    if let (Some(_), Some(target)) = (&saved, target) {
        // Revoke through the admin, so each process stops gracefully and is
        // forgotten; then the daemons.
        if let Ok(mut admin) = connect(state).await
            && let Ok(list) = processes(&mut admin).await
        {
            for p in list {
                let id = p.assignment.map(|a| a.process_id).unwrap_or_default();
                match admin
                    .cp
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
        let engine = engine(state, target).await?;
        for unit in [LAUNCHER_UNIT, ADMIN_UNIT] {
            engine.stop(unit, Duration::from_secs(10)).await?;
            eprintln!("stopped {unit}");
        }
        // Workloads the admin could not reach are stopped here.
        for u in engine.list().await? {
            engine.stop(&u.name, Duration::from_secs(30)).await?;
            eprintln!("stopped {}", u.name);
        }
    }
    let sandbox_dir = sandbox_dir(state);
    if let Some(sandbox) = Sandbox::attach(&sandbox_dir) {
        // Dropping it stops the manager and removes its directory and cgroups.
        drop(sandbox);
        eprintln!("stopped the private systemd manager");
    }
    let leftovers = ["bin", "credentials", "launcher", "admin", "pki"]
        .map(|d| state.join(d))
        .into_iter()
        .chain([sandbox_dir]);
    for path in leftovers {
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
        }
    }
    let _ = fs::remove_file(Saved::path(state));
    // A daemon that was killed leaves its socket behind.
    let _ = fs::remove_file(Saved::admin_socket(state));
    let _ = fs::remove_file(Saved::launcher_socket(state));
    let _ = fs::remove_dir(state);
    if saved.is_none() {
        out("The local stack is not running.\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_daemons_are_never_taken_for_workloads() {
        assert!(!unit::is_workload_unit(ADMIN_UNIT));
        assert!(!unit::is_workload_unit(LAUNCHER_UNIT));
    }

    #[test]
    fn the_demo_has_one_process_of_each_type() {
        let demo = demo_assignments(Path::new("/x/prism-demo"), None);
        let types: Vec<&str> = demo.iter().map(|a| a.process_type.as_str()).collect();
        assert_eq!(types, ["pattern", "proxy", "backend", "utility"]);
        let with_redis = demo_assignments(Path::new("/x/prism-demo"), Some(Path::new(REDIS)));
        let backend = with_redis[2].config.as_ref().unwrap();
        assert_eq!(backend.binary, REDIS);
        assert_eq!(backend.health_check.as_ref().unwrap().kind, "tcp");
    }
}
