//! Table-driven tests of the pure translation.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use super::*;
use crate::model::*;

pub(crate) fn process(kind: ProcessKind) -> ManagedProcess {
    ManagedProcess {
        id: "kv-1".into(),
        namespace: "orders".into(),
        version: 3,
        binary: PathBuf::from("/usr/bin/keyvalue-runner"),
        executable: PathBuf::from("/usr/bin/keyvalue-runner"),
        args: vec!["--listen".into(), "0.0.0.0:8980".into()],
        env: BTreeMap::from([("EXTRA".into(), "1".into())]),
        port: Some(8980),
        health_port: Some(9093),
        log_level: Some("debug".into()),
        kind,
        isolation: IsolationLevel::Namespace,
        restart: RestartPolicy::default(),
        health: HealthCheck::default(),
        resources: Resources::default(),
        sandbox: SandboxOptions::default(),
        logs: LogLimits::default(),
        placement: PlacementRules::default(),
        on_disconnect: Default::default(),
        depends_on: vec![],
        stop_timeout: Duration::from_secs(30),
        notify_ready: false,
    }
}

pub(crate) fn pattern() -> ProcessKind {
    ProcessKind::Pattern(PatternConfig {
        pattern_type: "keyvalue".into(),
        slots: BTreeMap::from([(
            "store".into(),
            SlotBackend {
                backend_type: "redis".into(),
                connection_string: Some(Secret::new("redis://:pw@db:6379")),
                credentials: BTreeMap::from([("token".into(), Secret::new("t0k"))]),
                options: BTreeMap::from([("db".into(), "0".into())]),
            },
        )]),
        settings: BTreeMap::from([("ttl".into(), "60s".into())]),
    })
}

fn backend() -> ProcessKind {
    ProcessKind::Backend(BackendConfig {
        backend_type: "redis".into(),
        connection_string: Secret::new("redis://:hunter2@db:6379"),
        credentials: BTreeMap::from([("password".into(), Secret::new("hunter2"))]),
        driver_options: BTreeMap::from([("pool".into(), "8".into())]),
    })
}

fn proxy() -> ProcessKind {
    ProcessKind::Proxy(ProxyConfig {
        admin_endpoint: "admin:8981".into(),
        control_port: 9090,
        data_port: 8980,
        proxy_id: Some("proxy-01".into()),
        partition_ranges: vec![0, 127],
    })
}

fn utility() -> ProcessKind {
    ProcessKind::Utility(UtilityConfig {
        utility_type: "log-collector".into(),
        settings: BTreeMap::new(),
        target_processes: vec!["kv-1".into(), "kv-2".into()],
    })
}

