//! Pushing assignments and revocations to launchers, at the address each
//! registered, over TLS (mTLS with the admin's own certificate) when the
//! admin has it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tonic::{Code, Status, transport::Channel};

use crate::{
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
    tls: Option<Tls>,
    channels: Mutex<HashMap<String, Channel>>,
}

/// A push failed because the launcher could not be reached (retry later),
/// not because it refused.
pub fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

impl Dispatcher {
    pub fn new(tls: Option<Tls>) -> Self {
        Self {
            tls,
            channels: Mutex::default(),
        }
    }

    fn client(&self, address: &str) -> Result<LauncherClient<Channel>, Status> {
        let mut channels = self.channels.lock().expect("poisoned");
        if let Some(ch) = channels.get(address) {
            return Ok(LauncherClient::new(ch.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| Status::invalid_argument(format!("launcher address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client_config())
                .map_err(|e| Status::internal(format!("TLS for {address}: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(LauncherClient::new(channel))
    }

    /// Drop a cached connection (the launcher moved or re-registered).
    pub fn forget(&self, address: &str) {
        self.channels.lock().expect("poisoned").remove(address);
    }

    pub async fn assign(
        &self,
        address: &str,
        spec: &pb::ProcessAssignment,
    ) -> Result<pb::ProcessAssignmentAck, Status> {
        let mut client = self.client(address)?;
        let mut request = tonic::Request::new(spec.clone());
        request.set_timeout(ASSIGN_TIMEOUT);
        match tokio::time::timeout(ASSIGN_TIMEOUT, client.assign_process(request)).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "launcher at {address} did not answer within {ASSIGN_TIMEOUT:?}"
            ))),
        }
    }

    pub async fn revoke(
        &self,
        address: &str,
        launcher_id: &str,
        process_id: &str,
        graceful_timeout_seconds: i32,
    ) -> Result<pb::ProcessRevocationAck, Status> {
        let mut client = self.client(address)?;
        let grace = Duration::from_secs(match graceful_timeout_seconds {
            s if s > 0 => s as u64,
            _ => 30,
        });
        let deadline = grace + REVOKE_SLACK;
        let mut request = tonic::Request::new(pb::ProcessRevocation {
            launcher_id: launcher_id.into(),
            process_id: process_id.into(),
            graceful_timeout_seconds,
        });
        request.set_timeout(deadline);
        match tokio::time::timeout(deadline, client.revoke_process(request)).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "launcher at {address} did not finish the revocation within {deadline:?}"
            ))),
        }
    }
}
