//! What a page's query string and a form's request ask for, parsed and
//! checked before anything is read: the launchers' sort and filters, the
//! processes' and events' filters (the events' with WatchEvents' own
//! semantics), pages, and whether a POST comes from the page itself.

use std::cmp::Ordering;

use crate::{admin::events::Filter, pb::prism::admin::v1 as apb};

/// Rows one page of a list shows.
pub const PAGE_SIZE: usize = 100;
/// The longest value a filter takes.
const MAX_VALUE: usize = 256;

/// Launcher metadata the launcher sets itself (the rest are its labels).
pub const OWN_METADATA: [&str; 4] = ["hostname", "systemd", "tls", "region"];

/// A launcher's host name (from its registration's metadata), else its id.
pub fn host_of(l: &apb::LauncherInfo) -> &str {
    l.metadata
        .get("hostname")
        .map(String::as_str)
        .filter(|h| !h.is_empty())
        .unwrap_or(&l.launcher_id)
}

/// What a launcher's state shows as: draining wins over healthy only.
pub fn launcher_state(l: &apb::LauncherInfo) -> &str {
    if l.draining && l.health == "healthy" {
        "draining"
    } else {
        &l.health
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Host,
    Id,
    State,
    Heartbeat,
    Version,
    Slots,
    Region,
}

impl SortKey {
    pub const ALL: [SortKey; 7] = [
        SortKey::Host,
        SortKey::Id,
        SortKey::State,
        SortKey::Heartbeat,
        SortKey::Version,
        SortKey::Slots,
        SortKey::Region,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Host => "host",
            SortKey::Id => "id",
            SortKey::State => "state",
            SortKey::Heartbeat => "heartbeat",
            SortKey::Version => "version",
            SortKey::Slots => "slots",
            SortKey::Region => "region",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The states a launcher filter takes.
pub const LAUNCHER_STATES: [&str; 4] = ["healthy", "draining", "unhealthy", "disconnected"];

/// Worst first: what needs attention sorts to the top.
fn state_rank(state: &str) -> u8 {
    match state {
        "disconnected" => 0,
        "unhealthy" => 1,
        "draining" => 2,
        _ => 3,
    }
}

fn value(key: &str, v: &str) -> Result<Option<String>, String> {
    let v = v.trim();
    if v.len() > MAX_VALUE {
        return Err(format!("{key}: longer than {MAX_VALUE} bytes"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{key}: a control character"));
    }
    Ok((!v.is_empty()).then(|| v.to_owned()))
}

fn page(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("page: {v:?} is not a page number (1, 2, …)")),
    }
}

/// `/launchers?sort=…&dir=desc&state=…&region=…&q=…&page=…`
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LauncherQuery {
    pub sort: SortKey,
    pub desc: bool,
    pub state: Option<String>,
    pub region: Option<String>,
    /// A substring of the host name, id, or a label's key or value.
    pub text: Option<String>,
    pub page: usize,
}

impl LauncherQuery {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut q = LauncherQuery {
            page: 1,
            ..Default::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "sort" => {
                    q.sort = SortKey::parse(v.trim()).ok_or_else(|| {
                        format!(
                            "sort: {v:?} is not one of {}",
                            SortKey::ALL.map(SortKey::as_str).join(", ")
                        )
                    })?
                }
                "dir" => {
                    q.desc = match v.trim() {
                        "asc" | "" => false,
                        "desc" => true,
                        other => return Err(format!("dir: {other:?} is not asc or desc")),
                    }
                }
                "state" => {
                    q.state = value(k, v)?;
                    if let Some(s) = &q.state
                        && !LAUNCHER_STATES.contains(&s.as_str())
                    {
                        return Err(format!(
                            "state: {s:?} is not one of {}",
                            LAUNCHER_STATES.join(", ")
                        ));
                    }
                }
                "region" => q.region = value(k, v)?,
                "q" => q.text = value(k, v)?,
                "page" => q.page = page(v)?,
                other => return Err(format!("{other:?}: not a launcher filter")),
            }
        }
        Ok(q)
    }

    fn keeps(&self, l: &apb::LauncherInfo) -> bool {
        self.state.as_deref().is_none_or(|s| launcher_state(l) == s)
            && self.region.as_deref().is_none_or(|r| l.region == r)
            && self.text.as_deref().is_none_or(|t| {
                let t = t.to_lowercase();
                host_of(l).to_lowercase().contains(&t)
                    || l.launcher_id.to_lowercase().contains(&t)
                    || l.metadata.iter().any(|(k, v)| {
                        !OWN_METADATA.contains(&k.as_str())
                            && (k.to_lowercase().contains(&t) || v.to_lowercase().contains(&t))
                    })
            })
    }

    fn order(&self, a: &apb::LauncherInfo, b: &apb::LauncherInfo) -> Ordering {
        let by = match self.sort {
            SortKey::Host => host_of(a).cmp(host_of(b)),
            SortKey::Id => Ordering::Equal,
            SortKey::State => state_rank(launcher_state(a)).cmp(&state_rank(launcher_state(b))),
            // Oldest heartbeat first: the most silent on top.
            SortKey::Heartbeat => a.last_heartbeat_unix_ms.cmp(&b.last_heartbeat_unix_ms),
            SortKey::Version => a.version.cmp(&b.version),
            SortKey::Slots => {
                (a.max_processes - a.slots_used).cmp(&(b.max_processes - b.slots_used))
            }
            SortKey::Region => a.region.cmp(&b.region),
        };
        let by = if self.desc { by.reverse() } else { by };
        // Ties (and sort=id) by id: a stable order across pages.
        by.then_with(|| a.launcher_id.cmp(&b.launcher_id))
    }

    /// This query's page of `all`, and how many matched in all.
    pub fn apply(&self, all: Vec<apb::LauncherInfo>) -> (Vec<apb::LauncherInfo>, usize) {
        let mut kept: Vec<apb::LauncherInfo> = all.into_iter().filter(|l| self.keeps(l)).collect();
        kept.sort_by(|a, b| self.order(a, b));
        let total = kept.len();
        let start = (self.page - 1).saturating_mul(PAGE_SIZE).min(total);
        let end = (start + PAGE_SIZE).min(total);
        (kept.drain(start..end).collect(), total)
    }

    /// The query string of this query with changes: for sort headers and
    /// page links.
    pub fn link(&self, f: impl FnOnce(&mut LauncherQuery)) -> String {
        let mut q = self.clone();
        f(&mut q);
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if q.sort != SortKey::Host {
            pairs.push(("sort", q.sort.as_str().into()));
        }
        if q.desc {
            pairs.push(("dir", "desc".into()));
        }
        for (k, v) in [("state", &q.state), ("region", &q.region), ("q", &q.text)] {
            if let Some(v) = v {
                pairs.push((k, v.clone()));
            }
        }
        if q.page > 1 {
            pairs.push(("page", q.page.to_string()));
        }
        encode(&pairs)
    }
}

/// `?k=v&…`, percent-encoded; empty for no pairs.
pub fn encode(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("?{}", body.join("&"))
}

/// `/processes?status=…&launcher=…&namespace=…&page=…`
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProcessQuery {
    pub request: apb::ListProcessesRequest,
    pub page: usize,
}

impl ProcessQuery {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut q = ProcessQuery {
            page: 1,
            ..Default::default()
        };
        for (k, v) in pairs {
            let v2 = value(k, v)?.unwrap_or_default();
            match k.as_str() {
                "status" => q.request.status = v2,
                "launcher" => q.request.launcher_id = v2,
                "namespace" => q.request.namespace = v2,
                "type" => q.request.process_type = v2,
                "page" => q.page = page(v)?,
                other => return Err(format!("{other:?}: not a process filter")),
            }
        }
        Ok(q)
    }

    pub fn link(&self, page: usize) -> String {
        let r = &self.request;
        let mut pairs: Vec<(&str, String)> = [
            ("status", &r.status),
            ("launcher", &r.launcher_id),
            ("namespace", &r.namespace),
            ("type", &r.process_type),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect();
        if page > 1 {
            pairs.push(("page", page.to_string()));
        }
        encode(&pairs)
    }
}

/// `/events?namespace=…&launcher=…&process=…&kind=…` (kind repeated or
/// comma-separated): a WatchEvents request, checked as WatchEvents checks
/// it, and the filter it makes.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub request: apb::WatchRequest,
    pub filter: Filter,
}

