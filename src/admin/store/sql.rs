//! The SQL both stores run: the statements are written once, with `$n`
//! parameters (SQLite reads them as positional too), and [`sql_store!`]
//! implements [`AdminStore`](super::AdminStore) with them for a store
//! that has a `pool` and a `fence`, the check that makes a write
//! transaction commit only under this admin's lease.

use prost::Message;

use super::StoreError;

/// Events one INSERT writes on SQLite (4 parameters each; PostgreSQL binds
/// arrays).
pub const EVENTS_PER_INSERT: usize = 500;

/// History kept per process (its newest events).
pub const HISTORY_KEEP: i64 = 200;
/// History older than this is removed when an admin starts leading.
pub const HISTORY_MAX_AGE_MS: i64 = 30 * 24 * 3600 * 1000;

pub(super) fn corrupt(what: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        reason: reason.to_string(),
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    id: &str,
    col: &str,
    text: String,
) -> Result<T, StoreError> {
    serde_json::from_str(&text).map_err(|e| corrupt(format!("launcher {id} {col}"), e))
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) fn decode<M: Message + Default>(what: String, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| corrupt(what, e))
}

pub(super) const INSERT_HISTORY: &str = "INSERT INTO history (process_id, at, event, version, launcher_id, detail) \
     VALUES ($1, $2, $3, $4, $5, $6)";
/// Retention: the newest HISTORY_KEEP events of a process (trimmed in the
/// background).
pub(super) const TRIM_HISTORY: &str = "DELETE FROM history WHERE process_id = $1 AND seq <= \
     (SELECT seq FROM history WHERE process_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)";
pub(super) const UPSERT_LAUNCHER: &str = "INSERT INTO launchers (id, address, region, version, \
     capabilities, process_types, max_processes, metadata, registered_at, last_heartbeat_at, \
     draining, resources) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (id) DO UPDATE SET address = excluded.address, region = excluded.region, \
     version = excluded.version, capabilities = excluded.capabilities, \
     process_types = excluded.process_types, max_processes = excluded.max_processes, \
     metadata = excluded.metadata, registered_at = excluded.registered_at, \
     last_heartbeat_at = excluded.last_heartbeat_at, draining = excluded.draining, \
     resources = excluded.resources";
pub(super) const UPSERT_PROCESS: &str = "INSERT INTO processes (id, version, process_type, \
     namespace, spec, launcher_id, state, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
     process_type = excluded.process_type, namespace = excluded.namespace, \
     spec = excluded.spec, launcher_id = excluded.launcher_id, state = excluded.state, \
     updated_at = excluded.updated_at";
pub(super) const UPSERT_HEALTH: &str = "INSERT INTO process_health (process_id, health, reported_at) VALUES ($1, $2, $3) \
     ON CONFLICT (process_id) DO UPDATE SET health = excluded.health, \
     reported_at = excluded.reported_at";
/// By time: status changes are written in batches, after events recorded
/// at once.
pub(super) const SELECT_HISTORY: &str = "SELECT at, event, version, launcher_id, detail FROM history WHERE process_id = $1 \
     ORDER BY at DESC, seq DESC LIMIT $2";

