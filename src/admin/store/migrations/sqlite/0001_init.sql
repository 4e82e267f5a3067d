-- prism-admin's state: launchers, processes (desired spec and placement),
-- their latest health, and the assignment history.

CREATE TABLE launchers (
    id                 TEXT PRIMARY KEY NOT NULL,
    address            TEXT NOT NULL,
    region             TEXT NOT NULL,
    version            TEXT NOT NULL,
    capabilities       TEXT NOT NULL,   -- JSON array
    process_types      TEXT NOT NULL,   -- JSON array
    max_processes      INTEGER NOT NULL,
    metadata           TEXT NOT NULL,   -- JSON object
    registered_at      INTEGER NOT NULL, -- unix ms
    last_heartbeat_at  INTEGER NOT NULL, -- unix ms
    draining           INTEGER NOT NULL DEFAULT 0,
    resources          BLOB              -- prism.LauncherResourceUsage
);

CREATE TABLE processes (
    id            TEXT PRIMARY KEY NOT NULL,
    version       INTEGER NOT NULL,
    process_type  TEXT NOT NULL,
    namespace     TEXT NOT NULL,
    spec          BLOB NOT NULL,        -- prism.ProcessAssignment
    launcher_id   TEXT,                 -- placement
    state         TEXT NOT NULL,        -- placed | revoking
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX processes_by_launcher ON processes (launcher_id);

CREATE TABLE process_health (
    process_id    TEXT PRIMARY KEY NOT NULL,
    health        BLOB NOT NULL,        -- prism.ProcessHealth
    reported_at   INTEGER NOT NULL
);

CREATE TABLE history (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    process_id    TEXT NOT NULL,
    at            INTEGER NOT NULL,
    event         TEXT NOT NULL,
    version       INTEGER NOT NULL,
    launcher_id   TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX history_by_process ON history (process_id, seq);
