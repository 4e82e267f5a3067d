//! Property tests of the validation gate and the unit translation
//! (proptest, a fixed number of cases per property: `CASES`).
//!
//! * No wire input panics the gate.
//! * Every accepted process translates to properties without NUL or
//!   newline, and to an `ExecStart` without an unescaped `$`.
//! * Unit names are valid for systemd and unique per id.
//! * A sample of generated accepted processes, started against a real
//!   sandboxed manager, all reach `active` with their arguments intact.

mod support;

use std::{collections::HashMap, fs, os::unix::fs::PermissionsExt};

use prism_launcher::{
    model::{ManagedProcess, Policy, ProcessType},
    pb::prism as pb,
    systemd::Systemd,
    unit::{self, PropValue},
};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};

/// Cases per property; fixed, so CI does the same work every run.
const CASES: u32 = 512;
/// Generated processes started against the real manager.
const STARTED: usize = 12;

fn config() -> Config {
    Config {
        cases: CASES,
        // Nothing written next to the sources; a failure prints its input.
        failure_persistence: None,
        ..Config::default()
    }
}

/// An allowlisted directory with one executable.
struct Bin {
    _dir: tempfile::TempDir,
    policy: Policy,
    runner: String,
}

fn bin() -> Bin {
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner");
    fs::write(&runner, "#!/bin/false\n").unwrap();
    fs::set_permissions(&runner, fs::Permissions::from_mode(0o755)).unwrap();
    Bin {
        policy: Policy::with_binary_dirs([dir.path().to_owned()]).unwrap(),
        runner: runner.display().to_string(),
        _dir: dir,
    }
}

/// Hostile text: `$` and `%` forms, quotes, backslashes, control
/// characters, any Unicode, lengths past the limits.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        1 => Just("$HOME".to_owned()),
        1 => Just("${X} y".to_owned()),
        1 => "[$%{}\\\\\"' a-z]{0,20}",
        1 => "[-\\x00\\n\\t\\r]{1,4}",
        1 => "[@-]{100,140}",
        1 => Just(String::new()),
    ]
}

/// Mostly `valid`, sometimes hostile: each generated assignment is valid
/// often enough to exercise the translation, and each field is attacked.
fn or_hostile(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![24 => valid, 1 => hostile()]
}

fn token() -> impl Strategy<Value = String> {
    or_hostile("[A-Za-z0-9._:-]{1,24}")
}

fn id() -> impl Strategy<Value = String> {
    or_hostile(prop_oneof![6 => "[A-Za-z0-9._:@-]{1,40}", 1 => "[a-z@-]{100,128}"])
}

/// Free text as workloads get it: printable, `$` forms, any non-control
/// Unicode.
fn value() -> impl Strategy<Value = String> {
    or_hostile(prop_oneof![
        6 => "[ -~]{0,30}",
        1 => Just("$HOME".to_owned()),
        1 => Just("${X} y".to_owned()),
        1 => "[$%{}\\\\\"' a-z]{1,12}",
        2 => "\\PC{0,16}",
    ])
}

fn map(keys: impl Strategy<Value = String>) -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::hash_map(keys, value(), 0..4)
}

fn port() -> impl Strategy<Value = i32> {
    prop_oneof![6 => Just(0), 6 => 1..65536i32, 1 => any::<i32>()]
}

fn one_of(values: &'static [&'static str]) -> impl Strategy<Value = String> {
    or_hostile(prop::sample::select(values).prop_map(str::to_owned))
}

fn credentials() -> impl Strategy<Value = HashMap<String, String>> {
    map(or_hostile("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"))
}

fn backend_config() -> impl Strategy<Value = pb::BackendConfig> {
    (token(), value(), credentials(), map(token())).prop_map(|(t, cs, creds, options)| {
        pb::BackendConfig {
            backend_type: t,
            connection_string: cs,
            credentials: creds,
            options,
        }
    })
}

