//! `prismctl describe` and `prismctl logs`, and the exact `systemctl` and
//! `journalctl` commands that inspect a process on its host.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::{
    Error, Global,
    client::call_failed,
    fleet::status_of,
    output::{duration, out, structured},
};
use crate::{pb::prism::admin::v1 as apb, protocol::redact};

/// How to reach a launcher's systemd manager from a shell on its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostTools {
    /// Environment to set first (a private manager's runtime directory).
    pub env: Vec<(String, String)>,
    /// `systemctl --user` rather than `systemctl`.
    pub user: bool,
    /// The journal directory of a private manager (`journalctl -D`).
    pub journal_dir: Option<PathBuf>,
}

impl HostTools {
    /// From the `systemd` metadata a launcher registers with.
    pub fn from_target(target: &str) -> Self {
        let path = target
            .strip_prefix("private:unix:path=")
            .or_else(|| target.strip_prefix("bus:unix:path="));
        if let Some(path) = path {
            // <runtime dir>/systemd/private or <runtime dir>/bus
            let p = Path::new(path);
            let runtime = if p.ends_with("systemd/private") {
                p.parent().and_then(Path::parent)
            } else {
                p.parent()
            };
            if let Some(runtime) = runtime {
                let journal = runtime.parent().map(|d| d.join("log/journal"));
                return Self {
                    env: vec![("XDG_RUNTIME_DIR".into(), runtime.display().to_string())],
                    user: true,
                    journal_dir: journal.filter(|j| j.exists()),
                };
            }
        }
        Self {
            env: vec![],
            user: target == "user",
            journal_dir: None,
        }
    }

    fn prefix(&self) -> String {
        self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect()
    }

    /// `systemctl status '<unit>'`, as typed on the host.
    pub fn systemctl(&self, unit: &str) -> String {
        let user = if self.user { "--user " } else { "" };
        format!("{}systemctl {user}status '{unit}'", self.prefix())
    }

    /// `journalctl` for a process's output, as typed on the host.
    pub fn journalctl(&self, id: &str, unit: &str) -> String {
        match &self.journal_dir {
            Some(dir) => format!("journalctl -D {} -t {id}", dir.display()),
            None if self.user => format!("journalctl --user -u '{unit}'"),
            None => format!("journalctl -u '{unit}'"),
        }
    }

    /// The journalctl argv (without a shell) for `prismctl logs`.
    pub fn journalctl_args(&self, id: &str) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(dir) = &self.journal_dir {
            args.push("-D".into());
            args.push(dir.display().to_string());
        } else if self.user {
            args.push("--user".into());
        }
        args.push("-t".into());
        args.push(id.into());
        args
    }
}

pub use crate::display::{prune, timestamp};

/// The dependency graph around one process: what it depends on, and what
/// depends on it, each with its status, from the admin's whole listing.
#[derive(Serialize, Default)]
struct Graph {
    depends_on: Vec<String>,
    needed_by: Vec<String>,
}

fn graph(id: &str, spec: &crate::pb::prism::ProcessAssignment, all: &[apb::ProcessInfo]) -> Graph {
    let status = |pid: &str| -> String {
        all.iter()
            .find(|p| p.assignment.as_ref().is_some_and(|a| a.process_id == pid))
            .map_or_else(|| "not assigned".to_owned(), status_of)
    };
    let deps = spec
        .config
        .as_ref()
        .map(|c| c.depends_on.clone())
        .unwrap_or_default();
    let depends_on = deps
        .iter()
        .map(|d| {
            format!(
                "{} ({}{})",
                d.process_id,
                status(&d.process_id),
                if d.bind { ", bound: stops with it" } else { "" }
            )
        })
        .collect();
    let mut needed_by: Vec<String> = all
        .iter()
        .filter_map(|p| {
            let a = p.assignment.as_ref()?;
            let d = a
                .config
                .as_ref()?
                .depends_on
                .iter()
                .find(|d| d.process_id == id)?;
            Some(format!(
                "{} ({}{})",
                a.process_id,
                status_of(p),
                if d.bind {
                    ", bound: stops with this"
                } else {
                    ""
                }
            ))
        })
        .collect();
    needed_by.sort();
    Graph {
        depends_on,
        needed_by,
    }
}

