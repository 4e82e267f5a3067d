//! Debian's chromium, headless, driven through chromedriver over WebDriver
//! (fantoccini), with a fresh profile and background networking off:
//! nothing is downloaded. Both are stopped by PID when the browser is
//! dropped, chromium's processes found by their profile directory.
//!
//! Under `CI=true` a missing chromium or chromedriver fails the test; only
//! outside CI is the test skipped, with a message.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};

use super::{DEADLINE, eventually};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    _driver: Driver,
    pub screenshots: PathBuf,
}

/// chromedriver and the profile of the chromium it starts: both stopped
/// and removed when dropped, even when the session never started.
struct Driver {
    child: Child,
    profile: tempfile::TempDir,
}

/// The browser, or `None` when the test must be skipped.
pub async fn browser() -> Option<Browser> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "{} missing: install Debian's chromium and chromium-driver (.ci/run does)",
            missing.join(" and ")
        );
        if super::in_ci() {
            panic!("{why}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {}: {why}",
            std::thread::current().name().unwrap_or("test")
        );
        return None;
    }
    let port = super::daemon::free_port();
    let log = std::env::temp_dir().join(format!("chromedriver-{port}.log"));
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: nothing of it gets the test's signals.
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::Builder::new()
        .prefix("prism-ui-chromium")
        .tempdir()
        .expect("a profile directory");
    let driver = Driver {
        child: driver,
        profile,
    };
    let browser = Browser {
        client: connect(port, driver.profile.path()).await,
        _driver: driver,
        screenshots: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"),
    };
    std::fs::create_dir_all(&browser.screenshots).expect("screenshot directory");
    let _ = std::fs::remove_file(&log);
    browser.client.set_window_size(1280, 900).await.ok();
    Some(browser)
}

async fn connect(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    // The admin's certificate is from the test's own CA.
    caps.insert("acceptInsecureCerts".into(), true.into());
    // The console's messages, for `console_errors`.
    caps.insert(
        "goog:loggingPrefs".into(),
        serde_json::json!({ "browser": "ALL" }),
    );
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    eventually("chromedriver to answer", DEADLINE, || async {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(drop)
    })
    .await;
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a chromium session through chromedriver")
}

impl Browser {
    /// The text of the first element `css` finds.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// The text of the first element `css` finds, if any yet (a page
    /// still loading has none).
    pub async fn try_text(&self, css: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// How many elements `css` finds.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Save a screenshot as `<name>.png` beside the test binaries.
    pub async fn screenshot(&self, name: &str) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.screenshots.join(format!("{name}.png")), png);
        }
    }

    /// A cookie's value, HttpOnly or not.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_all_cookies()
            .await
            .ok()?
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_owned())
    }

    /// The console's errors since the last call (chromedriver's log of
    /// the page: script errors, CSP violations, failed loads).
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("the browser's log");
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Basic accessibility checks of the page shown: its landmarks, a
    /// label for every control, a caption and header scopes for every
    /// table, and state colours with a contrast of at least 4.5:1. What
    /// fails, in words.
    pub async fn accessibility(&self) -> Vec<String> {
        let found = self
            .client
            .execute(A11Y, vec![])
            .await
            .expect("the accessibility checks run");
        found
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|p| p.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// End the WebDriver session (chromium quits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop stops whatever is left.
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium's processes, found by the profile only this browser has.
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..50 {
            let pids = processes_with_arg(&marker);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// chromedriver's `POST /session/{id}/se/log` for the browser's console.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

const A11Y: &str = r#"
const problems = [];
const one = (sel, what) => { if (document.querySelectorAll(sel).length !== 1) problems.push("not one " + what); };
if (!document.documentElement.lang) problems.push("no lang on <html>");
one("main", "<main>");
one("h1", "<h1>");
if (!document.querySelector("header")) problems.push("no <header>");
if (document.querySelector("nav") && !document.querySelector("nav[aria-label]")) problems.push("a <nav> without a name");
for (const c of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
  const named = c.closest("label") || c.getAttribute("aria-label") || (c.id && document.querySelector("label[for='" + c.id + "']"));
  if (!named) problems.push("a control without a label: " + c.outerHTML);
}
for (const b of document.querySelectorAll("button")) {
  if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push("a button without a name");
}
for (const t of document.querySelectorAll("table")) {
  if (!t.querySelector("caption")) problems.push("a table without a caption");
  for (const th of t.querySelectorAll("thead th")) { if (th.getAttribute("scope") !== "col") problems.push("a column header without scope"); }
}
const rgb = s => (s.match(/[\d.]+/g) || []).slice(0, 3).map(Number);
const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
for (const s of document.querySelectorAll(".state")) {
  const st = getComputedStyle(s);
  const [a, b] = [lum(rgb(st.color)), lum(rgb(st.backgroundColor))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) problems.push("contrast " + ratio.toFixed(2) + " for " + s.className + " (" + s.textContent + ")");
}
return problems;
"#;

/// PIDs whose command line has `arg`.
fn processes_with_arg(arg: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}
