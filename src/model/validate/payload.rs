//! The type-specific configuration of each process type, and its secrets.

use super::*;

pub(super) fn check_map(
    field: &str,
    map: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    if map.len() > MAX_MAP_ENTRIES {
        return err(
            field,
            format!("{} entries, over the limit of {MAX_MAP_ENTRIES}", map.len()),
        );
    }
    let sorted: BTreeMap<String, String> = map.clone().into_iter().collect();
    for (key, value) in &sorted {
        if key.is_empty() {
            return err(field, "empty key");
        }
        check_text(field, key, MAX_TOKEN_BYTES)?;
        if value.contains('\0') {
            return err(format!("{field}.{key}"), "contains NUL");
        }
    }
    Ok(sorted)
}

/// Credential names become file names under `$CREDENTIALS_DIRECTORY`.
pub(super) fn check_credentials(
    field: &str,
    map: &HashMap<String, String>,
) -> Result<BTreeMap<String, Secret>> {
    if map.len() > MAX_MAP_ENTRIES {
        return err(
            field,
            format!("{} entries, over the limit of {MAX_MAP_ENTRIES}", map.len()),
        );
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let valid = !key.is_empty()
            && key.len() <= 64
            && !key.starts_with('.')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return err(
                format!("{field}.{key}"),
                "credential name must match [A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}",
            );
        }
        if key == "connection_string" {
            return err(
                format!("{field}.{key}"),
                "reserved: the connection string is passed under this name",
            );
        }
        if value.len() > MAX_CREDENTIAL_BYTES {
            return err(
                format!("{field}.{key}"),
                format!("longer than {MAX_CREDENTIAL_BYTES} bytes"),
            );
        }
        out.insert(key.clone(), Secret::new(value.clone()));
    }
    Ok(out)
}

pub(super) fn check_connection_string(field: &str, value: &str) -> Result<Secret> {
    if value.is_empty() {
        return err(field, "required");
    }
    check_text(field, value, MAX_TEXT_BYTES * 4)?;
    Ok(Secret::new(value))
}

/// Exactly one payload, and the one matching `process_type`.
pub(super) fn check_payload(ty: ProcessType, config: &pb::ProcessConfig) -> Result<ProcessKind> {
    let present: Vec<&str> = [
        ("pattern", config.pattern.is_some()),
        ("proxy", config.proxy.is_some()),
        ("backend", config.backend.is_some()),
        ("utility", config.utility.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let expected = ty.as_str();
    if let Some(other) = present.iter().find(|p| **p != expected) {
        return err(
            format!("config.{other}"),
            format!("a {other} payload was sent for a process of type {expected}"),
        );
    }
    match ty {
        ProcessType::Pattern => {
            let Some(p) = &config.pattern else {
                return err("config.pattern", "missing for process type pattern");
            };
            Ok(ProcessKind::Pattern(check_pattern(p)?))
        }
        ProcessType::Proxy => {
            let Some(p) = &config.proxy else {
                return err("config.proxy", "missing for process type proxy");
            };
            Ok(ProcessKind::Proxy(ProxyConfig {
                admin_endpoint: {
                    let f = "config.proxy.admin_endpoint";
                    if p.admin_endpoint.is_empty() {
                        return err(f, "required");
                    }
                    check_text(f, &p.admin_endpoint, MAX_TEXT_BYTES)?;
                    if p.admin_endpoint.contains(' ') {
                        return err(f, "contains a space");
                    }
                    p.admin_endpoint.clone()
                },
                control_port: check_port("config.proxy.control_port", p.control_port)?,
                data_port: check_port("config.proxy.data_port", p.data_port)?,
                proxy_id: match p.proxy_id.as_str() {
                    "" => None,
                    id => Some(check_id("config.proxy.proxy_id", id)?),
                },
                partition_ranges: {
                    if let Some((i, r)) =
                        p.partition_ranges.iter().enumerate().find(|(_, r)| **r < 0)
                    {
                        return err(
                            format!("config.proxy.partition_ranges[{i}]"),
                            format!("{r} is negative"),
                        );
                    }
                    p.partition_ranges.clone()
                },
            }))
        }
        ProcessType::Backend => {
            let Some(b) = &config.backend else {
                return err("config.backend", "missing for process type backend");
            };
            Ok(ProcessKind::Backend(BackendConfig {
                backend_type: check_token("config.backend.backend_type", &b.backend_type)?,
                connection_string: check_connection_string(
                    "config.backend.connection_string",
                    &b.connection_string,
                )?,
                credentials: check_credentials("config.backend.credentials", &b.credentials)?,
                driver_options: check_map("config.backend.driver_options", &b.driver_options)?,
            }))
        }
        ProcessType::Utility => {
            let Some(u) = &config.utility else {
                return err("config.utility", "missing for process type utility");
            };
            let mut targets = Vec::with_capacity(u.target_processes.len());
            for (i, t) in u.target_processes.iter().enumerate() {
                targets.push(check_id(
                    &format!("config.utility.target_processes[{i}]"),
                    t,
                )?);
            }
            Ok(ProcessKind::Utility(UtilityConfig {
                utility_type: check_token("config.utility.utility_type", &u.utility_type)?,
                settings: check_map("config.utility.settings", &u.settings)?,
                target_processes: targets,
            }))
        }
    }
}

pub(super) fn check_pattern(p: &pb::PatternProcessConfig) -> Result<PatternConfig> {
    let pattern_type = check_token("config.pattern.pattern_type", &p.pattern_type)?;
    if p.slots.len() > MAX_MAP_ENTRIES {
        return err("config.pattern.slots", "too many slots");
    }
    let mut slots = BTreeMap::new();
    for (name, slot) in &p.slots {
        let field = format!("config.pattern.slots.{name}");
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !valid {
            return err(field, "slot name must match [A-Za-z0-9_-]{1,64}");
        }
        let connection_string = match slot.connection_string.as_str() {
            "" => None,
            s => Some(check_connection_string(
                &format!("{field}.connection_string"),
                s,
            )?),
        };
        slots.insert(
            name.clone(),
            SlotBackend {
                backend_type: check_token(&format!("{field}.backend_type"), &slot.backend_type)?,
                connection_string,
                credentials: check_credentials(&format!("{field}.credentials"), &slot.credentials)?,
                options: check_map(&format!("{field}.options"), &slot.options)?,
            },
        );
    }
    Ok(PatternConfig {
        pattern_type,
        slots,
        settings: check_map("config.pattern.settings", &p.settings)?,
    })
}
