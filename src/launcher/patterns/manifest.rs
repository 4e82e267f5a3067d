//! Pattern manifests: `<patterns-dir>/<dir>/manifest.yaml`, in
//! pattern-launcher's schema. Each is read whole and checked field by
//! field; one that fails is reported with its path and field and skipped,
//! and the others still load.

use std::{
    collections::BTreeMap,
    fmt,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_norway::{Mapping, Value};

use crate::model::IsolationLevel;

/// The variables the launcher sets for every pattern it launches by name;
/// a manifest may not set them.
pub const LAUNCHER_VARIABLES: [&str; 6] = [
    "PATTERN_NAME",
    "NAMESPACE",
    "SESSION_ID",
    "GRPC_PORT",
    "HEALTH_PORT",
    "PROCESS_ID",
];

/// A pattern that can be launched by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// Absolute: relative paths are taken from the manifest's directory.
    pub executable: PathBuf,
    /// The level a launch gets when it asks for none.
    pub isolation: IsolationLevel,
    pub healthcheck: Option<HealthCheck>,
    pub resources: Resources,
    pub backend_slots: Vec<BackendSlot>,
    pub environment: BTreeMap<String, String>,
    pub description: String,
    pub author: String,
    /// The manifest file itself.
    pub path: PathBuf,
}

/// `healthcheck`: an HTTP GET of `path` on the pattern's HEALTH_PORT.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// pattern-launcher required it; the probe goes to HEALTH_PORT, the
    /// port the launcher allocates (as pattern-launcher did).
    pub port: u16,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

/// `resources`: limits become cgroup limits; requests are recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Cores (1.0 is one CPU), as CPUQuota.
    pub cpu_limit: Option<f64>,
    /// Bytes, as MemoryMax.
    pub memory_limit: Option<u64>,
    pub cpu_request: Option<f64>,
    pub memory_request: Option<u64>,
}

impl Resources {
    /// `memory_limit` for the wire: 0 means none.
    pub fn memory_limit_bytes(&self) -> i64 {
        self.memory_limit
            .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    pub name: String,
    pub backend_type: String,
    pub required: bool,
}

/// A manifest that could not be loaded, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub path: PathBuf,
    /// The YAML key (dotted), if the fault is in one.
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Defaults pattern-launcher applied to `healthcheck`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Manifests are small; a bigger file is a mistake.
const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

/// What a scan of a patterns directory found.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub dir: Option<PathBuf>,
    patterns: BTreeMap<String, Manifest>,
    /// Manifests skipped, each with why.
    pub errors: Vec<ManifestError>,
}