fn pattern_payload() -> impl Strategy<Value = pb::PatternProcessConfig> {
    (
        token(),
        prop_oneof![4 => Just(String::new()), 1 => one_of(&["none", "namespace", "session"])],
        prop::collection::hash_map(or_hostile("[A-Za-z0-9_-]{1,10}"), backend_config(), 0..3),
        map(token()),
    )
        .prop_map(|(pattern_type, isolation_level, slots, settings)| {
            pb::PatternProcessConfig {
                pattern_type,
                isolation_level,
                slots,
                settings,
            }
        })
}

fn proxy_payload() -> impl Strategy<Value = pb::ProxyProcessConfig> {
    (
        or_hostile("[a-z.]{1,12}:[0-9]{2,5}"),
        port(),
        port(),
        prop_oneof![Just(String::new()), id()],
        prop::collection::vec(prop_oneof![9 => 0..1000i32, 1 => any::<i32>()], 0..5),
    )
        .prop_map(
            |(admin_endpoint, control_port, data_port, proxy_id, partition_ranges)| {
                pb::ProxyProcessConfig {
                    admin_endpoint,
                    control_port,
                    data_port,
                    proxy_id,
                    partition_ranges,
                }
            },
        )
}

fn backend_payload() -> impl Strategy<Value = pb::BackendProcessConfig> {
    (token(), value(), credentials(), map(token())).prop_map(
        |(backend_type, connection_string, credentials, driver_options)| pb::BackendProcessConfig {
            backend_type,
            connection_string,
            credentials,
            driver_options,
        },
    )
}

fn utility_payload() -> impl Strategy<Value = pb::UtilityProcessConfig> {
    (token(), map(token()), prop::collection::vec(id(), 0..4)).prop_map(
        |(utility_type, settings, target_processes)| pb::UtilityProcessConfig {
            utility_type,
            settings,
            target_processes,
        },
    )
}

/// The payload of `process_type`, usually; sometimes another, several or
/// none.
fn payloads(process_type: String) -> impl Strategy<Value = pb::ProcessConfig> {
    let matching = match process_type.as_str() {
        "" | "pattern" => 0,
        "proxy" => 1,
        "backend" => 2,
        "utility" => 3,
        _ => 4,
    };
    let present = prop_oneof![
        8 => Just([0, 1, 2, 3].map(|i| i == matching)),
        1 => any::<[bool; 4]>(),
    ];
    (
        present,
        pattern_payload(),
        proxy_payload(),
        backend_payload(),
        utility_payload(),
    )
        .prop_map(
            |(present, pattern, proxy, backend, utility)| pb::ProcessConfig {
                pattern: present[0].then_some(pattern),
                proxy: present[1].then_some(proxy),
                backend: present[2].then_some(backend),
                utility: present[3].then_some(utility),
                ..Default::default()
            },
        )
}