fn str_prop(spec: &UnitSpec, name: &str) -> String {
    match spec.get(name) {
        Some(PropValue::Str(s)) => s.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn env(spec: &UnitSpec) -> Vec<String> {
    match spec.get(props::ENVIRONMENT) {
        Some(PropValue::StrList(v)) => v.clone(),
        other => panic!("Environment: {other:?}"),
    }
}

#[test]
fn names_and_slices_per_type() {
    // (kind, isolation, namespace, unit, slice)
    let cases = [
        (
            pattern(),
            IsolationLevel::Namespace,
            "orders",
            r"prism-pattern-kv\x2d1.service",
            "prism-pattern-orders.slice",
        ),
        (
            pattern(),
            IsolationLevel::None,
            "orders",
            r"prism-pattern-kv\x2d1.service",
            "prism-pattern.slice",
        ),
        (
            proxy(),
            IsolationLevel::Namespace,
            "",
            r"prism-proxy-kv\x2d1.service",
            "prism-proxy.slice",
        ),
        (
            backend(),
            IsolationLevel::Session,
            "my-ns",
            r"prism-backend-kv\x2d1.service",
            r"prism-backend-my\x2dns.slice",
        ),
        (
            utility(),
            IsolationLevel::None,
            "",
            r"prism-utility-kv\x2d1.service",
            "prism-utility.slice",
        ),
    ];
    for (kind, isolation, ns, unit, slice) in cases {
        let mut p = process(kind);
        p.isolation = isolation;
        p.namespace = ns.into();
        let spec = translate(&p);
        assert_eq!(spec.name, unit);
        assert_eq!(spec.slice(), Some(slice));
    }
}

#[test]
fn escaping_matches_systemd() {
    let cases = [
        ("kv-1", r"kv\x2d1"),
        ("a.b", "a.b"),
        (".hidden", r"\x2ehidden"),
        ("user@host", r"user\x40host"),
        ("a:b_c", "a:b_c"),
        ("UPPER9", "UPPER9"),
    ];
    for (raw, escaped) in cases {
        assert_eq!(escape(raw), escaped, "{raw}");
    }
    // Cross-check with systemd's own implementation where it is installed.
    if let Ok(out) = std::process::Command::new("systemd-escape")
        .args(["--", "kv-1", ".x@y:z_w", "orders.v2"])
        .output()
    {
        let theirs = String::from_utf8_lossy(&out.stdout);
        let ours = format!(
            "{} {} {}",
            escape("kv-1"),
            escape(".x@y:z_w"),
            escape("orders.v2")
        );
        assert_eq!(theirs.trim(), ours);
    }
}

#[test]
fn long_names_stay_within_systemd_limits_and_unique() {
    let a = "-".repeat(128);
    let b = format!("{}@", "-".repeat(127));
    let (na, nb) = (
        unit_name(ProcessType::Utility, &a),
        unit_name(ProcessType::Utility, &b),
    );
    for n in [&na, &nb] {
        assert!(n.len() <= WORKLOAD_NAME_MAX, "{} bytes", n.len());
        assert!(n.ends_with(".service"));
        // No escape sequence is cut in half.
        let body = n.trim_end_matches(".service");
        let hash_at = body.rfind('_').unwrap();
        assert!(body[..hash_at].ends_with(r"\x2d") || body[..hash_at].ends_with(r"\x40"));
    }
    assert_ne!(na, nb);
    // The hash is 130 bits of SHA-256.
    assert!(
        na.ends_with(&format!("_{}.service", digest32(&a, 26))),
        "{na}"
    );
    // Short ids are never hashed.
    assert_eq!(unit_name(ProcessType::Proxy, "p"), "prism-proxy-p.service");
}

#[test]
fn description_round_trips() {
    for (kind, ns) in [(pattern(), "orders"), (proxy(), "")] {
        let mut p = process(kind);
        p.namespace = ns.into();
        let d = description(&p);
        let id = parse_description(&d).expect("parses");
        assert_eq!(id.process_type, p.process_type());
        assert_eq!(id.id, "kv-1");
        assert_eq!(id.version, 3);
    }
    assert_eq!(
        description(&process(pattern())),
        "prism pattern kv-1 v3 (ns orders): /usr/bin/keyvalue-runner"
    );
    assert_eq!(parse_description("/bin/sleep 30"), None);
    assert_eq!(parse_description("prism pattern x vX: /bin/a"), None);
}

#[test]
fn exec_start_has_no_shell() {
    let spec = translate(&process(pattern()));
    let Some(PropValue::Exec(cmds)) = spec.get(props::EXEC_START) else {
        panic!("no ExecStart")
    };
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].path, "/usr/bin/keyvalue-runner");
    assert_eq!(
        cmds[0].argv,
        ["/usr/bin/keyvalue-runner", "--listen", "0.0.0.0:8980"]
    );
    assert!(!cmds[0].ignore_failure);
}

#[test]
fn a_dollar_is_passed_to_systemd_escaped() {
    let mut p = process(pattern());
    p.args = vec!["$HOME".into(), "${X} y".into(), "a$$".into()];
    let spec = translate(&p);
    let Some(PropValue::Exec(cmds)) = spec.get(props::EXEC_START) else {
        panic!("no ExecStart")
    };
    assert_eq!(cmds[0].argv[1..], ["$$HOME", "$${X} y", "a$$$$"]);
}

#[test]
fn service_type_follows_readiness() {
    // (notify_ready, probe, Type, WatchdogUSec)
    let cases = [
        (false, Probe::None, "exec", None),
        (true, Probe::None, "notify", None),
        (
            true,
            Probe::Watchdog {
                timeout: Duration::from_millis(1500),
            },
            "notify",
            Some(1_500_000),
        ),
    ];
    for (notify, probe, ty, wd) in cases {
        let mut p = process(utility());
        p.notify_ready = notify;
        p.health.probe = probe;
        let spec = translate(&p);
        assert_eq!(str_prop(&spec, props::TYPE), ty);
        assert_eq!(
            spec.get(props::WATCHDOG_USEC),
            wd.map(PropValue::U64).as_ref(),
            "{ty}"
        );
    }
}

