//! prism-launcher: one agent per host that runs every Prism process type
//! (pattern, proxy, backend, utility) as a transient systemd unit.
//!
//! # Data flow
//!
//! ```text
//! wire ProcessAssignment ──▶ model (the one validation gate)
//!        ──▶ unit::translate (pure: ManagedProcess → UnitSpec)
//!        ──▶ systemd::Systemd (zbus: StartTransientUnit, job wait, signals)
//!        ──▶ systemd owns the process: cgroup, restarts, logs
//! ```
//!
//! # Modules
//!
//! - [`pb`]: generated protobuf and gRPC code (`prism`, `prism.launcher.v1`).
//! - [`model`]: validated domain types and the `TryFrom` gate from the wire.
//! - [`unit`]: the pure `ManagedProcess → UnitSpec` translation and names.
//! - [`systemd`]: the [`systemd::Systemd`] trait and its D-Bus client.
//! - [`launcher`]: the daemon: gRPC service, desired-state store,
//!   reconciliation, health aggregation.
//! - [`health`]: probes, cgroup usage, and the per-process status.
//! - [`sandbox`]: a private systemd user manager for tests and local runs.
//! - [`admin`]: prism-admin: launcher registry, placement, dispatch, fleet
//!   health, over a store trait (SQLite by default).
//! - [`ctl`]: `prismctl` subcommands, one file each.
//! - [`auth`]: who is calling (certificates, `SO_PEERCRED`) and the one
//!   authorization table every RPC is checked against.
//! - [`settings`]: configuration pieces both daemons share.
//! - [`serve`]: start-up and serving both daemons share (exit codes,
//!   signals, sockets, the gRPC server).
//! - [`logging`], [`metrics`]: journal/text/JSON logs, Prometheus metrics.
// Audited exceptions, in `serve`: mallopt and malloc_trim.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod clock;
pub mod ctl;
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
