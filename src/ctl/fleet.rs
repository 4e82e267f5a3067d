//! `prismctl launchers`, `ps`, `revoke`, `drain` and `undrain`.

use clap::Args;

use super::{
    Error, Global,
    client::call_failed,
    output::{Format, ago, duration, out, structured, table, terminal_width},
};
use crate::pb::prism::{self as pb, admin::v1 as apb};

pub async fn launchers(g: &Global) -> Result<(), Error> {
    let mut admin = g.admin.connect().await?;
    let list = admin
        .api
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .map_err(|s| call_failed("listing launchers", s))?
        .into_inner();
    if let Some(text) = structured(g.output, &list)? {
        out(&text);
        return Ok(());
    }
    if list.launchers.is_empty() {
        out("No launchers are registered.\n");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .launchers
        .iter()
        .map(|l| {
            vec![
                l.launcher_id.clone(),
                l.address.clone(),
                l.region.clone(),
                format!("{}{}", l.health, if l.draining { ",draining" } else { "" }),
                format!("{}/{}", l.slots_used, l.max_processes),
                l.process_types.join(","),
                ago(l.last_heartbeat_unix_ms),
            ]
        })
        .collect();
    out(&table(
        &[
            "ID",
            "ADDRESS",
            "REGION",
            "HEALTH",
            "SLOTS",
            "TYPES",
            "HEARTBEAT",
        ],
        &rows,
        (g.output != Format::Wide).then(terminal_width),
    ));
    Ok(())
}

#[derive(Args, Debug, Default)]
pub struct PatternsArgs {
    /// The launcher: its local socket (unix:PATH) or host:port [default:
    /// the packaged launcher's socket, /run/prism-launcher/launcher.sock].
    #[arg(long, value_name = "ADDRESS")]
    pub launcher_endpoint: Option<String>,
    /// Over TLS, the id the launcher's certificate must name.
    #[arg(long, value_name = "ID")]
    pub launcher: Option<String>,
}

/// A launcher's pattern manifests, loaded and skipped.
pub async fn patterns(g: &Global, args: &PatternsArgs) -> Result<(), Error> {
    let endpoint = args
        .launcher_endpoint
        .clone()
        .unwrap_or_else(|| format!("unix:{}", crate::protocol::LAUNCHER_SOCKET));
    let (channel, url) = g
        .admin
        .dial(
            "--launcher-endpoint",
            &endpoint,
            crate::auth::dial::Expect::Launcher(args.launcher.clone().unwrap_or_default()),
        )
        .await?;
    let list = crate::pb::prism::launcher::v1::launcher_client::LauncherClient::new(channel)
        .list_manifests(crate::pb::prism::launcher::v1::ListManifestsRequest {})
        .await
        .map_err(|s| call_failed("listing pattern manifests", s))?
        .into_inner();
    if let Some(text) = structured(g.output, &list)? {
        out(&text);
        return Ok(());
    }
    if list.patterns_dir.is_empty() {
        out(&format!(
            "The launcher at {url} reads no pattern manifests (it has no --patterns-dir).\n"
        ));
        return Ok(());
    }
    if list.manifests.is_empty() {
        out(&format!(
            "No pattern manifests loaded from {}.\n",
            list.patterns_dir
        ));
    } else {
        let rows: Vec<Vec<String>> = list
            .manifests
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.version.clone(),
                    m.isolation_level.clone(),
                    m.executable.clone(),
                    if m.health_path.is_empty() {
                        "-".into()
                    } else {
                        format!("http {}", m.health_path)
                    },
                    match m.memory_limit_bytes {
                        0 => "-".into(),
                        b => format!("{} MiB", b / (1024 * 1024)),
                    },
                    if m.cpu_limit > 0.0 {
                        format!("{}", m.cpu_limit)
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        out(&table(
            &[
                "NAME",
                "VERSION",
                "ISOLATION",
                "EXECUTABLE",
                "PROBE",
                "MEMORY",
                "CPUS",
            ],
            &rows,
            (g.output != Format::Wide).then(terminal_width),
        ));
    }
    if !list.skipped.is_empty() {
        out(&format!("\nSkipped ({}):\n", list.skipped.len()));
        for s in &list.skipped {
            let at = if s.field.is_empty() {
                String::new()
            } else {
                format!("{}: ", s.field)
            };
            out(&format!("  {}: {at}{}\n", s.path, s.reason));
        }
    }
    Ok(())
}

#[derive(Args, Debug, Default)]
pub struct PsArgs {
    /// Only processes of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub process_type: Option<String>,
    /// Only processes on this launcher (with --launcher-endpoint: the id
    /// its certificate must name, over TLS).
    #[arg(long)]
    pub launcher: Option<String>,
    /// Ask this launcher directly, not the admin: its local socket
    /// (unix:PATH) or host:port. For a launcher run without an admin; with
    /// --watch, its own stream of changes.
    #[arg(long, value_name = "ADDRESS")]
    pub launcher_endpoint: Option<String>,
    /// Only processes in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only processes with this status (running, starting, unhealthy,
    /// circuit_open...) or placement (placed, pending, revoking).
    #[arg(long)]
    pub status: Option<String>,
    /// After the listing, print each process again as it changes (until
    /// Ctrl-C).
    #[arg(short, long)]
    pub watch: bool,
}

/// Status as the launcher last reported it, or the placement before that.
pub fn status_of(p: &apb::ProcessInfo) -> String {
    status_shown(p, true)
}

/// The status as a table shows it: while its launcher is disconnected,
/// `unknown` and since when (`wide`: and what it last said).
fn status_shown(p: &apb::ProcessInfo, wide: bool) -> String {
    if p.unknown_since_unix_ms > 0 {
        let ago = duration((crate::clock::unix_ms() - p.unknown_since_unix_ms).max(0) / 1000);
        if !wide {
            return format!("unknown {ago}");
        }
        let known = if p.last_known_status.is_empty() {
            "never reported"
        } else {
            p.last_known_status.as_str()
        };
        return format!("unknown ({known} {ago} ago)");
    }
    match &p.health {
        Some(h) if !h.detailed_status.is_empty() => h.detailed_status.clone(),
        Some(h) if !h.status.is_empty() => h.status.clone(),
        _ => p.placement.clone(),
    }
}

pub async fn ps(g: &Global, a: &PsArgs) -> Result<(), Error> {
    if let Some(endpoint) = &a.launcher_endpoint {
        return ps_launcher(g, a, endpoint).await;
    }
    let mut admin = g.admin.connect().await?;
    let list = admin
        .api
        .list_processes(apb::ListProcessesRequest {
            process_type: a.process_type.clone().unwrap_or_default(),
            launcher_id: a.launcher.clone().unwrap_or_default(),
            namespace: a.namespace.clone().unwrap_or_default(),
            status: a.status.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| call_failed("listing processes", s))?
        .into_inner();
    if a.watch {
        return ps_watch(g, a, list).await;
    }
    if let Some(text) = structured(g.output, &list)? {
        out(&text);
        return Ok(());
    }
    out(&ps_table(&list.processes, g.output == Format::Wide));
    Ok(())
}

/// The `ps` table; `wide` adds the unit, why the process last ended, and
/// the last error.
pub fn ps_table(processes: &[apb::ProcessInfo], wide: bool) -> String {
    if processes.is_empty() {
        return "No processes.\n".into();
    }
    let mut rows: Vec<Vec<String>> = processes.iter().map(|p| ps_row(p, wide)).collect();
    rows.sort();
    table(&ps_header(wide), &rows, (!wide).then(terminal_width))
}

fn ps_header(wide: bool) -> Vec<&'static str> {
    let mut header = vec![
        "ID",
        "TYPE",
        "NAMESPACE",
        "LAUNCHER",
        "STATUS",
        "RESTARTS",
        "UPTIME",
        "PID",
    ];
    if wide {
        header.extend(["UNIT", "LAST EXIT", "LAST ERROR"]);
    }
    header
}

fn ps_row(p: &apb::ProcessInfo, wide: bool) -> Vec<String> {
    let a = p.assignment.clone().unwrap_or_default();
    let h = p.health.clone().unwrap_or_default();
    let mut row = vec![
        a.process_id,
        if a.process_type.is_empty() {
            "pattern".into()
        } else {
            a.process_type
        },
        if a.namespace.is_empty() {
            "-".into()
        } else {
            a.namespace
        },
        p.launcher_id.clone(),
        status_shown(p, wide),
        h.restart_count.to_string(),
        if h.uptime_seconds > 0 && p.unknown_since_unix_ms == 0 {
            duration(h.uptime_seconds)
        } else {
            "-".into()
        },
        if h.pid > 0 {
            h.pid.to_string()
        } else {
            "-".into()
        },
    ];
    if wide {
        row.push(p.unit_name.clone());
        row.push(if h.exit_reason.is_empty() {
            "-".into()
        } else {
            h.exit_reason.clone()
        });
        row.push(if h.last_error.is_empty() {
            "-".into()
        } else {
            h.last_error
        });
    }
    row
}

/// Apply a watched event to the processes a `ps -w` shows; the ids of
/// the rows it changed (a process gone is shown once more, then dropped).
pub fn apply(
    rows: &mut std::collections::BTreeMap<String, apb::ProcessInfo>,
    e: &apb::Event,
) -> Vec<String> {
    let kind = e.kind.split_once('.').map_or(e.kind.as_str(), |(_, k)| k);
    if e.kind.starts_with("launcher.") {
        let on: Vec<String> = rows
            .iter()
            .filter(|(_, p)| p.launcher_id == e.launcher_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &on {
            let p = rows.get_mut(id).expect("listed above");
            match kind {
                "disconnected" => {
                    p.last_known_status = status_shown(p, false);
                    p.unknown_since_unix_ms = e
                        .launcher
                        .as_ref()
                        .map_or(e.at_unix_ms, |l| l.last_heartbeat_unix_ms);
                }
                "healthy" | "registered" => {
                    p.unknown_since_unix_ms = 0;
                    p.last_known_status.clear();
                }
                _ => return Vec::new(),
            }
        }
        return on;
    }
    let Some(change) = e.process.as_ref() else {
        return Vec::new();
    };
    let p = rows
        .entry(e.process_id.clone())
        .or_insert_with(|| apb::ProcessInfo {
            assignment: Some(pb::ProcessAssignment {
                process_id: e.process_id.clone(),
                process_type: change.process_type.clone(),
                namespace: e.namespace.clone(),
                version: change.version,
                ..Default::default()
            }),
            unit_name: change.unit_name.clone(),
            ..Default::default()
        });
    if let Some(a) = p.assignment.as_mut() {
        a.version = change.version;
    }
    let show = |p: &mut apb::ProcessInfo, status: &str| {
        let h = p.health.get_or_insert_with(Default::default);
        h.detailed_status = status.to_owned();
        h.uptime_seconds = 0;
    };
    match kind {
        "placed" => {
            if p.launcher_id != e.launcher_id {
                p.health = None;
            }
            p.launcher_id.clone_from(&e.launcher_id);
            p.placement = "pending".into();
            show(p, "pending");
        }
        "delivered" => {
            p.placement = "placed".into();
            if p.health
                .as_ref()
                .is_none_or(|h| h.detailed_status == "pending")
            {
                show(p, "placed");
            }
        }
        "refused" | "revoking" | "revoked" => show(p, kind),
        _ => {
            let h = p.health.get_or_insert_with(Default::default);
            h.detailed_status.clone_from(&change.status);
            h.pid = change.pid;
            h.restart_count = change.restart_count;
            h.exit_reason.clone_from(&change.exit_reason);
            h.last_error.clone_from(&change.last_error);
            h.uptime_seconds = 0;
            p.unknown_since_unix_ms = 0;
        }
    }
    vec![e.process_id.clone()]
}

/// `ps -w`: the table, then each row again as it changes.
async fn ps_watch(g: &Global, a: &PsArgs, list: apb::ListProcessesResponse) -> Result<(), Error> {
    let wide = g.output == Format::Wide;
    let keep = |p: &apb::ProcessInfo| {
        a.process_type.as_deref().is_none_or(|t| {
            p.assignment.as_ref().is_some_and(|s| {
                s.process_type == t || (s.process_type.is_empty() && t == "pattern")
            })
        })
    };
    let mut rows: std::collections::BTreeMap<String, apb::ProcessInfo> = list
        .processes
        .into_iter()
        .map(|p| (p.assignment.clone().unwrap_or_default().process_id, p))
        .collect();
    let shown: Vec<apb::ProcessInfo> = rows.values().filter(|p| keep(p)).cloned().collect();
    match g.output {
        Format::Json | Format::Yaml => {
            for p in &shown {
                print_info(g.output, p)?;
            }
        }
        _ => out(&ps_table(&shown, wide)),
    }
    let req = apb::WatchRequest {
        namespace: a.namespace.clone().unwrap_or_default(),
        launcher_id: a.launcher.clone().unwrap_or_default(),
        kinds: vec![
            "process".into(),
            "launcher.disconnected".into(),
            "launcher.healthy".into(),
            "launcher.registered".into(),
        ],
        ..Default::default()
    };
    let mut follow = super::watch::from(g, req, list.revision);
    loop {
        let e = follow.next().await?;
        if e.kind == crate::admin::events::BOOKMARK {
            continue;
        }
        for id in apply(&mut rows, &e) {
            let Some(p) = rows.get(&id) else { continue };
            let status_ok = a
                .status
                .as_deref()
                .is_none_or(|s| status_shown(p, false) == s || p.placement == s);
            if keep(p) && status_ok {
                match g.output {
                    Format::Json | Format::Yaml => print_info(g.output, p)?,
                    _ => print_row(p, wide),
                }
            }
            if e.kind == "process.revoked" || e.kind == "process.refused" {
                rows.remove(&id);
            }
        }
    }
}

/// `ps` of one launcher, asked directly; with `-w`, its `WatchProcesses`
/// stream: the table once it is listed, then each process again as it
/// changes (`removed` once it is gone).
async fn ps_launcher(g: &Global, a: &PsArgs, endpoint: &str) -> Result<(), Error> {
    use crate::pb::prism::launcher::v1 as lpb;
    let id = a.launcher.clone().unwrap_or_default();
    let (channel, url) = g
        .admin
        .dial(
            "--launcher-endpoint",
            endpoint,
            crate::auth::dial::Expect::Launcher(id.clone()),
        )
        .await?;
    let mut client = lpb::launcher_client::LauncherClient::new(channel);
    let wide = g.output == Format::Wide;
    let shown = |p: lpb::ProcessInfo| apb::ProcessInfo {
        assignment: p.assignment,
        health: p.health,
        unit_name: p.unit_name,
        launcher_id: if id.is_empty() {
            "-".into()
        } else {
            id.clone()
        },
        placement: "held".into(),
        ..Default::default()
    };
    let wanted = |p: &apb::ProcessInfo| {
        let s = p.assignment.clone().unwrap_or_default();
        a.process_type
            .as_deref()
            .is_none_or(|t| s.process_type == t || (s.process_type.is_empty() && t == "pattern"))
            && a.status
                .as_deref()
                .is_none_or(|want| status_shown(p, false) == want)
    };
    if !a.watch {
        let list = client
            .list_processes(lpb::ListProcessesRequest {
                process_type: a.process_type.clone().unwrap_or_default(),
                namespace: a.namespace.clone().unwrap_or_default(),
                status: a.status.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| call_failed("listing the launcher's processes", s))?
            .into_inner();
        if let Some(text) = structured(g.output, &list)? {
            out(&text);
            return Ok(());
        }
        let processes: Vec<apb::ProcessInfo> = list.processes.into_iter().map(shown).collect();
        out(&ps_table(&processes, wide));
        return Ok(());
    }
    let mut stream = client
        .watch_processes(lpb::WatchProcessesRequest {
            process_id: String::new(),
            namespace: a.namespace.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| call_failed("watching the launcher's processes", s))?
        .into_inner();
    let mut listed = Vec::new();
    while let Some(change) = stream
        .message()
        .await
        .map_err(|s| call_failed("watching the launcher's processes", s))?
    {
        if matches!(g.output, Format::Json | Format::Yaml) {
            print_info(g.output, &change)?;
            continue;
        }
        let mut p = shown(change.process.unwrap_or_default());
        match change.kind.as_str() {
            "listed" => {
                if wanted(&p) {
                    listed.push(p);
                }
            }
            "synced" => out(&ps_table(&listed, wide)),
            kind => {
                if kind == "removed" {
                    p.health = Some(pb::ProcessHealth {
                        detailed_status: "removed".into(),
                        ..Default::default()
                    });
                }
                if kind == "removed" || wanted(&p) {
                    print_row(&p, wide);
                }
            }
        }
    }
    Err(Error::Failed(format!(
        "the launcher at {url} ended the stream (it stopped?)"
    )))
}

/// One process again as a `ps` row, without the header (`-w`).
fn print_row(p: &apb::ProcessInfo, wide: bool) {
    let one = table(&ps_header(wide), &[ps_row(p, wide)], None);
    if let Some(line) = one.lines().nth(1) {
        out(&format!("{line}\n"));
    }
}

/// One item (a process, a change) as a line of JSON, or a YAML document.
fn print_info<T: serde::Serialize>(format: Format, p: &T) -> Result<(), Error> {
    let text = match format {
        Format::Yaml => format!(
            "---\n{}",
            serde_norway::to_string(p)
                .map_err(|e| Error::Failed(format!("cannot encode YAML: {e}")))?
        ),
        _ => {
            serde_json::to_string(p)
                .map_err(|e| Error::Failed(format!("cannot encode JSON: {e}")))?
                + "\n"
        }
    };
    out(&text);
    Ok(())
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The process to stop.
    pub id: String,
    /// Seconds between SIGTERM and SIGKILL [default: 30].
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub timeout: i32,
}

pub async fn revoke(g: &Global, a: &RevokeArgs) -> Result<(), Error> {
    let mut admin = g.admin.connect().await?;
    let ack = admin
        .cp
        .revoke_process(pb::ProcessRevocation {
            launcher_id: String::new(),
            process_id: a.id.clone(),
            graceful_timeout_seconds: a.timeout,
        })
        .await
        .map_err(|s| call_failed(&format!("revoking {}", a.id), s))?
        .into_inner();
    if let Some(text) = structured(g.output, &ack)? {
        out(&text);
    } else {
        out(&format!("{} (exit code {})\n", ack.message, ack.exit_code));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The launcher.
    pub launcher: String,
}

pub async fn drain(g: &Global, a: &DrainArgs, draining: bool) -> Result<(), Error> {
    let mut admin = g.admin.connect().await?;
    let request = apb::DrainRequest {
        launcher_id: a.launcher.clone(),
    };
    let what = format!(
        "{} {}",
        if draining { "draining" } else { "undraining" },
        a.launcher
    );
    let info = if draining {
        admin.api.drain_launcher(request).await
    } else {
        admin.api.undrain_launcher(request).await
    }
    .map_err(|s| call_failed(&what, s))?
    .into_inner();
    if let Some(text) = structured(g.output, &info)? {
        out(&text);
    } else if draining {
        out(&format!(
            "{} is draining: nothing new is placed on it; its {} processes stay. Move them with \
             `prismctl move {}`, or undrain it with `prismctl undrain {}`.\n",
            info.launcher_id, info.slots_used, info.launcher_id, info.launcher_id
        ));
    } else {
        out(&format!(
            "{} takes new processes again.\n",
            info.launcher_id
        ));
    }
    Ok(())
}

pub async fn move_processes(g: &Global, a: &DrainArgs) -> Result<(), Error> {
    let mut admin = g.admin.connect().await?;
    let moved = admin
        .api
        .move_processes(apb::MoveProcessesRequest {
            launcher_id: a.launcher.clone(),
        })
        .await
        .map_err(|s| call_failed(&format!("moving the processes of {}", a.launcher), s))?
        .into_inner();
    if let Some(text) = structured(g.output, &moved)? {
        out(&text);
    } else if moved.moved.is_empty() {
        out(&format!("{} holds no processes.\n", a.launcher));
    } else {
        let rows: Vec<Vec<String>> = moved
            .moved
            .iter()
            .map(|m| {
                vec![
                    m.process_id.clone(),
                    m.from_launcher.clone(),
                    if m.success {
                        m.to_launcher.clone()
                    } else {
                        "-".into()
                    },
                    if m.success {
                        "moved".into()
                    } else {
                        m.message.clone()
                    },
                ]
            })
            .collect();
        out(&table(
            &["ID", "FROM", "TO", "RESULT"],
            &rows,
            Some(terminal_width()),
        ));
    }
    if moved.moved.iter().all(|m| m.success) {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "some processes of {} could not be moved",
            a.launcher
        )))
    }
}
