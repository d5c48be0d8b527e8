//! Postgres, the record of truth: migrations, the fenced claim, call bookkeeping, settle
//! (outcome + attempt + event + outbox row in one transaction), the outbox queries used by
//! the relay, and the read side of `orgprov status`.
//!
//! No transaction is ever held across an upstream HTTP call: a claim commits before the
//! call, and the settle opens its own transaction after it.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Row, Transaction};
use time::OffsetDateTime;

use crate::contract::{EventError, FailedData, OutcomeEvent, SourceMessage};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where outcome events go: CloudEvents `source` and the NATS subject prefix.
#[derive(Clone, Debug)]
pub struct EventNaming {
    pub source: String,
    pub subject_prefix: String,
}

impl EventNaming {
    fn subject(&self, event: &OutcomeEvent) -> String {
        format!("{}{}", self.subject_prefix, event.event_type)
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    naming: EventNaming,
}

/// What a worker learned from claiming a request.
#[derive(Debug)]
pub enum ClaimResult {
    /// This worker holds the lease: go ahead.
    Claimed(Box<Claim>),
    /// The request ended: earlier (`reemitted`: its stored outcome event was queued again),
    /// or now, because it failed before any upstream call.
    Finished { reemitted: bool },
    /// Another holder's lease is live: hand the message back for this long.
    Busy { retry_in: Duration },
}

/// The rendered, provider-ready form of a request, stored at the first claim.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub target: String,
    pub provider: String,
    pub template: String,
    pub template_version: String,
    pub spec: Value,
    pub body: Value,
    pub natural_key: String,
}

/// A request that cannot be worked on, known before any HTTP call.
#[derive(Clone, Debug)]
pub struct EarlyFailure {
    pub target: Option<String>,
    pub provider: Option<String>,
    pub error: EventError,
}

/// A held lease on a request.
#[derive(Clone, Debug)]
pub struct Claim {
    pub request_id: String,
    pub generation: i64,
    pub token: i64,
    pub prepared: Prepared,
    /// Upstream calls made for this generation so far.
    pub attempts: i64,
    pub needs_reconcile: bool,
    /// Time since this generation started (the retry deadline counts from there).
    pub age: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease lost: another holder claimed request {0}")]
    LeaseLost(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The final state of a generation.
#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded { organization_id: String, created: bool },
    Failed { error: EventError },
}

/// One upstream call, for the attempt history.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub call: &'static str,
    pub started_at: OffsetDateTime,
    pub duration: Duration,
    pub status: Option<u16>,
    pub outcome: String,
    pub error: Option<String>,
}

