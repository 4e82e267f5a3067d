//! An assignment past the edge: the process as validated by the pure
//! conversion, with the record it came from. The launcher keeps the record
//! whole (secrets included) for its state file and for handing back to an
//! admin that lost it; the admin stores and pushes it.

use super::{ManagedProcess, Policy, ValidationError};
use crate::pb::prism as pb;

#[derive(Clone, Debug)]
pub struct Assignment {
    pub process: ManagedProcess,
    record: pb::ProcessAssignment,
}

impl Assignment {
    /// The assignment as received.
    pub fn record(&self) -> &pb::ProcessAssignment {
        &self.record
    }

    pub fn into_parts(self) -> (ManagedProcess, pb::ProcessAssignment) {
        (self.process, self.record)
    }
}

/// Pure: structure only, whatever `policy.check_binary_on_host` says; the
/// host's step is [`ManagedProcess::on_host`].
impl TryFrom<(pb::ProcessAssignment, &Policy)> for Assignment {
    type Error = ValidationError;

    fn try_from((wire, policy): (pb::ProcessAssignment, &Policy)) -> Result<Self, Self::Error> {
        let process = ManagedProcess::try_from((wire.clone(), policy))?;
        Ok(Self {
            process,
            record: wire,
        })
    }
}
