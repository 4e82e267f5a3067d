//! A certificate authority for a fleet: a CA, and per-role certificates
//! that name their role as the convention in [`super::identity`] says.
//! `prismctl pki` and `prismctl local` use it; production fleets may use
//! any CA that issues the same URI SANs.

use std::{net::IpAddr, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
};

use super::identity::Role;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A CA that can sign role certificates.
pub struct Authority {
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

impl Authority {
    /// A new self-signed CA, valid for `valid_days`.
    pub fn create(name: &str, valid_days: i64) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - days(1);
        params.not_after = now + days(valid_days);
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Read `ca.crt` and `ca.key` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        Self::load(&read("ca.crt")?, &read("ca.key")?)
    }

    /// Write `ca.crt` (0644) and `ca.key` (0600) into `dir`.
    pub fn save_dir(&self, dir: &Path) -> Result<(), PkiError> {
        write(dir, "ca.crt", &self.cert_pem, 0o644)?;
        write(dir, "ca.key", &self.key_pem, 0o600)
    }

    /// A certificate for `role` (`name` names an operator or viewer, and is
    /// the common name), valid for the DNS names and addresses given (a
    /// daemon's server names), for both server and client use.
    pub fn issue(
        &self,
        role: &Role,
        name: &str,
        trust_domain: &str,
        dns: &[String],
        ips: &[IpAddr],
        valid_days: i64,
    ) -> Result<Issued, PkiError> {
        if !crate::settings::is_token(name) {
            return Err(PkiError::Invalid(format!(
                "{name:?} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"
            )));
        }
        crate::settings::check_trust_domain(trust_domain).map_err(PkiError::Invalid)?;
        let mut params = CertificateParams::new(dns.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let uri = role.uri(trust_domain, name);
        params.subject_alt_names.push(SanType::URI(
            Ia5String::try_from(uri.clone())
                .map_err(|e| PkiError::Invalid(format!("{uri}: {e}")))?,
        ));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - days(1);
        params.not_after = now + days(valid_days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Write `<stem>.crt` (0644) and `<stem>.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        write(dir, &format!("{stem}.crt"), &self.cert_pem, 0o644)?;
        write(dir, &format!("{stem}.key"), &self.key_pem, 0o600)
    }
}

/// Write a file with `mode`, whatever the umask; refuse to replace one.
fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let path = dir.join(name);
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::{Role, role_of_pem};

    #[test]
    fn issued_certificates_name_their_role_and_a_saved_ca_signs_again() {
        let ca = Authority::create("test CA", 30).unwrap();
        let op = ca
            .issue(&Role::Operator, "alice", "prism", &[], &[], 30)
            .unwrap();
        assert_eq!(
            role_of_pem(op.cert_pem.as_bytes(), "prism").unwrap().0,
            Role::Operator
        );
        let dir = tempfile::tempdir().unwrap();
        ca.save_dir(dir.path()).unwrap();
        let mode = |n: &str| {
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(dir.path().join(n)).unwrap().permissions(),
            ) & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert!(ca.save_dir(dir.path()).is_err(), "never overwrites");
        let again = Authority::load_dir(dir.path()).unwrap();
        let l = again
            .issue(
                &Role::Launcher("host-a".into()),
                "host-a",
                "prism",
                &["host-a.example".into()],
                &["127.0.0.1".parse().unwrap()],
                30,
            )
            .unwrap();
        assert_eq!(
            role_of_pem(l.cert_pem.as_bytes(), "prism").unwrap().0,
            Role::Launcher("host-a".into())
        );
        assert!(
            ca.issue(&Role::Operator, "a b", "prism", &[], &[], 1)
                .is_err()
        );
    }
}
