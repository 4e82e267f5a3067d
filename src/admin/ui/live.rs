//! The live tables: `WatchEvents` over Server-Sent Events, one row per
//! matching event, ending with the session or the admin.

use super::*;

/// A live feed checks this often that its session is still alive.
const SESSION_CHECK: Duration = Duration::from_secs(5);
/// Live feeds one admin's page serves at once (each is a watcher of the
/// admin's, which serves 1024 in all): the rest are for the API.
pub const MAX_LIVE: usize = 256;

/// Counts an open live feed while it lives.
struct LiveSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The live feed of a page's table: `WatchEvents` from the revision the
/// page showed (or the last the browser received), each event as the
/// row the page would render. It ends with the session, or the admin.
pub(super) async fn live(
    State(ui): Ctx,
    axum::Extension(shutdown): axum::Extension<Shutdown>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (id, s) = match ui.session(&headers) {
        Ok(found) => found,
        Err(res) => return *res,
    };
    if let Err(denied) = authorize(mirrors::WATCH_EVENTS, &s.caller, false) {
        return ui.refused(&s, &denied.to_string());
    }
    let pairs = pairs(q);
    let mut query = match EventQuery::parse(&pairs) {
        Ok(q) => q,
        Err(why) => return ui.bad_query(&s, &why),
    };
    let since = header_str(&headers, header::HeaderName::from_static("last-event-id"))
        .or_else(|| {
            pairs
                .iter()
                .find(|(k, _)| k == "since")
                .map(|(_, v)| v.as_str())
        })
        .and_then(|v| v.trim().parse::<i64>().ok());
    query.request.since_revision = since;
    query.request.bookmark_interval_ms = 15_000;
    let slot = LiveSlot(ui.live.clone());
    if ui.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= MAX_LIVE {
        tracing::info!("fleet status page: {MAX_LIVE} live feeds open already; refusing one more");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let watch = match ui.hub.watch(query.request).await {
        Ok(w) => w,
        // Too old to resume (or a bad request): nothing to stream; the page
        // says to reload.
        Err(status) => {
            tracing::debug!(
                "fleet status page: a live feed cannot start: {}",
                status.message()
            );
            return StatusCode::NO_CONTENT.into_response();
        }
    };
    let sessions = ui.login.sessions.clone();
    let checks = tokio::time::interval(SESSION_CHECK);
    let state = (watch, checks, shutdown, sessions, (id, slot));
    let stream = futures_util::stream::unfold(
        state,
        |(mut watch, mut checks, mut shutdown, sessions, id)| async move {
            loop {
                tokio::select! {
                    _ = shutdown.requested() => return None,
                    _ = checks.tick() => {
                        if !sessions.alive(&id.0, Instant::now()) {
                            return None;
                        }
                    }
                    next = watch.next() => {
                        let e = match next {
                            Some(Ok(e)) => e,
                            // Ended (too slow, or the admin stops): the browser
                            // comes back with the last id it received.
                            _ => return None,
                        };
                        let event = if e.kind == crate::admin::events::BOOKMARK {
                            SseEvent::default().event("bookmark").id(e.revision.to_string()).data("")
                        } else {
                            SseEvent::default()
                                .event("row")
                                .id(e.revision.to_string())
                                .data(views::event_row(&e).into_string())
                        };
                        return Some((Ok::<_, std::convert::Infallible>(event), (watch, checks, shutdown, sessions, id)));
                    }
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
