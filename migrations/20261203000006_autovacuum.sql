-- How each hot table is vacuumed when autovacuum runs (it should: production runs with it on).
-- The defaults wait for 20 % of a table to be dead before vacuuming it, which on a table that
-- only grows comes later and later, while every settle, mark and lease leaves a dead version.

-- requests: one HOT update per settle (fillfactor 70). Vacuum after 1 % of the rows changed,
-- so the room HOT updates need on each page comes back soon; analyze as often, so plans see
-- the table's real size.
ALTER TABLE requests SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.02
);

-- outbox: a queue (insert, mark published, swept). Vacuum by count, not by share.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 50000
);

-- target_limits: a handful of rows, each rewritten by every slot lease.
ALTER TABLE target_limits SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000
);

-- attempts, events and request_bodies are appended to and swept: after inserts, vacuum sets
-- their pages all-visible (index-only scans, no anti-wraparound rewrite later).
ALTER TABLE attempts SET (autovacuum_vacuum_insert_scale_factor = 0.05);
ALTER TABLE events SET (autovacuum_vacuum_insert_scale_factor = 0.05);
ALTER TABLE request_bodies SET (autovacuum_vacuum_insert_scale_factor = 0.05);
