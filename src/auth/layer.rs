//! The gate in front of every service of a server: establish the caller
//! from the connection, check the table, and hand the caller on to the
//! handlers (as a request extension) or refuse with PERMISSION_DENIED.

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use tonic::{
    Status,
    body::Body,
    codegen::http,
    transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo},
};

use super::{
    identity::{Caller, OperatorGroup, role_of_cert},
    policy::{Denied, authorize},
};
use crate::metrics::Denial;

/// Refusals logged once per caller; past this many distinct callers, no
/// more are remembered (they are still counted).
const LOGGED_CALLERS: usize = 4096;

/// What the gate needs to know about its daemon.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    trust_domain: String,
    group: OperatorGroup,
    /// Unauthenticated TCP peers are trusted (`--insecure`).
    insecure: bool,
    /// A launcher without an admin: operators may assign.
    standalone: bool,
    denied: Family<Denial, Counter>,
    logged: Mutex<HashSet<Caller>>,
}

impl Gate {
    pub fn new(
        trust_domain: &str,
        group: OperatorGroup,
        insecure: bool,
        standalone: bool,
        denied: Family<Denial, Counter>,
    ) -> Self {
        Self {
            inner: Arc::new(GateInner {
                trust_domain: trust_domain.to_owned(),
                group,
                insecure,
                standalone,
                denied,
                logged: Mutex::default(),
            }),
        }
    }

    /// The caller of a request, from what the server put in its extensions.
    pub fn identify(&self, ext: &http::Extensions) -> Caller {
        let g = &self.inner;
        if let Some(uds) = ext.get::<UdsConnectInfo>() {
            return match uds.peer_cred {
                Some(c) => g.group.classify(c.uid(), c.gid(), c.pid()),
                // The kernel always knows; refuse rather than guess.
                None => Caller::LocalUser { uid: u32::MAX },
            };
        }
        let (addr, certs) = match ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            Some(tls) => (tls.get_ref().remote_addr(), tls.peer_certs()),
            None => (
                ext.get::<TcpConnectInfo>().and_then(|t| t.remote_addr()),
                None,
            ),
        };
        match certs.as_ref().and_then(|c| c.first()) {
            Some(cert) => match role_of_cert(cert, &g.trust_domain) {
                Ok((role, uri)) => Caller::Certified { role, uri },
                Err(e) => Caller::Unrecognised {
                    reason: e.to_string(),
                },
            },
            None if g.insecure => Caller::Insecure { addr },
            None => Caller::Anonymous { addr },
        }
    }

    /// Check `path` for `caller`; a refusal is counted, logged once per
    /// caller, and becomes PERMISSION_DENIED.
    pub fn check(&self, path: &str, caller: &Caller) -> Result<(), Status> {
        authorize(path, caller, self.inner.standalone).map_err(|d| self.refuse(path, caller, d))
    }

    /// A refusal, by the table or by a handler's own check (a launcher
    /// acting as another): counted, logged once per caller, and answered
    /// with PERMISSION_DENIED naming what was required and whom was seen.
    pub fn refuse(&self, path: &str, caller: &Caller, denied: Denied) -> Status {
        let g = &self.inner;
        g.denied
            .get_or_create(&Denial {
                rpc: rpc_label(path),
                caller: caller_kind(caller).into(),
            })
            .inc();
        let first = {
            let mut logged = g.logged.lock().unwrap_or_else(|e| e.into_inner());
            logged.len() < LOGGED_CALLERS && logged.insert(caller.clone())
        };
        if first {
            tracing::warn!(
                rpc = %path,
                caller = %denied.caller,
                "permission denied: {denied} (logged once per caller)"
            );
        }
        Status::permission_denied(denied.to_string())
    }
}

/// A metric label for an RPC: the known path, or "other" (paths are the
/// caller's to choose).
fn rpc_label(path: &str) -> String {
    if super::policy::TABLE.iter().any(|(p, _)| *p == path) {
        path.trim_start_matches('/').to_owned()
    } else {
        "other".to_owned()
    }
}

fn caller_kind(caller: &Caller) -> &'static str {
    use super::identity::Role;
    match caller {
        Caller::Root => "root",
        Caller::LocalOperator { .. } => "local_operator",
        Caller::LocalUser { .. } => "local_user",
        Caller::Certified { role, .. } => match role {
            Role::Admin => "admin",
            Role::Launcher(_) => "launcher",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        },
        Caller::Unrecognised { .. } => "unrecognised_certificate",
        Caller::Insecure { .. } => "insecure",
        Caller::Anonymous { .. } => "anonymous",
    }
}

/// The caller of a request a handler is serving, as the gate established it.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        // Only a server built without the gate lacks it: trust nothing.
        .unwrap_or(Caller::Anonymous { addr: None })
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    gate: Gate,
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for Gated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let caller = self.gate.identify(req.extensions());
        if let Err(status) = self.gate.check(req.uri().path(), &caller) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        req.extensions_mut().insert(caller);
        // The ready service takes this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}
