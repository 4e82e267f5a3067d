//! Table-driven tests of the validation gate.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use super::validate::{MAX_EXEC_STRING_BYTES, check_binary_on_host, check_exec_size};
use super::*;
use crate::pb::prism as pb;

mod fields;

/// A directory with an executable, a non-executable file, a subdirectory and
/// a symlink that leads outside the allowlist.
pub(super) struct Fixture {
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

/// A keyvalue pattern assignment of `id` at `version` running `binary`
/// (the launcher's and the fleet's tests build theirs here too).
pub(crate) fn pattern_wire(id: &str, version: i64, binary: &str) -> pb::ProcessAssignment {
    pb::ProcessAssignment {
        process_id: id.into(),
        version,
        ..base(binary, "pattern")
    }
}

pub(super) fn base(binary: &str, ty: &str) -> pb::ProcessAssignment {
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

pub(super) fn cfg(w: &mut pb::ProcessAssignment) -> &mut pb::ProcessConfig {
    w.config.as_mut().unwrap()
}

/// The whole gate: the pure conversion, then the host's step.
pub(super) fn check(
    fx: &Fixture,
    wire: pb::ProcessAssignment,
) -> Result<ManagedProcess, ValidationError> {
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
        max_delay_ms: 8000,
        steps: 0,
    });
    c.resources = Some(pb::ResourceLimits {
        memory_max_bytes: 64 << 20,
        cpu_millis: 500,
        tasks_max: 32,
        ..Default::default()
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
            window: Duration::from_secs(10),
            max_delay: Some(Duration::from_secs(8)),
            steps: RestartPolicy::DEFAULT_STEPS,
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
    // Where the tests may give it away (root), and it is not their own.
    if fs::metadata(&foreign).unwrap().uid() == 65534 && crate::host::own_uid() != Some(65534) {
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

#[test]
fn dependency_cycles_are_found_with_their_path() {
    use crate::model::validate::find_cycle;
    let graph = |id: &str| -> Vec<String> {
        match id {
            "b" => vec!["c".into()],
            "c" => vec!["d".into(), "a".into()],
            "d" => vec![],
            "x" => vec!["x2".into()],
            _ => vec![],
        }
    };
    assert_eq!(
        find_cycle("a", &["b".into()], graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(find_cycle("a", &["d".into(), "x".into()], graph), None);
    assert_eq!(find_cycle("a", &[], graph), None);
}
