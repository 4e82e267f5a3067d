//! Client connections to either daemon: over the local Unix socket, or
//! TCP with TLS that checks the server's certificate chains to the CA,
//! matches the host name, and names the role the client expects (the
//! admin, or the launcher it means to reach).

use std::{path::PathBuf, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::identity::{Role, role_of_cert};

/// Where a daemon is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `unix:/run/prism-admin/admin.sock`
    Unix(PathBuf),
    /// `host:port`, `http://host:port` or `https://host:port`.
    Tcp {
        host: String,
        port: u16,
        /// The URL asked for https.
        https: bool,
    },
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp { host, port, https } => {
                let scheme = if *https { "https" } else { "http" };
                write!(f, "{scheme}://{host}:{port}")
            }
        }
    }
}

impl Address {
    /// `unix:PATH` (absolute), a URL, or `host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a socket path must be absolute (unix:/path)"
                ));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let url = crate::settings::parse_endpoint(s)?;
        let (scheme, hostport) = url.split_once("://").unwrap_or(("http", &url));
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port"))?;
        Ok(Address::Tcp {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.parse().map_err(|_| format!("{s:?}: bad port"))?,
            https: scheme == "https",
        })
    }

    /// On this host: a socket, or a loopback address.
    pub fn is_local(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

/// A connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Tls(String),
    #[error("{address}: {reason}")]
    Address { address: String, reason: String },
}

/// The server a client means to reach: TLS refuses any other.
#[derive(Clone, Debug)]
pub enum Expect {
    Admin,
    Launcher(String),
}

impl Expect {
    fn accepts(&self, role: &Role) -> bool {
        match (self, role) {
            (Expect::Admin, Role::Admin) => true,
            (Expect::Launcher(want), Role::Launcher(id)) => want == id,
            _ => false,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Admin => f.write_str("the admin"),
            Expect::Launcher(id) => write!(f, "launcher {id:?}"),
        }
    }
}

/// webpki's checks (chain, validity, host name), then the role.
#[derive(Debug)]
struct RoleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    trust_domain: String,
    expect: Expect,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        match role_of_cert(end_entity, &self.trust_domain) {
            Ok((role, _)) if self.expect.accepts(&role) => Ok(verified),
            Ok((role, uri)) => Err(rustls::Error::General(format!(
                "the server's certificate names {role} ({uri}), not {}",
                self.expect
            ))),
            Err(e) => Err(rustls::Error::General(format!(
                "the server's certificate names no role ({e}); expected {}",
                self.expect
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// PEM material of a TLS client: the CA that server certificates must
/// chain to, and optionally this client's own certificate and key.
pub struct ClientPem<'a> {
    pub ca: &'a [u8],
    pub identity: Option<(&'a [u8], &'a [u8])>,
}

/// A rustls client configuration that verifies the server as `expect`.
pub fn client_config(
    pem: ClientPem<'_>,
    trust_domain: &str,
    expect: Expect,
) -> Result<Arc<ClientConfig>, DialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.ca) {
        let cert = cert.map_err(|e| DialError::Tls(format!("the CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| DialError::Tls(format!("the CA: {e}")))?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| DialError::Tls(format!("the CA: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DialError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RoleVerifier {
            webpki,
            trust_domain: trust_domain.to_owned(),
            expect,
        }));
    let mut config = match pem.identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DialError::Tls(format!("the client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| DialError::Tls(format!("the client key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| DialError::Tls(format!("the client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A daemon's TLS towards another daemon: its own certificate as client
/// identity, and its CA (required) to verify `expect` with.
pub fn daemon_client(
    tls: &crate::settings::Tls,
    trust_domain: &str,
    expect: Expect,
) -> Result<Arc<ClientConfig>, DialError> {
    let ca = tls.client_ca.as_deref().ok_or_else(|| {
        DialError::Tls(format!("no CA (--tls-ca, tls.ca) to verify {expect} with"))
    })?;
    client_config(
        ClientPem {
            ca,
            identity: Some((&tls.cert, &tls.key)),
        },
        trust_domain,
        expect,
    )
}

/// A lazily connecting channel to `address`: the socket, TLS with
/// `tls` when given, else plaintext TCP.
/// HTTP/2 pings on TCP channels while a call is open, and how long one may
/// go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);

pub fn channel(
    address: &Address,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
) -> Result<Channel, DialError> {
    let bad = |reason: String| DialError::Address {
        address: address.to_string(),
        reason,
    };
    match address {
        Address::Unix(path) => {
            let path = path.clone();
            // The URI is not used to connect; it names the authority.
            let endpoint =
                Endpoint::from_static("http://localhost").connect_timeout(connect_timeout);
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
        }
        Address::Tcp { host, port, .. } => {
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let endpoint = Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                // A call in flight on a connection whose peer dropped off
                // the network fails within seconds, not after TCP's own
                // retransmissions give up (minutes), and the next call
                // connects afresh: pings while calls are open, none idle.
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(false);
            let Some(config) = tls else {
                return Ok(endpoint.connect_lazy());
            };
            let name = ServerName::try_from(host.clone())
                .map_err(|e| bad(format!("{host:?} is not a server name: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let target = (host.clone(), *port);
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let connector = connector.clone();
                    let name = name.clone();
                    let target = target.clone();
                    async move {
                        let tcp = tokio::net::TcpStream::connect(target).await?;
                        tcp.set_nodelay(true)?;
                        let stream = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
        }
    }
}

/// A status's message and the errors beneath it, each once (a TLS refusal
/// hides beneath "transport error").
pub fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}
