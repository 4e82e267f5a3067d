//! prism-launcher: one agent per host that runs every Prism process type
//! (pattern, proxy, backend, utility) as a transient systemd unit, and the
//! control plane (prism-admin) and operator CLI (prismctl) around it.
//!
//! # Data path
//!
//! ```text
//! prismctl ──▶ admin (placement by type and free slots; SQLite) ──push──┐
//!                                                                       ▼
//! wire ProcessAssignment ──▶ model (the pure gate: Assignment, naming the bad field)
//!        ──▶ host step (the binary on this disk) ──▶ launcher supervisor
//!            (capacity reserved, state file written, desired state)
//!        ──▶ unit::translate (pure: ManagedProcess → UnitSpec)
//!        ──▶ systemd::Systemd (zbus: StartTransientUnit, job wait)
//!        ──▶ systemd owns the process: cgroup, restarts, sandbox, logs
//!
//! and back:
//!
//! systemd signals (PropertiesChanged, UnitRemoved, JobRemoved)
//!        ──▶ systemd events ──▶ launcher table (restore, circuit, probes)
//!        ──▶ health (verdict per process) ──▶ heartbeat
//!        ──▶ admin (drift repair, liveness, history) ──▶ prismctl
//! ```
//!
//! The gRPC services turn requests into domain types at the edge; the
//! supervisor and the fleet never see wire types. Every timer is on tokio's
//! clock, and the daemons take what they run on (listeners, the systemd
//! handle, the store) from their caller, so the logic is tested against an
//! in-memory manager on paused time, without root; integration tests drive
//! a real systemd user manager.
//!
//! # Modules
//!
//! - [`pb`]: generated protobuf and gRPC code (`prism`, `prism.launcher.v1`,
//!   `prism.admin.v1`, and pattern-launcher's `prism.launcher`).
//! - [`protocol`]: what every peer shares beyond the generated types:
//!   metadata keys, default sockets, redaction of secrets.
//! - [`model`]: validated domain types, the pure gate from the wire, and
//!   the host step.
//! - [`unit`](mod@unit): the pure `ManagedProcess → UnitSpec` translation, unit
//!   names, and systemd property names.
//! - [`systemd`]: the [`systemd::Systemd`] trait, its D-Bus client, and an
//!   in-memory manager for tests.
//! - [`health`]: probes, cgroup usage, and the verdict per process.
//! - [`launcher`]: the host agent: gRPC service, desired-state store,
//!   supervisor, reconciliation, event following, the link to the admin, and
//!   pattern-launcher's world (`launcher::patterns`: manifests, port pairs,
//!   its gRPC API).
//! - [`admin`]: prism-admin: the fleet (placement, dispatch, drift,
//!   liveness) over a store trait (SQLite by default), its event streams,
//!   and its fleet status page (`admin::ui`).
//! - [`ctl`]: `prismctl` subcommands, one file each.
//! - [`auth`]: who is calling (certificates, `SO_PEERCRED`) and the one
//!   authorization table every RPC is checked against.
//! - [`serve`]: what both daemons share to start and run: flags, start-up,
//!   sockets, the gRPC server, and one daemon life with an orderly shutdown.
//! - [`settings`]: configuration pieces (durations, addresses, TLS, the
//!   error naming a setting).
//! - [`sandbox`]: a private systemd user manager for tests and local runs.
//! - [`devstack`]: hosts in network namespaces, and their faults, for
//!   `prismctl local up --hosts N` and the partition tests.
//! - [`backoff`], [`clock`], [`locks`], [`host`]: one of each: backoff
//!   with jitter, the wall clock, per-key locks, facts about this process.
//! - [`display`]: how specs, timestamps and ages are shown, by prismctl
//!   and the status page alike.
//! - [`logging`], [`metrics`]: journal/text/JSON logs, Prometheus metrics.
// Audited exceptions, in `serve`: mallopt and malloc_trim.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod clock;
pub mod ctl;
pub mod devstack;
pub mod display;
pub mod health;
pub mod host;
pub mod launcher;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod sandbox;
pub mod serve;
pub mod settings;
pub mod systemd;
pub mod unit;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod prism {
        tonic::include_proto!("prism");
        pub mod launcher {
            // pattern-launcher's API (`prism.launcher.PatternLauncher`).
            tonic::include_proto!("prism.launcher");
            pub mod v1 {
                tonic::include_proto!("prism.launcher.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("prism.admin.v1");
            }
        }
    }

    /// Encoded descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("prism_descriptor");
}
