//! The prism-launcher binary under test: started against a harness's
//! sandbox manager, with its own state directory, a notify socket that
//! records its sd_notify messages, and its log in a file.

use std::{
    fs,
    net::TcpListener,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use prism_launcher::pb::prism::launcher::v1::launcher_client::LauncherClient;
use tonic::transport::Channel;

use super::{DEADLINE, Harness, eventually};

pub struct Daemon {
    binary: PathBuf,
    pub child: Option<Child>,
    pub port: u16,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    notify_path: PathBuf,
    /// Every sd_notify datagram received, in order.
    pub notifications: Arc<Mutex<Vec<String>>>,
    runs: u32,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Daemon {
    /// Start prism-launcher with the harness's manager and allowlist, plus
    /// `extra` flags, and wait until it is ready.
    pub async fn start(h: &Harness, extra: &[&str]) -> Daemon {
        Self::start_named(h, "test-launcher", extra).await
    }

    /// Start prism-admin with its data under `dir`, and wait until ready.
    /// Plaintext on loopback, every peer trusted (`--insecure`).
    pub async fn admin(dir: &std::path::Path, extra: &[&str]) -> Daemon {
        let mut all = vec!["--insecure"];
        all.extend_from_slice(extra);
        Self::admin_secure(dir, &all).await
    }

    /// Start prism-admin without `--insecure`: `extra` brings TLS, or the
    /// admin serves its local socket (`<dir>/admin.sock`) only.
    pub async fn admin_secure(dir: &std::path::Path, extra: &[&str]) -> Daemon {
        fs::create_dir_all(dir).expect("admin directory");
        let port = free_port();
        let data = dir.join("admin-data");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data.display().to_string(),
            "--socket".into(),
            dir.join("admin.sock").display().to_string(),
            // Tests run many daemons at once: no fixed metrics or page port.
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--ui-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon {
            binary: env!("CARGO_BIN_EXE_prism-admin").into(),
            child: None,
            port,
            state_dir: data,
            log: dir.join("admin.log"),
            args,
            env: Vec::new(),
            notify_path: dir.join("admin-notify"),
            notifications: Arc::default(),
            runs: 0,
        };
        d.spawn();
        d.wait_ready().await;
        d
    }

    /// Like [`Daemon::start`], with this launcher id.
    pub async fn start_named(h: &Harness, id: &str, extra: &[&str]) -> Daemon {
        let port = free_port();
        let state_dir = h.sandbox.dir().join("launcher-state");
        let args = own_args(h, port, id, extra);
        let binary = env!("CARGO_BIN_EXE_prism-launcher").into();
        Self::launcher(h, binary, port, state_dir, "launcher", true, args).await
    }

    /// Like [`Daemon::start_named`] without `--insecure`: `extra` brings
    /// TLS (or `--listen none`). Its state, log and notify socket are named
    /// after `id`, so several can run on one manager.
    pub async fn start_secure(h: &Harness, id: &str, extra: &[&str]) -> Daemon {
        let port = free_port();
        let state_dir = h.sandbox.dir().join(format!("{id}-state"));
        let args = own_args(h, port, id, extra);
        let binary = env!("CARGO_BIN_EXE_prism-launcher").into();
        Self::launcher(h, binary, port, state_dir, id, false, args).await
    }

    /// Spawn the launcher `binary` with the harness's manager, `state_dir`
    /// and then `args` (trusting plaintext peers when `insecure`), its log
    /// and notify socket named after `name` in the harness's sandbox dir,
    /// and wait until it is ready.
    async fn launcher(
        h: &Harness,
        binary: PathBuf,
        port: u16,
        state_dir: PathBuf,
        name: &str,
        insecure: bool,
        extra: Vec<String>,
    ) -> Daemon {
        let mut args = host_args(h, &state_dir, &h.sandbox.dir().join("credentials"));
        if !insecure {
            args.retain(|a| a != "--insecure");
        }
        args.extend(extra);
        let mut d = Daemon {
            binary,
            child: None,
            port,
            state_dir,
            log: h.sandbox.dir().join(format!("{name}.log")),
            args,
            env: Vec::new(),
            notify_path: h.sandbox.dir().join(format!("{name}-notify")),
            notifications: Arc::default(),
            runs: 0,
        };
        d.spawn();
        d.wait_ready().await;
        d
    }

    /// Start the launcher through a `pattern-launcher` symlink with only
    /// `args` (the old flags) and the harness's manager, and wait until
    /// ready. `port` is where its gRPC ends up.
    pub async fn start_legacy(h: &Harness, port: u16, args: &[&str]) -> Daemon {
        let link = h.sandbox.dir().join("pattern-launcher");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_prism-launcher"), &link)
            .expect("pattern-launcher symlink");
        let state_dir = h.sandbox.dir().join("launcher-state");
        let args = args.iter().map(|s| s.to_string()).collect();
        Self::launcher(h, link, port, state_dir, "launcher", true, args).await
    }

    fn spawn(&mut self) {
        let _ = fs::remove_file(&self.notify_path);
        let socket = UnixDatagram::bind(&self.notify_path).expect("notify socket");
        let received = self.notifications.clone();
        received.lock().unwrap().clear();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                received
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        self.runs += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("RUST_LOG", "info,prism_launcher=debug")
            // What a process started from a service sees when its stderr is
            // redirected: the variable names a stream that is not stderr, so
            // logs must stay on stderr (which every test here reads).
            .env("JOURNAL_STREAM", "0:0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prism-launcher");
        self.child = Some(child);
    }

    /// READY=1 arrived on the notify socket since the last (re)start.
    pub async fn wait_ready(&self) {
        let log = self.log.clone();
        eventually(
            &format!("READY=1 (log: {})", log.display()),
            DEADLINE,
            || async {
                let ready = self
                    .notifications
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|m| m.lines().any(|l| l == "READY=1"));
                ready.then_some(())
            },
        )
        .await;
    }

    /// A plaintext channel to it.
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> LauncherClient<Channel> {
        LauncherClient::connect(format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("connect to prism-launcher")
    }

    /// Where it serves /metrics (from its log: tests bind port 0).
    pub async fn metrics_addr(&self) -> String {
        eventually("the metrics address in the log", DEADLINE, || async {
            let log = self.log_text();
            let at = log.rfind("metrics at http://")? + "metrics at http://".len();
            let addr = log[at..].split('/').next()?;
            Some(addr.to_owned())
        })
        .await
    }

    /// Where an admin serves its fleet status page (from its log: tests
    /// bind port 0): `http[s]://127.0.0.1:PORT`.
    pub async fn ui_url(&self) -> String {
        eventually("the page's address in the log", DEADLINE, || async {
            let log = self.log_text();
            let at = log.rfind("fleet status page at ")? + "fleet status page at ".len();
            let url = log[at..].split_whitespace().next()?;
            Some(url.to_owned())
        })
        .await
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The latest STATUS= the daemon sent.
    pub fn last_status(&self) -> Option<String> {
        self.notifications
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            })
    }

    /// It was started with `arg` among its arguments.
    pub fn args_contain(&self, arg: &str) -> bool {
        self.args.iter().any(|a| a == arg)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        assert!(
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        eventually("prism-launcher to exit", DEADLINE, || {
            let r = c.try_wait().expect("wait");
            async move { r }
        })
        .await
    }

    /// Start it again with the same flags and state, and wait for READY.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    /// Files in the desired-state directory.
    pub fn state_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.state_dir.join("processes"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = fs::remove_file(&self.notify_path);
    }
}

/// A test launcher's own flags, then `extra`: its port on loopback, the
/// harness's allowlist, its id, and no fixed metrics port (tests run many
/// daemons at once).
fn own_args(h: &Harness, port: u16, id: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--allow-binary-dir".into(),
        h.bin_dir.display().to_string(),
        "--launcher-id".into(),
        id.into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The launcher flags that tie it to the harness's manager and give it its
/// own state and credentials directories and local socket (beside the state
/// directory), and trust plaintext TCP peers (the security tests in
/// tests/auth.rs start their daemons without `--insecure`).
pub fn host_args(h: &Harness, state_dir: &Path, credentials_dir: &Path) -> Vec<String> {
    vec![
        "--insecure".into(),
        "--socket".into(),
        state_dir.with_extension("sock").display().to_string(),
        "--systemd".into(),
        format!("bus:{}", h.sandbox.bus_address()),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--credentials-dir".into(),
        credentials_dir.display().to_string(),
    ]
}

/// Run a `prism-launcher` that is expected to exit on its own.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prism-launcher"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prism-launcher");
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status.code(), text);
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("prism-launcher {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
