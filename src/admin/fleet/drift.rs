//! Drift between what a launcher reports running and what is placed on it:
//! one pure decision per process, so the rules are tested with tables. The
//! heartbeat applies them (see `Fleet::heartbeat`).

use crate::admin::store::{PlacementState, ProcessRecord};

/// The admin's record of a process on the reporting launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub state: PlacementState,
    pub version: i64,
    pub updated_at_ms: i64,
}

impl Placement {
    pub fn of(record: &ProcessRecord) -> Self {
        Self {
            state: record.state,
            version: record.version(),
            updated_at_ms: record.updated_at_ms,
        }
    }
}

/// What to do about one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    Nothing,
    /// Placed here but not run (or an older version): push it again.
    Assign,
    /// Run here but not placed here, or being revoked: revoke it.
    Revoke,
    /// Its revocation finished: the launcher no longer runs it.
    Finished,
}

/// `placed`: the record of the process on this launcher (`None`: not
/// placed here). `reported`: the version the launcher reports running
/// (`None`: not reported; `Some(0)`: a version it did not say). `kept`: its
/// copy here is kept on purpose (a move in progress, or handed back after
/// the admin lost it). Records updated at or after `settled_before_ms` may
/// be being pushed right now, and are left alone.
pub fn repair(
    placed: Option<Placement>,
    reported: Option<i64>,
    kept: bool,
    settled_before_ms: i64,
) -> Repair {
    let settled = |p: &Placement| p.updated_at_ms < settled_before_ms;
    match (placed, reported) {
        (None, None) => Repair::Nothing,
        (None, Some(_)) if kept => Repair::Nothing,
        (None, Some(_)) => Repair::Revoke,
        (Some(p), Some(v)) => match p.state {
            PlacementState::Placed if v > 0 && v < p.version && settled(&p) => Repair::Assign,
            PlacementState::Placed => Repair::Nothing,
            PlacementState::Revoking if kept => Repair::Nothing,
            PlacementState::Revoking => Repair::Revoke,
        },
        (Some(p), None) => match p.state {
            PlacementState::Placed if settled(&p) => Repair::Assign,
            PlacementState::Placed => Repair::Nothing,
            PlacementState::Revoking => Repair::Finished,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLED: i64 = 1_000;

    fn at(state: PlacementState, version: i64, updated_at_ms: i64) -> Option<Placement> {
        Some(Placement {
            state,
            version,
            updated_at_ms,
        })
    }

    #[test]
    fn repairs() {
        use PlacementState::{Placed, Revoking};
        use Repair::*;
        let old = SETTLED - 1;
        let new = SETTLED;
        type Case = (&'static str, Option<Placement>, Option<i64>, bool, Repair);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("placed and run at its version", at(Placed, 2, old), Some(2), false, Nothing),
            ("placed and run, version not said", at(Placed, 2, old), Some(0), false, Nothing),
            ("placed, run at an older version", at(Placed, 2, old), Some(1), false, Assign),
            ("placed, older version, push in flight", at(Placed, 2, new), Some(1), false, Nothing),
            ("placed, run at a newer version", at(Placed, 2, old), Some(3), false, Nothing),
            ("placed but not run", at(Placed, 2, old), None, false, Assign),
            ("placed, not run, push in flight", at(Placed, 2, new), None, false, Nothing),
            ("being revoked, still run", at(Revoking, 1, old), Some(1), false, Revoke),
            ("being revoked, kept while it moves", at(Revoking, 1, old), Some(1), true, Nothing),
            ("being revoked, no longer run", at(Revoking, 1, new), None, false, Finished),
            ("run but placed elsewhere or nowhere", None, Some(1), false, Revoke),
            ("run, not placed, but handed back", None, Some(1), true, Nothing),
            ("neither placed nor run", None, None, false, Nothing),
        ];
        for (name, placed, reported, kept, expected) in cases {
            assert_eq!(
                repair(*placed, *reported, *kept, SETTLED),
                *expected,
                "{name}"
            );
        }
    }
}
