//! The fleet status page: prism-admin serves HTML for its fleet from the
//! same binary, over HTTP on loopback or HTTPS with its own certificate.
//!
//! A browser gets in with a one-time ticket that `prismctl ui` asks for
//! over its authenticated channel (`OpenUiSession`): the session it opens
//! carries that caller, and each page and action is checked through
//! [`authorize`] with the gRPC method it mirrors
//! (the one table). Forms POST with a per-session CSRF token and must
//! come from this origin. Pages read the admin's own operator API
//! in-process, and the past from [`feed::Feed`]; the live tables follow
//! `WatchEvents` over Server-Sent Events.

mod actions;
pub mod feed;
mod live;
mod pages;
pub mod query;
pub mod session;
mod tls;
pub mod views;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::StreamExt;
use maud::Markup;
use tonic::{Code, Request, Status};

use self::{
    feed::Feed,
    query::{EventQuery, LauncherQuery, ProcessQuery, launcher_state},
    session::{Session, Sessions},
    views::Frame,
};
use super::{
    events::Hub,
    fleet::{Fleet, Revocation},
    service::{AdminService, to_status},
    store::AdminStore,
};
use crate::{
    auth::{Caller, authorize},
    pb::prism::{self as pb, admin::v1 as apb, admin::v1::admin_server::Admin},
    serve::Shutdown,
    settings::Tls,
};

const JS: &str = include_str!("assets/ui.js");
const CSS: &str = include_str!("assets/ui.css");

/// The gRPC methods the pages mirror: a page or action is allowed to
/// whoever may call its method.
pub mod mirrors {
    pub const LIST_LAUNCHERS: &str = "/prism.admin.v1.Admin/ListLaunchers";
    pub const GET_LAUNCHER: &str = "/prism.admin.v1.Admin/GetLauncher";
    pub const LIST_PROCESSES: &str = "/prism.admin.v1.Admin/ListProcesses";
    pub const GET_PROCESS: &str = "/prism.admin.v1.Admin/GetProcess";
    pub const WATCH_EVENTS: &str = "/prism.admin.v1.Admin/WatchEvents";
    pub const DRAIN: &str = "/prism.admin.v1.Admin/DrainLauncher";
    pub const UNDRAIN: &str = "/prism.admin.v1.Admin/UndrainLauncher";
    pub const REVOKE: &str = "/prism.ControlPlane/RevokeProcess";
}

/// The most rows of one kind the overview's "needs attention" shows.
const ATTENTION_ROWS: usize = 50;
/// The processes a launcher's page lists (the rest: the processes page).
const LAUNCHER_PROCESSES: usize = 200;
/// Events the events page and a process's page show before the live feed.
const EVENT_ROWS: usize = 200;
/// How long an action from the page waits for a revocation's answer.
const REVOKE_DEADLINE: Duration = Duration::from_secs(10);
/// Where `prismctl ui` sends a browser: this admin's page, and its tickets.
pub struct Login {
    pub sessions: Arc<Sessions>,
    /// `http[s]://host:port`, as the page is bound.
    pub base_url: String,
}

impl Login {
    /// A one-time address that signs a browser in as `caller`, and when it
    /// stops working.
    pub fn open(&self, caller: Caller) -> apb::OpenUiSessionResponse {
        let ticket = self.sessions.issue(caller.clone(), Instant::now());
        apb::OpenUiSessionResponse {
            login_url: format!("{}/login?ticket={ticket}", self.base_url),
            expires_at_unix_ms: crate::clock::unix_ms() + session::TICKET_TTL.as_millis() as i64,
            identity: caller.to_string(),
        }
    }
}

/// What the pages read and act on.
pub struct Ui {
    pub login: Arc<Login>,
    feed: Arc<Feed>,
    hub: Arc<Hub>,
    store: Arc<dyn AdminStore>,
    interval: Duration,
    /// Set once this admin leads: actions need it.
    fleet: Arc<OnceLock<Arc<Fleet>>>,
    tls: bool,
    cookie: &'static str,
    /// The feed starts with the first sign-in: an admin whose page nobody
    /// opens keeps no watcher.
    wanted: tokio::sync::Notify,
    /// Live feeds open now.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long a page that shows the past waits for the feed to catch up
/// with the log (the first page after the admin started).
const CATCH_UP: Duration = Duration::from_secs(3);

/// The address a browser is sent to for `bound`: its IP, or this host's
/// name when bound to every address.
pub fn base_url(bound: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = if bound.ip().is_unspecified() {
        crate::settings::hostname()
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// The page's session cookie: `__Host-` bound to this origin over HTTPS.
fn cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-prism_session"
    } else {
        "prism_session"
    }
}

pub struct Parts {
    pub hub: Arc<Hub>,
    pub store: Arc<dyn AdminStore>,
    pub interval: Duration,
    pub fleet: Arc<OnceLock<Arc<Fleet>>>,
    pub session_idle: Duration,
    pub session_max: Duration,
}

impl Ui {
    pub fn new(parts: Parts, bound: SocketAddr, tls: bool) -> Arc<Self> {
        Arc::new(Self {
            login: Arc::new(Login {
                sessions: Arc::new(Sessions::new(parts.session_idle, parts.session_max)),
                base_url: base_url(bound, tls),
            }),
            feed: Arc::default(),
            hub: parts.hub,
            store: parts.store,
            interval: parts.interval,
            fleet: parts.fleet,
            tls,
            cookie: cookie_name(tls),
            wanted: tokio::sync::Notify::new(),
            live: Arc::default(),
        })
    }

