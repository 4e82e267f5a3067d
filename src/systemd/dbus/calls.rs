//! Method calls with deadlines, jobs and the waits on them.

use super::{wire::*, *};

/// A job systemd created, and the connection epoch it belongs to.
pub(super) struct Job {
    pub(super) path: String,
    pub(super) epoch: u64,
}

impl Inner {
    pub(super) fn set_error(&self, e: String) {
        *self.last_error.lock().expect("poisoned") = e;
    }

    pub(super) fn unavailable(&self) -> SystemdError {
        SystemdError::Unavailable {
            target: self.opts.target.to_string(),
            reason: self.last_error.lock().expect("poisoned").clone(),
        }
    }

    pub(super) async fn connection(&self, timeout: Duration) -> Result<Connection, SystemdError> {
        let mut rx = self.conn.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(conn)) => Ok(conn.clone().expect("waited for Some")),
            _ => Err(self.unavailable()),
        }
    }

    /// One method call with the in-flight bound and the call deadline.
    pub(super) async fn call<B>(
        &self,
        method: &'static str,
        unit: &str,
        path: &str,
        interface: &str,
        body: &B,
    ) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::wire::DynamicType + Sync,
    {
        let timeout = self.opts.call_timeout;
        let work = async {
            let conn = self.connection(timeout).await?;
            let _permit = self
                .in_flight
                .acquire()
                .await
                .expect("semaphore never closed");
            conn.call_method(Some(DEST), path, Some(interface), method, body)
                .await
                .map_err(|e| map_error(method, unit, e, self))
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SystemdError::Timeout {
                what: method,
                unit: unit.to_owned(),
                after: timeout,
            }),
        };
        // Typed answers (UnitExists, NoSuchUnit) are outcomes, not errors.
        if let Err(
            SystemdError::Timeout { .. }
            | SystemdError::Unavailable { .. }
            | SystemdError::Refused { .. }
            | SystemdError::Dbus { .. },
        ) = &result
        {
            self.call_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    pub(super) async fn manager_call<B>(
        &self,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::wire::DynamicType + Sync,
    {
        self.call(method, unit, MANAGER_PATH, MANAGER_IFACE, body)
            .await
    }

    /// A call that creates a job; the job is tied to the connection it was
    /// created on, so its end can never be confused with a later manager's.
    pub(super) async fn job_call<B>(
        &self,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<Job, SystemdError>
    where
        B: serde::Serialize + zbus::wire::DynamicType + Sync,
    {
        let epoch = self.hub.epoch();
        let reply = self.manager_call(method, unit, body).await?;
        let path: OwnedObjectPath = decode(method, unit, &reply)?;
        Ok(Job {
            path: path.as_str().to_owned(),
            epoch,
        })
    }

    /// Wait for a job's end within `deadline`.
    pub(super) async fn wait_job(
        &self,
        job: &Job,
        unit: &str,
        deadline: Duration,
    ) -> Result<String, SystemdError> {
        let rx = self.hub.watch_job(&job.path, job.epoch);
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(JobOutcome::Finished(result))) => Ok(result),
            Ok(Ok(JobOutcome::Disconnected)) | Ok(Err(_)) => Err(self.unavailable()),
            Err(_) => {
                self.hub.unwatch_job(&job.path);
                Err(SystemdError::Timeout {
                    what: "job",
                    unit: unit.to_owned(),
                    after: deadline,
                })
            }
        }
    }

    pub(super) async fn get_unit(&self, unit: &str) -> Result<String, SystemdError> {
        let reply = self.manager_call("GetUnit", unit, &(unit,)).await?;
        let path: OwnedObjectPath = decode("GetUnit", unit, &reply)?;
        Ok(path.as_str().to_owned())
    }

    pub(super) async fn get_all(
        &self,
        unit: &str,
        path: &str,
        interface: &str,
    ) -> Result<HashMap<String, OwnedVariant>, SystemdError> {
        let reply = self
            .call("GetAll", unit, path, PROPS_IFACE, &(interface,))
            .await?;
        decode("GetAll", unit, &reply)
    }

    pub(super) async fn unit_status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let path = self.get_unit(unit).await?;
        let mut status = UnitStatus::new(unit);
        status.merge(&self.get_all(unit, &path, UNIT_IFACE).await?);
        status.merge(&self.get_all(unit, &path, SERVICE_IFACE).await?);
        Ok(status)
    }

    pub(super) async fn list_units(&self) -> Result<Vec<UnitSummary>, SystemdError> {
        let states: Vec<&str> = Vec::new();
        let reply = self
            .manager_call(
                "ListUnitsByPatterns",
                "prism-<type>-*.service",
                &(states, unit::SERVICE_PATTERNS.to_vec()),
            )
            .await?;
        let rows: Vec<ListedUnit> =
            decode("ListUnitsByPatterns", "prism-<type>-*.service", &reply)?;
        Ok(rows
            .into_iter()
            .map(|r| UnitSummary {
                name: r.0,
                description: r.1,
                load_state: r.2,
                active_state: r.3,
                sub_state: r.4,
                has_job: r.7 != 0,
            })
            .collect())
    }

    /// Wait until `unit` is unloaded, helping it along: a failed unit stays
    /// loaded until its failure is reset. Returns the last state of it seen
    /// in `events` meanwhile: systemd may signal the final properties (exit
    /// code and status) after the job's end.
    pub(super) async fn wait_unloaded(
        &self,
        unit: &str,
        events: &mut broadcast::Receiver<UnitEvent>,
    ) -> Result<Option<UnitStatus>, SystemdError> {
        let deadline = tokio::time::Instant::now() + self.opts.call_timeout;
        let mut seen: Option<UnitStatus> = None;
        let note = |event: UnitEvent, seen: &mut Option<UnitStatus>| match event {
            UnitEvent::Changed(s) if s.name == unit => {
                *seen = Some(*s);
                false
            }
            UnitEvent::Removed { unit: u } => u == unit,
            _ => false,
        };
        loop {
            match self.get_unit(unit).await {
                Err(SystemdError::NoSuchUnit { .. }) => {
                    // What was signalled before it went.
                    while let Ok(event) = events.try_recv() {
                        note(event, &mut seen);
                    }
                    return Ok(seen);
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            match self.manager_call("ResetFailedUnit", unit, &(unit,)).await {
                Ok(_) | Err(SystemdError::NoSuchUnit { .. }) => {}
                Err(e) => return Err(e),
            }
            // Wait for the removal signal, then check again.
            let removed = async {
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            if note(event, &mut seen) {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                    }
                }
            };
            let step = deadline.saturating_duration_since(tokio::time::Instant::now());
            if step.is_zero() {
                return Err(SystemdError::Timeout {
                    what: "unload",
                    unit: unit.to_owned(),
                    after: self.opts.call_timeout,
                });
            }
            let _ = tokio::time::timeout(step.min(Duration::from_millis(500)), removed).await;
        }
    }

    pub(super) async fn finish_start(&self, unit: &str, job: &Job) -> Result<(), SystemdError> {
        let result = self.wait_job(job, unit, self.opts.start_timeout).await?;
        if result == "done" {
            return Ok(());
        }
        let status = match self.unit_status(unit).await {
            Ok(s) => s,
            Err(_) => self
                .hub
                .last_known(unit)
                .unwrap_or_else(|| UnitStatus::new(unit)),
        };
        Err(SystemdError::StartFailed {
            unit: unit.to_owned(),
            job_result: result,
            status: Box::new(status),
        })
    }
}
