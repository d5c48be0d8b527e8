-- The request as received (CloudEvents envelope removed): `orgprov replay` re-publishes it.
ALTER TABLE requests ADD COLUMN document jsonb;
-- When the current generation started: the per-request retry deadline counts from here.
ALTER TABLE requests ADD COLUMN generation_started_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX requests_failed_idx ON requests ((error ->> 'code'), completed_at) WHERE state = 'failed';

-- Replica-wide admission per target: a GCRA token bucket (theoretical arrival time) and a
-- pause named by the upstream (Retry-After, rate-limit reset), both in Postgres time.
CREATE TABLE target_limits (
    target        text PRIMARY KEY,
    tat           timestamptz NOT NULL DEFAULT now(),
    paused_until  timestamptz
);

-- Replays, for the record: who re-drove what and when.
CREATE TABLE replays (
    id           bigserial PRIMARY KEY,
    request_id   text NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    generation   bigint NOT NULL,
    previous     jsonb,
    replayed_at  timestamptz NOT NULL DEFAULT now()
);
