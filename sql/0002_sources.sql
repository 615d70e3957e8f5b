-- Native senders (issue 13): the sender's event type (Stripe `type`, GitHub
-- `X-GitHub-Event`, …; empty for the envelope) and the signature scheme that
-- verified the request (NULL for an unsigned envelope). Rows stored before
-- this migration are unsigned envelopes: '' and NULL are what they were.
ALTER TABLE webhook_events
    ADD COLUMN event_type  text NOT NULL DEFAULT '',
    ADD COLUMN verified_by text;
