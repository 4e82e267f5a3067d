//! The fleet's events, as `WatchEvents` streams them: what they are
//! (kinds, payloads built from the admin's records, never a credential),
//! which a watcher wants (its filter), and the hub that streams them.
//!
//! The database is the log. Every write that changes what a watcher could
//! see appends its events in the same transaction, numbered in commit
//! order (see the `0002_events` migration), so the sequence is the same
//! on every admin and across failovers. Each admin runs one [`Hub`]: a
//! tail that reads the log after each commit (the leader) or every
//! [`FOLLOWER_POLL`] (a follower), and hands each new event to every
//! watcher. A watcher first catches up from the database, from its
//! `since_revision`, then follows the tail; its own queue is bounded, and
//! a watcher that lets it fill is ended (RESOURCE_EXHAUSTED, naming the
//! revision to resume from) without slowing anyone else.

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use prost::bytes::{BufMut, Bytes};
use tokio::sync::{broadcast, mpsc};
use tonic::{
    Status,
    body::Body,
    codec::{Codec, EncodeBuf, Encoder},
    codegen::http,
    server::NamedService,
};
use tonic_prost::ProstCodec;

use super::store::{AdminStore, HealthRecord, StoreError};
use crate::{
    clock,
    model::ProcessType,
    pb::prism::{self as pb, admin::v1 as apb},
    serve::Shutdown,
    unit,
};

/// Every kind an event may have, by family.
pub const PROCESS_KINDS: &[&str] = &[
    "placed",
    "delivered",
    "refused",
    "started",
    "running",
    "unhealthy",
    "restarted",
    "failed",
    "circuit_open",
    "stopping",
    "stopped",
    "revoking",
    "revoked",
];
pub const LAUNCHER_KINDS: &[&str] = &[
    "registered",
    "healthy",
    "unhealthy",
    "disconnected",
    "drained",
    "undrained",
];
pub const CLUSTER_KINDS: &[&str] = &["leader_elected"];
/// The kind of a bookmark (no event: where the stream stands).
pub const BOOKMARK: &str = "bookmark";

/// Whether `kind` names a kind ("process.failed") or a family ("process").
pub fn known_kind(kind: &str) -> bool {
    let known = |family: &str, kinds: &[&str]| match kind.split_once('.') {
        None => kind == family,
        Some((f, k)) => f == family && kinds.contains(&k),
    };
    known("process", PROCESS_KINDS)
        || known("launcher", LAUNCHER_KINDS)
        || known("cluster", CLUSTER_KINDS)
}

/// Every kind, for error messages and `--help`.
pub fn all_kinds() -> Vec<String> {
    let mut all = Vec::new();
    for (family, kinds) in [
        ("process", PROCESS_KINDS),
        ("launcher", LAUNCHER_KINDS),
        ("cluster", CLUSTER_KINDS),
    ] {
        all.extend(kinds.iter().map(|k| format!("{family}.{k}")));
    }
    all
}

fn process_type(spec: &pb::ProcessAssignment) -> ProcessType {
    spec.process_type.parse().unwrap_or(ProcessType::Pattern)
}

/// A process event about `spec` on `launcher`.
pub fn process(
    kind: &str,
    spec: &pb::ProcessAssignment,
    launcher: &str,
    message: impl Into<String>,
) -> apb::Event {
    let ty = process_type(spec);
    apb::Event {
        revision: 0,
        at_unix_ms: clock::unix_ms(),
        kind: format!("process.{kind}"),
        process_id: spec.process_id.clone(),
        launcher_id: launcher.to_owned(),
        namespace: spec.namespace.clone(),
        message: message.into(),
        process: Some(apb::ProcessChange {
            process_type: ty.as_str().into(),
            version: spec.version,
            unit_name: unit::unit_name(ty, &spec.process_id),
            ..Default::default()
        }),
        launcher: None,
        leader: None,
    }
}

/// The status a report shows: the launcher's detailed one, else upstream's.
pub fn status_of(h: &pb::ProcessHealth) -> &str {
    if h.detailed_status.is_empty() {
        &h.status
    } else {
        &h.detailed_status
    }
}

