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
    /// Only processes on this launcher.
    #[arg(long)]
    pub launcher: Option<String>,
    /// Only processes in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only processes with this status (running, starting, unhealthy,
    /// circuit_open...) or placement (placed, pending, revoking).
    #[arg(long)]
    pub status: Option<String>,
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
    let mut rows: Vec<Vec<String>> = processes
        .iter()
        .map(|p| {
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
        })
        .collect();
    rows.sort();
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
    table(&header, &rows, (!wide).then(terminal_width))
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