impl Catalog {
    /// Scan `dir`'s subdirectories for `manifest.yaml`, in name order.
    pub fn discover(dir: &Path) -> Self {
        let mut catalog = Catalog {
            dir: Some(dir.to_owned()),
            ..Catalog::default()
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                catalog.errors.push(ManifestError {
                    path: dir.to_owned(),
                    field: None,
                    reason: format!("cannot read the patterns directory: {e}"),
                });
                return catalog;
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for sub in dirs {
            let path = sub.join("manifest.yaml");
            if !path.exists() {
                continue;
            }
            match load(&path) {
                Ok(m) => match catalog.patterns.get(&m.name) {
                    Some(first) => catalog.errors.push(ManifestError {
                        field: Some("name".into()),
                        reason: format!(
                            "{:?} is already the name of {}; skipped",
                            m.name,
                            first.path.display()
                        ),
                        path,
                    }),
                    None => {
                        catalog.patterns.insert(m.name.clone(), m);
                    }
                },
                Err(e) => catalog.errors.push(e),
            }
        }
        catalog
    }

    pub fn get(&self, name: &str) -> Option<&Manifest> {
        self.patterns.get(name)
    }

    /// By name.
    pub fn patterns(&self) -> impl Iterator<Item = &Manifest> {
        self.patterns.values()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Read and check one manifest.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let fail = |field: Option<&str>, reason: String| ManifestError {
        path: path.to_owned(),
        field: field.map(str::to_owned),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(None, format!("cannot read it: {e}")))?
        .len();
    if size > MAX_MANIFEST_BYTES {
        return Err(fail(
            None,
            format!("{size} bytes, over the limit of {MAX_MANIFEST_BYTES}"),
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(None, format!("cannot read it: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    parse(&text, dir).map_err(|(field, reason)| fail(field.as_deref(), reason))
}

type FieldError = (Option<String>, String);

fn at(field: &str, reason: impl Into<String>) -> FieldError {
    (Some(field.to_owned()), reason.into())
}

/// Check a manifest's text; `dir` is where its relative paths start.
pub fn parse(text: &str, dir: &Path) -> Result<Manifest, FieldError> {
    let value: Value =
        serde_norway::from_str(text).map_err(|e| (None, format!("not valid YAML: {e}")))?;
    let Value::Mapping(top) = value else {
        return Err((None, "not a mapping of keys to values".into()));
    };
    let name = required_scalar(&top, "name")?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.len() > 63
    {
        return Err(at(
            "name",
            format!("{name:?} is not a pattern name (up to 63 of A-Z a-z 0-9 - _ .)"),
        ));
    }
    let version = required_scalar(&top, "version")?;
    let executable = required_scalar(&top, "executable")?;
    let executable = executable_path(dir, &executable)?;
    let isolation = required_scalar(&top, "isolation_level")?;
    let isolation: IsolationLevel = isolation.parse().map_err(|_| {
        at(
            "isolation_level",
            format!("{isolation:?} is not none, namespace or session"),
        )
    })?;
    let healthcheck = match mapping(&top, "healthcheck")? {
        None => None,
        Some(h) => Some(healthcheck(h)?),
    };
    let resources = match mapping(&top, "resources")? {
        None => Resources::default(),
        Some(r) => resources(r)?,
    };
    let backend_slots = backend_slots(&top)?;
    let environment = environment(&top)?;
    Ok(Manifest {
        name,
        version,
        executable,
        isolation,
        healthcheck,
        resources,
        backend_slots,
        environment,
        description: optional_scalar(&top, "description", "description")?.unwrap_or_default(),
        author: optional_scalar(&top, "author", "author")?.unwrap_or_default(),
        path: dir.join("manifest.yaml"),
    })
}

fn get<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// A string, number or boolean, as text (YAML reads `version: 1.0` as a
/// number; pattern-launcher took it as the text).
fn scalar_text(field: &str, v: &Value) -> Result<String, FieldError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(at(field, "must be a single value, not a list or mapping")),
    }
}

fn optional_scalar(map: &Mapping, key: &str, field: &str) -> Result<Option<String>, FieldError> {
    get(map, key).map(|v| scalar_text(field, v)).transpose()
}

fn required_scalar(map: &Mapping, key: &str) -> Result<String, FieldError> {
    match optional_scalar(map, key, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(at(key, "required")),
    }
}

fn mapping<'a>(map: &'a Mapping, key: &str) -> Result<Option<&'a Mapping>, FieldError> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(_) => Err(at(key, "must be a mapping")),
    }
}

fn executable_path(dir: &Path, text: &str) -> Result<PathBuf, FieldError> {
    let path = if Path::new(text).is_absolute() {
        PathBuf::from(text)
    } else {
        dir.join(text)
    };
    let path = normalise(&path);
    let meta = std::fs::metadata(&path)
        .map_err(|e| at("executable", format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(at(
            "executable",
            format!("{} is not a file", path.display()),
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(at(
            "executable",
            format!(
                "{} is not executable (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(path)
}

/// Without `.` and `..` (the binary allowlist compares such paths).
pub fn normalise(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn healthcheck(h: &Mapping) -> Result<HealthCheck, FieldError> {
    let port = match get(h, "port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| at("healthcheck.port", format!("{n} is not a port (1-65535)")))?
            as u16,
        Some(_) => return Err(at("healthcheck.port", "must be a port number (1-65535)")),
        None => return Err(at("healthcheck.port", "required")),
    };
    let path = optional_scalar(h, "path", "healthcheck.path")?
        .ok_or_else(|| at("healthcheck.path", "required"))?;
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at(
            "healthcheck.path",
            format!("{path:?} is not an HTTP path (it starts with / and has no spaces)"),
        ));
    }
    let duration = |key: &str, default: Duration| -> Result<Duration, FieldError> {
        let field = format!("healthcheck.{key}");
        match get(h, key) {
            None => Ok(default),
            Some(Value::String(s)) => match go_duration(s) {
                Ok(d) if d.is_zero() => Ok(default),
                Ok(d) => Ok(d),
                Err(e) => Err(at(&field, e)),
            },
            Some(Value::Number(n)) => Err(at(
                &field,
                format!("{n} has no unit; write it as \"{n}s\" (or ms, m, h)"),
            )),
            Some(_) => Err(at(&field, "must be a duration such as \"30s\"")),
        }
    };
    let interval = duration("interval", DEFAULT_INTERVAL)?;
    let timeout = duration("timeout", DEFAULT_TIMEOUT)?;
    let failure_threshold = match get(h, "failure_threshold") {
        None => DEFAULT_FAILURE_THRESHOLD,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => DEFAULT_FAILURE_THRESHOLD,
            Some(t) if t <= 100 => t as u32,
            _ => {
                return Err(at(
                    "healthcheck.failure_threshold",
                    format!("{n} is not a count from 1 to 100"),
                ));
            }
        },
        Some(_) => {
            return Err(at(
                "healthcheck.failure_threshold",
                "must be a count from 1 to 100",
            ));
        }
    };
    Ok(HealthCheck {
        port,
        path,
        interval,
        timeout,
        failure_threshold,
    })
}

fn resources(r: &Mapping) -> Result<Resources, FieldError> {
    let cores = |key: &str| -> Result<Option<f64>, FieldError> {
        let field = format!("resources.{key}");
        match get(r, key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(0.0) => Ok(None),
                Some(c) if c.is_finite() && c > 0.0 && c <= 1024.0 => Ok(Some(c)),
                _ => Err(at(
                    &field,
                    format!("{n} is not a number of cores (e.g. 0.5)"),
                )),
            },
            Some(_) => Err(at(&field, "must be a number of cores (e.g. 0.5)")),
        }
    };
    let bytes = |key: &str| -> Result<Option<u64>, FieldError> {
        let field = format!("resources.{key}");
        match get(r, key) {
            None => Ok(None),
            Some(v) => {
                let text = scalar_text(&field, v)?;
                match quantity(&text) {
                    Ok(0) => Ok(None),
                    Ok(b) => Ok(Some(b)),
                    Err(e) => Err(at(&field, e)),
                }
            }
        }
    };
    Ok(Resources {
        cpu_limit: cores("cpu_limit")?,
        memory_limit: bytes("memory_limit")?,
        cpu_request: cores("cpu_request")?,
        memory_request: bytes("memory_request")?,
    })
}

fn backend_slots(top: &Mapping) -> Result<Vec<BackendSlot>, FieldError> {
    let Some(v) = get(top, "backend_slots") else {
        return Ok(Vec::new());
    };
    let Value::Sequence(items) = v else {
        return Err(at("backend_slots", "must be a list"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |k: &str| format!("backend_slots[{i}].{k}");
            let Value::Mapping(m) = item else {
                return Err(at(&format!("backend_slots[{i}]"), "must be a mapping"));
            };
            let name = optional_scalar(m, "name", &field("name"))?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at(&field("name"), "required"))?;
            let backend_type = optional_scalar(m, "type", &field("type"))?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at(&field("type"), "required"))?;
            let required = match get(m, "required") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(at(&field("required"), "must be true or false")),
            };
            Ok(BackendSlot {
                name,
                backend_type,
                required,
            })
        })
        .collect()
}

fn environment(top: &Mapping) -> Result<BTreeMap<String, String>, FieldError> {
    let Some(m) = mapping(top, "environment")? else {
        return Ok(BTreeMap::new());
    };
    let mut env = BTreeMap::new();
    for (k, v) in m {
        let Value::String(name) = k else {
            return Err(at("environment", "keys must be variable names"));
        };
        let field = format!("environment.{name}");
        if !crate::model::validate::is_env_key(name) {
            return Err(at(
                &field,
                "is not a variable name (A-Z a-z 0-9 _, not starting with a digit)",
            ));
        }
        // LOG_LEVEL becomes the process's log level.
        if name != "LOG_LEVEL" && is_launcher_variable(name) {
            return Err(at(&field, "is set by the launcher for every pattern"));
        }
        let value = match v {
            Value::Null => String::new(),
            other => scalar_text(&field, other)?,
        };
        if value.contains('\0') {
            return Err(at(&field, "contains a NUL byte"));
        }
        env.insert(name.clone(), value);
    }
    Ok(env)
}

/// A variable the launcher sets itself: pattern-launcher's, and those of
/// every assignment (PRISM_*, PORT, HEALTH_PORT…).
pub fn is_launcher_variable(name: &str) -> bool {
    use crate::model::validate::{RESERVED_ENV, RESERVED_ENV_PREFIX};
    LAUNCHER_VARIABLES.contains(&name)
        || RESERVED_ENV.contains(&name)
        || name.starts_with(RESERVED_ENV_PREFIX)
}

/// Go's `time.ParseDuration` syntax: `300ms`, `1.5h`, `2h45m`.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let invalid = || format!("{s:?} is not a duration (e.g. 30s, 500ms, 1m30s)");
    if text.is_empty() {
        return Err(invalid());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(invalid)?;
        if number_end == 0 {
            return Err(invalid());
        }
        let value: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 365.0 * 86400.0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(total))
}

/// A byte quantity as Kubernetes writes it: `512Mi`, `1Gi`, `500M`, `1024`.
pub fn quantity(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let invalid = || format!("{s:?} is not a size (e.g. 512Mi, 1Gi, 500M)");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let factor: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return Err(invalid()),
    };
    let bytes = value * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of pattern-launcher's `patterns/test-pattern/manifest.yaml`.
    const TEST_PATTERN: &str = r#"
name: test-pattern
version: 1.0.0
description: Test pattern for launcher development
author: Prism
executable: ./test-pattern
isolation_level: namespace

healthcheck:
  port: 9090
  path: /health
  interval: 30s
  timeout: 5s
  failure_threshold: 3

resources:
  cpu_limit: 1.0
  memory_limit: 512Mi
  cpu_request: 0.5
  memory_request: 256Mi

backend_slots:
  - name: storage
    type: memstore
    required: true

environment:
  LOG_LEVEL: info
  METRICS_PORT: "9091"
"#;

    fn pattern_dir(name: &str, manifest: &str, executable: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("manifest.yaml"), manifest).unwrap();
        let bin = dir.join("test-pattern");
        std::fs::write(&bin, "#!/bin/false\n").unwrap();
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(mode)).unwrap();
        root
    }

