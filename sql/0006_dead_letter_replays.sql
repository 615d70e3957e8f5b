-- Dead letters an operator searches and replays (issue 27).
--
-- * replayed_at / replays: a replayed dead letter stays in the table until
--   the worker transaction that stores its event (or finds it stored)
--   deletes it; until then it shows as being replayed, and a replay by
--   filter leaves it alone. Dead again, the same row takes the new error
--   and replayed_at goes back to NULL.
-- * The index serves the newest-first search by provider; the error text
--   search scans what the other conditions leave (the table is bounded by
--   EVENT_RETENTION and holds only what failed).
SET LOCAL client_min_messages = warning;

ALTER TABLE webhook_dead_letters ADD COLUMN replayed_at timestamptz;
ALTER TABLE webhook_dead_letters ADD COLUMN replays integer NOT NULL DEFAULT 0;
CREATE INDEX webhook_dead_letters_provider_idx ON webhook_dead_letters (provider, id);
