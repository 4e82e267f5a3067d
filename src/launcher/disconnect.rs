//! The launcher and its admins across a network that fails: when an admin
//! last answered it, the newest admin epoch it obeyed (fencing), and the
//! processes it stops on its own once cut off for their
//! `on_disconnect.stop_after_ms`.
//!
//! "Answered" means an admin that leads acknowledged a request of this
//! launcher's (a heartbeat or a registration), so the admins' record of
//! this launcher's last heartbeat is no older than what is kept here (the
//! time the request was *sent*). That is what lets the admin replace a
//! process elsewhere without overlap: this launcher stops it no later than
//! `stop_after` past the admins' record. A push from an admin is not an
//! answer: it proves the admin reaches this launcher, not that the admin
//! hears it.
//!
//! Both facts are kept in the state directory, so a restarted launcher
//! neither forgets how long it has been cut off nor obeys an old leader.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::supervisor::Supervisor;
use crate::{clock, health::Phase, pb::prism as pb, serve::Shutdown};

const CONTACT_FILE: &str = "admin-contact";
const EPOCH_FILE: &str = "admin-epoch";
/// How often the launcher looks at its silence while cut off.
const TICK: Duration = Duration::from_millis(250);

/// An order from an admin older than the newest this launcher obeyed.
#[derive(Debug, thiserror::Error)]
#[error(
    "this launcher has obeyed admin epoch {obeyed}; an order of epoch {order} comes from a \
     deposed leader and is refused"
)]
pub struct StaleEpoch {
    pub order: i64,
    pub obeyed: i64,
}

#[derive(Debug, Default)]
struct State {
    /// Unix ms: when the last request an admin answered was sent.
    last_ms: i64,
    /// When `last_ms` was last written to disk.
    written_ms: i64,
    epoch: i64,
    /// What it stopped since it last registered.
    stops: Vec<pb::DisconnectStop>,
}

/// When an admin last answered, and the newest epoch obeyed.
#[derive(Debug)]
pub struct Contact {
    dir: PathBuf,
    state: Mutex<State>,
    /// Heartbeat interval (ms): the silence that is normal between two
    /// answers. 0 until the launcher has admins.
    interval_ms: std::sync::atomic::AtomicU64,
}

fn read_i64(path: &Path) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Write `value` to `dir/name` durably (temporary file, fsync, rename).
fn write_i64(dir: &Path, name: &str, value: i64) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(value.to_string().as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

impl Contact {
    /// What `dir` (the state directory) remembers; a launcher that never
    /// heard an admin counts its silence from now.
    pub fn open(dir: &Path) -> Self {
        let now = clock::unix_ms();
        // A clock set back since is no reason to think itself heard later.
        let last_ms = read_i64(&dir.join(CONTACT_FILE))
            .map(|t| t.min(now))
            .unwrap_or(now);
        Self {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                last_ms,
                written_ms: last_ms,
                epoch: read_i64(&dir.join(EPOCH_FILE)).unwrap_or(0),
                stops: Vec::new(),
            }),
            interval_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("contact poisoned")
    }

    /// The launcher talks to admins every `interval`.
    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms.store(
            interval.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn interval(&self) -> Option<Duration> {
        match self.interval_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// An admin that leads answered a request sent at `sent_ms`. Kept on
    /// disk at most once an interval (a restarted launcher may think
    /// itself cut off an interval longer than it was: the safe side).
    pub fn answered(&self, sent_ms: i64) {
        let mut st = self.state();
        if sent_ms <= st.last_ms {
            return;
        }
        st.last_ms = sent_ms;
        let every = self
            .interval()
            .unwrap_or(Duration::from_secs(1))
            .as_millis() as i64;
        if sent_ms - st.written_ms >= every {
            st.written_ms = sent_ms;
            if let Err(e) = write_i64(&self.dir, CONTACT_FILE, sent_ms) {
                tracing::warn!("cannot record when an admin last answered: {e}");
            }
        }
    }

    /// How long no admin has answered.
    pub fn silence(&self, now_ms: i64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.state().last_ms).max(0) as u64)
    }

    /// Obey an order (or an answer) of admin epoch `epoch`: refused when
    /// older than the newest obeyed; a newer one is recorded durably first.
    pub fn obey(&self, epoch: i64) -> Result<(), StaleEpoch> {
        let mut st = self.state();
        if epoch < st.epoch {
            return Err(StaleEpoch {
                order: epoch,
                obeyed: st.epoch,
            });
        }
        if epoch > st.epoch {
            if let Err(e) = write_i64(&self.dir, EPOCH_FILE, epoch) {
                // Obeyed anyway: refusing the newest leader would be worse;
                // the next order writes it again.
                tracing::warn!("cannot record admin epoch {epoch}: {e}");
            }
            tracing::info!("obeying admin epoch {epoch} (was {})", st.epoch);
            st.epoch = epoch;
        }
        Ok(())
    }

    pub fn epoch(&self) -> i64 {
        self.state().epoch
    }

    fn record_stop(&self, stop: pb::DisconnectStop) {
        self.state().stops.push(stop);
    }

    /// What it stopped since it last registered, for the registration.
    pub fn stops(&self) -> Vec<pb::DisconnectStop> {
        self.state().stops.clone()
    }

    /// The registration carrying `sent` was taken: forget those.
    pub fn reported(&self, sent: &[pb::DisconnectStop]) {
        self.state().stops.retain(|s| {
            !sent
                .iter()
                .any(|t| t.process_id == s.process_id && t.stopped_at_ms == s.stopped_at_ms)
        });
    }
}

