-- The events table. (provider, event_id) is the idempotency key: the worker
-- path is at-least-once, this constraint makes its effect exactly-once.
CREATE TABLE webhook_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider        text        NOT NULL,
    event_id        text        NOT NULL,
    event_timestamp timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    payload         jsonb       NOT NULL,
    CONSTRAINT webhook_events_provider_event_id_key UNIQUE (provider, event_id)
);

CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);
