//! Tests of the launcher's configuration: flags over the file over defaults, and each bad setting named.

use super::*;

fn args(list: &[&str]) -> Args {
    let mut full = vec!["prism-launcher"];
    full.extend_from_slice(list);
    Args::try_parse_from(full).expect("parses")
}

#[test]
fn the_packaged_configuration_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/etc/launcher.toml");
    let c = args(&["--config", path])
        .resolve()
        .expect("packaging/etc/launcher.toml");
    assert_eq!(c.listen, None, "the local socket only");
    assert_eq!(c.socket, Some(PathBuf::from(DEFAULT_SOCKET)));
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.capabilities.len(), 4);
}

#[test]
fn plaintext_tcp_needs_insecure() {
    let c = args(&[]).resolve().unwrap();
    assert_eq!(c.listen, None);
    assert_eq!(c.advertise_address, format!("unix:{DEFAULT_SOCKET}"));
    let e = args(&["--listen", "127.0.0.1:7070"]).resolve().unwrap_err();
    assert!(e.setting.starts_with("--listen"), "{e}");
    assert!(e.reason.contains("--insecure"), "{e}");
    let c = args(&["--listen", "127.0.0.1:7070", "--insecure"])
        .resolve()
        .unwrap();
    assert_eq!(c.max_processes, 50);
    assert_eq!(c.capabilities.len(), 4);
    assert_eq!(c.systemd, Target::System);
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.policy.probe_defaults, ProbeDefaults::default());
    // Unset: journald's own rate limit applies.
    assert_eq!(c.policy.log_defaults, crate::model::LogLimits::default());
    assert!(args(&["--insecure"]).resolve().unwrap().insecure);
    let c = args(&[
        "--insecure",
        "--log-rate-limit-interval",
        "10s",
        "--log-rate-limit-burst",
        "500",
    ])
    .resolve()
    .unwrap();
    let labelled = args(&["--insecure", "--label", "zone=z1", "--label", "disk=ssd"])
        .resolve()
        .unwrap();
    assert_eq!(
        labelled.labels.iter().collect::<Vec<_>>(),
        [
            (&"disk".to_owned(), &"ssd".to_owned()),
            (&"zone".to_owned(), &"z1".to_owned())
        ]
    );
    assert_eq!(
        c.policy.log_defaults,
        crate::model::LogLimits {
            interval: Some(Duration::from_secs(10)),
            burst: Some(500),
        }
    );
}

#[test]
fn bad_settings_are_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--max-processes", "0"], "--max-processes (max_processes)"),
        (
            &["--max-processes", "ten"],
            "--max-processes (max_processes)",
        ),
        (
            &["--capabilities", "pattern,daemon"],
            "--capabilities (capabilities)",
        ),
        (&["--listen", "nowhere"], "--listen (listen)"),
        (&["--listen", ":99999"], "--listen (listen)"),
        (
            &["--admin-endpoint", "admin"],
            "--admin-endpoint (admin_endpoint)",
        ),
        (
            &["--admin-endpoint", "ftp://admin:1"],
            "--admin-endpoint (admin_endpoint)",
        ),
        (&["--launcher-id", "a b"], "--launcher-id (launcher_id)"),
        (&["--state-dir", "relative"], "--state-dir (state_dir)"),
        (&["--systemd", "nope"], "--systemd (systemd)"),
        (
            &["--log-rate-limit-interval", "soon"],
            "--log-rate-limit-interval (logs.rate_limit_interval)",
        ),
        (&["--label", "zone"], "--label (labels)"),
        (&["--label", "hostname=h1"], "--label (labels)"),
        (&["--label", "zone one=a"], "--label (labels)"),
        (
            &["--log-rate-limit-burst", "0"],
            "--log-rate-limit-burst (logs.rate_limit_burst)",
        ),
        (
            &["--allow-binary-dir", "bin"],
            "--allow-binary-dir (binary_dirs)",
        ),
        (
            &["--default-isolation", "total"],
            "--default-isolation (default_isolation)",
        ),
        (
            &["--probe-interval", "10 parsecs"],
            "--probe-interval (probe.interval)",
        ),
        (
            &["--probe-failure-threshold", "0"],
            "--probe-failure-threshold (probe.failure_threshold)",
        ),
        (&["--tls-cert", "/nonexistent"], "--tls-key (tls.key)"),
        (
            &["--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"],
            "--tls-cert (tls.cert)",
        ),
        (&["--config", "/nonexistent.toml"], "--config"),
        (&["--socket", "launcher.sock"], "--socket (socket)"),
        (
            &["--listen", "none", "--socket", "none"],
            "--listen (listen)",
        ),
        (&["--trust-domain", "a/b"], "--trust-domain (trust_domain)"),
        (
            &["--operator-group", "a b"],
            "--operator-group (operator_group)",
        ),
        (
            &["--admin-endpoint", "https://admin:8981"],
            "--admin-endpoint (admin_endpoint)",
        ),
        (
            &["--admin-endpoint", "unix:relative.sock"],
            "--admin-endpoint (admin_endpoint)",
        ),
    ];
    for (flags, setting) in cases {
        let mut all = vec!["--listen", "127.0.0.1:7070", "--insecure"];
        all.extend_from_slice(flags);
        // Later flags win, so a case's own --listen overrides.
        let e = args(&all).resolve().unwrap_err();
        assert_eq!(e.setting, *setting, "{flags:?}: {e}");
    }
}

