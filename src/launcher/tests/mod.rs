//! The supervisor and reconciler against the in-memory manager, on paused
//! time: every decision and timer, without root or a real systemd.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    store::Store,
    supervisor::{AssignOutcome, LauncherError, Supervisor},
};
use crate::{
    health::{Phase, Status},
    model::{Assignment, ManagedProcess, Policy, ProcessType},
    pb::prism as pb,
    serve::Stopper,
    systemd::{
        MemorySystemd, Systemd, SystemdError, UnitStatus,
        memory::{Call, Op},
    },
    unit,
};

mod assigning;
mod daemon;
mod recovery;
mod updating;

pub(super) const COOLDOWN: Duration = Duration::from_secs(30);

pub(super) struct Harness {
    sd: Arc<MemorySystemd>,
    sup: Arc<Supervisor>,
    dir: tempfile::TempDir,
    policy: Policy,
    /// Stops the loops [`Harness::run_loops`] started.
    stopper: Stopper,
}

pub(super) fn policy() -> Policy {
    Policy {
        check_binary_on_host: false,
        ..Policy::default()
    }
}

pub(super) fn harness() -> Harness {
    harness_with(policy(), 10, ProcessType::ALL.into_iter().collect())
}

pub(super) fn harness_with(
    policy: Policy,
    max: usize,
    capabilities: BTreeSet<ProcessType>,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = Arc::new(MemorySystemd::new());
    let sup = supervisor(&sd, dir.path(), &policy, max, capabilities);
    Harness {
        sd,
        sup,
        dir,
        policy,
        stopper: Stopper::new(),
    }
}

pub(super) fn supervisor(
    sd: &Arc<MemorySystemd>,
    dir: &std::path::Path,
    policy: &Policy,
    max: usize,
    capabilities: BTreeSet<ProcessType>,
) -> Arc<Supervisor> {
    let systemd: Arc<dyn Systemd> = sd.clone();
    Supervisor::new(
        systemd,
        Store::open(dir).expect("store"),
        policy.clone(),
        capabilities,
        max,
        COOLDOWN,
    )
}

impl Harness {
    /// A second supervisor over the same state directory and manager: the
    /// launcher after a restart.
    pub(super) fn restarted(&self) -> Arc<Supervisor> {
        let sup = supervisor(
            &self.sd,
            self.dir.path(),
            &self.policy,
            10,
            ProcessType::ALL.into_iter().collect(),
        );
        assert!(sup.load().expect("load").is_empty());
        sup
    }

    pub(super) fn phase(&self, id: &str) -> Option<Phase> {
        self.sup.table().entries.get(id).map(|e| e.phase)
    }

    pub(super) fn entry<T>(&self, id: &str, f: impl FnOnce(&super::supervisor::Entry) -> T) -> T {
        f(self.sup.table().entries.get(id).expect("entry"))
    }

    pub(super) fn status(&self, id: &str) -> Status {
        let table = self.sup.table();
        self.sup.status_of(table.entries.get(id).expect("entry"))
    }

    pub(super) fn starts(&self, id: &str) -> usize {
        self.sd.count(&Call::Start(unit_of(id)))
    }

    pub(super) fn state_file(&self, id: &str) -> PathBuf {
        self.sup.store.path_of(id)
    }

    /// Follow events and reconcile on request, as the daemon does.
    pub(super) async fn run_loops(&self) {
        let before = self.sd.followers();
        tokio::spawn(self.sup.clone().follow_events(self.stopper.handle()));
        tokio::spawn(
            self.sup
                .clone()
                .reconcile_loop(Duration::from_secs(3600), self.stopper.handle()),
        );
        until(Duration::from_secs(1), "the follower", || {
            self.sd.followers() > before
        })
        .await;
    }
}

pub(super) fn unit_of(id: &str) -> String {
    unit::unit_name(ProcessType::Pattern, id)
}

pub(super) fn wire(id: &str, version: i64) -> pb::ProcessAssignment {
    wire_at(id, version, "/usr/bin/true")
}

pub(super) fn wire_at(id: &str, version: i64, binary: &str) -> pb::ProcessAssignment {
    crate::model::tests::pattern_wire(id, version, binary)
}

pub(super) fn assignment(id: &str, version: i64) -> Assignment {
    assignment_of(wire(id, version))
}

pub(super) fn assignment_of(wire: pb::ProcessAssignment) -> Assignment {
    Assignment::try_from((wire, &policy())).expect("valid")
}

pub(super) fn unavailable() -> SystemdError {
    SystemdError::Unavailable {
        target: "memory".into(),
        reason: "re-executing".into(),
    }
}

pub(super) fn limit_hit() -> UnitStatus {
    UnitStatus {
        result: "start-limit-hit".into(),
        exec_main_code: 1,
        exec_main_status: 1,
        ..UnitStatus::default()
    }
}

/// Wait (on paused time) until `f` holds, for at most `within`.
pub(super) async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !f() {
        assert!(began.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    began.elapsed()
}
