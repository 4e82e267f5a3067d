//! The pattern-launcher migration path (ADR-057): the same binary, invoked
//! as `pattern-launcher` (the packages install that name as a symlink),
//! takes the old launcher's flags and defaults to running patterns only.
//!
//! | pattern-launcher          | prism-launcher                              |
//! |---------------------------|---------------------------------------------|
//! | `--grpc-port N` (8982)    | `--listen :N`                               |
//! | `--isolation L`           | `--default-isolation L`                     |
//! | `--metrics-port N` (9092) | `--metrics-listen 127.0.0.1:N`              |
//! | `--health-port N`         | ignored: grpc.health.v1 on the gRPC port     |
//! | `--patterns-dir D` (./patterns) | the same: manifests launched by name; D joins the allowlist |
//! | `--max-processes` (20), `--launcher-id`, `--region`, `--admin-endpoint` | the same |
//!
//! Go-style single-dash spellings (`-grpc-port 8982`) are accepted too.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
};

use clap::{CommandFactory, FromArgMatches};

use super::config::{Args, Translated};
use crate::{
    model::ProcessType,
    settings::{ConfigError, bad},
};

/// The old name.
pub const NAME: &str = "pattern-launcher";

/// The old launcher's defaults.
const LISTEN: &str = ":8982";
const MAX_PROCESSES: i64 = 20;

/// Flags taken only under the old name.
const FLAGS: &[&str] = &["grpc-port", "isolation", "metrics-port", "health-port"];

/// The old flags that kept their names (for the single-dash spelling).
const SHARED: &[&str] = &[
    "max-processes",
    "launcher-id",
    "region",
    "admin-endpoint",
    "config",
    "patterns-dir",
];

/// Was the binary invoked as pattern-launcher?
pub fn invoked_as_legacy(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == NAME)
}

/// Parse pattern-launcher's command line; [`translate`] then takes its
/// old flags.
pub fn parse(argv: Vec<OsString>) -> Result<Args, clap::Error> {
    let mut command = Args::command()
        .name(NAME)
        .bin_name(NAME)
        .about(
            "pattern-launcher, now prism-launcher running patterns only; \
             its old flags still work (deprecated: run prism-launcher)",
        )
        .mut_arg("capabilities", |a| {
            a.help("Process types this launcher runs [default: pattern]")
        })
        .mut_arg("listen", |a| {
            a.help("gRPC listen address [default: :8982, all interfaces]")
        })
        .mut_arg("max_processes", |a| {
            a.help("Most processes held at once [default: 20]")
        });
    for flag in FLAGS {
        command = command.mut_arg(flag.replace('-', "_"), |a| a.hide(false));
    }
    let argv = argv.into_iter().map(go_style).collect::<Vec<_>>();
    let matches = command.try_get_matches_from(argv)?;
    Args::from_arg_matches(&matches)
}

/// `-grpc-port` and `-grpc-port=8982` as `--grpc-port…` (Go's flag package
/// took both spellings).
fn go_style(arg: OsString) -> OsString {
    let Some(s) = arg.to_str() else { return arg };
    let Some(rest) = s.strip_prefix('-') else {
        return arg;
    };
    let name = rest.split('=').next().unwrap_or_default();
    if !rest.starts_with('-') && (FLAGS.contains(&name) || SHARED.contains(&name)) {
        format!("-{s}").into()
    } else {
        arg
    }
}

/// The pre-pass: take the old flags out of `args` (parsed by [`parse`])
/// into what they amount to, checked, with pattern-launcher's defaults.
/// [`Args::resolve`] then ranks them (see [`Translated`]).
pub fn translate(args: &mut Args) -> Result<(), ConfigError> {
    let mut t = Translated {
        default_listen: LISTEN,
        default_max_processes: MAX_PROCESSES,
        default_capabilities: vec![ProcessType::Pattern],
        default_patterns_dir: Some("./patterns"),
        pattern_launcher_api: true,
        notices: vec![format!(
            "{NAME} is deprecated: this is prism-launcher with pattern-only defaults; \
             run prism-launcher instead (README: \"From pattern-launcher to prism-launcher\")"
        )],
        ..Translated::default()
    };
    // Each old flag that has a new one becomes it (ranked as a flag, above
    // the configuration file); errors about it name the old flag.
    if let Some(port) = args.grpc_port.take() {
        if args.daemon.listen.is_some() {
            return bad("grpc-port", "", "conflicts with --listen; give one of them");
        }
        args.daemon.listen = Some(format!(":{}", port_number("grpc-port", &port)?));
        t.given_as.push(("listen", "grpc-port"));
    }
    if let Some(level) = args.isolation.take() {
        if args.default_isolation.is_some() {
            return bad(
                "isolation",
                "",
                "conflicts with --default-isolation; give one of them",
            );
        }
        args.default_isolation = Some(level);
        t.given_as.push(("default-isolation", "isolation"));
    }
    if let Some(port) = args.metrics_port.take() {
        if args.daemon.metrics_listen.is_some() {
            return bad(
                "metrics-port",
                "",
                "conflicts with --metrics-listen; give one of them",
            );
        }
        args.daemon.metrics_listen =
            Some(format!("127.0.0.1:{}", port_number("metrics-port", &port)?));
        t.given_as.push(("metrics-listen", "metrics-port"));
    }
    if let Some(port) = args.health_port.take() {
        let port = port_number("health-port", &port)?;
        t.notices.push(format!(
            "--health-port {port} is ignored: health is the grpc.health.v1 service on the \
             gRPC port, and each process's own /health is probed by the launcher"
        ));
    }
    args.translated = t;
    Ok(())
}