fn assignment(runner: String) -> impl Strategy<Value = pb::ProcessAssignment> {
    let binary = prop_oneof![12 => Just(runner), 1 => hostile()];
    let env_key = or_hostile("[A-Z][A-Z0-9_]{0,12}");
    let health = (
        one_of(&["", "http", "tcp", "grpc", "watchdog", "none"]),
        or_hostile("/[a-z]{0,8}"),
        port(),
        prop_oneof![4 => Just(0i64), 1 => any::<i64>()],
    )
        .prop_map(|(kind, path, port, ms)| pb::HealthCheck {
            kind,
            path,
            port,
            interval_ms: ms,
            timeout_ms: ms,
            failure_threshold: (ms % 200) as i32,
            watchdog_ms: ms,
        });
    let restart = (
        one_of(&["", "always", "on-failure", "no"]),
        prop_oneof![4 => Just(0i64), 1 => any::<i64>()],
        prop_oneof![4 => Just(0i32), 1 => any::<i32>()],
        prop_oneof![4 => Just(0i64), 1 => any::<i64>()],
    )
        .prop_map(
            |(policy, delay_ms, max_restarts, window_seconds)| pb::RestartPolicy {
                policy,
                delay_ms,
                max_restarts,
                window_seconds,
                ..Default::default()
            },
        );
    let process_type = one_of(&["", "pattern", "proxy", "backend", "utility"]);
    (
        process_type.prop_flat_map(|t| (Just(t.clone()), payloads(t))),
        (
            id(),
            prop_oneof![Just(String::new()), id()],
            prop_oneof![12 => 0..100i64, 1 => any::<i64>()],
        ),
        (
            binary,
            prop::collection::vec(value(), 0..6),
            prop::collection::hash_map(env_key, value(), 0..4),
            (port(), port(), one_of(&["", "info", "debug"])),
        ),
        (
            one_of(&["", "none", "namespace", "session"]),
            prop::option::weighted(0.2, health),
            prop::option::weighted(0.2, restart),
            prop_oneof![6 => Just(0), 1 => any::<i32>()],
            any::<(bool, bool)>(),
        ),
    )
        .prop_map(
            |(
                (process_type, payloads),
                (process_id, namespace, version),
                (binary, args, env, (port, health_port, log_level)),
                (isolation_level, health_check, restart_policy, graceful, (notify, mdwe)),
            )| {
                pb::ProcessAssignment {
                    process_id,
                    process_type,
                    namespace,
                    version,
                    config: Some(pb::ProcessConfig {
                        binary,
                        args,
                        env,
                        port,
                        health_port,
                        log_level,
                        isolation_level,
                        health_check,
                        restart_policy,
                        graceful_timeout_seconds: graceful,
                        notify_ready: notify,
                        sandbox: Some(pb::SandboxOptions {
                            memory_deny_write_execute: mdwe,
                        }),
                        ..payloads
                    }),
                }
            },
        )
}

/// What systemd would be handed, as strings.
fn strings(value: &PropValue) -> Vec<String> {
    match value {
        PropValue::Str(s) => vec![s.clone()],
        PropValue::StrList(l) | PropValue::NameList(_, l) => l.clone(),
        PropValue::BytesList(l) => l
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect(),
        PropValue::Exec(cmds) => cmds
            .iter()
            .flat_map(|c| std::iter::once(c.path.clone()).chain(c.argv.iter().cloned()))
            .collect(),
        PropValue::Bool(_) | PropValue::U32(_) | PropValue::U64(_) | PropValue::I32(_) => vec![],
    }
}

/// A unit name systemd accepts and can start with a private /tmp:
/// `[A-Za-z0-9:_.\\-@]`, at most `WORKLOAD_NAME_MAX` bytes, one of ours.
fn valid_unit_name(name: &str) -> bool {
    name.len() <= unit::WORKLOAD_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\-@".contains(&b))
        && unit::is_workload_unit(name)
}

/// Run `f` on a thread with room for proptest's value trees of these
/// deeply nested messages (debug builds).
fn with_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn no_wire_input_panics_and_what_is_accepted_translates_cleanly() {
    with_stack(wire_input_properties);
}

fn wire_input_properties() {
    let bin = bin();
    let accepted = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(config());
    runner
        .run(&assignment(bin.runner.clone()), |wire| {
            let Ok(p) =
                ManagedProcess::try_from((wire, &bin.policy)).and_then(|p| p.on_host(&bin.policy))
            else {
                return Ok(());
            };
            accepted.set(accepted.get() + 1);
            let spec = unit::translate(&p);
            prop_assert!(valid_unit_name(&spec.name), "unit name {:?}", spec.name);
            for (name, value) in &spec.properties {
                for s in strings(value) {
                    prop_assert!(!s.contains('\0'), "{name}: NUL in {s:?}");
                    prop_assert!(!s.contains('\n'), "{name}: newline in {s:?}");
                }
            }
            let Some(PropValue::Exec(exec)) = spec.get("ExecStart") else {
                return Err(TestCaseError::fail("no ExecStart"));
            };
            for arg in &exec[0].argv {
                // Every `$` is systemd's literal `$$`.
                prop_assert!(
                    !arg.replace("$$", "").contains('$'),
                    "unescaped $ in {arg:?}"
                );
            }
            // The arguments systemd hands the program are the assigned ones.
            let unescaped: Vec<String> = exec[0].argv[1..]
                .iter()
                .map(|a| a.replace("$$", "$"))
                .collect();
            prop_assert_eq!(&unescaped, &p.args);
            Ok(())
        })
        .unwrap();
    let accepted = accepted.get();
    eprintln!("{CASES} generated assignments, {accepted} accepted");
    assert!(accepted > CASES / 10, "only {accepted} of {CASES} accepted");
}

