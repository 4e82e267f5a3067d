//! The demo: one process of each type.

use super::*;

/// One process of each type, each with its own health port and a quick
/// probe. The backend is a real redis-server when one is installed.
pub fn demo_assignments(demo: &Path, redis: Option<&Path>) -> Vec<pb::ProcessAssignment> {
    let base = |id: &str, ty: &str, ns: &str, health: i32| pb::ProcessAssignment {
        process_id: id.into(),
        process_type: ty.into(),
        namespace: ns.into(),
        version: 1,
        config: Some(pb::ProcessConfig {
            binary: demo.display().to_string(),
            health_port: health,
            log_level: "info".into(),
            health_check: Some(pb::HealthCheck {
                kind: "http".into(),
                interval_ms: 1000,
                timeout_ms: 500,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut kv = base("kv-demo", "pattern", "demo", 18001);
    kv.config.as_mut().expect("config").pattern = Some(pb::PatternProcessConfig {
        pattern_type: "keyvalue".into(),
        ..Default::default()
    });
    let mut proxy = base("proxy-demo", "proxy", "", 18002);
    proxy.config.as_mut().expect("config").proxy = Some(pb::ProxyProcessConfig {
        admin_endpoint: "127.0.0.1:8981".into(),
        control_port: 18010,
        data_port: 18011,
        proxy_id: "proxy-demo".into(),
        partition_ranges: vec![],
    });
    let mut backend = base("redis-demo", "backend", "demo", 18003);
    {
        let c = backend.config.as_mut().expect("config");
        c.backend = Some(pb::BackendProcessConfig {
            backend_type: "redis".into(),
            connection_string: "redis://127.0.0.1:18003/0".into(),
            ..Default::default()
        });
        if let Some(redis) = redis {
            c.binary = redis.display().to_string();
            // Nothing to save: the demo's redis lives in memory only.
            c.args = [
                "--port",
                "18003",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec();
            // Its own port: the one the probe checks.
            c.port = 18003;
            c.health_port = 0;
            c.health_check = Some(pb::HealthCheck {
                kind: "tcp".into(),
                port: 18003,
                interval_ms: 1000,
                timeout_ms: 500,
                ..Default::default()
            });
        }
    }
    let mut utility = base("logs-demo", "utility", "", 18004);
    utility.config.as_mut().expect("config").utility = Some(pb::UtilityProcessConfig {
        utility_type: "log-collector".into(),
        target_processes: vec!["kv-demo".into()],
        ..Default::default()
    });
    vec![kv, proxy, backend, utility]
}
