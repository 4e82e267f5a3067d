//! What every peer of the wire shares beyond the generated types: the
//! request metadata keys, and how an assignment is shown without its
//! secrets. Launcher, admin and prismctl each use these side by side; none
//! of them reaches into another for them.

use crate::pb::prism as pb;

/// Request metadata the admin sets on the assignments it places.
pub const PLACED_BY_METADATA: &str = "prism-placed-by";
/// Request metadata naming the epoch of the admin that decided an order
/// (fencing: a launcher refuses an epoch older than the newest it obeyed).
pub const EPOCH_METADATA: &str = "prism-epoch";
/// The caller a follower admin forwards a call for (see
/// `auth::Caller::forwarded`); the leader heeds it only from an admin.
pub const FORWARDED_CALLER_METADATA: &str = "prism-forwarded-caller";
/// Request metadata that steers placement at the admin: a region…
pub const REGION_METADATA: &str = "prism-region";
/// …or one launcher.
pub const LAUNCHER_METADATA: &str = "prism-launcher-id";

/// Where each daemon's local socket is, by default: prismctl finds them
/// there.
pub const ADMIN_SOCKET: &str = "/run/prism-admin/admin.sock";
pub const LAUNCHER_SOCKET: &str = "/run/prism-launcher/launcher.sock";

/// What stands in for a secret in [`redact`]ed output.
pub const HIDDEN: &str = "(redacted)";

/// The secret-bearing fields of an assignment, blanked for display.
pub fn redact(wire: &pb::ProcessAssignment) -> pb::ProcessAssignment {
    let mut w = wire.clone();
    if let Some(c) = w.config.as_mut() {
        if let Some(b) = c.backend.as_mut() {
            b.connection_string = HIDDEN.into();
            b.credentials.values_mut().for_each(|v| *v = HIDDEN.into());
        }
        if let Some(p) = c.pattern.as_mut() {
            for slot in p.slots.values_mut() {
                if !slot.connection_string.is_empty() {
                    slot.connection_string = HIDDEN.into();
                }
                slot.credentials
                    .values_mut()
                    .for_each(|v| *v = HIDDEN.into());
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_blanks_every_secret_and_keeps_the_rest() {
        let wire = pb::ProcessAssignment {
            process_id: "kv-1".into(),
            config: Some(pb::ProcessConfig {
                binary: "/usr/bin/redis-driver".into(),
                backend: Some(pb::BackendProcessConfig {
                    backend_type: "redis".into(),
                    connection_string: "redis://:hunter2@db".into(),
                    credentials: [("password".to_owned(), "hunter2".to_owned())].into(),
                    ..Default::default()
                }),
                pattern: Some(pb::PatternProcessConfig {
                    slots: [(
                        "store".to_owned(),
                        pb::BackendConfig {
                            connection_string: "pg://u:p@db".into(),
                            credentials: [("token".to_owned(), "t".to_owned())].into(),
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let shown = redact(&wire);
        let text = format!("{shown:?}");
        for secret in ["hunter2", "u:p@db", "\"t\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let c = shown.config.unwrap();
        assert_eq!(c.binary, "/usr/bin/redis-driver");
        assert_eq!(c.backend.unwrap().credentials["password"], HIDDEN);
        assert_eq!(
            c.pattern.unwrap().slots["store"].credentials["token"],
            HIDDEN
        );
        assert_eq!(shown.process_id, "kv-1");
    }
}