impl EventQuery {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut request = apb::WatchRequest::default();
        for (k, v) in pairs {
            let v = value(k, v)?.unwrap_or_default();
            match k.as_str() {
                "namespace" => request.namespace = v,
                "launcher" => request.launcher_id = v,
                "process" => request.process_id = v,
                "kind" => request.kinds.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned),
                ),
                // The live feed's own: where the page left off.
                "since" => {}
                other => return Err(format!("{other:?}: not an event filter")),
            }
        }
        let filter = Filter::parse(&request).map_err(|e| e.to_string())?;
        Ok(Self { request, filter })
    }

    /// The filter's query string (without `since`).
    pub fn link(&self) -> String {
        let r = &self.request;
        let mut pairs: Vec<(&str, String)> = [
            ("namespace", &r.namespace),
            ("launcher", &r.launcher_id),
            ("process", &r.process_id),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect();
        if !r.kinds.is_empty() {
            pairs.push(("kind", r.kinds.join(",")));
        }
        encode(&pairs)
    }
}

/// A POST comes from this page: its `Origin` (or, without one, its
/// `Referer`) is `expected` (`scheme://host[:port]` as the browser
/// reached us). Neither header is a refusal: browsers send `Origin` with
/// every form POST.
pub fn same_origin(expected: &str, origin: Option<&str>, referer: Option<&str>) -> bool {
    match (origin, referer) {
        (Some(o), _) => o == expected,
        (None, Some(r)) => r
            .strip_prefix(expected)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        (None, None) => false,
    }
}

