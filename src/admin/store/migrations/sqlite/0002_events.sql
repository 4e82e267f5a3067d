-- The fleet's event log, which WatchEvents streams: each event's revision
-- is one more than the one before, in commit order (SQLite has one writer
-- at a time). Kept for a bounded count and age.
CREATE TABLE events (
    revision   INTEGER PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,        -- unix ms
    kind       TEXT NOT NULL,
    event      BLOB NOT NULL            -- prism.admin.v1.Event
);
CREATE INDEX events_by_time ON events (at);

CREATE TABLE event_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    revision   INTEGER NOT NULL
);
INSERT INTO event_head (id, revision) VALUES (1, 0);
