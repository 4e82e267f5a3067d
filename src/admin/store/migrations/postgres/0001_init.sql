-- prism-admin's state on PostgreSQL: launchers, processes (desired spec and
-- placement), their latest health, the assignment history, and the lease
-- that makes one admin the leader. The same tables as on SQLite.

CREATE TABLE launchers (
    id                 TEXT PRIMARY KEY NOT NULL,
    address            TEXT NOT NULL,
    region             TEXT NOT NULL,
    version            TEXT NOT NULL,
    capabilities       TEXT NOT NULL,   -- JSON array
    process_types      TEXT NOT NULL,   -- JSON array
    max_processes      BIGINT NOT NULL,
    metadata           TEXT NOT NULL,   -- JSON object
    registered_at      BIGINT NOT NULL, -- unix ms
    last_heartbeat_at  BIGINT NOT NULL, -- unix ms
    draining           BOOLEAN NOT NULL DEFAULT FALSE,
    resources          BYTEA             -- prism.LauncherResourceUsage
);

CREATE TABLE processes (
    id            TEXT PRIMARY KEY NOT NULL,
    version       BIGINT NOT NULL,
    process_type  TEXT NOT NULL,
    namespace     TEXT NOT NULL,
    spec          BYTEA NOT NULL,       -- prism.ProcessAssignment
    launcher_id   TEXT,                 -- placement
    state         TEXT NOT NULL,        -- placed | revoking
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX processes_by_launcher ON processes (launcher_id);

CREATE TABLE process_health (
    process_id    TEXT PRIMARY KEY NOT NULL,
    health        BYTEA NOT NULL,       -- prism.ProcessHealth
    reported_at   BIGINT NOT NULL
);

CREATE TABLE history (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    process_id    TEXT NOT NULL,
    at            BIGINT NOT NULL,
    event         TEXT NOT NULL,
    version       BIGINT NOT NULL,
    launcher_id   TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX history_by_process ON history (process_id, seq);

-- The leader: whoever holds the one row's unexpired lease, by the
-- database's clock. Each new holder gets the next epoch; every write
-- transaction takes this row FOR SHARE at its own epoch, so a takeover
-- waits for the writes in flight and every later write of the old leader
-- finds the epoch moved on and fails.
CREATE TABLE leader_lease (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT NOT NULL,        -- instance id (host, pid, start)
    address       TEXT NOT NULL,        -- where the holder serves gRPC
    epoch         BIGINT NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
