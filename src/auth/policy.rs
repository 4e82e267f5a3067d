//! The authorization table: every RPC of every service either daemon
//! serves, and who may call it. [`authorize`] is the one check; the
//! README's table is this one.

use super::identity::{Caller, Role};

/// Who a row lets in, besides root on the local socket and `--insecure`
/// peers, who may call everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Any caller, authenticated or not.
    Anyone,
    Admin,
    /// A launcher, acting only as itself: the handler compares the id in
    /// the request with the certificate's ([`acts_as`]).
    Launcher,
    Operator,
    /// An operator, when the launcher runs without an admin.
    OperatorStandalone,
    Viewer,
}

impl Grant {
    fn name(self) -> &'static str {
        match self {
            Grant::Anyone => "anyone",
            Grant::Admin => "admin",
            Grant::Launcher => "launcher",
            Grant::Operator => "operator",
            Grant::OperatorStandalone => "operator (standalone launcher)",
            Grant::Viewer => "viewer",
        }
    }
}

use Grant::*;

const READ: &[Grant] = &[Admin, Operator, Viewer];
const OPERATE: &[Grant] = &[Operator];
/// People, not daemons: an admin's or a launcher's certificate opens no
/// browser session.
const PEOPLE: &[Grant] = &[Operator, Viewer];
const ANYONE: &[Grant] = &[Anyone];

/// Did the admin place this assignment (rather than an operator assigning
/// directly)? A certificate says so by itself; callers trusted with every
/// role (root on the socket, `--insecure` peers) say so with
/// [`PLACED_BY_METADATA`](crate::protocol::PLACED_BY_METADATA); nobody
/// else is the admin.
pub fn placed_by_admin(caller: &Caller, placed_by: Option<&str>) -> bool {
    match caller {
        Caller::Certified {
            role: Role::Admin, ..
        } => true,
        Caller::Root | Caller::Insecure { .. } => placed_by == Some("admin"),
        _ => false,
    }
}

/// (gRPC path, who may call it).
pub const TABLE: &[(&str, &[Grant])] = &[
    // The launcher's own service.
    (
        "/prism.launcher.v1.Launcher/AssignProcess",
        &[Admin, OperatorStandalone],
    ),
    (
        "/prism.launcher.v1.Launcher/RevokeProcess",
        &[Admin, OperatorStandalone],
    ),
    ("/prism.launcher.v1.Launcher/GetProcess", READ),
    ("/prism.launcher.v1.Launcher/ListProcesses", READ),
    ("/prism.launcher.v1.Launcher/ListManifests", READ),
    ("/prism.launcher.v1.Launcher/WatchProcesses", READ),
    // pattern-launcher's API, with the same grants.
    (
        "/prism.launcher.PatternLauncher/LaunchPattern",
        &[Admin, OperatorStandalone],
    ),
    (
        "/prism.launcher.PatternLauncher/TerminatePattern",
        &[Admin, OperatorStandalone],
    ),
    ("/prism.launcher.PatternLauncher/ListPatterns", READ),
    ("/prism.launcher.PatternLauncher/GetProcessStatus", READ),
    ("/prism.launcher.PatternLauncher/Health", READ),
    // The admin's prism.ControlPlane: launchers, as themselves.
    ("/prism.ControlPlane/RegisterLauncher", &[Launcher]),
    ("/prism.ControlPlane/LauncherHeartbeat", &[Launcher]),
    ("/prism.ControlPlane/ReclaimProcesses", &[Launcher]),
    ("/prism.ControlPlane/AssignProcess", OPERATE),
    ("/prism.ControlPlane/RevokeProcess", OPERATE),
    // Upstream's proxy RPCs answer UNIMPLEMENTED, saying why.
    ("/prism.ControlPlane/RegisterProxy", ANYONE),
    ("/prism.ControlPlane/AssignNamespace", ANYONE),
    ("/prism.ControlPlane/CreateNamespace", ANYONE),
    ("/prism.ControlPlane/Heartbeat", ANYONE),
    ("/prism.ControlPlane/RevokeNamespace", ANYONE),
    // The admin's operator API.
    ("/prism.admin.v1.Admin/ListLaunchers", READ),
    ("/prism.admin.v1.Admin/GetLauncher", READ),
    ("/prism.admin.v1.Admin/ListProcesses", READ),
    ("/prism.admin.v1.Admin/GetProcess", READ),
    ("/prism.admin.v1.Admin/DrainLauncher", OPERATE),
    ("/prism.admin.v1.Admin/UndrainLauncher", OPERATE),
    ("/prism.admin.v1.Admin/MoveProcesses", OPERATE),
    // Watching is reading: viewers and operators, never a launcher.
    ("/prism.admin.v1.Admin/WatchEvents", READ),
    // A browser session on the fleet status page, with the caller's role.
    ("/prism.admin.v1.Admin/OpenUiSession", PEOPLE),
    // Both daemons.
    ("/grpc.health.v1.Health/Check", ANYONE),
    ("/grpc.health.v1.Health/Watch", ANYONE),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ANYONE,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ANYONE,
    ),
];