#[test]
fn file_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("launcher.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:7171"
insecure = true
max_processes = 7
capabilities = ["pattern", "utility"]
region = "eu-1"
admin_endpoint = "admin.example:8981"
[probe]
interval = "500ms"
failure_threshold = 2
"#,
    )
    .unwrap();
    let path = file.display().to_string();
    let c = args(&["--config", &path, "--max-processes", "9"])
        .resolve()
        .unwrap();
    assert_eq!(c.listen.unwrap().port(), 7171);
    assert_eq!(c.max_processes, 9);
    assert_eq!(c.region, "eu-1");
    let endpoints: Vec<String> = c.admin_endpoints.iter().map(|a| a.to_string()).collect();
    assert_eq!(endpoints, ["http://admin.example:8981"]);
    // Several admins: a list, or commas (in the file or the flag).
    for (line, flag) in [
        (
            r#"admin_endpoint = ["a.example:8981", "b.example:8981"]"#,
            None,
        ),
        (r#"admin_endpoint = "a.example:8981, b.example:8981""#, None),
        ("", Some("a.example:8981,b.example:8981")),
    ] {
        std::fs::write(
            &file,
            format!("listen = \"127.0.0.1:7171\"\ninsecure = true\n{line}\n"),
        )
        .unwrap();
        let mut all = vec!["--config", &path];
        all.extend(flag.map(|f| ["--admin-endpoint", f]).into_iter().flatten());
        let c = args(&all).resolve().unwrap();
        let endpoints: Vec<String> = c.admin_endpoints.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            endpoints,
            ["http://a.example:8981", "http://b.example:8981"],
            "{line} {flag:?}"
        );
    }
    std::fs::write(&file, "insecure = true\nadmin_endpoint = \"a:8981,:x\"\n").unwrap();
    let e = args(&["--config", &path]).resolve().unwrap_err();
    assert_eq!(e.setting, "--admin-endpoint (admin_endpoint)", "{e}");
    assert_eq!(c.capabilities.len(), 2);
    assert_eq!(c.policy.probe_defaults.interval, Duration::from_millis(500));
    assert_eq!(c.policy.probe_defaults.failure_threshold, 2);

    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nmax_procs = 3\n").unwrap();
    let e = args(&["--config", &path]).resolve().unwrap_err();
    assert_eq!(e.setting, "--config");
    assert!(e.reason.contains("max_procs"), "{e}");
}

#[test]
fn durations_and_addresses() {
    use crate::settings::{parse_endpoint, parse_listen};
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert!(parse_duration("-1s").is_err());
    assert_eq!(parse_listen(":7070").unwrap().to_string(), "0.0.0.0:7070");
    assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
    assert_eq!(parse_endpoint("admin:8981").unwrap(), "http://admin:8981");
    assert_eq!(
        parse_endpoint("https://admin:8981/").unwrap(),
        "https://admin:8981"
    );
}

#[test]
fn repeated_allow_binary_dir_appends() {
    let args = Args::try_parse_from([
        "prism-launcher",
        "--listen",
        "127.0.0.1:1",
        "--insecure",
        "--allow-binary-dir",
        "/a",
        "--allow-binary-dir",
        "/b",
    ])
    .unwrap();
    let c = args.resolve().unwrap();
    assert_eq!(
        c.policy.binary_dirs,
        [PathBuf::from("/a"), PathBuf::from("/b")]
    );
}

#[test]
fn patterns_settings_are_checked_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let patterns = dir.path().join("patterns");
    std::fs::create_dir(&patterns).unwrap();
    let c = args(&[
        "--patterns-dir",
        &format!("{}/./", patterns.display()),
        "--pattern-ports",
        "40000-40009",
        "--pattern-launcher-api",
    ])
    .resolve()
    .unwrap();
    assert_eq!(c.patterns.dir.as_deref(), Some(patterns.as_path()));
    assert!(
        c.policy.binary_dirs.contains(&patterns),
        "joins the allowlist"
    );
    assert_eq!(c.patterns.ports, 40000..=40009);
    assert!(c.patterns.api);
    // Off by default, with pattern-launcher's ports.
    let c = args(&[]).resolve().unwrap();
    assert_eq!((c.patterns.dir, c.patterns.api), (None, false));
    assert_eq!(c.patterns.ports, 50051..=51050);
    for (flags, reason) in [
        (
            &["--patterns-dir", "/nonexistent/patterns"][..],
            "is not a directory",
        ),
        (&["--pattern-ports", "9-9"][..], "at least two ports"),
        (&["--pattern-ports", "high-low"][..], "not a port range"),
    ] {
        let e = args(flags).resolve().unwrap_err();
        assert!(
            e.setting.starts_with(&format!("{} (", flags[0])),
            "{flags:?}: {e}"
        );
        assert!(e.reason.contains(reason), "{flags:?}: {e}");
    }
    let file = dir.path().join("launcher.toml");
    std::fs::write(&file, "patterns_dir = \"relative/patterns\"\n").unwrap();
    let e = args(&["--config", &file.display().to_string()])
        .resolve()
        .unwrap_err();
    assert!(e.to_string().contains("patterns_dir"), "{e}");
    assert!(e.reason.contains("not absolute"), "{e}");
}
