//! The settings both daemons take alike: the configuration file, where
//! they serve (TCP, local socket), who callers are (operator group, trust
//! domain, TLS), metrics and logs. One flattened flag struct, one file
//! section shape, one resolution; each daemon adds its own settings and
//! its own certificate's role check.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    auth::access::Access,
    logging::LogFormat,
    settings::{
        ConfigError, DEFAULT_METRICS_LISTEN, Tls, bad, check_transport, parse_listen_opt,
        parse_metrics_listen,
    },
};

/// The flags both daemons take. Their `--help` says each daemon's own
/// defaults (see `mut_arg` on each command).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DaemonFlags {
    /// TOML configuration file; flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC over TCP on this address, or `none`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// gRPC on this Unix socket, or `none`; callers are known by their uid.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
    /// Members of this group are operators on the local socket [default: prism].
    #[arg(long, value_name = "GROUP")]
    pub operator_group: Option<String>,
    /// Certificates name roles as spiffe://<DOMAIN>/<role> [default: prism].
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// Server certificate (PEM) for gRPC over TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to; enables mTLS.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Serve TCP peers without client certificates, trusting each of them
    /// with every role.
    #[arg(long)]
    pub insecure: bool,
    /// Prometheus metrics at /metrics on this address, or `none`
    /// [default: 127.0.0.1:9092].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// auto (journal under systemd, else text), text, json or journal.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The configuration file's `[tls]` table.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// The same settings as the configuration file gives them, at its top
/// level beside each daemon's own ([`DaemonFlags::read_file`] separates
/// them).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    pub listen: Option<String>,
    pub socket: Option<String>,
    pub operator_group: Option<String>,
    pub trust_domain: Option<String>,
    pub insecure: Option<bool>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub tls: TlsFile,
}

/// The keys of [`DaemonFile`].
const SHARED_KEYS: &[&str] = &[
    "listen",
    "socket",
    "operator_group",
    "trust_domain",
    "insecure",
    "metrics_listen",
    "log_format",
    "tls",
];

/// A daemon's defaults for [`DaemonFlags::resolve`].
#[derive(Clone, Copy, Debug)]
pub struct DaemonDefaults {
    pub socket: &'static str,
    /// TCP is served here by default with TLS (and, if `insecure_listens`,
    /// with `--insecure`); otherwise only the local socket.
    pub listen: &'static str,
    pub insecure_listens: bool,
}

/// What both daemons make of the shared settings.
#[derive(Debug)]
pub struct Served {
    pub listen: Option<SocketAddr>,
    pub access: Access,
    pub tls: Option<Tls>,
    pub insecure: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
}

impl Served {
    /// Plaintext TCP only when explicitly forced; checked after the
    /// daemon's own settings, so an error names those first.
    pub fn check_transport(&self) -> Result<(), ConfigError> {
        check_transport(self.listen, self.tls.as_ref(), self.insecure)
    }
}

impl DaemonFlags {
    /// The configuration file: the settings both daemons share, and the
    /// daemon's own as `F` (which refuses keys it does not know); defaults
    /// without a file. Errors name the file.
    pub fn read_file<F: DeserializeOwned + Default>(&self) -> Result<(DaemonFile, F), ConfigError> {
        let Some(path) = &self.config else {
            return Ok(Default::default());
        };
        let bad_file = |e: toml::de::Error| ConfigError {
            setting: "--config".into(),
            reason: format!("{}: {}", path.display(), e.message().trim()),
        };
        let text = std::fs::read_to_string(path)
            .or_else(|e| bad("config", "", format!("cannot read {}: {e}", path.display())))?;
        let mut own: toml::Table = toml::from_str(&text).map_err(bad_file)?;
        let mut shared = toml::Table::new();
        for key in SHARED_KEYS {
            if let Some(value) = own.remove(*key) {
                shared.insert((*key).to_owned(), value);
            }
        }
        let shared: DaemonFile = toml::Value::Table(shared).try_into().map_err(bad_file)?;
        let own: F = toml::Value::Table(own).try_into().map_err(bad_file)?;
        Ok((shared, own))
    }

