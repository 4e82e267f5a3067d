//! `prismctl local up --ha`: the stack's admin three times over, on a
//! PostgreSQL of the stack's own (a cluster in `<state>/postgres`, its
//! server a unit beside the daemons, on a socket in that directory only),
//! so a developer can watch one admin lead, kill it, and see another take
//! over (`prismctl local status` says who leads).

use sqlx::Connection;

use super::*;
use crate::devstack::cluster::LocalCluster;

pub const POSTGRES_UNIT: &str = "prism-local-postgres.service";
/// The admins of an HA stack: the first is the stack's only admin
/// otherwise.
pub const ADMIN_UNITS: [&str; 3] = [
    ADMIN_UNIT,
    "prism-local-admin-2.service",
    "prism-local-admin-3.service",
];
const DATABASE: &str = "prism";

/// The units of the admins `saved` runs.
pub fn admin_units(ha: bool) -> &'static [&'static str] {
    if ha { &ADMIN_UNITS } else { &ADMIN_UNITS[..1] }
}

/// Admin `k` (0-based): its local socket.
pub fn admin_socket(state: &Path, k: usize) -> PathBuf {
    if k == 0 {
        state.join("admin.sock")
    } else {
        state.join(format!("admin-{}.sock", k + 1))
    }
}

fn cluster_dir(state: &Path) -> PathBuf {
    state.join("postgres")
}

/// The stack's PostgreSQL, made once and started as a unit; returns the
/// URL of its database once it accepts connections.
pub(super) async fn postgres(engine: &DbusSystemd, state: &Path) -> Result<String, Error> {
    let failed = |e: crate::devstack::cluster::ClusterError| Error::Failed(e.to_string());
    let dir = cluster_dir(state);
    let cluster = if dir.join("data/PG_VERSION").is_file() {
        LocalCluster::existing(&dir).map_err(failed)?
    } else {
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        eprintln!("initialising a PostgreSQL cluster in {}", dir.display());
        LocalCluster::create(&dir, true).map_err(failed)?
    };
    let (server, args) = cluster.server_command();
    let (uid, gid) = cluster
        .owner()
        .ok_or_else(|| Error::Failed("PostgreSQL runs as a user other than root".into()))?;
    // Its own user, without a shell: setpriv execs the server.
    let mut argv = vec![
        "/usr/bin/setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--".into(),
        server.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    let mut spec = unit::daemon(
        POSTGRES_UNIT,
        "PostgreSQL of the local stack",
        argv,
        "postgres",
    );
    // Started once it runs; ready once it accepts connections (below).
    for (name, value) in &mut spec.properties {
        if *name == unit::props::TYPE {
            *value = unit::PropValue::Str("exec".into());
        }
    }
    start_daemon(engine, state, &spec, "postgres").await?;
    let admin_url = cluster.url("postgres");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Failed(format!(
                    "PostgreSQL did not accept connections within 30 s ({e}); its last words:\n{}",
                    journal_tail(state, "postgres")
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(DATABASE)
        .fetch_optional(&mut c)
        .await
        .map_err(|e| Error::Failed(format!("PostgreSQL: {e}")))?;
    if exists.is_none() {
        cluster.create_database(DATABASE).await.map_err(failed)?;
    }
    Ok(cluster.url(DATABASE))
}

/// After the daemons: the server, and its cluster.
pub(super) async fn down(engine: Option<&DbusSystemd>, state: &Path) -> Result<(), Error> {
    if let Some(engine) = engine {
        engine.stop(POSTGRES_UNIT, Duration::from_secs(30)).await?;
        eprintln!("stopped {POSTGRES_UNIT}");
    }
    let dir = cluster_dir(state);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    for k in 1..ADMIN_UNITS.len() {
        let _ = fs::remove_file(admin_socket(state, k));
        let _ = fs::remove_dir_all(state.join(format!("admin-{}", k + 1)));
    }
    Ok(())
}

/// Which admin leads, and at which epoch, by the metrics each serves
/// (`prism_admin_leading`, `prism_admin_lease_epoch`).
pub(super) async fn leader_line(saved: &Saved) -> String {
    let mut lines = String::new();
    for (k, unit) in admin_units(saved.ha).iter().enumerate() {
        let addr = Saved::metrics(saved.admin_port + 2 * k as u16);
        let standing = match metrics_text(&addr).await {
            Ok(text) => {
                let epoch = text
                    .lines()
                    .find_map(|l| l.strip_prefix("prism_admin_lease_epoch "))
                    .unwrap_or("?");
                if text.lines().any(|l| l == "prism_admin_leading 1") {
                    format!("leads (epoch {epoch})")
                } else {
                    format!("follows (epoch {epoch})")
                }
            }
            Err(_) => "does not answer".to_owned(),
        };
        lines.push_str(&format!("{unit:<30} {standing}\n"));
    }
    lines
}

/// GET /metrics from `addr` (HTTP/1.0 on loopback).
async fn metrics_text(addr: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok(text)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
