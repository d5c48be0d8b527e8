-- The hot path writes an attempt with its request's settle and an outbox row with its event,
-- in the same statement as their parents; the foreign keys only re-checked that, one
-- trigger query and one row lock (a write to the parent's page) per row. The rarely written
-- tables keep theirs.
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_request_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_fkey;