#[test]
fn environment_order_and_type_variables() {
    let cases: [(ProcessKind, &[&str]); 4] = [
        (
            pattern(),
            &[
                "PRISM_PATTERN_TYPE=keyvalue",
                r#"PRISM_PATTERN_SETTINGS={"ttl":"60s"}"#,
                r#"PRISM_PATTERN_SLOTS={"store":{"backend_type":"redis","credentials":["slot.store.connection_string","slot.store.token"],"options":{"db":"0"}}}"#,
                "PRISM_CREDENTIALS=slot.store.connection_string,slot.store.token",
            ],
        ),
        (
            proxy(),
            &[
                "PRISM_ADMIN_ENDPOINT=admin:8981",
                "PRISM_CONTROL_PORT=9090",
                "PRISM_DATA_PORT=8980",
                "PRISM_PROXY_ID=proxy-01",
                "PRISM_PARTITION_RANGES=0,127",
            ],
        ),
        (
            backend(),
            &[
                "PRISM_BACKEND_TYPE=redis",
                r#"PRISM_DRIVER_OPTIONS={"pool":"8"}"#,
                "PRISM_CREDENTIALS=connection_string,password",
            ],
        ),
        (
            utility(),
            &[
                "PRISM_UTILITY_TYPE=log-collector",
                "PRISM_UTILITY_SETTINGS={}",
                "PRISM_TARGET_PROCESSES=kv-1,kv-2",
            ],
        ),
    ];
    for (kind, expected) in cases {
        let ty = kind.process_type();
        let env = env(&translate(&process(kind)));
        assert_eq!(
            env[..8],
            [
                "PRISM_PROCESS_ID=kv-1".to_owned(),
                format!("PRISM_PROCESS_TYPE={ty}"),
                "PRISM_PROCESS_VERSION=3".into(),
                "PRISM_NAMESPACE=orders".into(),
                "PRISM_ISOLATION_LEVEL=namespace".into(),
                "PORT=8980".into(),
                "HEALTH_PORT=9093".into(),
                "LOG_LEVEL=debug".into(),
            ]
        );
        for e in expected {
            assert!(env.contains(&(*e).to_owned()), "{ty}: {e} not in {env:?}");
        }
        // The assignment's own variables come last.
        assert_eq!(env.last().map(String::as_str), Some("EXTRA=1"));
    }
}

#[test]
fn secrets_are_credentials_never_environment() {
    for kind in [pattern(), backend()] {
        let spec = translate(&process(kind));
        let everything = format!("{:?}", spec.properties);
        for secret in ["hunter2", "pw@db", "t0k"] {
            assert!(
                !everything.contains(secret),
                "{secret} leaked: {everything}"
            );
        }
        assert!(!spec.credentials.is_empty());
    }
    let spec = translate(&process(backend()));
    let ids: Vec<&str> = spec.credentials.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["connection_string", "password"]);
    assert_eq!(
        spec.credentials[0].value.expose(),
        "redis://:hunter2@db:6379"
    );
}

