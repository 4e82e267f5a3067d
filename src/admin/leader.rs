//! Leadership among admins that share a database. One holds the lease
//! (see `store::postgres`) and serves; the others follow: they keep
//! trying for the lease and pass calls on to the leader, so a launcher or
//! a client may talk to any admin. The
//! leader renews every third of the lease; if it cannot renew in time it
//! stops (the admin exits and systemd starts it again as a follower), so
//! nothing it remembers outlives its term. Its writes are fenced by its
//! epoch in any case: a deposed leader that has not noticed yet writes
//! nothing.
//!
//! With an embedded database the one admin leads at once, for ever.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
    transport::Channel,
};

use super::store::{AdminStore, Candidate, Lease};
use crate::{
    auth::{
        Caller,
        dial::{Address, Expect, channel, daemon_client},
        layer::Forwarded,
    },
    backoff::{Backoff, Policy},
    serve::Shutdown,
};

/// Where this admin stands, as it last read the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The database has not answered yet.
    Unknown,
    Following(Lease),
    Leading(Lease),
}

impl Standing {
    pub fn lease(&self) -> Option<&Lease> {
        match self {
            Self::Unknown => None,
            Self::Following(l) | Self::Leading(l) => Some(l),
        }
    }

    pub fn leading(&self) -> bool {
        matches!(self, Self::Leading(_))
    }
}

/// A unique instance id: this host, this process, this start.
pub fn instance_id() -> String {
    format!(
        "{}/{}/{}",
        crate::settings::hostname(),
        std::process::id(),
        crate::clock::since_epoch().as_micros()
    )
}

/// The leader could not keep its lease.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Lost(pub String);

/// Take the lease and keep it, until `shutdown` (Ok) or until it is lost
/// (Err). `on_lead` runs once, when this admin first holds it, before it
/// is announced as leading: it loads the fleet and starts serving.
pub async fn campaign<F, Fut>(
    store: Arc<dyn AdminStore>,
    me: Candidate,
    ttl: Duration,
    standing: watch::Sender<Standing>,
    on_lead: F,
    mut shutdown: Shutdown,
) -> Result<(), Lost>
where
    F: FnOnce(Lease) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let renew_every = ttl / 3;
    // The leader stops trusting its lease well before the database
    // expires it: its clock and the database's may drift apart a little.
    let trusted_for = ttl - ttl / 5;
    let mut on_lead = Some(on_lead);
    // Since the start of the last renewal that succeeded.
    let mut valid_until: Option<Instant> = None;
    let mut failures = Backoff::new(Policy::new(Duration::from_millis(100), renew_every));
    // A renewal still on its way. A slow answer is waited for, up to a
    // whole lease: abandoning it would drop its connection, and on a slow
    // link a new one (TCP, TLS, authentication) takes longer than the
    // lease has left. Late, it still counts from when it was asked.
    type Call = tokio::task::JoinHandle<Result<Lease, crate::admin::store::StoreError>>;
    let mut in_flight: Option<(Instant, Call)> = None;
    let result = async {
        loop {
            let (asked, mut call) = match in_flight.take() {
                Some(call) => call,
                None => {
                    let (store, me) = (store.clone(), me.clone());
                    let call: Call = tokio::spawn(async move { store.lead(&me, ttl).await });
                    (Instant::now(), call)
                }
            };
            let patience = valid_until.map_or(renew_every, |until| {
                renew_every.min(until.saturating_duration_since(Instant::now()))
            });
            let answer = match tokio::time::timeout(patience, &mut call).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Ok(Err(crate::admin::store::StoreError::Db(sqlx::Error::Io(
                    std::io::Error::other(format!("the lease's call ended: {e}")),
                )))),
                Err(elapsed) => {
                    if asked.elapsed() >= ttl {
                        // Longer than a whole lease: a connection that
                        // went half-open. Dropped; the next call connects
                        // afresh (a follower would otherwise wait forever).
                        call.abort();
                    } else {
                        in_flight = Some((asked, call));
                    }
                    Err(elapsed)
                }
            };
            let wait = match answer {
                Ok(Ok(lease)) if lease.held_by(&me) => {
                    failures.reset();
                    valid_until = Some(asked + trusted_for);
                    let first = on_lead.is_some();
                    if let Some(lead) = on_lead.take() {
                        tracing::info!(
                            epoch = lease.epoch,
                            "prism-admin leads (epoch {}); loading the fleet",
                            lease.epoch
                        );
                        lead(lease.clone()).await.map_err(Lost)?;
                    }
                    standing.send_replace(Standing::Leading(lease));
                    if first {
                        // Loading took part of the lease: renew at once.
                        Duration::ZERO
                    } else {
                        // Every renew_every from when the last was asked,
                        // not from its answer: on a slow link the round
                        // trip would otherwise eat the lease's margin.
                        renew_every.saturating_sub(asked.elapsed())
                    }
                }
                Ok(Ok(lease)) => {
                    failures.reset();
                    if valid_until.is_some() {
                        return Err(Lost(format!(
                            "{} took the lease (epoch {})",
                            lease.holder, lease.epoch
                        )));
                    }
                    // Try again just after it would expire, unless renewed.
                    let wait = (lease.remaining + Duration::from_millis(20)).min(renew_every);
                    if standing.borrow().lease().map(|l| (&l.holder, l.epoch))
                        != Some((&lease.holder, lease.epoch))
                    {
                        tracing::info!(
                            epoch = lease.epoch,
                            "prism-admin follows {} at {} (epoch {})",
                            lease.holder,
                            lease.address,
                            lease.epoch
                        );
                    }
                    standing.send_replace(Standing::Following(lease));
                    wait
                }
                Ok(Err(e)) => {
                    tracing::warn!("the lease could not be read or renewed: {e}");
                    failures.next_wait()
                }
                Err(_) => {
                    tracing::warn!(
                        "the lease was not renewed within {:?}; still waiting for the answer",
                        asked.elapsed()
                    );
                    Duration::ZERO
                }
            };
            let wait = match valid_until {
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        return Err(Lost(format!(
                            "the lease was not renewed for {trusted_for:?}"
                        )));
                    }
                    wait.min(until - now)
                }
                None => wait,
            };
            if shutdown.until(tokio::time::sleep(wait)).await.is_none() {
                return Ok(());
            }
        }
    }
    .await;
    if let Some((_, call)) = in_flight {
        call.abort();
    }
    result
}

