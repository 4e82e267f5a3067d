//! Rolling out a new version across a set of processes: health-gated
//! batches, canaries, pause, promote, abort and revert.

pub mod change;
pub mod plan;
