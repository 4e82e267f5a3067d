//! Who may do what. Every RPC of both daemons passes one gate
//! ([`layer::Gate`]) that establishes the caller from the connection (a
//! client certificate over TCP, `SO_PEERCRED` on the local socket) and
//! checks it against one table ([`policy::TABLE`]). Clients verify the
//! daemon they reach the same way ([`dial`]).

pub mod access;
pub mod dial;
pub mod identity;
pub mod layer;
pub mod pki;
pub mod policy;

pub use identity::{Caller, DEFAULT_TRUST_DOMAIN, OperatorGroup, Role};
pub use layer::{Gate, caller};
pub use policy::{Denied, acts_as, authorize, placed_by_admin};

/// The group whose members are operators on the local socket.
pub const DEFAULT_OPERATOR_GROUP: &str = "prism";
