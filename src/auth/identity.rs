//! Who is calling: the naming convention of certificates, and the caller a
//! connection establishes (a certificate on TCP, `SO_PEERCRED` on the local
//! socket).
//!
//! # Naming convention
//!
//! A certificate names its role in one URI subject alternative name of the
//! SPIFFE form, under the configured trust domain (default `prism`):
//!
//! | URI SAN                               | role     |
//! |---------------------------------------|----------|
//! | `spiffe://<domain>/launcher/<id>`     | the launcher `<id>` |
//! | `spiffe://<domain>/admin`             | prism-admin |
//! | `spiffe://<domain>/operator/<name>`   | an operator |
//! | `spiffe://<domain>/viewer/<name>`     | an operator who may only read |
//!
//! A certificate with no such URI, or with two, has no role.

use std::{fmt, net::SocketAddr, path::Path};

use x509_parser::{extensions::GeneralName, prelude::FromDer};

pub const DEFAULT_TRUST_DOMAIN: &str = "prism";

/// What a certificate entitles its holder to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    /// The launcher with this id, and only it.
    Launcher(String),
    Operator,
    Viewer,
}

impl Role {
    /// The URI SAN that names this role (`name` for operators and viewers).
    pub fn uri(&self, trust_domain: &str, name: &str) -> String {
        match self {
            Role::Admin => format!("spiffe://{trust_domain}/admin"),
            Role::Launcher(id) => format!("spiffe://{trust_domain}/launcher/{id}"),
            Role::Operator => format!("spiffe://{trust_domain}/operator/{name}"),
            Role::Viewer => format!("spiffe://{trust_domain}/viewer/{name}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => f.write_str("admin"),
            Role::Launcher(id) => write!(f, "launcher {id:?}"),
            Role::Operator => f.write_str("operator"),
            Role::Viewer => f.write_str("viewer"),
        }
    }
}

/// Why a certificate names no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("it is not a readable X.509 certificate")]
    Unreadable,
    #[error("it has no URI SAN spiffe://{0}/<role>[/<name>]")]
    NoRole(String),
    #[error("it names {0} roles in trust domain {1:?}; it must name one")]
    Ambiguous(usize, String),
    #[error(
        "its URI SAN {0:?} names no known role (admin, launcher/<id>, operator/<name>, viewer/<name>)"
    )]
    Unknown(String),
}

/// The role one URI names in `trust_domain`; `None` when the URI is of
/// another domain or scheme.
pub fn role_of_uri(uri: &str, trust_domain: &str) -> Option<Result<Role, CertError>> {
    let rest = uri
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix('/')?;
    let unknown = || Some(Err(CertError::Unknown(uri.to_owned())));
    let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_name = crate::settings::is_token(name);
    Some(Ok(match kind {
        "admin" if name.is_empty() || valid_name => Role::Admin,
        "launcher" if valid_name => Role::Launcher(name.to_owned()),
        "operator" if valid_name => Role::Operator,
        "viewer" if valid_name => Role::Viewer,
        _ => return unknown(),
    }))
}

/// The role a DER certificate names, and the URI that names it.
pub fn role_of_cert(der: &[u8], trust_domain: &str) -> Result<(Role, String), CertError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| CertError::Unreadable)?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(CertError::Unreadable),
    };
    let mut found = Vec::new();
    for uri in uris {
        if let Some(role) = role_of_uri(uri, trust_domain) {
            found.push((role?, uri.to_owned()));
        }
    }
    match found.len() {
        0 => Err(CertError::NoRole(trust_domain.to_owned())),
        1 => Ok(found.remove(0)),
        n => Err(CertError::Ambiguous(n, trust_domain.to_owned())),
    }
}

/// The role of the first certificate of a PEM file (a daemon's own).
pub fn role_of_pem(pem: &[u8], trust_domain: &str) -> Result<(Role, String), CertError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(pem).map_err(|_| CertError::Unreadable)?;
    role_of_cert(&der, trust_domain)
}

