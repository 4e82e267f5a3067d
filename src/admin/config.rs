//! prism-admin's configuration: flags over an optional TOML file over
//! defaults, validated before anything is bound (exit 64 otherwise).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args as ClapArgs, Parser, Subcommand};
use serde::Deserialize;

pub use crate::settings::{ConfigError, Tls};
use crate::{
    admin::store::Database,
    auth::Role,
    serve::flags::{DaemonDefaults, DaemonFile, DaemonFlags},
    settings::{bad, parse_duration, parse_listen_opt},
};

/// The TCP listener when TLS is configured; without TLS the admin serves
/// only its local socket unless told otherwise.
pub const DEFAULT_LISTEN: &str = ":8981";
pub const DEFAULT_SOCKET: &str = crate::protocol::ADMIN_SOCKET;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/prism-admin";
/// A leader's lease on a shared database.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The fleet status page: loopback, beside the metrics' 9094.
pub const DEFAULT_UI_LISTEN: &str = "127.0.0.1:9095";

#[derive(Parser, Debug)]
#[command(
    name = "prism-admin",
    version,
    about = "The Prism control plane: launcher registry, placement, dispatch, fleet health",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve prism.ControlPlane (launchers) and prism.admin.v1.Admin (operators).
    #[command(
        mut_arg("listen", |a| a.help("gRPC over TCP on this address, or `none` [default: :8981 with TLS; none without]")),
        mut_arg("socket", |a| a.help("gRPC on this Unix socket, or `none`; callers are known by their uid [default: /run/prism-admin/admin.sock]")),
        mut_arg("tls_cert", |a| a.help("Server certificate (PEM); also the client identity towards launchers")),
        mut_arg("tls_ca", |a| a.help("CA (PEM): client certificates must chain to it, and so must launchers' server certificates")),
        mut_arg("insecure", |a| a.help("Serve TCP peers without client certificates, trusting each of them with every role (plaintext, or TLS without a client CA)")),
    )]
    Serve(ServeArgs),
}

#[derive(ClapArgs, Debug, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// Where the SQLite database lives [default: /var/lib/prism-admin].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The database: postgres://… (several admins share it, one leads) or
    /// sqlite:/directory [default: SQLite in --data-dir]. A password is
    /// better left out of a URL on the command line: use the config file,
    /// PGPASSWORD or ~/.pgpass.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// How long a leader's lease lasts unrenewed, by the database's clock;
    /// renewed every third of it. A follower leads at most this long (plus
    /// its next try) after the leader stops [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
    /// Where the other admins reach this one while it leads (they forward
    /// to it) [default: this host's name and the --listen port, or the
    /// socket].
    #[arg(long, value_name = "ADDRESS")]
    pub advertise: Option<String>,
    /// Expected heartbeat interval; 3 missed make a launcher unhealthy, 6
    /// disconnected [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// Run the processes of a launcher silent this long elsewhere, those
    /// that allow it: each must stop itself first (its
    /// on_disconnect.stop_after_ms, with margin) or accept running twice
    /// (at_least_once). A process's own replace_after_ms wins [default:
    /// never: a disconnected launcher may still run them].
    #[arg(long, value_name = "DURATION", alias = "reschedule-lost-after")]
    pub replace_after: Option<String>,
    /// Events kept for watchers to resume from: the newest this many
    /// [default: 100000].
    #[arg(long, value_name = "COUNT")]
    pub events_keep: Option<i64>,
    /// Events older than this are removed (in the background, every
    /// minute) [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub events_max_age: Option<String>,
    /// Events one watcher may leave unread before it is ended (it resumes
    /// from its last revision) [default: 1024].
    #[arg(long, value_name = "COUNT")]
    pub watcher_queue: Option<usize>,
    /// A busy watcher's events are sent together, this long after its
    /// last send (the first after a quiet spell goes at once); 0 sends
    /// each at once [default: 500ms].
    #[arg(long, value_name = "DURATION")]
    pub watch_batch: Option<String>,
    /// The fleet status page on this address, or `none`: HTTPS with the
    /// admin's certificate once TLS is configured (then any address),
    /// else plain HTTP on a loopback address only. Browsers sign in with
    /// `prismctl ui` [default: 127.0.0.1:9095].
    #[arg(long, value_name = "ADDR")]
    pub ui_listen: Option<String>,
    /// A page session unused this long ends [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub ui_session_idle: Option<String>,
    /// A page session ends this long after it began, used or not [default:
    /// 12h].
    #[arg(long, value_name = "DURATION")]
    pub ui_session_max: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database: Option<String>,
    lease: Option<String>,
    advertise: Option<String>,
    heartbeat_interval: Option<String>,
    #[serde(alias = "reschedule_lost_after")]
    replace_after: Option<String>,
    events_keep: Option<i64>,
    events_max_age: Option<String>,
    watcher_queue: Option<usize>,
    watch_batch: Option<String>,
    ui_listen: Option<String>,
    ui_session_idle: Option<String>,
    ui_session_max: Option<String>,
}

