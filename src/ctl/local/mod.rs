//! `prismctl local`: a whole Prism stack on this machine — prism-admin and
//! one prism-launcher (all four process types) registered with it, both as
//! transient units of a systemd user manager, started by the project's own
//! systemd client, so the stack is launched the way it launches everything.
//!
//! Where no user manager is reachable (a container, CI, a build VM), `up`
//! starts a private one under the state directory and says so; it needs
//! root. `down` stops everything `up` started and removes it.
//!
//! - `stack`: the manager, the PKI, and the daemons' units;
//! - `ha`: three admins on a PostgreSQL of the stack's own (`up --ha`);
//! - `hosts`: the stack as a fleet of hosts in network namespaces (`up
//!   --hosts N`), and the faults of its network;
//! - `demo`: the demo's assignments, one of each type.

mod demo;
mod ha;
mod hosts;
mod stack;

pub use demo::demo_assignments;
use ha::{admin_socket, admin_units};
use stack::*;

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
    unit::{self, UnitSpec},
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
        /// Three admins (on --admin-port and the two even ports after it)
        /// sharing a PostgreSQL of the stack's own: one leads; stop it
        /// (`systemctl kill`) and watch another take over in `prismctl
        /// local status`. Needs PostgreSQL installed.
        #[arg(long)]
        ha: bool,
        /// Run N launcher hosts, each in a network namespace of its own with
        /// its own systemd manager, address (198.18.0.0/15) and certificate;
        /// the admins (and, with --ha, PostgreSQL) on hosts of their own, all
        /// on one bridge. Partition and delay them with `prismctl local
        /// partition`, `delay` and `heal`.
        #[arg(long, value_name = "N")]
        hosts: Option<usize>,
    },
    /// Show the stack and its processes (and, with hosts, each host, who
    /// leads and the network's faults).
    Status,
    /// Stop everything `up` started and remove it.
    Down,
    /// Cut a host off the network: packets from (and to) the peers named
    /// are dropped where they arrive, so each side hears silence.
    Partition {
        /// The host to cut off (host-1, admin-2, db…).
        host: String,
        /// Whom from: all (every other host), admins, leader (the admin
        /// that leads now), db, or one host.
        #[arg(long, default_value = "all", value_parser = hosts::parse_peers)]
        from: crate::devstack::fleet::Peers,
        /// Lose packets one way only: out (what the host sends is lost; it
        /// still hears its peers) or in (what it would receive is lost).
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "out")]
        one_way: Option<hosts::OneWay>,
    },
    /// Delay every packet a host sends (like netem on its interface).
    Delay {
        host: String,
        /// 500ms, 2s… (0 removes the delay).
        delay: String,
        /// Only what it sends to this host.
        #[arg(long)]
        to: Option<String>,
    },
    /// Undo partitions and delays: of one host, or of every host.
    Heal { host: Option<String> },
    /// Hold this network namespace's queued packets for --delay (run by
    /// `delay` as a unit on the host).
    #[command(hide = true)]
    Netem {
        #[arg(long)]
        delay: String,
    },
}

