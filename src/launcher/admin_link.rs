//! The launcher's link to prism-admin: register (with jittered backoff while
//! the admin is unreachable), reconcile to the processes the admin placed
//! here, then heartbeat. Any failure leads back to registration, so an admin
//! restart or a partition heals by itself. Workloads keep running and
//! direct assignments keep being accepted throughout.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use tonic::transport::Channel;

use super::{Config, supervisor::Supervisor};
use crate::{
    auth::dial::{Address, DialError, Expect, channel, daemon_client, describe},
    backoff::{Backoff, Policy},
    model::Assignment,
    pb::prism::{self as pb, control_plane_client::ControlPlaneClient},
    serve::Shutdown,
};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF: Policy = Policy::new(Duration::from_secs(1), Duration::from_secs(30));

/// The least time between two heartbeats sent early, for a change.
const EARLY_GAP: Duration = Duration::from_millis(100);
/// How long an early heartbeat waits for the changes that come with the
/// first (a restart is several signals).
const EARLY_GATHER: Duration = Duration::from_millis(15);

/// A heartbeat not answered within three intervals (1 s to 5 s) has
/// failed: the launcher tries the next admin before its admins think it
/// disconnected (six). Heartbeats do not wait for answers, so a round trip
/// up to this long costs nothing.
fn answer_timeout(interval: Duration) -> Duration {
    (interval * 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Heartbeats unanswered at once, at most.
const MAX_IN_FLIGHT: usize = 8;

/// Registration retries wait at most two intervals (1 s to 30 s): a
/// launcher back on the network is back at its admins within about that,
/// whatever the length of the partition.
fn retry_cap(interval: Duration) -> Duration {
    (interval * 2).clamp(Duration::from_secs(1), BACKOFF.max)
}

pub struct AdminLink {
    supervisor: Arc<Supervisor>,
    /// Every admin configured, each with its client: any of them will do
    /// (followers pass calls on to the leader).
    admins: Vec<(String, ControlPlaneClient<Channel>)>,
    /// The one in use.
    current: usize,
    /// The one it should talk to.
    endpoint: String,
    client: ControlPlaneClient<Channel>,
    registration: pb::LauncherRegistration,
    interval: Duration,
    /// Placed here by the last registration: what it stopped while cut off
    /// among these starts again once a heartbeat is answered (a
    /// registration may have been sent long before its answer came).
    resume: Vec<String>,
}

impl AdminLink {
    /// Prepare the link to the admins at `config.admin_endpoints`: over TLS
    /// whenever TLS is configured (whatever an endpoint's spelling),
    /// accepting only a certificate that names the admin; the local socket;
    /// or plaintext where configuration allowed it.
    pub fn new(config: &Config, supervisor: Arc<Supervisor>) -> Result<Self, DialError> {
        let mut admins = Vec::new();
        let mut tls_used = false;
        for endpoint in &config.admin_endpoints {
            let tls = match (endpoint, &config.tls) {
                (Address::Tcp { .. }, Some(tls)) => {
                    Some(daemon_client(tls, &config.trust_domain, Expect::Admin)?)
                }
                _ => None,
            };
            tls_used |= tls.is_some();
            let channel = channel(endpoint, tls, Duration::from_secs(3))?;
            admins.push((
                endpoint.to_string(),
                ControlPlaneClient::new(channel)
                    .max_decoding_message_size(crate::serve::MAX_RESPONSE_BYTES)
                    .max_encoding_message_size(crate::serve::MAX_REQUEST_BYTES),
            ));
        }
        let (endpoint, client) = admins.first().cloned().ok_or_else(|| DialError::Address {
            address: String::new(),
            reason: "no admin endpoint".into(),
        })?;
        let types: Vec<String> = config.capabilities.iter().map(|t| t.to_string()).collect();
        let registration = pb::LauncherRegistration {
            launcher_id: config.launcher_id.clone(),
            address: config.advertise_address.clone(),
            region: config.region.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: types.clone(),
            max_processes: config.max_processes as i32,
            process_types: types,
            metadata: config
                .labels
                .clone()
                .into_iter()
                .chain([
                    ("hostname".to_owned(), crate::settings::hostname()),
                    ("systemd".to_owned(), config.systemd.to_string()),
                    ("tls".to_owned(), tls_used.to_string()),
                ])
                .collect(),
            held: Vec::new(),
            disconnect_stops: Vec::new(),
        };
        Ok(Self {
            supervisor,
            admins,
            current: 0,
            endpoint,
            client,
            registration,
            interval: config.heartbeat_interval,
            resume: Vec::new(),
        })
    }

    /// Talk to the next admin configured (the same one when there is one).
    fn next_admin(&mut self) {
        self.current = (self.current + 1) % self.admins.len();
        (self.endpoint, self.client) = self.admins[self.current].clone();
    }

    /// Register, then heartbeat, and again after any failure, until
    /// shutdown (a registration or heartbeat in flight finishes first).
    pub async fn run(mut self, mut shutdown: Shutdown) {
        // Jittered: launchers must not reconnect in step after an admin
        // restart.
        let mut backoff = Backoff::new(BACKOFF);
        // Admins tried in a row without success.
        let mut failed = 0;
        loop {
            match self.register().await {
                Ok(()) => {
                    backoff.reset();
                    failed = 0;
                }
                Err(reason) => {
                    failed += 1;
                    let tried = self.endpoint.clone();
                    self.next_admin();
                    // The next admin at once, until each has failed once.
                    backoff.set_max(retry_cap(self.interval));
                    let wait = if failed % self.admins.len() == 0 {
                        backoff.next_wait()
                    } else {
                        Duration::ZERO
                    };
                    let next = if self.admins.len() == 1 {
                        "retrying".to_owned()
                    } else {
                        format!("trying {}", self.endpoint)
                    };
                    tracing::warn!(
                        admin = %tried,
                        "cannot register with the admin at {tried} ({reason}); {next} in {wait:.1?}"
                    );
                    if shutdown.until(tokio::time::sleep(wait)).await.is_none() {
                        return;
                    }
                    continue;
                }
            }
            let Some(reason) = self.heartbeat_until_failure(&mut shutdown).await else {
                return;
            };
            let lost = self.endpoint.clone();
            self.next_admin();
            tracing::warn!(admin = %lost, "lost the admin at {lost} ({reason}); registering again with {}", self.endpoint);
            let pause = BACKOFF.jittered(0, crate::backoff::seed());
            if shutdown.until(tokio::time::sleep(pause)).await.is_none() {
                return;
            }
        }
    }

    async fn register(&mut self) -> Result<(), String> {
        // Assignments made after this point are newer than the admin's answer.
        let asked_at = self.supervisor.assign_seq();
        let stops = self.supervisor.contact.stops();
        let registration = pb::LauncherRegistration {
            held: self.supervisor.held(),
            disconnect_stops: stops.clone(),
            ..self.registration.clone()
        };
        let sent_ms = crate::clock::unix_ms();
        let ack = tokio::time::timeout(
            REGISTER_TIMEOUT,
            self.client.register_launcher(registration),
        )
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|s| describe(&s))?
        .into_inner();
        if !ack.success {
            return Err(format!("refused: {}", ack.message));
        }
        // A deposed leader's answer is no answer: its placement is not
        // applied, and its silence clock is not reset.
        self.supervisor
            .contact
            .obey(ack.epoch)
            .map_err(|e| format!("answered by a deposed leader: {e}"))?;
        self.supervisor.contact.answered(sent_ms);
        self.supervisor.contact.reported(&stops);
        if ack.heartbeat_interval_ms > 0 {
            self.interval = Duration::from_millis(ack.heartbeat_interval_ms as u64);
        }
        self.supervisor.contact.set_interval(self.interval);
        tracing::info!(
            admin = %self.endpoint,
            "registered with the admin at {}: {} processes placed here; heartbeat every {:?}",
            self.endpoint,
            ack.initial_processes.len(),
            self.interval
        );
        let reclaim: HashSet<String> = ack.reclaim.iter().cloned().collect();
        let placed: Vec<String> = ack
            .initial_processes
            .iter()
            .map(|a| a.process_id.clone())
            .collect();
        self.supervisor
            .sync_to(ack.initial_processes, asked_at, &reclaim)
            .await;
        // What it stopped while cut off and is still placed here starts
        // again after the first heartbeat answered; the rest `sync_to`
        // revoked.
        self.resume = placed;
        self.supervisor.allow_stopping_undesired(true);
        self.supervisor.request_reconcile();
        if !ack.reclaim.is_empty() {
            self.hand_back(&ack.reclaim).await?;
        }
        Ok(())
    }

    /// Send the admin the assignments it lost (`reclaim` of its ack), in
    /// batches within the request size limit. What it refuses is revoked.
    async fn hand_back(&mut self, ids: &[String]) -> Result<(), String> {
        let assignments = self.supervisor.assignments(ids);
        let count = assignments.len();
        // Batches of at most half the request limit (one at least).
        let (mut batches, mut batch, mut bytes) = (Vec::new(), Vec::new(), 0);
        for a in assignments {
            let size = prost::Message::encoded_len(&a);
            if bytes + size > crate::serve::MAX_REQUEST_BYTES / 2 && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(a);
        }
        batches.push(batch);
        let mut refused = std::collections::BTreeMap::new();
        for processes in batches.into_iter().filter(|b| !b.is_empty()) {
            let request = pb::ReclaimRequest {
                launcher_id: self.registration.launcher_id.clone(),
                processes,
            };
            let ack =
                tokio::time::timeout(REGISTER_TIMEOUT, self.client.reclaim_processes(request))
                    .await
                    .map_err(|_| "no answer to ReclaimProcesses".to_owned())?
                    .map_err(|s| describe(&s))?
                    .into_inner();
            refused.extend(ack.refused);
        }
        tracing::info!(
            admin = %self.endpoint,
            "handed {} processes back to the admin, which had lost them; {} refused",
            count - refused.len(),
            refused.len()
        );
        for (id, why) in refused {
            tracing::warn!(prism_process_id = %id, "revoking {id}: the admin would not take it back ({why})");
            if let Err(e) = self.supervisor.revoke_for_admin(&id, None).await {
                tracing::warn!(prism_process_id = %id, "cannot revoke {id}: {e}");
            }
        }
        Ok(())
    }

    /// Heartbeat until the admin is unreachable or asks to register again
    /// (why), or until shutdown (`None`). Heartbeats leave on their own
    /// schedule, whatever the round trip takes: each is sent without
    /// waiting for the answer to the one before (a few at most in
    /// flight), so a slow network delays answers but never the heartbeats
    /// the admins count. Only an error, or no answer to one sent
    /// [`answer_timeout`] ago, is a failure.
    async fn heartbeat_until_failure(&mut self, shutdown: &mut Shutdown) -> Option<String> {
        use futures_util::{StreamExt, stream::FuturesUnordered};
        // The first at once: it tells the launcher the admin hears it now.
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A change of a process's state goes at once (what the admin's
        // watchers wait for), at most one every EARLY_GAP.
        let mut changes = self.supervisor.changed.subscribe();
        let mut last_sent: Option<tokio::time::Instant> = None;
        let mut in_flight = FuturesUnordered::new();
        // When the oldest unanswered heartbeat left (answers come in any
        // order: each answer settles those sent before it).
        let mut unanswered: std::collections::VecDeque<(i64, tokio::time::Instant)> =
            Default::default();
        let within = answer_timeout(self.interval);
        loop {
            let oldest = unanswered.front().map(|(_, at)| *at + within);
            let give_up = oldest.unwrap_or_else(|| tokio::time::Instant::now() + within);
            let next = async {
                tokio::select! {
                    Some(answer) = in_flight.next(), if !in_flight.is_empty() => Some(answer),
                    _ = tokio::time::sleep_until(give_up), if oldest.is_some() => None,
                    _ = ticks.tick() => Some(Beat::Due),
                    Ok(()) = changes.changed() => {
                        let earliest = last_sent.map(|at| at + EARLY_GAP);
                        let gather = tokio::time::Instant::now() + EARLY_GATHER;
                        tokio::time::sleep_until(earliest.map_or(gather, |e| e.max(gather))).await;
                        changes.borrow_and_update();
                        ticks.reset();
                        Some(Beat::Due)
                    }
                }
            };
            match shutdown.until(next).await? {
                None => {
                    self.supervisor.metrics.heartbeat_failures.inc();
                    return Some(format!("no answer to a heartbeat within {within:?}"));
                }
                Some(Beat::Due) if in_flight.len() >= MAX_IN_FLIGHT => {
                    // The admin has this many unanswered: one more tells it
                    // nothing the next answer will not.
                }
                Some(Beat::Due) => {
                    last_sent = Some(tokio::time::Instant::now());
                    let request = self.heartbeat_request().await;
                    let sent_ms = crate::clock::unix_ms();
                    unanswered.push_back((sent_ms, tokio::time::Instant::now()));
                    let mut client = self.client.clone();
                    in_flight.push(async move {
                        Beat::Answered(sent_ms, client.launcher_heartbeat(request).await)
                    });
                }
                Some(Beat::Answered(sent_ms, answer)) => {
                    unanswered.retain(|(sent, _)| *sent > sent_ms);
                    if let Some(why) = self.answered(sent_ms, answer) {
                        return Some(why);
                    }
                }
            }
        }
    }

    async fn heartbeat_request(&self) -> pb::LauncherHeartbeatRequest {
        let list = self.supervisor.list("", "", "").await;
        let process_health = list
            .processes
            .into_iter()
            .filter_map(|p| {
                let id = p.assignment?.process_id;
                Some((id, p.health.unwrap_or_default()))
            })
            .collect();
        pb::LauncherHeartbeatRequest {
            launcher_id: self.registration.launcher_id.clone(),
            process_health,
            resources: list.resources,
            timestamp: crate::clock::unix_secs(),
        }
    }

    /// Take the answer to a heartbeat sent at `sent_ms`: why heartbeating
    /// here must stop, if it must.
    fn answered(
        &mut self,
        sent_ms: i64,
        answer: Result<tonic::Response<pb::HeartbeatAck>, tonic::Status>,
    ) -> Option<String> {
        let ack = match answer {
            Ok(ack) => ack.into_inner(),
            Err(status) => {
                self.supervisor.metrics.heartbeat_failures.inc();
                return Some(describe(&status));
            }
        };
        if self.supervisor.contact.obey(ack.epoch).is_err() {
            self.supervisor.metrics.heartbeat_failures.inc();
            return Some(format!(
                "answered by a deposed leader (epoch {}, older than {} obeyed)",
                ack.epoch,
                self.supervisor.contact.epoch()
            ));
        }
        // Heard, if only to be asked to register again.
        self.supervisor.contact.answered(sent_ms);
        if ack.reregister {
            return Some(format!("it asks to register again: {}", ack.message));
        }
        if !self.resume.is_empty() {
            self.supervisor.resume(&std::mem::take(&mut self.resume));
        }
        None
    }
}

/// What the heartbeat loop waits for.
enum Beat {
    Due,
    Answered(
        i64,
        Result<tonic::Response<pb::HeartbeatAck>, tonic::Status>,
    ),
}

impl Supervisor {
    /// Make the held processes `wanted` (what the admin placed here, as of
    /// assignment `asked_at`): assign each (idempotent by version), and
    /// revoke the rest that were assigned before the admin was asked; later
    /// ones are newer than its answer, and heartbeats settle them. Processes
    /// the admin asked to have handed back (`keep_too`) are kept.
    pub async fn sync_to(
        self: &Arc<Self>,
        wanted: Vec<pb::ProcessAssignment>,
        asked_at: u64,
        keep_too: &HashSet<String>,
    ) {
        let mut keep = keep_too.clone();
        keep.extend(wanted.iter().map(|a| a.process_id.clone()));
        stream::iter(wanted)
            .for_each_concurrent(32, |a| {
                let this = self.clone();
                async move {
                    let id = a.process_id.clone();
                    let assigned = match Assignment::try_from((a, this.policy())) {
                        Ok(assignment) => this.assign(assignment, true).await,
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = assigned {
                        tracing::warn!(prism_process_id = %id, "cannot take {id} from the admin: {e}");
                    }
                }
            })
            .await;
        let extra: Vec<String> = self
            .table()
            .entries
            .values()
            .filter(|e| !keep.contains(&e.process.id) && e.assigned_seq <= asked_at)
            .map(|e| e.process.id.clone())
            .collect();
        for id in extra {
            tracing::info!(prism_process_id = %id, "revoking {id}: the admin no longer places it here");
            if let Err(e) = self.revoke_for_admin(&id, None).await {
                tracing::warn!(prism_process_id = %id, "cannot revoke {id}: {e}");
            }
        }
    }
}
