//! The pages: each reads the admin's own operator API (or the feed, for
//! the past) as the caller may, and renders one bounded page.

use super::*;

pub(super) async fn overview(State(ui): Ctx, headers: HeaderMap) -> Response {
    let s = match ui.allowed(&headers, mirrors::LIST_LAUNCHERS) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    if let Err(denied) = authorize(mirrors::LIST_PROCESSES, &s.caller, false) {
        return ui.refused(&s, &denied.to_string());
    }
    let api = ui.api();
    let (launchers, processes) = match tokio::try_join!(
        api.list_launchers(Request::new(apb::ListLaunchersRequest {})),
        api.list_processes(Request::new(apb::ListProcessesRequest::default())),
    ) {
        Ok((l, p)) => (l.into_inner().launchers, p.into_inner().processes),
        Err(status) => return ui.failed(&s, status),
    };
    let now_ms = crate::clock::unix_ms();
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let mut attention = Vec::new();
    for l in &launchers {
        let state = launcher_state(l);
        *by_state.entry(state).or_default() += 1;
        if matches!(state, "unhealthy" | "disconnected") {
            attention.push((
                views::Attention {
                    what: maud::html! { "launcher " a href=(views::launcher_href(&l.launcher_id)) { (query::host_of(l)) } },
                    state: state.to_owned(),
                    since_ms: l.last_heartbeat_unix_ms,
                    detail: "silent since its last heartbeat".to_owned(),
                },
                state == "disconnected",
            ));
        }
    }
    let mut p_state: BTreeMap<String, usize> = BTreeMap::new();
    for p in &processes {
        let status = views::process_status(p);
        let status = if status.is_empty() {
            "no report"
        } else {
            status
        };
        *p_state.entry(status.to_owned()).or_default() += 1;
        if matches!(status, "failed" | "circuit_open" | "unhealthy" | "unknown") {
            let id = p
                .assignment
                .as_ref()
                .map(|a| a.process_id.as_str())
                .unwrap_or("");
            let since = match status {
                "unknown" => p.unknown_since_unix_ms,
                _ => ui
                    .feed
                    .since(id, status)
                    .unwrap_or(p.health_reported_unix_ms),
            };
            let h = p.health.clone().unwrap_or_default();
            attention.push((
                views::Attention {
                    what: maud::html! { "process " a href=(views::process_href(id)) { (id) } " on " (p.launcher_id) },
                    state: status.to_owned(),
                    since_ms: since,
                    detail: if h.last_error.is_empty() { h.exit_reason } else { h.last_error },
                },
                matches!(status, "failed" | "circuit_open"),
            ));
        }
    }
    // The worst first, then the longest so.
    attention.sort_by_key(|(a, worst)| (!*worst, a.since_ms));
    let attention_total = attention.len();
    attention.truncate(ATTENTION_ROWS);
    let view = views::Overview {
        launchers: by_state
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        launcher_total: launchers.len(),
        processes: p_state.into_iter().collect(),
        process_total: processes.len(),
        attention: attention.into_iter().map(|(a, _)| a).collect(),
        attention_total,
        now_ms,
    };
    let identity = s.caller.to_string();
    html(views::overview(&ui.frame(&s, &identity), &view))
}

pub(super) async fn launchers(
    State(ui): Ctx,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s = match ui.allowed(&headers, mirrors::LIST_LAUNCHERS) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    let q = match LauncherQuery::parse(&pairs(q)) {
        Ok(q) => q,
        Err(why) => return ui.bad_query(&s, &why),
    };
    let all = match ui
        .api()
        .list_launchers(Request::new(apb::ListLaunchersRequest {}))
        .await
    {
        Ok(r) => r.into_inner().launchers,
        Err(status) => return ui.failed(&s, status),
    };
    let mut regions: Vec<String> = all
        .iter()
        .map(|l| l.region.clone())
        .filter(|r| !r.is_empty())
        .collect();
    regions.sort();
    regions.dedup();
    let (rows, total) = q.apply(all);
    let identity = s.caller.to_string();
    html(views::launchers(
        &ui.frame(&s, &identity),
        &q,
        &rows,
        total,
        &regions,
    ))
}

