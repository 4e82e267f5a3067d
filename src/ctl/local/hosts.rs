//! `prismctl local up --hosts N`: the stack as a fleet of hosts, each in a
//! network namespace with a systemd manager of its own (see
//! `devstack::fleet`), and the faults a network has: `partition`, `delay`,
//! `heal`.

use std::time::Duration;

use super::*;
use crate::devstack::fleet::{self, Binaries, Direction, Fleet, FleetError, Peers};

/// The most hosts a local fleet runs (each is a systemd manager).
pub const MAX_HOSTS: usize = 32;
/// Heartbeats of a local fleet: a partition shows within seconds.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl From<FleetError> for Error {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Usage(m) => Error::Usage(m),
            FleetError::Sandbox(e) => Error::Sandbox(e),
            FleetError::Systemd(e) => Error::Systemd(e),
            other => Error::Failed(other.to_string()),
        }
    }
}

/// The fleet `up --hosts` brought up in `state`, if any.
pub fn fleet(state: &Path) -> Option<Fleet> {
    Fleet::load(state)
}

fn needs_fleet(state: &Path) -> Result<Fleet, Error> {
    fleet(state).ok_or_else(|| {
        Error::Usage(
            "no local fleet runs here: partitions and delays need hosts of their own; start \
             one with `prismctl local up --hosts 3`"
                .into(),
        )
    })
}

