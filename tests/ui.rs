//! The fleet status page against a real prism-admin (mutual TLS, so the
//! page is HTTPS) and a real launcher on a sandbox systemd manager, read
//! in Debian's chromium (headless, over WebDriver) and, where the HTTP
//! status matters, with a plain HTTP client.

mod support;

use std::{sync::Arc, time::Duration};

use fantoccini::Locator;
use prism_launcher::{
    auth::dial::Expect,
    pb::prism::{
        admin::v1::{self as apb, admin_client::AdminClient},
        control_plane_client::ControlPlaneClient,
    },
};
use support::{
    DEADLINE,
    browser::browser,
    daemon::Daemon,
    eventually,
    pki::{Pair, Pki, unix_channel},
    text,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.0 exchange with the page, as a browser's would be but read
/// whole: the status, the head, the body.
struct Http {
    /// `127.0.0.1:PORT`
    authority: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Http {
    fn new(base: &str, ca: Option<&std::path::Path>) -> Http {
        let (scheme, authority) = base.split_once("://").expect("a URL");
        let tls = (scheme == "https").then(|| {
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let pem = std::fs::read(ca.expect("the CA for https")).unwrap();
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots.add(c.unwrap()).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Http {
            authority: authority.trim_end_matches('/').to_owned(),
            tls,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.authority);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .unwrap();
        let mut raw = Vec::new();
        match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut s = tls.connect(name, tcp).await.expect("TLS to the page");
                s.write_all(req.as_bytes()).await.unwrap();
                // A peer that closes without close_notify is fine here.
                let _ = s.read_to_end(&mut raw).await;
            }
            None => {
                let mut s = tcp;
                s.write_all(req.as_bytes()).await.unwrap();
                s.read_to_end(&mut raw).await.unwrap();
            }
        }
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
        Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let c;
        let headers: Vec<(&str, &str)> = match cookie {
            Some(v) => {
                c = v.to_owned();
                vec![("Cookie", c.as_str())]
            }
            None => vec![],
        };
        self.send("GET", path, &headers, "").await
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `prismctl [flags] ui`: the one-time address it prints.
fn prismctl_ui(flags: &[String]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prismctl"))
        .args(flags)
        .arg("ui")
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "prismctl ui: {printed}");
    printed
        .split_whitespace()
        .find(|w| w.contains("/login?ticket="))
        .unwrap_or_else(|| panic!("no address in {printed}"))
        .to_owned()
}

/// The path and query of a URL on the page.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

fn tls_flags(port: u16, pki: &Pki, who: &Pair) -> Vec<String> {
    vec![
        "--admin".into(),
        format!("127.0.0.1:{port}"),
        "--tls-ca".into(),
        pki.ca.display().to_string(),
        "--tls-cert".into(),
        who.cert.display().to_string(),
        "--tls-key".into(),
        who.key.display().to_string(),
    ]
}

async fn process_info(
    api: &mut AdminClient<tonic::transport::Channel>,
    id: &str,
) -> apb::ProcessInfo {
    api.get_process(apb::GetProcessRequest {
        process_id: id.into(),
        history_limit: 0,
    })
    .await
    .expect("get process")
    .into_inner()
}

/// The page shown passes the accessibility checks and logged no console
/// error; saved as a screenshot.
async fn checked(browser: &support::browser::Browser, name: &str) {
    browser.screenshot(name).await;
    let problems = browser.accessibility().await;
    assert!(problems.is_empty(), "{name}: {problems:#?}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "{name}: console errors {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_status_page_in_a_real_browser() {
    let Some(h) = harness!() else { return };
    let Some(browser) = browser().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let admin_cert = pki.issue("admin", "spiffe://prism/admin");
    let host_a = pki.issue("host-a", "spiffe://prism/launcher/host-a");
    let operator = pki.issue("alice", "spiffe://prism/operator/alice");
    let viewer = pki.issue("victor", "spiffe://prism/viewer/victor");
    let flags = pki.flags(&admin_cert);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--heartbeat-interval", "1s"]);
    let admin = Daemon::admin_secure(&dir.path().join("admin"), &args).await;
    let lflags = pki.flags(&host_a);
    let endpoint = format!("127.0.0.1:{}", admin.port);
    let mut largs: Vec<&str> = lflags.iter().map(String::as_str).collect();
    largs.extend(["--admin-endpoint", &endpoint, "--heartbeat-interval", "1s"]);
    let mut launcher = Daemon::start_secure(&h, "host-a", &largs).await;

    let base = admin.ui_url().await;
    assert!(
        base.starts_with("https://127.0.0.1:"),
        "TLS is configured: {base}"
    );
    let http = Http::new(&base, Some(&pki.ca));
    let socket = dir.path().join("admin").join("admin.sock");
    let root = unix_channel(&socket);
    let mut api = AdminClient::new(root.clone());
    let mut cp = ControlPlaneClient::new(root);
    eventually("host-a to register", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let ls = api
                .list_launchers(apb::ListLaunchersRequest {})
                .await
                .ok()?
                .into_inner();
            (ls.launchers.len() == 1 && ls.launchers[0].health == "healthy").then_some(())
        }
    })
    .await;
    // A process to kill, and one with secrets.
    let kv = cp
        .assign_process(support::pattern("kv-1", &h.demo, &[]))
        .await
        .expect("assign kv-1")
        .into_inner();
    let secret = cp
        .assign_process(support::backend("secret-1", &h.demo, &[]))
        .await
        .expect("assign secret-1")
        .into_inner();
    for id in ["kv-1", "secret-1"] {
        h.wait_ready(id).await;
    }
    eventually("both processes to report running", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let ps = api
                .list_processes(apb::ListProcessesRequest::default())
                .await
                .ok()?
                .into_inner()
                .processes;
            ps.iter()
                .all(|p| {
                    p.health
                        .as_ref()
                        .is_some_and(|h| h.detailed_status == "running")
                })
                .then_some(ps)
        }
    })
    .await;

    // Nobody anonymous sees anything: not a page, not a count.
    let anon = http.get("/", None).await;
    assert_eq!(anon.status, 401, "{}", anon.head);
    assert!(anon.body.contains("prismctl ui"), "{}", anon.body);
    assert!(!anon.body.contains("host-a") && !anon.body.contains("kv-1"));
    for path in [
        "/launchers",
        "/launchers/host-a",
        "/processes/kv-1",
        "/events",
        "/events/live",
    ] {
        assert_eq!(http.get(path, None).await.status, 401, "{path}");
    }
    // Every answer carries the security headers.
    for (name, value) in [
        ("content-security-policy", "script-src 'self'"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        ("referrer-policy", "same-origin"),
    ] {
        let got = anon.header(name).unwrap_or_default();
        assert!(got.contains(value), "{name}: {got:?}");
    }
    browser.client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.text("h1").await, "Sign in with prismctl");

    // The console is read: the 401 is an error there. What follows must
    // log none.
    let errors = browser.console_errors().await;
    assert!(errors.iter().any(|e| e.contains("401")), "{errors:?}");

    // Root on the admin's socket: `prismctl ui` signs the browser in.
    let login = prismctl_ui(&["--admin".into(), format!("unix:{}", socket.display())]);
    assert!(login.starts_with(&base), "{login} is on {base}");
    browser.client.goto(&login).await.unwrap();
    assert_eq!(browser.text("h1").await, "Fleet overview");
    assert!(browser.source().await.contains("Signed in as root"));
    // A ticket works once.
    let again = http.get(path_of(&login), None).await;
    assert_eq!(again.status, 401, "a used ticket: {}", again.head);
    assert!(again.header("set-cookie").is_none());
    let root_cookie = browser
        .cookie("__Host-prism_session")
        .await
        .expect("the session cookie");

    // The overview's counts are the API's.
    let launchers = api
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .unwrap()
        .into_inner()
        .launchers;
    let processes = api
        .list_processes(apb::ListProcessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .processes;
    browser.client.refresh().await.unwrap();
    let healthy = launchers
        .iter()
        .filter(|l| l.health == "healthy" && !l.draining)
        .count();
    let running = processes
        .iter()
        .filter(|p| {
            p.placement == "placed"
                && p.health
                    .as_ref()
                    .is_some_and(|h| h.detailed_status == "running")
        })
        .count();
    assert_eq!((healthy, running), (1, 2));
    assert_eq!(
        browser.text("td[data-count='healthy']").await,
        healthy.to_string()
    );
    assert_eq!(
        browser.text("td[data-count='running']").await,
        running.to_string()
    );
    assert!(
        browser
            .source()
            .await
            .contains("Nothing: every launcher answers")
    );
    checked(&browser, "overview").await;

    // Launchers: the host name first, the id beside it.
    browser
        .client
        .goto(&format!("{base}/launchers?sort=heartbeat"))
        .await
        .unwrap();
    let host = prism_launcher::settings::hostname();
    assert_eq!(browser.text("tr[data-launcher='host-a'] th a").await, host);
    assert!(
        browser
            .text("tr[data-launcher='host-a'] td")
            .await
            .contains("healthy")
    );
    checked(&browser, "launchers").await;
    assert_eq!(
        http.get(
            "/launchers?sort=ram",
            Some(&format!("__Host-prism_session={root_cookie}"))
        )
        .await
        .status,
        400
    );

    // A process: its unit and the commands to read its output, never a
    // credential or a connection string.
    browser
        .client
        .goto(&format!("{base}/processes/secret-1"))
        .await
        .unwrap();
    let page = browser.source().await;
    assert!(page.contains(&secret.unit_name), "the unit name");
    assert!(page.contains("prismctl logs secret-1"));
    assert!(page.contains("(redacted)"));
    for leaked in ["s3cr3t-value", "hunter2"] {
        assert!(!page.contains(leaked), "{leaked} on the process page");
    }
    checked(&browser, "process").await;

    // The live feed: a process killed on the host appears without a
    // reload.
    browser
        .client
        .goto(&format!("{base}/events?process=kv-1"))
        .await
        .unwrap();
    eventually("the live feed to connect", DEADLINE, || async {
        browser
            .try_text("[data-live-status]")
            .await?
            .starts_with("Live")
            .then_some(())
    })
    .await;
    browser
        .client
        .execute("window.prismMarker = 'same page'; return null;", vec![])
        .await
        .unwrap();
    let before = browser
        .count("tbody tr[data-kind='process.restarted']")
        .await;
    let pid = h.prop(&kv.unit_name, "MainPID");
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 0), "{pid}");
    let killed = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually(
        "kv-1's restart on the open page",
        Duration::from_secs(15),
        || async {
            (browser
                .count("tbody tr[data-kind='process.restarted']")
                .await
                > before)
                .then_some(())
        },
    )
    .await;
    // The issue's figure (2 s); the benchmark measures it under load.
    eprintln!(
        "kv-1's restart on the open page {:?} after the kill",
        killed.elapsed()
    );
    let marker = browser
        .client
        .execute("return window.prismMarker;", vec![])
        .await
        .unwrap();
    assert_eq!(
        marker,
        serde_json::json!("same page"),
        "the page was not reloaded"
    );
    checked(&browser, "events").await;

    // An operator drains the launcher from its page; the API agrees.
    let login = prismctl_ui(&tls_flags(admin.port, &pki, &operator));
    browser.client.goto(&login).await.unwrap();
    assert!(browser.source().await.contains("Signed in as operator"));
    let operator_cookie = browser.cookie("__Host-prism_session").await.unwrap();
    browser
        .client
        .goto(&format!("{base}/launchers/host-a"))
        .await
        .unwrap();
    checked(&browser, "launcher").await;
    browser
        .client
        .find(Locator::Css("form[action$='/drain'] button"))
        .await
        .expect("a drain button for an operator")
        .click()
        .await
        .unwrap();
    eventually("the page to say draining", DEADLINE, || async {
        browser
            .try_text("#launcher-state")
            .await?
            .contains("draining")
            .then_some(())
    })
    .await;
    let l = api
        .get_launcher(apb::GetLauncherRequest {
            launcher_id: "host-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.draining, "the API says drained");
    // Its timeline of the last 24 hours has it: registered, then drained.
    eventually("the drain in the launcher's timeline", DEADLINE, || async {
        browser.client.refresh().await.ok()?;
        (browser
            .count("#timeline-rows tr[data-kind='drained']")
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(
        browser
            .count("#timeline-rows tr[data-kind='registered']")
            .await
            >= 1
    );
    browser
        .client
        .find(Locator::Css("form[action$='/undrain'] button"))
        .await
        .expect("an undrain button")
        .click()
        .await
        .unwrap();
    eventually("the launcher to take processes again", DEADLINE, || {
        let mut api = api.clone();
        async move {
            let l = api
                .get_launcher(apb::GetLauncherRequest {
                    launcher_id: "host-a".into(),
                })
                .await
                .ok()?
                .into_inner();
            (!l.draining).then_some(())
        }
    })
    .await;

    // A viewer reads, sees no drain button, and a forged drain is refused.
    let login = prismctl_ui(&tls_flags(admin.port, &pki, &viewer));
    browser.client.goto(&login).await.unwrap();
    assert!(browser.source().await.contains("Signed in as viewer"));
    browser
        .client
        .goto(&format!("{base}/launchers/host-a"))
        .await
        .unwrap();
    assert_eq!(browser.text("h1").await, format!("Launcher {host}"));
    assert_eq!(
        browser.count("form[action$='/drain']").await,
        0,
        "no drain button"
    );
    browser
        .client
        .goto(&format!("{base}/processes/kv-1"))
        .await
        .unwrap();
    assert_eq!(
        browser.count("form[action$='/revoke']").await,
        0,
        "no revoke button"
    );
    let viewer_cookie = browser.cookie("__Host-prism_session").await.unwrap();
    let csrf = browser
        .client
        .find(Locator::Css("input[name='csrf']"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let cookie = format!("__Host-prism_session={viewer_cookie}");
    let forged = http
        .send(
            "POST",
            "/launchers/host-a/drain",
            &[("Cookie", &cookie), ("Origin", &base)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(forged.status, 403, "a viewer's drain: {}", forged.body);
    let revoke = http
        .send(
            "POST",
            "/processes/kv-1/revoke",
            &[("Cookie", &cookie), ("Origin", &base)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(revoke.status, 403, "a viewer's revoke");

    // An operator's POST without its CSRF token, or from another origin,
    // is refused too.
    let cookie = format!("__Host-prism_session={operator_cookie}");
    let no_token = http
        .send(
            "POST",
            "/launchers/host-a/drain",
            &[("Cookie", &cookie), ("Origin", &base)],
            "",
        )
        .await;
    assert_eq!(no_token.status, 403, "no CSRF token: {}", no_token.body);
    let wrong_token = http
        .send(
            "POST",
            "/launchers/host-a/drain",
            &[("Cookie", &cookie), ("Origin", &base)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(wrong_token.status, 403, "another session's token");
    let elsewhere = http
        .send(
            "POST",
            "/launchers/host-a/drain",
            &[("Cookie", &cookie), ("Origin", "https://evil.example")],
            "",
        )
        .await;
    assert_eq!(elsewhere.status, 403, "another origin");
    let l = api
        .get_launcher(apb::GetLauncherRequest {
            launcher_id: "host-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!l.draining, "nothing refused changed anything");
    assert_eq!(process_info(&mut api, "kv-1").await.placement, "placed");

    // A launcher that stops answering needs attention, with how long.
    launcher.kill9();
    browser.client.goto(&format!("{base}/")).await.unwrap();
    let row = eventually("host-a to need attention", DEADLINE, || async {
        browser.client.refresh().await.ok()?;
        let row = browser
            .client
            .find(Locator::Css("table.attention tbody tr"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (row.contains(&host) && row.contains("unhealthy")).then_some(row)
    })
    .await;
    assert!(row.contains("silent since its last heartbeat"), "{row}");
    assert!(
        browser.count("table.attention .s-bad").await
            + browser.count("table.attention .s-warn").await
            >= 1
    );
    checked(&browser, "attention").await;

    // An admin's or a launcher's certificate opens no session.
    let launcher_api = AdminClient::new(pki.channel(admin.port, &host_a, Expect::Admin));
    let refused = launcher_api
        .clone()
        .open_ui_session(apb::OpenUiSessionRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    browser.close().await;
}

/// Without TLS: plain HTTP on loopback, and sessions that end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_it_expires_and_a_ticket_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Daemon::admin_secure(
        dir.path(),
        &[
            "--listen",
            "none",
            "--ui-session-idle",
            "3s",
            "--ui-session-max",
            "3s",
        ],
    )
    .await;
    let base = admin.ui_url().await;
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let http = Http::new(&base, None);
    let socket = dir.path().join("admin.sock");
    let login = prismctl_ui(&["--admin".into(), format!("unix:{}", socket.display())]);
    let signed_in = http.get(path_of(&login), None).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.head);
    assert_eq!(signed_in.header("location"), Some("/"));
    let set = signed_in.header("set-cookie").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(
        http.get(path_of(&login), None).await.status,
        401,
        "used once"
    );
    let page = http.get("/", Some(&cookie)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Fleet overview"));
    // Used or not, it ends at its absolute age.
    let ended = eventually("the session to end", DEADLINE, || async {
        let a = http.get("/", Some(&cookie)).await;
        (a.status == 401).then_some(a)
    })
    .await;
    assert!(ended.body.contains("session has ended"), "{}", ended.body);
    assert!(ended.body.contains("prismctl ui"));
    // Signing out ends a session at once.
    let login = prismctl_ui(&["--admin".into(), format!("unix:{}", socket.display())]);
    let set = http.get(path_of(&login), None).await;
    let cookie = set
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http.get("/", Some(&cookie)).await;
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    let out = http
        .send(
            "POST",
            "/logout",
            &[("Cookie", &cookie), ("Origin", &base)],
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(out.status, 401);
    assert_eq!(http.get("/", Some(&cookie)).await.status, 401);
}

#[test]
fn a_page_off_loopback_without_tls_is_refused_before_anything_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prism-admin"))
        .args([
            "serve",
            "--ui-listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "none",
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(64), "{printed}");
    assert!(printed.contains("--ui-listen (ui_listen)"), "{printed}");
    assert!(!socket.exists(), "nothing bound");
}
