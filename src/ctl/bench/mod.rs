//! `prismctl bench`: assign N harmless processes with C in flight, through
//! the admin or straight to one launcher, report latency percentiles and
//! throughput, and revoke everything it created — also when interrupted
//! (Ctrl-C stops new assignments, lets those in flight finish, and
//! revokes; a second Ctrl-C leaves at once and says how to clean up).

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::Path,
    time::{Duration, Instant},
};

use clap::Args;
use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Code, Status, transport::Channel};

mod report;

pub use report::{Latency, Report};
use report::{Progress, print_report, round3};

use super::{
    Error, Global,
    client::call_failed,
    output::{Format, out, structured},
};
use crate::{
    auth::dial::Expect,
    pb::prism::{
        self as pb,
        admin::v1 as apb,
        control_plane_client::ControlPlaneClient,
        launcher::v1::{self as lpb, launcher_client::LauncherClient},
    },
    protocol::LAUNCHER_METADATA,
};

/// The packaged workload (prism-demo: starts, reports READY, waits for
/// SIGTERM).
pub const PACKAGED_WORKLOAD: &str = "/usr/lib/prism/prism-demo";

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// How many processes to assign.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
    pub count: usize,
    /// How many assignments in flight at once.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 8)]
    pub concurrency: usize,
    /// The namespace of the benchmark's processes; it must hold nothing
    /// else.
    #[arg(long, default_value = "prism-bench")]
    pub namespace: String,
    /// The workload's binary on the launcher's host [default: the
    /// packaged prism-demo, /usr/lib/prism/prism-demo, or the local
    /// stack's copy when benchmarking `prismctl local`].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<String>,
    /// Place every process on this launcher (through the admin); with
    /// --launcher-endpoint over TLS, the launcher's certificate must name
    /// it.
    #[arg(long, value_name = "ID")]
    pub launcher: Option<String>,
    /// Assign straight to a launcher, not through the admin: its local
    /// socket (unix:PATH, as root) or host:port.
    #[arg(long, value_name = "ADDRESS")]
    pub launcher_endpoint: Option<String>,
    /// Revoke whatever the namespace holds (what an earlier run could not
    /// clean up) and exit.
    #[arg(long)]
    pub clean: bool,
}

/// Where the assignments go.
enum Target {
    Admin {
        cp: ControlPlaneClient<Channel>,
        api: crate::pb::prism::admin::v1::admin_client::AdminClient<Channel>,
        launcher: Option<String>,
    },
    Launcher(LauncherClient<Channel>),
}

impl Target {
    async fn assign(
        &self,
        spec: pb::ProcessAssignment,
    ) -> Result<pb::ProcessAssignmentAck, Status> {
        match self {
            Target::Admin { cp, launcher, .. } => {
                let mut request = tonic::Request::new(spec);
                if let Some(id) = launcher {
                    let id = id
                        .parse()
                        .map_err(|_| Status::invalid_argument(format!("--launcher {id:?}")))?;
                    request.metadata_mut().insert(LAUNCHER_METADATA, id);
                }
                cp.clone()
                    .assign_process(request)
                    .await
                    .map(|r| r.into_inner())
            }
            Target::Launcher(c) => c.clone().assign_process(spec).await.map(|r| r.into_inner()),
        }
    }

