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
