//! Liveness probes against 127.0.0.1: HTTP GET, TCP connect, gRPC health.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::model::Probe;

/// Run one probe with a deadline; `Err` says why it failed.
pub async fn check(probe: &Probe, timeout: Duration) -> Result<(), String> {
    let work = async {
        match probe {
            Probe::None | Probe::Watchdog { .. } => Ok(()),
            Probe::Tcp { port } => TcpStream::connect(("127.0.0.1", *port))
                .await
                .map(drop)
                .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}")),
            Probe::Http { port, path } => http_get(*port, path).await,
            Probe::Grpc { port } => grpc_health(*port).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// `GET path` over HTTP/1.1; any 2xx is healthy.
async fn http_get(port: u16, path: &str) -> Result<(), String> {
    let what = || format!("http://127.0.0.1:{port}{path}");
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: prism-launcher\r\n\
         connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    // The status line is all we need.
    let mut buf = [0u8; 256];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = s
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("{}: {e}", what()))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    match status.parse::<u16>() {
        Ok(code) if (200..300).contains(&code) => Ok(()),
        Ok(code) => Err(format!("{} answered {code}", what())),
        Err(_) => Err(format!("{} answered no HTTP status", what())),
    }
}

/// `grpc.health.v1.Health/Check` for the server as a whole.
async fn grpc_health(port: u16) -> Result<(), String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| format!("grpc {endpoint}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("grpc {endpoint}: {e}"))?;
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("grpc {endpoint}: {}", e.message()))?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("grpc {endpoint}: {}", other.as_str_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(listener: TcpListener, response: &'static str) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        s.write_all(response.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn http_status_decides() {
        for (response, healthy) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            ("HTTP/1.1 204 No Content\r\n\r\n", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            ("garbage", false),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(serve_once(listener, response));
            let probe = Probe::Http {
                port,
                path: "/health".into(),
            };
            let r = check(&probe, Duration::from_secs(2)).await;
            assert_eq!(r.is_ok(), healthy, "{response}: {r:?}");
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn tcp_and_timeouts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(
            check(&Probe::Tcp { port }, Duration::from_secs(2))
                .await
                .is_ok()
        );
        drop(listener);
        let err = check(&Probe::Tcp { port }, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
        // A server that accepts but never answers times out.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Probe::Http {
            port,
            path: "/health".into(),
        };
        let err = check(&probe, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        drop(listener);
    }
}
