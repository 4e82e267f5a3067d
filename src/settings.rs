//! Configuration pieces both daemons share: durations, addresses, TLS
//! material, and the error that names a setting.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A setting is wrong; `setting` names it as a flag and a file key.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

pub fn bad<T>(flag: &str, key: &str, reason: impl Into<String>) -> Result<T, ConfigError> {
    let setting = if key.is_empty() {
        format!("--{flag}")
    } else {
        format!("--{flag} ({key})")
    };
    Err(ConfigError {
        setting,
        reason: reason.into(),
    })
}

/// PEM material for the gRPC server, read before anything is bound.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Client certificates must chain to this CA (mTLS).
    pub client_ca: Option<Vec<u8>>,
}

impl Tls {
    /// The server side: this identity, and client certificates required
    /// when a CA is configured.
    pub fn server_config(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }

    /// Read cert, key and CA (all PEM) as configured; each error names its
    /// setting.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Tls {
                cert: read_pem("tls-cert", "tls.cert", cert)?,
                key: read_pem("tls-key", "tls.key", key)?,
                client_ca: match ca {
                    Some(ca) => Some(read_pem("tls-ca", "tls.ca", ca)?),
                    None => None,
                },
            })),
            (None, None) if ca.is_some() => {
                bad("tls-ca", "tls.ca", "needs --tls-cert and --tls-key as well")
            }
            (None, None) => Ok(None),
            (Some(_), None) => bad("tls-key", "tls.key", "--tls-cert needs --tls-key"),
            (None, Some(_)) => bad("tls-cert", "tls.cert", "--tls-key needs --tls-cert"),
        }
    }
}

/// Who may reach a daemon's TCP listener: plaintext only with
/// `--insecure` (then every peer is trusted), and TLS on a non-loopback
/// address only with a client CA (else peers cannot be told apart).
pub fn check_transport(
    listen: Option<SocketAddr>,
    tls: Option<&Tls>,
    insecure: bool,
) -> Result<(), ConfigError> {
    let Some(listen) = listen else {
        return Ok(());
    };
    if insecure {
        return Ok(());
    }
    match tls {
        None => bad(
            "listen",
            "listen",
            format!(
                "plaintext gRPC on {listen} cannot tell who calls, so anyone who can connect could \
                 start processes as root; configure TLS with a client CA (--tls-cert, --tls-key, \
                 --tls-ca), serve only the local socket (--listen none), or pass --insecure to \
                 trust every peer"
            ),
        ),
        Some(t) if t.client_ca.is_none() && !listen.ip().is_loopback() => bad(
            "tls-ca",
            "tls.ca",
            format!(
                "TLS on non-loopback address {listen} without a client CA cannot tell who calls; \
                 set --tls-ca (mutual TLS) or pass --insecure to trust every peer"
            ),
        ),
        Some(_) => Ok(()),
    }
}

/// `--listen`: an address, or `none` for no TCP listener.
pub fn parse_listen_opt(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "none" {
        Ok(None)
    } else {
        parse_listen(s).map(Some)
    }
}

/// `--socket`: an absolute path, or `none` for no local socket.
pub fn parse_socket(s: &str) -> Result<Option<PathBuf>, String> {
    if s == "none" {
        return Ok(None);
    }
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(format!("{s:?} is not an absolute path (or none)"));
    }
    Ok(Some(path))
}

/// A SPIFFE trust domain: lower-case letters, digits, `.`, `-`, `_`.
pub fn check_trust_domain(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a trust domain (lower-case letters, digits, . - _)"
        ))
    }
}

/// A group name as in /etc/group.
pub fn check_group(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not a group name"))
    }
}

/// `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, ""), |i| (&s[..i], &s[i..]));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `host:port`, `:port` (all interfaces) or `ip:port`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(addr) = SocketAddr::from_str(s) {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address (host:port or :port): {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// `--metrics-listen`: an address, or `none` to serve no metrics.
pub fn parse_metrics_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "none" {
        Ok(None)
    } else {
        parse_listen(s).map(Some)
    }
}

/// The metrics port upstream's launcher used.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9092";

/// ADR-057's `host:port`, or a URL; returns a URL.
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((other, _)) => {
            return Err(format!("unsupported scheme {other:?} (use http or https)"));
        }
        None => ("http", s),
    };
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port (expected host:port)"))?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!("{s:?} has no valid host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
    Ok(format!("{scheme}://{hostport}"))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "launcher-01".to_owned())
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'))
}

pub fn read_pem(flag: &str, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.windows(11).any(|w| w == b"-----BEGIN ") => Ok(bytes),
        Ok(_) => bad(flag, key, format!("{} holds no PEM data", path.display())),
        Err(e) => bad(flag, key, format!("cannot read {}: {e}", path.display())),
    }
}

/// A setting that takes one value or several: a string (commas separate
/// values) or an array of strings.
#[derive(serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Default for OneOrMany {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl OneOrMany {
    /// The values, trimmed, empty ones left out.
    pub fn items(&self) -> Vec<String> {
        let all: Vec<&str> = match self {
            Self::One(s) => s.split(',').collect(),
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        };
        all.into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
