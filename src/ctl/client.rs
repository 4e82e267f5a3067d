//! The connection to prism-admin: where it is, over TLS when asked, and
//! what an unreachable admin means for the exit code.

use std::path::PathBuf;

use clap::Args;
use tonic::{Code, Status, transport::Channel};

use super::Error;
use crate::protocol::ADMIN_SOCKET as DEFAULT_SOCKET;
use crate::{
    auth::dial::{Address, ClientPem, Expect, channel, client_config, describe},
    pb::prism::{admin::v1::admin_client::AdminClient, control_plane_client::ControlPlaneClient},
};

#[derive(Args, Debug, Clone)]
pub struct AdminOpts {
    /// prism-admin to talk to: its local socket (unix:PATH), host:port or a
    /// URL; several, comma-separated, for admins that share a database (the
    /// first that answers is used). On the admin's host the socket needs no certificate: root, and
    /// members of the operator group, are known by their uid [default: the
    /// packaged admin's socket, /run/prism-admin/admin.sock, or else the
    /// sockets of `prismctl local`'s admins].
    #[arg(long, global = true, env = "PRISM_ADMIN", value_name = "ADDRESS")]
    pub admin: Option<String>,
    /// CA (PEM) to verify the admin's certificate with (TCP over TLS).
    #[arg(long, global = true, env = "PRISM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS: an operator's or a viewer's.
    #[arg(long, global = true, env = "PRISM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "PRISM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Trust domain the admin's certificate names its role in.
    #[arg(
        long,
        global = true,
        env = "PRISM_TRUST_DOMAIN",
        default_value = crate::auth::DEFAULT_TRUST_DOMAIN
    )]
    pub trust_domain: String,
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
    /// The admin's address: as given, or the first local socket that
    /// exists (the packaged admin's, then the local stack's).
    pub fn address(&self) -> String {
        if let Some(a) = &self.admin {
            return a.clone();
        }
        let packaged = PathBuf::from(DEFAULT_SOCKET);
        let local = super::local::state_dir();
        if !packaged.exists() && local.join("admin.sock").exists() {
            // The local stack's admins (three with --ha).
            return super::local::admin_addresses(&local);
        }
        format!("unix:{}", packaged.display())
    }

    /// The first of the admins (`--admin`, comma-separated) that answers.
    pub async fn connect(&self) -> Result<Admin, Error> {
        let addresses = self.address();
        let mut reached = None;
        let mut unreachable = Vec::new();
        for address in addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match self.dial("--admin", address, Expect::Admin).await {
                Ok(dialed) => {
                    reached = Some(dialed);
                    break;
                }
                Err(Error::Unreachable(why)) => unreachable.push(why),
                Err(e) => return Err(e),
            }
        }
        let Some((channel, url)) = reached else {
            return Err(Error::Unreachable(if unreachable.is_empty() {
                "--admin: no address".to_owned()
            } else {
                unreachable.join("\n")
            }));
        };
        Ok(Admin {
            api: AdminClient::new(channel.clone())
                .max_decoding_message_size(crate::serve::MAX_RESPONSE_BYTES),
            cp: ControlPlaneClient::new(channel)
                .max_decoding_message_size(crate::serve::MAX_RESPONSE_BYTES),
            url,
        })
    }

    /// A connection to `address` (the admin's, or a launcher's when
    /// `expect` names one), with this command line's TLS settings; the
    /// daemon must answer a health check, so that an unreachable one is
    /// told apart from a refusing one. `flag` names the option the address
    /// came from. Returns the channel and its URL.
    pub async fn dial(
        &self,
        flag: &str,
        address: &str,
        expect: Expect,
    ) -> Result<(Channel, String), Error> {
        let what = match &expect {
            Expect::Admin => "prism-admin".to_owned(),
            Expect::Launcher(id) if id.is_empty() => "prism-launcher".to_owned(),
            Expect::Launcher(id) => format!("prism-launcher {id}"),
        };
        let address = Address::parse(address).map_err(|e| Error::Usage(format!("{flag}: {e}")))?;
        let tls = match (&address, &self.tls_ca) {
            (Address::Unix(_), _) => None,
            (Address::Tcp { .. }, Some(ca)) => {
                let ca = read(ca, "--tls-ca")?;
                let identity = match (&self.tls_cert, &self.tls_key) {
                    (Some(c), Some(k)) => Some((read(c, "--tls-cert")?, read(k, "--tls-key")?)),
                    (None, None) => None,
                    _ => return Err(Error::Usage("--tls-cert and --tls-key go together".into())),
                };
                Some(
                    client_config(
                        ClientPem {
                            ca: &ca,
                            identity: identity.as_ref().map(|(c, k)| (&c[..], &k[..])),
                        },
                        &self.trust_domain,
                        expect,
                    )
                    .map_err(|e| Error::Usage(format!("TLS: {e}")))?,
                )
            }
            (Address::Tcp { https: true, .. }, None) => {
                return Err(Error::Usage(format!(
                    "{address}: TLS needs --tls-ca to verify {what} with"
                )));
            }
            (Address::Tcp { .. }, None) => {
                if self.tls_cert.is_some() {
                    return Err(Error::Usage(format!(
                        "--tls-cert needs --tls-ca to verify {what} with"
                    )));
                }
                None
            }
        };
        let url = match (&address, &tls) {
            (Address::Tcp { host, port, .. }, Some(_)) => format!("https://{host}:{port}"),
            _ => address.to_string(),
        };
        let channel = channel(&address, tls, std::time::Duration::from_secs(5))
            .map_err(|e| Error::Usage(e.to_string()))?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        if let Err(status) = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            && !matches!(
                status.code(),
                Code::NotFound | Code::PermissionDenied | Code::Unimplemented
            )
        {
            let hint = if matches!(address, Address::Tcp { .. }) && self.tls_cert.is_none() {
                "; a daemon with mutual TLS needs a client certificate (--tls-cert, --tls-key)"
            } else {
                ""
            };
            let next = if flag == "--admin" {
                "Start one with `prismctl local up`, or point --admin (or PRISM_ADMIN) at a \
                 running admin"
                    .to_owned()
            } else {
                format!("Point {flag} at a running one")
            };
            return Err(Error::Unreachable(format!(
                "cannot reach {what} at {url} ({}{hint}). {next}",
                describe(&status)
            )));
        }
        Ok((channel, url))
    }
}

/// A failed call: unreachable (exit 3) or refused (exit 1), with the
/// admin's own message.
pub fn call_failed(what: &str, status: Status) -> Error {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Error::Unreachable(format!(
            "{what}: prism-admin is unreachable: {}",
            describe(&status)
        )),
        Code::NotFound => Error::Failed(format!(
            "{what}: {}. List what exists with `prismctl ps` or `prismctl launchers`",
            status.message()
        )),
        _ => Error::Failed(format!("{what}: {}", status.message())),
    }
}
