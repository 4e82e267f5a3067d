//! Table-driven tests of the validation gate.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use super::validate::{MAX_EXEC_STRING_BYTES, check_binary_on_host, check_exec_size};
use super::*;
use crate::pb::prism as pb;

/// A directory with an executable, a non-executable file, a subdirectory and
/// a symlink that leads outside the allowlist.
struct Fixture {
    _dir: tempfile::TempDir,
    allowed: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let allowed = dir.path().join("bin");
        let outside = dir.path().join("elsewhere");
        fs::create_dir_all(&allowed).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(allowed.join("open")).unwrap();
        for (path, mode) in [
            (allowed.join("runner"), 0o755),
            (allowed.join("plain"), 0o644),
            (allowed.join("group-writable"), 0o775),
            (allowed.join("world-writable"), 0o757),
            (allowed.join("open/runner"), 0o755),
            (outside.join("evil"), 0o755),
        ] {
            fs::write(&path, "#!/bin/false\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        // A directory inside the allowlist anyone may write to.
        fs::set_permissions(allowed.join("open"), fs::Permissions::from_mode(0o1777)).unwrap();
        // A binary of another user (where the tests may give one away).
        let foreign = allowed.join("foreign");
        fs::write(&foreign, "#!/bin/false\n").unwrap();
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::os::unix::fs::chown(&foreign, Some(65534), None);
        fs::create_dir_all(allowed.join("subdir")).unwrap();
        std::os::unix::fs::symlink(allowed.join("runner"), allowed.join("alias")).unwrap();
        std::os::unix::fs::symlink(outside.join("evil"), allowed.join("link")).unwrap();
        Self {
            _dir: dir,
            allowed,
            outside,
        }
    }

    fn policy(&self) -> Policy {
        Policy::with_binary_dirs([self.allowed.clone()]).unwrap()
    }

    fn runner(&self) -> String {
        self.allowed.join("runner").display().to_string()
    }
}

fn base(binary: &str, ty: &str) -> pb::ProcessAssignment {
    let mut config = pb::ProcessConfig {
        binary: binary.to_owned(),
        ..Default::default()
    };
    match ty {
        "proxy" => {
            config.proxy = Some(pb::ProxyProcessConfig {
                admin_endpoint: "admin:8981".into(),
                control_port: 9090,
                data_port: 8980,
                ..Default::default()
            })
        }
        "backend" => {
            config.backend = Some(pb::BackendProcessConfig {
                backend_type: "redis".into(),
                connection_string: "redis://localhost".into(),
                ..Default::default()
            })
        }
        "utility" => {
            config.utility = Some(pb::UtilityProcessConfig {
                utility_type: "log-collector".into(),
                ..Default::default()
            })
        }
        _ => {
            config.pattern = Some(pb::PatternProcessConfig {
                pattern_type: "keyvalue".into(),
                ..Default::default()
            })
        }
    }
    pb::ProcessAssignment {
        process_id: "kv-1".into(),
        process_type: ty.to_owned(),
        namespace: "orders".into(),
        config: Some(config),
        version: 1,
    }
}

/// The whole gate: the pure conversion, then the host's step.
fn check(fx: &Fixture, wire: pb::ProcessAssignment) -> Result<ManagedProcess, ValidationError> {
    ManagedProcess::try_from((wire, &fx.policy()))?.on_host(&fx.policy())
}

#[test]
fn the_conversion_never_looks_at_the_host() {
    let fx = Fixture::new();
    // Missing, and outside the allowlist: structure alone passes…
    let missing = fx.allowed.join("not-installed").display().to_string();
    let outside = fx.outside.join("evil").display().to_string();
    for binary in [&missing, &outside] {
        let p = ManagedProcess::try_from((base(binary, "pattern"), &fx.policy())).unwrap();
        assert_eq!(
            p.executable,
            PathBuf::from(binary),
            "unresolved until the host step"
        );
        // …and the host's step refuses, naming the field.
        let e = p.on_host(&fx.policy()).unwrap_err();
        assert_eq!(e.field, "config.binary", "{e}");
    }
    // With host checks off (the admin), the host step changes nothing.
    let p = ManagedProcess::try_from((base(&missing, "pattern"), &Policy::structural())).unwrap();
    assert_eq!(p.clone().on_host(&Policy::structural()).unwrap(), p);
}

#[test]
fn accepts_each_type() {
    let fx = Fixture::new();
    for ty in ["", "pattern", "proxy", "backend", "utility"] {
        let p = check(&fx, base(&fx.runner(), ty)).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let expected = if ty.is_empty() { "pattern" } else { ty };
        assert_eq!(p.process_type().as_str(), expected);
        assert_eq!(p.stop_timeout, Duration::from_secs(30));
        assert_eq!(p.restart, RestartPolicy::default());
        assert_eq!(p.isolation, IsolationLevel::Namespace);
        assert!(!p.notify_ready);
    }
}

type Mutator = fn(&mut pb::ProcessAssignment, &Fixture);

fn cfg(w: &mut pb::ProcessAssignment) -> &mut pb::ProcessConfig {
    w.config.as_mut().unwrap()
}

/// Every class of bad input, the field it must be blamed on, and a word the
/// reason must contain.
#[test]
fn rejects_bad_input_naming_the_field() {
    let cases: Vec<(&str, &str, Mutator, &str, &str)> = vec![
        (
            "empty id",
            "pattern",
            |w, _| w.process_id.clear(),
            "process_id",
            "empty",
        ),
        (
            "long id",
            "pattern",
            |w, _| w.process_id = "a".repeat(129),
            "process_id",
            "129 bytes",
        ),
        (
            "id charset",
            "pattern",
            |w, _| w.process_id = "kv/1".into(),
            "process_id",
            "'/'",
        ),
        (
            "id space",
            "pattern",
            |w, _| w.process_id = "kv 1".into(),
            "process_id",
            "' '",
        ),
        (
            "namespace charset",
            "pattern",
            |w, _| w.namespace = "a$b".into(),
            "namespace",
            "'$'",
        ),
        (
            "negative version",
            "pattern",
            |w, _| w.version = -1,
            "version",
            "negative",
        ),
        (
            "no config",
            "pattern",
            |w, _| w.config = None,
            "config",
            "missing",
        ),
        (
            "unknown type",
            "pattern",
            |w, _| w.process_type = "daemon".into(),
            "process_type",
            "unknown process type",
        ),
        (
            "relative binary",
            "pattern",
            |w, _| cfg(w).binary = "bin/runner".into(),
            "config.binary",
            "not an absolute path",
        ),
        (
            "empty binary",
            "pattern",
            |w, _| cfg(w).binary.clear(),
            "config.binary",
            "required",
        ),
        (
            "dotdot binary",
            "pattern",
            |w, f| cfg(w).binary = format!("{}/../elsewhere/evil", f.allowed.display()),
            "config.binary",
            "normalised",
        ),
        (
            "outside allowlist",
            "pattern",
            |w, f| cfg(w).binary = f.outside.join("evil").display().to_string(),
            "config.binary",
            "outside the allowed",
        ),
        (
            "missing binary",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("nope").display().to_string(),
            "config.binary",
            "does not exist",
        ),
        (
            "not executable",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("plain").display().to_string(),
            "config.binary",
            "not executable",
        ),
        (
            "directory",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("subdir").display().to_string(),
            "config.binary",
            "not a regular file",
        ),
        (
            "symlink escape",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("link").display().to_string(),
            "config.binary",
            "resolves to",
        ),
        (
            "group-writable binary",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("group-writable").display().to_string(),
            "config.binary",
            "writable by its group (mode 0775)",
        ),
        (
            "world-writable binary",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("world-writable").display().to_string(),
            "config.binary",
            "writable by others",
        ),
        (
            "binary in a world-writable directory of the allowlist (sticky or not)",
            "pattern",
            |w, f| cfg(w).binary = f.allowed.join("open/runner").display().to_string(),
            "config.binary",
            "is writable by others (mode 1777)",
        ),
        (
            "NUL in arg",
            "pattern",
            |w, _| cfg(w).args = vec!["ok".into(), "a\0b".into()],
            "config.args[1]",
            "NUL",
        ),
        (
            "newline in arg",
            "pattern",
            |w, _| cfg(w).args = vec!["a\nb".into()],
            "config.args[0]",
            "newline",
        ),
        (
            "too many args",
            "pattern",
            |w, _| cfg(w).args = vec!["x".into(); 257],
            "config.args",
            "257 arguments",
        ),
        (
            "args too big",
            "pattern",
            |w, _| cfg(w).args = vec!["x".repeat(40_000); 2],
            "config.args",
            "bytes in all",
        ),
        (
            "NUL in env",
            "pattern",
            |w, _| {
                cfg(w).env.insert("A".into(), "x\0y".into());
            },
            "config.env.A",
            "NUL",
        ),
        (
            "newline in env",
            "pattern",
            |w, _| {
                cfg(w).env.insert("A".into(), "x\ny".into());
            },
            "config.env.A",
            "newline",
        ),
        (
            "env key digit",
            "pattern",
            |w, _| {
                cfg(w).env.insert("1A".into(), "x".into());
            },
            "config.env.1A",
            "[A-Za-z_]",
        ),
        (
            "env key dash",
            "pattern",
            |w, _| {
                cfg(w).env.insert("A-B".into(), "x".into());
            },
            "config.env.A-B",
            "[A-Za-z_]",
        ),
        (
            "env key reserved",
            "pattern",
            |w, _| {
                cfg(w).env.insert("PRISM_PROCESS_ID".into(), "x".into());
            },
            "config.env.PRISM_PROCESS_ID",
            "reserved",
        ),
        (
            "env key PORT",
            "pattern",
            |w, _| {
                cfg(w).env.insert("PORT".into(), "1".into());
            },
            "config.env.PORT",
            "reserved",
        ),
        (
            "too many env",
            "pattern",
            |w, _| {
                for i in 0..257 {
                    cfg(w).env.insert(format!("K{i}"), "v".into());
                }
            },
            "config.env",
            "257 variables",
        ),
        (
            "env too big",
            "pattern",
            |w, _| {
                cfg(w).env.insert("A".into(), "x".repeat(70_000));
            },
            "config.env",
            "bytes in all",
        ),
        (
            "port zero ok, negative not",
            "pattern",
            |w, _| cfg(w).port = -1,
            "config.port",
            "outside 1..65535",
        ),
        (
            "port too high",
            "pattern",
            |w, _| cfg(w).port = 65536,
            "config.port",
            "outside 1..65535",
        ),
        (
            "health port",
            "pattern",
            |w, _| cfg(w).health_port = 70000,
            "config.health_port",
            "outside",
        ),
        (
            "missing payload",
            "pattern",
            |w, _| cfg(w).pattern = None,
            "config.pattern",
            "missing",
        ),
        (
            "wrong payload",
            "proxy",
            |w, _| {
                cfg(w).pattern = Some(pb::PatternProcessConfig {
                    pattern_type: "kv".into(),
                    ..Default::default()
                })
            },
            "config.pattern",
            "for a process of type proxy",
        ),
        (
            "two payloads",
            "pattern",
            |w, _| {
                cfg(w).utility = Some(pb::UtilityProcessConfig {
                    utility_type: "x".into(),
                    ..Default::default()
                })
            },
            "config.utility",
            "for a process of type pattern",
        ),
        (
            "no pattern_type",
            "pattern",
            |w, _| cfg(w).pattern.as_mut().unwrap().pattern_type.clear(),
            "config.pattern.pattern_type",
            "required",
        ),
        (
            "no admin_endpoint",
            "proxy",
            |w, _| cfg(w).proxy.as_mut().unwrap().admin_endpoint.clear(),
            "config.proxy.admin_endpoint",
            "required",
        ),
        (
            "no control_port",
            "proxy",
            |w, _| cfg(w).proxy.as_mut().unwrap().control_port = 0,
            "config.proxy.control_port",
            "outside",
        ),
        (
            "no data_port",
            "proxy",
            |w, _| cfg(w).proxy.as_mut().unwrap().data_port = 0,
            "config.proxy.data_port",
            "outside",
        ),
        (
            "no backend_type",
            "backend",
            |w, _| cfg(w).backend.as_mut().unwrap().backend_type.clear(),
            "config.backend.backend_type",
            "required",
        ),
        (
            "no connection_string",
            "backend",
            |w, _| cfg(w).backend.as_mut().unwrap().connection_string.clear(),
            "config.backend.connection_string",
            "required",
        ),
        (
            "bad credential name",
            "backend",
            |w, _| {
                cfg(w)
                    .backend
                    .as_mut()
                    .unwrap()
                    .credentials
                    .insert("../x".into(), "v".into());
            },
            "config.backend.credentials.../x",
            "credential name",
        ),
        (
            "no utility_type",
            "utility",
            |w, _| cfg(w).utility.as_mut().unwrap().utility_type.clear(),
            "config.utility.utility_type",
            "required",
        ),
        (
            "bad target process",
            "utility",
            |w, _| cfg(w).utility.as_mut().unwrap().target_processes = vec!["a b".into()],
            "config.utility.target_processes[0]",
            "' '",
        ),
        (
            "unknown isolation",
            "pattern",
            |w, _| cfg(w).isolation_level = "strict".into(),
            "config.isolation_level",
            "unknown isolation level",
        ),
        (
            "unknown pattern isolation",
            "pattern",
            |w, _| cfg(w).pattern.as_mut().unwrap().isolation_level = "full".into(),
            "config.pattern.isolation_level",
            "unknown isolation level",
        ),
        (
            "isolation disagreement",
            "pattern",
            |w, _| {
                cfg(w).isolation_level = "none".into();
                cfg(w).pattern.as_mut().unwrap().isolation_level = "session".into();
            },
            "config.isolation_level",
            "disagrees",
        ),
        (
            "unknown restart",
            "pattern",
            |w, _| {
                cfg(w).restart_policy = Some(pb::RestartPolicy {
                    policy: "sometimes".into(),
                    ..Default::default()
                })
            },
            "config.restart_policy.policy",
            "unknown restart policy",
        ),
        (
            "negative restarts",
            "pattern",
            |w, _| {
                cfg(w).restart_policy = Some(pb::RestartPolicy {
                    max_restarts: -1,
                    ..Default::default()
                })
            },
            "config.restart_policy.max_restarts",
            "outside",
        ),
        (
            "unknown probe",
            "pattern",
            |w, _| {
                cfg(w).health_check = Some(pb::HealthCheck {
                    kind: "icmp".into(),
                    ..Default::default()
                })
            },
            "config.health_check.kind",
            "unknown probe kind",
        ),
        (
            "probe without port",
            "pattern",
            |w, _| {
                cfg(w).health_check = Some(pb::HealthCheck {
                    kind: "tcp".into(),
                    ..Default::default()
                })
            },
            "config.health_check.port",
            "needs a port",
        ),
        (
            "dynamic-linker variable",
            "pattern",
            |w, _| {
                cfg(w).env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
            },
            "config.env.LD_PRELOAD",
            "dynamic-linker",
        ),
        (
            "probe of another process's port",
            "pattern",
            |w, _| {
                cfg(w).health_port = 8080;
                cfg(w).health_check = Some(pb::HealthCheck {
                    kind: "tcp".into(),
                    port: 22,
                    ..Default::default()
                });
            },
            "config.health_check.port",
            "not a port of this assignment",
        ),
        (
            "bad probe path",
            "pattern",
            |w, _| {
                cfg(w).health_port = 8080;
                cfg(w).health_check = Some(pb::HealthCheck {
                    path: "health".into(),
                    ..Default::default()
                });
            },
            "config.health_check.path",
            "start with /",
        ),
        (
            "negative memory",
            "pattern",
            |w, _| {
                cfg(w).resources = Some(pb::ResourceLimits {
                    memory_max_bytes: -5,
                    ..Default::default()
                })
            },
            "config.resources.memory_max_bytes",
            "negative",
        ),
        (
            "stop timeout",
            "pattern",
            |w, _| cfg(w).graceful_timeout_seconds = -3,
            "config.graceful_timeout_seconds",
            "outside",
        ),
        (
            "log level",
            "pattern",
            |w, _| cfg(w).log_level = "very loud".into(),
            "config.log_level",
            "' '",
        ),
        (
            "message too big",
            "pattern",
            |w, _| {
                cfg(w).pattern.as_mut().unwrap().settings = (0..200)
                    .map(|i| (format!("k{i}"), "x".repeat(6000)))
                    .collect();
            },
            "assignment",
            "over the limit",
        ),
        // Payloads that become one environment string each: accepted
        // on the wire, they would fail at every exec with E2BIG.
        (
            "pattern settings past MAX_ARG_STRLEN",
            "pattern",
            |w, _| {
                cfg(w).pattern.as_mut().unwrap().settings = (0..3)
                    .map(|i| (format!("k{i}"), "x".repeat(50_000)))
                    .collect();
            },
            "config.pattern.settings",
            "E2BIG",
        ),
        (
            "control characters grow six-fold in JSON",
            "utility",
            |w, _| {
                cfg(w)
                    .utility
                    .as_mut()
                    .unwrap()
                    .settings
                    .insert("k".into(), "\u{1}".repeat(25_000));
            },
            "config.utility.settings",
            "E2BIG",
        ),
        (
            "slot options",
            "pattern",
            |w, _| {
                let slot = pb::BackendConfig {
                    backend_type: "redis".into(),
                    options: [("o".to_owned(), "y".repeat(70_000))].into(),
                    ..Default::default()
                };
                let slots = &mut cfg(w).pattern.as_mut().unwrap().slots;
                slots.insert("a".into(), slot.clone());
                slots.insert("b".into(), slot);
            },
            "config.pattern.slots",
            "E2BIG",
        ),
        (
            "driver options",
            "backend",
            |w, _| {
                cfg(w).backend.as_mut().unwrap().driver_options = (0..3)
                    .map(|i| (format!("k{i}"), "x".repeat(50_000)))
                    .collect();
            },
            "config.backend.driver_options",
            "E2BIG",
        ),
        (
            "target processes",
            "utility",
            |w, _| {
                cfg(w).utility.as_mut().unwrap().target_processes =
                    (0..1500).map(|i| format!("{i:0>100}")).collect();
            },
            "config.utility.target_processes",
            "E2BIG",
        ),
        (
            "partition ranges",
            "proxy",
            |w, _| cfg(w).proxy.as_mut().unwrap().partition_ranges = vec![1_000_000_000; 30_000],
            "config.proxy.partition_ranges",
            "E2BIG",
        ),
    ];
    let fx = Fixture::new();
    for (name, ty, mutate, field, reason) in cases {
        let mut wire = base(&fx.runner(), ty);
        mutate(&mut wire, &fx);
        match check(&fx, wire) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => {
                assert_eq!(e.field, field, "{name}: wrong field in {e}");
                assert!(e.reason.contains(reason), "{name}: {e:?} lacks {reason:?}");
                assert!(e.to_string().starts_with(field), "{name}: {e}");
            }
        }
    }
}