/// `impl AdminStore for $store` over `sqlx::$db`: the store has a `pool`,
/// `async fn fence(&self, tx)` (run first in every write transaction),
/// `async fn lease(&self, me, ttl)` and `async fn give_up(&self, me)`.
macro_rules! sql_store {
    ($store:ty, $db:ty, shared = $shared:expr) => {
        #[async_trait::async_trait]
        impl $crate::admin::store::AdminStore for $store {
            async fn lead(
                &self,
                me: &$crate::admin::store::Candidate,
                ttl: std::time::Duration,
            ) -> Result<$crate::admin::store::Lease, StoreError> {
                self.lease(me, ttl).await
            }

            async fn resign(&self, me: &$crate::admin::store::Candidate) -> Result<(), StoreError> {
                self.give_up(me).await
            }

            fn shared(&self) -> bool {
                $shared
            }

            async fn load(&self) -> Result<Snapshot, StoreError> {
                use sqlx::Row;
                use $crate::admin::store::sql::{corrupt, decode, parse_json};
                let mut snapshot = Snapshot::default();
                // One snapshot: the state as of one revision of the log.
                let mut tx = self.read_tx().await?;
                snapshot.revision =
                    sqlx::query_scalar("SELECT revision FROM event_head WHERE id = 1")
                        .fetch_one(&mut *tx)
                        .await?;
                for row in sqlx::query("SELECT * FROM launchers")
                    .fetch_all(&mut *tx)
                    .await?
                {
                    let id: String = row.try_get("id")?;
                    let resources: Option<Vec<u8>> = row.try_get("resources")?;
                    snapshot.launchers.push(LauncherRecord {
                        address: row.try_get("address")?,
                        region: row.try_get("region")?,
                        version: row.try_get("version")?,
                        capabilities: parse_json(
                            &id,
                            "capabilities",
                            row.try_get("capabilities")?,
                        )?,
                        process_types: parse_json(
                            &id,
                            "process_types",
                            row.try_get("process_types")?,
                        )?,
                        max_processes: u32::try_from(row.try_get::<i64, _>("max_processes")?)
                            .map_err(|e| corrupt(format!("launcher {id} max_processes"), e))?,
                        metadata: parse_json(&id, "metadata", row.try_get("metadata")?)?,
                        registered_at_ms: row.try_get("registered_at")?,
                        last_heartbeat_ms: row.try_get("last_heartbeat_at")?,
                        draining: row.try_get("draining")?,
                        resources: match resources {
                            Some(b) => Some(decode(format!("launcher {id} resources"), &b)?),
                            None => None,
                        },
                        id,
                    });
                }
                for row in sqlx::query("SELECT * FROM processes")
                    .fetch_all(&mut *tx)
                    .await?
                {
                    let id: String = row.try_get("id")?;
                    let spec: Vec<u8> = row.try_get("spec")?;
                    let state: String = row.try_get("state")?;
                    snapshot.processes.push(ProcessRecord {
                        spec: decode(format!("process {id} spec"), &spec)?,
                        launcher_id: row.try_get("launcher_id")?,
                        state: PlacementState::parse(&state)
                            .ok_or_else(|| corrupt(format!("process {id} state"), &state))?,
                        created_at_ms: row.try_get("created_at")?,
                        updated_at_ms: row.try_get("updated_at")?,
                    });
                }
                for row in sqlx::query("SELECT * FROM process_health")
                    .fetch_all(&mut *tx)
                    .await?
                {
                    let id: String = row.try_get("process_id")?;
                    let health: Vec<u8> = row.try_get("health")?;
                    snapshot.health.insert(
                        id.clone(),
                        HealthRecord {
                            health: decode(format!("process {id} health"), &health)?,
                            reported_at_ms: row.try_get("reported_at")?,
                        },
                    );
                }
                tx.commit().await?;
                self.written.committed(snapshot.revision);
                Ok(snapshot)
            }

            async fn prune_history(&self, before_ms: i64) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                sqlx::query("DELETE FROM history WHERE at < $1")
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn upsert_launcher(
                &self,
                l: &LauncherRecord,
                events: &[$crate::pb::prism::admin::v1::Event],
            ) -> Result<(), StoreError> {
                use $crate::admin::store::sql::{UPSERT_LAUNCHER, json};
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                sqlx::query(UPSERT_LAUNCHER)
                    .bind(&l.id)
                    .bind(&l.address)
                    .bind(&l.region)
                    .bind(&l.version)
                    .bind(json(&l.capabilities))
                    .bind(json(&l.process_types))
                    .bind(i64::from(l.max_processes))
                    .bind(json(&l.metadata))
                    .bind(l.registered_at_ms)
                    .bind(l.last_heartbeat_ms)
                    .bind(l.draining)
                    .bind(l.resources.as_ref().map(prost::Message::encode_to_vec))
                    .execute(&mut *tx)
                    .await?;
                self.commit(tx, events.iter()).await
            }

            async fn set_draining(
                &self,
                id: &str,
                draining: bool,
                events: &[$crate::pb::prism::admin::v1::Event],
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                sqlx::query("UPDATE launchers SET draining = $1 WHERE id = $2")
                    .bind(draining)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                self.commit(tx, events.iter()).await
            }

            async fn put_process(
                &self,
                p: &ProcessRecord,
                event: &HistoryEvent,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                sqlx::query($crate::admin::store::sql::UPSERT_PROCESS)
                    .bind(p.id())
                    .bind(p.version())
                    .bind(p.process_type())
                    .bind(&p.spec.namespace)
                    .bind(prost::Message::encode_to_vec(&p.spec))
                    .bind(&p.launcher_id)
                    .bind(p.state.as_str())
                    .bind(p.created_at_ms)
                    .bind(p.updated_at_ms)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_history(&mut tx, &[(p.id(), event)]).await?;
                self.commit(tx, event.watched.iter()).await?;
                self.written.grew([p.id()]);
                Ok(())
            }

            async fn delete_process(
                &self,
                id: &str,
                event: &HistoryEvent,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                sqlx::query("DELETE FROM processes WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM process_health WHERE process_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_history(&mut tx, &[(id, event)]).await?;
                self.commit(tx, event.watched.iter()).await?;
                self.written.grew([id]);
                Ok(())
            }

            async fn save_heartbeats(&self, batch: &HeartbeatBatch) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                Self::write_reports(&mut tx, batch).await?;
                // In the order they happened: the histories' first (each
                // status change is one), then the rest.
                let events = batch
                    .history
                    .iter()
                    .filter_map(|(_, e)| e.watched.as_ref())
                    .chain(&batch.events);
                self.commit(tx, events).await?;
                self.written
                    .grew(batch.history.iter().map(|(id, _)| id.as_str()));
                Ok(())
            }

            async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEvent>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query($crate::admin::store::sql::SELECT_HISTORY)
                    .bind(id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|r| {
                        Ok(HistoryEvent {
                            at_ms: r.try_get("at")?,
                            event: r.try_get("event")?,
                            version: r.try_get("version")?,
                            launcher_id: r.try_get("launcher_id")?,
                            detail: r.try_get("detail")?,
                            watched: None,
                        })
                    })
                    .collect()
            }

            async fn events_after(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::pb::prism::admin::v1::Event>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT revision, event FROM events WHERE revision > $1 \
                     ORDER BY revision LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|r| {
                        let revision: i64 = r.try_get("revision")?;
                        let bytes: Vec<u8> = r.try_get("event")?;
                        let mut e: $crate::pb::prism::admin::v1::Event =
                            $crate::admin::store::sql::decode(format!("event {revision}"), &bytes)?;
                        e.revision = revision;
                        Ok(e)
                    })
                    .collect()
            }

            async fn event_bounds(&self) -> Result<$crate::admin::store::EventBounds, StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT (SELECT min(revision) FROM events) AS oldest, \
                     (SELECT revision FROM event_head WHERE id = 1) AS head",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok($crate::admin::store::EventBounds {
                    oldest: row.try_get("oldest")?,
                    head: row.try_get("head")?,
                })
            }

            async fn prune_events(&self, keep: i64, before_ms: i64) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await?;
                self.fence(&mut tx).await?;
                let gone = sqlx::query(
                    // A prefix only: `at` is when an event was made, and a
                    // batch commits a little later, so by age alone a hole
                    // could open in the middle of the log.
                    "DELETE FROM events WHERE revision <= \
                     (SELECT revision FROM event_head WHERE id = 1) - $1 OR revision <= \
                     (SELECT max(revision) FROM events WHERE at < $2)",
                )
                .bind(keep)
                .bind(before_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(gone)
            }

            async fn trim_histories(&self) -> Result<u64, StoreError> {
                let ids = self.written.take_grown();
                if ids.is_empty() {
                    return Ok(0);
                }
                match Self::trim(&self.pool, &ids).await {
                    Ok(gone) => Ok(gone),
                    Err(e) => {
                        // Trimmed next time.
                        self.written.grew(ids.iter().map(String::as_str));
                        Err(e)
                    }
                }
            }

            fn written(&self) -> &$crate::admin::store::Written {
                &self.written
            }
        }

        impl $store {
            /// Append `events` to the log (their revisions the next ones,
            /// taken last so that the head's row is held only until the
            /// commit), and commit.
            async fn commit<'e>(
                &self,
                mut tx: sqlx::Transaction<'_, $db>,
                events: impl Iterator<Item = &'e $crate::pb::prism::admin::v1::Event>,
            ) -> Result<(), StoreError> {
                let events: Vec<&$crate::pb::prism::admin::v1::Event> = events.collect();
                if events.is_empty() {
                    tx.commit().await?;
                    return Ok(());
                }
                // Numbered last, just before the commit: the head's row lock
                // orders every writer's events by commit and is held as
                // briefly as can be.
                let head = Self::append_events(&mut tx, &events).await?;
                tx.commit().await?;
                self.written.committed_events(head, &events);
                Ok(())
            }
        }
    };
}

pub(super) use sql_store;