/// Passes calls on to the leader, over one connection per leader address
/// (TLS with this admin's own certificate, verifying an admin's).
pub struct Forwarder {
    tls: Option<crate::settings::Tls>,
    trust_domain: String,
    insecure: bool,
    channel: Mutex<Option<(String, Channel)>>,
}

/// How long a follower waits to connect to the leader.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Forwarder {
    pub fn new(tls: Option<crate::settings::Tls>, trust_domain: String, insecure: bool) -> Self {
        Self {
            tls,
            trust_domain,
            insecure,
            channel: Mutex::new(None),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut cached = self.channel.lock().expect("forwarder");
        if let Some((a, ch)) = cached.as_ref()
            && a == address
        {
            return Ok(ch.clone());
        }
        let refuse = |reason: String| {
            Status::unavailable(format!(
                "this prism-admin follows and cannot pass the call on to the leader at                  {address}: {reason}"
            ))
        };
        let target = Address::parse(address).map_err(refuse)?;
        let tls = match (&target, &self.tls) {
            (Address::Unix(_), _) => None,
            (Address::Tcp { .. }, Some(tls)) => Some(
                daemon_client(tls, &self.trust_domain, Expect::Admin)
                    .map_err(|e| refuse(e.to_string()))?,
            ),
            (Address::Tcp { .. }, None) if target.is_local() || self.insecure => None,
            (Address::Tcp { .. }, None) => {
                return Err(refuse(
                    "plaintext to another host; configure TLS, or pass --insecure".into(),
                ));
            }
        };
        let ch =
            channel(&target, tls, FORWARD_CONNECT_TIMEOUT).map_err(|e| refuse(e.to_string()))?;
        *cached = Some((address.to_owned(), ch.clone()));
        Ok(ch)
    }

    /// Pass `req` (its caller established by this admin's gate) on to the
    /// leader `lease` names, for that caller.
    async fn forward(
        &self,
        lease: &Lease,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Body>, Status> {
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous { addr: None });
        let value = http::HeaderValue::from_str(&caller.forwarded())
            .map_err(|_| Status::internal("the caller cannot be named in metadata"))?;
        req.headers_mut()
            .insert(crate::protocol::FORWARDED_CALLER_METADATA, value);
        let channel = self.channel(&lease.address)?;
        tower::ServiceExt::oneshot(channel, req).await.map_err(|e| {
            Status::unavailable(format!(
                "this prism-admin follows; the leader {} (epoch {}) at {} cannot be \
                 reached: {e}",
                lease.holder, lease.epoch, lease.address
            ))
        })
    }
}