/// An outbox row ready to publish.
#[derive(Clone, Debug)]
pub struct Pending {
    pub outbox_id: i64,
    pub event_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// Creates the database named in `url` if it does not exist (used by `migrate`, `demo`, tests).
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse()?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        // Two processes racing to create it is fine: the loser sees "already exists".
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await
            && !e.to_string().contains("already exists")
        {
            return Err(e.into());
        }
    }
    admin.close().await?;
    Ok(())
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32, naming: EventNaming) -> anyhow::Result<Store> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Store { pool, naming })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Claims `request_id` for `owner` with a fenced lease. On the first claim `prepare` runs
    /// (render once) and its result is stored; an `EarlyFailure` settles the request as failed
    /// at once. A finished request queues its stored outcome event again.
    pub async fn claim(
        &self,
        request_id: &str,
        content_hash: &str,
        document: Option<&Value>,
        owner: &str,
        lease: Duration,
        prepare: impl FnOnce() -> Result<Prepared, EarlyFailure>,
    ) -> Result<ClaimResult, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO requests (request_id, content_hash, document, state) VALUES ($1, $2, $3, 'active')
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(request_id)
        .bind(content_hash)
        .bind(document)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT state, content_hash, generation, attempts, needs_reconcile,
                    COALESCE(lease_expires_at > now(), false) AS live,
                    GREATEST(EXTRACT(EPOCH FROM (lease_expires_at - now())), 0)::float8 AS remaining,
                    target, provider, template, template_version, spec, body, natural_key,
                    EXTRACT(EPOCH FROM (now() - generation_started_at))::float8 AS age
             FROM requests WHERE request_id = $1 FOR UPDATE",
        )
        .bind(request_id)
        .fetch_one(&mut *tx)
        .await?;
        let state: String = row.get("state");
        let stored_hash: String = row.get("content_hash");
        let generation: i64 = row.get("generation");
        let mismatch = stored_hash != content_hash;
        if mismatch {
            sqlx::query("UPDATE requests SET mismatches = mismatches + 1 WHERE request_id = $1")
                .bind(request_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO request_mismatches (request_id, content_hash) VALUES ($1, $2)")
                .bind(request_id)
                .bind(content_hash)
                .execute(&mut *tx)
                .await?;
            crate::telemetry::METRICS.content_mismatches.inc();
            tracing::warn!(request_id, "same request_id with different content: the original request stands");
        }
        if state != "active" {
            requeue_outcome(&mut tx, request_id, generation).await?;
            tx.commit().await?;
            return Ok(ClaimResult::Finished { reemitted: true });
        }
        if row.get::<bool, _>("live") {
            let remaining: f64 = row.get("remaining");
            tx.commit().await?;
            // Come back when the lease ends, or sooner to pick up the holder's outcome.
            return Ok(ClaimResult::Busy { retry_in: Duration::from_secs_f64(remaining.clamp(0.5, 2.0)) });
        }
        let spec: Option<Value> = row.get("spec");
        let prepared = match spec {
            Some(spec) => Prepared {
                target: row.get("target"),
                provider: row.get("provider"),
                template: row.get("template"),
                template_version: row.get("template_version"),
                spec,
                body: row.get("body"),
                natural_key: row.get("natural_key"),
            },
            None => match prepare() {
                Ok(p) => p,
                Err(failure) => {
                    let data = FailedData {
                        request_id: Some(request_id.to_owned()),
                        generation,
                        target: failure.target.clone(),
                        provider: failure.provider.clone(),
                        attempts: 0,
                        failed_at: OffsetDateTime::now_utc(),
                        error: failure.error.clone(),
                        source_message: None,
                    };
                    let event = OutcomeEvent::failed(&self.naming.source, data);
                    sqlx::query(
                        "UPDATE requests SET state = 'failed', target = $2, provider = $3, error = $4,
                                completed_at = now(), updated_at = now() WHERE request_id = $1",
                    )
                    .bind(request_id)
                    .bind(&failure.target)
                    .bind(&failure.provider)
                    .bind(serde_json::to_value(&failure.error).unwrap_or(Value::Null))
                    .execute(&mut *tx)
                    .await?;
                    self.insert_event(&mut tx, Some(request_id), generation, &event).await?;
                    tx.commit().await?;
                    return Ok(ClaimResult::Finished { reemitted: false });
                }
            },
        };
        let token: i64 = sqlx::query_scalar(
            "UPDATE requests SET fencing_token = fencing_token + 1, owner = $2,
                    lease_expires_at = now() + make_interval(secs => $3), updated_at = now(),
                    target = $4, provider = $5, template = $6, template_version = $7,
                    spec = $8, body = $9, natural_key = $10
             WHERE request_id = $1 RETURNING fencing_token",
        )
        .bind(request_id)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(&prepared.target)
        .bind(&prepared.provider)
        .bind(&prepared.template)
        .bind(&prepared.template_version)
        .bind(&prepared.spec)
        .bind(&prepared.body)
        .bind(&prepared.natural_key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ClaimResult::Claimed(Box::new(Claim {
            request_id: request_id.to_owned(),
            generation,
            token,
            prepared,
            attempts: row.get("attempts"),
            needs_reconcile: row.get("needs_reconcile"),
            age: Duration::from_secs_f64(row.get::<f64, _>("age").max(0.0)),
        })))
    }

    /// Records that an upstream call is starting, under a live lease with our token: a create
    /// counts as an attempt and marks the request as needing a lookup before the next one.
    /// `false` means the lease is lost and the call must not be made.
    pub async fn begin_call(&self, claim: &Claim, create: bool, lease: Duration) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE requests SET attempts = attempts + CASE WHEN $3 THEN 1 ELSE 0 END,
                    needs_reconcile = needs_reconcile OR $3,
                    lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active' AND lease_expires_at > now()",
        )
        .bind(&claim.request_id)
        .bind(claim.token)
        .bind(create)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Undoes `begin_call` for a call that was never sent (throttled before sending).
    pub async fn refund_call(&self, claim: &Claim, needs_reconcile: bool) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE requests SET attempts = GREATEST(attempts - 1, 0), needs_reconcile = $3
             WHERE request_id = $1 AND fencing_token = $2",
        )
        .bind(&claim.request_id)
        .bind(claim.token)
        .bind(needs_reconcile)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Renews the lease; `false` when it was lost.
    pub async fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE requests SET lease_expires_at = now() + make_interval(secs => $3)
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active'",
        )
        .bind(&claim.request_id)
        .bind(claim.token)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// A lookup found nothing: no earlier create of ours exists upstream.
    pub async fn mark_reconciled(&self, claim: &Claim) -> Result<(), StoreError> {
        sqlx::query("UPDATE requests SET needs_reconcile = false WHERE request_id = $1 AND fencing_token = $2")
            .bind(&claim.request_id)
            .bind(claim.token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives the lease up early so a redelivery can claim at once.
    pub async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE requests SET lease_expires_at = now(), owner = NULL
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active'",
        )
        .bind(&claim.request_id)
        .bind(claim.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_attempt(&self, claim: &Claim, attempt: &AttemptRecord) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_attempt(&mut conn, claim, attempt).await
    }

    /// Settles a generation: outcome, last attempt, event and outbox row in one transaction,
    /// fenced by the claim's token.
    pub async fn settle(
        &self,
        claim: &Claim,
        outcome: &Outcome,
        attempt: Option<&AttemptRecord>,
        event: &OutcomeEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (state, org, created, error) = match outcome {
            Outcome::Succeeded { organization_id, created } => {
                ("succeeded", Some(organization_id.as_str()), Some(*created), None)
            }
            Outcome::Failed { error } => ("failed", None, None, serde_json::to_value(error).ok()),
        };
        let updated = sqlx::query(
            "UPDATE requests SET state = $3, organization_id = $4, created = $5, error = $6,
                    completed_at = now(), updated_at = now(), owner = NULL, lease_expires_at = NULL,
                    needs_reconcile = false
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active'",
        )
        .bind(&claim.request_id)
        .bind(claim.token)
        .bind(state)
        .bind(org)
        .bind(created)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::LeaseLost(claim.request_id.clone()));
        }
        if let Some(a) = attempt {
            insert_attempt(&mut tx, claim, a).await?;
        }
        self.insert_event(&mut tx, Some(&claim.request_id), claim.generation, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a message that never yielded a request_id and queues its `org.failed`; a
    /// redelivery of the same stream message queues the stored event again.
    pub async fn reject_unreadable(
        &self,
        source: &SourceMessage,
        reason: &str,
        details: Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT event_id FROM rejected_messages WHERE stream = $1 AND sequence = $2")
                .bind(&source.stream)
                .bind(source.sequence as i64)
                .fetch_optional(&mut *tx)
                .await?;
        match existing {
            Some(event_id) => {
                sqlx::query("INSERT INTO outbox (event_id) VALUES ($1)").bind(event_id).execute(&mut *tx).await?;
            }
            None => {
                let data = FailedData {
                    request_id: None,
                    generation: 1,
                    target: None,
                    provider: None,
                    attempts: 0,
                    failed_at: OffsetDateTime::now_utc(),
                    error: EventError {
                        code: crate::contract::ErrorCode::InvalidRequest,
                        message: reason.to_owned(),
                        upstream_status: None,
                        details: Some(details),
                    },
                    source_message: Some(source.clone()),
                };
                let event = OutcomeEvent::failed(&self.naming.source, data);
                sqlx::query(
                    "INSERT INTO rejected_messages (stream, sequence, msg_id, reason, event_id) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&source.stream)
                .bind(source.sequence as i64)
                .bind(&source.msg_id)
                .bind(reason)
                .bind(&event.id)
                .execute(&mut *tx)
                .await?;
                self.insert_event(&mut tx, None, 1, &event).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_event(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request_id: Option<&str>,
        generation: i64,
        event: &OutcomeEvent,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (event_id, request_id, generation, event_type, subject, payload)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event.id)
        .bind(request_id)
        .bind(generation)
        .bind(event.event_type)
        .bind(self.naming.subject(event))
        .bind(&event.payload)
        .execute(&mut **tx)
        .await?;
        sqlx::query("INSERT INTO outbox (event_id) VALUES ($1)").bind(&event.id).execute(&mut **tx).await?;
        Ok(())
    }

    /// Locks up to `limit` unpublished outbox rows (skipping rows another relay holds).
    pub async fn begin_outbox_batch(
        &self,
        limit: i64,
    ) -> Result<(Transaction<'static, Postgres>, Vec<Pending>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT o.id, e.event_id, e.subject, e.payload FROM outbox o JOIN events e ON e.event_id = o.event_id
             WHERE o.published_at IS NULL ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let pending = rows
            .into_iter()
            .map(|r| Pending { outbox_id: r.get(0), event_id: r.get(1), subject: r.get(2), payload: r.get(3) })
            .collect();
        Ok((tx, pending))
    }

    pub async fn mark_published(tx: &mut Transaction<'static, Postgres>, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)").bind(ids).execute(&mut **tx).await?;
        Ok(())
    }

    pub async fn unpublished_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&self.pool).await?)
    }

    /// Deletes published outbox rows older than `age`; unsent rows are never touched.
    pub async fn sweep_outbox(&self, age: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
        )
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

async fn insert_attempt(conn: &mut sqlx::PgConnection, claim: &Claim, a: &AttemptRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO attempts (request_id, generation, fencing_token, call, started_at, duration_ms, status_code, outcome, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&claim.request_id)
    .bind(claim.generation)
    .bind(claim.token)
    .bind(a.call)
    .bind(a.started_at)
    .bind(a.duration.as_millis().min(i32::MAX as u128) as i32)
    .bind(a.status.map(i32::from))
    .bind(&a.outcome)
    .bind(&a.error)
    .execute(conn)
    .await?;
    Ok(())
}

async fn requeue_outcome(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &str,
    generation: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO outbox (event_id) SELECT event_id FROM events WHERE request_id = $1 AND generation = $2")
        .bind(request_id)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Everything `orgprov status` prints about one request.
#[derive(Debug, serde::Serialize)]
pub struct RequestReport {
    pub request: Value,
    pub attempts: Vec<Value>,
    pub events: Vec<Value>,
}

impl Store {
    pub async fn report(&self, request_id: &str) -> Result<Option<RequestReport>, StoreError> {
        let request: Option<Value> =
            sqlx::query_scalar("SELECT to_jsonb(r) - 'body' - 'owner' FROM requests r WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(request) = request else { return Ok(None) };
        let attempts =
            sqlx::query_scalar("SELECT to_jsonb(a) - 'request_id' FROM attempts a WHERE request_id = $1 ORDER BY id")
                .bind(request_id)
                .fetch_all(&self.pool)
                .await?;
        let events = sqlx::query(
            "SELECT e.event_id, e.event_type, e.generation, e.created_at, convert_from(e.payload, 'UTF8')::jsonb AS body,
                    (SELECT max(published_at) FROM outbox o WHERE o.event_id = e.event_id) AS published_at
             FROM events e WHERE request_id = $1 ORDER BY created_at",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "event_id": r.get::<String, _>("event_id"),
                "type": r.get::<String, _>("event_type"),
                "generation": r.get::<i64, _>("generation"),
                "published_at": r.get::<Option<OffsetDateTime>, _>("published_at").map(|t| t.to_string()),
                "body": r.get::<Value, _>("body"),
            })
        })
        .collect();
        Ok(Some(RequestReport { request, attempts, events }))
    }
}