/// The event a change of reported health is, if any: a new status, or a
/// restart (systemd's or the launcher's) whatever the status is now.
pub fn status_change(
    spec: &pb::ProcessAssignment,
    launcher: &str,
    before: Option<&HealthRecord>,
    now: &pb::ProcessHealth,
) -> Option<apb::Event> {
    let after = status_of(now);
    let previous = before.map(|b| status_of(&b.health)).unwrap_or_default();
    let restarts_before = before.map_or(0, |b| b.health.restart_count);
    // A restart is told once: as "restarting" when a report catches it,
    // else by the count grown since the report before.
    let restarted = now.restart_count > restarts_before && previous != "restarting";
    if previous == after && !restarted {
        return None;
    }
    let kind = match after {
        "failed" | "circuit_open" | "unhealthy" | "stopping" | "stopped" => after,
        _ if restarted => "restarted",
        "restarting" => "restarted",
        "starting" => "started",
        "running" => "running",
        // A status of a newer launcher: told as it is.
        _ => "running",
    };
    let mut message = format!(
        "{} → {after}",
        if previous.is_empty() { "-" } else { previous }
    );
    if now.pid > 0 {
        message.push_str(&format!(" (pid {})", now.pid));
    }
    // systemd counts a restart once it happened; one caught restarting is
    // the next.
    let count = if after == "restarting" {
        now.restart_count.max(restarts_before + 1)
    } else {
        now.restart_count
    };
    if kind == "restarted" {
        message.push_str(&format!(", restart {count}"));
        if !now.exit_reason.is_empty() {
            message.push_str(&format!(" after {}", now.exit_reason));
        }
    }
    if !now.last_error.is_empty() && after != "running" {
        message.push_str(&format!(": {}", now.last_error));
    }
    let mut e = process(kind, spec, launcher, message);
    if let Some(p) = e.process.as_mut() {
        p.status = after.to_owned();
        p.previous_status = previous.to_owned();
        p.pid = now.pid;
        p.restart_count = count;
        p.exit_reason.clone_from(&now.exit_reason);
        p.last_error.clone_from(&now.last_error);
        if !now.unit_name.is_empty() {
            p.unit_name.clone_from(&now.unit_name);
        }
    }
    Some(e)
}

/// A launcher event.
pub fn launcher(
    kind: &str,
    l: &super::store::LauncherRecord,
    change: apb::LauncherChange,
    message: impl Into<String>,
) -> apb::Event {
    apb::Event {
        revision: 0,
        at_unix_ms: clock::unix_ms(),
        kind: format!("launcher.{kind}"),
        launcher_id: l.id.clone(),
        message: message.into(),
        launcher: Some(apb::LauncherChange {
            address: l.address.clone(),
            region: l.region.clone(),
            max_processes: l.max_processes as i32,
            draining: l.draining,
            ..change
        }),
        ..Default::default()
    }
}

/// An admin took the lead.
pub fn leader_elected(epoch: i64, holder: &str, address: &str) -> apb::Event {
    apb::Event {
        at_unix_ms: clock::unix_ms(),
        kind: "cluster.leader_elected".into(),
        message: format!("{holder} leads (epoch {epoch}) at {address}"),
        leader: Some(apb::LeaderChange {
            epoch,
            holder: holder.to_owned(),
            address: address.to_owned(),
        }),
        ..Default::default()
    }
}

/// Which events a watcher wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    namespace: String,
    launcher: String,
    /// (id or prefix, is a prefix)
    process: Option<(String, bool)>,
    kinds: Vec<String>,
}

/// A bad request: the field, and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadWatch {
    pub field: &'static str,
    pub reason: String,
}

impl Filter {
    pub fn parse(req: &apb::WatchRequest) -> Result<Self, BadWatch> {
        for k in &req.kinds {
            if !known_kind(k) {
                return Err(BadWatch {
                    field: "kinds",
                    reason: format!(
                        "{k:?} is no event kind; kinds are {}, or a family (process, launcher, \
                         cluster)",
                        all_kinds().join(", ")
                    ),
                });
            }
        }
        let process = match req.process_id.as_str() {
            "" => None,
            p => match p.strip_suffix('*') {
                Some(prefix) if prefix.contains('*') => {
                    return Err(BadWatch {
                        field: "process_id",
                        reason: format!("{p:?}: only a trailing * is a wildcard"),
                    });
                }
                Some(prefix) => Some((prefix.to_owned(), true)),
                None if p.contains('*') => {
                    return Err(BadWatch {
                        field: "process_id",
                        reason: format!("{p:?}: only a trailing * is a wildcard"),
                    });
                }
                None => Some((p.to_owned(), false)),
            },
        };
        Ok(Self {
            namespace: req.namespace.clone(),
            launcher: req.launcher_id.clone(),
            process,
            kinds: req.kinds.clone(),
        })
    }

