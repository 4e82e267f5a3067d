//! prismctl end to end: `local up --demo` brings up prism-admin and
//! prism-launcher as units of a systemd manager, the operator commands work
//! against it, and `local down` leaves nothing behind.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use prism_launcher::pb::prism::admin::v1::{
    ListLaunchersRequest, ListLaunchersResponse, ListProcessesRequest, ListProcessesResponse,
    admin_client::AdminClient,
};
use support::{DEADLINE, daemon::free_port, eventually, text};

fn prismctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run prismctl")
}

fn root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// One demo at a time: the demo's processes listen on fixed ports.
static DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private state directory (not under /tmp: workloads run with PrivateTmp)
/// and its own ports; `local down` runs on drop if a test fails midway.
struct Stack {
    state: PathBuf,
    /// Its metrics are on the next port.
    admin_port: u16,
    env: Vec<(String, String)>,
}

/// A port for a daemon of the stack, and its metrics port (+ 1), both free,
/// below Linux's ephemeral range (32768 and up), so that no client
/// connection of a concurrent test takes it between this check and the
/// daemon's bind; not next to `other` (whose metrics are on other + 1).
/// An admin's fleet status page is 1000 above its port (three admins: +0,
/// +2, +4), free and below that range too.
fn stack_port(other: Option<u16>) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..10_000u16)
        .map(|i| 20_000 + (start - 20_000 + i * 7) % 11_000)
        .find(|&p| {
            other.is_none_or(|o| p.abs_diff(o) > 2 && p.abs_diff(o + 1000) > 5)
                && free(p)
                && free(p + 1)
                && [1000, 1002, 1004].iter().all(|d| free(p + d))
        })
        .expect("a free port pair below the ephemeral range")
}