#[test]
fn defaults_and_extensions_are_applied() {
    let fx = Fixture::new();
    let mut wire = base(&fx.runner(), "backend");
    let c = cfg(&mut wire);
    c.health_port = 8081;
    c.isolation_level = "session".into();
    c.graceful_timeout_seconds = 7;
    c.restart_policy = Some(pb::RestartPolicy {
        policy: "always".into(),
        delay_ms: 250,
        max_restarts: 3,
        window_seconds: 10,
    });
    c.resources = Some(pb::ResourceLimits {
        memory_max_bytes: 64 << 20,
        cpu_millis: 500,
        tasks_max: 32,
    });
    c.backend
        .as_mut()
        .unwrap()
        .credentials
        .insert("password".into(), "pw".into());
    let p = check(&fx, wire).unwrap();
    assert_eq!(p.isolation, IsolationLevel::Session);
    assert_eq!(p.stop_timeout, Duration::from_secs(7));
    assert_eq!(
        p.health.probe,
        Probe::Http {
            port: 8081,
            path: "/health".into()
        }
    );
    assert_eq!(p.health.interval, Duration::from_secs(10));
    assert_eq!(p.health.failure_threshold, 3);
    assert_eq!(
        p.restart,
        RestartPolicy {
            mode: RestartMode::Always,
            delay: Duration::from_millis(250),
            max_starts: 3,
            window: Duration::from_secs(10)
        }
    );
    assert_eq!(p.resources.memory_max_bytes, Some(64 << 20));
    let ProcessKind::Backend(b) = &p.kind else {
        panic!("not a backend")
    };
    // Secrets never print.
    assert!(!format!("{b:?}").contains("pw\""));
    assert_eq!(b.credentials["password"].expose(), "pw");
}

