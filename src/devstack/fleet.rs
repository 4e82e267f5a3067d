//! A fleet of hosts on one machine: `prismctl local up --hosts N` and the
//! partition tests. Every host is a network namespace of [`super::net`]
//! with a systemd manager of its own ([`crate::sandbox`], in that
//! namespace and with its own host name), so each host's daemons and
//! workloads are units of its own manager, reachable only over the fleet's
//! network:
//!
//! - `admin-1` (and `admin-2`, `admin-3` with HA): prism-admin;
//! - `db` (with HA): PostgreSQL, over TLS, admitting the admins'
//!   certificate only;
//! - `host-1` … `host-N`: prism-launcher, its id the host's name.
//!
//! Every daemon has a certificate of the fleet's own CA naming it, so
//! every connection between hosts is mutual TLS. The observer (the root
//! namespace: prismctl, a test) reaches each daemon's local socket, and
//! each host's address over the fleet's network.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use super::faults::{Direction, Peers};
use super::{
    cluster::{ClusterError, LocalCluster},
    net::{Net, NetError, Owner},
};
use crate::{
    auth::{
        DEFAULT_TRUST_DOMAIN, Role,
        dial::{Address, channel},
        pki::{Authority, PkiError},
    },
    pb::prism::admin::v1::{self as apb, admin_client::AdminClient},
    sandbox::{Sandbox, SandboxError},
    systemd::{DbusSystemd, Options, Systemd, SystemdError, Target},
    unit::{self, UnitSpec},
};

pub const ADMIN_PORT: u16 = 8981;
pub const LAUNCHER_PORT: u16 = 7070;
const POSTGRES_PORT: u16 = 5432;
const DATABASE: &str = "prism";
pub const ADMIN_UNIT: &str = "prism-local-admin.service";
pub const LAUNCHER_UNIT: &str = "prism-local-launcher.service";
pub const POSTGRES_UNIT: &str = "prism-local-postgres.service";
pub const NETEM_UNIT: &str = "prism-local-netem.service";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the fleet's CA: {0}")]
    Pki(#[from] PkiError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    /// A request that names something the fleet does not have.
    #[error("{0}")]
    Usage(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FleetError {
    let what = what.into();
    move |source| FleetError::Io { what, source }
}

/// What a host of the fleet runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRole {
    /// Admin `k` (0-based).
    Admin(usize),
    Db,
    Launcher,
}

/// The programs the fleet runs, copied into its `bin` (where the
/// workloads' dynamic users can execute them).
#[derive(Clone, Debug)]
pub struct Binaries {
    pub admin: PathBuf,
    pub launcher: PathBuf,
    pub demo: PathBuf,
    pub ctl: PathBuf,
}

impl Binaries {
    /// The four, from `dir` (where cargo builds them, or a package put
    /// prismctl), else from where packages put them.
    pub fn find(dir: &Path) -> Result<Self, FleetError> {
        let find = |name: &str| {
            [dir, Path::new("/usr/bin"), Path::new("/usr/lib/prism")]
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    FleetError::Failed(format!(
                        "{name} not found in {}, /usr/bin or /usr/lib/prism; build it with \
                         `cargo build --bins`",
                        dir.display()
                    ))
                })
        };
        Ok(Self {
            admin: find("prism-admin")?,
            launcher: find("prism-launcher")?,
            demo: find("prism-demo")?,
            ctl: find("prismctl")?,
        })
    }
}

/// What to bring up.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Where everything lives; its removal ends the fleet.
    pub home: PathBuf,
    /// Names the namespaces and cgroups (8 hex digits).
    pub tag: String,
    /// Launcher hosts.
    pub hosts: usize,
    /// Three admins on PostgreSQL (on a host of its own), or one on SQLite.
    pub ha: bool,
    pub heartbeat: Duration,
    /// The admins' lease (HA only); the admin's default when `None`.
    pub lease: Option<Duration>,
    /// Added to every admin's and every launcher's command line.
    pub admin_args: Vec<String>,
    pub launcher_args: Vec<String>,
    /// A test run's process: the fleet is swept once it is gone.
    pub pid: Option<u32>,
    pub binaries: Binaries,
    /// Also allowed on launchers (the demo's redis-server).
    pub extra_binary_dir: Option<PathBuf>,
}

/// What `up` made, saved in `<home>/fleet.toml` for the commands after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub tag: String,
    pub hosts: usize,
    pub ha: bool,
    pub heartbeat_ms: u64,
}