    pub fn matches(&self, e: &apb::Event) -> bool {
        (self.namespace.is_empty() || e.namespace == self.namespace)
            && (self.launcher.is_empty() || e.launcher_id == self.launcher)
            && match &self.process {
                None => true,
                Some((p, true)) => e.process_id.starts_with(p.as_str()),
                Some((p, false)) => e.process_id == *p,
            }
            && (self.kinds.is_empty()
                || self.kinds.iter().any(|k| {
                    e.kind == *k
                        || e.kind
                            .strip_prefix(k.as_str())
                            .is_some_and(|rest| rest.starts_with('.'))
                }))
    }
}

/// How often a follower's tail reads the log while someone watches.
pub const FOLLOWER_POLL: Duration = Duration::from_millis(200);
/// Events the tail hands out that a watcher may not have taken yet.
const TAIL_CAPACITY: usize = 4096;
/// Events one read of the log returns.
const PAGE: u32 = 512;
/// Events waiting for one watcher to read them, by default: more, and it
/// is ended.
pub const WATCHER_QUEUE: usize = 1024;
/// Batches on their way to one watcher's connection (past its queue).
const IN_FLIGHT: usize = 4;
/// Events one batch carries at most.
const BATCH_MAX: usize = 256;
/// A watcher sends at once when it sent nothing for this long; otherwise
/// what comes meanwhile goes together this long after its last send (one
/// write for many events: a busy fleet costs each watcher a few writes a
/// second, not one per event), by default.
pub const BATCH_GAP: Duration = Duration::from_millis(500);
/// Watchers one admin serves at once.
pub const MAX_WATCHERS: usize = 1024;
pub const DEFAULT_BOOKMARK: Duration = Duration::from_secs(5);

/// How long events are kept, and how far a watcher may fall behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many.
    pub keep: i64,
    /// No older than this.
    pub max_age: Duration,
    /// Events one watcher may leave unread before it is ended.
    pub watcher_queue: usize,
    /// A busy watcher's events go together this long after its last send.
    pub batch_gap: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: 100_000,
            max_age: Duration::from_secs(24 * 3600),
            watcher_queue: WATCHER_QUEUE,
            batch_gap: BATCH_GAP,
        }
    }
}

/// An event as the tail hands it to every watcher: decoded, for filters
/// and the typed stream, and encoded once, for every gRPC watcher (a
/// hundred watchers cost one encoding, not a hundred copies).
pub struct Shared {
    pub event: apb::Event,
    wire: Bytes,
}

impl Shared {
    fn new(event: apb::Event) -> Arc<Self> {
        let wire = Bytes::from(prost::Message::encode_to_vec(&event));
        Arc::new(Self { event, wire })
    }
}

