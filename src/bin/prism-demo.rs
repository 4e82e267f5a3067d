//! prism-demo: a stand-in Prism workload for demos and tests.
//!
//! It serves `GET /health` on `$HEALTH_PORT`, logs to stdout, reports
//! readiness and watchdog pings through sd_notify when systemd asks for
//! them, and exits 0 on SIGTERM. Flags make it misbehave on purpose.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

#[derive(Parser, Debug)]
#[command(version, about = "A demo Prism workload that can misbehave on request")]
struct Args {
    /// Exit with this status right after starting (a crash loop under Restart=).
    #[arg(long, value_name = "STATUS")]
    crash_at_start: Option<i32>,
    /// Answer /health with 503 after this many seconds.
    #[arg(long, value_name = "SECS")]
    fail_health_after: Option<f64>,
    /// Keep running on SIGTERM (only SIGKILL stops it).
    #[arg(long)]
    ignore_sigterm: bool,
    /// Stop sending watchdog pings after this many seconds.
    #[arg(long, value_name = "SECS")]
    stop_watchdog_after: Option<f64>,
    /// Wait this long before reporting READY=1.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    ready_delay_ms: u64,
    /// Print the PRISM_* environment and credential names at start.
    #[arg(long)]
    print_env: bool,
    /// Print this argument as received (`echo: ARG`); repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    echo: Vec<String>,
}

fn log(msg: impl AsRef<str>) {
    // stdout goes to the journal under the unit's SyslogIdentifier.
    println!("{}", msg.as_ref());
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    // Handlers first, so a SIGTERM right after start is handled, not fatal.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let id = std::env::var("PRISM_PROCESS_ID").unwrap_or_else(|_| "prism-demo".into());
    log(format!(
        "prism-demo {id} starting (pid {})",
        std::process::id()
    ));

    if let Some(status) = args.crash_at_start {
        log(format!(
            "prism-demo {id} crashing on purpose with status {status}"
        ));
        std::process::exit(status);
    }
    for arg in &args.echo {
        log(format!("echo: {arg}"));
    }
    if args.print_env {
        let mut vars: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PRISM_") || k.ends_with("PORT") || k == "LOG_LEVEL")
            .collect();
        vars.sort();
        for (k, v) in vars {
            log(format!("env {k}={v}"));
        }
        if let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") {
            log(format!("credentials directory {dir}"));
        }
    }

    let started = Instant::now();
    let healthy = Arc::new(AtomicBool::new(true));
    if let Some(port) = std::env::var("HEALTH_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => {
                log(format!("serving /health on 127.0.0.1:{port}"));
                tokio::spawn(serve_health(listener, healthy.clone()));
            }
            Err(e) => {
                log(format!("cannot bind health port {port}: {e}"));
                std::process::exit(1);
            }
        }
    }
    if let Some(after) = args.fail_health_after {
        let healthy = healthy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            log("health now failing on purpose");
            healthy.store(false, Ordering::SeqCst);
        });
    }

    tokio::time::sleep(Duration::from_millis(args.ready_delay_ms)).await;
    // Without NOTIFY_SOCKET this does nothing, as under Type=exec.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    log(format!("prism-demo {id} ready"));

    if let Some(interval) = sd_notify::watchdog_enabled() {
        let stop_after = args.stop_watchdog_after.map(Duration::from_secs_f64);
        tokio::spawn(async move {
            loop {
                if stop_after.is_some_and(|d| started.elapsed() >= d) {
                    log("watchdog pings stopped on purpose");
                    return;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(interval / 3).await;
            }
        });
    }

    loop {
        tokio::select! {
            _ = term.recv() => {
                if args.ignore_sigterm {
                    log("SIGTERM received and ignored on purpose");
                    continue;
                }
                log("SIGTERM received, exiting");
                break;
            }
            _ = int.recv() => {
                log("SIGINT received, exiting");
                break;
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// A minimal HTTP/1.1 responder: 200 on /health while healthy, else 503.
async fn serve_health(listener: TcpListener, healthy: Arc<AtomicBool>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let healthy = healthy.clone();
        tokio::spawn(async move {
            // The request line and headers, up to the blank line (or 1 KiB):
            // closing with a request half read would reset the connection.
            let mut buf = [0u8; 1024];
            let mut n = 0;
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(read)) => n += read,
                }
            }
            if n == 0 {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = if path != "/health" {
                ("404 Not Found", "not found\n")
            } else if healthy.load(Ordering::SeqCst) {
                ("200 OK", "ok\n")
            } else {
                ("503 Service Unavailable", "unhealthy\n")
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}