pub(super) async fn up(
    g: &Global,
    state: &Path,
    demo: bool,
    hosts: usize,
    ha: bool,
) -> Result<(), Error> {
    ensure_root()?;
    if !(1..=MAX_HOSTS).contains(&hosts) {
        return Err(Error::Usage(format!(
            "--hosts {hosts}: a local fleet has 1 to {MAX_HOSTS} hosts"
        )));
    }
    if let Some(previous) = Saved::load(state) {
        return Err(Error::Usage(format!(
            "a local stack without hosts of its own runs here ({}); `prismctl local down` first",
            if previous.ha {
                "with --ha"
            } else {
                "one admin"
            }
        )));
    }
    if let Some(running) = fleet(state)
        && (running.layout.hosts, running.layout.ha) != (hosts, ha)
    {
        return Err(Error::Usage(format!(
            "the local fleet runs {} hosts{}; `prismctl local down` first to change that",
            running.layout.hosts,
            if running.layout.ha { " with --ha" } else { "" }
        )));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
        .unwrap_or_default();
    let redis = Path::new(REDIS).is_file();
    let spec = fleet::Spec {
        home: state.to_owned(),
        tag: fleet::tag_for(state),
        hosts,
        ha,
        heartbeat: HEARTBEAT,
        lease: None,
        admin_args: vec![],
        launcher_args: vec![],
        pid: None,
        binaries: Binaries::find(&exe_dir)?,
        extra_binary_dir: redis.then(|| PathBuf::from("/usr/bin")),
    };
    eprintln!(
        "bringing up {} admin{}{} and {hosts} launcher host{} on a bridge of their own …",
        if ha { 3 } else { 1 },
        if ha { "s" } else { "" },
        if ha { ", PostgreSQL" } else { "" },
        if hosts == 1 { "" } else { "s" },
    );
    let fleet = Fleet::up(&spec).await?;
    eprintln!(
        "hosts on {}: {}",
        fleet.net.cidr(),
        fleet
            .net
            .hosts
            .iter()
            .map(|h| format!("{} {}", h.name, h.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut admin = connect(state).await?;
    if demo {
        let demo_bin = fleet.bin_dir().join("prism-demo");
        let redis = redis.then_some(Path::new(REDIS));
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
        out(&hints(&fleet));
    }
    Ok(())
}

fn hints(fleet: &Fleet) -> String {
    let host = fleet
        .layout
        .launchers()
        .into_iter()
        .next()
        .unwrap_or_default();
    format!(
        "\nEach host runs its own systemd manager in a network namespace of its own. Inspect \
         one with systemd's tools:\n  XDG_RUNTIME_DIR={run} systemctl --user status 'prism-*'\n  \
         journalctl -D {journal} -t prism-launcher\n\
         Or with prismctl: `prismctl ps`, `prismctl local status`, `prismctl describe <id>`.\n\
         Try a partition: `prismctl local partition {host}`, then `prismctl local heal`.\n\
         Stop everything with `prismctl local down`.\n",
        run = fleet.host_dir(&host).join("run").display(),
        journal = fleet.journal_dir(&host).display(),
    )
}

pub(super) async fn status(g: &Global, fleet: &Fleet) -> Result<(), Error> {
    let table = !matches!(g.output, Format::Json | Format::Yaml);
    if table {
        let mut text = format!("{:<10} {:<16} {:<10} STATE\n", "HOST", "ADDRESS", "RUNS");
        for host in fleet.layout.host_names() {
            let (unit, runs) = match fleet.layout.role(&host) {
                Some(fleet::HostRole::Admin(_)) => (fleet::ADMIN_UNIT, "admin"),
                Some(fleet::HostRole::Db) => (fleet::POSTGRES_UNIT, "postgres"),
                _ => (fleet::LAUNCHER_UNIT, "launcher"),
            };
            let state = if !fleet.running(&host) {
                "its manager is not running".to_owned()
            } else {
                match fleet.engine(&host).await {
                    Ok(engine) => match engine.status(unit).await {
                        Ok(s) => format!("{}/{} (pid {})", s.active_state, s.sub_state, s.main_pid),
                        Err(SystemdError::NoSuchUnit { .. }) => "not running".into(),
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                }
            };
            let addr = fleet.addr(&host).map(|a| a.to_string()).unwrap_or_default();
            text.push_str(&format!("{host:<10} {addr:<16} {runs:<10} {state}\n"));
        }
        text.push('\n');
        for (host, standing) in fleet.standings().await {
            text.push_str(&format!("{host:<10} {standing}\n"));
        }
        let faults = fleet.faults()?;
        text.push_str(&if faults.is_empty() {
            "\nno faults: every host reaches every other\n".to_owned()
        } else {
            format!("\nfaults:\n  {}\n", faults.join("\n  "))
        });
        out(&text);
    }
    let mut admin = connect(&fleet.home).await?;
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
    out(&format!("\n{}", ps_table(&list, g.output == Format::Wide)));
    Ok(())
}

pub(super) async fn down(fleet: Fleet) -> Result<(), Error> {
    // Revoke through the admin, so each process stops gracefully and is
    // forgotten; then every host's manager goes, with what it runs.
    if fleet.faults().map(|f| f.is_empty()).unwrap_or(false)
        && let Ok(mut admin) = connect(&fleet.home).await
        && let Ok(list) = processes(&mut admin).await
    {
        for p in list {
            let id = p.assignment.map(|a| a.process_id).unwrap_or_default();
            let revoked = tokio::time::timeout(
                Duration::from_secs(40),
                admin.cp.revoke_process(pb::ProcessRevocation {
                    process_id: id.clone(),
                    ..Default::default()
                }),
            )
            .await;
            match revoked {
                Ok(Ok(ack)) => eprintln!("{}", ack.into_inner().message),
                Ok(Err(s)) => eprintln!("revoking {id}: {}", s.message()),
                Err(_) => eprintln!("revoking {id}: no answer within 40 s"),
            }
        }
    }
    for host in fleet.layout.host_names() {
        if fleet.running(&host) {
            eprintln!("stopping {host}");
        }
    }
    fleet.down()?;
    eprintln!("removed the fleet's network ({})", fleet.net.cidr());
    let _ = fs::remove_dir(&fleet.home);
    Ok(())
}

pub fn parse_peers(s: &str) -> Result<Peers, String> {
    Ok(match s {
        "all" => Peers::All,
        "admins" => Peers::Admins,
        "leader" => Peers::Leader,
        "db" => Peers::Db,
        host if crate::devstack::net::valid_host_name(host) => Peers::Host(host.to_owned()),
        other => {
            return Err(format!(
                "{other:?}: all, admins, leader, db, or a host's name (host-1, admin-2…)"
            ));
        }
    })
}

pub(super) async fn partition(
    state: &Path,
    host: &str,
    from: &Peers,
    one_way: Option<OneWay>,
) -> Result<(), Error> {
    ensure_root()?;
    let fleet = needs_fleet(state)?;
    let direction = match one_way {
        None => Direction::Both,
        Some(OneWay::Out) => Direction::Out,
        Some(OneWay::In) => Direction::In,
    };
    let cut = fleet.partition(host, from, direction).await?;
    let peers = cut.join(", ");
    out(&match direction {
        Direction::Both => format!("{host} and {peers} no longer reach each other\n"),
        Direction::Out => {
            format!("what {host} sends to {peers} is lost; the other way still works\n")
        }
        Direction::In => {
            format!(
                "what {peers} send{} {host} is lost; the other way still works\n",
                if cut.len() == 1 { "s" } else { "" }
            )
        }
    });
    Ok(())
}

pub(super) async fn delay(
    state: &Path,
    host: &str,
    to: Option<&str>,
    by: &str,
) -> Result<(), Error> {
    ensure_root()?;
    let fleet = needs_fleet(state)?;
    let delay = crate::settings::parse_duration(by)
        .map_err(|e| Error::Usage(format!("DELAY {by:?}: {e}")))?;
    if delay > Duration::from_secs(60) {
        return Err(Error::Usage(format!(
            "DELAY {by}: at most 60s (a longer one is a partition)"
        )));
    }
    fleet.delay(host, to, delay).await?;
    let whom = to.map(|t| format!(" to {t}")).unwrap_or_default();
    out(&if delay.is_zero() {
        format!("{host}'s packets are no longer delayed\n")
    } else {
        format!(
            "every packet {host} sends{whom} now leaves {}ms late\n",
            delay.as_millis()
        )
    });
    Ok(())
}

pub(super) async fn heal(state: &Path, host: Option<&str>) -> Result<(), Error> {
    ensure_root()?;
    let fleet = needs_fleet(state)?;
    fleet.heal(host).await?;
    out(&match host {
        Some(h) => format!("{h} reaches every host again, undelayed\n"),
        None => "every host reaches every other again, undelayed\n".to_owned(),
    });
    Ok(())
}

/// `prismctl local netem`: runs in a host's namespace as its delay unit.
pub(super) fn netem(by: &str) -> Result<(), Error> {
    let delay = crate::settings::parse_duration(by)
        .map_err(|e| Error::Usage(format!("--delay {by:?}: {e}")))?;
    crate::devstack::netem::delay_forever(crate::devstack::net::DELAY_QUEUE, delay, || {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    })
    .map_err(|source| Error::Io {
        what: "the delay queue".into(),
        source,
    })
}

/// `--one-way`'s direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OneWay {
    /// What the host sends is lost.
    Out,
    /// What the host would receive is lost.
    In,
}