async fn process_and_launcher(
    g: &Global,
    id: &str,
    history: i32,
) -> Result<(apb::ProcessInfo, Option<apb::LauncherInfo>), Error> {
    let mut admin = g.admin.connect().await?;
    let p = admin
        .api
        .get_process(apb::GetProcessRequest {
            process_id: id.into(),
            history_limit: history,
        })
        .await
        .map_err(|s| call_failed(&format!("describing {id}"), s))?
        .into_inner();
    let launcher = if p.launcher_id.is_empty() {
        None
    } else {
        admin
            .api
            .get_launcher(apb::GetLauncherRequest {
                launcher_id: p.launcher_id.clone(),
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
    };
    Ok((p, launcher))
}

fn tools_of(launcher: Option<&apb::LauncherInfo>) -> HostTools {
    HostTools::from_target(
        launcher
            .and_then(|l| l.metadata.get("systemd"))
            .map_or("system", String::as_str),
    )
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// The process.
    pub id: String,
    /// History events to show.
    #[arg(long, default_value_t = 20)]
    pub history: i32,
    /// After the description, print the process's events as they happen
    /// (until Ctrl-C).
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Serialize)]
struct Described<'a> {
    process: &'a apb::ProcessInfo,
    launcher: Option<&'a apb::LauncherInfo>,
    systemctl: String,
    journalctl: String,
    dependencies: Graph,
}

/// `describe -w`: the process's events from `revision` on, as they happen.
async fn watch_one(g: &Global, id: &str, revision: i64) -> Result<(), Error> {
    let req = apb::WatchRequest {
        process_id: id.to_owned(),
        ..Default::default()
    };
    let mut follow = super::watch::from(g, req, revision);
    if matches!(
        g.output,
        super::output::Format::Table | super::output::Format::Wide
    ) {
        out(&format!(
            "\nWatching {id} (Ctrl-C to stop):\n{}",
            super::watch::HEADER
        ));
    }
    loop {
        let e = follow.next().await?;
        if e.kind == crate::admin::events::BOOKMARK {
            continue;
        }
        match g.output {
            super::output::Format::Json => out(&format!(
                "{}\n",
                serde_json::to_string(&e).map_err(|err| Error::Failed(err.to_string()))?
            )),
            super::output::Format::Yaml => out(&format!(
                "---\n{}",
                serde_norway::to_string(&e).map_err(|err| Error::Failed(err.to_string()))?
            )),
            _ => out(&super::watch::line(&e)),
        }
    }
}