/// Who called, as the transport established it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// uid 0, or the daemon's own uid, on the local socket: may do
    /// everything.
    Root,
    /// A member of the operator group on the local socket.
    LocalOperator { uid: u32 },
    /// Any other user on the local socket.
    LocalUser { uid: u32 },
    /// A client certificate naming a role.
    Certified { role: Role, uri: String },
    /// A client certificate that names no role here.
    Unrecognised { reason: String },
    /// A TCP peer without a certificate, on a daemon started with
    /// `--insecure`: trusted with every role.
    Insecure { addr: Option<SocketAddr> },
    /// A TCP peer without a certificate.
    Anonymous { addr: Option<SocketAddr> },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        match self {
            Caller::Root => f.write_str("root (or the daemon's own user) on the local socket"),
            Caller::LocalOperator { uid } => {
                write!(f, "uid {uid} (operator group) on the local socket")
            }
            Caller::LocalUser { uid } => write!(f, "uid {uid} on the local socket"),
            Caller::Certified { role, uri } => write!(f, "{role} (certificate {uri})"),
            Caller::Unrecognised { reason } => {
                write!(f, "a certificate with no role: {reason}")
            }
            Caller::Insecure { addr: a } => {
                write!(f, "unauthenticated {} (trusted: --insecure)", addr(a))
            }
            Caller::Anonymous { addr: a } => {
                write!(f, "unauthenticated {} (no client certificate)", addr(a))
            }
        }
    }
}

impl Caller {
    /// Root on the socket, or anyone under `--insecure`.
    pub fn is_superuser(&self) -> bool {
        matches!(self, Caller::Root | Caller::Insecure { .. })
    }

    /// The certified role, if any.
    pub fn role(&self) -> Option<&Role> {
        match self {
            Caller::Certified { role, .. } => Some(role),
            _ => None,
        }
    }

    /// May pass a call on for another caller (a follower admin forwarding
    /// to the leader): an admin's certificate, root on the local socket,
    /// or anyone under `--insecure` (trusted with every role already).
    pub fn may_forward(&self) -> bool {
        self.is_superuser() || self.role() == Some(&Role::Admin)
    }

    /// This caller as a forwarding admin names it to the leader (see
    /// [`Self::from_forwarded`]).
    pub fn forwarded(&self) -> String {
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        match self {
            Caller::Root => "root".into(),
            Caller::LocalOperator { uid } => format!("local-operator:{uid}"),
            Caller::LocalUser { uid } => format!("local-user:{uid}"),
            Caller::Certified { uri, .. } => format!("certified:{uri}"),
            Caller::Unrecognised { .. } => "unrecognised".into(),
            Caller::Insecure { addr: a } => format!("insecure:{}", addr(a)),
            Caller::Anonymous { addr: a } => format!("anonymous:{}", addr(a)),
        }
    }

    /// The caller a forwarding admin named; `None` when unreadable. A
    /// certificate's role is read again from its URI, in this trust
    /// domain.
    pub fn from_forwarded(text: &str, trust_domain: &str) -> Option<Caller> {
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        let addr = || rest.parse().ok();
        Some(match kind {
            "root" => Caller::Root,
            "local-operator" => Caller::LocalOperator {
                uid: rest.parse().ok()?,
            },
            "local-user" => Caller::LocalUser {
                uid: rest.parse().ok()?,
            },
            "certified" => match role_of_uri(rest, trust_domain) {
                Some(Ok(role)) => Caller::Certified {
                    role,
                    uri: rest.to_owned(),
                },
                _ => Caller::Unrecognised {
                    reason: format!("forwarded certificate {rest} names no role here"),
                },
            },
            "unrecognised" => Caller::Unrecognised {
                reason: "forwarded: a certificate with no role".into(),
            },
            "insecure" => Caller::Insecure { addr: addr() },
            "anonymous" => Caller::Anonymous { addr: addr() },
            _ => return None,
        })
    }
}

/// Members of the operator group, resolved once at start.
#[derive(Clone, Debug)]
pub struct OperatorGroup {
    pub name: String,
    /// `None` when no such group exists on this host: then only root may
    /// use the local socket.
    pub gid: Option<u32>,
    /// The daemon's own uid: a peer running as the daemon's user could
    /// act as the daemon anyway (a stack run by one user).
    pub own_uid: Option<u32>,
}

impl OperatorGroup {
    /// Look `name` up in `/etc/group`.
    pub fn resolve(name: &str) -> Self {
        Self::resolve_in(name, Path::new("/etc/group"))
    }