impl Supervisor {
    /// While the launcher has admins: stop each process whose
    /// `on_disconnect.stop_after_ms` the silence has passed. Looks at the
    /// table only while no admin has answered for two intervals.
    pub async fn disconnect_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        while shutdown.until(tokio::time::sleep(TICK)).await.is_some() {
            let silent = self.contact.silence(clock::unix_ms());
            self.metrics.admin_silence.set(silent.as_secs_f64());
            let Some(interval) = self.contact.interval() else {
                continue;
            };
            if silent < interval * 2 {
                continue;
            }
            for id in self.due_for_stop(silent) {
                let this = self.clone();
                tokio::spawn(async move { this.stop_disconnected(&id, silent).await });
            }
        }
    }

    /// The processes to stop at `silent`: with a `stop_after` it has
    /// passed, not stopped already, not being revoked.
    fn due_for_stop(&self, silent: Duration) -> Vec<String> {
        self.table()
            .entries
            .values()
            .filter(|e| {
                !matches!(
                    e.phase,
                    Phase::Suspended | Phase::Revoking | Phase::Starting
                )
            })
            .filter(|e| {
                e.process
                    .on_disconnect
                    .stop_after
                    .is_some_and(|after| silent >= after)
            })
            .map(|e| e.process.id.clone())
            .collect()
    }

    /// Stop `id` because no admin has answered for `silent`: its unit
    /// goes (gracefully), the process stays held, and it starts again
    /// when an admin that still places it here answers.
    async fn stop_disconnected(&self, id: &str, silent: Duration) {
        let _guard = self.locks.lock(id).await;
        let (unit, version, grace, after) = {
            let mut table = self.table();
            let Some(e) = table.entries.get_mut(id) else {
                return;
            };
            if matches!(
                e.phase,
                Phase::Suspended | Phase::Revoking | Phase::Starting
            ) {
                return;
            }
            let Some(after) = e.process.on_disconnect.stop_after else {
                return;
            };
            e.phase = Phase::Suspended;
            e.stop_probe();
            e.last_error = Some(format!(
                "stopped by the launcher: no admin answered for {:.1} s (its \
                 on_disconnect.stop_after_ms is {:.1} s); it starts again when an admin places \
                 it here",
                silent.as_secs_f64(),
                after.as_secs_f64()
            ));
            (
                e.unit.clone(),
                e.process.version,
                e.process.stop_timeout,
                after,
            )
        };
        tracing::warn!(
            prism_process_id = %id,
            %unit,
            "stopping {id}: no admin has answered this launcher for {:.1} s, past its \
             on_disconnect.stop_after_ms ({:.1} s); it starts again when an admin places it here",
            silent.as_secs_f64(),
            after.as_secs_f64()
        );
        match self.systemd.stop(&unit, grace).await {
            Ok(_) | Err(crate::systemd::SystemdError::NoSuchUnit { .. }) => {
                self.metrics.disconnect_stops.inc();
                self.contact.record_stop(pb::DisconnectStop {
                    process_id: id.to_owned(),
                    version,
                    stopped_at_ms: clock::unix_ms(),
                    silent_ms: silent.as_millis() as i64,
                });
            }
            // The reconciler stops it (its plan stops a suspended unit).
            Err(e) => tracing::warn!(prism_process_id = %id, "cannot stop {unit} yet: {e}"),
        }
        self.changed.notify_one();
    }

    /// Processes held but stopped while cut off, which an admin places
    /// here again: started again (through the restore path).
    pub(super) fn resume(&self, ids: &[String]) {
        let now = Instant::now();
        let mut resumed = false;
        let mut table = self.table();
        for id in ids {
            if let Some(e) = table.entries.get_mut(id)
                && e.phase == Phase::Suspended
            {
                tracing::info!(prism_process_id = %id, "starting {id} again: an admin places it here");
                e.restorations = 0;
                e.schedule_restore(now);
                e.last_error = None;
                resumed = true;
            }
        }
        drop(table);
        if resumed {
            self.reconcile.notify_one();
        }
    }

    /// At start-up, after `load`: what a launcher cut off for longer than
    /// a process's `stop_after` must not start again (its admins may run
    /// it elsewhere by now).
    pub fn suspend_overdue(&self) {
        let silent = self.contact.silence(clock::unix_ms());
        let mut table = self.table();
        for e in table.entries.values_mut() {
            if e.phase == Phase::Held
                && e.process
                    .on_disconnect
                    .stop_after
                    .is_some_and(|after| silent >= after)
            {
                tracing::warn!(
                    prism_process_id = %e.process.id,
                    "{} stays stopped: no admin has answered for {:.1} s, past its \
                     on_disconnect.stop_after_ms",
                    e.process.id,
                    silent.as_secs_f64()
                );
                e.phase = Phase::Suspended;
                e.last_error = Some(format!(
                    "stopped by the launcher: no admin answered for {:.1} s; it starts again \
                     when an admin places it here",
                    silent.as_secs_f64()
                ));
                self.contact.record_stop(pb::DisconnectStop {
                    process_id: e.process.id.clone(),
                    version: e.process.version,
                    stopped_at_ms: clock::unix_ms(),
                    silent_ms: silent.as_millis() as i64,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_grow_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = Contact::open(dir.path());
        assert_eq!(c.epoch(), 0);
        c.obey(3).unwrap();
        c.obey(3).unwrap();
        let e = c.obey(2).unwrap_err();
        assert_eq!((e.order, e.obeyed), (2, 3));
        assert!(e.to_string().contains("obeyed admin epoch 3"), "{e}");
        assert!(
            e.to_string()
                .contains("epoch 2 comes from a deposed leader"),
            "{e}"
        );
        let again = Contact::open(dir.path());
        assert_eq!(again.epoch(), 3);
        assert!(again.obey(2).is_err());
    }

    #[test]
    fn silence_counts_from_the_last_answered_request_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = Contact::open(dir.path());
        c.set_interval(Duration::from_secs(1));
        let t0 = clock::unix_ms();
        assert!(
            c.silence(t0 + 10) < Duration::from_secs(1),
            "counted from its start"
        );
        c.answered(t0 + 2_000);
        assert_eq!(c.silence(t0 + 7_000), Duration::from_secs(5));
        // An older answer arriving late changes nothing.
        c.answered(t0 + 1_000);
        assert_eq!(c.silence(t0 + 7_000), Duration::from_secs(5));
        // A restart reads what was written (never later than now).
        write_i64(dir.path(), CONTACT_FILE, t0 - 9_000).unwrap();
        let again = Contact::open(dir.path());
        assert!(again.silence(clock::unix_ms()) >= Duration::from_secs(9));
        write_i64(dir.path(), CONTACT_FILE, t0 + 60_000).unwrap();
        assert!(Contact::open(dir.path()).silence(clock::unix_ms()) < Duration::from_secs(1));
    }

    #[test]
    fn stops_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = Contact::open(dir.path());
        let stop = |id: &str, at| pb::DisconnectStop {
            process_id: id.into(),
            stopped_at_ms: at,
            ..Default::default()
        };
        c.record_stop(stop("a", 1));
        let sent = c.stops();
        c.record_stop(stop("b", 2));
        c.reported(&sent);
        assert_eq!(c.stops(), vec![stop("b", 2)]);
    }
}