/// The form's CSRF token is the session's.
pub fn csrf_ok(session_token: &str, sent: Option<&str>) -> bool {
    sent.is_some_and(|s| super::session::same_secret(session_token, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn launcher(id: &str, host: &str, health: &str, heard: i64) -> apb::LauncherInfo {
        apb::LauncherInfo {
            launcher_id: id.into(),
            health: health.into(),
            last_heartbeat_unix_ms: heard,
            max_processes: 10,
            region: if id < "m" { "eu" } else { "us" }.into(),
            metadata: [
                ("hostname".to_owned(), host.to_owned()),
                ("rack".to_owned(), format!("r-{id}")),
            ]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn launcher_queries_parse_or_say_why_not() {
        assert_eq!(
            LauncherQuery::parse(&[]).unwrap(),
            LauncherQuery {
                page: 1,
                ..Default::default()
            }
        );
        let q = LauncherQuery::parse(&pairs(&[
            ("sort", "heartbeat"),
            ("dir", "desc"),
            ("state", "unhealthy"),
            ("region", " eu "),
            ("q", ""),
            ("page", "3"),
        ]))
        .unwrap();
        assert_eq!(q.sort, SortKey::Heartbeat);
        assert!(q.desc);
        assert_eq!(q.state.as_deref(), Some("unhealthy"));
        assert_eq!(q.region.as_deref(), Some("eu"));
        assert_eq!(q.text, None);
        assert_eq!(q.page, 3);
        for (bad, says) in [
            (("sort", "ram"), "sort:"),
            (("dir", "up"), "dir:"),
            (("state", "red"), "state:"),
            (("page", "0"), "page:"),
            (("page", "x"), "page:"),
            (("q", "a\u{7}"), "control"),
            (("evil", "1"), "not a launcher filter"),
        ] {
            let e = LauncherQuery::parse(&pairs(&[bad])).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let long = "x".repeat(MAX_VALUE + 1);
        assert!(LauncherQuery::parse(&pairs(&[("q", &long)])).is_err());
    }

    #[test]
    fn launchers_sort_and_filter_on_the_server() {
        let all = vec![
            launcher("b", "beta", "healthy", 300),
            launcher("a", "alpha", "disconnected", 100),
            launcher("z", "gamma", "unhealthy", 200),
            launcher("c", "", "healthy", 400),
        ];
        let ids = |q: &[(&str, &str)]| {
            let (rows, total) = LauncherQuery::parse(&pairs(q)).unwrap().apply(all.clone());
            assert_eq!(rows.len(), total.min(PAGE_SIZE));
            rows.into_iter().map(|l| l.launcher_id).collect::<Vec<_>>()
        };
        // By host name, the id standing in for a host without one.
        assert_eq!(ids(&[]), ["a", "b", "c", "z"]);
        assert_eq!(ids(&[("dir", "desc")]), ["z", "c", "b", "a"]);
        assert_eq!(ids(&[("sort", "state")]), ["a", "z", "b", "c"]);
        assert_eq!(ids(&[("sort", "heartbeat")]), ["a", "z", "b", "c"]);
        assert_eq!(ids(&[("state", "healthy")]), ["b", "c"]);
        assert_eq!(ids(&[("region", "us")]), ["z"]);
        assert_eq!(ids(&[("q", "GAM")]), ["z"]);
        assert_eq!(ids(&[("q", "r-b")]), ["b"], "a label's value");
        assert!(ids(&[("q", "hostname")]).is_empty(), "not its own metadata");
        let mut draining = launcher("d", "delta", "healthy", 1);
        draining.draining = true;
        assert_eq!(launcher_state(&draining), "draining");
    }

    #[test]
    fn launchers_come_a_page_at_a_time() {
        let all: Vec<_> = (0..250)
            .map(|i| launcher(&format!("l{i:03}"), "", "healthy", i))
            .collect();
        let q = |p: &str| LauncherQuery::parse(&pairs(&[("page", p)])).unwrap();
        let (rows, total) = q("1").apply(all.clone());
        assert_eq!((rows.len(), total), (PAGE_SIZE, 250));
        assert_eq!(rows[0].launcher_id, "l000");
        let (rows, _) = q("3").apply(all.clone());
        assert_eq!(rows.len(), 50);
        assert_eq!(rows[0].launcher_id, "l200");
        assert!(q("9").apply(all).0.is_empty());
    }

    #[test]
    fn links_keep_the_query() {
        let q = LauncherQuery::parse(&pairs(&[("state", "healthy"), ("q", "a b&c")])).unwrap();
        assert_eq!(q.link(|_| {}), "?state=healthy&q=a%20b%26c");
        assert_eq!(
            q.link(|q| {
                q.sort = SortKey::Region;
                q.desc = true;
                q.page = 2
            }),
            "?sort=region&dir=desc&state=healthy&q=a%20b%26c&page=2"
        );
        assert_eq!(LauncherQuery::parse(&[]).unwrap().link(|_| {}), "");
    }

    #[test]
    fn event_filters_mean_what_watch_events_means() {
        let q = EventQuery::parse(&pairs(&[
            ("kind", "process.failed, launcher"),
            ("kind", "process.restarted"),
            ("process", "orders-*"),
            ("since", "12"),
        ]))
        .unwrap();
        assert_eq!(
            q.request.kinds,
            ["process.failed", "launcher", "process.restarted"]
        );
        let e = |kind: &str, id: &str| apb::Event {
            kind: kind.into(),
            process_id: id.into(),
            ..Default::default()
        };
        assert!(q.filter.matches(&e("process.failed", "orders-1")));
        assert!(!q.filter.matches(&e("process.failed", "billing-1")));
        assert!(!q.filter.matches(&e("process.running", "orders-1")));
        assert_eq!(
            q.link(),
            "?process=orders-%2A&kind=process.failed%2Clauncher%2Cprocess.restarted"
        );
        let bad = EventQuery::parse(&pairs(&[("kind", "process.exploded")])).unwrap_err();
        assert!(bad.starts_with("kinds:"), "{bad}");
        assert!(EventQuery::parse(&pairs(&[("process", "a*b*")])).is_err());
        assert!(EventQuery::parse(&pairs(&[("who", "x")])).is_err());
    }

    #[test]
    fn process_queries() {
        let q = ProcessQuery::parse(&pairs(&[("status", "failed"), ("page", "2")])).unwrap();
        assert_eq!(q.request.status, "failed");
        assert_eq!(q.link(3), "?status=failed&page=3");
        assert!(ProcessQuery::parse(&pairs(&[("sort", "x")])).is_err());
    }

    #[test]
    fn a_post_must_come_from_the_page() {
        let me = "https://admin.example:9095";
        assert!(same_origin(me, Some(me), None));
        assert!(same_origin(me, Some(me), Some("https://evil.example/")));
        assert!(!same_origin(me, Some("https://evil.example"), Some(me)));
        assert!(!same_origin(me, Some("null"), None));
        assert!(same_origin(
            me,
            None,
            Some("https://admin.example:9095/launchers/a")
        ));
        assert!(same_origin(me, None, Some(me)));
        assert!(!same_origin(
            me,
            None,
            Some("https://admin.example:9095.evil.example/")
        ));
        assert!(!same_origin(me, None, None));
        assert!(!same_origin("http://a:1", Some("https://a:1"), None));
    }

    #[test]
    fn the_csrf_token_must_match() {
        let t = super::super::session::token();
        assert!(csrf_ok(&t, Some(&t)));
        assert!(!csrf_ok(&t, None));
        assert!(!csrf_ok(&t, Some("")));
        assert!(!csrf_ok(&t, Some(&super::super::session::token())));
    }
}