    /// Flags over the file over `defaults`, each error naming its setting.
    /// The daemon checks its own settings next, and then
    /// [`Served::check_transport`].
    pub fn resolve(
        self,
        file: DaemonFile,
        defaults: DaemonDefaults,
    ) -> Result<Served, ConfigError> {
        let tls = Tls::load(
            self.tls_cert.or(file.tls.cert).as_deref(),
            self.tls_key.or(file.tls.key).as_deref(),
            self.tls_ca.or(file.tls.ca).as_deref(),
        )?;
        let access = Access::resolve(
            self.socket.or(file.socket),
            defaults.socket,
            self.operator_group.or(file.operator_group),
            self.trust_domain.or(file.trust_domain),
        )?;
        let insecure = self.insecure || file.insecure.unwrap_or(false);
        let listen = match self.listen.or(file.listen) {
            Some(text) => parse_listen_opt(&text).or_else(|r| bad("listen", "listen", r))?,
            None if tls.is_some() || (insecure && defaults.insecure_listens) => {
                parse_listen_opt(defaults.listen).ok().flatten()
            }
            None => None,
        };
        access.check_served(listen, "listen")?;
        let metrics_listen = parse_metrics_listen(
            &self
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_owned()),
        )
        .or_else(|r| bad("metrics-listen", "metrics_listen", r))?;
        Ok(Served {
            listen,
            access,
            tls,
            insecure,
            metrics_listen,
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAUNCHER: DaemonDefaults = DaemonDefaults {
        socket: "/run/prism-launcher/launcher.sock",
        listen: ":7070",
        insecure_listens: true,
    };
    const ADMIN: DaemonDefaults = DaemonDefaults {
        socket: "/run/prism-admin/admin.sock",
        listen: ":8981",
        insecure_listens: false,
    };

    fn flags(list: &[&str]) -> DaemonFlags {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            daemon: DaemonFlags,
        }
        let mut argv = vec!["daemon"];
        argv.extend_from_slice(list);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().daemon
    }

    #[test]
    fn without_tls_only_the_local_socket_is_served_by_default() {
        for defaults in [LAUNCHER, ADMIN] {
            let s = flags(&[]).resolve(DaemonFile::default(), defaults).unwrap();
            assert_eq!(s.listen, None);
            assert_eq!(
                s.access.socket.as_deref(),
                Some(std::path::Path::new(defaults.socket))
            );
            assert_eq!(s.metrics_listen, Some("127.0.0.1:9092".parse().unwrap()));
            s.check_transport().unwrap();
        }
    }

    #[test]
    fn insecure_listens_by_default_only_where_the_daemon_says_so() {
        let launcher = flags(&["--insecure"])
            .resolve(DaemonFile::default(), LAUNCHER)
            .unwrap();
        assert_eq!(launcher.listen.map(|l| l.port()), Some(7070));
        launcher.check_transport().unwrap();
        let admin = flags(&["--insecure"])
            .resolve(DaemonFile::default(), ADMIN)
            .unwrap();
        assert_eq!(admin.listen, None);
    }

    #[test]
    fn flags_win_over_the_file_and_errors_name_the_setting() {
        let file = DaemonFile {
            listen: Some("127.0.0.1:1".into()),
            metrics_listen: Some("none".into()),
            insecure: Some(true),
            ..DaemonFile::default()
        };
        let s = flags(&["--listen", "127.0.0.1:2"])
            .resolve(file, ADMIN)
            .unwrap();
        assert_eq!(s.listen.map(|l| l.port()), Some(2));
        assert_eq!(s.metrics_listen, None);
        assert!(s.insecure);
        // Plaintext TCP without --insecure is refused, naming --listen.
        let s = flags(&["--listen", "127.0.0.1:2"])
            .resolve(DaemonFile::default(), ADMIN)
            .unwrap();
        assert!(
            s.check_transport()
                .unwrap_err()
                .setting
                .starts_with("--listen")
        );
        let e = flags(&["--listen", "nowhere"])
            .resolve(DaemonFile::default(), ADMIN)
            .unwrap_err();
        assert!(e.setting.starts_with("--listen"), "{e}");
        let e = flags(&["--listen", "none", "--socket", "none"])
            .resolve(DaemonFile::default(), ADMIN)
            .unwrap_err();
        assert!(e.reason.contains("nothing would be served"), "{e}");
        let e = flags(&["--tls-cert", "/nonexistent"])
            .resolve(DaemonFile::default(), ADMIN)
            .unwrap_err();
        assert!(e.setting.starts_with("--tls-key"), "{e}");
    }

    #[test]
    fn the_configuration_file_is_read_and_its_errors_name_it() {
        #[derive(Deserialize, Default, Debug)]
        #[serde(deny_unknown_fields)]
        struct File {
            own: Option<String>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nown = \"x\"\n").unwrap();
        let (shared, f): (DaemonFile, File) = flags(&["--config", path.to_str().unwrap()])
            .read_file()
            .unwrap();
        assert_eq!(shared.listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(f.own.as_deref(), Some("x"));
        std::fs::write(&path, "lisen = 1\n").unwrap();
        let e = flags(&["--config", path.to_str().unwrap()])
            .read_file::<File>()
            .unwrap_err();
        assert_eq!(e.setting, "--config");
        assert!(
            e.reason.contains("d.toml") && e.reason.contains("lisen"),
            "{e}"
        );
        // A shared key of the wrong shape is named too.
        std::fs::write(&path, "[tls]\ncrt = \"x\"\n").unwrap();
        let e = flags(&["--config", path.to_str().unwrap()])
            .read_file::<File>()
            .unwrap_err();
        assert!(e.reason.contains("crt"), "{e}");
        let e = flags(&["--config", "/nonexistent.toml"])
            .read_file::<File>()
            .unwrap_err();
        assert!(e.reason.contains("cannot read"), "{e}");
        // No file: the defaults.
        assert!(flags(&[]).read_file::<File>().unwrap().1.own.is_none());
    }
}
