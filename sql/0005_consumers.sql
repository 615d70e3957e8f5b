-- Reading the events in commit order, and the named consumers of the API
-- (issue 26).
--
-- * xid: the transaction that stored the row. Several workers commit at
--   once, so ids become visible out of order, and a reader polling
--   `id > $last` skips every row committed later with a lower id. Read in
--   (xid, id) order below `pg_snapshot_xmin(pg_current_snapshot())`
--   instead: every transaction below that horizon has ended, so no row can
--   appear behind a position already handed out. Rows stored before this
--   migration get 0, so they sort first (by id). The constant default is
--   metadata only (no rewrite); the function default applies to new rows.
-- * The indexes: (xid, id) for the reads, (provider, event_id) for reading
--   one event by its sender's id. Built on every partition now (locking
--   each while it builds), and by PostgreSQL on every partition attached
--   later.
-- * webhook_consumers: one row per named consumer, its committed position
--   (the (xid, id) it has read up to, and that row's received_at, which
--   says whether the position is still inside the retention window).
SET LOCAL statement_timeout = 0;
SET LOCAL client_min_messages = warning;

ALTER TABLE webhook_events ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE webhook_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX webhook_events_xid_idx ON webhook_events (xid, id);
CREATE INDEX webhook_events_event_idx ON webhook_events (provider, event_id);

CREATE TABLE webhook_consumers (
    name        text        PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT '0',
    id          bigint      NOT NULL DEFAULT 0,
    received_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    acked_at    timestamptz
);
