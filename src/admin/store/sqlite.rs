//! [`AdminStore`] on SQLite (WAL mode, migrations embedded in the binary):
//! one admin, which always leads.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Sqlite,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
    written: Written,
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
        Self::migrate(pool).await
    }

    /// An in-memory database, for tests and benchmarks.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
            .await?;
        Self::migrate(pool).await
    }

    async fn migrate(pool: SqlitePool) -> Result<Self, StoreError> {
        sqlx::migrate!("src/admin/store/migrations/sqlite")
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            written: Written::default(),
        })
    }

    /// A transaction whose reads see one snapshot (WAL: from its first
    /// read on).
    async fn read_tx(&self) -> Result<sqlx::Transaction<'_, Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// One admin: nothing to check.
    async fn fence(&self, _: &mut sqlx::Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        Ok(())
    }

    /// The only admin of an embedded database leads, always at epoch 1.
    async fn lease(&self, me: &Candidate, ttl: Duration) -> Result<Lease, StoreError> {
        Ok(Lease {
            holder: me.holder.clone(),
            address: me.address.clone(),
            epoch: 1,
            remaining: ttl,
        })
    }
}

impl SqliteStore {
    /// Nobody else could lead.
    async fn give_up(&self, _: &Candidate) -> Result<(), StoreError> {
        Ok(())
    }

    /// Append to processes' histories.
    async fn insert_history(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[(&str, &HistoryEvent)],
    ) -> Result<(), StoreError> {
        for (id, e) in rows {
            sqlx::query(sql::INSERT_HISTORY)
                .bind(id)
                .bind(e.at_ms)
                .bind(&e.event)
                .bind(e.version)
                .bind(&e.launcher_id)
                .bind(&e.detail)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// A heartbeat batch's rows: liveness, health, histories (a local
    /// file: a statement each costs no round trip).
    async fn write_reports(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        batch: &HeartbeatBatch,
    ) -> Result<(), StoreError> {
        for (id, (at, resources)) in &batch.launchers {
            sqlx::query(
                "UPDATE launchers SET last_heartbeat_at = $1, resources = COALESCE($2, resources) \
                 WHERE id = $3",
            )
            .bind(at)
            .bind(resources.as_ref().map(prost::Message::encode_to_vec))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        for (id, h) in &batch.health {
            sqlx::query(sql::UPSERT_HEALTH)
                .bind(id)
                .bind(prost::Message::encode_to_vec(&h.health))
                .bind(h.reported_at_ms)
                .execute(&mut **tx)
                .await?;
        }
        let rows: Vec<(&str, &HistoryEvent)> = batch
            .history
            .iter()
            .map(|(id, e)| (id.as_str(), e))
            .collect();
        Self::insert_history(tx, &rows).await
    }

    /// Trim the histories of `ids` to their newest events.
    async fn trim(pool: &SqlitePool, ids: &[String]) -> Result<u64, StoreError> {
        let mut tx = pool.begin().await?;
        let mut gone = 0;
        for id in ids {
            gone += sqlx::query(sql::TRIM_HISTORY)
                .bind(id)
                .bind(sql::HISTORY_KEEP)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Number `events` after the head and insert them; the new head.
    async fn append_events(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        events: &[&apb::Event],
    ) -> Result<i64, StoreError> {
        let head: i64 = sqlx::query_scalar(
            "UPDATE event_head SET revision = revision + $1 WHERE id = 1 RETURNING revision",
        )
        .bind(events.len() as i64)
        .fetch_one(&mut **tx)
        .await?;
        let first = head - events.len() as i64 + 1;
        let numbered: Vec<(i64, &&apb::Event)> = (first..).zip(events).collect();
        for chunk in numbered.chunks(sql::EVENTS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (revision, at, kind, event) ",
            );
            insert.push_values(chunk, |mut row, (revision, e)| {
                row.push_bind(*revision)
                    .push_bind(e.at_unix_ms)
                    .push_bind(e.kind.clone())
                    .push_bind(prost::Message::encode_to_vec(**e));
            });
            insert.build().execute(&mut **tx).await?;
        }
        Ok(head)
    }
}

sql::sql_store!(SqliteStore, Sqlite, shared = false);

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
            watched: None,
        }
    }

    #[tokio::test]
    async fn round_trips_everything_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).await.unwrap();
            store.upsert_launcher(&launcher("l1"), &[]).await.unwrap();
            store.set_draining("l1", true, &[]).await.unwrap();
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
                    events: Vec::new(),
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
        // Each process keeps its newest HISTORY_KEEP events, once trimmed.
        for _ in 0..HISTORY_KEEP + 5 {
            store
                .save_heartbeats(&HeartbeatBatch {
                    history: vec![("kv-1".into(), event("probe"))],
                    ..HeartbeatBatch::default()
                })
                .await
                .unwrap();
        }
        assert!(store.trim_histories().await.unwrap() > 0);
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