/// A fleet that is up (or was: [`Fleet::load`] finds what is left).
#[derive(Debug)]
pub struct Fleet {
    pub home: PathBuf,
    pub layout: Layout,
    pub net: Net,
    /// Stop everything when dropped (a test's fleet).
    down_on_drop: bool,
}

/// The tag of the fleet kept in `home`: the same every time for one
/// directory.
pub fn tag_for(home: &Path) -> String {
    let canonical = fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    format!(
        "{:08x}",
        unit::fnv1a(&canonical.display().to_string()) >> 32
    )
}

impl Layout {
    pub fn admins(&self) -> usize {
        if self.ha { 3 } else { 1 }
    }

    /// Every host, in the order of their addresses.
    pub fn host_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (1..=self.admins()).map(|k| format!("admin-{k}")).collect();
        if self.ha {
            names.push("db".into());
        }
        names.extend((1..=self.hosts).map(|k| format!("host-{k}")));
        names
    }

    pub fn role(&self, host: &str) -> Option<HostRole> {
        if host == "db" && self.ha {
            return Some(HostRole::Db);
        }
        if let Some(k) = host
            .strip_prefix("admin-")
            .and_then(|k| k.parse::<usize>().ok())
            && (1..=self.admins()).contains(&k)
        {
            return Some(HostRole::Admin(k - 1));
        }
        if let Some(k) = host
            .strip_prefix("host-")
            .and_then(|k| k.parse::<usize>().ok())
            && (1..=self.hosts).contains(&k)
        {
            return Some(HostRole::Launcher);
        }
        None
    }

    pub fn launchers(&self) -> Vec<String> {
        (1..=self.hosts).map(|k| format!("host-{k}")).collect()
    }

    pub fn admin_hosts(&self) -> Vec<String> {
        (1..=self.admins()).map(|k| format!("admin-{k}")).collect()
    }
}

impl Fleet {
    pub fn config_path(home: &Path) -> PathBuf {
        home.join("fleet.toml")
    }

    /// The fleet kept in `home`, if one was brought up there.
    pub fn load(home: &Path) -> Option<Self> {
        let layout: Layout =
            toml::from_str(&fs::read_to_string(Self::config_path(home)).ok()?).ok()?;
        let net = Net::find(&layout.tag)?;
        Some(Self {
            home: home.to_owned(),
            layout,
            net,
            down_on_drop: false,
        })
    }

    /// Stop everything when this handle is dropped (for tests).
    pub fn down_on_drop(mut self) -> Self {
        self.down_on_drop = true;
        self
    }

    /// Leave everything running when this handle is dropped (a test's
    /// fleet kept for a post-mortem; the next fleet sweeps it).
    pub fn keep(mut self) -> Self {
        self.down_on_drop = false;
        self
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.home.join("bin")
    }

    pub(super) fn pki_dir(&self) -> PathBuf {
        self.home.join("pki")
    }

