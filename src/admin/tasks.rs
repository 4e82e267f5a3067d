//! The admin's background work: delivering pending pushes with backoff,
//! judging launcher liveness (and replacing the processes of disconnected
//! launchers that allow it), flushing heartbeat data, and operator-driven
//! moves.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use prost::Message;
use tokio::time::Instant;
use tonic::Code;

use super::{
    disconnect,
    dispatch::unreachable,
    events,
    fleet::{DeliveryKind, Fleet, FleetError, State, event, told},
    pending::BACKOFF_MAX,
    placement::{self, Liveness, Request},
    store::{PlacementState, ProcessRecord},
};
use crate::{pb::prism::admin::v1 as apb, serve::Shutdown};

/// How long a flush asked for at once waits for more changes to write
/// with it.
const FLUSH_GATHER: Duration = Duration::from_millis(10);
/// How long a listing waits for batched changes to be written.
const LIST_SETTLE: Duration = Duration::from_secs(1);

impl Fleet {
    /// Deliver pending pushes as they come due (see `pending`), until
    /// shutdown (deliveries in flight finish).
    pub async fn delivery_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let now = Instant::now();
            let (due, next) = self.state.lock().await.pending.take_due(now);
            if !due.is_empty() {
                stream::iter(due)
                    .for_each_concurrent(16, |(launcher, process, kind)| {
                        let this = self.clone();
                        async move { this.deliver(&launcher, &process, kind).await }
                    })
                    .await;
                // What settled changed the queue (retries, a launcher
                // reached again): ask it again.
                continue;
            }
            let next = next.unwrap_or(now + BACKOFF_MAX);
            let woke = shutdown
                .until(async {
                    tokio::select! {
                        _ = self.deliveries.notified() => {}
                        _ = tokio::time::sleep_until(next) => {}
                    }
                })
                .await;
            if woke.is_none() {
                return;
            }
        }
    }

    async fn deliver(&self, launcher: &str, process: &str, kind: DeliveryKind) {
        let _guard = self.locks.lock(process).await;
        let (address, spec) = {
            let mut st = self.state.lock().await;
            let Some(address) = st.launchers.get(launcher).map(|l| l.address.clone()) else {
                st.pending.remove(launcher, process);
                return;
            };
            let spec = match kind {
                DeliveryKind::Assign => match st.processes.get(process) {
                    // Held until its dependencies run (a heartbeat delivers it).
                    Some(p) if st.dependencies_waiting(&p.spec).is_some() => {
                        st.pending.remove(launcher, process);
                        return;
                    }
                    Some(p)
                        if p.launcher_id.as_deref() == Some(launcher)
                            && p.state == PlacementState::Placed =>
                    {
                        Some(p.spec.clone())
                    }
                    // Placed elsewhere by now, or revoked: nothing to deliver.
                    _ => {
                        st.pending.remove(launcher, process);
                        return;
                    }
                },
                DeliveryKind::Revoke { .. } => None,
            };
            (address, spec)
        };
        let result = match (&kind, spec) {
            (DeliveryKind::Assign, Some(spec)) => self
                .dispatcher
                .assign(launcher, &address, &spec)
                .await
                .map(|ack| ack.message),
            (DeliveryKind::Revoke { grace }, _) => {
                match self
                    .dispatcher
                    .revoke(&address, launcher, process, *grace)
                    .await
                {
                    Ok(ack) => Ok(format!("exit code {}", ack.exit_code)),
                    Err(s) if s.code() == Code::NotFound => Ok("it did not hold it".into()),
                    Err(s) => Err(s),
                }
            }
            _ => return,
        };
        match result {
            Ok(detail) => {
                let done = {
                    let mut st = self.state.lock().await;
                    st.pending.remove(launcher, process);
                    // The loop looks again once this batch settles.
                    st.pending.reached(launcher, Instant::now());
                    // A revocation of a process still placed there finishes it.
                    st.processes.get(process).is_some_and(|p| {
                        matches!(kind, DeliveryKind::Revoke { .. })
                            && p.launcher_id.as_deref() == Some(launcher)
                            && p.state == PlacementState::Revoking
                    })
                };
                tracing::info!(
                    prism_launcher_id = %launcher,
                    prism_process_id = %process,
                    "delivered {kind:?} of {process} to {launcher}: {detail}"
                );
                if done && let Err(e) = self.forget(process, launcher, detail).await {
                    tracing::error!(prism_process_id = %process, "cannot record the revocation of {process}: {e}");
                }
            }
            Err(status) => {
                let mut st = self.state.lock().await;
                let label = match kind {
                    DeliveryKind::Assign => "assign",
                    DeliveryKind::Revoke { .. } => "revoke",
                };
                self.metrics
                    .dispatch_retries
                    .get_or_create(&crate::metrics::Kind { kind: label.into() })
                    .inc();
                let unreachable = unreachable(&status);
                if let Some(wait) = st.pending.failed(
                    launcher,
                    process,
                    status.message(),
                    unreachable,
                    Instant::now(),
                    crate::backoff::seed(),
                ) {
                    if unreachable {
                        tracing::debug!(
                            prism_launcher_id = %launcher,
                            prism_process_id = %process,
                            "delivery to {launcher} failed ({}); retrying in {wait:?}",
                            status.message()
                        );
                    } else {
                        tracing::warn!(
                            prism_launcher_id = %launcher,
                            prism_process_id = %process,
                            "{launcher} refused {kind:?} of {process}: {}; retrying in {wait:?}",
                            status.message()
                        );
                    }
                }
            }
        }
    }

    /// Judge liveness every half interval; log changes; replace the
    /// processes of disconnected launchers that allow it.
    pub async fn liveness_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        while shutdown
            .until(tokio::time::sleep(self.interval / 2))
            .await
            .is_some()
        {
            self.judge_liveness(crate::clock::unix_ms()).await;
        }
    }

    /// One liveness pass at `now` (Unix ms): judge every launcher, log the
    /// changes, and replace elsewhere what runs on launchers silent long
    /// enough, where the process allows it (see `disconnect`).
    pub async fn judge_liveness(&self, now: i64) {
        let mut moves = Vec::new();
        {
            let mut st = self.state.lock().await;
            let judged: Vec<(String, Liveness, i64)> = st
                .launchers
                .values()
                .map(|l| {
                    (
                        l.id.clone(),
                        placement::liveness(st.last_heard(l), now, self.interval),
                        st.last_heard(l),
                    )
                })
                .collect();
            for (id, lv, last) in judged {
                let before = st.last_liveness.insert(id.clone(), lv);
                let changed = before.is_some_and(|b| b != lv)
                    || (before.is_none() && lv != Liveness::Healthy);
                let silent = placement::silence(last, now);
                if changed && let Some(l) = st.launchers.get(&id) {
                    let previous = before.unwrap_or(Liveness::Healthy);
                    let message = match lv {
                        Liveness::Healthy => format!("launcher {id} is healthy again"),
                        _ => format!(
                            "launcher {id} is {}: no heartbeat for {:.1} s",
                            lv.as_str(),
                            silent.as_secs_f64()
                        ),
                    };
                    let e = events::launcher(
                        lv.as_str(),
                        l,
                        apb::LauncherChange {
                            health: lv.as_str().into(),
                            previous_health: previous.as_str().into(),
                            last_heartbeat_unix_ms: last,
                            ..Default::default()
                        },
                        message,
                    );
                    self.batch.lock().expect("poisoned").events.push(e);
                    self.flush_soon.notify_one();
                }
                if changed {
                    match lv {
                        Liveness::Healthy => {
                            tracing::info!(prism_launcher_id = %id, "launcher {id} is healthy again")
                        }
                        Liveness::Unhealthy => tracing::warn!(
                            prism_launcher_id = %id,
                            "launcher {id} is unhealthy: no heartbeat for {:.1} s; nothing new is \
                             placed on it",
                            silent.as_secs_f64()
                        ),
                        Liveness::Disconnected => {
                            let (mut replaced, mut kept) = (Vec::new(), 0usize);
                            for p in st.on(&id).filter(|p| p.state == PlacementState::Placed) {
                                match disconnect::replace_after(
                                    &p.spec,
                                    self.replace_after,
                                    self.interval,
                                    self.lease,
                                ) {
                                    Ok(after) => replaced.push(format!(
                                        "{} after {:.1} s",
                                        p.id(),
                                        after.as_secs_f64()
                                    )),
                                    Err(_) => kept += 1,
                                }
                            }
                            tracing::warn!(
                                prism_launcher_id = %id,
                                "launcher {id} is disconnected: no heartbeat for {:.1} s; its \
                                 processes are unknown; {kept} stay placed on it{}",
                                silent.as_secs_f64(),
                                if replaced.is_empty() {
                                    String::new()
                                } else {
                                    format!("; replaced elsewhere: {}", replaced.join(", "))
                                }
                            );
                        }
                    }
                }
                if lv == Liveness::Disconnected {
                    moves.extend(
                        st.on(&id)
                            .filter(|p| p.state == PlacementState::Placed)
                            .filter(|p| {
                                disconnect::replace_after(
                                    &p.spec,
                                    self.replace_after,
                                    self.interval,
                                    self.lease,
                                )
                                .is_ok_and(|after| silent >= after)
                            })
                            .map(|p| (p.id().to_owned(), id.clone(), silent)),
                    );
                }
            }
        }
        for (process, from, silent) in moves {
            if let Err(e) = self.reschedule(&process, &from, silent).await {
                tracing::warn!(prism_process_id = %process, "cannot replace {process} away from disconnected {from}: {e}");
            }
        }
    }

    /// Place `p` on a launcher other than `from`, store it with the history
    /// event `name` (and `detail`), and return the new launcher.
    async fn place_away(
        &self,
        st: &mut State,
        p: &ProcessRecord,
        from: &str,
        name: &str,
        detail: String,
    ) -> Result<String, FleetError> {
        let rules = crate::model::validate::placement_of(&p.spec);
        let candidates = st.candidates(
            crate::clock::unix_ms(),
            self.interval,
            rules.spread_group.as_deref(),
            p.id(),
        );
        let target = placement::choose(
            &candidates,
            &Request {
                process_type: p.process_type(),
                exclude: &[from],
                spec_bytes: p.spec.encoded_len(),
                rules: Some(&rules),
                ..Request::default()
            },
        )?;
        let mut next = p.clone();
        next.launcher_id = Some(target.clone());
        next.updated_at_ms = crate::clock::unix_ms();
        let mut e = told(
            name,
            "placed",
            &p.spec,
            &target,
            detail.clone(),
            format!(
                "placed {} v{} on {target}, {name} {detail}",
                p.id(),
                p.version()
            ),
        );
        if let Some(change) = e.watched.as_mut().and_then(|w| w.process.as_mut()) {
            change.previous_launcher_id = from.to_owned();
        }
        self.store.put_process(&next, &e).await?;
        st.put(next);
        Ok(target)
    }

    async fn reschedule(
        &self,
        process: &str,
        from: &str,
        silent: Duration,
    ) -> Result<(), FleetError> {
        let _guard = self.locks.lock(process).await;
        let mut st = self.state.lock().await;
        let Some(p) = st.processes.get(process).cloned() else {
            return Ok(());
        };
        if p.launcher_id.as_deref() != Some(from) || p.state != PlacementState::Placed {
            return Ok(());
        }
        let target = self
            .place_away(
                &mut st,
                &p,
                from,
                "rescheduled",
                format!(
                    "from {from}, silent for {:.1} s (its on_disconnect allows it)",
                    silent.as_secs_f64()
                ),
            )
            .await?;
        tracing::warn!(
            prism_process_id = %process,
            "replaced {process} on {target}: its launcher {from} has been silent for {:.1} s",
            silent.as_secs_f64()
        );
        self.schedule(&mut st, &target, process, DeliveryKind::Assign);
        Ok(())
    }

    /// Write heartbeat data in batches, once a second, and changes
    /// watchers are told of at once (those of the next few milliseconds
    /// together), until shutdown (the daemon writes what is left after its
    /// servers stopped).
    pub async fn flush_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let due = async {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.flush_soon.notified() => {
                        tokio::time::sleep(FLUSH_GATHER).await;
                    }
                }
            };
            if shutdown.until(due).await.is_none() {
                return;
            }
            self.flush().await;
        }
    }

    /// Write what heartbeats and deliveries batched. The write runs to its
    /// end even when the caller is cancelled (the flush loop at shutdown),
    /// and one write at a time: the last flush at shutdown follows any
    /// write still running.
    pub async fn flush(self: &Arc<Self>) {
        let this = self.clone();
        let _ = tokio::spawn(async move { this.write_batch().await }).await;
    }

    async fn write_batch(&self) {
        let _one = self.flush_lock.lock().await;
        self.write_batch_locked().await;
    }
    /// Before a listing: write the changes watchers are told of that are
    /// still batched (waiting at most [`LIST_SETTLE`], never holding the
    /// fleet's state), so that the listing's revision counts them.
    pub(crate) async fn settle_for_listing(self: &Arc<Self>) {
        if self.loaded_revision.is_some() {
            return;
        }
        let waiting = {
            let batch = self.batch.lock().expect("poisoned");
            !batch.history.is_empty() || !batch.events.is_empty()
        } || !self.flushing.lock().expect("poisoned").is_empty();
        if waiting {
            // The write goes on if the wait ends.
            let _ = tokio::time::timeout(LIST_SETTLE, self.flush()).await;
        }
    }

    /// The revision a listing made now reflects, for a caller holding the
    /// fleet's state: every event up to it is reflected (a change batched
    /// is applied to the state first, a placement written under the state's
    /// lock). Exact after [`Self::settle_for_listing`]; should the database
    /// be slower than that, a change of the listing may come again as an
    /// event, never be missed. A view reflects what it loaded.
    pub(crate) fn listing_revision(&self) -> i64 {
        self.loaded_revision
            .unwrap_or_else(|| self.store.written().head())
    }

    async fn write_batch_locked(&self) {
        let batch = {
            let mut waiting = self.batch.lock().expect("poisoned");
            let batch = std::mem::take(&mut *waiting);
            self.flushing
                .lock()
                .expect("poisoned")
                .clone_from(&batch.history);
            batch
        };
        if !batch.is_empty()
            && let Err(e) = self.store.save_heartbeats(&batch).await
        {
            // Only changes are batched: what was not written is put back
            // for the next try, under what arrived meanwhile.
            tracing::error!("cannot save heartbeats (retrying within a second): {e}");
            self.batch.lock().expect("poisoned").put_back(batch);
        }
        self.flushing.lock().expect("poisoned").clear();
    }

    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<(), FleetError> {
        let mut st = self.state.lock().await;
        let l = st
            .launchers
            .get_mut(id)
            .ok_or_else(|| FleetError::NotFound {
                what: "launcher",
                id: id.to_owned(),
            })?;
        let mut after = l.clone();
        after.draining = draining;
        let (kind, message) = if draining {
            (
                "drained",
                format!("launcher {id} is draining: nothing new is placed on it"),
            )
        } else {
            (
                "undrained",
                format!("launcher {id} takes new processes again"),
            )
        };
        let e = events::launcher(kind, &after, apb::LauncherChange::default(), message);
        self.store.set_draining(id, draining, &[e]).await?;
        l.draining = draining;
        tracing::info!(
            launcher = id,
            "launcher {id} {}",
            if draining {
                "draining"
            } else {
                "no longer draining"
            }
        );
        Ok(())
    }

    /// Re-place a launcher's processes one at a time: each starts on its new
    /// launcher before it is revoked from the old one.
    pub async fn move_processes(&self, from: &str) -> Result<Vec<apb::MovedProcess>, FleetError> {
        let ids: Vec<String> = {
            let st = self.state.lock().await;
            if !st.launchers.contains_key(from) {
                return Err(FleetError::NotFound {
                    what: "launcher",
                    id: from.to_owned(),
                });
            }
            st.on(from)
                .filter(|p| p.state == PlacementState::Placed)
                .map(|p| p.id().to_owned())
                .collect()
        };
        let mut moved = Vec::new();
        for id in ids {
            let result = self.move_one(&id, from).await;
            moved.push(match result {
                Ok(to) => apb::MovedProcess {
                    process_id: id,
                    from_launcher: from.into(),
                    to_launcher: to,
                    success: true,
                    message: String::new(),
                },
                Err(e) => apb::MovedProcess {
                    process_id: id,
                    from_launcher: from.into(),
                    to_launcher: String::new(),
                    success: false,
                    message: e.to_string(),
                },
            });
        }
        Ok(moved)
    }

    async fn move_one(&self, id: &str, from: &str) -> Result<String, FleetError> {
        let _guard = self.locks.lock(id).await;
        let (target, previous) = {
            let mut st = self.state.lock().await;
            let p = st
                .processes
                .get(id)
                .cloned()
                .filter(|p| p.launcher_id.as_deref() == Some(from))
                .ok_or_else(|| FleetError::NotFound {
                    what: "process",
                    id: id.to_owned(),
                })?;
            let target = self
                .place_away(&mut st, &p, from, "moving", format!("from {from}"))
                .await?;
            // Its copy on `from` stays until the new one runs.
            st.moving.insert((id.to_owned(), from.to_owned()));
            (target, p)
        };
        let target_address = self.address_of(&target).await.unwrap_or_default();
        let started = self
            .dispatcher
            .assign(&target, &target_address, &previous.spec)
            .await;
        let mut st = self.state.lock().await;
        st.moving.remove(&(id.to_owned(), from.to_owned()));
        match started {
            Ok(_) => {
                self.store
                    .put_process(
                        &st.processes[id],
                        &event("moved", previous.version(), &target, format!("from {from}")),
                    )
                    .await?;
                self.schedule(&mut st, from, id, DeliveryKind::Revoke { grace: 0 });
                Ok(target)
            }
            Err(status) => {
                let mut e = told(
                    "move failed",
                    "placed",
                    &previous.spec,
                    from,
                    status.message(),
                    format!(
                        "{id} stays on {from}: {target} could not start it: {}",
                        status.message()
                    ),
                );
                if let Some(change) = e.watched.as_mut().and_then(|w| w.process.as_mut()) {
                    change.previous_launcher_id.clone_from(&target);
                }
                self.store.put_process(&previous, &e).await?;
                st.put(previous);
                Err(FleetError::Refused {
                    launcher: target,
                    status,
                })
            }
        }
    }
}
