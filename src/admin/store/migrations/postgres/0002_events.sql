-- The fleet's event log, which WatchEvents streams. Each event's revision
-- is one more than the one before, in commit order: a write transaction
-- takes the next revisions from event_head just before it commits, and
-- holds that row until it does, so no later revision is ever visible
-- before an earlier one (a SEQUENCE hands numbers out in the order
-- transactions ask, not the order they commit, and a watcher reading
-- "after N" would skip the slow one). Kept for a bounded count and age.
CREATE TABLE events (
    revision   BIGINT PRIMARY KEY NOT NULL,
    at         BIGINT NOT NULL,         -- unix ms
    kind       TEXT NOT NULL,
    event      BYTEA NOT NULL           -- prism.admin.v1.Event
);
CREATE INDEX events_by_time ON events (at);

CREATE TABLE event_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    revision   BIGINT NOT NULL
);
INSERT INTO event_head (id, revision) VALUES (1, 0);