    /// The host's own directory: its manager (whose cgroup takes the
    /// directory's name, so it is the namespace's), its daemon's state.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.home.join("hosts").join(self.net.netns(host))
    }

    pub fn addr(&self, host: &str) -> Result<Ipv4Addr, FleetError> {
        Ok(self.net.host(host)?.addr)
    }

    /// Admin `k`'s local socket (`admin.sock`, then `admin-2.sock`…, as a
    /// stack without hosts names them).
    pub fn admin_socket(&self, k: usize) -> PathBuf {
        match k {
            0 => self.home.join("admin.sock"),
            k => self.home.join(format!("admin-{}.sock", k + 1)),
        }
    }

    /// Every admin's socket, as `--admin` takes them.
    pub fn admin_addresses(&self) -> String {
        (0..self.layout.admins())
            .map(|k| format!("unix:{}", self.admin_socket(k).display()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn launcher_socket(&self, host: &str) -> PathBuf {
        self.home.join(format!("{host}.sock"))
    }

    /// Whether `host`'s manager runs.
    pub fn running(&self, host: &str) -> bool {
        // Attached only to look: a dropped handle would stop it.
        Sandbox::attach(&self.host_dir(host))
            .map(Sandbox::detach)
            .is_some()
    }

    /// `systemctl --user` aimed at `host`'s manager.
    pub fn systemctl(&self, host: &str) -> std::process::Command {
        let dir = self.host_dir(host);
        let mut c = std::process::Command::new("systemctl");
        c.arg("--user")
            .arg("--no-pager")
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", dir.join("run/bus").display()),
            );
        c
    }

    /// `host`'s journal, for `journalctl -D`.
    pub fn journal_dir(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("log/journal")
    }

    /// A client of `host`'s manager.
    pub async fn engine(&self, host: &str) -> Result<DbusSystemd, FleetError> {
        let dir = self.host_dir(host);
        Ok(DbusSystemd::connect(Options {
            target: Target::Private(format!(
                "unix:path={}",
                dir.join("run/systemd/private").display()
            )),
            credentials_dir: dir.join("credentials"),
            ..Options::default()
        })
        .await?)
    }

    /// A client of the admins' operator API (any of them answers).
    pub fn admin_client(&self, k: usize) -> AdminClient<tonic::transport::Channel> {
        let address = Address::Unix(self.admin_socket(k));
        AdminClient::new(
            channel(&address, None, Duration::from_secs(3)).expect("a socket address is valid"),
        )
    }

    /// Bring the fleet up (what runs already is kept): the network, a
    /// manager per host, the CA and certificates, PostgreSQL (HA), the
    /// admins and the launchers; returns once every launcher is healthy
    /// at the admin.
    pub async fn up(spec: &Spec) -> Result<Self, FleetError> {
        sweep_stale();
        fs::create_dir_all(&spec.home).map_err(io(format!("creating {}", spec.home.display())))?;
        fs::set_permissions(&spec.home, fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", spec.home.display())))?;
        let layout = Layout {
            tag: spec.tag.clone(),
            hosts: spec.hosts,
            ha: spec.ha,
            heartbeat_ms: spec.heartbeat.as_millis() as u64,
        };
        let net = match Net::find(&spec.tag) {
            Some(net) => net,
            None => {
                let names = layout.host_names();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                Net::create(
                    &spec.tag,
                    &names,
                    Owner {
                        home: spec.home.clone(),
                        pid: spec.pid,
                    },
                )?
            }
        };
        let fleet = Self {
            home: spec.home.clone(),
            layout,
            net,
            down_on_drop: spec.pid.is_some(),
        };
        fs::write(
            Self::config_path(&fleet.home),
            toml::to_string(&fleet.layout).unwrap_or_default(),
        )
        .map_err(io("writing fleet.toml"))?;
        fleet.install(&spec.binaries)?;
        fleet.pki()?;
        for host in fleet.layout.host_names() {
            fleet.start_manager(&host)?;
        }
        let database = if fleet.layout.ha {
            Some(fleet.postgres().await?)
        } else {
            None
        };
        for k in 0..fleet.layout.admins() {
            fleet.start_admin(k, spec, database.as_deref()).await?;
        }
        for host in fleet.layout.launchers() {
            fleet.start_launcher(&host, spec).await?;
        }
        fleet
            .wait_for(Duration::from_secs(60), "every launcher healthy", |l| {
                l.launchers.len() == fleet.layout.hosts
                    && l.launchers.iter().all(|l| l.health == "healthy")
            })
            .await?;
        Ok(fleet)
    }

    fn install(&self, bins: &Binaries) -> Result<(), FleetError> {
        let dir = self.bin_dir();
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", dir.display())))?;
        for (source, name) in [
            (&bins.admin, "prism-admin"),
            (&bins.launcher, "prism-launcher"),
            (&bins.demo, "prism-demo"),
            (&bins.ctl, "prismctl"),
        ] {
            let staged = dir.join(format!(".{name}.new"));
            fs::copy(source, &staged).map_err(io(format!("copying {}", source.display())))?;
            fs::rename(&staged, dir.join(name)).map_err(io(format!("installing {name}")))?;
        }
        Ok(())
    }

    /// The fleet's CA, and a certificate for each daemon naming it and its
    /// address: `admin` (every admin's address), `host-N`, and `db`.
    fn pki(&self) -> Result<(), FleetError> {
        let dir = self.pki_dir();
        if dir.join("ca.crt").is_file() {
            return Ok(());
        }
        let _ = fs::remove_dir_all(&dir);
        let ca = Authority::create("prism local fleet CA", 30)?;
        ca.save_dir(&dir)?;
        let localhost = ["localhost".to_owned()];
        let ip = |host: &str| self.addr(host).map(IpAddr::V4);
        let mut admin_ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        for a in self.layout.admin_hosts() {
            admin_ips.push(ip(&a)?);
        }
        let domain = DEFAULT_TRUST_DOMAIN;
        ca.issue(&Role::Admin, "admin", domain, &localhost, &admin_ips, 30)?
            .save(&dir, "admin")?;
        for host in self.layout.launchers() {
            ca.issue(
                &Role::Launcher(host.clone()),
                &host,
                domain,
                &localhost,
                &[ip(&host)?],
                30,
            )?
            .save(&dir, &host)?;
        }
        if self.layout.ha {
            // A server certificate only: a viewer's role, the least there is.
            ca.issue(&Role::Viewer, "db", domain, &[], &[ip("db")?], 30)?
                .save(&dir, "db")?;
        }
        Ok(())
    }

    fn tls_flags(&self, who: &str) -> Vec<String> {
        let file = |name: String| self.pki_dir().join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            file(format!("{who}.crt")),
            "--tls-key".into(),
            file(format!("{who}.key")),
            "--tls-ca".into(),
            file("ca.crt".into()),
        ]
    }

    /// `host`'s manager, in its namespace, started unless it runs.
    fn start_manager(&self, host: &str) -> Result<(), FleetError> {
        let dir = self.host_dir(host);
        if let Some(running) = Sandbox::attach(&dir) {
            running.detach();
            return Ok(());
        }
        let ns = self.net.netns_path(host);
        let sandbox = Sandbox::start_on_host(&dir, Some((&ns, host)))?;
        // Only `down` stops it.
        sandbox.detach();
        Ok(())
    }

    pub(super) async fn start_unit(&self, host: &str, spec: &UnitSpec) -> Result<(), FleetError> {
        let engine = self.engine(host).await?;
        match engine.start_transient(spec).await {
            Ok(()) | Err(SystemdError::UnitExists { .. }) => Ok(()),
            Err(e @ SystemdError::StartFailed { .. }) => Err(FleetError::Failed(format!(
                "{host}: {e}; its last words:\n{}",
                self.journal_tail(host, 20)
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The last `lines` of `host`'s journal.
    pub fn journal_tail(&self, host: &str, lines: usize) -> String {
        match std::process::Command::new("journalctl")
            .arg("-D")
            .arg(self.journal_dir(host))
            .args([
                "--no-pager",
                "-o",
                "short-precise",
                "-n",
                &lines.to_string(),
            ])
            .output()
        {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(journalctl: {e})"),
        }
    }

    /// PostgreSQL on `db`, for the admins' certificate only; the URL the
    /// admins use.
    async fn postgres(&self) -> Result<String, FleetError> {
        use sqlx::Connection;
        let dir = self.home.join("postgres");
        let cluster = if dir.join("data/PG_VERSION").is_file() {
            LocalCluster::existing(&dir)?
        } else {
            fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            let cluster = LocalCluster::create(&dir, true)?;
            let pki = self.pki_dir();
            let read = |name: &str| {
                fs::read_to_string(pki.join(name)).map_err(io(format!("reading {name}")))
            };
            let db = IpAddr::V4(self.addr("db")?);
            cluster.serve_network(
                (db, POSTGRES_PORT),
                &self.net.cidr(),
                (&read("db.crt")?, &read("db.key")?),
                &read("ca.crt")?,
                "admin",
            )?;
            cluster
        };
        let (server, args) = cluster.server_command();
        let (uid, gid) = cluster.owner().ok_or_else(|| {
            FleetError::Failed("PostgreSQL must run as a user other than root".into())
        })?;
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
            "PostgreSQL of the local fleet",
            argv,
            "postgres",
        );
        // Started once it runs; ready once it accepts connections (below).
        for (name, value) in &mut spec.properties {
            if *name == unit::props::TYPE {
                *value = unit::PropValue::Str("exec".into());
            }
        }
        self.start_unit("db", &spec).await?;
        let socket_url = cluster.url("postgres");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut c = loop {
            match sqlx::PgConnection::connect(&socket_url).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(FleetError::Failed(format!(
                        "PostgreSQL did not accept connections within 30 s ({e}); its last \
                         words:\n{}",
                        self.journal_tail("db", 20)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(DATABASE)
            .fetch_optional(&mut c)
            .await
            .map_err(|e| FleetError::Failed(format!("PostgreSQL: {e}")))?;
        if exists.is_none() {
            cluster.create_database(DATABASE).await?;
        }
        // The unit runs the server: this handle must not stop it.
        std::mem::forget(cluster);
        let pki = self.pki_dir();
        Ok(format!(
            "postgres://{}@{}:{POSTGRES_PORT}/{DATABASE}?sslmode=verify-full&sslrootcert={}&\
             sslcert={}&sslkey={}",
            super::cluster::SUPERUSER,
            self.addr("db")?,
            pki.join("ca.crt").display(),
            pki.join("admin.crt").display(),
            pki.join("admin.key").display(),
        ))
    }

    async fn start_admin(
        &self,
        k: usize,
        spec: &Spec,
        database: Option<&str>,
    ) -> Result<(), FleetError> {
        let host = format!("admin-{}", k + 1);
        let addr = self.addr(&host)?;
        let mut argv = vec![
            self.bin_dir().join("prism-admin").display().to_string(),
            "serve".into(),
            "--listen".into(),
            format!("{addr}:{ADMIN_PORT}"),
            "--socket".into(),
            self.admin_socket(k).display().to_string(),
            "--data-dir".into(),
            self.host_dir(&host).join("admin").display().to_string(),
            "--heartbeat-interval".into(),
            format!("{}ms", spec.heartbeat.as_millis()),
            "--metrics-listen".into(),
            format!("{addr}:{}", ADMIN_PORT + 1),
            // The page over HTTPS (the fleet's TLS), on the host's address.
            "--ui-listen".into(),
            format!("{addr}:{}", ADMIN_PORT + 2),
        ];
        if let Some(url) = database {
            argv.extend(["--database".into(), url.to_owned()]);
            if let Some(lease) = spec.lease {
                argv.extend(["--lease".into(), format!("{}ms", lease.as_millis())]);
            }
        }
        argv.extend(self.tls_flags("admin"));
        argv.extend(spec.admin_args.iter().cloned());
        let description = format!("prism-admin on {host} of the local fleet");
        self.start_unit(
            &host,
            &unit::daemon(ADMIN_UNIT, &description, argv, "prism-admin"),
        )
        .await
    }

    async fn start_launcher(&self, host: &str, spec: &Spec) -> Result<(), FleetError> {
        let addr = self.addr(host)?;
        let dir = self.host_dir(host);
        let admins = self
            .layout
            .admin_hosts()
            .iter()
            .map(|a| self.addr(a).map(|ip| format!("{ip}:{ADMIN_PORT}")))
            .collect::<Result<Vec<_>, _>>()?
            .join(",");
        let mut argv = vec![
            self.bin_dir().join("prism-launcher").display().to_string(),
            "--listen".into(),
            format!("{addr}:{LAUNCHER_PORT}"),
            "--socket".into(),
            self.launcher_socket(host).display().to_string(),
            "--metrics-listen".into(),
            format!("{addr}:{}", LAUNCHER_PORT + 1),
            "--admin-endpoint".into(),
            admins,
            "--systemd".into(),
            format!(
                "private:unix:path={}",
                dir.join("run/systemd/private").display()
            ),
            "--launcher-id".into(),
            host.into(),
            "--capabilities".into(),
            "pattern,proxy,backend,utility".into(),
            "--max-processes".into(),
            "500".into(),
            "--state-dir".into(),
            dir.join("launcher").display().to_string(),
            "--credentials-dir".into(),
            dir.join("credentials").display().to_string(),
            "--allow-binary-dir".into(),
            self.bin_dir().display().to_string(),
        ];
        if let Some(extra) = &spec.extra_binary_dir {
            argv.extend(["--allow-binary-dir".into(), extra.display().to_string()]);
        }
        argv.extend(self.tls_flags(host));
        argv.extend(spec.launcher_args.iter().cloned());
        let description = format!("prism-launcher on {host} of the local fleet");
        self.start_unit(
            host,
            &unit::daemon(LAUNCHER_UNIT, &description, argv, "prism-launcher"),
        )
        .await
    }

    /// Wait until the admins' launcher list satisfies `done`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&apb::ListLaunchersResponse) -> bool,
    ) -> Result<apb::ListLaunchersResponse, FleetError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::from("no admin answered");
        loop {
            for k in 0..self.layout.admins() {
                let mut client = self.admin_client(k);
                let asked = tokio::time::timeout(
                    Duration::from_secs(3),
                    client.list_launchers(apb::ListLaunchersRequest {}),
                )
                .await;
                match asked {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        if done(&r) {
                            return Ok(r);
                        }
                        last = r
                            .launchers
                            .iter()
                            .map(|l| format!("{} {}", l.launcher_id, l.health))
                            .collect::<Vec<_>>()
                            .join(", ");
                        break;
                    }
                    Ok(Err(s)) => last = s.message().to_owned(),
                    Err(_) => last = "no answer within 3 s".into(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FleetError::Failed(format!(
                    "not {what} within {within:?} (last: {last}); see `prismctl local status`"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The admin that leads now (its host), by the metrics each serves.
    pub async fn leader(&self) -> Option<String> {
        for host in self.layout.admin_hosts() {
            let addr = format!("{}:{}", self.addr(&host).ok()?, ADMIN_PORT + 1);
            if let Ok(text) = metrics_text(&addr).await
                && text.lines().any(|l| l == "prism_admin_leading 1")
            {
                return Some(host);
            }
        }
        None
    }

    /// Each admin host, with what it says of itself: `leads (epoch N)`,
    /// `follows (epoch N)` or `does not answer`.
    pub async fn standings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for host in self.layout.admin_hosts() {
            let standing = match self.addr(&host) {
                Ok(ip) => match metrics_text(&format!("{ip}:{}", ADMIN_PORT + 1)).await {
                    Ok(text) => {
                        let epoch = text
                            .lines()
                            .find_map(|l| l.strip_prefix("prism_admin_lease_epoch "))
                            .unwrap_or("-")
                            .to_owned();
                        if text.lines().any(|l| l == "prism_admin_leading 1") {
                            format!("leads (epoch {epoch})")
                        } else {
                            format!("follows (epoch {epoch})")
                        }
                    }
                    Err(_) => "does not answer".to_owned(),
                },
                Err(_) => "unknown".into(),
            };
            out.push((host, standing));
        }
        out
    }

    /// Stop every host's manager (every unit with it), remove the network
    /// and everything under `home` the fleet made.
    pub fn down(&self) -> Result<(), FleetError> {
        for host in self.layout.host_names() {
            if let Some(sandbox) = Sandbox::attach(&self.host_dir(&host)) {
                // Stops the manager, every unit with it, and its cgroups.
                drop(sandbox);
            }
            let dir = self.host_dir(&host);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
            }
        }
        self.net.destroy();
        for d in ["bin", "pki", "postgres", "hosts"] {
            let path = self.home.join(d);
            if path.exists() {
                fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
            }
        }
        for k in 0..self.layout.admins() {
            let _ = fs::remove_file(self.admin_socket(k));
        }
        for host in self.layout.launchers() {
            let _ = fs::remove_file(self.launcher_socket(&host));
        }
        let _ = fs::remove_file(Self::config_path(&self.home));
        if self.net.owner.pid.is_some() {
            // A test run's fleet: its directory is the fleet's alone.
            let _ = fs::remove_dir_all(&self.home);
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.down_on_drop
            && let Err(e) = self.down()
        {
            eprintln!("taking the fleet in {} down: {e}", self.home.display());
        }
    }
}

/// Stop what runs on the hosts of fleets whose owner is gone, and remove
/// their networks.
pub fn sweep_stale() {
    super::net::sweep_stale_with(|net| {
        let hosts = net.owner.home.join("hosts");
        for h in &net.hosts {
            let dir = hosts.join(net.netns(&h.name));
            if let Some(sandbox) = Sandbox::attach(&dir) {
                drop(sandbox);
            }
            // Its directory may be gone: its cgroups still say what ran.
            crate::sandbox::sweep_cgroups(&net.netns(&h.name));
        }
        if net.owner.pid.is_some() {
            let _ = fs::remove_dir_all(&net.owner.home);
        }
    });
}

/// GET /metrics from `addr` (HTTP/1.0).
pub async fn metrics_text(addr: &str) -> std::io::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_named_by_what_they_run() {
        let l = Layout {
            tag: "00000000".into(),
            hosts: 3,
            ha: true,
            heartbeat_ms: 1000,
        };
        assert_eq!(
            l.host_names(),
            [
                "admin-1", "admin-2", "admin-3", "db", "host-1", "host-2", "host-3"
            ]
        );
        assert_eq!(l.role("admin-2"), Some(HostRole::Admin(1)));
        assert_eq!(l.role("db"), Some(HostRole::Db));
        assert_eq!(l.role("host-3"), Some(HostRole::Launcher));
        assert_eq!(l.role("host-4"), None);
        assert_eq!(l.role("admin-4"), None);
        let single = Layout { ha: false, ..l };
        assert_eq!(
            single.host_names(),
            ["admin-1", "host-1", "host-2", "host-3"]
        );
        assert_eq!(single.role("db"), None);
    }
}