#[test]
fn restart_limits_stop_and_resources() {
    let mut p = process(proxy());
    p.restart = RestartPolicy {
        mode: RestartMode::Always,
        delay: Duration::from_millis(200),
        max_starts: 3,
        window: Duration::from_secs(20),
        max_delay: Some(Duration::from_secs(30)),
        steps: 4,
    };
    p.stop_timeout = Duration::from_secs(5);
    p.resources = Resources {
        memory_max_bytes: Some(128 << 20),
        memory_high_bytes: Some(100 << 20),
        cpu_millis: Some(250),
        cpu_weight: Some(50),
        io_weight: Some(200),
        tasks_max: Some(64),
        oom_policy: Some(OomPolicy::Kill),
    };
    p.logs = LogLimits {
        interval: Some(Duration::from_secs(5)),
        burst: Some(200),
    };
    let spec = translate(&p);
    let expect = [
        (props::RESTART, PropValue::Str("always".into())),
        (props::RESTART_USEC, PropValue::U64(200_000)),
        (props::START_LIMIT_BURST, PropValue::U32(3)),
        (props::RESTART_STEPS, PropValue::U32(4)),
        (props::RESTART_MAX_DELAY_USEC, PropValue::U64(30_000_000)),
        (props::START_LIMIT_INTERVAL_USEC, PropValue::U64(20_000_000)),
        (props::TIMEOUT_STOP_USEC, PropValue::U64(5_000_000)),
        (props::KILL_MODE, PropValue::Str("mixed".into())),
        (props::MEMORY_MAX, PropValue::U64(128 << 20)),
        (props::CPU_QUOTA_PER_SEC_USEC, PropValue::U64(250_000)),
        (props::TASKS_MAX, PropValue::U64(64)),
        (props::MEMORY_HIGH, PropValue::U64(100 << 20)),
        (props::CPU_WEIGHT, PropValue::U64(50)),
        (props::IO_WEIGHT, PropValue::U64(200)),
        (props::OOM_POLICY, PropValue::Str("kill".into())),
        (
            props::LOG_RATE_LIMIT_INTERVAL_USEC,
            PropValue::U64(5_000_000),
        ),
        (props::LOG_RATE_LIMIT_BURST, PropValue::U32(200)),
        (props::MEMORY_ACCOUNTING, PropValue::Bool(true)),
        (props::SYSLOG_IDENTIFIER, PropValue::Str("kv-1".into())),
        (props::STANDARD_OUTPUT, PropValue::Str("journal".into())),
    ];
    for (name, value) in expect {
        assert_eq!(spec.get(name), Some(&value), "{name}");
    }
    // Unlimited resources are not set at all.
    let spec = translate(&process(proxy()));
    for name in [
        props::MEMORY_MAX,
        props::MEMORY_HIGH,
        props::CPU_QUOTA_PER_SEC_USEC,
        props::CPU_WEIGHT,
        props::IO_WEIGHT,
        props::TASKS_MAX,
        props::OOM_POLICY,
        props::LOG_RATE_LIMIT_INTERVAL_USEC,
        props::LOG_RATE_LIMIT_BURST,
    ] {
        assert_eq!(spec.get(name), None, "{name}");
    }
    // Defaults: on-failure after 1 s, circuit at 5 starts in 60 s, 30 s stop.
    assert_eq!(
        spec.get(props::RESTART),
        Some(&PropValue::Str("on-failure".into()))
    );
    assert_eq!(
        spec.get(props::RESTART_USEC),
        Some(&PropValue::U64(1_000_000))
    );
    assert_eq!(spec.get(props::START_LIMIT_BURST), Some(&PropValue::U32(5)));
    assert_eq!(
        spec.get(props::TIMEOUT_STOP_USEC),
        Some(&PropValue::U64(30_000_000))
    );
}