/// One admin's event streams.
pub struct Hub {
    store: Arc<dyn AdminStore>,
    watcher_queue: usize,
    batch_gap: Duration,
    tail: broadcast::Sender<Arc<Shared>>,
    watchers: AtomicUsize,
    metrics: Arc<crate::metrics::AdminMetrics>,
    /// The lowest revision a new watcher read the log up to: a tail that
    /// starts following begins there, not at the head it reads later
    /// (what commits between the two would reach the watcher only with
    /// the next event).
    start_hint: std::sync::atomic::AtomicI64,
    /// True once the admin stops: every watcher ends, saying where to
    /// resume (an open stream would otherwise hold the server's graceful
    /// shutdown).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    pub fn new(
        store: Arc<dyn AdminStore>,
        retention: &Retention,
        metrics: Arc<crate::metrics::AdminMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            watcher_queue: retention.watcher_queue,
            batch_gap: retention.batch_gap,
            tail: broadcast::channel(TAIL_CAPACITY).0,
            watchers: AtomicUsize::new(0),
            metrics,
            start_hint: std::sync::atomic::AtomicI64::new(i64::MAX),
            closing: tokio::sync::watch::channel(false).0,
        })
    }

    /// Follow the log until shutdown: after each commit of this admin's
    /// (it leads), or every [`FOLLOWER_POLL`] (another admin writes).
    pub async fn tail(self: Arc<Self>, mut shutdown: Shutdown) {
        // None: not following (nobody watches); from the head on when
        // someone does.
        let mut after: Option<i64> = None;
        loop {
            let woken = async {
                tokio::select! {
                    _ = self.store.written().notified() => true,
                    _ = tokio::time::sleep(FOLLOWER_POLL) => false,
                }
            };
            // Woken by this admin's own commit: what it committed is at
            // hand; otherwise (another admin writes) the log is read.
            let Some(by_commit) = shutdown.until(woken).await else {
                self.closing.send_replace(true);
                return;
            };
            if self.tail.receiver_count() == 0 {
                if after.is_some() {
                    self.store.written().keep_recent(false);
                }
                after = None;
                continue;
            }
            if after.is_none() {
                self.store.written().keep_recent(true);
            }
            let mut from = match after {
                Some(a) => {
                    // Following: no new watcher needs an earlier start.
                    self.start_hint.store(i64::MAX, Ordering::SeqCst);
                    a
                }
                // Watchers catch up from the database themselves: the tail
                // starts where the first of them read up to, or at the
                // head (a watcher that sees a gap reads it).
                None => match self.store.event_bounds().await {
                    Ok(b) => b.head.min(self.start_hint.swap(i64::MAX, Ordering::SeqCst)),
                    Err(e) => {
                        tracing::warn!("cannot read the event log: {e}");
                        continue;
                    }
                },
            };
            after = Some(from);
            loop {
                let at_hand = by_commit
                    .then(|| self.store.written().recent_after(from, PAGE as usize))
                    .flatten();
                let page = match at_hand {
                    Some(page) => page,
                    None => match self.store.events_after(from, PAGE).await {
                        Ok(page) => page,
                        Err(e) => {
                            tracing::warn!("cannot read the event log: {e}");
                            break;
                        }
                    },
                };
                let n = page.len();
                for e in page {
                    from = e.revision;
                    after = Some(from);
                    self.metrics.events_streamed.inc();
                    let _ = self.tail.send(Shared::new(e));
                }
                if n < PAGE as usize {
                    break;
                }
            }
        }
    }

    /// Remove events past retention until shutdown (the leader): every
    /// minute, and as soon as the log outgrows its count by a tenth; and
    /// trim the processes' histories that grew meanwhile.
    pub async fn prune_loop(self: Arc<Self>, retention: Retention, mut shutdown: Shutdown) {
        let mut last: Option<(tokio::time::Instant, i64)> = None;
        loop {
            if shutdown
                .until(tokio::time::sleep(Duration::from_secs(1)))
                .await
                .is_none()
            {
                return;
            }
            let head = self.store.written().head();
            let due = match last {
                None => true,
                Some((at, pruned_at)) => {
                    at.elapsed() >= Duration::from_secs(60)
                        || head - pruned_at > retention.keep / 10 + 1
                }
            };
            if !due {
                continue;
            }
            let before = clock::unix_ms() - retention.max_age.as_millis() as i64;
            match self.store.prune_events(retention.keep, before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("pruned {n} events past retention"),
                // Another admin leads now: it prunes.
                Err(StoreError::NotLeader { .. }) => return,
                Err(e) => tracing::warn!("cannot prune the event log: {e}"),
            }
            match self.store.trim_histories().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("trimmed {n} history events past retention"),
                Err(e) => tracing::warn!("cannot trim processes' histories: {e}"),
            }
            last = Some((tokio::time::Instant::now(), head));
            self.refresh_gauges().await;
        }
    }

    /// The log's bounds into the metrics.
    pub async fn refresh_gauges(&self) {
        if let Ok(b) = self.store.event_bounds().await {
            self.metrics
                .events_oldest_revision
                .set(b.oldest.unwrap_or(b.head + 1));
            self.metrics.events_head_revision.set(b.head);
        }
    }

    /// A stream of the events `req` asks for.
    pub async fn watch(self: &Arc<Self>, req: apb::WatchRequest) -> Result<Watch, Status> {
        let filter = Filter::parse(&req).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let bookmark = match req.bookmark_interval_ms {
            0 => DEFAULT_BOOKMARK,
            ms @ 100..=60_000 => Duration::from_millis(ms as u64),
            ms => {
                return Err(Status::invalid_argument(format!(
                    "bookmark_interval_ms: {ms} is outside 100..=60000 (0 means 5000)"
                )));
            }
        };
        if let Some(since) = req.since_revision
            && since < 0
        {
            return Err(Status::invalid_argument(format!(
                "since_revision: {since} is negative"
            )));
        }
        let open = self.watchers.fetch_add(1, Ordering::SeqCst);
        let slot = WatcherSlot(self.clone());
        if open >= MAX_WATCHERS {
            return Err(Status::resource_exhausted(format!(
                "this admin serves {MAX_WATCHERS} watchers already; try another admin, or later"
            )));
        }
        // Subscribed before the catch-up reads: nothing committed after
        // them is missed (the tail hands it out), and what both see is
        // sent once (by revision).
        let live = self.tail.subscribe();
        let bounds = self.store.event_bounds().await.map_err(unavailable)?;
        let after = req.since_revision.unwrap_or(bounds.head);
        if after > bounds.head {
            return Err(Status::out_of_range(format!(
                "since_revision: {after} is ahead of the fleet's last revision, {}",
                bounds.head
            )));
        }
        if after < bounds.head && bounds.oldest.is_none_or(|oldest| after + 1 < oldest) {
            return Err(out_of_range(
                after,
                bounds.oldest.unwrap_or(bounds.head + 1),
            ));
        }
        self.start_hint.fetch_min(after, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let end = Arc::new(std::sync::Mutex::new(None));
        let watcher = Watcher {
            hub: self.clone(),
            filter,
            bookmark,
            sent: after,
            considered: after,
            queue: VecDeque::new(),
            progressed: false,
            tx,
            end: end.clone(),
            _slot: slot,
        };
        self.metrics.watchers.inc();
        tokio::spawn(watcher.run(live));
        Ok(Watch {
            rx,
            ready: Vec::new().into_iter(),
            end,
        })
    }
}