fn port_number(flag: &str, text: &str) -> Result<u16, ConfigError> {
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => bad(flag, "", format!("{text:?} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_old(list: &[&str]) -> Args {
        try_old(list).expect("translates")
    }

    fn try_old(list: &[&str]) -> Result<Args, ConfigError> {
        let mut argv: Vec<OsString> = vec!["/usr/bin/pattern-launcher".into()];
        argv.extend(list.iter().map(OsString::from));
        let mut args = parse(argv).expect("parses");
        translate(&mut args)?;
        Ok(args)
    }

    #[test]
    fn the_name_is_recognised_by_basename() {
        assert!(invoked_as_legacy(Some(OsStr::new(
            "/usr/bin/pattern-launcher"
        ))));
        assert!(invoked_as_legacy(Some(OsStr::new("pattern-launcher"))));
        assert!(!invoked_as_legacy(Some(OsStr::new(
            "/usr/bin/prism-launcher"
        ))));
        assert!(!invoked_as_legacy(None));
    }

    #[test]
    fn defaults_are_the_old_launchers() {
        let c = parse_old(&["--insecure"]).resolve().unwrap();
        assert_eq!(c.capabilities.len(), 1);
        assert!(c.capabilities.contains(&ProcessType::Pattern));
        assert_eq!(c.listen.unwrap().port(), 8982);
        assert_eq!(c.max_processes, 20);
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9092");
        assert_eq!(c.notices.len(), 1);
        assert!(c.notices[0].contains("prism-launcher"), "{:?}", c.notices);
    }

    #[test]
    fn old_flags_map_to_new_settings() {
        let dir = tempfile::tempdir().unwrap();
        let patterns = dir.path().join("patterns");
        std::fs::create_dir(&patterns).unwrap();
        let c = parse_old(&[
            "-grpc-port",
            "9982",
            "--isolation=session",
            "-metrics-port=9192",
            "--health-port",
            "9093",
            "--patterns-dir",
            &format!("{}/../patterns/.", patterns.display()),
            "-launcher-id",
            "old-1",
            "--region",
            "eu",
            "--max-processes",
            "7",
            "--insecure",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.listen.unwrap().to_string(), "0.0.0.0:9982");
        assert_eq!(
            c.policy.default_isolation,
            crate::model::IsolationLevel::Session
        );
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9192");
        assert!(
            c.policy.binary_dirs.contains(&patterns),
            "{:?}",
            c.policy.binary_dirs
        );
        assert_eq!((c.launcher_id.as_str(), c.region.as_str()), ("old-1", "eu"));
        assert_eq!(c.max_processes, 7);
        assert_eq!(c.notices.len(), 2, "{:?}", c.notices);
        assert!(
            c.notices
                .iter()
                .any(|n| n.contains("--health-port 9093 is ignored"))
        );
        // The patterns directory is read for manifests, and pattern-launcher's
        // API is served.
        assert_eq!(c.patterns.dir.as_deref(), Some(patterns.as_path()));
        assert!(c.patterns.api);
    }

    #[test]
    fn plaintext_on_all_interfaces_names_grpc_port() {
        let e = parse_old(&["--grpc-port", "8982"]).resolve().unwrap_err();
        assert_eq!(e.setting, "--grpc-port");
        assert!(e.reason.contains("--insecure"), "{e}");
        // Without TLS or --insecure: only the local socket.
        let c = parse_old(&[]).resolve().unwrap();
        assert_eq!(c.listen, None);
        assert!(c.socket.is_some());
    }

    #[test]
    fn bad_old_flags_are_named() {
        for (flags, setting) in [
            (&["--grpc-port", "0"][..], "--grpc-port"),
            (&["--grpc-port", "x"][..], "--grpc-port"),
            (
                &["--grpc-port", "1", "--listen", "127.0.0.1:1"][..],
                "--grpc-port",
            ),
            (&["--metrics-port", "70000"][..], "--metrics-port"),
            (&["--isolation", "total"][..], "--isolation"),
            (
                &["--patterns-dir", "/nonexistent/patterns"][..],
                "--patterns-dir",
            ),
        ] {
            let e = try_old(flags).and_then(Args::resolve).unwrap_err();
            assert!(e.setting.starts_with(setting), "{flags:?}: {e}");
        }
    }

    #[test]
    fn a_config_file_and_new_flags_still_win() {
        let c = parse_old(&[
            "--capabilities",
            "pattern,utility",
            "--listen",
            "127.0.0.1:7070",
            "--insecure",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.capabilities.len(), 2);
        assert_eq!(c.listen.unwrap().port(), 7070);
    }

    #[test]
    fn the_new_name_refuses_old_flags_naming_the_replacement() {
        let args =
            <Args as clap::Parser>::try_parse_from(["prism-launcher", "--grpc-port", "8982"])
                .unwrap();
        let e = args.resolve().unwrap_err();
        assert_eq!(e.setting, "--grpc-port");
        assert!(e.reason.contains("--listen"), "{e}");
    }
}