pub(super) async fn launcher(
    State(ui): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match ui.allowed(&headers, mirrors::GET_LAUNCHER) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    if let Err(denied) = authorize(mirrors::LIST_PROCESSES, &s.caller, false) {
        return ui.refused(&s, &denied.to_string());
    }
    let api = ui.api();
    let info = match api
        .get_launcher(Request::new(apb::GetLauncherRequest {
            launcher_id: id.clone(),
        }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return ui.failed(&s, status),
    };
    let mut processes = match api
        .list_processes(Request::new(apb::ListProcessesRequest {
            launcher_id: id.clone(),
            ..Default::default()
        }))
        .await
    {
        Ok(r) => r.into_inner().processes,
        Err(status) => return ui.failed(&s, status),
    };
    let process_total = processes.len();
    processes.truncate(LAUNCHER_PROCESSES);
    ui.feed.caught_up(CATCH_UP).await;
    let timeline = ui.feed.timeline(&id, crate::clock::unix_ms());
    let may_drain = authorize(
        if info.draining {
            mirrors::UNDRAIN
        } else {
            mirrors::DRAIN
        },
        &s.caller,
        false,
    )
    .is_ok();
    let identity = s.caller.to_string();
    html(views::launcher(
        &ui.frame(&s, &identity),
        &views::LauncherPage {
            launcher: &info,
            processes: &processes,
            process_total,
            timeline: &timeline,
            may_drain,
        },
    ))
}

pub(super) async fn processes(
    State(ui): Ctx,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s = match ui.allowed(&headers, mirrors::LIST_PROCESSES) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    let q = match ProcessQuery::parse(&pairs(q)) {
        Ok(q) => q,
        Err(why) => return ui.bad_query(&s, &why),
    };
    let mut all = match ui
        .api()
        .list_processes(Request::new(q.request.clone()))
        .await
    {
        Ok(r) => r.into_inner().processes,
        Err(status) => return ui.failed(&s, status),
    };
    let total = all.len();
    let start = (q.page - 1).saturating_mul(query::PAGE_SIZE).min(total);
    let end = (start + query::PAGE_SIZE).min(total);
    let rows: Vec<apb::ProcessInfo> = all.drain(start..end).collect();
    let identity = s.caller.to_string();
    html(views::processes(&ui.frame(&s, &identity), &q, &rows, total))
}

pub(super) async fn process(
    State(ui): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match ui.allowed(&headers, mirrors::GET_PROCESS) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    let api = ui.api();
    let info = match api
        .get_process(Request::new(apb::GetProcessRequest {
            process_id: id.clone(),
            history_limit: 50,
        }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return ui.failed(&s, status),
    };
    let launcher = if info.launcher_id.is_empty() {
        None
    } else {
        api.get_launcher(Request::new(apb::GetLauncherRequest {
            launcher_id: info.launcher_id.clone(),
        }))
        .await
        .ok()
        .map(|r| r.into_inner())
    };
    let host = launcher.as_ref().map(query::host_of);
    // Its events show only to whoever may watch them.
    let (events, revision) = if authorize(mirrors::WATCH_EVENTS, &s.caller, false).is_ok() {
        ui.feed.caught_up(CATCH_UP).await;
        ui.feed.recent(EVENT_ROWS, |e| e.process_id == id)
    } else {
        (Vec::new(), 0)
    };
    let may_revoke = authorize(mirrors::REVOKE, &s.caller, false).is_ok();
    let identity = s.caller.to_string();
    html(views::process(
        &ui.frame(&s, &identity),
        &views::ProcessPage {
            process: &info,
            host,
            events: &events,
            revision,
            may_revoke,
            now_ms: crate::clock::unix_ms(),
        },
    ))
}

pub(super) async fn events(State(ui): Ctx, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let s = match ui.allowed(&headers, mirrors::WATCH_EVENTS) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    let q = match EventQuery::parse(&pairs(q)) {
        Ok(q) => q,
        Err(why) => return ui.bad_query(&s, &why),
    };
    ui.feed.caught_up(CATCH_UP).await;
    let (rows, revision) = ui.feed.recent(EVENT_ROWS, |e| q.filter.matches(e));
    let identity = s.caller.to_string();
    html(views::events(
        &ui.frame(&s, &identity),
        &q,
        &rows,
        revision,
        ui.feed.ready(),
    ))
}
