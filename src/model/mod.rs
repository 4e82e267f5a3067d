//! The validated domain model: what a process *is* once it has passed the one
//! validation gate ([`validate`]). Nothing past the gate sees a raw proto.

mod assignment;
mod env;
#[cfg(test)]
pub(crate) mod tests;
mod types;
pub mod validate;

pub use assignment::Assignment;
pub use types::*;
pub use validate::{Policy, ProbeDefaults, ValidationError};
