//! What the pages show of the past: one watcher on this admin's event
//! stream ([`Hub::watch`]) keeps the newest events, each launcher's state
//! changes of the last 24 hours, and since when each process has had its
//! status. A page reads these from memory, bounded, and names the
//! revision it reflects, from which its live feed follows.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::StreamExt;

use crate::{
    admin::{events::Hub, store::AdminStore},
    pb::prism::admin::v1 as apb,
    serve::Shutdown,
};

/// The newest events kept for the events page.
pub const RECENT: usize = 2000;
/// How far back a launcher's timeline goes.
pub const TIMELINE: Duration = Duration::from_secs(24 * 3600);
/// State changes kept per launcher (a flapping one keeps its newest).
pub const PER_LAUNCHER: usize = 500;

/// One change of a launcher's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub at_unix_ms: i64,
    pub kind: String,
    pub message: String,
}

#[derive(Default)]
struct State {
    recent: VecDeque<Arc<apb::Event>>,
    /// The last revision the feed has seen (an event's or a bookmark's).
    revision: i64,
    /// Caught up once it has seen this revision (the log's end when it
    /// started), or a bookmark.
    caught_up_at: i64,
    launchers: HashMap<String, VecDeque<Change>>,
    /// process id → (status, since when).
    since: HashMap<String, (String, i64)>,
}

pub struct Feed {
    state: RwLock<State>,
    /// Whether it has caught up with the log once.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            ready: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Feed {
    /// Take one event (or bookmark) into the feed, the oldest falling out.
    pub fn take(&self, e: apb::Event, now_ms: i64) {
        let mut st = self.state.write().expect("poisoned");
        st.revision = st.revision.max(e.revision);
        let bookmark = e.kind == crate::admin::events::BOOKMARK;
        if bookmark || st.revision >= st.caught_up_at {
            self.ready.send_if_modified(|r| !std::mem::replace(r, true));
        }
        if bookmark {
            return;
        }
        if let Some(kind) = e.kind.strip_prefix("launcher.") {
            let changes = st.launchers.entry(e.launcher_id.clone()).or_default();
            changes.push_back(Change {
                at_unix_ms: e.at_unix_ms,
                kind: kind.to_owned(),
                message: e.message.clone(),
            });
            let horizon = now_ms - TIMELINE.as_millis() as i64;
            while changes
                .front()
                .is_some_and(|c| c.at_unix_ms < horizon || changes.len() > PER_LAUNCHER)
            {
                changes.pop_front();
            }
        }
        if e.kind.starts_with("process.") {
            if e.kind == "process.revoked" {
                st.since.remove(&e.process_id);
            } else if let Some(status) = e.process.as_ref().map(|p| p.status.as_str())
                && !status.is_empty()
                && st.since.get(&e.process_id).is_none_or(|(s, _)| s != status)
            {
                st.since
                    .insert(e.process_id.clone(), (status.to_owned(), e.at_unix_ms));
            }
        }
        st.recent.push_back(Arc::new(e));
        if st.recent.len() > RECENT {
            st.recent.pop_front();
        }
    }

    /// The newest `limit` events `keep` wants (newest first), and the
    /// revision they reflect.
    pub fn recent(
        &self,
        limit: usize,
        keep: impl Fn(&apb::Event) -> bool,
    ) -> (Vec<Arc<apb::Event>>, i64) {
        let st = self.state.read().expect("poisoned");
        let rows = st
            .recent
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(limit)
            .cloned()
            .collect();
        (rows, st.revision)
    }