/// A refused call, saying what it needed and whom it saw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} requires {required}; the caller is {caller}")]
pub struct Denied {
    pub path: String,
    pub required: String,
    pub caller: String,
}

/// What the caller's transport identity grants.
fn grants(caller: &Caller, grant: Grant, standalone: bool) -> bool {
    if caller.is_superuser() || grant == Anyone {
        return true;
    }
    let operator = matches!(
        caller,
        Caller::LocalOperator { .. }
            | Caller::Certified {
                role: Role::Operator,
                ..
            }
    );
    match grant {
        Anyone => true,
        Admin => caller.role() == Some(&Role::Admin),
        Launcher => matches!(caller.role(), Some(Role::Launcher(_))),
        Operator => operator,
        OperatorStandalone => operator && standalone,
        Viewer => caller.role() == Some(&Role::Viewer),
    }
}

/// May `caller` call `path`? `standalone`: this is a launcher without an
/// admin. Paths not in the table are for root and `--insecure` only.
pub fn authorize(path: &str, caller: &Caller, standalone: bool) -> Result<(), Denied> {
    let allowed: &[Grant] = TABLE
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(&[], |(_, g)| g);
    if caller.is_superuser() || allowed.iter().any(|g| grants(caller, *g, standalone)) {
        return Ok(());
    }
    let mut names: Vec<&str> = allowed
        .iter()
        .filter(|g| standalone || **g != OperatorStandalone)
        .map(|g| g.name())
        .collect();
    if names.is_empty() {
        names.push("root on the local socket");
    }
    let required = match names.as_slice() {
        [one] => format!("the {one} role"),
        many => format!("one of the roles {}", many.join(", ")),
    };
    Err(Denied {
        path: path.to_owned(),
        required,
        caller: caller.to_string(),
    })
}

