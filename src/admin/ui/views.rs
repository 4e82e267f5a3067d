//! The pages, as maud templates (checked when the crate compiles): current
//! state first, host names first, and colour only where something is
//! wrong. Every value is escaped by maud; every page reads without
//! JavaScript, and the live tables name their feed in `data-live`.

use maud::{DOCTYPE, Markup, html};

use super::{
    feed::Change,
    query::{self, EventQuery, LauncherQuery, ProcessQuery, SortKey, host_of, launcher_state},
};
use crate::{
    display::{ago, duration, prune, timestamp},
    pb::prism::admin::v1 as apb,
};

/// What every page of a signed-in browser shows around its content.
pub struct Frame<'a> {
    pub identity: &'a str,
    pub csrf: &'a str,
    /// "leading" or "following".
    pub standing: &'a str,
}

/// The class a state's badge has: `bad` only for what is wrong, `warn`
/// for what may become so, `info` for an operator's choice, `ok` for
/// what is well.
pub fn tone(state: &str) -> &'static str {
    match state {
        "failed" | "circuit_open" | "disconnected" | "refused" => "bad",
        "unhealthy" | "restarting" | "restarted" | "unknown" | "starting" | "pending"
        | "stopping" | "revoking" | "placed" | "delivered" => "warn",
        "draining" | "drained" | "stopped" | "revoked" | "undrained" | "leader_elected"
        | "registered" => "info",
        "healthy" | "running" | "started" => "ok",
        _ => "none",
    }
}

fn badge(state: &str) -> Markup {
    let shown = if state.is_empty() { "no report" } else { state };
    html! { span class={ "state s-" (tone(state)) } { (shown.replace('_', " ")) } }
}

fn when(unix_ms: i64) -> Markup {
    if unix_ms <= 0 {
        return html! { "never" };
    }
    html! { time datetime=(format!("{}Z", timestamp(unix_ms).replace(' ', "T"))) title=(format!("{} UTC", timestamp(unix_ms))) { (ago(unix_ms)) } }
}

/// For how long, from `since` (unix ms) to now.
fn for_how_long(since: i64, now_ms: i64) -> Markup {
    if since <= 0 {
        return html! { "—" };
    }
    html! { time datetime=(format!("{}Z", timestamp(since).replace(' ', "T"))) title=(format!("since {} UTC", timestamp(since))) { (duration((now_ms - since) / 1000)) } }
}

pub fn process_href(id: &str) -> String {
    format!("/processes/{}", path_segment(id))
}

pub fn launcher_href(id: &str) -> String {
    format!("/launchers/{}", path_segment(id))
}

fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn page(title: &str, frame: Option<&Frame>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · prism-admin" }
                link rel="stylesheet" href="/assets/ui.css";
                script src="/assets/ui.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    p class="brand" { "prism-admin" }
                    @if let Some(f) = frame {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/" { "Overview" } }
                                li { a href="/launchers" { "Launchers" } }
                                li { a href="/processes" { "Processes" } }
                                li { a href="/events" { "Events" } }
                            }
                        }
                        form class="who" method="post" action="/logout" {
                            span { "Signed in as " (f.identity) }
                            input type="hidden" name="csrf" value=(f.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
                footer {
                    p {
                        "prism-admin " (env!("CARGO_PKG_VERSION"))
                        @if let Some(f) = frame { " · this admin is " (f.standing) }
                    }
                }
            }
        }
    }
}

/// No session: how to get one, and nothing else.
pub fn unauthorized(reason: &str) -> Markup {
    page(
        "Sign in with prismctl",
        None,
        html! {
            p { (reason) }
            p { "This page shows the fleet only to a browser signed in by an operator or a viewer. Run this where prismctl reaches the admin (its local socket, or mutual TLS with your certificate), and open the address it prints within 60 seconds:" }
            pre { code { "prismctl ui" } }
        },
    )
}

/// A refusal or failure, said plainly.
pub fn problem(title: &str, message: &str, frame: Option<&Frame>) -> Markup {
    page(title, frame, html! { p class="problem" { (message) } })
}

