//! The gate in front of every service of a server: establish the caller
//! from the connection, check the table, and hand the caller on to the
//! handlers (as a request extension) or refuse with PERMISSION_DENIED.

use std::{
    collections::{HashMap, HashSet},
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

/// Requests one connection may have in flight (TCP: the peer's address and
/// port; the local socket: the peer process); more are RESOURCE_EXHAUSTED.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// No request runs longer: the longest is a revocation with the longest
/// graceful timeout (1 h) plus slack. Past it: DEADLINE_EXCEEDED.
pub const MAX_REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(3600 + 60);

/// One connection, as far as the server can tell.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Connection {
    Tcp(std::net::SocketAddr),
    Process(i32),
    Unknown,
}

fn connection_of(ext: &http::Extensions) -> Connection {
    if let Some(uds) = ext.get::<UdsConnectInfo>() {
        return uds
            .peer_cred
            .and_then(|c| c.pid())
            .map_or(Connection::Unknown, Connection::Process);
    }
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|t| t.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|t| t.remote_addr()))
        .map_or(Connection::Unknown, Connection::Tcp)
}

/// A request in flight; counted down when dropped.
struct InFlight {
    table: Arc<Mutex<HashMap<Connection, usize>>>,
    connection: Connection,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.connection) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.connection);
            }
        }
    }
}

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
    /// An admin: calls forwarded by another admin carry their caller.
    forwarded: bool,
    denied: Family<Denial, Counter>,
    logged: Mutex<HashSet<Caller>>,
    in_flight: Arc<Mutex<HashMap<Connection, usize>>>,
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
                forwarded: false,
                denied,
                logged: Mutex::default(),
                in_flight: Arc::default(),
            }),
        }
    }

    /// Heed the caller another admin forwards a call for (a new gate only).
    pub fn heeding_forwarded(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.forwarded = true;
        }
        self
    }

    /// The caller a request is for: its peer's, or, from an admin passing
    /// it on, the one it names ([`Forwarded`] is then in the extensions).
    /// The forwarded-caller metadata never reaches a handler.
    fn effective(&self, req: &mut http::Request<Body>) -> Result<Caller, Status> {
        let caller = self.identify(req.extensions());
        let Some(named) = req
            .headers_mut()
            .remove(crate::protocol::FORWARDED_CALLER_METADATA)
        else {
            return Ok(caller);
        };
        if !self.inner.forwarded || !caller.may_forward() {
            // Only an admin speaks for another caller; anyone else is
            // themselves.
            return Ok(caller);
        }
        let named = named
            .to_str()
            .ok()
            .and_then(|t| Caller::from_forwarded(t, &self.inner.trust_domain))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{}: unreadable",
                    crate::protocol::FORWARDED_CALLER_METADATA
                ))
            })?;
        req.extensions_mut().insert(Forwarded);
        Ok(named)
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

    /// Count a request in on its connection, or refuse it past the limit.
    fn admit(&self, ext: &http::Extensions) -> Result<InFlight, Status> {
        let connection = connection_of(ext);
        let mut t = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = t.entry(connection.clone()).or_insert(0);
        if *n >= MAX_IN_FLIGHT_PER_CONNECTION {
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_IN_FLIGHT_PER_CONNECTION} requests in flight on one connection \
                 (the limit per connection); wait for some to finish"
            )));
        }
        *n += 1;
        Ok(InFlight {
            table: self.inner.in_flight.clone(),
            connection,
        })
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