    /// Serve the page on `listener` (HTTPS with `tls`) until shutdown, and
    /// keep its event feed.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<Tls>,
        shutdown: Shutdown,
    ) {
        tokio::spawn({
            let (ui, mut shutdown) = (self.clone(), shutdown.clone());
            async move {
                if shutdown.until(ui.wanted.notified()).await.is_some() {
                    ui.feed
                        .clone()
                        .run(ui.hub.clone(), ui.store.clone(), shutdown)
                        .await;
                }
            }
        });
        let app = self.clone().router(shutdown.clone());
        let mut stop = shutdown.clone();
        let done = async move { stop.requested().await };
        let served = match tls {
            Some(tls) => match tls::Listener::new(listener, &tls, shutdown.clone()) {
                Ok(l) => axum::serve(l, app).with_graceful_shutdown(done).await,
                Err(e) => {
                    tracing::error!("the fleet status page cannot serve TLS: {e}");
                    return;
                }
            },
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(done)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!("the fleet status page stopped: {e}");
        }
    }

    fn router(self: Arc<Self>, shutdown: Shutdown) -> Router {
        Router::new()
            .route("/", get(pages::overview))
            .route("/login", get(actions::login))
            .route("/logout", post(actions::logout))
            .route("/launchers", get(pages::launchers))
            .route("/launchers/{id}", get(pages::launcher))
            .route("/launchers/{id}/drain", post(actions::drain))
            .route("/launchers/{id}/undrain", post(actions::undrain))
            .route("/processes", get(pages::processes))
            .route("/processes/{id}", get(pages::process))
            .route("/processes/{id}/revoke", post(actions::revoke))
            .route("/events", get(pages::events))
            .route("/events/live", get(live::live))
            .route(
                "/assets/ui.js",
                get(|| async { asset("text/javascript; charset=utf-8", JS) }),
            )
            .route(
                "/assets/ui.css",
                get(|| async { asset("text/css; charset=utf-8", CSS) }),
            )
            // Browsers ask for it unbidden: nothing, rather than a 404 in
            // their console.
            .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    html(views::problem("Not found", "No such page.", None)),
                )
            })
            .layer(axum::Extension(shutdown))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(self)
    }

    /// The operator API this admin answers with: its fleet while it leads,
    /// else the database.
    fn api(&self) -> AdminService {
        match self.fleet.get() {
            Some(f) => AdminService::new(f.clone(), self.hub.clone()),
            None => AdminService::following(self.store.clone(), self.interval, self.hub.clone()),
        }
    }

    fn standing(&self) -> &'static str {
        if self.fleet.get().is_some() {
            "leading"
        } else {
            "following"
        }
    }

    /// The session the request's cookie names, or the sign-in page.
    fn session(&self, headers: &HeaderMap) -> Result<(String, Session), Box<Response>> {
        let id = cookie(headers, self.cookie);
        let found = id
            .as_deref()
            .and_then(|id| self.login.sessions.get(id, Instant::now()));
        match (id, found) {
            (Some(id), Some(s)) => Ok((id, s)),
            (Some(_), None) => Err(Box::new(unauthorized(
                "Your session has ended (signed out, expired, or this admin restarted).",
            ))),
            (None, _) => Err(Box::new(unauthorized("You are not signed in."))),
        }
    }

    /// A session allowed `path`'s method, with its page frame.
    fn allowed(&self, headers: &HeaderMap, path: &str) -> Result<Session, Box<Response>> {
        let (_, s) = self.session(headers)?;
        if let Err(denied) = authorize(path, &s.caller, false) {
            tracing::info!("fleet status page: {denied}");
            return Err(Box::new(self.refused(&s, &denied.to_string())));
        }
        Ok(s)
    }

    fn frame<'a>(&self, s: &'a Session, identity: &'a str) -> Frame<'a> {
        Frame {
            identity,
            csrf: &s.csrf,
            standing: self.standing(),
        }
    }

    fn refused(&self, s: &Session, why: &str) -> Response {
        let identity = s.caller.to_string();
        (
            StatusCode::FORBIDDEN,
            html(views::problem(
                "Not allowed",
                why,
                Some(&self.frame(s, &identity)),
            )),
        )
            .into_response()
    }

    /// A POST: a session, from this origin, with its CSRF token, allowed
    /// `path`'s method; else 401 or 403.
    fn action(
        &self,
        headers: &HeaderMap,
        form: &BTreeMap<String, String>,
        path: &str,
    ) -> Result<Session, Box<Response>> {
        let (_, s) = self.session(headers)?;
        let expected = format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            header_str(headers, header::HOST).unwrap_or_default()
        );
        if !query::same_origin(
            &expected,
            header_str(headers, header::ORIGIN),
            header_str(headers, header::REFERER),
        ) {
            return Err(Box::new(
                self.refused(&s, "This form was not sent from this page."),
            ));
        }
        if !query::csrf_ok(&s.csrf, form.get("csrf").map(String::as_str)) {
            return Err(Box::new(self.refused(
                &s,
                "This form lacks its token (it may be from an older session): reload the page and try again.",
            )));
        }
        if let Err(denied) = authorize(path, &s.caller, false) {
            tracing::info!("fleet status page: {denied}");
            return Err(Box::new(self.refused(&s, &denied.to_string())));
        }
        Ok(s)
    }

    fn failed(&self, s: &Session, status: Status) -> Response {
        let code = match status.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let identity = s.caller.to_string();
        (
            code,
            html(views::problem(
                "Could not do that",
                status.message(),
                Some(&self.frame(s, &identity)),
            )),
        )
            .into_response()
    }

    fn bad_query(&self, s: &Session, why: &str) -> Response {
        self.failed(s, Status::invalid_argument(why))
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

fn html(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn unauthorized(reason: &str) -> Response {
    (StatusCode::UNAUTHORIZED, html(views::unauthorized(reason))).into_response()
}

/// Every response: no inline script or style, no framing, no referrer to
/// other sites, no sniffing, no caching.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        // `same-origin`, not `no-referrer`: with no-referrer a browser sends
        // `Origin: null` with the page's own forms, and the origin check
        // could not tell them from a forgery. Other sites get nothing.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

fn pairs(raw: Option<String>) -> Vec<(String, String)> {
    form_urlencoded_pairs(raw.as_deref().unwrap_or(""))
}

/// `a=1&b=x%20y` as pairs, in order (repeated keys kept).
pub fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

type Ctx = State<Arc<Ui>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; prism_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "prism_session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "prism"), None);
    }

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            form_urlencoded_pairs("a=1&b=x%20y+z&kind=process.failed&kind=launcher&e"),
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".into(), "x y z".into()),
                ("kind".into(), "process.failed".into()),
                ("kind".into(), "launcher".into()),
                ("e".into(), String::new()),
            ]
        );
        assert_eq!(
            form_urlencoded_pairs("q=%zz%4"),
            [("q".to_owned(), "%zz%4".to_owned())]
        );
    }

    #[test]
    fn browsers_are_sent_to_the_bound_address() {
        assert_eq!(
            base_url("127.0.0.1:9095".parse().unwrap(), false),
            "http://127.0.0.1:9095"
        );
        assert_eq!(
            base_url("[::1]:9095".parse().unwrap(), true),
            "https://[::1]:9095"
        );
        let any = base_url("0.0.0.0:9095".parse().unwrap(), true);
        assert!(
            any.starts_with("https://") && !any.contains("0.0.0.0"),
            "{any}"
        );
        assert_eq!(cookie_name(true), "__Host-prism_session");
    }

    #[test]
    fn the_pages_mirror_methods_of_the_table() {
        use crate::auth::{Role, policy::TABLE};
        for path in [
            mirrors::LIST_LAUNCHERS,
            mirrors::GET_LAUNCHER,
            mirrors::LIST_PROCESSES,
            mirrors::GET_PROCESS,
            mirrors::WATCH_EVENTS,
            mirrors::DRAIN,
            mirrors::UNDRAIN,
            mirrors::REVOKE,
        ] {
            assert!(TABLE.iter().any(|(p, _)| *p == path), "{path}");
        }
        let cert = |role: Role| Caller::Certified {
            uri: role.uri("prism", "x"),
            role,
        };
        let (viewer, operator) = (cert(Role::Viewer), cert(Role::Operator));
        assert!(authorize(mirrors::LIST_LAUNCHERS, &viewer, false).is_ok());
        assert!(authorize(mirrors::DRAIN, &viewer, false).is_err());
        assert!(authorize(mirrors::REVOKE, &viewer, false).is_err());
        assert!(authorize(mirrors::DRAIN, &operator, false).is_ok());
        assert!(authorize(mirrors::REVOKE, &operator, false).is_ok());
        assert!(authorize(mirrors::DRAIN, &Caller::Root, false).is_ok());
    }
}
