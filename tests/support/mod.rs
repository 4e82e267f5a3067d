//! Shared harness: a real systemd user manager per test (see
//! `prism_launcher::sandbox`), the demo workload placed where the sandbox's
//! dynamic users can run it, and helpers that read state back from systemd
//! and the journal, waiting on conditions with deadlines.
//!
//! Under `CI=true` a sandbox that cannot start fails the test loudly. Only
//! outside CI, and only when not root, is a test skipped, with a message.
#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod fake;
pub mod pki;

use std::{
    collections::HashMap,
    fs,
    future::Future,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use prism_launcher::{
    model::{ManagedProcess, Policy},
    pb::prism as pb,
    sandbox::{DEFAULT_BASE, Sandbox, SandboxError},
    systemd::{DbusSystemd, Options, Target},
};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Harness {
    pub sandbox: Sandbox,
    /// Allowlisted directory holding the demo workload.
    pub bin_dir: PathBuf,
    pub demo: PathBuf,
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fresh sandbox manager, or `None` when the test must be skipped.
pub fn sandbox() -> Option<Harness> {
    let base = std::env::var_os("PRISM_SANDBOX_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE));
    match Sandbox::start(&base) {
        Ok(sandbox) => {
            let bin_dir = sandbox.dir().join("bin");
            fs::create_dir_all(&bin_dir).expect("create sandbox bin dir");
            fs::set_permissions(&bin_dir, fs::Permissions::from_mode(0o755)).expect("chmod bin");
            let demo = bin_dir.join("prism-demo");
            fs::copy(env!("CARGO_BIN_EXE_prism-demo"), &demo).expect("copy prism-demo");
            Some(Harness {
                sandbox,
                bin_dir,
                demo,
            })
        }
        Err(SandboxError::NotRoot { uid }) if !in_ci() => {
            // Straight to stderr: libtest captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {}: needs a sandbox systemd manager, which needs root \
                 (uid is {uid}); run the tests as root to include it",
                std::thread::current().name().unwrap_or("test")
            );
            None
        }
        Err(e) => panic!("cannot start a sandbox systemd manager: {e}"),
    }
}

/// `let Some(h) = harness!() else { return };`
#[macro_export]
macro_rules! harness {
    () => {
        support::sandbox()
    };
}

impl Harness {
    pub fn options(&self, target: Target) -> Options {
        Options {
            target,
            call_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(30),
            credentials_dir: self.sandbox.dir().join("credentials"),
            ..Options::default()
        }
    }

    /// The production code path: the bus, with `org.freedesktop.systemd1`.
    pub fn bus(&self) -> Target {
        Target::Bus(self.sandbox.bus_address())
    }

    pub fn private(&self) -> Target {
        Target::Private(self.sandbox.private_address())
    }

    pub async fn engine(&self) -> DbusSystemd {
        DbusSystemd::connect(self.options(self.bus()))
            .await
            .expect("connect to the sandbox manager")
    }

    pub fn policy(&self) -> Policy {
        Policy::with_binary_dirs([self.bin_dir.clone()]).expect("policy")
    }

    /// Validate a wire assignment with this harness's allowlist.
    pub fn process(&self, wire: pb::ProcessAssignment) -> ManagedProcess {
        ManagedProcess::try_from((wire, &self.policy()))
            .and_then(|p| p.on_host(&self.policy()))
            .expect("valid assignment")
    }

    /// `systemctl --user show -p <props> <unit>` as a map.
    pub fn show(&self, unit: &str, props: &[&str]) -> HashMap<String, String> {
        let out = self
            .sandbox
            .systemctl()
            .arg("show")
            .arg(format!("-p{}", props.join(",")))
            .arg("--")
            .arg(unit)
            .output()
            .expect("run systemctl show");
        assert!(out.status.success(), "systemctl show: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// `systemctl --user <args>` against the sandbox manager; fails the
    /// test, with the journal's last lines, unless it succeeds.
    pub fn systemctl(&self, args: &[&str]) {
        let out = self.sandbox.systemctl().args(args).output().unwrap();
        if !out.status.success() {
            let journal = self
                .sandbox
                .journalctl()
                .args(["-n", "40"])
                .output()
                .unwrap();
            panic!(
                "systemctl {args:?}: {}\njournal:\n{}",
                text(&out),
                text(&journal)
            );
        }
    }

    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.show(unit, &[prop]).remove(prop).unwrap_or_default()
    }

    /// Lines the journal holds for a syslog identifier.
    pub fn journal(&self, identifier: &str) -> Vec<String> {
        let out = self
            .sandbox
            .journalctl()
            .args(["-o", "cat", "-t", identifier])
            .output()
            .expect("run journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Wait until prism-demo running as `id` logged that it is ready (its
    /// signal handlers are installed by then).
    pub async fn wait_ready(&self, id: &str) {
        let line = format!("prism-demo {id} ready");
        eventually(&format!("{id} to log readiness"), DEADLINE, || async {
            self.journal(id).contains(&line).then_some(())
        })
        .await;
    }

    /// Unit names systemd lists for the launcher's pattern.
    pub fn listed_units(&self) -> Vec<String> {
        let out = self
            .sandbox
            .systemctl()
            .args(["list-units", "--all", "--plain", "--no-legend"])
            .args(prism_launcher::unit::SERVICE_PATTERNS)
            .output()
            .expect("run systemctl list-units");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }
}

// ---- for the benchmarks ----

/// `--name N` from the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// `VmRSS` of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Poll `check` until it yields a value or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- wire assignments, one per process type ----

/// An assignment with its config changed by `f`.
pub fn with_config(
    mut wire: pb::ProcessAssignment,
    f: impl FnOnce(&mut pb::ProcessConfig),
) -> pb::ProcessAssignment {
    f(wire.config.as_mut().expect("config"));
    wire
}

pub fn config(binary: &Path, args: &[&str]) -> pb::ProcessConfig {
    pb::ProcessConfig {
        binary: binary.display().to_string(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub fn pattern(id: &str, binary: &Path, args: &[&str]) -> pb::ProcessAssignment {
    let mut config = config(binary, args);
    config.pattern = Some(pb::PatternProcessConfig {
        pattern_type: "keyvalue".into(),
        ..Default::default()
    });
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "pattern".into(),
        namespace: "orders".into(),
        config: Some(config),
        version: 1,
    }
}

pub fn proxy(id: &str, binary: &Path, args: &[&str]) -> pb::ProcessAssignment {
    let mut config = config(binary, args);
    config.proxy = Some(pb::ProxyProcessConfig {
        admin_endpoint: "127.0.0.1:8981".into(),
        control_port: 9090,
        data_port: 8980,
        proxy_id: "proxy-01".into(),
        partition_ranges: vec![0, 127],
    });
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "proxy".into(),
        namespace: String::new(),
        config: Some(config),
        version: 1,
    }
}

pub fn backend(id: &str, binary: &Path, args: &[&str]) -> pb::ProcessAssignment {
    let mut config = config(binary, args);
    config.backend = Some(pb::BackendProcessConfig {
        backend_type: "redis".into(),
        connection_string: "redis://:hunter2@127.0.0.1:6379/0".into(),
        credentials: [("password".to_owned(), "s3cr3t-value".to_owned())].into(),
        driver_options: [("pool_size".to_owned(), "8".to_owned())].into(),
    });
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "backend".into(),
        namespace: "orders".into(),
        config: Some(config),
        version: 1,
    }
}

pub fn utility(id: &str, binary: &Path, args: &[&str]) -> pb::ProcessAssignment {
    let mut config = config(binary, args);
    config.utility = Some(pb::UtilityProcessConfig {
        utility_type: "log-collector".into(),
        settings: [("format".to_owned(), "json".to_owned())].into(),
        target_processes: vec!["kv-1".into()],
    });
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "utility".into(),
        namespace: String::new(),
        config: Some(config),
        version: 1,
    }
}

/// `GET /metrics` from a daemon's metrics listener; the body.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to the metrics listener {addr}: {e}"));
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_owned()
}

/// The value of one sample (`name{labels}` exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

/// The services a server lists over gRPC reflection, as (v1, v1alpha),
/// each sorted.
pub async fn reflected_services(channel: tonic::transport::Channel) -> (Vec<String>, Vec<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let v1_names = {
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut stream = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(futures_util::stream::iter([request]))
            .await
            .expect("reflection v1")
            .into_inner();
        let reply = stream.message().await.unwrap().expect("a v1 reply");
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            reply.message_response
        else {
            panic!("unexpected v1 reflection reply");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    };
    let v1alpha_names = {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut stream = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
            .server_reflection_info(futures_util::stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let reply = stream.message().await.unwrap().expect("a v1alpha reply");
        let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            reply.message_response
        else {
            panic!("unexpected v1alpha reflection reply");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    };
    (v1_names, v1alpha_names)
}