/// A launcher acts only as itself: `launcher_id` in a request must be the
/// id its certificate names (root and `--insecure` peers may name any).
pub fn acts_as(caller: &Caller, launcher_id: &str) -> Result<(), Denied> {
    match caller.role() {
        Some(Role::Launcher(id)) if id == launcher_id => Ok(()),
        _ if caller.is_superuser() => Ok(()),
        _ => Err(Denied {
            path: format!("acting as launcher {launcher_id:?}"),
            required: format!("the certificate of launcher {launcher_id:?}"),
            caller: caller.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(role: Role) -> Caller {
        Caller::Certified {
            uri: role.uri("prism", "x"),
            role,
        }
    }

    #[test]
    fn every_rpc_of_every_service_is_in_the_table() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        let mut served = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(
                        TABLE.iter().any(|(p, _)| *p == path),
                        "{path} is served but not in the authorization table"
                    );
                    served += 1;
                }
            }
        }
        assert!(served >= 15, "{served} RPCs found");
    }

    #[test]
    fn the_table_decides() {
        let admin = cert(Role::Admin);
        let host_a = cert(Role::Launcher("host-a".into()));
        let operator = cert(Role::Operator);
        let viewer = cert(Role::Viewer);
        let local_op = Caller::LocalOperator { uid: 1000 };
        let nobody = Caller::LocalUser { uid: 65534 };
        let anon = Caller::Anonymous { addr: None };
        let assign = "/prism.launcher.v1.Launcher/AssignProcess";
        assert!(authorize(assign, &admin, false).is_ok());
        assert!(authorize(assign, &operator, false).is_err());
        assert!(authorize(assign, &operator, true).is_ok());
        assert!(authorize(assign, &local_op, true).is_ok());
        assert!(authorize(assign, &host_a, true).is_err());
        assert!(authorize(assign, &nobody, true).is_err());
        assert!(authorize(assign, &Caller::Root, false).is_ok());
        assert!(authorize(assign, &Caller::Insecure { addr: None }, false).is_ok());

        let drain = "/prism.admin.v1.Admin/DrainLauncher";
        let list = "/prism.admin.v1.Admin/ListProcesses";
        assert!(authorize(drain, &operator, false).is_ok());
        assert!(authorize(drain, &viewer, false).is_err());
        assert!(authorize(list, &viewer, false).is_ok());
        assert!(authorize(drain, &host_a, false).is_err());
        assert!(authorize(list, &anon, false).is_err());

        let register = "/prism.ControlPlane/RegisterLauncher";
        assert!(authorize(register, &host_a, false).is_ok());
        assert!(authorize(register, &operator, false).is_err());
        assert!(authorize(register, &nobody, false).is_err());
        assert!(authorize("/grpc.health.v1.Health/Check", &anon, false).is_ok());
        assert!(authorize("/x.Unknown/Call", &operator, false).is_err());

        let ui = "/prism.admin.v1.Admin/OpenUiSession";
        assert!(authorize(ui, &viewer, false).is_ok());
        assert!(authorize(ui, &operator, false).is_ok());
        assert!(authorize(ui, &local_op, false).is_ok());
        assert!(authorize(ui, &Caller::Root, false).is_ok());
        assert!(authorize(ui, &Caller::Insecure { addr: None }, false).is_ok());
        assert!(authorize(ui, &admin, false).is_err());
        assert!(authorize(ui, &host_a, false).is_err());
        assert!(authorize(ui, &nobody, false).is_err());
        assert!(authorize(ui, &anon, false).is_err());

        let e = authorize(drain, &host_a, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/prism.admin.v1.Admin/DrainLauncher requires the operator role; the caller is \
             launcher \"host-a\" (certificate spiffe://prism/launcher/host-a)"
        );
        let e = authorize(assign, &nobody, false).unwrap_err();
        assert!(e.to_string().contains("requires the admin role"), "{e}");
        assert!(e.to_string().contains("uid 65534"), "{e}");
    }

    #[test]
    fn a_launcher_acts_only_as_itself() {
        let host_b = cert(Role::Launcher("host-b".into()));
        assert!(acts_as(&host_b, "host-b").is_ok());
        let e = acts_as(&host_b, "host-a").unwrap_err();
        assert!(e.to_string().contains("launcher \"host-b\""), "{e}");
        assert!(acts_as(&cert(Role::Admin), "host-a").is_err());
        assert!(acts_as(&Caller::Root, "host-a").is_ok());
    }

    #[test]
    fn only_the_admin_places() {
        let insecure = Caller::Insecure { addr: None };
        for (caller, header, expected) in [
            (cert(Role::Admin), None, true),
            (cert(Role::Operator), Some("admin"), false),
            (cert(Role::Launcher("a".into())), Some("admin"), false),
            (Caller::Root, Some("admin"), true),
            (Caller::Root, None, false),
            (insecure.clone(), Some("admin"), true),
            (insecure, Some("operator"), false),
            (Caller::LocalOperator { uid: 5 }, Some("admin"), false),
        ] {
            assert_eq!(
                placed_by_admin(&caller, header),
                expected,
                "{caller} {header:?}"
            );
        }
    }
}