/// A form that POSTs one action with the session's CSRF token.
fn action(frame: &Frame, href: &str, label: &str) -> Markup {
    html! {
        form class="action" method="post" action=(href) {
            input type="hidden" name="csrf" value=(frame.csrf);
            button type="submit" { (label) }
        }
    }
}

/// The status a process shows: its placement while not settled, else what
/// its launcher reports.
pub fn process_status(p: &apb::ProcessInfo) -> &str {
    if p.placement != "placed" {
        return &p.placement;
    }
    p.health
        .as_ref()
        .map(|h| {
            if h.detailed_status.is_empty() {
                h.status.as_str()
            } else {
                h.detailed_status.as_str()
            }
        })
        .unwrap_or("")
}

/// One row that needs attention.
pub struct Attention {
    pub what: Markup,
    pub state: String,
    pub since_ms: i64,
    pub detail: String,
}

pub struct Overview {
    pub launchers: Vec<(String, usize)>,
    pub launcher_total: usize,
    pub processes: Vec<(String, usize)>,
    pub process_total: usize,
    pub attention: Vec<Attention>,
    pub attention_total: usize,
    pub now_ms: i64,
}

pub fn overview(frame: &Frame, o: &Overview) -> Markup {
    let counts = |caption: &str,
                  total: usize,
                  rows: &[(String, usize)],
                  href: &dyn Fn(&str) -> String| {
        html! {
            table class="counts" {
                caption { (caption) ": " (total) }
                thead { tr { th scope="col" { "State" } th scope="col" class="num" { "Count" } } }
                tbody {
                    @for (state, n) in rows {
                        tr {
                            td { a href=(href(state)) { (badge(state)) } }
                            td class="num" data-count=(state) { (n) }
                        }
                    }
                }
            }
        }
    };
    page(
        "Fleet overview",
        Some(frame),
        html! {
            section aria-labelledby="attention" {
                h2 id="attention" { "Needs attention" }
                @if o.attention.is_empty() {
                    p class="calm" { "Nothing: every launcher answers and every process runs as asked." }
                } @else {
                    table class="attention" {
                        caption { (o.attention_total) @if o.attention_total == 1 { " needs attention" } @else { " need attention" } @if o.attention_total > o.attention.len() { ", the first " (o.attention.len()) " shown" } }
                        thead { tr {
                            th scope="col" { "What" } th scope="col" { "State" }
                            th scope="col" { "For" } th scope="col" { "Detail" }
                        } }
                        tbody {
                            @for a in &o.attention {
                                tr {
                                    td { (a.what) }
                                    td { (badge(&a.state)) }
                                    td { (for_how_long(a.since_ms, o.now_ms)) }
                                    td { (a.detail) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="now" class="grid" {
                h2 id="now" { "Now" }
                (counts("Launchers", o.launcher_total, &o.launchers, &|s| format!("/launchers?state={s}")))
                (counts("Processes", o.process_total, &o.processes, &|s| format!("/processes?status={s}")))
            }
        },
    )
}

fn labels(l: &apb::LauncherInfo) -> String {
    let mut labels: Vec<String> = l
        .metadata
        .iter()
        .filter(|(k, _)| !query::OWN_METADATA.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    labels.join(", ")
}

pub fn launchers(
    frame: &Frame,
    q: &LauncherQuery,
    rows: &[apb::LauncherInfo],
    total: usize,
    regions: &[String],
) -> Markup {
    let header = |key: SortKey, label: &str| {
        let active = q.sort == key;
        let href = q.link(|n| {
            n.desc = active && !q.desc;
            n.sort = key;
            n.page = 1;
        });
        let sort = match (active, q.desc) {
            (false, _) => "none",
            (true, false) => "ascending",
            (true, true) => "descending",
        };
        html! { th scope="col" aria-sort=(sort) { a href={ "/launchers" (href) } { (label) } } }
    };
    let pages = total.div_ceil(query::PAGE_SIZE).max(1);
    page(
        "Launchers",
        Some(frame),
        html! {
            form class="filters" method="get" action="/launchers" role="search" {
                label { "Host, id or label " input type="search" name="q" value=(q.text.clone().unwrap_or_default()); }
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for s in query::LAUNCHER_STATES {
                            option value=(s) selected[q.state.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                label { "Region "
                    select name="region" {
                        option value="" { "any" }
                        @for r in regions {
                            option value=(r) selected[q.region.as_deref() == Some(r.as_str())] { (r) }
                        }
                    }
                }
                @if q.sort != SortKey::Host { input type="hidden" name="sort" value=(q.sort.as_str()); }
                @if q.desc { input type="hidden" name="dir" value="desc"; }
                button type="submit" { "Filter" }
            }
            table id="launchers" {
                caption { (total) " launchers" @if pages > 1 { ", page " (q.page) " of " (pages) } }
                thead { tr {
                    (header(SortKey::Host, "Host"))
                    (header(SortKey::State, "State"))
                    (header(SortKey::Heartbeat, "Heartbeat"))
                    (header(SortKey::Version, "Version"))
                    (header(SortKey::Slots, "Slots used / free"))
                    th scope="col" { "Labels" }
                    (header(SortKey::Region, "Region"))
                } }
                tbody {
                    @for l in rows {
                        tr data-launcher=(l.launcher_id) {
                            th scope="row" {
                                a href=(launcher_href(&l.launcher_id)) { (host_of(l)) }
                                @if host_of(l) != l.launcher_id { br; small class="id" { (l.launcher_id) } }
                            }
                            td { (badge(launcher_state(l))) }
                            td { (when(l.last_heartbeat_unix_ms)) }
                            td { (l.version) }
                            td class="num" { (l.slots_used) " / " ((l.max_processes - l.slots_used).max(0)) }
                            td { (labels(l)) }
                            td { (l.region) }
                        }
                    }
                }
            }
            (pager(q.page, pages, &|p| format!("/launchers{}", q.link(|n| n.page = p))))
        },
    )
}

fn pager(page_now: usize, pages: usize, href: &dyn Fn(usize) -> String) -> Markup {
    html! {
        @if pages > 1 {
            nav class="pager" aria-label="Pages" {
                @if page_now > 1 { a rel="prev" href=(href(page_now - 1)) { "← previous" } }
                span { "page " (page_now) " of " (pages) }
                @if page_now < pages { a rel="next" href=(href(page_now + 1)) { "next →" } }
            }
        }
    }
}

fn process_rows(rows: &[apb::ProcessInfo], with_launcher: bool) -> Markup {
    html! {
        @for p in rows {
            @let id = p.assignment.as_ref().map(|a| a.process_id.as_str()).unwrap_or("");
            @let h = p.health.clone().unwrap_or_default();
            tr data-process=(id) {
                th scope="row" { a href=(process_href(id)) { (id) } }
                td { (badge(process_status(p))) }
                @if with_launcher {
                    td { @if !p.launcher_id.is_empty() { a href=(launcher_href(&p.launcher_id)) { (p.launcher_id) } } }
                }
                td class="num" { (h.restart_count) }
                td { (h.exit_reason) }
                td { code { (p.unit_name) } }
            }
        }
    }
}

pub struct LauncherPage<'a> {
    pub launcher: &'a apb::LauncherInfo,
    pub processes: &'a [apb::ProcessInfo],
    pub process_total: usize,
    pub timeline: &'a [Change],
    pub may_drain: bool,
}

pub fn launcher(frame: &Frame, p: &LauncherPage) -> Markup {
    let l = p.launcher;
    let state = launcher_state(l);
    page(
        &format!("Launcher {}", host_of(l)),
        Some(frame),
        html! {
            dl class="facts" {
                dt { "State" } dd id="launcher-state" { (badge(state)) }
                dt { "Id" } dd { code { (l.launcher_id) } }
                dt { "Host" } dd { (host_of(l)) }
                dt { "Address" } dd { code { (l.address) } }
                dt { "Region" } dd { (l.region) }
                dt { "Version" } dd { (l.version) }
                dt { "Last heartbeat" } dd { (when(l.last_heartbeat_unix_ms)) }
                dt { "Registered" } dd { (when(l.registered_at_unix_ms)) }
                dt { "Slots used / free" } dd { (l.slots_used) " / " ((l.max_processes - l.slots_used).max(0)) }
                dt { "Types" } dd { (l.process_types.join(", ")) }
                dt { "Labels" } dd { (labels(l)) }
            }
            @if p.may_drain {
                div class="actions" {
                    @if l.draining {
                        (action(frame, &format!("{}/undrain", launcher_href(&l.launcher_id)), "Undrain: take new processes again"))
                    } @else {
                        (action(frame, &format!("{}/drain", launcher_href(&l.launcher_id)), "Drain: place nothing new here"))
                    }
                }
            }
            section aria-labelledby="procs" {
                h2 id="procs" { "Processes" }
                table {
                    caption { (p.process_total) " processes" @if p.process_total > p.processes.len() { ", the first " (p.processes.len()) " shown: " a href={ "/processes" (ProcessQuery { request: apb::ListProcessesRequest { launcher_id: l.launcher_id.clone(), ..Default::default() }, page: 1 }.link(1)) } { "all of them" } } }
                    thead { tr {
                        th scope="col" { "Process" } th scope="col" { "Status" }
                        th scope="col" class="num" { "Restarts" } th scope="col" { "Last exit" }
                        th scope="col" { "Unit" }
                    } }
                    tbody { (process_rows(p.processes, false)) }
                }
            }
            section aria-labelledby="timeline" {
                h2 id="timeline" { "State changes, last 24 hours" }
                @if p.timeline.is_empty() {
                    p { "None in the last 24 hours." }
                } @else {
                    table {
                        caption { (p.timeline.len()) " changes, newest first" }
                        thead { tr { th scope="col" { "When" } th scope="col" { "Became" } th scope="col" { "What happened" } } }
                        tbody id="timeline-rows" {
                            @for c in p.timeline {
                                tr data-kind=(c.kind) {
                                    td { (when(c.at_unix_ms)) }
                                    td { (badge(&c.kind)) }
                                    td { (c.message) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn processes(
    frame: &Frame,
    q: &ProcessQuery,
    rows: &[apb::ProcessInfo],
    total: usize,
) -> Markup {
    let pages = total.div_ceil(query::PAGE_SIZE).max(1);
    let r = &q.request;
    page(
        "Processes",
        Some(frame),
        html! {
            form class="filters" method="get" action="/processes" role="search" {
                label { "Status " input type="text" name="status" value=(r.status); }
                label { "Launcher " input type="text" name="launcher" value=(r.launcher_id); }
                label { "Namespace " input type="text" name="namespace" value=(r.namespace); }
                button type="submit" { "Filter" }
            }
            table id="processes" {
                caption { (total) " processes" @if pages > 1 { ", page " (q.page) " of " (pages) } }
                thead { tr {
                    th scope="col" { "Process" } th scope="col" { "Status" } th scope="col" { "Launcher" }
                    th scope="col" class="num" { "Restarts" } th scope="col" { "Last exit" } th scope="col" { "Unit" }
                } }
                tbody { (process_rows(rows, true)) }
            }
            (pager(q.page, pages, &|p| format!("/processes{}", q.link(p))))
        },
    )
}

pub struct ProcessPage<'a> {
    pub process: &'a apb::ProcessInfo,
    pub host: Option<&'a str>,
    pub events: &'a [std::sync::Arc<apb::Event>],
    pub revision: i64,
    pub may_revoke: bool,
    pub now_ms: i64,
}

pub fn process(frame: &Frame, pp: &ProcessPage) -> Markup {
    let p = pp.process;
    let spec = p.assignment.clone().unwrap_or_default();
    let id = spec.process_id.clone();
    let h = p.health.clone().unwrap_or_default();
    // The admin's answer is redacted already (GetProcess); shown as the
    // spec file it was written as.
    let yaml = serde_norway::to_value(&spec)
        .map(prune)
        .and_then(|v| serde_norway::to_string(&v))
        .unwrap_or_default();
    let feed = EventQuery {
        request: apb::WatchRequest {
            process_id: id.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    page(
        &format!("Process {id}"),
        Some(frame),
        html! {
            dl class="facts" {
                dt { "Status" } dd id="process-status" { (badge(process_status(p))) }
                @if !p.last_known_status.is_empty() {
                    dt { "Last known" } dd { (badge(&p.last_known_status)) " as of " (when(p.unknown_since_unix_ms)) }
                }
                dt { "Launcher" } dd {
                    @if p.launcher_id.is_empty() { "none" } @else {
                        a href=(launcher_href(&p.launcher_id)) { (pp.host.unwrap_or(&p.launcher_id)) }
                        @if pp.host.is_some_and(|h| h != p.launcher_id) { " " small class="id" { (p.launcher_id) } }
                    }
                }
                dt { "Unit" } dd { code { (p.unit_name) } }
                dt { "Type, namespace" } dd { (if spec.process_type.is_empty() { "pattern" } else { &spec.process_type }) @if !spec.namespace.is_empty() { ", " (spec.namespace) } }
                dt { "Version" } dd { (spec.version) }
                dt { "Placement" } dd { (p.placement) }
                dt { "Restarts" } dd { (h.restart_count) }
                @if h.pid > 0 { dt { "PID" } dd { (h.pid) } }
                @if h.uptime_seconds > 0 && p.unknown_since_unix_ms == 0 { dt { "Up" } dd { (duration(h.uptime_seconds)) } }
                dt { "Last exit" } dd { @if h.exit_reason.is_empty() { "—" } @else { (h.exit_reason) } }
                @if !h.last_error.is_empty() { dt { "Last error" } dd { (h.last_error) } }
                dt { "Reported" } dd { (when(p.health_reported_unix_ms)) }
            }
            @if pp.may_revoke && p.placement != "revoking" {
                div class="actions" {
                    (action(frame, &format!("{}/revoke", process_href(&id)), "Revoke: stop it gracefully"))
                }
            }
            section aria-labelledby="logs" {
                h2 id="logs" { "Its output" }
                p { "With prismctl:" }
                pre { code { "prismctl logs " (id) } }
                p { "On " (pp.host.unwrap_or("its host")) ", from the journal:" }
                pre { code { "journalctl -u '" (p.unit_name) "'" } }
            }
            section aria-labelledby="spec" {
                h2 id="spec" { "Spec (credentials and connection strings redacted)" }
                pre class="spec" { code { (yaml) } }
            }
            section aria-labelledby="changes" {
                h2 id="changes" { "Its events" }
                (event_table(&feed, pp.events, pp.revision, "Newest first; new events appear as they happen"))
            }
            section aria-labelledby="history" {
                h2 id="history" { "History" }
                table {
                    caption { "Placement history, newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "Version" } th scope="col" { "Launcher" } th scope="col" { "Detail" } } }
                    tbody {
                        @for e in &p.history {
                            tr {
                                td { (when(e.at_unix_ms)) }
                                td { (e.event) }
                                td { (e.version) }
                                td { (e.launcher_id) }
                                td { (e.detail) }
                            }
                        }
                    }
                }
            }
            p class="hint" { "Read at " (timestamp(pp.now_ms)) " UTC" }
        },
    )
}

/// One event as a table row (the live feed sends the same).
pub fn event_row(e: &apb::Event) -> Markup {
    let kind = e.kind.split_once('.').map_or(e.kind.as_str(), |(_, k)| k);
    let status = e.process.as_ref().map(|p| p.status.as_str()).unwrap_or("");
    html! {
        tr data-revision=(e.revision) data-kind=(e.kind) {
            td { time datetime=(format!("{}Z", timestamp(e.at_unix_ms).replace(' ', "T"))) { (timestamp(e.at_unix_ms)) } }
            td { (badge(kind)) @if !status.is_empty() && status != kind { " " (badge(status)) } }
            td { @if !e.process_id.is_empty() { a href=(process_href(&e.process_id)) { (e.process_id) } } }
            td { @if !e.launcher_id.is_empty() { a href=(launcher_href(&e.launcher_id)) { (e.launcher_id) } } }
            td { (e.message) }
        }
    }
}

fn event_table(
    q: &EventQuery,
    rows: &[std::sync::Arc<apb::Event>],
    revision: i64,
    caption: &str,
) -> Markup {
    let sep = if q.link().is_empty() { "?" } else { "&" };
    let live = format!("/events/live{}{sep}since={revision}", q.link());
    html! {
        p class="live" role="status" aria-live="polite" data-live-status { "Showing the fleet as of revision " (revision) "; reload for newer events." }
        table class="events" {
            caption { (caption) }
            thead { tr {
                th scope="col" { "When (UTC)" } th scope="col" { "What" } th scope="col" { "Process" }
                th scope="col" { "Launcher" } th scope="col" { "Message" }
            } }
            tbody data-live=(live) {
                @for e in rows { (event_row(e)) }
            }
        }
    }
}

pub fn events(
    frame: &Frame,
    q: &EventQuery,
    rows: &[std::sync::Arc<apb::Event>],
    revision: i64,
    ready: bool,
) -> Markup {
    let r = &q.request;
    page(
        "Events",
        Some(frame),
        html! {
            form class="filters" method="get" action="/events" role="search" {
                label { "Kind " input type="text" name="kind" value=(r.kinds.join(",")) placeholder="process.failed, launcher"; }
                label { "Process " input type="text" name="process" value=(r.process_id) placeholder="orders-*"; }
                label { "Launcher " input type="text" name="launcher" value=(r.launcher_id); }
                label { "Namespace " input type="text" name="namespace" value=(r.namespace); }
                button type="submit" { "Filter" }
            }
            @if !ready { p class="hint" { "This admin is still reading the event log; older events appear on reload." } }
            (event_table(q, rows, revision, "Newest first; new events appear as they happen"))
            p class="hint" { "Older events: " code { "prismctl events --since REVISION" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_healthy_is_red() {
        for s in [
            "healthy",
            "running",
            "started",
            "draining",
            "registered",
            "stopped",
        ] {
            assert_ne!(tone(s), "bad", "{s}");
        }
        for s in ["failed", "circuit_open", "disconnected"] {
            assert_eq!(tone(s), "bad", "{s}");
        }
    }

    #[test]
    fn a_page_of_a_thousand_launchers_stays_small() {
        let all: Vec<apb::LauncherInfo> = (0..1000)
            .map(|i| apb::LauncherInfo {
                launcher_id: format!("launcher-{i:04}"),
                health: "healthy".into(),
                version: "0.1.0".into(),
                region: format!("region-{}", i % 5),
                max_processes: 50,
                slots_used: 10,
                last_heartbeat_unix_ms: 1_795_685_523_000,
                metadata: [
                    ("hostname".to_owned(), format!("host-{i:04}.example")),
                    ("rack".to_owned(), format!("r{}", i % 40)),
                ]
                .into(),
                ..Default::default()
            })
            .collect();
        let q = LauncherQuery::parse(&[]).unwrap();
        let (rows, total) = q.apply(all);
        let frame = Frame {
            identity: "viewer",
            csrf: "t",
            standing: "leading",
        };
        let regions: Vec<String> = (0..5).map(|r| format!("region-{r}")).collect();
        let html = launchers(&frame, &q, &rows, total, &regions).into_string();
        assert!(html.contains("1000 launchers, page 1 of 10"), "paged");
        assert!(html.len() < 300_000, "{} bytes", html.len());
    }

    #[test]
    fn values_are_escaped_and_links_encoded() {
        let e = apb::Event {
            kind: "process.failed".into(),
            process_id: "a/b<script>".into(),
            message: "<b>boom</b>".into(),
            ..Default::default()
        };
        let html = event_row(&e).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("/processes/a%2Fb%3Cscript%3E"), "{html}");
    }
}