#[test]
fn dynamic_linker_variables_only_when_allowed() {
    let fx = Fixture::new();
    let mut wire = base(&fx.runner(), "pattern");
    cfg(&mut wire)
        .env
        .insert("LD_LIBRARY_PATH".into(), "/opt/lib".into());
    let mut policy = fx.policy();
    assert!(ManagedProcess::try_from((wire.clone(), &policy)).is_err());
    policy.allow_dynamic_linker_env = true;
    let p = ManagedProcess::try_from((wire, &policy)).unwrap();
    assert_eq!(p.env["LD_LIBRARY_PATH"], "/opt/lib");
}

#[test]
fn watchdog_implies_notify() {
    let fx = Fixture::new();
    let mut wire = base(&fx.runner(), "utility");
    cfg(&mut wire).health_check = Some(pb::HealthCheck {
        kind: "watchdog".into(),
        watchdog_ms: 2000,
        ..Default::default()
    });
    let p = check(&fx, wire).unwrap();
    assert!(p.notify_ready);
    assert_eq!(
        p.health.probe,
        Probe::Watchdog {
            timeout: Duration::from_secs(2)
        }
    );
}

#[test]
fn policy_default_isolation_applies_when_unset() {
    let fx = Fixture::new();
    let mut policy = fx.policy();
    policy.default_isolation = IsolationLevel::None;
    let p = ManagedProcess::try_from((base(&fx.runner(), "proxy"), &policy)).unwrap();
    assert_eq!(p.isolation, IsolationLevel::None);
}