#[test]
fn isolation_levels_map_to_users_and_sandboxing() {
    let mut a = process(pattern());
    let mut b = process(backend());
    // (level, same user for two processes of different types in one namespace?, PrivateDevices)
    let cases = [
        (IsolationLevel::None, false, false),
        (IsolationLevel::Namespace, true, false),
        (IsolationLevel::Session, false, true),
    ];
    for (level, shared, devices) in cases {
        a.isolation = level;
        b.isolation = level;
        let (sa, sb) = (translate(&a), translate(&b));
        let (ua, ub) = (str_prop(&sa, props::USER), str_prop(&sb, props::USER));
        assert_eq!(ua == ub, shared, "{level}: {ua} vs {ub}");
        assert!(ua.len() <= 31 && ua.starts_with("prism-"), "{ua}");
        assert!(
            ua.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
            "{ua}"
        );
        for (name, value) in [
            (props::DYNAMIC_USER, PropValue::Bool(true)),
            (props::NO_NEW_PRIVILEGES, PropValue::Bool(true)),
            (props::PROTECT_SYSTEM, PropValue::Str("strict".into())),
            (props::PROTECT_HOME, PropValue::Str("read-only".into())),
            (props::PRIVATE_TMP, PropValue::Bool(true)),
        ] {
            assert_eq!(sa.get(name), Some(&value), "{level}: {name}");
        }
        assert_eq!(
            sa.get(props::PRIVATE_DEVICES) == Some(&PropValue::Bool(true)),
            devices,
            "{level}"
        );
        // The hardening set, at every level.
        for (name, value) in [
            (props::PROTECT_KERNEL_TUNABLES, PropValue::Bool(true)),
            (props::PROTECT_KERNEL_MODULES, PropValue::Bool(true)),
            (props::PROTECT_KERNEL_LOGS, PropValue::Bool(true)),
            (props::PROTECT_CONTROL_GROUPS, PropValue::Bool(true)),
            (props::PROTECT_CLOCK, PropValue::Bool(true)),
            (props::PROTECT_HOSTNAME, PropValue::Bool(true)),
            (props::PROTECT_PROC, PropValue::Str("invisible".into())),
            (props::PROC_SUBSET, PropValue::Str("pid".into())),
            (props::RESTRICT_NAMESPACES, PropValue::U64(0)),
            (props::RESTRICT_REALTIME, PropValue::Bool(true)),
            (props::RESTRICT_SUID_SGID, PropValue::Bool(true)),
            (props::LOCK_PERSONALITY, PropValue::Bool(true)),
            (
                props::SYSTEM_CALL_ARCHITECTURES,
                PropValue::StrList(vec!["native".into()]),
            ),
            (
                props::SYSTEM_CALL_FILTER,
                PropValue::NameList(true, vec!["@system-service".into()]),
            ),
            (props::SYSTEM_CALL_ERROR_NUMBER, PropValue::I32(1)),
            (
                props::RESTRICT_ADDRESS_FAMILIES,
                PropValue::NameList(
                    true,
                    vec!["AF_UNIX".into(), "AF_INET".into(), "AF_INET6".into()],
                ),
            ),
            (props::CAPABILITY_BOUNDING_SET, PropValue::U64(0)),
            (props::UMASK, PropValue::U32(0o077)),
        ] {
            assert_eq!(sa.get(name), Some(&value), "{level}: {name}");
        }
        // Every hardening property is set, but the opt-in.
        for name in hardening_properties() {
            assert_eq!(
                sa.get(name).is_some(),
                name != props::MEMORY_DENY_WRITE_EXECUTE,
                "{level}: {name}"
            );
        }
        // Opt-in only: it breaks JIT compilers.
        assert_eq!(sa.get(props::MEMORY_DENY_WRITE_EXECUTE), None);
        let mut jitless = a.clone();
        jitless.sandbox.memory_deny_write_execute = true;
        assert_eq!(
            translate(&jitless).get(props::MEMORY_DENY_WRITE_EXECUTE),
            Some(&PropValue::Bool(true))
        );
    }
    // None: shared per type.
    a.isolation = IsolationLevel::None;
    assert_eq!(str_prop(&translate(&a), props::USER), "prism-pattern");
    let mut a2 = a.clone();
    a2.id = "kv-2".into();
    a2.namespace = "other".into();
    assert_eq!(str_prop(&translate(&a2), props::USER), "prism-pattern");
    // A process of no namespace shares its user with nobody, unless its
    // level is `none`.
    for level in [IsolationLevel::Namespace, IsolationLevel::Session] {
        a.isolation = level;
        a.namespace = String::new();
        a2.isolation = level;
        a2.namespace = String::new();
        let (ua, ub) = (dynamic_user(&a), dynamic_user(&a2));
        assert_ne!(ua, ub, "{level}");
        assert!(ua.starts_with("prism-p-") && ua.len() == 31, "{ua}");
    }
    // Namespaces: 110 bits of SHA-256 in the 31 bytes systemd allows.
    a.isolation = IsolationLevel::Namespace;
    a.namespace = "orders".into();
    assert_eq!(
        dynamic_user(&a),
        format!("prism-ns-{}", digest32("ns:orders", 22))
    );
    assert_eq!(dynamic_user(&a).len(), 31);
}

#[test]
fn digests_are_sha256_in_base32() {
    // RFC 4648 base32 of SHA-256(""), e3b0c442…, lower case.
    assert_eq!(
        digest32("", 64),
        "4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbk"
    );
    assert_eq!(digest32("", 10), "4oymiquy7q");
}

#[test]
fn only_workload_units_are_ours() {
    for (unit, ours) in [
        (r"prism-pattern-kv\x2d1.service", true),
        ("prism-utility-x.service", true),
        ("prism-launcher.service", false),
        ("prism-admin.service", false),
        ("prism-local-launcher.service", false),
        ("prism-pattern.slice", false),
        ("prism-pattern-.service", false),
        ("prism-patternx-a.service", false),
    ] {
        assert_eq!(is_workload_unit(unit), ours, "{unit}");
    }
    for unit in [
        unit_name(ProcessType::Pattern, "kv-1"),
        unit_name(ProcessType::Backend, &"@".repeat(128)),
    ] {
        assert!(is_workload_unit(&unit), "{unit}");
    }
}