#[test]
fn unit_names_are_valid_and_unique_per_id() {
    let id = prop_oneof!["[A-Za-z0-9._:@-]{1,128}", "[@-]{100,128}", "[a@]{120,128}"];
    let types = prop::sample::select(ProcessType::ALL.to_vec());
    TestRunner::new(config())
        .run(&(id.clone(), id, types), |(a, b, ty)| {
            let (na, nb) = (unit::unit_name(ty, &a), unit::unit_name(ty, &b));
            prop_assert!(valid_unit_name(&na), "{na}");
            prop_assert_eq!(a == b, na == nb, "{} and {} -> {}", a, b, na);
            Ok(())
        })
        .unwrap();
}

/// Arguments prism-demo takes and prints back (`echo: ARG`).
fn echo_args() -> impl Strategy<Value = Vec<String>> {
    let arg = prop_oneof![
        "[ -~]{0,24}",
        Just("$HOME".to_owned()),
        Just("${X} y".to_owned()),
        "[$%{}\\\\\"' a-z]{1,12}",
        "\\PC{1,12}",
    ];
    prop::collection::vec(arg, 0..4)
}

/// `STARTED` accepted processes, generated from a fixed seed (the same
/// sample every run), each running prism-demo with generated arguments
/// it prints back; and how many assignments it took to find them.
fn sample(demo: String, policy: Policy) -> (Vec<(ManagedProcess, Vec<String>)>, usize) {
    let mut runner =
        TestRunner::new_with_rng(config(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (assignment(demo.clone()), echo_args());
    let mut sample = Vec::new();
    let mut tried = 0;
    while sample.len() < STARTED {
        tried += 1;
        assert!(tried < 100_000, "too few accepted assignments");
        let (mut wire, echoes) = strategy.new_tree(&mut runner).unwrap().current();
        let config = wire.config.as_mut().unwrap();
        // A process that runs until stopped, whatever else was generated.
        config.binary = demo.clone();
        config.args = echoes.iter().map(|e| format!("--echo={e}")).collect();
        config.health_check = None;
        config.notify_ready = false;
        config.restart_policy = None;
        // It would serve /health there; generated ports may collide.
        config.health_port = 0;
        wire.process_id = format!("prop-{}-{}", sample.len(), wire.process_id);
        if let Ok(p) = ManagedProcess::try_from((wire, &policy)).and_then(|p| p.on_host(&policy)) {
            sample.push((p, echoes));
        }
    }
    (sample, tried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_accepted_processes_runs_under_the_real_manager() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let (demo, policy) = (h.demo.display().to_string(), h.policy());
    let (sample, tried) = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || sample(demo, policy))
        .unwrap()
        .join()
        .unwrap();
    let mut units = Vec::new();
    for (p, _) in &sample {
        let spec = unit::translate(p);
        engine
            .start_transient(&spec)
            .await
            .unwrap_or_else(|e| panic!("{spec:#?}: {e}"));
        units.push(spec.name);
    }
    for ((p, echoes), unit) in sample.iter().zip(&units) {
        assert_eq!(h.prop(unit, "ActiveState"), "active", "{unit} of {p:#?}");
        h.wait_ready(&p.id).await;
        let journal = h.journal(&p.id);
        for e in echoes {
            // The journal keeps no trailing whitespace of a line.
            let line = format!("echo: {e}");
            assert!(
                journal.iter().any(|l| l.trim_end() == line.trim_end()),
                "{unit}: {line:?} not in {journal:?}"
            );
        }
    }
    eprintln!("{STARTED} generated processes active (of {tried} generated)");
    for unit in &units {
        engine
            .stop(unit, std::time::Duration::from_secs(10))
            .await
            .expect("stop");
    }
}
