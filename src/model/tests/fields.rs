//! Every class of bad input, and the field it is blamed on.

use super::*;

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
            "depends on itself",
            "pattern",
            |w, _| {
                let id = w.process_id.clone();
                cfg(w).depends_on = vec![pb::Dependency {
                    process_id: id,
                    bind: false,
                }]
            },
            "config.depends_on[0].process_id",
            "itself",
        ),
        (
            "a dependency named twice",
            "pattern",
            |w, _| {
                let d = pb::Dependency {
                    process_id: "redis-1".into(),
                    bind: false,
                };
                cfg(w).depends_on = vec![d.clone(), d]
            },
            "config.depends_on[1].process_id",
            "twice",
        ),
        (
            "a bad dependency id",
            "pattern",
            |w, _| {
                cfg(w).depends_on = vec![pb::Dependency {
                    process_id: "redis/1".into(),
                    bind: false,
                }]
            },
            "config.depends_on[0].process_id",
            "'/'",
        ),
        (
            "max delay below the delay",
            "pattern",
            |w, _| {
                cfg(w).restart_policy = Some(pb::RestartPolicy {
                    delay_ms: 5000,
                    max_delay_ms: 1000,
                    ..Default::default()
                })
            },
            "config.restart_policy.max_delay_ms",
            "below delay_ms",
        ),
        (
            "steps without a max delay",
            "pattern",
            |w, _| {
                cfg(w).restart_policy = Some(pb::RestartPolicy {
                    steps: 3,
                    ..Default::default()
                })
            },
            "config.restart_policy.steps",
            "max_delay_ms",
        ),
        (
            "soft limit above the hard one",
            "pattern",
            |w, _| {
                cfg(w).resources = Some(pb::ResourceLimits {
                    memory_max_bytes: 64 << 20,
                    memory_high_bytes: 128 << 20,
                    ..Default::default()
                })
            },
            "config.resources.memory_high_bytes",
            "above memory_max_bytes",
        ),
        (
            "cpu weight",
            "pattern",
            |w, _| {
                cfg(w).resources = Some(pb::ResourceLimits {
                    cpu_weight: 10_001,
                    ..Default::default()
                })
            },
            "config.resources.cpu_weight",
            "1..=10000",
        ),
        (
            "io weight",
            "pattern",
            |w, _| {
                cfg(w).resources = Some(pb::ResourceLimits {
                    io_weight: -1,
                    ..Default::default()
                })
            },
            "config.resources.io_weight",
            "outside",
        ),
        (
            "oom policy",
            "pattern",
            |w, _| {
                cfg(w).resources = Some(pb::ResourceLimits {
                    oom_policy: "ignore".into(),
                    ..Default::default()
                })
            },
            "config.resources.oom_policy",
            "stop, continue or kill",
        ),
        (
            "log burst",
            "pattern",
            |w, _| {
                cfg(w).logs = Some(pb::LogLimits {
                    rate_limit_burst: -1,
                    ..Default::default()
                })
            },
            "config.logs.rate_limit_burst",
            "negative",
        ),
        (
            "log interval",
            "pattern",
            |w, _| {
                cfg(w).logs = Some(pb::LogLimits {
                    rate_limit_interval_ms: 86_400_001,
                    ..Default::default()
                })
            },
            "config.logs.rate_limit_interval_ms",
            "outside",
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
