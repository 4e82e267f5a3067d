//! A PostgreSQL cluster of its own, in a directory: `initdb`, then the
//! server on a Unix socket in that directory only (no TCP), owned by a
//! user other than root (PostgreSQL refuses to run as root). For the tests'
//! throwaway databases and for `prismctl local up --ha`.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

/// Why a local cluster could not be made or run.
#[derive(Debug, thiserror::Error)]
#[error("local PostgreSQL: {0}")]
pub struct ClusterError(String);

fn fail(what: impl std::fmt::Display) -> ClusterError {
    ClusterError(what.to_string())
}

/// Where PostgreSQL's programs are: `$PRISM_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
pub fn binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PRISM_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A cluster in `dir`: `data/` (the cluster), `run/` (its socket),
/// `log/postgres.log`.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    bin: PathBuf,
    /// (uid, gid) it runs as when started by root.
    owner: Option<(u32, u32)>,
    running: bool,
}

/// The database superuser a local cluster has.
pub const SUPERUSER: &str = "prism";

impl LocalCluster {
    /// `initdb` a new cluster in `dir` (which must exist). `durable`:
    /// fsync as PostgreSQL does by default; otherwise (throwaway test
    /// databases) no fsync.
    pub fn create(dir: &Path, durable: bool) -> Result<Self, ClusterError> {
        let bin = binaries().ok_or_else(|| {
            fail("no PostgreSQL found (/usr/lib/postgresql/*/bin; PRISM_PG_BIN overrides)")
        })?;
        let owner = owner()?;
        let cluster = Self {
            dir: dir.to_owned(),
            bin,
            owner,
            running: false,
        };
        let run = cluster.socket_dir();
        let log = cluster.dir.join("log");
        for d in [cluster.data_dir(), run.clone(), log.clone()] {
            std::fs::create_dir_all(&d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        }
        if let Some((uid, gid)) = owner {
            use std::os::unix::fs::PermissionsExt;
            // The server's user must reach its directories.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
            for d in [cluster.data_dir(), run, log] {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))
                    .map_err(|e| fail(format!("chown {}: {e}", d.display())))?;
            }
        }
        let mut initdb: Vec<OsString> = vec![
            "-D".into(),
            cluster.data_dir().into(),
            "-U".into(),
            SUPERUSER.into(),
            // Only its owner reaches the socket directory (below).
            "--auth=trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
        ];
        if !durable {
            initdb.push("--no-sync".into());
        }
        cluster.run("initdb", &initdb)?;
        let mut conf = format!(
            "\n# prism: a local cluster, on its socket only\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n",
            cluster.socket_dir().display()
        );
        if !durable {
            conf.push_str("fsync = off\nfull_page_writes = off\n");
        }
        let path = cluster.data_dir().join("postgresql.conf");
        let mut all =
            std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        all.push_str(&conf);
        std::fs::write(&path, all).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        Ok(cluster)
    }

    /// A cluster `create` made in `dir` before (not running).
    pub fn existing(dir: &Path) -> Result<Self, ClusterError> {
        let bin = binaries().ok_or_else(|| {
            fail("no PostgreSQL found (/usr/lib/postgresql/*/bin; PRISM_PG_BIN overrides)")
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            bin,
            owner: owner()?,
            running: false,
        })
    }

    /// Also serve TCP on 127.0.0.1:`port` with TLS (`cert_pem`, its key),
    /// before `start`.
    pub fn serve_tls(&self, port: u16, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        self.write_data_files(&[
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ])?;
        self.append(
            "postgresql.conf",
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nssl = on\n\
                 ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            ),
        )
    }

    /// Serve TCP on `addr:port`, before `start`, to clients in `cidr` only,
    /// over TLS only (`cert_pem`, its key), and only to a client whose
    /// certificate `ca_pem` issued and whose common name is `client_cn`:
    /// it is the superuser then. A fleet's hosts reach their database so.
    pub fn serve_network(
        &self,
        (addr, port): (std::net::IpAddr, u16),
        cidr: &str,
        (cert_pem, key_pem): (&str, &str),
        ca_pem: &str,
        client_cn: &str,
    ) -> Result<(), ClusterError> {
        self.write_data_files(&[
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
            ("root.crt", ca_pem, 0o644),
        ])?;
        self.append(
            "postgresql.conf",
            &format!(
                "listen_addresses = '{addr}'\nport = {port}\nssl = on\n\
                 ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'root.crt'\n"
            ),
        )?;
        self.append(
            "pg_hba.conf",
            &format!("hostssl all {SUPERUSER} {cidr} cert map=fleet\n"),
        )?;
        self.append("pg_ident.conf", &format!("fleet {client_cn} {SUPERUSER}\n"))
    }

    fn write_data_files(&self, files: &[(&str, &str, u32)]) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        for (name, text, mode) in files {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| fail(format!("chown {}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Add `text` to the end of the data directory's file `name`.
    fn append(&self, name: &str, text: &str) -> Result<(), ClusterError> {
        let path = self.data_dir().join(name);
        let mut all =
            std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        all.push_str(text);
        std::fs::write(&path, all).map_err(|e| fail(format!("{}: {e}", path.display())))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log/postgres.log")
    }

    /// The server's program and arguments, to run it in the foreground
    /// (as a unit).
    pub fn server_command(&self) -> (PathBuf, Vec<OsString>) {
        (
            self.bin.join("postgres"),
            vec!["-D".into(), self.data_dir().into()],
        )
    }

    /// The user it runs as when root starts it.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// Start the server and wait until it accepts connections.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl",
            &[
                "start".into(),
                "-w".into(),
                "-t".into(),
                "60".into(),
                "-D".into(),
                self.data_dir().into(),
                "-l".into(),
                self.log_file().into(),
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stop the server (`immediate`: as if killed, no checkpoint).
    pub fn stop(&mut self, immediate: bool) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        let mode = if immediate { "immediate" } else { "fast" };
        self.run(
            "pg_ctl",
            &[
                "stop".into(),
                "-w".into(),
                "-m".into(),
                mode.into(),
                "-D".into(),
                self.data_dir().into(),
            ],
        )?;
        self.running = false;
        Ok(())
    }

    /// A URL for `database` as the superuser, over the socket.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost/{database}?host={}",
            self.socket_dir().display()
        )
    }

    /// Create an empty database.
    pub async fn create_database(&self, name: &str) -> Result<String, ClusterError> {
        use sqlx::Connection;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(fail(format!("database name {name:?}: use a-z, 0-9 and _")));
        }
        let mut c = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .map_err(fail)?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .map_err(fail)?;
        c.close().await.map_err(fail)?;
        Ok(self.url(name))
    }

    fn run(&self, program: &str, args: &[OsString]) -> Result<(), ClusterError> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args).current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            // std drops root's supplementary groups with it.
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(|e| fail(format!("{program}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            Err(fail(format!(
                "{program} {}: {}{}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                if log.is_empty() { "" } else { "\n" },
                log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            )))
        }
    }
}

impl Drop for LocalCluster {
    /// A cluster never outlives its owner: stopped as if killed.
    fn drop(&mut self) {
        if let Err(e) = self.stop(true) {
            tracing::warn!("{e}");
        }
    }
}

/// Root runs the server as `postgres` (Debian's package makes that user)
/// or `nobody`; anyone else as themselves.
fn owner() -> Result<Option<(u32, u32)>, ClusterError> {
    if crate::host::own_uid() != Some(0) {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(ids) = crate::host::user_ids(name) {
            return Ok(Some(ids));
        }
    }
    Err(fail(
        "running as root, and neither user postgres nor nobody exists",
    ))
}