pub async fn describe(g: &Global, a: &DescribeArgs) -> Result<(), Error> {
    let (p, launcher) = process_and_launcher(g, &a.id, a.history).await?;
    let tools = tools_of(launcher.as_ref());
    let spec = p.assignment.clone().map(|s| redact(&s)).unwrap_or_default();
    let systemctl = tools.systemctl(&p.unit_name);
    let journalctl = tools.journalctl(&a.id, &p.unit_name);
    let listing = g
        .admin
        .connect()
        .await?
        .api
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .map_err(|s| call_failed("listing processes", s))?
        .into_inner();
    let (all, revision) = (listing.processes, listing.revision);
    let described = Described {
        process: &p,
        launcher: launcher.as_ref(),
        systemctl: systemctl.clone(),
        journalctl: journalctl.clone(),
        dependencies: graph(&a.id, &spec, &all),
    };
    if let Some(text) = structured(g.output, &described)? {
        out(&text);
        return if a.watch {
            watch_one(g, &a.id, revision).await
        } else {
            Ok(())
        };
    }
    let h = p.health.clone().unwrap_or_default();
    let ty = if spec.process_type.is_empty() {
        "pattern"
    } else {
        &spec.process_type
    };
    let mut text = format!(
        "Process:     {} ({ty}{}), version {}\n",
        spec.process_id,
        if spec.namespace.is_empty() {
            String::new()
        } else {
            format!(", namespace {}", spec.namespace)
        },
        spec.version
    );
    text.push_str(&format!(
        "Placement:   {} on {}{}\n",
        p.placement,
        p.launcher_id,
        launcher
            .as_ref()
            .map(|l| format!(" ({}, {})", l.address, l.health))
            .unwrap_or_default()
    ));
    text.push_str(&format!("Unit:        {}\n", p.unit_name));
    let deps = &described.dependencies;
    if !deps.depends_on.is_empty() {
        text.push_str(&format!("Depends on:  {}\n", deps.depends_on.join(", ")));
    }
    if !deps.needed_by.is_empty() {
        text.push_str(&format!("Needed by:   {}\n", deps.needed_by.join(", ")));
    }
    text.push_str(&format!(
        "Status:      {}{}{}, {} restarts\n",
        status_of(&p),
        if h.pid > 0 {
            format!(", pid {}", h.pid)
        } else {
            String::new()
        },
        // While its launcher is disconnected, nobody knows how long it runs.
        if h.uptime_seconds > 0 && p.unknown_since_unix_ms == 0 {
            format!(", up {}", duration(h.uptime_seconds))
        } else {
            String::new()
        },
        h.restart_count
    ));
    if !h.exit_reason.is_empty() {
        text.push_str(&format!("Last exit:   {}\n", h.exit_reason));
    }
    if !h.last_error.is_empty() {
        text.push_str(&format!("Last error:  {}\n", h.last_error));
    }
    if p.health_reported_unix_ms > 0 {
        text.push_str(&format!(
            "Reported:    {} UTC\n",
            timestamp(p.health_reported_unix_ms)
        ));
    }
    text.push_str("\nSpec (credentials redacted, defaults omitted):\n");
    let yaml = serde_norway::to_value(&spec)
        .map(prune)
        .and_then(|v| serde_norway::to_string(&v))
        .unwrap_or_default();
    for line in yaml.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str("\nHistory (newest first):\n");
    for e in &p.history {
        text.push_str(&format!(
            "  {}  {:<10} v{:<3} {:<12} {}\n",
            timestamp(e.at_unix_ms),
            e.event,
            e.version,
            e.launcher_id,
            e.detail
        ));
    }
    text.push_str(&format!(
        "\nInspect it on its host{}:\n  {systemctl}\n  {journalctl}\n",
        launcher
            .as_ref()
            .map(|l| format!(" ({})", l.launcher_id))
            .unwrap_or_default()
    ));
    out(&text);
    if a.watch {
        return watch_one(g, &a.id, revision).await;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The process.
    pub id: String,
    /// Keep following new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Show the last N lines.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
    pub lines: u32,
}

/// The process's journal on this host, through journalctl (no shell).
pub async fn logs(g: &Global, a: &LogsArgs) -> Result<(), Error> {
    let (_, launcher) = process_and_launcher(g, &a.id, 0).await?;
    let tools = tools_of(launcher.as_ref());
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(tools.journalctl_args(&a.id)).args([
        "-n",
        &a.lines.to_string(),
        "--no-pager",
        "-o",
        "short-iso",
    ]);
    if a.follow {
        cmd.arg("-f");
    }
    for (k, v) in &tools.env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| {
        Error::Failed(format!(
            "cannot run journalctl ({e}); is systemd's journalctl installed?"
        ))
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "journalctl exited with {status}; the process runs on launcher {} — run this on its host",
            launcher.map(|l| l.launcher_id).unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_commands_per_target() {
        let unit = r"prism-pattern-kv\x2d1.service";
        let system = HostTools::from_target("system");
        assert_eq!(system.systemctl(unit), format!("systemctl status '{unit}'"));
        assert_eq!(
            system.journalctl("kv-1", unit),
            format!("journalctl -u '{unit}'")
        );
        let user = HostTools::from_target("user");
        assert_eq!(
            user.systemctl(unit),
            format!("systemctl --user status '{unit}'")
        );
        let private = HostTools::from_target("private:unix:path=/var/lib/x/m/run/systemd/private");
        assert_eq!(
            private.systemctl(unit),
            format!("XDG_RUNTIME_DIR=/var/lib/x/m/run systemctl --user status '{unit}'")
        );
        assert_eq!(private.journalctl_args("kv-1"), ["--user", "-t", "kv-1"]);
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_795_685_523_000), "2026-11-26 09:32:03");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
    }
}
