//! HTTPS for the page with the admin's own certificate: TLS handshakes run
//! each in its own task (a slow client holds up nobody), and finished
//! connections are handed to axum. Browsers bring no client certificate:
//! the session cookie says who they are.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::{serve::Shutdown, settings::Tls};

/// A handshake that takes longer is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for axum.
const READY: usize = 64;

pub struct Listener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

fn server_config(tls: &Tls) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| format!("the private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Listener {
    pub fn new(
        listener: tokio::net::TcpListener,
        tls: &Tls,
        mut shutdown: Shutdown,
    ) -> Result<Self, String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(tls)?));
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, ready) = mpsc::channel(READY);
        tokio::spawn(async move {
            loop {
                let accepted = match shutdown.until(listener.accept()).await {
                    None => return,
                    Some(a) => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("fleet status page: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("fleet status page: TLS from {peer}: {e}"),
                        Err(_) => tracing::debug!("fleet status page: TLS from {peer}: too slow"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
