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

/// The same settings as the configuration file gives them (each daemon's
/// file keeps them at its top level, beside its own).
#[derive(Debug, Default)]
pub struct DaemonFile {
    pub listen: Option<String>,
    pub socket: Option<String>,
    pub operator_group: Option<String>,
    pub trust_domain: Option<String>,
    pub insecure: Option<bool>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<LogFormat>,
    pub tls: TlsFile,
}

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
    /// The configuration file as `F`, or `F::default()` without one; the
    /// error names the file.
    pub fn read_file<F: DeserializeOwned + Default>(&self) -> Result<F, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(F::default());
        };
        let text = std::fs::read_to_string(path)
            .or_else(|e| bad("config", "", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str::<F>(&text).or_else(|e| {
            bad(
                "config",
                "",
                format!("{}: {}", path.display(), e.message().trim()),
            )
        })
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
