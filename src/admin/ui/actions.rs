//! What a browser does: sign in with a ticket, sign out, and the
//! operators' actions (drain, undrain, revoke), each a POST from this
//! origin with the session's CSRF token, allowed by the table.

use super::*;

/// A form's fields (the first of each name).
fn form(body: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for (k, v) in form_urlencoded_pairs(&String::from_utf8_lossy(body)) {
        fields.entry(k).or_insert(v);
    }
    fields
}

pub(super) async fn login(State(ui): Ctx, RawQuery(q): RawQuery) -> Response {
    let ticket = pairs(q)
        .into_iter()
        .find(|(k, _)| k == "ticket")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let Some((id, s)) = ui.login.sessions.redeem(&ticket, Instant::now()) else {
        return unauthorized(
            "This sign-in address is not valid: each works once, within 60 seconds.",
        );
    };
    tracing::info!("fleet status page: {} signed in", s.caller);
    ui.wanted.notify_one();
    let secure = if ui.tls { "; Secure" } else { "" };
    let max_age = ui.login.sessions.max_age.as_secs();
    let cookie = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        ui.cookie
    );
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

pub(super) async fn logout(State(ui): Ctx, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    let (id, s) = match ui.session(&headers) {
        Ok(found) => found,
        Err(res) => return *res,
    };
    if !query::csrf_ok(&s.csrf, form.get("csrf").map(String::as_str)) {
        return ui.refused(
            &s,
            "This form lacks its token: reload the page and try again.",
        );
    }
    ui.login.sessions.end(&id);
    let mut res = unauthorized("You signed out.");
    let clear = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        ui.cookie,
        if ui.tls { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

pub(super) async fn set_draining(
    ui: Arc<Ui>,
    headers: HeaderMap,
    id: String,
    form: BTreeMap<String, String>,
    draining: bool,
) -> Response {
    let path = if draining {
        mirrors::DRAIN
    } else {
        mirrors::UNDRAIN
    };
    let s = match ui.action(&headers, &form, path) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    let Some(fleet) = ui.fleet.get() else {
        return ui.failed(&s, Status::unavailable("this prism-admin follows: open the page of the admin that leads to drain or undrain"));
    };
    let api = AdminService::new(fleet.clone(), ui.hub.clone());
    let req = Request::new(apb::DrainRequest {
        launcher_id: id.clone(),
    });
    let done = if draining {
        api.drain_launcher(req).await
    } else {
        api.undrain_launcher(req).await
    };
    match done {
        Ok(_) => {
            tracing::info!(
                "fleet status page: {} {} launcher {id}",
                s.caller,
                if draining { "drained" } else { "undrained" }
            );
            Redirect::to(&views::launcher_href(&id)).into_response()
        }
        Err(status) => ui.failed(&s, status),
    }
}

pub(super) async fn drain(
    State(ui): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    set_draining(ui, headers, id, form(&body), true).await
}

pub(super) async fn undrain(
    State(ui): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    set_draining(ui, headers, id, form(&body), false).await
}

pub(super) async fn revoke(
    State(ui): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = form(&body);
    let s = match ui.action(&headers, &form, mirrors::REVOKE) {
        Ok(s) => s,
        Err(res) => return *res,
    };
    let Some(fleet) = ui.fleet.get() else {
        return ui.failed(
            &s,
            Status::unavailable(
                "this prism-admin follows: open the page of the admin that leads to revoke",
            ),
        );
    };
    let req = match Revocation::try_from(pb::ProcessRevocation {
        process_id: id.clone(),
        ..Default::default()
    }) {
        Ok(r) => r,
        Err(e) => return ui.failed(&s, to_status(e)),
    };
    match fleet.revoke_within(req, Some(REVOKE_DEADLINE)).await {
        Ok(ack) => {
            tracing::info!(
                "fleet status page: {} revoked {id}: {}",
                s.caller,
                ack.message
            );
            Redirect::to(&views::process_href(&id)).into_response()
        }
        Err(e) => ui.failed(&s, to_status(e)),
    }
}