    /// A launcher's state changes of the last 24 hours, newest first.
    pub fn timeline(&self, launcher: &str, now_ms: i64) -> Vec<Change> {
        let horizon = now_ms - TIMELINE.as_millis() as i64;
        let st = self.state.read().expect("poisoned");
        st.launchers
            .get(launcher)
            .map(|c| {
                c.iter()
                    .rev()
                    .filter(|c| c.at_unix_ms >= horizon)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Since when a process has had `status`, if the feed saw it change.
    pub fn since(&self, process: &str, status: &str) -> Option<i64> {
        let st = self.state.read().expect("poisoned");
        st.since
            .get(process)
            .filter(|(s, _)| s == status)
            .map(|(_, at)| *at)
    }

    /// Whether it has read the log up to its end once.
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Wait (at most `within`) until it has read the log up to its end
    /// once: a page that shows the past shows all of it, and its live feed
    /// follows from there.
    pub async fn caught_up(&self, within: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    fn revision(&self) -> i64 {
        self.state.read().expect("poisoned").revision
    }

    /// Follow the hub from the oldest event kept (the last 24 hours, by
    /// default) until shutdown; an ended stream resumes where it stopped,
    /// or from the log's end if that is no longer kept.
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        store: Arc<dyn AdminStore>,
        mut shutdown: Shutdown,
    ) {
        let mut since = match store.event_bounds().await {
            Ok(b) => {
                self.state.write().expect("poisoned").caught_up_at = b.head;
                if b.head == 0 {
                    self.ready.send_replace(true);
                }
                b.oldest.map_or(b.head, |o| (o - 1).max(0))
            }
            Err(e) => {
                tracing::warn!("the page's event feed cannot read the log: {e}");
                0
            }
        };
        loop {
            let req = apb::WatchRequest {
                since_revision: Some(since),
                // A bookmark soon after the catch-up of an idle fleet.
                bookmark_interval_ms: 500,
                ..Default::default()
            };
            let ended = match hub.watch(req).await {
                Ok(mut watch) => loop {
                    let next = shutdown.until(watch.next()).await;
                    match next {
                        None => return,
                        Some(Some(Ok(e))) => self.take(e, crate::clock::unix_ms()),
                        Some(Some(Err(status))) => break Some(status),
                        Some(None) => break None,
                    }
                },
                Err(status) => Some(status),
            };
            since = self.revision().max(since);
            if let Some(status) = ended {
                if status.code() == tonic::Code::OutOfRange {
                    since = match store.event_bounds().await {
                        Ok(b) => b.head,
                        Err(_) => since,
                    };
                }
                tracing::debug!(
                    "the page's event feed resumes from {since}: {}",
                    status.message()
                );
            }
            if shutdown
                .until(tokio::time::sleep(Duration::from_millis(500)))
                .await
                .is_none()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        rev: i64,
        at: i64,
        kind: &str,
        launcher: &str,
        process: &str,
        status: &str,
    ) -> apb::Event {
        apb::Event {
            revision: rev,
            at_unix_ms: at,
            kind: kind.into(),
            launcher_id: launcher.into(),
            process_id: process.into(),
            process: (!status.is_empty()).then(|| apb::ProcessChange {
                status: status.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_feed_keeps_the_newest_and_each_launchers_day() {
        let f = Feed::default();
        f.state.write().unwrap().caught_up_at = 100;
        let day = TIMELINE.as_millis() as i64;
        let now = 10 * day;
        f.take(
            event(1, now - day - 1, "launcher.unhealthy", "a", "", ""),
            now,
        );
        f.take(event(2, now - 5, "launcher.healthy", "a", "", ""), now);
        f.take(event(3, now - 4, "process.failed", "a", "p", "failed"), now);
        f.take(
            event(4, now - 3, "process.restarted", "a", "p", "failed"),
            now,
        );
        f.take(
            event(9, now, crate::admin::events::BOOKMARK, "", "", ""),
            now,
        );
        assert!(f.ready());
        let t = f.timeline("a", now);
        assert_eq!(t.len(), 1, "older than a day: gone");
        assert_eq!(t[0].kind, "healthy");
        assert_eq!(
            f.since("p", "failed"),
            Some(now - 4),
            "since it first failed"
        );
        assert_eq!(f.since("p", "running"), None);
        let (rows, rev) = f.recent(10, |e| e.kind.starts_with("process."));
        assert_eq!(rev, 9, "a bookmark's revision counts");
        assert_eq!(
            rows.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [4, 3],
            "newest first"
        );
        f.take(event(10, now, "process.revoked", "a", "p", ""), now);
        assert_eq!(f.since("p", "failed"), None);
    }

    #[tokio::test]
    async fn the_feed_is_ready_at_the_end_of_the_log() {
        let f = Feed::default();
        f.state.write().unwrap().caught_up_at = 2;
        assert!(!f.caught_up(Duration::from_millis(10)).await);
        f.take(event(1, 0, "launcher.healthy", "a", "", ""), 0);
        assert!(!f.ready());
        f.take(event(2, 0, "launcher.healthy", "a", "", ""), 0);
        assert!(f.caught_up(Duration::from_millis(10)).await);
    }

    #[test]
    fn the_feed_is_bounded() {
        let f = Feed::default();
        for i in 0..(RECENT as i64 + 10) {
            f.take(event(i + 1, i, "launcher.healthy", "a", "", ""), i);
        }
        let (rows, rev) = f.recent(usize::MAX, |_| true);
        assert_eq!(rows.len(), RECENT);
        assert_eq!(rev, RECENT as i64 + 10);
        assert_eq!(f.timeline("a", RECENT as i64).len(), PER_LAUNCHER);
    }
}