    pub fn resolve_in(name: &str, group_file: &Path) -> Self {
        let gid = std::fs::read_to_string(group_file).ok().and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                (fields.next() == Some(name))
                    .then(|| fields.nth(1).and_then(|g| g.parse().ok()))
                    .flatten()
            })
        });
        Self {
            name: name.to_owned(),
            gid,
            own_uid: crate::host::own_uid(),
        }
    }

    /// The caller a local socket peer is. A peer is in the group when its
    /// primary gid is the group's, or the group is among the supplementary
    /// groups of its process (read from `/proc/<pid>/status`).
    pub fn classify(&self, uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        if uid == 0 || Some(uid) == self.own_uid {
            return Caller::Root;
        }
        let Some(group) = self.gid else {
            return Caller::LocalUser { uid };
        };
        let member = gid == group
            || pid
                .filter(|p| *p > 0)
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                .is_some_and(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("Groups:"))
                        .is_some_and(|gs| {
                            gs.split_whitespace().any(|g| g.parse::<u32>() == Ok(group))
                        })
                });
        if member {
            Caller::LocalOperator { uid }
        } else {
            Caller::LocalUser { uid }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_roles() {
        let r = |u: &str| role_of_uri(u, "prism");
        assert_eq!(r("spiffe://prism/admin"), Some(Ok(Role::Admin)));
        assert_eq!(
            r("spiffe://prism/launcher/host-a"),
            Some(Ok(Role::Launcher("host-a".into())))
        );
        assert_eq!(r("spiffe://prism/operator/alice"), Some(Ok(Role::Operator)));
        assert_eq!(r("spiffe://prism/viewer/bob"), Some(Ok(Role::Viewer)));
        assert_eq!(r("spiffe://other/admin"), None);
        assert_eq!(r("spiffe://prismx/admin"), None);
        assert_eq!(r("https://prism/admin"), None);
        for bad in [
            "spiffe://prism/launcher",
            "spiffe://prism/launcher/",
            "spiffe://prism/launcher/a b",
            "spiffe://prism/root",
            "spiffe://prism/operator",
        ] {
            assert!(matches!(r(bad), Some(Err(CertError::Unknown(_)))), "{bad}");
        }
    }

    #[test]
    fn certificates_name_one_role() {
        let cert = |uris: &[&str]| {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            for u in uris {
                params.subject_alt_names.push(rcgen::SanType::URI(
                    rcgen::string::Ia5String::try_from(*u).unwrap(),
                ));
            }
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(
            role_of_cert(&cert(&["spiffe://prism/launcher/a"]), "prism")
                .unwrap()
                .0,
            Role::Launcher("a".into())
        );
        assert_eq!(
            role_of_cert(&cert(&[]), "prism"),
            Err(CertError::NoRole("prism".into()))
        );
        assert!(matches!(
            role_of_cert(
                &cert(&["spiffe://prism/admin", "spiffe://prism/operator/x"]),
                "prism"
            ),
            Err(CertError::Ambiguous(2, _))
        ));
        // Other trust domains are not ours to read.
        assert_eq!(
            role_of_cert(
                &cert(&["spiffe://prism/admin", "spiffe://corp/operator/x"]),
                "prism"
            )
            .unwrap()
            .0,
            Role::Admin
        );
        assert_eq!(role_of_cert(b"junk", "prism"), Err(CertError::Unreadable));
    }

    #[test]
    fn the_local_socket_knows_root_and_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("group");
        std::fs::write(&file, "root:x:0:\nprism:x:990:alice\nother:x:5:\n").unwrap();
        let g = OperatorGroup::resolve_in("prism", &file);
        assert_eq!(g.gid, Some(990));
        assert_eq!(g.classify(0, 0, None), Caller::Root);
        assert_eq!(
            g.classify(1000, 990, None),
            Caller::LocalOperator { uid: 1000 }
        );
        assert_eq!(
            g.classify(1000, 1000, None),
            Caller::LocalUser { uid: 1000 }
        );
        let none = OperatorGroup::resolve_in("absent", &file);
        assert_eq!(none.gid, None);
        assert_eq!(
            none.classify(1000, 990, None),
            Caller::LocalUser { uid: 1000 }
        );
        // This process's own supplementary groups are read from /proc.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let groups: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap()
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        if let Some(g0) = groups.first() {
            let g = OperatorGroup {
                name: "x".into(),
                gid: Some(*g0),
                own_uid: None,
            };
            assert_eq!(
                g.classify(1000, 123_456, Some(std::process::id() as i32)),
                Caller::LocalOperator { uid: 1000 }
            );
        }
    }
}