/// The local stack's admins, for `--admin`: each one's socket.
pub fn admin_addresses(state: &Path) -> String {
    if let Some(fleet) = hosts::fleet(state) {
        return fleet.admin_addresses();
    }
    let ha = Saved::load(state).is_some_and(|s| s.ha);
    (0..admin_units(ha).len())
        .map(|k| format!("unix:{}", admin_socket(state, k).display()))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `up` decided, kept for `status` and `down`.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Saved {
    /// "user" or "sandbox".
    manager: String,
    admin_port: u16,
    launcher_port: u16,
    /// Three admins on PostgreSQL.
    #[serde(default)]
    ha: bool,
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

    /// An admin's fleet status page: 1000 above its gRPC port (9981 for
    /// the default 8981), HTTPS with the stack's own CA.
    fn ui(port: u16) -> String {
        format!("127.0.0.1:{}", port.wrapping_add(1000))
    }

    /// The (first) admin's local socket: the stack serves no plaintext
    /// TCP, and the socket knows its callers by uid.
    fn admin_socket(state: &Path) -> PathBuf {
        admin_socket(state, 0)
    }

    /// Admin `k`'s gRPC port (its metrics on the next).
    fn admin_port(&self, k: usize) -> u16 {
        self.admin_port.wrapping_add(2 * k as u16)
    }

    fn launcher_socket(state: &Path) -> PathBuf {
        state.join("launcher.sock")
    }

    /// prismctl's way to the stack: every admin's socket, the first that
    /// answers.
    fn admin(state: &Path) -> AdminOpts {
        AdminOpts {
            admin: Some(admin_addresses(state)),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            trust_domain: crate::auth::DEFAULT_TRUST_DOMAIN.into(),
        }
    }
}

pub async fn run(g: &Global, args: &LocalArgs) -> Result<(), Error> {
    match &args.action {
        &LocalAction::Up {
            demo,
            admin_port,
            launcher_port,
            ha,
            hosts: Some(n),
        } => {
            let _ = (admin_port, launcher_port);
            hosts::up(g, &args.state_dir, demo, n, ha).await
        }
        &LocalAction::Up {
            demo,
            admin_port,
            launcher_port,
            ha,
            hosts: None,
        } => {
            if hosts::fleet(&args.state_dir).is_some() {
                return Err(Error::Usage(
                    "a local fleet with hosts of their own runs here; `prismctl local down` \
                     first, or bring it up again with its --hosts"
                        .into(),
                ));
            }
            up(g, &args.state_dir, demo, (admin_port, launcher_port), ha).await
        }
        LocalAction::Status => match hosts::fleet(&args.state_dir) {
            Some(fleet) => {
                ensure_root()?;
                hosts::status(g, &fleet).await
            }
            None => status(g, &args.state_dir).await,
        },
        LocalAction::Down => match hosts::fleet(&args.state_dir) {
            Some(fleet) => {
                ensure_root()?;
                hosts::down(fleet).await
            }
            None => down(&args.state_dir).await,
        },
        LocalAction::Partition {
            host,
            from,
            one_way,
        } => hosts::partition(&args.state_dir, host, from, *one_way).await,
        LocalAction::Delay { host, delay, to } => {
            hosts::delay(&args.state_dir, host, to.as_deref(), delay).await
        }
        LocalAction::Heal { host } => hosts::heal(&args.state_dir, host.as_deref()).await,
        LocalAction::Netem { delay } => hosts::netem(delay),
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
    let mut units: Vec<&str> = admin_units(saved.ha).to_vec();
    units.push(LAUNCHER_UNIT);
    if saved.ha {
        units.push(ha::POSTGRES_UNIT);
    }
    for unit in units {
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
    text.push_str(&format!(
        "fleet status page: https://{}/ (the stack's own CA); sign a browser in with `prismctl ui`\n",
        Saved::ui(saved.admin_port)
    ));
    if saved.ha {
        text.push_str(&ha::leader_line(&saved).await);
    }
    let table = !matches!(g.output, Format::Json | Format::Yaml);
    if table {
        // The stack's units even while no admin answers (a failover).
        out(&text);
        text.clear();
    }
    let mut admin = connect(state).await?;
    let list = processes(&mut admin).await?;
    if let Some(structured) = structured(
        g.output,
        &apb::ListProcessesResponse {
            processes: list.clone(),
            revision: 0,
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
        let ha = saved.as_ref().is_some_and(|s| s.ha);
        let mut daemons = vec![LAUNCHER_UNIT];
        daemons.extend(admin_units(ha));
        for unit in daemons {
            engine.stop(unit, Duration::from_secs(10)).await?;
            eprintln!("stopped {unit}");
        }
        // Workloads the admin could not reach are stopped here.
        for u in engine.list().await? {
            engine.stop(&u.name, Duration::from_secs(30)).await?;
            eprintln!("stopped {}", u.name);
        }
        if ha {
            ha::down(Some(&engine), state).await?;
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
        for u in ha::ADMIN_UNITS {
            assert!(!unit::is_workload_unit(u));
        }
        assert!(!unit::is_workload_unit(LAUNCHER_UNIT));
        assert!(!unit::is_workload_unit(ha::POSTGRES_UNIT));
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
