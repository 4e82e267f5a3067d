//! A throwaway CA and per-role certificates (rcgen), written as PEM files:
//! each names its role as a URI SAN `spiffe://prism/<role>`, and is valid
//! for localhost and 127.0.0.1.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use prism_launcher::auth::dial::{Address, ClientPem, Expect, channel, client_config};
use tonic::transport::Channel;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType, string::Ia5String,
};

pub struct Pki {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca: PathBuf,
}

/// A certificate and key on disk.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// `--tls-cert C --tls-key K`
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    pub fn pem(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.cert).unwrap(),
            std::fs::read(&self.key).unwrap(),
        )
    }
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "prism test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, issuer.pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            issuer,
            ca,
        }
    }

    /// A certificate naming `uri` (e.g. `spiffe://prism/launcher/host-a`),
    /// or no URI at all when empty, saved as `<name>.crt` and `<name>.key`.
    pub fn issue(&self, name: &str, uri: &str) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        if !uri.is_empty() {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(uri).unwrap()));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    /// A lazy channel to 127.0.0.1:`port` over mutual TLS as `who`,
    /// accepting only a server whose certificate names `expect`.
    pub fn channel(&self, port: u16, who: &Pair, expect: Expect) -> Channel {
        let ca = std::fs::read(&self.ca).unwrap();
        let (cert, key) = who.pem();
        let config = client_config(
            ClientPem {
                ca: &ca,
                identity: Some((&cert, &key)),
            },
            "prism",
            expect,
        )
        .unwrap();
        let address = Address::parse(&format!("127.0.0.1:{port}")).unwrap();
        channel(&address, Some(config), Duration::from_secs(5)).unwrap()
    }

    /// `--tls-ca CA` plus `pair`'s flags.
    pub fn flags(&self, pair: &Pair) -> Vec<String> {
        let mut f = pair.flags();
        f.extend(["--tls-ca".into(), self.ca.display().to_string()]);
        f
    }
}

/// A lazy channel to a daemon's local socket.
pub fn unix_channel(socket: &Path) -> Channel {
    let address = Address::Unix(socket.to_owned());
    channel(&address, None, Duration::from_secs(5)).unwrap()
}
