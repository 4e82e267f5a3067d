//! Pushing assignments and revocations to launchers, at the address each
//! registered: over mTLS with the admin's own certificate when the admin
//! has one, accepting only the certificate of the launcher meant (a
//! process's credentials go only to the launcher that runs it); or over a
//! launcher's local socket.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tonic::{Code, Status, transport::Channel};

use crate::{
    auth::dial::{Address, Expect, channel, daemon_client},
    pb::prism::{self as pb, launcher::v1::launcher_client::LauncherClient},
    settings::Tls,
};

/// Deadline of an assignment push: the launcher answers once the unit is
/// active (a `Type=notify` start can take a while).
pub const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a revocation's graceful timeout (upstream: 30 s + 5 s).
pub const REVOKE_SLACK: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Dispatcher {
    /// The leader's epoch, on every push; 0 for a view that never pushes.
    epoch: i64,
    tls: Option<Tls>,
    trust_domain: String,
    insecure: bool,
    /// By (launcher id, address): TLS checks the id in the certificate.
    channels: Mutex<HashMap<(String, String), Channel>>,
}

/// A connection that broke while idle (its peer closed it across a
/// partition, say) fails the first call on it at once; the channel
/// connects afresh for the next. Pushes are idempotent by (process,
/// version), so such a failure is tried once more at once.
async fn once_more_if_stale<T, F, Fut>(push: F) -> Result<T, Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = std::time::Instant::now();
    match push().await {
        Err(s) if s.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(1) => {
            tracing::debug!(
                "push failed at once ({}); once more on a new connection",
                s.message()
            );
            push().await
        }
        other => other,
    }
}

/// A push failed because the launcher could not be reached (retry later),
/// not because it refused.
pub fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// A client within the size limits both ends agree on.
fn sized(channel: Channel) -> LauncherClient<Channel> {
    LauncherClient::new(channel)
        .max_decoding_message_size(crate::serve::MAX_RESPONSE_BYTES)
        .max_encoding_message_size(crate::serve::MAX_REQUEST_BYTES)
}

impl Dispatcher {
    /// Push with `tls` (the admin's own certificate, and the CA launchers'
    /// certificates chain to) when configured; plaintext to a launcher on
    /// another host only when `insecure`.
    pub fn new(tls: Option<Tls>, trust_domain: String, insecure: bool) -> Self {
        Self {
            epoch: 0,
            tls,
            trust_domain,
            insecure,
            channels: Mutex::default(),
        }
    }

    /// Push as the leader of `epoch`: a launcher refuses an order older
    /// than the newest it obeyed, so a deposed leader's push in flight
    /// cannot undo its successor's.
    pub fn with_epoch(mut self, epoch: i64) -> Self {
        self.epoch = epoch;
        self
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    fn client(&self, launcher: &str, address: &str) -> Result<LauncherClient<Channel>, Status> {
        let key = (launcher.to_owned(), address.to_owned());
        let mut channels = self.channels.lock().expect("poisoned");
        if let Some(ch) = channels.get(&key) {
            return Ok(sized(ch.clone()));
        }
        let refuse = |reason: String| {
            Status::failed_precondition(format!("launcher {launcher} at {address}: {reason}"))
        };
        let target = Address::parse(address).map_err(refuse)?;
        let tls = match (&target, &self.tls) {
            (Address::Unix(_), _) => None,
            (Address::Tcp { .. }, Some(tls)) => Some(
                daemon_client(
                    tls,
                    &self.trust_domain,
                    Expect::Launcher(launcher.to_owned()),
                )
                .map_err(|e| refuse(e.to_string()))?,
            ),
            (Address::Tcp { .. }, None) if target.is_local() || self.insecure => None,
            (Address::Tcp { .. }, None) => {
                return Err(refuse(
                    "plaintext to another host would hand its processes' credentials to \
                     anyone on the path; configure TLS, or pass --insecure"
                        .into(),
                ));
            }
        };
        let channel = channel(&target, tls, CONNECT_TIMEOUT).map_err(|e| refuse(e.to_string()))?;
        channels.insert(key, channel.clone());
        Ok(sized(channel))
    }

    /// Drop a cached connection (the launcher moved or re-registered).
    pub fn forget(&self, address: &str) {
        self.channels
            .lock()
            .expect("poisoned")
            .retain(|(_, a), _| a != address);
    }

    pub async fn assign(
        &self,
        launcher: &str,
        address: &str,
        spec: &pb::ProcessAssignment,
    ) -> Result<pb::ProcessAssignmentAck, Status> {
        let push = || async {
            let mut client = self.client(launcher, address)?;
            let mut request = tonic::Request::new(spec.clone());
            request.set_timeout(ASSIGN_TIMEOUT);
            self.as_admin(&mut request);
            match tokio::time::timeout(ASSIGN_TIMEOUT, client.assign_process(request)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "launcher at {address} did not answer within {ASSIGN_TIMEOUT:?}"
                ))),
            }
        };
        once_more_if_stale(push).await
    }

    pub async fn revoke(
        &self,
        address: &str,
        launcher_id: &str,
        process_id: &str,
        graceful_timeout_seconds: i32,
    ) -> Result<pb::ProcessRevocationAck, Status> {
        let grace = Duration::from_secs(match graceful_timeout_seconds {
            s if s > 0 => s as u64,
            _ => 30,
        });
        let deadline = grace + REVOKE_SLACK;
        let push = || async {
            let mut client = self.client(launcher_id, address)?;
            let mut request = tonic::Request::new(pb::ProcessRevocation {
                launcher_id: launcher_id.into(),
                process_id: process_id.into(),
                graceful_timeout_seconds,
            });
            request.set_timeout(deadline);
            // The admin checked the whole fleet for what depends on it.
            self.as_admin(&mut request);
            match tokio::time::timeout(deadline, client.revoke_process(request)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "launcher at {address} did not finish the revocation within {deadline:?}"
                ))),
            }
        };
        once_more_if_stale(push).await
    }
}

impl Dispatcher {
    /// Say the call is the admin's (`prism-placed-by: admin`: what a
    /// launcher trusts from callers holding every role; a certificate says
    /// it anyway), and the epoch that decided it.
    fn as_admin<T>(&self, request: &mut tonic::Request<T>) {
        let metadata = request.metadata_mut();
        metadata.insert(
            crate::protocol::PLACED_BY_METADATA,
            tonic::metadata::MetadataValue::from_static("admin"),
        );
        if self.epoch > 0 {
            metadata.insert(
                crate::protocol::EPOCH_METADATA,
                tonic::metadata::MetadataValue::from(self.epoch),
            );
        }
    }
}