    /// Revoke `id`: whether it was there (an assignment that failed may
    /// have left nothing to revoke).
    async fn revoke(&self, id: String) -> Result<bool, Status> {
        let revocation = pb::ProcessRevocation {
            process_id: id,
            ..Default::default()
        };
        let result = match self {
            Target::Admin { cp, .. } => cp.clone().revoke_process(revocation).await.map(drop),
            Target::Launcher(c) => c.clone().revoke_process(revocation).await.map(drop),
        };
        match result {
            Ok(()) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// The ids the namespace holds.
    async fn held(&self, namespace: &str) -> Result<Vec<String>, Status> {
        let assignments: Vec<Option<pb::ProcessAssignment>> = match self {
            Target::Admin { api, .. } => api
                .clone()
                .list_processes(apb::ListProcessesRequest {
                    namespace: namespace.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .processes
                .into_iter()
                .map(|p| p.assignment)
                .collect(),
            Target::Launcher(c) => c
                .clone()
                .list_processes(lpb::ListProcessesRequest {
                    namespace: namespace.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .processes
                .into_iter()
                .map(|p| p.assignment)
                .collect(),
        };
        Ok(assignments
            .into_iter()
            .flatten()
            .map(|a| a.process_id)
            .collect())
    }
}

/// Counts Ctrl-Cs: the first stops the run, the second leaves at once.
fn interrupts() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

/// The workload's binary: as given; the local stack's copy when the
/// target is the local stack; else the packaged one.
fn workload(args: &BenchArgs, address: &str) -> String {
    if let Some(b) = &args.binary {
        return b.clone();
    }
    let state = super::local::state_dir();
    let local = state.join("bin/prism-demo");
    let socket = address.strip_prefix("unix:").map(Path::new);
    if socket.is_some_and(|s| s.starts_with(&state)) && local.is_file() {
        return local.display().to_string();
    }
    PACKAGED_WORKLOAD.into()
}

fn spec(id: String, namespace: &str, binary: &str) -> pb::ProcessAssignment {
    pb::ProcessAssignment {
        process_id: id,
        process_type: "utility".into(),
        namespace: namespace.into(),
        version: 1,
        config: Some(pb::ProcessConfig {
            binary: binary.into(),
            log_level: "warn".into(),
            utility: Some(pb::UtilityProcessConfig {
                utility_type: "bench".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn failed(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn connect(g: &Global, args: &BenchArgs) -> Result<(Target, String), Error> {
    match &args.launcher_endpoint {
        Some(endpoint) => {
            let tcp_tls = !endpoint.starts_with("unix:") && g.admin.tls_ca.is_some();
            let id = args.launcher.clone().unwrap_or_default();
            if tcp_tls && id.is_empty() {
                return Err(Error::Usage(
                    "--launcher-endpoint over TLS needs --launcher ID: the launcher's \
                     certificate is checked against it"
                        .into(),
                ));
            }
            let (channel, url) = g
                .admin
                .dial("--launcher-endpoint", endpoint, Expect::Launcher(id))
                .await?;
            Ok((
                Target::Launcher(
                    LauncherClient::new(channel)
                        .max_decoding_message_size(crate::serve::MAX_RESPONSE_BYTES),
                ),
                url,
            ))
        }
        None => {
            let admin = g.admin.connect().await?;
            Ok((
                Target::Admin {
                    cp: admin.cp,
                    api: admin.api,
                    launcher: args.launcher.clone(),
                },
                admin.url,
            ))
        }
    }
}

pub async fn bench(g: &Global, args: &BenchArgs) -> Result<(), Error> {
    if args.concurrency == 0 {
        return Err(Error::Usage("--concurrency must be at least 1".into()));
    }
    if args.namespace.is_empty() {
        return Err(Error::Usage(
            "--namespace must name the benchmark's own namespace".into(),
        ));
    }
    let (target, url) = connect(g, args).await?;
    let mut interrupts = interrupts();
    let held = target
        .held(&args.namespace)
        .await
        .map_err(|s| call_failed(&format!("listing namespace {}", args.namespace), s))?;
    if args.clean {
        let (revoked, left) = revoke_all(&target, held, args.concurrency, &mut interrupts).await;
        eprintln!(
            "revoked {revoked} process(es) of namespace {}",
            args.namespace
        );
        return leftovers(&target, &args.namespace, left).await;
    }
    if !held.is_empty() {
        return Err(Error::Failed(format!(
            "namespace {} already holds {} process(es) (e.g. {}): a benchmark needs its own. \
             Revoke them with `prismctl bench --clean --namespace {}`, or pick another --namespace",
            args.namespace,
            held.len(),
            held[0],
            args.namespace
        )));
    }

    if let Target::Admin { api, launcher, .. } = &target {
        room(api.clone(), launcher.as_deref(), args.count).await?;
    }
    let binary = workload(args, &url);
    // Ids unique to this run, so that two runs in two namespaces never meet.
    let run = format!(
        "{:08x}",
        (crate::clock::since_epoch().as_nanos() as u32) ^ std::process::id().rotate_left(16)
    );
    let mut report = Report {
        target: url,
        namespace: args.namespace.clone(),
        binary: binary.clone(),
        requested: args.count,
        concurrency: args.concurrency,
        ..Report::default()
    };
    let mut progress = Progress::new();
    let mut sent = Vec::with_capacity(args.count);
    let mut latencies = Vec::with_capacity(args.count);
    let mut inflight = FuturesUnordered::new();
    let started = Instant::now();
    // A Ctrl-C while connecting or checking counts too.
    report.interrupted = *interrupts.borrow_and_update() > 0;
    loop {
        while !report.interrupted && inflight.len() < args.concurrency && sent.len() < args.count {
            let id = format!("bench-{run}-{:05}", sent.len());
            sent.push(id.clone());
            let spec = spec(id, &args.namespace, &binary);
            let target = &target;
            inflight.push(async move {
                let t = Instant::now();
                let result = target.assign(spec).await;
                (t.elapsed(), result)
            });
        }
        let Some((took, result)) = (tokio::select! {
            next = inflight.next() => next,
            Ok(()) = interrupts.changed() => {
                let presses = *interrupts.borrow_and_update();
                report.interrupted = true;
                progress.done();
                if presses >= 2 {
                    // Leave at once: what is in flight is dropped, and the
                    // revocation below sees the second Ctrl-C and stops.
                    eprintln!("interrupted again: leaving without waiting");
                    break;
                }
                eprintln!(
                    "interrupted: letting {} assignment(s) in flight finish, then revoking \
                     everything (Ctrl-C again to leave at once)",
                    inflight.len()
                );
                continue;
            }
        }) else {
            break;
        };
        match result {
            // Through the admin, a launcher it could not reach yet: placed,
            // not started.
            Ok(ack) if ack.success && ack.message.contains("delivery pending") => {
                *report
                    .errors
                    .entry(
                        "placed, but its launcher could not be reached (delivery pending)".into(),
                    )
                    .or_default() += 1
            }
            Ok(ack) if ack.success => {
                report.assigned += 1;
                latencies.push(took);
            }
            Ok(ack) => *report.errors.entry(ack.message).or_default() += 1,
            Err(s) => *report.errors.entry(failed(&s)).or_default() += 1,
        }
        let done = report.assigned + report.errors.values().sum::<usize>();
        let rate = report.assigned as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.show(
            "assigning",
            done,
            args.count,
            &format!("  {rate:.0}/s"),
            done == args.count,
        );
    }
    progress.done();
    let seconds = started.elapsed().as_secs_f64();
    report.seconds = round3(seconds);
    report.failed = report.errors.values().sum();
    report.per_second = round3(report.assigned as f64 / seconds.max(1e-9));
    report.latency_ms = Latency::of(&mut latencies);

    let t = Instant::now();
    let (revoked, left) = revoke_all(&target, sent, args.concurrency, &mut interrupts).await;
    report.revoked = revoked;
    report.revoke_seconds = round3(t.elapsed().as_secs_f64());
    // Whatever the namespace still holds (a revocation refused, or a
    // second Ctrl-C): named, with the way to clean it up.
    let outcome = leftovers(&target, &args.namespace, left).await;
    report.left = match &outcome {
        Ok(()) => Vec::new(),
        Err(_) => target.held(&args.namespace).await.unwrap_or_default(),
    };
    print_report(g.output, &report)?;
    if report.interrupted {
        return Err(Error::Interrupted(match outcome {
            Ok(()) => format!(
                "interrupted after {} of {} assignments; everything it created is revoked",
                report.assigned + report.failed,
                args.count
            ),
            Err(left) => format!("interrupted: {left}"),
        }));
    }
    outcome?;
    if report.failed > 0 {
        let (first, _) = report.errors.iter().next().expect("failed > 0");
        return Err(Error::Failed(format!(
            "{} of {} assignments failed; first error: {first}",
            report.failed, args.count
        )));
    }
    Ok(())
}

/// Refuse at once, creating nothing, when the healthy launchers that run
/// utilities (or the one `pinned`) have fewer than `count` free slots.
async fn room(
    mut api: crate::pb::prism::admin::v1::admin_client::AdminClient<Channel>,
    pinned: Option<&str>,
    count: usize,
) -> Result<(), Error> {
    let launchers = api
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .map_err(|s| call_failed("listing launchers", s))?
        .into_inner()
        .launchers;
    let usable: Vec<_> = launchers
        .iter()
        .filter(|l| pinned.is_none_or(|p| l.launcher_id == p))
        .filter(|l| l.health == "healthy" && !l.draining)
        .filter(|l| l.process_types.iter().any(|t| t == "utility"))
        .map(|l| {
            let free = (l.max_processes - l.slots_used).max(0) as usize;
            (l.launcher_id.as_str(), free, l.max_processes)
        })
        .collect();
    let free: usize = usable.iter().map(|(_, f, _)| f).sum();
    if count <= free {
        return Ok(());
    }
    let which = match pinned {
        Some(p) => format!("launcher {p}"),
        None => "the fleet".into(),
    };
    let detail: Vec<String> = usable
        .iter()
        .take(5)
        .map(|(id, f, max)| format!("{id}: {f} of {max} free"))
        .collect();
    Err(Error::Failed(format!(
        "-n {count}: {which} has room for {free} more utility process(es){}; \
         lower -n, or see `prismctl launchers`",
        if detail.is_empty() {
            " (no healthy launcher that runs utilities takes new processes)".to_owned()
        } else {
            format!(" ({})", detail.join(", "))
        }
    )))
}

/// Revoke `ids`, `concurrency` at a time; a second Ctrl-C stops it. Returns
/// how many were revoked and the errors of those that were not.
async fn revoke_all(
    target: &Target,
    ids: Vec<String>,
    concurrency: usize,
    interrupts: &mut watch::Receiver<u32>,
) -> (usize, Vec<String>) {
    let total = ids.len();
    let mut progress = Progress::new();
    let mut pending = ids.into_iter();
    let mut inflight = FuturesUnordered::new();
    let (mut revoked, mut done, mut errors) = (0, 0, Vec::new());
    let mut left_at_once = *interrupts.borrow_and_update() >= 2;
    loop {
        while !left_at_once && inflight.len() < concurrency {
            let Some(id) = pending.next() else { break };
            inflight.push(async move {
                let result = target.revoke(id.clone()).await;
                (id, result)
            });
        }
        if left_at_once {
            progress.done();
            errors.push("interrupted again while revoking".into());
            return (revoked, errors);
        }
        let next = tokio::select! {
            next = inflight.next() => next,
            Ok(()) = interrupts.changed() => {
                left_at_once = *interrupts.borrow_and_update() >= 2;
                if !left_at_once {
                    progress.done();
                    eprintln!("revoking what the benchmark created (Ctrl-C again to leave at once)");
                }
                continue;
            }
        };
        let Some((id, result)) = next else { break };
        match result {
            Ok(true) => revoked += 1,
            Ok(false) => {}
            Err(s) => errors.push(format!("{id}: {}", failed(&s))),
        }
        done += 1;
        progress.show("revoking", done, total, "", done == total);
    }
    progress.done();
    (revoked, errors)
}

/// Ok when the namespace is empty; else an error naming what is left and
/// how to clean it up.
async fn leftovers(target: &Target, namespace: &str, errors: Vec<String>) -> Result<(), Error> {
    let held = target
        .held(namespace)
        .await
        .map_err(|s| call_failed(&format!("listing namespace {namespace}"), s))?;
    if held.is_empty() {
        return Ok(());
    }
    let mut why = format!(
        "{} process(es) are left in namespace {namespace} (e.g. {})",
        held.len(),
        held[0]
    );
    if let Some(e) = errors.first() {
        why.push_str(&format!("; {e}"));
    }
    why.push_str(&format!(
        ". Revoke them with `prismctl bench --clean --namespace {namespace}`"
    ));
    Err(Error::Failed(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_figures() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.min, l.max), (1.0, 100.0));
        assert_eq!((l.p50, l.p90, l.p99), (51.0, 90.0, 99.0));
        assert_eq!(l.mean, 50.5);
        let none = Latency::of(&mut []);
        assert_eq!(none.max, 0.0);
    }

    #[test]
    fn the_workload_is_harmless_and_valid() {
        use crate::model::{ManagedProcess, Policy};
        let s = spec(
            "bench-0000abcd-00001".into(),
            "prism-bench",
            PACKAGED_WORKLOAD,
        );
        let p = ManagedProcess::try_from((s, &Policy::structural())).unwrap();
        assert_eq!(p.id, "bench-0000abcd-00001");
    }
}
