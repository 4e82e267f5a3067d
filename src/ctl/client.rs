//! The connection to prism-admin: where it is, over TLS when asked, and
//! what an unreachable admin means for the exit code.

use std::path::PathBuf;

use clap::Args;
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::Error;
use crate::pb::prism::{
    admin::v1::admin_client::AdminClient, control_plane_client::ControlPlaneClient,
};

#[derive(Args, Debug, Clone)]
pub struct AdminOpts {
    /// prism-admin to talk to, as host:port or a URL.
    #[arg(
        long,
        global = true,
        env = "PRISM_ADMIN",
        default_value = "http://127.0.0.1:8981"
    )]
    pub admin: String,
    /// CA (PEM) to verify the admin's certificate with (switches to https).
    #[arg(long, global = true, env = "PRISM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, global = true, env = "PRISM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "PRISM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// Clients for the admin's two services, on one connection.
pub struct Admin {
    pub api: AdminClient<Channel>,
    pub cp: ControlPlaneClient<Channel>,
    pub url: String,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Usage(format!("cannot read {what} {}: {e}", path.display())))
}

impl AdminOpts {
    pub async fn connect(&self) -> Result<Admin, Error> {
        let tls = self.tls_ca.is_some() || self.tls_cert.is_some();
        let mut url = crate::settings::parse_endpoint(&self.admin)
            .map_err(|e| Error::Usage(format!("--admin: {e}")))?;
        if tls && url.starts_with("http://") {
            url = url.replacen("http://", "https://", 1);
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Usage(format!("--admin {url}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5));
        if tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                config = config.ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
            }
            match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => {
                    config = config.identity(Identity::from_pem(
                        read(c, "--tls-cert")?,
                        read(k, "--tls-key")?,
                    ))
                }
                (None, None) => {}
                _ => return Err(Error::Usage("--tls-cert and --tls-key go together".into())),
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Error::Usage(format!("TLS: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            Error::Unreachable(format!(
                "cannot reach prism-admin at {url} ({e}). Start one with `prismctl local up`, or \
                 point --admin (or PRISM_ADMIN) at a running admin"
            ))
        })?;
        Ok(Admin {
            api: AdminClient::new(channel.clone()),
            cp: ControlPlaneClient::new(channel),
            url,
        })
    }
}

/// A failed call: unreachable (exit 3) or refused (exit 1), with the
/// admin's own message.
pub fn call_failed(what: &str, status: Status) -> Error {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Error::Unreachable(format!(
            "{what}: prism-admin is unreachable: {}",
            status.message()
        )),
        Code::NotFound => Error::Failed(format!(
            "{what}: {}. List what exists with `prismctl ps` or `prismctl launchers`",
            status.message()
        )),
        _ => Error::Failed(format!("{what}: {}", status.message())),
    }
}