/// In a request's extensions: another admin passed it on (it is not passed
/// on again).
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;

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
        let caller = match self.gate.effective(&mut req) {
            Ok(caller) => caller,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        if let Err(status) = self.gate.check(req.uri().path(), &caller) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let in_flight = match self.gate.admit(req.extensions()) {
            Ok(guard) => guard,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        req.extensions_mut().insert(caller);
        // The ready service takes this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(req);
        Box::pin(async move {
            let _in_flight = in_flight;
            match tokio::time::timeout(MAX_REQUEST_TIME, call).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the request ran longer than {} s, the limit of one request",
                    MAX_REQUEST_TIME.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::OperatorGroup;
    use tower::{Layer, Service, ServiceExt};

    fn gate(insecure: bool) -> Gate {
        Gate::new(
            "prism",
            OperatorGroup {
                name: "prism".into(),
                gid: None,
                own_uid: None,
            },
            insecure,
            false,
            Family::default(),
        )
    }

    fn request(path: &str, port: u16) -> http::Request<Body> {
        let mut r = http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(Body::empty())
            .unwrap();
        r.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(([127, 0, 0, 1], port).into()),
        });
        r
    }

    fn code(r: &http::Response<Body>) -> Option<String> {
        r.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    /// Answers once `release` is notified; checks it was handed the caller.
    fn inner(
        release: Arc<tokio::sync::Notify>,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = Answer,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |r: http::Request<Body>| {
            let release = release.clone();
            let fut: Answer = Box::pin(async move {
                assert!(
                    r.extensions().get::<Caller>().is_some(),
                    "the caller is handed on"
                );
                release.notified().await;
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            });
            fut
        })
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_unauthenticated_calls_and_hands_the_caller_on() {
        let release = Arc::new(tokio::sync::Notify::new());
        let mut svc = gate(false).layer(inner(release.clone()));
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/prism.admin.v1.Admin/DrainLauncher", 1))
            .await
            .unwrap();
        assert_eq!(code(&r).as_deref(), Some("7"), "PERMISSION_DENIED");
        let mut svc = gate(true).layer(inner(release.clone()));
        let call = svc
            .ready()
            .await
            .unwrap()
            .call(request("/prism.admin.v1.Admin/DrainLauncher", 1));
        release.notify_one();
        assert_eq!(code(&call.await.unwrap()), None, "passed to the service");
    }

    #[tokio::test(start_paused = true)]
    async fn limits_requests_in_flight_per_connection_and_their_time() {
        let release = Arc::new(tokio::sync::Notify::new());
        let mut svc = gate(true).layer(inner(release.clone()));
        let path = "/grpc.health.v1.Health/Check";
        let mut held = Vec::new();
        for _ in 0..MAX_IN_FLIGHT_PER_CONNECTION {
            let call = svc.ready().await.unwrap().call(request(path, 1));
            held.push(tokio::spawn(call));
        }
        let over = svc
            .ready()
            .await
            .unwrap()
            .call(request(path, 1))
            .await
            .unwrap();
        assert_eq!(code(&over).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        // Another connection has its own budget.
        let other = tokio::spawn(svc.ready().await.unwrap().call(request(path, 2)));
        // Past the time limit, every held call ends DEADLINE_EXCEEDED, and
        // the connection's budget is whole again.
        tokio::time::advance(MAX_REQUEST_TIME + std::time::Duration::from_secs(1)).await;
        for h in held {
            assert_eq!(code(&h.await.unwrap().unwrap()).as_deref(), Some("4"));
        }
        assert_eq!(code(&other.await.unwrap().unwrap()).as_deref(), Some("4"));
        let again = svc.ready().await.unwrap().call(request(path, 1));
        release.notify_one();
        assert_eq!(code(&again.await.unwrap()), None);
    }

    #[test]
    fn a_forwarded_caller_is_heeded_only_from_an_admin_and_only_by_an_admin() {
        use crate::{auth::Role, protocol::FORWARDED_CALLER_METADATA as KEY};
        let forwarded = |gate: &Gate, named: &str| {
            let mut r = request("/prism.admin.v1.Admin/ListProcesses", 1);
            r.headers_mut().insert(KEY, named.parse().unwrap());
            let caller = gate.effective(&mut r).map_err(|s| s.code());
            assert!(r.headers().get(KEY).is_none(), "never reaches a handler");
            (caller, r.extensions().get::<Forwarded>().is_some())
        };
        // An admin's gate, its peer trusted with every role (--insecure).
        let admin = gate(true).heeding_forwarded();
        assert_eq!(
            forwarded(&admin, "local-user:1000"),
            (Ok(Caller::LocalUser { uid: 1000 }), true)
        );
        let (caller, _) = forwarded(&admin, "certified:spiffe://prism/launcher/host-a");
        assert_eq!(
            caller.unwrap().role(),
            Some(&Role::Launcher("host-a".into()))
        );
        let (caller, _) = forwarded(&admin, "nonsense");
        assert_eq!(caller.unwrap_err(), tonic::Code::InvalidArgument);
        // A peer that may not forward is itself.
        let strict = gate(false).heeding_forwarded();
        assert_eq!(
            forwarded(&strict, "root"),
            (
                Ok(Caller::Anonymous {
                    addr: Some(([127, 0, 0, 1], 1).into())
                }),
                false
            )
        );
        // A launcher's gate heeds nobody's.
        assert_eq!(
            forwarded(&gate(true), "root"),
            (
                Ok(Caller::Insecure {
                    addr: Some(([127, 0, 0, 1], 1).into())
                }),
                false
            )
        );
        // Every caller reads back as itself.
        for c in [
            Caller::Root,
            Caller::LocalOperator { uid: 7 },
            Caller::LocalUser { uid: 8 },
            Caller::Certified {
                role: Role::Operator,
                uri: "spiffe://prism/operator/ann".into(),
            },
            Caller::Insecure {
                addr: Some(([10, 0, 0, 1], 9).into()),
            },
            Caller::Anonymous { addr: None },
        ] {
            assert_eq!(Caller::from_forwarded(&c.forwarded(), "prism"), Some(c));
        }
    }
}
