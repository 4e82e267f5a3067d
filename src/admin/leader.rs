//! Leadership among admins that share a database. One holds the lease
//! (see `store::postgres`) and serves; the others follow: they keep
//! trying for the lease and answer calls with where the leader is. The
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
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};

use super::store::{AdminStore, Candidate, Lease};
use crate::{
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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}/{}/{}",
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
    loop {
        let asked = Instant::now();
        let answer = tokio::time::timeout(renew_every, store.lead(&me, ttl)).await;
        let wait = match answer {
            Ok(Ok(lease)) if lease.held_by(&me) => {
                failures.reset();
                valid_until = Some(asked + trusted_for);
                if let Some(lead) = on_lead.take() {
                    tracing::info!(
                        epoch = lease.epoch,
                        "prism-admin leads (epoch {}); loading the fleet",
                        lease.epoch
                    );
                    lead(lease.clone()).await.map_err(Lost)?;
                }
                standing.send_replace(Standing::Leading(lease));
                renew_every
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
                tracing::warn!("the lease was not renewed within {renew_every:?}");
                failures.next_wait()
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

/// A service served by the leader only: until this admin leads (`leader`
/// set), each call is answered UNAVAILABLE with where the leader is, in
/// the message and in the `prism-leader` metadata.
pub struct Standby<S> {
    leader: Arc<OnceLock<S>>,
    standing: watch::Receiver<Standing>,
}

impl<S> Clone for Standby<S> {
    fn clone(&self) -> Self {
        Self {
            leader: self.leader.clone(),
            standing: self.standing.clone(),
        }
    }
}

impl<S> Standby<S> {
    pub fn new(leader: Arc<OnceLock<S>>, standing: watch::Receiver<Standing>) -> Self {
        Self { leader, standing }
    }
}

/// The metadata key a follower names the leader's address in.
pub const LEADER_METADATA: &str = "prism-leader";

/// What a follower answers.
pub fn not_leading(standing: &Standing) -> Status {
    match standing {
        Standing::Following(l) => {
            let mut status = Status::unavailable(format!(
                "this prism-admin follows; {} leads (epoch {}) at {}",
                l.holder, l.epoch, l.address
            ));
            if let Ok(v) = l.address.parse() {
                status.metadata_mut().insert(LEADER_METADATA, v);
            }
            status
        }
        _ => Status::unavailable(
            "this prism-admin does not lead yet: the database has not told it who does",
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
        match self.leader.get() {
            Some(service) => {
                let service = service.clone();
                Box::pin(tower::ServiceExt::oneshot(service, req))
            }
            None => {
                let status = not_leading(&self.standing.borrow());
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