/// A service served by the leader: until this admin leads (`leader` set),
/// each call is passed on to the leader, for its caller, but for the reads
/// it serves itself from the database ([`Standby::with_local_reads`]). A call another
/// admin passed on already, or one made before the leader is known, is
/// answered UNAVAILABLE with where the leader is (in the message, and in
/// the `prism-leader` metadata): the client tries again.
pub struct Standby<S> {
    leader: Arc<OnceLock<S>>,
    standing: watch::Receiver<Standing>,
    forwarder: Arc<Forwarder>,
    /// The reads a follower serves itself (which methods, and the service
    /// to serve them with, made afresh from the database).
    local: Option<(IsRead, LocalReads<S>)>,
}

/// Picks, by path, the methods a follower serves itself.
pub type IsRead = fn(&str) -> bool;

/// Makes the service a follower serves reads with.
pub type LocalReads<S> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<S, Status>> + Send>> + Send + Sync>;

impl<S> Clone for Standby<S> {
    fn clone(&self) -> Self {
        Self {
            leader: self.leader.clone(),
            standing: self.standing.clone(),
            forwarder: self.forwarder.clone(),
            local: self.local.clone(),
        }
    }
}

impl<S> Standby<S> {
    pub fn new(
        leader: Arc<OnceLock<S>>,
        standing: watch::Receiver<Standing>,
        forwarder: Arc<Forwarder>,
    ) -> Self {
        Self {
            leader,
            standing,
            forwarder,
            local: None,
        }
    }

    /// Serve the methods `is_read` picks (by path) with what `reads`
    /// makes, instead of passing them on: they answer while no admin
    /// leads, and spare the leader.
    pub fn with_local_reads(mut self, is_read: IsRead, reads: LocalReads<S>) -> Self {
        self.local = Some((is_read, reads));
        self
    }
}

/// The metadata key a follower names the leader's address in.
pub const LEADER_METADATA: &str = "prism-leader";

/// What a follower answers when it does not pass a call on.
pub fn not_leading(standing: &Standing) -> Status {
    match standing {
        Standing::Following(l) | Standing::Leading(l) => {
            let mut status = Status::unavailable(format!(
                "this prism-admin follows; {} leads (epoch {}) at {}",
                l.holder, l.epoch, l.address
            ));
            if let Ok(v) = l.address.parse() {
                status.metadata_mut().insert(LEADER_METADATA, v);
            }
            status
        }
        Standing::Unknown => Status::unavailable(
            "this prism-admin does not lead, and the database has not told it who does yet",
        ),
    }
}

impl<S: NamedService> NamedService for Standby<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Standby<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the leader's service's, asked per call below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(service) = self.leader.get() {
            let service = service.clone();
            return Box::pin(tower::ServiceExt::oneshot(service, req));
        }
        if let Some((is_read, reads)) = &self.local
            && is_read(req.uri().path())
        {
            let reads = reads.clone();
            return Box::pin(async move {
                Ok(match reads().await {
                    Ok(service) => tower::ServiceExt::oneshot(service, req).await?,
                    Err(status) => status.into_http(),
                })
            });
        }
        let standing = self.standing.borrow().clone();
        let lease = match &standing {
            Standing::Following(lease) if req.extensions().get::<Forwarded>().is_none() => {
                lease.clone()
            }
            _ => {
                let status = not_leading(&standing);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let forwarder = self.forwarder.clone();
        Box::pin(async move {
            Ok(match forwarder.forward(&lease, req).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}