impl Stack {
    fn new() -> Stack {
        let base = Path::new(prism_launcher::sandbox::DEFAULT_BASE);
        std::fs::create_dir_all(base).unwrap();
        let state = base.join(format!("local-{}-{}", std::process::id(), free_port()));
        // The stack serves gRPC on sockets in its state directory only.
        let admin = format!("unix:{}", state.join("admin.sock").display());
        Stack {
            admin_port: stack_port(None),
            env: vec![
                ("PRISM_LOCAL_STATE".into(), state.display().to_string()),
                ("PRISM_ADMIN".into(), admin),
            ],
            state,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        prismctl(args, &env)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "prismctl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The ids the admin holds in the benchmark's namespace.
async fn bench_processes(api: &mut AdminClient<tonic::transport::Channel>) -> Vec<String> {
    api.list_processes(ListProcessesRequest {
        namespace: "prism-bench".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .processes
    .into_iter()
    .filter_map(|p| p.assignment.map(|a| a.process_id))
    .collect()
}

impl Stack {
    /// What a benchmark left: processes the admin holds in its namespace,
    /// and units systemd still lists for it (loaded in any state).
    async fn bench_leftovers(
        &self,
        api: &mut AdminClient<tonic::transport::Channel>,
    ) -> Vec<String> {
        let mut left = bench_processes(api).await;
        let run = prism_launcher::ctl::local::sandbox_dir(&self.state).join("run");
        let units = Command::new("systemctl")
            .args(["--user", "list-units", "--all", "--plain", "--no-legend"])
            .arg("*bench*.service")
            .env("XDG_RUNTIME_DIR", &run)
            .output()
            .unwrap();
        assert!(units.status.success(), "{}", text(&units));
        left.extend(
            String::from_utf8_lossy(&units.stdout)
                .lines()
                .map(str::to_owned),
        );
        left
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.state.exists() {
            let _ = self.run(&["local", "down"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_demo_then_every_operator_command_then_nothing_left() {
    if !root() && std::env::var("CI").is_err() {
        eprintln!("SKIPPED: prismctl local needs root");
        return;
    }
    let _demo = DEMO.lock().await;
    let stack = Stack::new();
    let admin_port = stack.admin_port.to_string();
    let launcher_port = stack_port(Some(stack.admin_port)).to_string();
    let up = stack.run(&[
        "local",
        "up",
        "--demo",
        "--admin-port",
        &admin_port,
        "--launcher-port",
        &launcher_port,
    ]);
    assert!(up.status.success(), "{}", text(&up));
    let table = String::from_utf8_lossy(&up.stdout).into_owned();
    for id in ["kv-demo", "proxy-demo", "redis-demo", "logs-demo"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(id) && l.contains("running")),
            "{table}"
        );
    }
    // The table (up to the first blank line; the commands after it are
    // meant to be copied whole).
    let rows: Vec<&str> = table.lines().take_while(|l| !l.is_empty()).collect();
    assert!(
        rows.iter().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{table}"
    );
    assert!(
        text(&up).contains("starting a private one"),
        "{}",
        text(&up)
    );

    // Running `up` again is safe and says what runs.
    let again = stack.run(&[
        "local",
        "up",
        "--admin-port",
        &admin_port,
        "--launcher-port",
        &launcher_port,
    ]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already running"), "{}", text(&again));

    // The admin's fleet status page: `prismctl ui` signs a browser in over
    // HTTPS (the stack's TLS), 1000 above the admin's port.
    let ui = stack.ok(&["ui"]);
    let page = format!(
        "https://127.0.0.1:{}/login?ticket=",
        stack.admin_port + 1000
    );
    assert!(ui.contains(&page), "{ui}");
    assert!(stack.ok(&["local", "status"]).contains("fleet status page"));

    // ps: all four types running, as JSON whose fields are the admin API's.
    let json = stack.ok(&["ps", "-o", "json"]);
    let from_ctl: ListProcessesResponse = serde_json::from_str(&json).expect("ps JSON parses");
    let types: BTreeMap<String, String> = from_ctl
        .processes
        .iter()
        .map(|p| {
            let a = p.assignment.as_ref().unwrap();
            (
                a.process_type.clone(),
                p.health.as_ref().unwrap().detailed_status.clone(),
            )
        })
        .collect();
    assert_eq!(types.len(), 4, "{types:?}");
    assert!(types.values().all(|s| s == "running"), "{types:?}");
    let mut api = AdminClient::new(support::pki::unix_channel(&stack.state.join("admin.sock")));
    let launchers_json = stack.ok(&["launchers", "-o", "json"]);
    let from_ctl: ListLaunchersResponse = serde_json::from_str(&launchers_json).unwrap();
    let from_api = api
        .list_launchers(ListLaunchersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from_ctl.launchers.len(), 1);
    let (c, a) = (&from_ctl.launchers[0], &from_api.launchers[0]);
    assert_eq!(
        (
            &c.launcher_id,
            &c.address,
            c.max_processes,
            c.slots_used,
            &c.process_types
        ),
        (
            &a.launcher_id,
            &a.address,
            a.max_processes,
            a.slots_used,
            &a.process_types
        )
    );
    let yaml = stack.ok(&["ps", "-o", "yaml", "--type", "proxy"]);
    let parsed: ListProcessesResponse = serde_norway::from_str(&yaml).expect("ps YAML parses");
    assert_eq!(parsed.processes.len(), 1);

    // describe: spec, placement, and commands that work on this host.
    let described = stack.ok(&["describe", "kv-demo"]);
    assert!(
        described.contains(r"prism-pattern-kv\x2ddemo.service"),
        "{described}"
    );
    assert!(described.contains("pattern_type: keyvalue"), "{described}");
    let journalctl = described
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("journalctl "))
        .expect("a journalctl command");
    let words: Vec<&str> = journalctl.split_whitespace().collect();
    let out = Command::new(words[0])
        .args(&words[1..])
        .arg("--no-pager")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("prism-demo kv-demo ready"),
        "{journalctl}: {}",
        text(&out)
    );
    let systemctl = described
        .lines()
        .map(str::trim)
        .find(|l| l.contains("systemctl "))
        .expect("a systemctl command");
    let (env, rest) = systemctl.split_once(' ').unwrap();
    let (k, v) = env.split_once('=').unwrap();
    let words: Vec<String> = rest
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    let out = Command::new(&words[0])
        .args(&words[1..])
        .arg("--no-pager")
        .env(k, v)
        .output()
        .unwrap();
    assert!(
        text(&out).contains("active (running)"),
        "{systemctl}: {}",
        text(&out)
    );

    // logs: the workload's own output.
    let logs = stack.ok(&["logs", "kv-demo", "-n", "20"]);
    assert!(logs.contains("prism-demo kv-demo ready"), "{logs}");
    // Where redis-server is installed (CI installs it), the backend is real.
    if Path::new("/usr/bin/redis-server").exists() {
        let described = stack.ok(&["describe", "redis-demo"]);
        assert!(
            described.contains("binary: /usr/bin/redis-server"),
            "{described}"
        );
        let logs = stack.ok(&["logs", "redis-demo", "-n", "50"]);
        assert!(logs.contains("Ready to accept connections"), "{logs}");
    }

    // Each daemon serves metrics on the port after its own.
    let next = |p: &str| format!("127.0.0.1:{}", p.parse::<u16>().unwrap() + 1);
    let metrics = support::scrape(&next(&launcher_port)).await;
    assert_eq!(
        support::sample(
            &metrics,
            r#"prism_launcher_processes{type="pattern",status="running"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    let metrics = support::scrape(&next(&admin_port)).await;
    assert_eq!(
        support::sample(&metrics, r#"prism_admin_launchers{health="healthy"}"#),
        Some(1.0),
        "{metrics}"
    );
    // The launcher logs to the journal with the process id as a field.
    let journal = prism_launcher::ctl::local::sandbox_dir(&stack.state).join("log/journal");
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(&journal)
        .args(["--no-pager", "-o", "cat", "PRISM_PROCESS_ID=kv-demo"])
        .output()
        .unwrap();
    assert!(text(&out).contains("started kv-demo"), "{}", text(&out));

    // assign from a spec file and wait; revoke.
    let spec_dir = tempfile::tempdir().unwrap();
    let spec = spec_dir.path().join("extra.yaml");
    let demo = stack.state.join("bin/prism-demo");
    std::fs::write(
        &spec,
        format!(
            "- process_id: extra-1\n  process_type: utility\n  config:\n    binary: {}\n    utility:\n      utility_type: log-collector\n",
            demo.display()
        ),
    )
    .unwrap();
    let assigned = stack.run(&["assign", "-f", &spec.display().to_string()]);
    assert!(assigned.status.success(), "{}", text(&assigned));
    assert!(
        text(&assigned).contains("extra-1: running"),
        "{}",
        text(&assigned)
    );
    stack.ok(&["revoke", "extra-1"]);
    stack.ok(&["revoke", "kv-demo"]);
    let ps = stack.ok(&["ps"]);
    assert!(!ps.contains("kv-demo") && ps.contains("proxy-demo"), "{ps}");
    // A failed operation exits 1.
    assert_eq!(
        stack.run(&["revoke", "no-such-process"]).status.code(),
        Some(1)
    );

    // bench: N harmless processes in their own namespace, a JSON report,
    // and nothing left behind.
    let json = stack.ok(&["bench", "-n", "12", "-c", "4", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("bench JSON parses");
    assert_eq!(report["assigned"], 12, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["revoked"], 12, "{report}");
    assert_eq!(report["namespace"], "prism-bench", "{report}");
    let latency = &report["latency_ms"];
    assert!(
        latency["p50"].as_f64().unwrap() > 0.0
            && latency["p50"].as_f64() <= latency["p99"].as_f64()
            && report["per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(stack.bench_leftovers(&mut api).await.is_empty());
    // More than the launchers have room for: refused before anything starts.
    let full = stack.run(&["bench", "-n", "100000"]);
    assert_eq!(full.status.code(), Some(1), "{}", text(&full));
    assert!(text(&full).contains("has room for"), "{}", text(&full));

    // Ctrl-C midway: exit 130, and everything it created is revoked.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args(["bench", "-n", "400", "-c", "2", "-o", "json"])
        .envs(stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the benchmark to run processes", DEADLINE, || async {
        (bench_processes(&mut api.clone()).await.len() >= 3).then_some(())
    })
    .await;
    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let assigned = report["assigned"].as_u64().unwrap();
    assert!(report["interrupted"].as_bool().unwrap(), "{report}");
    assert!((3..400).contains(&assigned), "{report}");
    assert_eq!(report["revoked"].as_u64(), Some(assigned), "{report}");
    assert!(text(&out).contains("interrupted"), "{}", text(&out));
    assert!(stack.bench_leftovers(&mut api).await.is_empty());

    // down: nothing left — no process, unit, mount, cgroup or directory.
    let down = stack.run(&["local", "down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(!stack.state.exists(), "{} is left", stack.state.display());
    let state = stack.state.display().to_string();
    eventually("the stack's processes to be gone", DEADLINE, || async {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&state))
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&state), "a mount is left");
    let cgroup = prism_launcher::ctl::local::sandbox_dir(&stack.state);
    let name = cgroup.file_name().unwrap().to_string_lossy().into_owned();
    for root in [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup",
    ] {
        assert!(
            !Path::new(root).join(&name).exists(),
            "cgroup {root}/{name} is left"
        );
    }
    // And the admin is gone: unreachable exits 3.
    assert_eq!(stack.run(&["ps"]).status.code(), Some(3));
}

/// `local up --ha`: three admins on a PostgreSQL of the stack's own, one
/// leading; the leader killed, another leads and the processes stay; `down`
/// leaves nothing, the database included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ha_runs_three_admins_and_one_takes_over_from_a_killed_leader() {
    if !root() && std::env::var("CI").is_err() {
        eprintln!("SKIPPED: prismctl local needs root");
        return;
    }
    if prism_launcher::devstack::cluster::binaries().is_none() {
        assert!(
            std::env::var_os("PRISM_REQUIRE_POSTGRES").is_none(),
            "PRISM_REQUIRE_POSTGRES is set and no PostgreSQL is installed"
        );
        eprintln!("SKIPPED: no PostgreSQL (/usr/lib/postgresql/*/bin) here");
        return;
    }
    let _demo = DEMO.lock().await;
    let mut stack = Stack::new();
    // prismctl finds the stack's three admins itself.
    stack.env.retain(|(k, _)| k != "PRISM_ADMIN");
    // Six free ports from here: three admins, each with its metrics.
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let admin_port = (0..1000u16)
        .map(|i| stack.admin_port.wrapping_add(7 * i) % 30_000 + 2_000)
        .find(|&p| (p..p + 6).all(free))
        .expect("six free ports");
    let launcher_port = (0..1000u16)
        .map(|i| (admin_port + 100 + 7 * i) % 30_000 + 2_000)
        .find(|&p| (p + 2 < admin_port || p > admin_port + 6) && free(p) && free(p + 1))
        .expect("two free ports");
    let up = stack.run(&[
        "local",
        "up",
        "--ha",
        "--demo",
        "--admin-port",
        &admin_port.to_string(),
        "--launcher-port",
        &launcher_port.to_string(),
    ]);
    assert!(up.status.success(), "{}", text(&up));
    // (unit, "leads" or "follows", epoch) from `local status`.
    let standing = |status: &str| -> Vec<(String, String, u64)> {
        status
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (unit, s, epoch) = (f.first()?, f.get(1)?, f.get(3)?);
                let epoch = epoch.trim_end_matches(')').parse().ok()?;
                matches!(*s, "leads" | "follows").then(|| (unit.to_string(), s.to_string(), epoch))
            })
            .collect()
    };
    let status = stack.ok(&["local", "status"]);
    let admins = standing(&status);
    assert_eq!(admins.len(), 3, "{status}");
    let leaders: Vec<&(String, String, u64)> =
        admins.iter().filter(|(_, s, _)| s == "leads").collect();
    assert_eq!(leaders.len(), 1, "{status}");
    let (killed, _, epoch) = leaders[0].clone();
    assert!(status.contains("prism-local-postgres.service"), "{status}");

    let run = prism_launcher::ctl::local::sandbox_dir(&stack.state).join("run");
    let kill = Command::new("systemctl")
        .args(["--user", "kill", "-s", "KILL", &killed])
        .env("XDG_RUNTIME_DIR", &run)
        .output()
        .unwrap();
    assert!(kill.status.success(), "{}", text(&kill));
    // Another admin leads, at the next epoch (maybe the killed unit, which
    // systemd restarted as a follower).
    let status = eventually("an admin to lead at the next epoch", DEADLINE, || async {
        let out = stack.run(&["local", "status"]);
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        standing(&status)
            .iter()
            .any(|(_, s, e)| s == "leads" && *e == epoch + 1)
            .then_some(status)
    })
    .await;
    assert_eq!(
        standing(&status)
            .iter()
            .filter(|(_, s, _)| s == "leads")
            .count(),
        1,
        "{status}"
    );
    // The same processes, untouched (no restart); running, once the
    // launcher has reported to the new leader.
    eventually("the demo reported running again", DEADLINE, || async {
        let ps = String::from_utf8_lossy(&stack.run(&["ps"]).stdout).into_owned();
        ["kv-demo", "proxy-demo", "redis-demo", "logs-demo"]
            .iter()
            .all(|id| {
                ps.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(id) && f.get(4) == Some(&"running") && f.get(5) == Some(&"0")
                })
            })
            .then_some(())
    })
    .await;

    let down = stack.run(&["local", "down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        text(&down).contains("prism-local-postgres.service"),
        "{}",
        text(&down)
    );
    assert!(!stack.state.exists(), "{} is left", stack.state.display());
    let state = stack.state.display().to_string();
    eventually("the stack's processes to be gone", DEADLINE, || async {
        let left = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(&state)
            });
        (!left).then_some(())
    })
    .await;
}

#[test]
fn exit_codes_and_messages() {
    // Unreachable admin: 3, and the message says what to do.
    let out = prismctl(&["--admin", "127.0.0.1:1", "launchers"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("prismctl local up"), "{}", text(&out));
    // Usage errors: 2.
    for args in [
        vec!["ps", "--bogus"],
        vec!["nosuchcommand"],
        vec!["--admin", "ftp://x:1", "ps"],
        vec!["assign", "only-an-id"],
    ] {
        let out = prismctl(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    // A bad spec file is a usage error naming the key.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, "process_id = \"a\"\nbinray = \"/x\"\n").unwrap();
    let out = prismctl(&["assign", "-f", &spec.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("binray"), "{}", text(&out));
    // Completions and the man page come from the command definitions.
    let out = prismctl(&["completions", "bash"], &[]);
    assert!(out.status.success() && text(&out).contains("prismctl"));
    let out = prismctl(&["man"], &[]);
    assert!(out.status.success() && text(&out).contains(".TH prismctl"));
}
