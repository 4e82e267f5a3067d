//! [`AdminStore`] on PostgreSQL, shared by several admins: the one holding
//! the lease (a row, with an epoch and an expiry by the database's clock)
//! leads, and every write transaction first takes that row `FOR KEY SHARE`
//! at its own epoch. A takeover (`FOR UPDATE`, then `epoch + 1`) therefore
//! waits for the writes in flight (a renewal does not), and every write after it by the admin it deposed finds
//! no row at its epoch and fails: nothing is written. TLS uses rustls with
//! the same `ring` provider as gRPC (`sslmode`, `sslrootcert` in the URL).

use std::{sync::Mutex, time::Duration};

use sqlx::{
    ConnectOptions, Postgres, Row,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};

use super::*;

pub struct PgStore {
    pool: PgPool,
    /// The lease this admin holds: (holder, epoch); None before it leads.
    fence: Mutex<Option<(String, i64)>>,
    /// The lease is read and renewed on a connection of its own: one round
    /// trip, never behind the pool's other work or its liveness ping (on a
    /// slow network a renewal must fit in a third of the lease). A failed
    /// renewal drops it; the next one connects afresh.
    lease_conn: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    connect: PgConnectOptions,
    timeout: Duration,
    written: Written,
}

impl PgStore {
    /// Connect to `url` and apply pending migrations (several admins may
    /// start at once: the migrator takes an advisory lock).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let timeout_ms = options.timeout.as_millis().to_string();
        let connect = url
            .parse::<PgConnectOptions>()?
            .application_name("prism-admin")
            // A statement that hangs (a lock held by a wedged peer) fails
            // instead of holding the caller.
            .options([("statement_timeout", timeout_ms.as_str())])
            .log_statements(tracing::log::LevelFilter::Trace)
            // On a slow network every statement takes a round trip or more:
            // only one that takes a large part of its timeout is news.
            .log_slow_statements(tracing::log::LevelFilter::Warn, options.timeout / 2);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.timeout)
            // Kept open: on a slow link a new connection (TCP, TLS, and
            // authentication) takes several round trips, too many for a
            // write's deadline; a burst finds these ready.
            .min_connections(options.max_connections.min(4))
            // A connection the database ended (restart, failover,
            // pg_terminate_backend) is found out before it is used.
            .test_before_acquire(true)
            .connect_with(connect.clone())
            .await?;
        sqlx::migrate!("src/admin/store/migrations/postgres")
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            fence: Mutex::new(None),
            lease_conn: tokio::sync::Mutex::new(None),
            connect,
            timeout: options.timeout,
            written: Written::default(),
        })
    }

    /// A transaction whose reads all see one snapshot of the database.
    async fn read_tx(&self) -> Result<sqlx::Transaction<'_, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Append to processes' histories, in one statement.
    async fn insert_history(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        rows: &[(&str, &HistoryEvent)],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO history (process_id, at, event, version, launcher_id, detail) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], \
                                  $5::text[], $6::text[])",
        )
        .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, e)| e.at_ms).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(_, e)| e.event.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(_, e)| e.version).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(_, e)| e.launcher_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(_, e)| e.detail.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A heartbeat batch's rows: a statement for the launchers' liveness,
    /// one for health, one for histories, whatever the fleet's size (on a
    /// slow link each statement is a round trip).
    async fn write_reports(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        batch: &HeartbeatBatch,
    ) -> Result<(), StoreError> {
        if !batch.launchers.is_empty() {
            let (mut ids, mut at, mut resources) = (Vec::new(), Vec::new(), Vec::new());
            for (id, (when, r)) in &batch.launchers {
                ids.push(id.as_str());
                at.push(*when);
                resources.push(r.as_ref().map(prost::Message::encode_to_vec));
            }
            sqlx::query(
                "UPDATE launchers AS l SET last_heartbeat_at = u.at, \
                 resources = COALESCE(u.resources, l.resources) \
                 FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(id, at, resources) \
                 WHERE l.id = u.id",
            )
            .bind(ids)
            .bind(at)
            .bind(resources)
            .execute(&mut **tx)
            .await?;
        }
        if !batch.health.is_empty() {
            let (mut ids, mut health, mut at) = (Vec::new(), Vec::new(), Vec::new());
            for (id, h) in &batch.health {
                ids.push(id.as_str());
                health.push(prost::Message::encode_to_vec(&h.health));
                at.push(h.reported_at_ms);
            }
            sqlx::query(
                "INSERT INTO process_health (process_id, health, reported_at) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[]) \
                 ON CONFLICT (process_id) DO UPDATE SET health = excluded.health, \
                 reported_at = excluded.reported_at",
            )
            .bind(ids)
            .bind(health)
            .bind(at)
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
    async fn trim(pool: &PgPool, ids: &[String]) -> Result<u64, StoreError> {
        let mut gone = 0;
        for chunk in ids.chunks(1000) {
            gone += sqlx::query(
                "DELETE FROM history AS h USING unnest($1::text[]) AS t(id) \
                 WHERE h.process_id = t.id AND h.seq <= \
                 (SELECT seq FROM history WHERE process_id = t.id \
                  ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            )
            .bind(chunk)
            .bind(sql::HISTORY_KEEP)
            .execute(pool)
            .await?
            .rows_affected();
        }
        Ok(gone)
    }

    /// Number `events` after the head and insert them, in one statement:
    /// the head's row lock is held for that statement and the commit only
    /// (on a slow link every round trip under it queues every writer).
    async fn append_events(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        events: &[&apb::Event],
    ) -> Result<i64, StoreError> {
        let n = events.len() as i64;
        let at: Vec<i64> = events.iter().map(|e| e.at_unix_ms).collect();
        let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .map(|e| prost::Message::encode_to_vec(*e))
            .collect();
        let head: i64 = sqlx::query_scalar(
            "WITH head AS ( \
                 UPDATE event_head SET revision = revision + $1 WHERE id = 1 \
                 RETURNING revision), \
             added AS ( \
                 INSERT INTO events (revision, at, kind, event) \
                 SELECT head.revision - $1 + e.n, e.at, e.kind, e.event \
                 FROM head, unnest($2::bigint[], $3::text[], $4::bytea[]) \
                     WITH ORDINALITY AS e(at, kind, event, n) \
                 RETURNING 1) \
             SELECT revision FROM head",
        )
        .bind(n)
        .bind(at)
        .bind(kinds)
        .bind(bodies)
        .fetch_one(&mut **tx)
        .await?;
        Ok(head)
    }

    fn held(&self) -> Option<(String, i64)> {
        self.fence.lock().expect("fence").clone()
    }

    /// Commit nothing unless this admin still holds the lease at its epoch;
    /// the row lock keeps a takeover out until the transaction ends.
    async fn fence(&self, tx: &mut sqlx::Transaction<'_, Postgres>) -> Result<(), StoreError> {
        let Some((holder, epoch)) = self.held() else {
            return Err(StoreError::NotLeader { epoch: 0 });
        };
        let row = sqlx::query(
            "SELECT epoch FROM leader_lease WHERE id = 1 AND holder = $1 AND epoch = $2 \
             FOR KEY SHARE",
        )
        .bind(&holder)
        .bind(epoch)
        .fetch_optional(&mut **tx)
        .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::NotLeader { epoch }),
        }
    }

    async fn lease(&self, me: &Candidate, ttl: Duration) -> Result<Lease, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut slot = self.lease_conn.lock().await;
        // Out of its slot while in use: a call abandoned half way (its
        // caller's deadline) leaves no connection in an unknown state
        // behind, and a failed one (perhaps a connection the database
        // ended) is not used again.
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => tokio::time::timeout(self.timeout, self.connect.connect())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??,
        };
        let lease = Self::take_or_read(&mut conn, me, ttl_ms).await?;
        *slot = Some(conn);
        *self.fence.lock().expect("fence") = lease
            .held_by(me)
            .then(|| (lease.holder.clone(), lease.epoch));
        Ok(lease)
    }

    /// Renew the lease if `me` holds it (the same epoch); else take it if
    /// it is free or expired (a new epoch); else read it.
    ///
    /// A renewal updates no key column, so its row lock (`FOR NO KEY
    /// UPDATE`) never waits for the writes in flight, which hold the row
    /// `FOR KEY SHARE`: on a slow network those take several round trips,
    /// and a renewal stuck behind them would lose the lease. A takeover
    /// takes the row `FOR UPDATE` first, which does wait for them: no write
    /// of the deposed leader commits after it.
    async fn take_or_read(
        conn: &mut sqlx::PgConnection,
        me: &Candidate,
        ttl_ms: i64,
    ) -> Result<Lease, StoreError> {
        const LEASE: &str = "holder, address, epoch, \
            (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint AS remaining_ms";
        // Renew it if mine, else read it: one round trip, no lock a
        // follower waits for (a plain read sees the row as committed).
        let seen = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH renewed AS ( \
               UPDATE leader_lease SET address = $2, \
                 expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
               WHERE id = 1 AND holder = $1 RETURNING {LEASE}, false AS expired) \
             SELECT * FROM renewed \
             UNION ALL \
             SELECT {LEASE}, expires_at < clock_timestamp() AS expired FROM leader_lease \
             WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM renewed)"
        )))
        .bind(&me.holder)
        .bind(&me.address)
        .bind(ttl_ms)
        .fetch_optional(&mut *conn)
        .await?;
        let live = match seen {
            Some(row) if !row.try_get::<bool, _>("expired")? => Some(row),
            _ => None,
        };
        let row = match live {
            Some(row) => row,
            None => {
                use sqlx::Connection;
                let mut tx = conn.begin().await?;
                let current = sqlx::query(
                    "SELECT expires_at < clock_timestamp() AS expired FROM leader_lease \
                     WHERE id = 1 FOR UPDATE",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let free = match &current {
                    None => true,
                    Some(row) => row.try_get::<bool, _>("expired")?,
                };
                let row = if free {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO leader_lease AS l (id, holder, address, epoch, expires_at) \
                         VALUES (1, $1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond') \
                         ON CONFLICT (id) DO UPDATE SET epoch = l.epoch + 1, \
                           holder = excluded.holder, address = excluded.address, \
                           expires_at = excluded.expires_at \
                         RETURNING {LEASE}"
                    )))
                    .bind(&me.holder)
                    .bind(&me.address)
                    .bind(ttl_ms)
                    .fetch_one(&mut *tx)
                    .await?
                } else {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {LEASE} FROM leader_lease WHERE id = 1"
                    )))
                    .fetch_one(&mut *tx)
                    .await?
                };
                tx.commit().await?;
                row
            }
        };
        Ok(Lease {
            holder: row.try_get("holder")?,
            address: row.try_get("address")?,
            epoch: row.try_get("epoch")?,
            remaining: Duration::from_millis(
                u64::try_from(row.try_get::<i64, _>("remaining_ms")?).unwrap_or(0),
            ),
        })
    }
}

impl PgStore {
    /// Expire the lease now if `me` holds it, and write nothing more.
    async fn give_up(&self, me: &Candidate) -> Result<(), StoreError> {
        let held = self.fence.lock().expect("fence").take();
        if let Some((holder, epoch)) = held.filter(|(h, _)| *h == me.holder) {
            sqlx::query(
                "UPDATE leader_lease SET expires_at = clock_timestamp() \
                 WHERE id = 1 AND holder = $1 AND epoch = $2",
            )
            .bind(&holder)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}

sql::sql_store!(PgStore, Postgres, shared = true);