#[test]
fn bus_paths_round_trip() {
    for unit in [r"prism-pattern-kv\x2d1.service", "prism.slice", "a_b"] {
        let path = bus_path(unit);
        let label = path
            .strip_prefix("/org/freedesktop/systemd1/unit/")
            .unwrap();
        assert_eq!(bus_label_unescape(label).as_deref(), Some(unit));
    }
    assert_eq!(
        bus_path(r"prism-pattern-kv\x2d1.service"),
        "/org/freedesktop/systemd1/unit/prism_2dpattern_2dkv_5cx2d1_2eservice"
    );
}

#[test]
fn the_stacks_daemons_are_notify_units_the_launcher_never_manages() {
    let spec = daemon(
        "prism-local-launcher.service",
        "prism-launcher (local stack)",
        vec!["/usr/bin/prism-launcher".into(), "--insecure".into()],
        "prism-launcher",
    );
    assert!(!is_workload_unit(&spec.name));
    assert_eq!(
        spec.get(props::TYPE),
        Some(&PropValue::Str("notify".into()))
    );
    assert_eq!(
        spec.get(props::KILL_MODE),
        Some(&PropValue::Str(KILL_MODE.into()))
    );
    let Some(PropValue::Exec(exec)) = spec.get(props::EXEC_START) else {
        panic!("no ExecStart");
    };
    assert_eq!(exec[0].path, "/usr/bin/prism-launcher");
    assert_eq!(exec[0].argv[1], "--insecure");
    assert!(spec.credentials.is_empty());
}

#[test]
fn process_types_by_name() {
    for t in ProcessType::ALL {
        assert_eq!(ProcessType::named(t.as_str()), Some(t));
        assert_eq!(t.as_str().parse::<ProcessType>(), Ok(t));
    }
    assert_eq!(ProcessType::named(""), None);
    assert_eq!("".parse::<ProcessType>(), Ok(ProcessType::Pattern));
    assert_eq!(
        ProcessType::expected(),
        "pattern, proxy, backend or utility"
    );
    let e = "daemon".parse::<ProcessType>().unwrap_err();
    assert!(
        e.contains("expected pattern, proxy, backend or utility"),
        "{e}"
    );
}

#[test]
fn the_restart_delay_grows_along_systemds_curve() {
    let r = RestartPolicy {
        delay: Duration::from_millis(100),
        max_delay: Some(Duration::from_secs(10)),
        steps: 4,
        ..RestartPolicy::default()
    };
    // 100 ms × (10 s / 100 ms)^(n/4): 0.1, 0.316, 1, 3.16, 10, 10...
    let ms: Vec<u128> = (0..6).map(|n| r.delay_of(n).as_millis()).collect();
    assert_eq!(ms, [100, 316, 1000, 3162, 10000, 10000]);
    assert_eq!(RestartPolicy::default().delay_of(7), Duration::from_secs(1));
    // Older managers are not sent what they would refuse.
    assert!(!props::supported(props::RESTART_STEPS, 252));
    assert!(props::supported(props::RESTART_STEPS, 254));
    assert!(props::supported(props::RESTART_MAX_DELAY_USEC, 0));
    assert!(props::supported(props::RESTART_USEC, 252));
}

#[test]
fn a_manager_without_restart_steps_gets_the_longest_delay_as_restart_usec() {
    let mut p = process(pattern());
    p.restart.delay = Duration::from_millis(100);
    p.restart.max_delay = Some(Duration::from_secs(10));
    p.restart.steps = 4;
    let spec = translate(&p);
    let on = |version| -> HashMap<&str, PropValue> {
        for_manager(&spec.properties, version)
            .map(|(n, v)| (n, v.clone()))
            .collect()
    };
    let old = on(252);
    assert_eq!(old[props::RESTART_USEC], PropValue::U64(10_000_000));
    assert!(!old.contains_key(props::RESTART_STEPS));
    assert!(!old.contains_key(props::RESTART_MAX_DELAY_USEC));
    assert_eq!(old.len(), spec.properties.len() - 2);
    for version in [0, 254, 257] {
        let new = on(version);
        assert_eq!(new[props::RESTART_USEC], PropValue::U64(100_000));
        assert_eq!(new[props::RESTART_STEPS], PropValue::U32(4));
        assert_eq!(new.len(), spec.properties.len());
    }
    // A delay that does not grow is the same everywhere.
    let flat = translate(&process(pattern()));
    let a: Vec<_> = for_manager(&flat.properties, 252).collect();
    let b: Vec<_> = flat.properties.iter().map(|(n, v)| (*n, v)).collect();
    assert_eq!(a, b);
}
