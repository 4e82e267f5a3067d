//! The access settings both daemons share, resolved before anything is
//! bound: the local socket, its operator group, the trust domain, and the
//! role the daemon's own certificate names. Each error names its setting.

use std::{net::SocketAddr, path::PathBuf};

use super::{DEFAULT_OPERATOR_GROUP, DEFAULT_TRUST_DOMAIN, Role, identity::role_of_pem};
use crate::settings::{ConfigError, Tls, bad, check_group, check_trust_domain, parse_socket};

#[derive(Debug)]
pub struct Access {
    /// The local socket, unless `none`.
    pub socket: Option<PathBuf>,
    pub operator_group: String,
    pub trust_domain: String,
}

impl Access {
    /// Each value as given (flag, else file), else its default.
    pub fn resolve(
        socket: Option<String>,
        default_socket: &str,
        operator_group: Option<String>,
        trust_domain: Option<String>,
    ) -> Result<Self, ConfigError> {
        let trust_domain = trust_domain.unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        check_trust_domain(&trust_domain).or_else(|r| bad("trust-domain", "trust_domain", r))?;
        let socket = parse_socket(&socket.unwrap_or_else(|| default_socket.to_owned()))
            .or_else(|r| bad("socket", "socket", r))?;
        let operator_group = operator_group.unwrap_or_else(|| DEFAULT_OPERATOR_GROUP.to_owned());
        check_group(&operator_group).or_else(|r| bad("operator-group", "operator_group", r))?;
        Ok(Self {
            socket,
            operator_group,
            trust_domain,
        })
    }

    /// What `accept` makes of the role this daemon's own certificate
    /// names; when it takes none, an error on `--tls-cert` ending with
    /// `must` (what the certificate must name: peers check it).
    pub fn own_role<T>(
        &self,
        tls: &Tls,
        must: &str,
        accept: impl Fn(&Role) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let reason = match role_of_pem(&tls.cert, &self.trust_domain) {
            Ok((role, uri)) => match accept(&role) {
                Some(taken) => return Ok(taken),
                None => format!("the certificate names {role} ({uri})"),
            },
            Err(e) => e.to_string(),
        };
        bad("tls-cert", "tls.cert", format!("{reason}; {must}"))
    }

    /// A daemon serves TCP, its socket, or both; `flag` names the listen
    /// setting as the operator spelled it.
    pub fn check_served(&self, listen: Option<SocketAddr>, flag: &str) -> Result<(), ConfigError> {
        if listen.is_none() && self.socket.is_none() {
            return bad(
                flag,
                "listen",
                "with --socket none as well, nothing would be served",
            );
        }
        Ok(())
    }
}
