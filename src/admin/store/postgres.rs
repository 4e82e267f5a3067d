//! [`AdminStore`] on PostgreSQL, shared by several admins: the one holding
//! the lease (a row, with an epoch and an expiry by the database's clock)
//! leads, and every write transaction first takes that row `FOR SHARE` at
//! its own epoch. A takeover (`UPDATE … epoch + 1`) therefore waits for the
//! writes in flight, and every write after it by the admin it deposed finds
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
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.timeout)
            // A connection the database ended (restart, failover,
            // pg_terminate_backend) is found out before it is used.
            .test_before_acquire(true)
            .connect_with(connect)
            .await?;
        sqlx::migrate!("src/admin/store/migrations/postgres")
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            fence: Mutex::new(None),
        })
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
            "SELECT epoch FROM leader_lease WHERE id = 1 AND holder = $1 AND epoch = $2 FOR SHARE",
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
        // Take it if it is free or expired (a new epoch), renew it if mine
        // (the same epoch), otherwise leave it.
        let taken = sqlx::query(
            "INSERT INTO leader_lease AS l (id, holder, address, epoch, expires_at) \
             VALUES (1, $1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET \
               epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END, \
               holder = excluded.holder, address = excluded.address, \
               expires_at = excluded.expires_at \
             WHERE l.holder = excluded.holder OR l.expires_at < clock_timestamp() \
             RETURNING holder, address, epoch, \
               (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint AS remaining_ms",
        )
        .bind(&me.holder)
        .bind(&me.address)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        let row = match taken {
            Some(row) => row,
            None => {
                sqlx::query(
                    "SELECT holder, address, epoch, \
                     (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint \
                       AS remaining_ms \
                     FROM leader_lease WHERE id = 1",
                )
                .fetch_one(&self.pool)
                .await?
            }
        };
        let lease = Lease {
            holder: row.try_get("holder")?,
            address: row.try_get("address")?,
            epoch: row.try_get("epoch")?,
            remaining: Duration::from_millis(
                u64::try_from(row.try_get::<i64, _>("remaining_ms")?).unwrap_or(0),
            ),
        };
        *self.fence.lock().expect("fence") = lease
            .held_by(me)
            .then(|| (lease.holder.clone(), lease.epoch));
        Ok(lease)
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
