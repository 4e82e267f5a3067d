//! pattern-launcher's world: pattern manifests launched by name, the port
//! pairs they are given, and its gRPC API (`prism.launcher.PatternLauncher`),
//! each call made into the same assignment `AssignProcess` takes.

pub mod manifest;
pub mod ports;
pub mod service;

pub use manifest::{Catalog, Manifest, ManifestError};
pub use ports::Ports;
pub use service::PatternService;
