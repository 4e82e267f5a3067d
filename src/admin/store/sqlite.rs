//! [`AdminStore`] on SQLite (WAL mode, migrations embedded in the binary).

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use prost::Message;
use sqlx::{
    Row,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

fn corrupt(what: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        reason: reason.to_string(),
    }
}

impl SqliteStore {
    /// Open (creating) `<dir>/admin.db` and apply pending migrations.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(dir.join("admin.db"))
            .create_if_missing(true)
            // Readers never block the writer; a crash never corrupts.
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is on disk when it returns, so an
            // acknowledged placement survives power loss, not only a crash
            // of the admin (WAL with NORMAL may lose the last commits).
            // Heartbeat data is batched once a second, so this costs one
            // fsync per placement, revocation or batch.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("src/admin/store/migrations")
            .run(&pool)
            .await?;
        sqlx::query("DELETE FROM history WHERE at < ?")
            .bind(crate::clock::unix_ms() - HISTORY_MAX_AGE_MS)
            .execute(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// An in-memory database, for tests and benchmarks.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
            .await?;
        sqlx::migrate!("src/admin/store/migrations")
            .run(&pool)
            .await?;
        Ok(Self { pool })
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    id: &str,
    col: &str,
    text: String,
) -> Result<T, StoreError> {
    serde_json::from_str(&text).map_err(|e| corrupt(format!("launcher {id} {col}"), e))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

async fn add_history(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    e: &HistoryEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO history (process_id, at, event, version, launcher_id, detail) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(e.at_ms)
    .bind(&e.event)
    .bind(e.version)
    .bind(&e.launcher_id)
    .bind(&e.detail)
    .execute(&mut **tx)
    .await?;
    // Retention: the newest HISTORY_KEEP events of each process.
    sqlx::query(
        "DELETE FROM history WHERE process_id = ? AND seq <= \
         (SELECT seq FROM history WHERE process_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
    )
    .bind(id)
    .bind(id)
    .bind(HISTORY_KEEP)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// History kept per process (its newest events).
pub const HISTORY_KEEP: i64 = 200;
/// History older than this is removed when the admin starts.
pub const HISTORY_MAX_AGE_MS: i64 = 30 * 24 * 3600 * 1000;

#[async_trait]
impl AdminStore for SqliteStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        for row in sqlx::query("SELECT * FROM launchers")
            .fetch_all(&self.pool)
            .await?
        {
            let id: String = row.try_get("id")?;
            let resources: Option<Vec<u8>> = row.try_get("resources")?;
            snapshot.launchers.push(LauncherRecord {
                address: row.try_get("address")?,
                region: row.try_get("region")?,
                version: row.try_get("version")?,
                capabilities: parse_json(&id, "capabilities", row.try_get("capabilities")?)?,
                process_types: parse_json(&id, "process_types", row.try_get("process_types")?)?,
                max_processes: row.try_get::<i64, _>("max_processes")? as u32,
                metadata: parse_json(&id, "metadata", row.try_get("metadata")?)?,
                registered_at_ms: row.try_get("registered_at")?,
                last_heartbeat_ms: row.try_get("last_heartbeat_at")?,
                draining: row.try_get::<i64, _>("draining")? != 0,
                resources: match resources {
                    Some(b) => Some(
                        pb::LauncherResourceUsage::decode(b.as_slice())
                            .map_err(|e| corrupt(format!("launcher {id} resources"), e))?,
                    ),
                    None => None,
                },
                id,
            });
        }
        for row in sqlx::query("SELECT * FROM processes")
            .fetch_all(&self.pool)
            .await?
        {
            let id: String = row.try_get("id")?;
            let spec: Vec<u8> = row.try_get("spec")?;
            let state: String = row.try_get("state")?;
            snapshot.processes.push(ProcessRecord {
                spec: pb::ProcessAssignment::decode(spec.as_slice())
                    .map_err(|e| corrupt(format!("process {id} spec"), e))?,
                launcher_id: row.try_get("launcher_id")?,
                state: PlacementState::parse(&state)
                    .ok_or_else(|| corrupt(format!("process {id} state"), &state))?,
                created_at_ms: row.try_get("created_at")?,
                updated_at_ms: row.try_get("updated_at")?,
            });
        }
        for row in sqlx::query("SELECT * FROM process_health")
            .fetch_all(&self.pool)
            .await?
        {
            let id: String = row.try_get("process_id")?;
            let health: Vec<u8> = row.try_get("health")?;
            snapshot.health.insert(
                id.clone(),
                HealthRecord {
                    health: pb::ProcessHealth::decode(health.as_slice())
                        .map_err(|e| corrupt(format!("process {id} health"), e))?,
                    reported_at_ms: row.try_get("reported_at")?,
                },
            );
        }
        Ok(snapshot)
    }

    async fn upsert_launcher(&self, l: &LauncherRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO launchers (id, address, region, version, capabilities, process_types, \
             max_processes, metadata, registered_at, last_heartbeat_at, draining, resources) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, region = excluded.region, \
             version = excluded.version, capabilities = excluded.capabilities, \
             process_types = excluded.process_types, max_processes = excluded.max_processes, \
             metadata = excluded.metadata, registered_at = excluded.registered_at, \
             last_heartbeat_at = excluded.last_heartbeat_at, draining = excluded.draining, \
             resources = excluded.resources",
        )
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
        .bind(i64::from(l.draining))
        .bind(l.resources.as_ref().map(Message::encode_to_vec))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_draining(&self, id: &str, draining: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE launchers SET draining = ? WHERE id = ?")
            .bind(i64::from(draining))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn put_process(&self, p: &ProcessRecord, event: &HistoryEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO processes (id, version, process_type, namespace, spec, launcher_id, \
             state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
             process_type = excluded.process_type, namespace = excluded.namespace, \
             spec = excluded.spec, launcher_id = excluded.launcher_id, state = excluded.state, \
             updated_at = excluded.updated_at",
        )
        .bind(p.id())
        .bind(p.version())
        .bind(p.process_type())
        .bind(&p.spec.namespace)
        .bind(p.spec.encode_to_vec())
        .bind(&p.launcher_id)
        .bind(p.state.as_str())
        .bind(p.created_at_ms)
        .bind(p.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        add_history(&mut tx, p.id(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_process(&self, id: &str, event: &HistoryEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM processes WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM process_health WHERE process_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        add_history(&mut tx, id, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_heartbeats(&self, batch: &HeartbeatBatch) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, (at, resources)) in &batch.launchers {
            sqlx::query("UPDATE launchers SET last_heartbeat_at = ?, resources = ? WHERE id = ?")
                .bind(at)
                .bind(resources.as_ref().map(Message::encode_to_vec))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for (id, h) in &batch.health {
            sqlx::query(
                "INSERT INTO process_health (process_id, health, reported_at) VALUES (?, ?, ?) \
                 ON CONFLICT (process_id) DO UPDATE SET health = excluded.health, \
                 reported_at = excluded.reported_at",
            )
            .bind(id)
            .bind(h.health.encode_to_vec())
            .bind(h.reported_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        for (id, event) in &batch.history {
            add_history(&mut tx, id, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEvent>, StoreError> {
        let rows = sqlx::query(
            // By time: status changes are written in batches, after
            // events recorded at once.
            "SELECT at, event, version, launcher_id, detail FROM history WHERE process_id = ? \
             ORDER BY at DESC, seq DESC LIMIT ?",
        )
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
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(id: &str) -> LauncherRecord {
        LauncherRecord {
            id: id.into(),
            address: "127.0.0.1:7070".into(),
            region: "eu".into(),
            version: "0.1.0".into(),
            capabilities: vec!["pattern".into()],
            process_types: vec!["pattern".into()],
            max_processes: 10,
            metadata: BTreeMap::from([("host".into(), "a".into())]),
            registered_at_ms: 1,
            last_heartbeat_ms: 2,
            draining: false,
            resources: None,
        }
    }

    fn event(name: &str) -> HistoryEvent {
        HistoryEvent {
            // Recent: older history is removed at open.
            at_ms: crate::clock::unix_ms(),
            event: name.into(),
            version: 1,
            launcher_id: "l1".into(),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn round_trips_everything_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).await.unwrap();
            store.upsert_launcher(&launcher("l1")).await.unwrap();
            store.set_draining("l1", true).await.unwrap();
            let p = ProcessRecord {
                spec: pb::ProcessAssignment {
                    process_id: "kv-1".into(),
                    version: 3,
                    ..Default::default()
                },
                launcher_id: Some("l1".into()),
                state: PlacementState::Placed,
                created_at_ms: 1,
                updated_at_ms: 2,
            };
            store.put_process(&p, &event("placed")).await.unwrap();
            store
                .save_heartbeats(&HeartbeatBatch {
                    launchers: [("l1".into(), (99, None))].into(),
                    // A status change seen before "placed" was recorded,
                    // written after it.
                    history: vec![(
                        "kv-1".into(),
                        HistoryEvent {
                            at_ms: event("status").at_ms - 1000,
                            ..event("status")
                        },
                    )],
                    health: [(
                        "kv-1".into(),
                        HealthRecord {
                            health: pb::ProcessHealth {
                                status: "running".into(),
                                ..Default::default()
                            },
                            reported_at_ms: 99,
                        },
                    )]
                    .into(),
                })
                .await
                .unwrap();
            store.put_process(&p, &event("delivered")).await.unwrap();
        }
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.launchers.len(), 1);
        assert!(snap.launchers[0].draining);
        assert_eq!(snap.launchers[0].last_heartbeat_ms, 99);
        assert_eq!(snap.processes[0].version(), 3);
        assert_eq!(snap.health["kv-1"].health.status, "running");
        let history = store.history("kv-1", 10).await.unwrap();
        let events: Vec<&str> = history.iter().map(|e| e.event.as_str()).collect();
        // Newest first, by time.
        assert_eq!(events, ["delivered", "placed", "status"]);
        // Commits reach the disk before they return (2 = FULL).
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(sync, 2);
        // Each process keeps its newest HISTORY_KEEP events.
        for _ in 0..HISTORY_KEEP + 5 {
            store
                .save_heartbeats(&HeartbeatBatch {
                    history: vec![("kv-1".into(), event("probe"))],
                    ..HeartbeatBatch::default()
                })
                .await
                .unwrap();
        }
        let kept = store.history("kv-1", 1000).await.unwrap();
        assert_eq!(kept.len() as i64, HISTORY_KEEP);
        store
            .delete_process("kv-1", &event("revoked"))
            .await
            .unwrap();
        let snap = store.load().await.unwrap();
        assert!(snap.processes.is_empty() && snap.health.is_empty());
        assert_eq!(store.history("kv-1", 1).await.unwrap()[0].event, "revoked");
    }
}