/// The fleet status page's settings.
#[derive(Clone, Debug)]
pub struct UiConfig {
    /// Where it listens; `None`: no page.
    pub listen: Option<SocketAddr>,
    pub session_idle: Duration,
    pub session_max: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub operator_group: String,
    pub trust_domain: String,
    pub data_dir: PathBuf,
    pub database: Database,
    pub lease: Duration,
    pub advertise: Option<String>,
    pub heartbeat_interval: Duration,
    pub replace_after: Option<Duration>,
    pub retention: crate::admin::events::Retention,
    pub tls: Option<Tls>,
    pub insecure: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: crate::logging::LogFormat,
    pub ui: UiConfig,
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let (shared, file): (DaemonFile, FileConfig) = self.daemon.read_file()?;
        // Its own settings first, then those both daemons share.
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return bad(
                "data-dir",
                "data_dir",
                format!("{} is not absolute", data_dir.display()),
            );
        }
        let database = match self.database.or(file.database) {
            None => Database::Sqlite(data_dir.clone()),
            Some(url) => Database::parse(&url).or_else(|r| bad("database", "database", r))?,
        };
        let lease = match self.lease.or(file.lease) {
            None => DEFAULT_LEASE,
            Some(v) => {
                let d = parse_duration(&v).or_else(|r| bad("lease", "lease", r))?;
                if d < Duration::from_secs(1) || d > Duration::from_secs(60) {
                    return bad("lease", "lease", format!("{v} is outside 1s..=60s"));
                }
                d
            }
        };
        let advertise = self.advertise.or(file.advertise);
        if let Some(a) = &advertise
            && a.trim().is_empty()
        {
            return bad("advertise", "advertise", "empty");
        }
        let heartbeat_interval = match self.heartbeat_interval.or(file.heartbeat_interval) {
            None => Duration::from_secs(10),
            Some(v) => {
                let d = parse_duration(&v)
                    .or_else(|r| bad("heartbeat-interval", "heartbeat_interval", r))?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                    return bad(
                        "heartbeat-interval",
                        "heartbeat_interval",
                        format!("{v} is outside 100ms..=1h"),
                    );
                }
                d
            }
        };
        let replace_after = match self.replace_after.or(file.replace_after) {
            None => None,
            Some(v) => {
                let d = parse_duration(&v).or_else(|r| bad("replace-after", "replace_after", r))?;
                if d.is_zero() {
                    return bad(
                        "replace-after",
                        "replace_after",
                        "0s would replace a process the moment its launcher misses a heartbeat; \
                         leave it unset for never",
                    );
                }
                Some(d)
            }
        };
        let defaults = crate::admin::events::Retention::default();
        let keep = match self.events_keep.or(file.events_keep) {
            None => defaults.keep,
            Some(n) if (1..=100_000_000).contains(&n) => n,
            Some(n) => {
                return bad(
                    "events-keep",
                    "events_keep",
                    format!("{n} is outside 1..=100000000"),
                );
            }
        };
        let max_age = match self.events_max_age.or(file.events_max_age) {
            None => defaults.max_age,
            Some(v) => {
                let d =
                    parse_duration(&v).or_else(|r| bad("events-max-age", "events_max_age", r))?;
                if d < Duration::from_secs(60) {
                    return bad(
                        "events-max-age",
                        "events_max_age",
                        format!(
                            "{v} is under a minute: a watcher that reconnects could not resume"
                        ),
                    );
                }
                d
            }
        };
        let watcher_queue = match self.watcher_queue.or(file.watcher_queue) {
            None => defaults.watcher_queue,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(n) => {
                return bad(
                    "watcher-queue",
                    "watcher_queue",
                    format!("{n} is outside 1..=1000000"),
                );
            }
        };
        let batch_gap = match self.watch_batch.or(file.watch_batch) {
            None => defaults.batch_gap,
            Some(v) => {
                let d = parse_duration(&v).or_else(|r| bad("watch-batch", "watch_batch", r))?;
                if d > Duration::from_secs(5) {
                    return bad(
                        "watch-batch",
                        "watch_batch",
                        format!("{v} is over 5s: watchers would see changes that late"),
                    );
                }
                d
            }
        };
        let ui_duration = |value: Option<String>, flag: &str, key: &str, default: Duration| {
            let Some(v) = value else { return Ok(default) };
            let d = parse_duration(&v).or_else(|r| bad(flag, key, r))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 86_400) {
                return bad(flag, key, format!("{v} is outside 1s..=7d"));
            }
            Ok(d)
        };
        let session_idle = ui_duration(
            self.ui_session_idle.or(file.ui_session_idle),
            "ui-session-idle",
            "ui_session_idle",
            crate::admin::ui::session::DEFAULT_IDLE,
        )?;
        let session_max = ui_duration(
            self.ui_session_max.or(file.ui_session_max),
            "ui-session-max",
            "ui_session_max",
            crate::admin::ui::session::DEFAULT_MAX_AGE,
        )?;
        if session_max < session_idle {
            return bad(
                "ui-session-max",
                "ui_session_max",
                format!("{session_max:?} is shorter than --ui-session-idle ({session_idle:?})"),
            );
        }
        let ui_listen = self
            .ui_listen
            .or(file.ui_listen)
            .unwrap_or_else(|| DEFAULT_UI_LISTEN.to_owned());
        let ui_listen =
            parse_listen_opt(&ui_listen).or_else(|r| bad("ui-listen", "ui_listen", r))?;
        let served = self.daemon.resolve(
            shared,
            DaemonDefaults {
                socket: DEFAULT_SOCKET,
                listen: DEFAULT_LISTEN,
                insecure_listens: false,
            },
        )?;
        if let Some(tls) = &served.tls {
            // Launchers accept only an admin's certificate.
            let must = format!(
                "the admin's must name spiffe://{}/admin",
                served.access.trust_domain
            );
            served
                .access
                .own_role(tls, &must, |r| (*r == Role::Admin).then_some(()))?;
        }
        served.check_transport()?;
        // A session cookie crosses the network only inside TLS.
        if let Some(addr) = ui_listen
            && served.tls.is_none()
            && !addr.ip().is_loopback()
        {
            return bad(
                "ui-listen",
                "ui_listen",
                format!(
                    "the fleet status page on non-loopback address {addr} without TLS would send \
                     its session cookies in the clear; configure TLS (--tls-cert, --tls-key: the \
                     page is then served over HTTPS), listen on loopback, or pass none"
                ),
            );
        }
        Ok(Config {
            ui: UiConfig {
                listen: ui_listen,
                session_idle,
                session_max,
            },
            metrics_listen: served.metrics_listen,
            log_format: served.log_format,
            listen: served.listen,
            socket: served.access.socket,
            operator_group: served.access.operator_group,
            trust_domain: served.access.trust_domain,
            data_dir,
            database,
            lease,
            advertise,
            heartbeat_interval,
            replace_after,
            retention: crate::admin::events::Retention {
                keep,
                max_age,
                watcher_queue,
                batch_gap,
            },
            tls: served.tls,
            insecure: served.insecure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["prism-admin", "serve"];
        all.extend_from_slice(flags);
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Serve(a) => a.resolve(),
        }
    }

    #[test]
    fn the_packaged_configuration_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/etc/admin.toml");
        let c = resolve(&["--config", path]).expect("packaging/etc/admin.toml");
        assert_eq!(c.listen, None);
        assert_eq!(c.socket, Some(PathBuf::from(DEFAULT_SOCKET)));
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9094");
        assert_eq!(c.ui.listen.unwrap().to_string(), DEFAULT_UI_LISTEN);
    }

    #[test]
    fn the_page_listens_off_loopback_only_with_tls() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.ui.listen.unwrap().to_string(), "127.0.0.1:9095");
        assert_eq!(c.ui.session_idle, Duration::from_secs(3600));
        assert_eq!(c.ui.session_max, Duration::from_secs(12 * 3600));
        assert_eq!(resolve(&["--ui-listen", "none"]).unwrap().ui.listen, None);
        let c = resolve(&["--ui-listen", "[::1]:0", "--ui-session-idle", "2s"]).unwrap();
        assert!(c.ui.listen.unwrap().ip().is_loopback());
        assert_eq!(c.ui.session_idle, Duration::from_secs(2));
        for flags in [
            vec!["--ui-listen", "0.0.0.0:9095"],
            vec!["--ui-listen", ":9095"],
            // --insecure trusts gRPC peers; it does not make cookies safe.
            vec![
                "--ui-listen",
                "0.0.0.0:9095",
                "--listen",
                "127.0.0.1:8981",
                "--insecure",
            ],
        ] {
            let e = resolve(&flags).unwrap_err();
            assert_eq!(e.setting, "--ui-listen (ui_listen)", "{flags:?}");
            assert!(e.reason.contains("without TLS"), "{e}");
        }
        for (flags, setting) in [
            (vec!["--ui-listen", "nowhere"], "--ui-listen (ui_listen)"),
            (
                vec!["--ui-session-idle", "0s"],
                "--ui-session-idle (ui_session_idle)",
            ),
            (
                vec!["--ui-session-idle", "2h", "--ui-session-max", "1h"],
                "--ui-session-max (ui_session_max)",
            ),
        ] {
            assert_eq!(resolve(&flags).unwrap_err().setting, setting, "{flags:?}");
        }
    }

    #[test]
    fn defaults_and_named_errors() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.listen, None, "no TCP without TLS");
        assert_eq!(c.socket, Some(PathBuf::from(DEFAULT_SOCKET)));
        assert_eq!(c.operator_group, "prism");
        assert_eq!(c.trust_domain, "prism");
        let e = resolve(&["--listen", "127.0.0.1:8981"]).unwrap_err();
        assert!(e.setting.starts_with("--listen"), "{e}");
        assert!(e.reason.contains("--insecure"), "{e}");
        let e = resolve(&["--listen", "none", "--socket", "none"]).unwrap_err();
        assert!(e.setting.starts_with("--listen"), "{e}");
        let c = resolve(&["--listen", "127.0.0.1:8981", "--insecure"]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.replace_after, None);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(
            c.database,
            Database::Sqlite(PathBuf::from(DEFAULT_DATA_DIR))
        );
        assert_eq!(c.lease, DEFAULT_LEASE);
        assert_eq!(c.retention, crate::admin::events::Retention::default());
        let c = resolve(&["--watch-batch", "0", "--socket", "/run/x.sock"]).unwrap();
        assert_eq!(
            c.retention.batch_gap,
            Duration::ZERO,
            "0 sends each at once"
        );
        let c = resolve(&[
            "--database",
            "postgres://prism:secret@db.example/prism?sslmode=verify-full",
        ])
        .unwrap();
        assert!(matches!(c.database, Database::Postgres(_)));
        assert_eq!(
            c.database.display(),
            "PostgreSQL at postgres://prism:***@db.example/prism?sslmode=verify-full"
        );
        let e = resolve(&["--database", "postgres://u:pw@h/db?sslmode=bogus"]).unwrap_err();
        assert!(
            !e.reason.contains("pw"),
            "the password stays out of errors: {e}"
        );
        for (flags, setting) in [
            (
                vec!["--heartbeat-interval", "0s"],
                "--heartbeat-interval (heartbeat_interval)",
            ),
            (
                vec!["--replace-after", "soon"],
                "--replace-after (replace_after)",
            ),
            (
                vec!["--replace-after", "0s"],
                "--replace-after (replace_after)",
            ),
            (vec!["--data-dir", "rel"], "--data-dir (data_dir)"),
            (vec!["--database", "mysql://db/x"], "--database (database)"),
            (vec!["--database", "sqlite:rel"], "--database (database)"),
            (vec!["--lease", "100ms"], "--lease (lease)"),
            (vec!["--advertise", " "], "--advertise (advertise)"),
            (vec!["--tls-ca", "/x"], "--tls-ca (tls.ca)"),
            (vec!["--socket", "rel.sock"], "--socket (socket)"),
            (
                vec!["--trust-domain", "Prism/x"],
                "--trust-domain (trust_domain)",
            ),
            (
                vec!["--operator-group", "a:b"],
                "--operator-group (operator_group)",
            ),
            (vec!["--watch-batch", "6s"], "--watch-batch (watch_batch)"),
            (vec!["--watch-batch", "soon"], "--watch-batch (watch_batch)"),
            (
                vec!["--watcher-queue", "0"],
                "--watcher-queue (watcher_queue)",
            ),
        ] {
            let mut all = vec!["--listen", "127.0.0.1:8981", "--insecure"];
            all.extend(flags);
            assert_eq!(resolve(&all).unwrap_err().setting, setting);
        }
    }
}
