-- A digest of every body, kept with its row and with its dedupe key,
-- deliveries that reuse an id with another body kept apart, and which
-- fields the signature does not cover (issue 25).
--
-- * body_sha256 is SHA-256 of raw_body, written by the workers. Rows and
--   keys stored before this migration have none (NULL): they are never
--   taken for conflicts.
-- * webhook_event_conflicts: a delivery whose (provider, event_id) is
--   already stored with a different body. For the schemes whose signature
--   does not cover the id (GitHub, Shopify, hmac with id_header) that is
--   someone replaying a signed body under an id they chose; for the others
--   a sender that changed an event and kept its id. Either way it is kept,
--   counted, and never merged into the stored row. Deleted with the
--   retention, like dead letters.
SET LOCAL client_min_messages = warning;

ALTER TABLE webhook_events ADD COLUMN body_sha256 bytea;
-- Which of event_id, event_type, event_timestamp came from headers the
-- signature does not cover (GitHub, Shopify, hmac with id_header), comma-
-- separated; NULL when all are signed or nothing is.
ALTER TABLE webhook_events ADD COLUMN unsigned_fields text;
ALTER TABLE webhook_dead_letters ADD COLUMN unsigned_fields text;
ALTER TABLE webhook_event_keys ADD COLUMN body_sha256 bytea;

CREATE TABLE webhook_event_conflicts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider        text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL DEFAULT '',
    verified_by     text,
    event_timestamp timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    payload         jsonb       NOT NULL,
    raw_body        bytea       NOT NULL,
    -- This delivery's body, and the body already stored under its id.
    body_sha256     bytea       NOT NULL,
    stored_sha256   bytea       NOT NULL,
    UNIQUE (provider, event_id, body_sha256)
);
CREATE INDEX webhook_event_conflicts_detected_at_idx ON webhook_event_conflicts (detected_at);
