-- The request as received and its rendering are written once and read rarely; the rest of a
-- request row changes at every step. Kept apart, the row every claim and settle rewrites is a
-- few hundred bytes instead of a few kilobytes, and with room left on its page (fillfactor)
-- and no index on a column a settle changes, the settle is a HOT update: no new index entry,
-- and the old version is pruned from the page without a vacuum.
CREATE TABLE request_bodies (
    request_id  text PRIMARY KEY,
    -- The request as received (CloudEvents envelope removed): `orgprov replay` re-publishes it.
    document    jsonb,
    -- Rendered once at the first claim and reused by every attempt.
    spec        jsonb,
    body        jsonb
);
INSERT INTO request_bodies (request_id, document, spec, body)
SELECT request_id, document, spec, body FROM requests;
ALTER TABLE requests DROP COLUMN document, DROP COLUMN spec, DROP COLUMN body;
-- Replay by code or time reads the narrow table; a partial index on the settled columns
-- would make every settle update an index.
DROP INDEX IF EXISTS requests_failed_idx;
ALTER TABLE requests SET (fillfactor = 70);
