//! What a process sees of its assignment: its environment and its secrets
//! by credential id. The unit translation passes them on; the validation
//! gate measures them (an environment too large to execute is refused).

use std::collections::BTreeMap;

use super::{ManagedProcess, ProcessKind, Secret, SlotBackend};

impl ManagedProcess {
    /// The unit's `Environment`: launcher variables, then type-specific
    /// ones, then the assignment's own. Secrets never appear here:
    /// `systemctl show` prints the environment.
    pub fn environment(&self) -> Vec<String> {
        let p = self;
        let mut env = vec![
            format!("PRISM_PROCESS_ID={}", p.id),
            format!("PRISM_PROCESS_TYPE={}", p.process_type()),
            format!("PRISM_PROCESS_VERSION={}", p.version),
            format!("PRISM_NAMESPACE={}", p.namespace),
            format!("PRISM_ISOLATION_LEVEL={}", p.isolation),
        ];
        if let Some(port) = p.port {
            env.push(format!("PORT={port}"));
        }
        if let Some(port) = p.health_port {
            env.push(format!("HEALTH_PORT={port}"));
        }
        if let Some(level) = &p.log_level {
            env.push(format!("LOG_LEVEL={level}"));
        }
        match &p.kind {
            ProcessKind::Pattern(c) => {
                env.push(format!("PRISM_PATTERN_TYPE={}", c.pattern_type));
                env.push(format!("PRISM_PATTERN_SETTINGS={}", json(&c.settings)));
                let slots: BTreeMap<&str, serde_json::Value> = c
                    .slots
                    .iter()
                    .map(|(name, slot)| {
                        let creds: Vec<String> = slot_secrets(name, slot)
                            .into_iter()
                            .map(|(id, _)| id)
                            .collect();
                        let value = serde_json::json!({
                            "backend_type": slot.backend_type,
                            "options": slot.options,
                            "credentials": creds,
                        });
                        (name.as_str(), value)
                    })
                    .collect();
                env.push(format!("PRISM_PATTERN_SLOTS={}", json(&slots)));
            }
            ProcessKind::Proxy(c) => {
                env.push(format!("PRISM_ADMIN_ENDPOINT={}", c.admin_endpoint));
                env.push(format!("PRISM_CONTROL_PORT={}", c.control_port));
                env.push(format!("PRISM_DATA_PORT={}", c.data_port));
                if let Some(id) = &c.proxy_id {
                    env.push(format!("PRISM_PROXY_ID={id}"));
                }
                let ranges: Vec<String> = c.partition_ranges.iter().map(i32::to_string).collect();
                env.push(format!("PRISM_PARTITION_RANGES={}", ranges.join(",")));
            }
            ProcessKind::Backend(c) => {
                env.push(format!("PRISM_BACKEND_TYPE={}", c.backend_type));
                env.push(format!("PRISM_DRIVER_OPTIONS={}", json(&c.driver_options)));
            }
            ProcessKind::Utility(c) => {
                env.push(format!("PRISM_UTILITY_TYPE={}", c.utility_type));
                env.push(format!("PRISM_UTILITY_SETTINGS={}", json(&c.settings)));
                env.push(format!(
                    "PRISM_TARGET_PROCESSES={}",
                    c.target_processes.join(",")
                ));
            }
        }
        let secrets = p.secrets();
        if !secrets.is_empty() {
            // Names only, so the workload finds its secrets without listing
            // `$CREDENTIALS_DIRECTORY`.
            let names: Vec<&str> = secrets.iter().map(|(id, _)| id.as_str()).collect();
            env.push(format!("PRISM_CREDENTIALS={}", names.join(",")));
        }
        env.extend(p.env.iter().map(|(k, v)| format!("{k}={v}")));
        env
    }

    /// Connection strings and credentials, by the credential id (the file
    /// name under `$CREDENTIALS_DIRECTORY`) each is passed as.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let p = self;
        match &p.kind {
            ProcessKind::Backend(c) => {
                std::iter::once(("connection_string".to_owned(), &c.connection_string))
                    .chain(c.credentials.iter().map(|(k, v)| (k.clone(), v)))
                    .collect()
            }
            ProcessKind::Pattern(c) => c
                .slots
                .iter()
                .flat_map(|(name, slot)| slot_secrets(name, slot))
                .collect(),
            ProcessKind::Proxy(_) | ProcessKind::Utility(_) => Vec::new(),
        }
    }
}

fn json(map: &impl serde::Serialize) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

/// A pattern slot's secrets, by credential id.
fn slot_secrets<'a>(name: &str, slot: &'a SlotBackend) -> Vec<(String, &'a Secret)> {
    slot.connection_string
        .iter()
        .map(|cs| (format!("slot.{name}.connection_string"), cs))
        .chain(
            slot.credentials
                .iter()
                .map(|(k, v)| (format!("slot.{name}.{k}"), v)),
        )
        .collect()
}
