//! `prismctl assign`: from a spec file (TOML or YAML, one process or many)
//! or from flags; then wait for each process to run, with a progress line.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::{
    Error, Global,
    client::{Admin, call_failed},
    fleet::status_of,
    output::{Format, out, structured},
};
use crate::{
    pb::prism::{self as pb, admin::v1 as apb},
    protocol::{LAUNCHER_METADATA, REGION_METADATA},
    settings::parse_duration,
};

#[derive(Args, Debug, Default)]
pub struct AssignArgs {
    /// A spec file (.toml, .yaml or .yml) with one process or many.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "id")]
    pub file: Option<PathBuf>,
    /// Process id (when not using --file).
    pub id: Option<String>,
    /// pattern, proxy, backend or utility.
    #[arg(long = "type", value_name = "TYPE", default_value = "pattern")]
    pub process_type: String,
    /// Absolute path of the binary on the launcher's host.
    #[arg(long)]
    pub binary: Option<String>,
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// The assignment's version (a higher one replaces the process).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub process_version: i64,
    /// An argument for the binary (repeat for several).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// KEY=VALUE in the process's environment (repeat for several).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[arg(long)]
    pub port: Option<i32>,
    /// Where the process serves GET /health.
    #[arg(long)]
    pub health_port: Option<i32>,
    /// For patterns: e.g. keyvalue.
    #[arg(long)]
    pub pattern_type: Option<String>,
    /// For proxies.
    #[arg(long)]
    pub proxy_admin_endpoint: Option<String>,
    #[arg(long)]
    pub control_port: Option<i32>,
    #[arg(long)]
    pub data_port: Option<i32>,
    /// For backends: e.g. redis.
    #[arg(long)]
    pub backend_type: Option<String>,
    /// For backends (passed to the process as a systemd credential).
    #[arg(long)]
    pub connection_string: Option<String>,
    /// For utilities: e.g. log-collector.
    #[arg(long)]
    pub utility_type: Option<String>,
    /// Deny memory both writable and executable (systemd
    /// MemoryDenyWriteExecute=); not for JIT compilers.
    #[arg(long)]
    pub memory_deny_write_execute: bool,
    /// Place on this launcher.
    #[arg(long)]
    pub launcher: Option<String>,
    /// Prefer launchers in this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Return once placed; do not wait for the processes to run.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for each process to run.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: String,
}

/// Parse a spec file: one assignment, or several (`[[process]]` in TOML; a
/// list, or `process:` with a list, in YAML).
pub fn parse_spec(path: &Path, text: &str) -> Result<Vec<pb::ProcessAssignment>, String> {
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if yaml {
        let value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let list = match value {
            serde_norway::Value::Sequence(_) => value,
            serde_norway::Value::Mapping(ref m) if m.contains_key("process") => {
                m["process"].clone()
            }
            other => serde_norway::Value::Sequence(vec![other]),
        };
        serde_norway::from_value(list).map_err(|e| e.to_string())
    } else {
        let value: toml::Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if value.contains_key("process") {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Many {
                process: Vec<pb::ProcessAssignment>,
            }
            toml::from_str::<Many>(text)
                .map(|m| m.process)
                .map_err(|e| e.message().to_owned())
        } else {
            toml::from_str::<pb::ProcessAssignment>(text)
                .map(|a| vec![a])
                .map_err(|e| e.message().to_owned())
        }
    }
}