#[test]
fn policy_rejects_relative_dirs() {
    let e = Policy::with_binary_dirs(["bin"]).unwrap_err();
    assert_eq!(e.field, "binary_dirs");
}

#[test]
fn default_policy_allows_usr_bin() {
    let p = ManagedProcess::try_from((base("/usr/bin/true", "pattern"), &Policy::default()))
        .expect("/usr/bin/true is in the default allowlist");
    assert_eq!(p.binary, PathBuf::from("/usr/bin/true"));
}

#[test]
fn binaries_of_other_users_are_refused_and_the_canonical_path_runs() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new();
    let foreign = fx.allowed.join("foreign");
    if fs::metadata(&foreign).unwrap().uid() == 65534 {
        let e = check(&fx, base(&foreign.display().to_string(), "pattern")).unwrap_err();
        assert_eq!(e.field, "config.binary");
        assert!(e.reason.contains("owned by uid 65534"), "{e}");
    }
    // A symlink inside the allowlist: the unit runs the file it pointed to
    // when checked, under the name it was assigned.
    let alias = fx.allowed.join("alias");
    let p = check(&fx, base(&alias.display().to_string(), "pattern")).unwrap();
    assert_eq!(p.binary, alias);
    assert_eq!(
        p.executable,
        fs::canonicalize(fx.allowed.join("runner")).unwrap()
    );
    let spec = crate::unit::translate(&p);
    let Some(crate::unit::PropValue::Exec(exec)) = spec.get("ExecStart") else {
        panic!("no ExecStart");
    };
    assert_eq!(exec[0].path, p.executable.display().to_string());
    assert_eq!(exec[0].argv[0], alias.display().to_string());
    // A structural check (the admin's, or the launcher's at start) leaves
    // the host's part for later.
    let p = ManagedProcess::try_from((
        base(&alias.display().to_string(), "pattern"),
        &Policy::structural(),
    ))
    .unwrap();
    assert_eq!(p.executable, alias);
    assert_eq!(
        check_binary_on_host(&alias, &fx.policy()).unwrap(),
        fs::canonicalize(fx.allowed.join("runner")).unwrap()
    );
}

#[test]
fn arguments_and_environment_fit_one_exec() {
    let fx = Fixture::new();
    let mut p = check(&fx, base(&fx.runner(), "pattern")).unwrap();
    // Each string fits, the sum does not.
    p.args = vec!["a".repeat(100_000); 12];
    let e = check_exec_size(&p).unwrap_err();
    assert_eq!(e.field, "config");
    assert!(e.reason.contains("a process can be started with"), "{e}");
    p.args.truncate(8);
    check_exec_size(&p).unwrap();
    p.args.push("a".repeat(MAX_EXEC_STRING_BYTES + 1));
    assert_eq!(check_exec_size(&p).unwrap_err().field, "config.args[8]");
}