fn out_of_range(after: i64, oldest: i64) -> Status {
    Status::out_of_range(format!(
        "since_revision: events after {after} are no longer kept (the oldest kept is {oldest}); \
         list again and watch from the list's revision"
    ))
}

fn unavailable(e: StoreError) -> Status {
    Status::unavailable(format!("cannot read the event log: {e}"))
}

/// Counts an open watcher while it lives.
struct WatcherSlot(Arc<Hub>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The stream a watcher reads: its events, then the status it ended with.
pub struct Watch {
    rx: mpsc::Receiver<Vec<Arc<Shared>>>,
    /// The rest of the batch last received.
    ready: std::vec::IntoIter<Arc<Shared>>,
    end: Arc<std::sync::Mutex<Option<Status>>>,
}

impl Watch {
    fn poll_shared(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Arc<Shared>, Status>>> {
        loop {
            if let Some(e) = self.ready.next() {
                return Poll::Ready(Some(Ok(e)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.ready = batch.into_iter(),
                Poll::Ready(None) => {
                    return Poll::Ready(self.end.lock().expect("poisoned").take().map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for Watch {
    type Item = Result<apb::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_shared(cx).map(|e| {
            e.map(|e| e.map(|e| Arc::try_unwrap(e).map_or_else(|e| e.event.clone(), |e| e.event)))
        })
    }
}

/// [`Watch`] as gRPC sends it: each event's encoding, shared by every
/// watcher it goes to.
pub struct WireWatch(Watch);

impl Stream for WireWatch {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_shared(cx)
            .map(|e| e.map(|e| e.map(|e| e.wire.clone())))
    }
}

/// The gRPC path [`Streams`] serves.
pub const WATCH_EVENTS_PATH: &str = "/prism.admin.v1.Admin/WatchEvents";

/// The operator API, but for `WatchEvents`, which this admin's hub serves
/// itself, leader or follower, sending each event's shared encoding. The
/// gate in front of every service has checked the caller already.
#[derive(Clone)]
pub struct Streams<S> {
    hub: Arc<Hub>,
    inner: S,
}

impl<S> Streams<S> {
    pub fn new(hub: Arc<Hub>, inner: S) -> Self {
        Self { hub, inner }
    }
}

impl<S: NamedService> NamedService for Streams<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Streams<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != WATCH_EVENTS_PATH {
            return Box::pin(self.inner.call(req));
        }
        let hub = self.hub.clone();
        Box::pin(async move {
            let watch = tower::service_fn(move |r: tonic::Request<apb::WatchRequest>| {
                let hub = hub.clone();
                async move {
                    let watch = hub.watch(r.into_inner()).await?;
                    Ok::<_, Status>(tonic::Response::new(WireWatch(watch)))
                }
            });
            let mut grpc = tonic::server::Grpc::new(WireCodec).apply_max_message_size_config(
                Some(crate::serve::MAX_REQUEST_BYTES),
                Some(crate::serve::MAX_RESPONSE_BYTES),
            );
            Ok(grpc.server_streaming(watch, req).await)
        })
    }
}

/// Sends events already encoded; reads a `WatchRequest` as prost does.
struct WireCodec;

impl Codec for WireCodec {
    type Encode = Bytes;
    type Decode = apb::WatchRequest;
    type Encoder = WireEncoder;
    type Decoder = <ProstCodec<apb::Event, apb::WatchRequest> as Codec>::Decoder;

    fn encoder(&mut self) -> WireEncoder {
        WireEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<apb::Event, apb::WatchRequest>::default().decoder()
    }
}

struct WireEncoder;

impl Encoder for WireEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct Watcher {
    hub: Arc<Hub>,
    filter: Filter,
    bookmark: Duration,
    /// The last revision sent.
    sent: i64,
    /// The last revision looked at (sent or filtered out): a bookmark's.
    considered: i64,
    /// Matching events not yet taken by the stream.
    queue: VecDeque<Arc<Shared>>,
    /// Whether a batch went since the last look at a full queue.
    progressed: bool,
    tx: mpsc::Sender<Vec<Arc<Shared>>>,
    end: Arc<std::sync::Mutex<Option<Status>>>,
    _slot: WatcherSlot,
}

enum Ended {
    /// The client went away.
    Gone,
    With(Status),
}

impl Watcher {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<Shared>>) {
        let ended = match self.follow(&mut live).await {
            Ended::Gone => None,
            Ended::With(status) => Some(status),
        };
        self.hub.metrics.watchers.dec();
        if let Some(status) = ended {
            *self.end.lock().expect("poisoned") = Some(status);
        }
        // Dropping the sender ends the stream, with the status above.
    }

    /// Events one batch carries at most.
    fn batch_max(&self) -> usize {
        BATCH_MAX.min(self.hub.watcher_queue / 2).max(1)
    }

    /// The next batch off the queue (not empty when the queue is not).
    fn batch(&mut self) -> Vec<Arc<Shared>> {
        let n = self.queue.len().min(self.batch_max());
        let batch: Vec<_> = self.queue.drain(..n).collect();
        if let Some(last) = batch.last() {
            self.sent = last.event.revision;
            self.progressed = true;
        }
        batch
    }

    /// Look at `e`: queue it if it matches. Err once the queue is full and
    /// the stream has no room for a batch of it either.
    fn take(&mut self, e: &Arc<Shared>) -> Result<(), Ended> {
        if e.event.revision <= self.considered {
            return Ok(());
        }
        self.considered = e.event.revision;
        if !self.filter.matches(&e.event) {
            return Ok(());
        }
        if self.queue.len() >= self.hub.watcher_queue {
            match self.tx.clone().try_reserve_owned() {
                Ok(permit) => {
                    permit.send(self.batch());
                }
                Err(_) => return Err(self.too_slow()),
            }
        }
        self.queue.push_back(e.clone());
        Ok(())
    }

    fn stopping(&self) -> Ended {
        Ended::With(Status::unavailable(format!(
            "this admin is stopping; resume on another admin with since_revision {}",
            self.sent
        )))
    }

    fn too_slow(&self) -> Ended {
        let queue = self.hub.watcher_queue;
        self.hub.metrics.watchers_slow.inc();
        tracing::info!(
            "a watcher fell {queue} events behind; ending it (it resumes from revision {})",
            self.sent
        );
        Ended::With(Status::resource_exhausted(format!(
            "this watcher fell more than {queue} events behind and was ended; resume with \
             since_revision {} (the last event it was sent)",
            self.sent
        )))
    }

    /// Read the log from the database after `considered`, up to `until`
    /// (or to its end), sending what matches.
    async fn catch_up(&mut self, until: Option<i64>) -> Result<(), Ended> {
        loop {
            let page = self
                .hub
                .store
                .events_after(self.considered, PAGE)
                .await
                .map_err(|e| Ended::With(unavailable(e)))?;
            let n = page.len();
            for e in page {
                if until.is_some_and(|u| e.revision >= u) {
                    return self.drain().await;
                }
                // Revisions are contiguous: a hole is what retention removed
                // while this watcher read (on any page, not only the first).
                if e.revision > self.considered + 1 {
                    return Err(Ended::With(out_of_range(self.considered, e.revision)));
                }
                self.take(&Shared::new(e))?;
                // Sent as the page is read: a long catch-up never holds
                // more than a batch.
                if self.queue.len() >= self.batch_max() {
                    self.drain().await?;
                }
            }
            if n < PAGE as usize {
                return self.drain().await;
            }
        }
    }

    /// Send what is queued, waiting for the client to take it.
    async fn drain(&mut self) -> Result<(), Ended> {
        let tx = self.tx.clone();
        while !self.queue.is_empty() {
            let permit = tx.reserve().await.map_err(|_| Ended::Gone)?;
            permit.send(self.batch());
        }
        Ok(())
    }

    /// Take `first` and whatever else the tail holds already, as far as
    /// the queue has room (the rest waits in the tail).
    async fn receive(
        &mut self,
        first: Arc<Shared>,
        live: &mut broadcast::Receiver<Arc<Shared>>,
    ) -> Result<(), Ended> {
        let mut next = first;
        loop {
            if next.event.revision > self.considered + 1 {
                // The tail started after this watcher's last read, or this
                // watcher fell behind the tail: the gap is in the database.
                self.catch_up(Some(next.event.revision)).await?;
            }
            self.take(&next)?;
            if self.queue.len() >= self.hub.watcher_queue {
                return Ok(());
            }
            next = loop {
                match live.try_recv() {
                    Ok(e) => break e,
                    // Behind the shared tail: the next event shows the gap.
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    // Closed: the next wait says so.
                    Err(_) => return Ok(()),
                }
            };
        }
    }

    async fn follow(&mut self, live: &mut broadcast::Receiver<Arc<Shared>>) -> Ended {
        if let Err(end) = self.catch_up(None).await {
            return end;
        }
        let mut idle = tokio::time::interval(self.bookmark);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        idle.reset();
        let tx = self.tx.clone();
        let mut closing = self.hub.closing.subscribe();
        let stopping = *closing.borrow_and_update();
        if stopping {
            return self.stopping();
        }
        // No partial batch goes before this: the last send plus the gap.
        let gap_len = self.hub.batch_gap;
        let mut next_batch = tokio::time::Instant::now();
        let gap = tokio::time::sleep_until(next_batch);
        tokio::pin!(gap);
        // While the queue is full: when to look at how far behind it is.
        let stall = tokio::time::sleep(gap_len);
        tokio::pin!(stall);
        loop {
            // Between batches the tail's events wait in its buffer: a busy
            // watcher wakes once a gap, not once an event. A full batch
            // goes at once, and a watcher behind the tail reads on without
            // waiting.
            let gap_over = next_batch <= tokio::time::Instant::now();
            let pending = !self.queue.is_empty();
            let full_batch = self.queue.len() >= self.batch_max();
            let full = self.queue.len() >= self.hub.watcher_queue;
            if full && stall.is_elapsed() {
                stall.as_mut().reset(tokio::time::Instant::now() + gap_len);
            }
            tokio::select! {
                () = &mut gap, if !gap_over => {}
                permit = tx.reserve(), if pending && (gap_over || full_batch) => {
                    let Ok(permit) = permit else { return Ended::Gone };
                    permit.send(self.batch());
                    // Caught up with the tail: the next wait starts. Until
                    // then, events flow as fast as the stream takes them.
                    if self.queue.is_empty() && live.is_empty() {
                        next_batch = tokio::time::Instant::now() + gap_len;
                        gap.as_mut().reset(next_batch);
                    }
                    idle.reset();
                }
                // More waits for this watcher than its queue holds, and its
                // stream took nothing for a whole gap (or it is far behind
                // the tail): it is ended.
                () = &mut stall, if full => {
                    let behind = tx.capacity() == 0 && !live.is_empty();
                    if behind && (!self.progressed || live.len() > TAIL_CAPACITY / 2) {
                        return self.too_slow();
                    }
                    self.progressed = false;
                }
                got = live.recv(), if gap_over && !full => match got {
                    Ok(e) => {
                        if let Err(end) = self.receive(e, live).await {
                            return end;
                        }
                    }
                    // Behind the shared tail (a long catch-up): the next
                    // event shows the gap, read from the database then.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return self.stopping(),
                },
                changed = closing.changed() => {
                    let stopping = changed.is_err() || *closing.borrow_and_update();
                    if stopping {
                        return self.stopping();
                    }
                }
                _ = idle.tick() => {
                    if self.queue.is_empty() {
                        let bookmark = apb::Event {
                            revision: self.considered,
                            at_unix_ms: clock::unix_ms(),
                            kind: BOOKMARK.into(),
                            ..Default::default()
                        };
                        // Only when the client keeps up; otherwise the
                        // next event tells it as much.
                        if let Ok(permit) = tx.try_reserve() {
                            permit.send(vec![Shared::new(bookmark)]);
                        } else if tx.is_closed() {
                            return Ended::Gone;
                        }
                    }
                }
                _ = tx.closed() => return Ended::Gone,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, process: &str, ns: &str) -> apb::Event {
        apb::Event {
            kind: kind.into(),
            process_id: process.into(),
            namespace: ns.into(),
            launcher_id: "host-1".into(),
            ..Default::default()
        }
    }

    fn filter(f: impl FnOnce(&mut apb::WatchRequest)) -> Result<Filter, BadWatch> {
        let mut req = apb::WatchRequest::default();
        f(&mut req);
        Filter::parse(&req)
    }

    #[test]
    fn filters_by_kind_family_prefix_and_namespace() {
        let all = filter(|_| {}).unwrap();
        assert!(all.matches(&ev("process.failed", "kv-1", "orders")));
        let failed = filter(|r| r.kinds = vec!["process.failed".into()]).unwrap();
        assert!(failed.matches(&ev("process.failed", "kv-1", "")));
        assert!(!failed.matches(&ev("process.running", "kv-1", "")));
        let family = filter(|r| r.kinds = vec!["launcher".into()]).unwrap();
        assert!(family.matches(&ev("launcher.disconnected", "", "")));
        assert!(!family.matches(&ev("process.failed", "", "")));
        let prefix = filter(|r| r.process_id = "kv-*".into()).unwrap();
        assert!(prefix.matches(&ev("process.failed", "kv-12", "")));
        assert!(!prefix.matches(&ev("process.failed", "queue-1", "")));
        let exact = filter(|r| r.process_id = "kv-1".into()).unwrap();
        assert!(!exact.matches(&ev("process.failed", "kv-12", "")));
        let ns = filter(|r| r.namespace = "orders".into()).unwrap();
        assert!(ns.matches(&ev("process.placed", "a", "orders")));
        assert!(!ns.matches(&ev("process.placed", "a", "billing")));
    }

    #[test]
    fn a_bad_filter_names_its_field() {
        let e = filter(|r| r.kinds = vec!["process.exploded".into()]).unwrap_err();
        assert_eq!(e.field, "kinds");
        assert!(e.reason.contains("process.failed"), "{e}");
        assert!(filter(|r| r.kinds = vec!["processes".into()]).is_err());
        assert_eq!(
            filter(|r| r.process_id = "a*b".into()).unwrap_err().field,
            "process_id"
        );
        assert_eq!(
            filter(|r| r.process_id = "a**".into()).unwrap_err().field,
            "process_id"
        );
    }

    fn health(status: &str, restarts: i32, exit: &str) -> pb::ProcessHealth {
        pb::ProcessHealth {
            detailed_status: status.into(),
            restart_count: restarts,
            exit_reason: exit.into(),
            pid: 42,
            ..Default::default()
        }
    }

    fn record(h: pb::ProcessHealth) -> HealthRecord {
        HealthRecord {
            health: h,
            reported_at_ms: 0,
        }
    }

    #[test]
    fn status_changes_become_events_with_reasons() {
        let spec = pb::ProcessAssignment {
            process_id: "kv-1".into(),
            namespace: "orders".into(),
            version: 2,
            ..Default::default()
        };
        let kind = |before: Option<pb::ProcessHealth>, now: pb::ProcessHealth| {
            status_change(&spec, "h", before.map(record).as_ref(), &now).map(|e| e.kind)
        };
        assert_eq!(
            kind(None, health("starting", 0, "")).unwrap(),
            "process.started"
        );
        assert_eq!(
            kind(Some(health("starting", 0, "")), health("running", 0, "")).unwrap(),
            "process.running"
        );
        assert_eq!(
            kind(Some(health("running", 0, "")), health("running", 0, "")),
            None
        );
        // A crash systemd restarted between two reports.
        let e = status_change(
            &spec,
            "h",
            Some(&record(health("running", 0, ""))),
            &health("running", 1, "signal"),
        )
        .unwrap();
        assert_eq!(e.kind, "process.restarted");
        assert_eq!(e.process.as_ref().unwrap().exit_reason, "signal");
        assert!(e.message.contains("after signal"), "{}", e.message);
        assert_eq!(e.namespace, "orders");
        assert_eq!(
            kind(
                Some(health("running", 1, "")),
                health("restarting", 2, "exit-code")
            )
            .unwrap(),
            "process.restarted"
        );
        assert_eq!(
            kind(
                Some(health("restarting", 4, "")),
                health("circuit_open", 5, "exit-code")
            )
            .unwrap(),
            "process.circuit_open"
        );
        // Caught restarting, then running again: one restart told.
        assert_eq!(
            kind(
                Some(health("running", 0, "")),
                health("restarting", 0, "signal")
            )
            .unwrap(),
            "process.restarted"
        );
        assert_eq!(
            kind(
                Some(health("restarting", 0, "signal")),
                health("running", 1, "signal")
            )
            .unwrap(),
            "process.running"
        );
        assert_eq!(
            kind(Some(health("running", 0, "")), health("unhealthy", 0, "")).unwrap(),
            "process.unhealthy"
        );
        assert_eq!(
            kind(
                Some(health("running", 0, "")),
                health("failed", 0, "exit-code")
            )
            .unwrap(),
            "process.failed"
        );
    }
}