fn from_flags(a: &AssignArgs) -> Result<pb::ProcessAssignment, Error> {
    let id =
        a.id.clone()
            .ok_or_else(|| Error::Usage("give a process id, or a spec file with -f".into()))?;
    let binary = a
        .binary
        .clone()
        .ok_or_else(|| Error::Usage("--binary is required (the binary's absolute path)".into()))?;
    let mut env = HashMap::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--env {kv:?}: expected KEY=VALUE")))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut config = pb::ProcessConfig {
        binary,
        args: a.args.clone(),
        env,
        port: a.port.unwrap_or(0),
        health_port: a.health_port.unwrap_or(0),
        sandbox: a.memory_deny_write_execute.then_some(pb::SandboxOptions {
            memory_deny_write_execute: true,
        }),
        ..Default::default()
    };
    match a.process_type.as_str() {
        "pattern" | "" => {
            config.pattern = Some(pb::PatternProcessConfig {
                pattern_type: a.pattern_type.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
        "proxy" => {
            config.proxy = Some(pb::ProxyProcessConfig {
                admin_endpoint: a.proxy_admin_endpoint.clone().unwrap_or_default(),
                control_port: a.control_port.unwrap_or(0),
                data_port: a.data_port.unwrap_or(0),
                ..Default::default()
            })
        }
        "backend" => {
            config.backend = Some(pb::BackendProcessConfig {
                backend_type: a.backend_type.clone().unwrap_or_default(),
                connection_string: a.connection_string.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
        "utility" => {
            config.utility = Some(pb::UtilityProcessConfig {
                utility_type: a.utility_type.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
        other => {
            return Err(Error::Usage(format!(
                "--type {other:?}: expected pattern, proxy, backend or utility"
            )));
        }
    }
    Ok(pb::ProcessAssignment {
        process_id: id,
        process_type: a.process_type.clone(),
        namespace: a.namespace.clone(),
        config: Some(config),
        version: a.process_version,
    })
}

pub async fn assign(g: &Global, a: &AssignArgs) -> Result<(), Error> {
    let specs = match &a.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
            parse_spec(path, &text).map_err(|e| {
                Error::Usage(format!(
                    "{}: {e}. See the README's spec file reference",
                    path.display()
                ))
            })?
        }
        None => vec![from_flags(a)?],
    };
    if specs.is_empty() {
        return Err(Error::Usage("the spec file holds no process".into()));
    }
    let timeout =
        parse_duration(&a.timeout).map_err(|e| Error::Usage(format!("--timeout: {e}")))?;
    let mut admin = g.admin.connect().await?;
    let mut acks = Vec::new();
    for spec in specs {
        let id = spec.process_id.clone();
        let mut request = tonic::Request::new(spec);
        for (key, value) in [
            (LAUNCHER_METADATA, &a.launcher),
            (REGION_METADATA, &a.region),
        ] {
            if let Some(v) = value {
                let v = v
                    .parse()
                    .map_err(|_| Error::Usage(format!("{v:?} is not a valid {key}")))?;
                request.metadata_mut().insert(key, v);
            }
        }
        let ack = admin
            .cp
            .assign_process(request)
            .await
            .map_err(|s| call_failed(&format!("assigning {id}"), s))?
            .into_inner();
        if g.output == Format::Table || g.output == Format::Wide {
            eprintln!("{}", ack.message);
        }
        acks.push((id, ack));
    }
    let mut failed = Vec::new();
    if !a.no_wait {
        for (id, _) in &acks {
            if let Err(e) = wait_running(&mut admin, id, timeout).await {
                failed.push(e.to_string());
            }
        }
    }
    let acks_only: Vec<&pb::ProcessAssignmentAck> = acks.iter().map(|(_, a)| a).collect();
    if let Some(text) = structured(g.output, &acks_only)? {
        out(&text);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(failed.join("; ")))
    }
}

/// Poll until `id` runs; a progress line on stderr meanwhile.
async fn wait_running(admin: &mut Admin, id: &str, timeout: Duration) -> Result<(), Error> {
    let tty = std::io::stderr().is_terminal();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let p: apb::ProcessInfo = admin
            .api
            .get_process(apb::GetProcessRequest {
                process_id: id.into(),
                history_limit: 1,
            })
            .await
            .map_err(|s| call_failed(&format!("following {id}"), s))?
            .into_inner();
        let status = status_of(&p);
        let h = p.health.clone().unwrap_or_default();
        let line = format!("{id}: {status} on {}", p.launcher_id);
        if line != last {
            if tty {
                eprint!("\r\x1b[K{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        match status.as_str() {
            "running" => {
                if tty {
                    eprintln!(" (pid {})", h.pid);
                }
                return Ok(());
            }
            "failed" | "circuit_open" => {
                if tty {
                    eprintln!();
                }
                return Err(Error::Failed(format!(
                    "{id} is {status}: {}. See `prismctl describe {id}` and `prismctl logs {id}`",
                    if h.last_error.is_empty() {
                        "no error reported"
                    } else {
                        &h.last_error
                    }
                )));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            if tty {
                eprintln!();
            }
            return Err(Error::Failed(format!(
                "{id} is still {status} after {timeout:?}. See `prismctl describe {id}`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_files_one_or_many() {
        let one = r#"
process_id = "kv-1"
process_type = "pattern"
version = 2
[config]
binary = "/usr/lib/prism/keyvalue-runner"
health_port = 9093
[config.pattern]
pattern_type = "keyvalue"
[config.sandbox]
memory_deny_write_execute = true
"#;
        let specs = parse_spec(Path::new("kv.toml"), one).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].version, 2);
        let config = specs[0].config.as_ref().unwrap();
        assert_eq!(config.health_port, 9093);
        assert!(config.sandbox.as_ref().unwrap().memory_deny_write_execute);

        let many = r#"
[[process]]
process_id = "a"
[process.config]
binary = "/usr/bin/a"
[process.config.utility]
utility_type = "log-collector"

[[process]]
process_id = "b"
"#;
        let specs = parse_spec(Path::new("many.toml"), many).unwrap();
        assert_eq!(
            specs
                .iter()
                .map(|s| s.process_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );

        let yaml = "- process_id: a\n  config:\n    binary: /usr/bin/a\n- process_id: b\n";
        assert_eq!(parse_spec(Path::new("x.yaml"), yaml).unwrap().len(), 2);
        let yaml_one = "process_id: a\nnamespace: orders\n";
        assert_eq!(
            parse_spec(Path::new("x.yml"), yaml_one).unwrap()[0].namespace,
            "orders"
        );

        // A typo is an error that names it.
        let e = parse_spec(
            Path::new("bad.toml"),
            "process_id = \"a\"\nbinray = \"/x\"\n",
        )
        .unwrap_err();
        assert!(e.contains("binray"), "{e}");
        let e = parse_spec(Path::new("bad.yaml"), "process_id: a\nnamespce: x\n").unwrap_err();
        assert!(e.contains("namespce"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::model::{ManagedProcess, Policy};

    /// Every shipped example parses and passes the validation gate (all but
    /// the host checks of the binary, which belong to a launcher's host).
    #[test]
    fn shipped_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let specs =
                parse_spec(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for spec in specs {
                ManagedProcess::try_from((spec, &Policy::structural()))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} examples");
    }
}