    #[test]
    fn the_upstream_test_pattern_loads_with_every_field() {
        let root = pattern_dir("test-pattern", TEST_PATTERN, true);
        let catalog = Catalog::discover(root.path());
        assert!(catalog.errors.is_empty(), "{:?}", catalog.errors);
        let m = catalog.get("test-pattern").expect("loaded");
        assert_eq!(m.version, "1.0.0");
        assert_eq!(m.executable, root.path().join("test-pattern/test-pattern"));
        assert_eq!(m.isolation, IsolationLevel::Namespace);
        let h = m.healthcheck.as_ref().unwrap();
        assert_eq!(
            (
                h.port,
                h.path.as_str(),
                h.interval,
                h.timeout,
                h.failure_threshold
            ),
            (
                9090,
                "/health",
                Duration::from_secs(30),
                Duration::from_secs(5),
                3
            )
        );
        assert_eq!(m.resources.cpu_limit, Some(1.0));
        assert_eq!(m.resources.memory_limit, Some(512 * 1024 * 1024));
        assert_eq!(m.resources.memory_request, Some(256 * 1024 * 1024));
        assert_eq!(m.backend_slots[0].backend_type, "memstore");
        assert_eq!(m.environment["METRICS_PORT"], "9091");
    }

    #[test]
    fn defaults_fill_what_a_healthcheck_leaves_out() {
        let text = TEST_PATTERN
            .replace("  interval: 30s\n", "")
            .replace("  timeout: 5s\n", "")
            .replace("  failure_threshold: 3\n", "");
        let root = pattern_dir("p", &text, true);
        let h = load(&root.path().join("p/manifest.yaml"))
            .unwrap()
            .healthcheck
            .unwrap();
        assert_eq!(
            (h.interval, h.timeout, h.failure_threshold),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_FAILURE_THRESHOLD)
        );
    }

    #[test]
    fn each_fault_names_its_file_and_field_and_the_rest_still_load() {
        let cases: &[(&str, String, bool, &str, &str)] = &[
            (
                "no-name",
                TEST_PATTERN.replace("name: test-pattern\n", ""),
                true,
                "name",
                "required",
            ),
            (
                "bad-level",
                TEST_PATTERN.replace("isolation_level: namespace", "isolation_level: pod"),
                true,
                "isolation_level",
                "not none, namespace or session",
            ),
            (
                "not-exec",
                TEST_PATTERN.to_owned(),
                false,
                "executable",
                "not executable",
            ),
            (
                "missing",
                TEST_PATTERN.replace("./test-pattern", "./nowhere"),
                true,
                "executable",
                "No such file",
            ),
            (
                "bad-interval",
                TEST_PATTERN.replace("interval: 30s", "interval: 30"),
                true,
                "healthcheck.interval",
                "has no unit",
            ),
            (
                "bad-port",
                TEST_PATTERN.replace("port: 9090", "port: 70000"),
                true,
                "healthcheck.port",
                "not a port",
            ),
            (
                "bad-memory",
                TEST_PATTERN.replace("memory_limit: 512Mi", "memory_limit: lots"),
                true,
                "resources.memory_limit",
                "not a size",
            ),
            (
                "reserved-env",
                TEST_PATTERN.replace("LOG_LEVEL: info", "GRPC_PORT: 1"),
                true,
                "environment.GRPC_PORT",
                "set by the launcher",
            ),
            (
                "bad-env",
                TEST_PATTERN.replace("LOG_LEVEL: info", "\"LOG LEVEL\": info"),
                true,
                "environment.LOG LEVEL",
                "not a variable name",
            ),
        ];
        for (dir, text, executable, field, reason) in cases {
            let root = pattern_dir(dir, text, *executable);
            let err = load(&root.path().join(dir).join("manifest.yaml")).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(*field), "{dir}: {err}");
            assert!(err.reason.contains(reason), "{dir}: {err}");
            assert!(
                err.to_string()
                    .contains(&format!("{dir}/manifest.yaml: {field}: ")),
                "{err}"
            );
        }
        // In one directory: the broken one is reported, the good one loads.
        let root = pattern_dir("test-pattern", TEST_PATTERN, true);
        let broken = root.path().join("broken");
        std::fs::create_dir(&broken).unwrap();
        std::fs::write(broken.join("manifest.yaml"), "name: [unclosed").unwrap();
        std::fs::create_dir(root.path().join("no-manifest")).unwrap();
        let catalog = Catalog::discover(root.path());
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog.errors.len(), 1, "{:?}", catalog.errors);
        assert!(
            catalog.errors[0]
                .to_string()
                .contains("broken/manifest.yaml: not valid YAML")
        );
    }

    #[test]
    fn durations_and_sizes_read_as_pattern_launcher_wrote_them() {
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(go_duration("30").is_err());
        assert!(go_duration("s").is_err());
        assert_eq!(quantity("1Gi"), Ok(1 << 30));
        assert_eq!(quantity("500M"), Ok(500_000_000));
        assert_eq!(quantity("1024"), Ok(1024));
        assert!(quantity("1Gb").is_err());
    }
}
