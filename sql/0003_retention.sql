-- Retention by partitions, exact dedupe within a window, the body byte for
-- byte, dead letters in PostgreSQL (issue 24; tuning.md §24).
--
-- * webhook_events becomes range-partitioned on received_at. The gateway
--   creates one partition per PARTITION_INTERVAL ahead of time and drops a
--   partition whole once it lies before EVENT_RETENTION (store/partitions.rs).
--   Rows stored before this migration move into one partition below the
--   first interval, webhook_events_legacy, dropped whole like the others.
-- * A partitioned table cannot carry UNIQUE (provider, event_id), so the
--   keys move to webhook_event_keys, partitioned by dedupe generation: the
--   insert of a batch gates its rows on inserting their keys into the
--   current generation, in one statement, and checks the generations that
--   are still inside DEDUPE_WINDOW. Generations are switched under an
--   exclusive advisory lock that every writer takes shared, so no copy can
--   slip between two generations (store/partitions.rs).
-- * raw_body holds the request body exactly as received; rows of older
--   versions get their jsonb text, which is all that was kept of them.
-- * webhook_dead_letters: entries that could not be stored, with their body.
SET LOCAL statement_timeout = 0;
SET LOCAL client_min_messages = warning;

ALTER TABLE webhook_events RENAME TO webhook_events_v2;
ALTER INDEX webhook_events_pkey RENAME TO webhook_events_v2_pkey;
ALTER INDEX webhook_events_provider_event_id_key RENAME TO webhook_events_v2_key;
ALTER INDEX webhook_events_received_at_idx RENAME TO webhook_events_v2_received_at_idx;

CREATE SEQUENCE webhook_event_ids AS bigint;
CREATE TABLE webhook_events (
    id              bigint      NOT NULL DEFAULT nextval('webhook_event_ids'),
    provider        text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL DEFAULT '',
    verified_by     text,
    event_timestamp timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    payload         jsonb       NOT NULL,
    raw_body        bytea       NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE webhook_event_ids OWNED BY webhook_events.id;

CREATE TABLE webhook_dedupe_generations (
    gen        integer     PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz
);
INSERT INTO webhook_dedupe_generations (gen) VALUES (0);

CREATE TABLE webhook_event_keys (
    gen      integer NOT NULL,
    provider text    NOT NULL,
    event_id text    NOT NULL,
    PRIMARY KEY (gen, provider, event_id)
) PARTITION BY LIST (gen);
CREATE TABLE webhook_event_keys_g0 (LIKE webhook_event_keys);
ALTER TABLE webhook_event_keys ATTACH PARTITION webhook_event_keys_g0 FOR VALUES IN (0);

DO $$
DECLARE
    newest timestamptz;
BEGIN
    SELECT max(received_at) INTO newest FROM webhook_events_v2;
    IF newest IS NULL THEN
        RETURN;
    END IF;
    -- Up to now (entries still in Redis were received before it), or just
    -- past the newest row if a clock ran ahead.
    CREATE TABLE webhook_events_legacy (LIKE webhook_events INCLUDING DEFAULTS INCLUDING STORAGE);
    EXECUTE format(
        'ALTER TABLE webhook_events ATTACH PARTITION webhook_events_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
        greatest(newest + interval '1 microsecond', now()));
    INSERT INTO webhook_events (id, provider, event_id, event_type, verified_by, event_timestamp,
                                received_at, stored_at, payload, raw_body)
    SELECT id, provider, event_id, event_type, verified_by, event_timestamp,
           received_at, stored_at, payload, convert_to(payload::text, 'UTF8')
      FROM webhook_events_v2;
    INSERT INTO webhook_event_keys (gen, provider, event_id)
    SELECT 0, provider, event_id FROM webhook_events_v2;
    PERFORM setval('webhook_event_ids', (SELECT max(id) FROM webhook_events_v2));
END $$;

DROP TABLE webhook_events_v2;

CREATE TABLE webhook_dead_letters (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider      text,
    event_id      text,
    event_type    text,
    verified_by   text,
    event_timestamp timestamptz,
    received_at   timestamptz,
    -- The body exactly as received, and the JSON meant for payload when it
    -- is not that body (a form delivery); NULL when the entry could not be
    -- decoded (its fields are then in `fields`).
    raw_body      bytea,
    payload       bytea,
    -- An undecodable entry's fields as found in Redis, name -> text.
    fields        jsonb,
    error         text        NOT NULL,
    sqlstate      text,
    attempts      bigint      NOT NULL,
    stream        text        NOT NULL,
    stream_id     text        NOT NULL,
    dead_at       timestamptz NOT NULL DEFAULT now(),
    -- Moving an entry here twice (a reply lost) keeps one row.
    UNIQUE (stream, stream_id)
);
CREATE INDEX webhook_dead_letters_dead_at_idx ON webhook_dead_letters (dead_at);
