-- Requests: one row per request_id, the record of truth for what was provisioned.
CREATE TABLE requests (
    request_id        text PRIMARY KEY,
    -- Bumped by `orgprov replay`; "exactly one terminal state" holds per generation.
    generation        bigint NOT NULL DEFAULT 1,
    state             text NOT NULL CHECK (state IN ('active', 'succeeded', 'failed')),
    -- SHA-256 of the canonical request, stored at the first claim.
    content_hash      text NOT NULL,
    target            text,
    provider          text,
    template          text,
    template_version  text,
    -- Rendered once at the first claim and reused by every attempt.
    spec              jsonb,
    body              jsonb,
    natural_key       text,
    -- Fenced lease: the token is re-checked when a call starts and when the outcome settles.
    owner             text,
    fencing_token     bigint NOT NULL DEFAULT 0,
    lease_expires_at  timestamptz,
    -- Set when a create may have reached the upstream; cleared by a lookup that found nothing.
    needs_reconcile   boolean NOT NULL DEFAULT false,
    attempts          bigint NOT NULL DEFAULT 0,
    organization_id   text,
    created           boolean,
    error             jsonb,
    mismatches        bigint NOT NULL DEFAULT 0,
    received_at       timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);
CREATE INDEX requests_state_idx ON requests (state, updated_at);

-- Every upstream call (creates and lookups), kept for a configurable period.
CREATE TABLE attempts (
    id             bigserial PRIMARY KEY,
    request_id     text NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    generation     bigint NOT NULL,
    fencing_token  bigint NOT NULL,
    call           text NOT NULL CHECK (call IN ('create', 'lookup')),
    started_at     timestamptz NOT NULL,
    duration_ms    integer NOT NULL,
    status_code    integer,
    outcome        text NOT NULL,
    error          text
);
CREATE INDEX attempts_request_idx ON attempts (request_id, id);
CREATE INDEX attempts_started_idx ON attempts (started_at);

-- Messages that never yielded a request_id, recorded by their stream position.
CREATE TABLE rejected_messages (
    stream       text NOT NULL,
    sequence     bigint NOT NULL,
    msg_id       text,
    reason       text NOT NULL,
    event_id     text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, sequence)
);

-- Content mismatches: the same request_id seen with another content hash.
CREATE TABLE request_mismatches (
    id            bigserial PRIMARY KEY,
    request_id    text NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    content_hash  text NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now()
);

-- Outcome events, stored as the exact bytes that are published (and re-published).
CREATE TABLE events (
    event_id    text PRIMARY KEY,
    request_id  text,
    generation  bigint NOT NULL,
    event_type  text NOT NULL,
    subject     text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_request_idx ON events (request_id, generation);

-- Transactional outbox: a row per publication owed; the relay marks it published.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      text NOT NULL REFERENCES events (event_id),
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