/// Replica-wide admission per target (DESIGN.md §Semantics 9, 11): a GCRA token bucket and
/// the upstream's pause, kept in Postgres so every replica shares them and times are the
/// database's, not a local clock.
impl Store {
    pub async fn ensure_limit(&self, target: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO target_limits (target) VALUES ($1) ON CONFLICT (target) DO NOTHING")
            .bind(target)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes one call slot for `target` at `per_second` with `burst`. `Ok(None)`: go now;
    /// `Ok(Some(wait))`: nothing was taken, try again after `wait`.
    pub async fn acquire_slot(
        &self,
        target: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let interval = 1.0 / per_second;
        let row = sqlx::query(
            "WITH cur AS (
                 SELECT GREATEST(tat, now()) AS t, paused_until AS p FROM target_limits WHERE target = $1 FOR UPDATE
             ), upd AS (
                 UPDATE target_limits SET tat = cur.t + make_interval(secs => $2) FROM cur
                 WHERE target = $1 AND (cur.p IS NULL OR cur.p <= now())
                   AND cur.t + make_interval(secs => $2 * (1 - $3)) <= now()
                 RETURNING 1
             )
             SELECT EXISTS (SELECT 1 FROM upd) AS granted,
                    GREATEST(
                        CASE WHEN cur.p > now() THEN EXTRACT(EPOCH FROM (cur.p - now())) ELSE 0 END,
                        EXTRACT(EPOCH FROM (cur.t + make_interval(secs => $2 * (1 - $3)) - now())),
                        0)::float8 AS wait
             FROM cur",
        )
        .bind(target)
        .bind(interval)
        .bind(f64::from(burst))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            self.ensure_limit(target).await?;
            return Ok(Some(Duration::ZERO));
        };
        if row.get::<bool, _>("granted") {
            Ok(None)
        } else {
            let wait: f64 = row.get("wait");
            // At least a millisecond, so a caller never spins.
            Ok(Some(Duration::from_secs_f64(wait.max(0.001))))
        }
    }

    /// How long until `acquire_slot` would grant a slot (pause included); takes nothing.
    pub async fn slot_ready_in(&self, target: &str, per_second: f64, burst: u32) -> Result<Duration, StoreError> {
        let wait: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(
                        CASE WHEN paused_until > now() THEN EXTRACT(EPOCH FROM (paused_until - now())) ELSE 0 END,
                        EXTRACT(EPOCH FROM (GREATEST(tat, now()) + make_interval(secs => $2 * (1 - $3)) - now())),
                        0)::float8
             FROM target_limits WHERE target = $1",
        )
        .bind(target)
        .bind(1.0 / per_second)
        .bind(f64::from(burst))
        .fetch_optional(&self.pool)
        .await?;
        Ok(Duration::from_secs_f64(wait.unwrap_or(0.0)))
    }

    /// Pauses every call of `target`, on every replica, for `wait` from now (database time).
    pub async fn pause_target(&self, target: &str, wait: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE target_limits
             SET paused_until = GREATEST(COALESCE(paused_until, now()), now() + make_interval(secs => $2))
             WHERE target = $1",
        )
        .bind(target)
        .bind(wait.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// What `orgprov replay` selects.
#[derive(Clone, Debug, Default)]
pub struct ReplaySelection {
    pub ids: Vec<String>,
    pub code: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub limit: i64,
}

/// Replay and retention (DESIGN.md §Semantics 10, 12).
impl Store {
    /// Failed requests matching `selection` (every given id is reported, whatever its state).
    pub async fn replay_candidates(
        &self,
        sel: &ReplaySelection,
    ) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, state, error ->> 'code' AS code FROM requests
             WHERE (cardinality($1::text[]) = 0 OR request_id = ANY($1))
               AND (cardinality($1::text[]) > 0 OR state = 'failed')
               AND ($2::text IS NULL OR error ->> 'code' = $2)
               AND ($3::timestamptz IS NULL OR completed_at >= $3)
               AND ($4::timestamptz IS NULL OR completed_at < $4)
             ORDER BY completed_at NULLS LAST, request_id LIMIT $5",
        )
        .bind(&sel.ids)
        .bind(&sel.code)
        .bind(sel.since)
        .bind(sel.until)
        .bind(sel.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Opens generation n+1 of a failed request and hands the transaction (row locked) and
    /// the stored request document to the caller, who publishes it before committing: a
    /// worker that receives the message blocks on the row until the new generation is
    /// visible, and a failed publish rolls the replay back. `None` when the request is not
    /// failed (succeeded requests are never re-provisioned) or has no stored document.
    pub async fn begin_replay(
        &self,
        request_id: &str,
    ) -> Result<Option<(Transaction<'static, Postgres>, i64, Value)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT generation, document, to_jsonb(r) - 'document' - 'spec' - 'body' AS previous
             FROM requests r WHERE request_id = $1 AND state = 'failed' AND document IS NOT NULL FOR UPDATE",
        )
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let generation: i64 = row.get::<i64, _>("generation") + 1;
        // The rendered spec is kept (render once); a request that failed before rendering is
        // rendered anew, so a fixed target or template takes effect. A lookup comes first
        // whenever an earlier generation may have created the organization.
        sqlx::query(
            "UPDATE requests SET generation = $2, state = 'active', attempts = 0, error = NULL,
                    organization_id = NULL, created = NULL, completed_at = NULL, owner = NULL,
                    lease_expires_at = NULL, generation_started_at = now(), updated_at = now(),
                    needs_reconcile = (spec IS NOT NULL)
             WHERE request_id = $1",
        )
        .bind(request_id)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO replays (request_id, generation, previous) VALUES ($1, $2, $3)")
            .bind(request_id)
            .bind(generation)
            .bind(row.get::<Value, _>("previous"))
            .execute(&mut *tx)
            .await?;
        Ok(Some((tx, generation, row.get("document"))))
    }

    /// Deletes attempt history older than `age`.
    pub async fn sweep_attempts(&self, age: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM attempts WHERE started_at < now() - make_interval(secs => $1)")
            .bind(age.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
