//! The fenced lease (DESIGN.md §Semantics 1–3): claiming a request writes the owner, a new
//! fencing token and a lease end in Postgres time; the holder renews it while it works and
//! every later write is checked against the token. The first claim renders the request
//! ("render once") and stores the result for every later attempt; a message with the same
//! request_id and other content is recorded as a mismatch and never provisions again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::{Claim, EarlyFailure, Pending, Prepared, RequestState, Store, StoreError};
use crate::contract::{FailedData, OutcomeEvent, RequestId};

/// What a worker learned from claiming a request.
#[derive(Debug)]
pub enum ClaimResult {
    /// This worker holds the lease: go ahead.
    Claimed(Box<Claim>),
    /// The request ended: earlier (`reemitted`: its stored outcome event was queued again),
    /// or now, because it failed before any upstream call. `publish`: the outbox rows queued.
    Finished { reemitted: bool, publish: Vec<Pending> },
    /// Another holder's lease is live: hand the message back for this long.
    Busy { retry_in: Duration },
}

/// The request row as the claim reads it, under its row lock.
struct Current {
    state: RequestState,
    content_hash: String,
    generation: i64,
    attempts: i64,
    needs_reconcile: bool,
    /// Seconds left on a live lease held by someone (maybe us, before a crash).
    lease_left: Option<f64>,
    prepared: Option<Prepared>,
    age: Duration,
}

/// A request this worker sees for the first time, to claim in a batch ([`Store::claim_new`]).
#[derive(Clone, Debug)]
pub struct NewClaim {
    pub request_id: RequestId,
    pub content_hash: String,
    pub document: Value,
    /// Rendered already: a new request is rendered before its claim ("render once" still
    /// holds: only the insert that creates the row stores it).
    pub prepared: Arc<Prepared>,
    pub owner: String,
    pub lease: Duration,
    /// The worker holds a slot of the target's rate limit for the first create: the claim
    /// also records that create as starting (an attempt, and a lookup first after any
    /// interruption), so the call goes out without a statement of its own.
    pub create_started: bool,
}

impl Store {
    /// Claims requests never seen before, in one statement: each row is inserted with its
    /// lease (fencing token 1), its rendered form and, with `create_started`, its first create
    /// recorded as starting. `None` for a request whose row exists already (or that appears
    /// twice in `items`): the caller claims it with [`Store::claim`], which handles every
    /// other case (redeliveries, live leases, finished requests, other content).
    pub async fn claim_new(&self, items: &[NewClaim]) -> Result<Vec<Option<Claim>>, StoreError> {
        let mut first = std::collections::HashSet::with_capacity(items.len());
        let fresh: Vec<&NewClaim> = items.iter().filter(|c| first.insert(c.request_id.as_str())).collect();
        let column = |f: fn(&NewClaim) -> &str| fresh.iter().map(|c| f(c)).collect::<Vec<&str>>();
        let json = |f: fn(&NewClaim) -> &Value| fresh.iter().map(|c| Json(f(c))).collect::<Vec<Json<&Value>>>();
        let inserted: Vec<String> = sqlx::query_scalar(
            "WITH i AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[],
                                      $7::text[], $8::jsonb[], $9::jsonb[], $10::text[], $11::text[],
                                      $12::float8[], $13::bool[])
                     AS i(request_id, content_hash, document, target, provider, template, template_version,
                          spec, body, natural_key, owner, lease, started)
             ), r AS (
                 INSERT INTO requests (request_id, content_hash, state, target, provider, template,
                                       template_version, natural_key, owner, fencing_token, lease_expires_at,
                                       attempts, needs_reconcile)
                 SELECT i.request_id, i.content_hash, 'active', i.target, i.provider, i.template,
                        i.template_version, i.natural_key, i.owner, 1, now() + make_interval(secs => i.lease),
                        CASE WHEN i.started THEN 1 ELSE 0 END, i.started
                 FROM i
                 ON CONFLICT (request_id) DO NOTHING
                 RETURNING request_id
             ), b AS (
                 INSERT INTO request_bodies (request_id, document, spec, body)
                 SELECT i.request_id, i.document, i.spec, i.body FROM i JOIN r USING (request_id)
                 ON CONFLICT (request_id) DO NOTHING
             )
             SELECT request_id FROM r",
        )
        .bind(column(|c| c.request_id.as_str()))
        .bind(column(|c| &c.content_hash))
        .bind(json(|c| &c.document))
        .bind(column(|c| &c.prepared.target))
        .bind(column(|c| &c.prepared.provider))
        .bind(column(|c| &c.prepared.template))
        .bind(column(|c| &c.prepared.template_version))
        .bind(json(|c| &c.prepared.spec))
        .bind(json(|c| &c.prepared.body))
        .bind(column(|c| &c.prepared.natural_key))
        .bind(column(|c| &c.owner))
        .bind(fresh.iter().map(|c| c.lease.as_secs_f64()).collect::<Vec<f64>>())
        .bind(fresh.iter().map(|c| c.create_started).collect::<Vec<bool>>())
        .fetch_all(&self.pool)
        .await?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let mut claimed = std::collections::HashSet::with_capacity(inserted.len());
        Ok(items
            .iter()
            .map(|c| {
                let id = c.request_id.as_str();
                (inserted.contains(id) && claimed.insert(id)).then(|| Claim {
                    request_id: c.request_id.clone(),
                    generation: 1,
                    token: 1,
                    prepared: c.prepared.clone(),
                    attempts: 0,
                    needs_reconcile: false,
                    create_started: c.create_started,
                    age: Duration::ZERO,
                })
            })
            .collect())
    }

    /// Claims `request_id` for `owner` with a fenced lease. On the first claim `prepare` runs
    /// (render once) and its result is stored; an `EarlyFailure` settles the request as failed
    /// at once. A finished request queues its stored outcome event again.
    pub async fn claim(
        &self,
        request_id: &RequestId,
        content_hash: &str,
        document: Option<&Value>,
        owner: &str,
        lease: Duration,
        prepare: impl FnOnce() -> Result<Prepared, EarlyFailure>,
    ) -> Result<ClaimResult, StoreError> {
        let id = request_id.as_str();
        let mut tx = self.pool.begin().await?;
        let current = lock_or_insert(&mut tx, id, content_hash, document).await?;
        if current.content_hash != content_hash {
            record_mismatch(&mut tx, id, content_hash).await?;
        }
        if current.state != RequestState::Active {
            let publish = super::outbox::requeue_outcome(&mut tx, id, current.generation).await?;
            tx.commit().await?;
            return Ok(ClaimResult::Finished { reemitted: true, publish });
        }
        if let Some(left) = current.lease_left {
            tx.commit().await?;
            // Come back when the lease ends, or sooner to pick up the holder's outcome.
            return Ok(ClaimResult::Busy { retry_in: Duration::from_secs_f64(left.clamp(0.5, 2.0)) });
        }
        let prepared = match current.prepared {
            Some(p) => p,
            None => match prepare() {
                Ok(p) => p,
                Err(failure) => {
                    let publish = self.fail_early(&mut tx, id, current.generation, failure).await?;
                    tx.commit().await?;
                    return Ok(ClaimResult::Finished { reemitted: false, publish });
                }
            },
        };
        let token = take_lease(&mut tx, id, owner, lease, &prepared).await?;
        tx.commit().await?;
        Ok(ClaimResult::Claimed(Box::new(Claim {
            request_id: request_id.clone(),
            generation: current.generation,
            token,
            prepared: Arc::new(prepared),
            attempts: current.attempts,
            needs_reconcile: current.needs_reconcile,
            create_started: false,
            age: current.age,
        })))
    }

    /// Ends the generation as failed before any upstream call (unknown target or template,
    /// a request the template or provider rules refuse).
    async fn fail_early(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request_id: &str,
        generation: i64,
        failure: EarlyFailure,
    ) -> Result<Vec<Pending>, StoreError> {
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
            "UPDATE requests SET state = $2, target = $3, provider = $4, error = $5,
                    completed_at = now(), updated_at = now() WHERE request_id = $1",
        )
        .bind(request_id)
        .bind(RequestState::Failed.as_str())
        .bind(&failure.target)
        .bind(&failure.provider)
        .bind(serde_json::to_value(&failure.error).unwrap_or(Value::Null))
        .execute(&mut **tx)
        .await?;
        self.insert_event(tx, Some(request_id), generation, &event).await
    }

    /// Renews the lease; `false` when it was lost.
    pub async fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE requests SET lease_expires_at = now() + make_interval(secs => $3)
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active'",
        )
        .bind(claim.request_id.as_str())
        .bind(claim.token)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Gives the lease up early so a redelivery can claim at once.
    pub async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE requests SET lease_expires_at = now(), owner = NULL
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active'",
        )
        .bind(claim.request_id.as_str())
        .bind(claim.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Inserts the request on first sight and locks its row.
async fn lock_or_insert(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &str,
    content_hash: &str,
    document: Option<&Value>,
) -> Result<Current, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO requests (request_id, content_hash, state) VALUES ($1, $2, 'active')
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(content_hash)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 1 {
        sqlx::query("INSERT INTO request_bodies (request_id, document) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(request_id)
            .bind(document)
            .execute(&mut **tx)
            .await?;
    }
    let row = sqlx::query(
        "SELECT r.state, r.content_hash, r.generation, r.attempts, r.needs_reconcile,
                CASE WHEN r.lease_expires_at > now()
                     THEN EXTRACT(EPOCH FROM (r.lease_expires_at - now()))::float8 END AS lease_left,
                r.target, r.provider, r.template, r.template_version, b.spec, b.body, r.natural_key,
                EXTRACT(EPOCH FROM (now() - r.generation_started_at))::float8 AS age
         FROM requests r LEFT JOIN request_bodies b USING (request_id)
         WHERE r.request_id = $1 FOR UPDATE OF r",
    )
    .bind(request_id)
    .fetch_one(&mut **tx)
    .await?;
    current(&row)
}

fn current(row: &PgRow) -> Result<Current, StoreError> {
    let state: String = row.try_get("state")?;
    let state = RequestState::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown request state {state:?}").into()))?;
    let prepared = match row.try_get::<Option<Value>, _>("spec")? {
        Some(spec) => Some(Prepared {
            target: row.try_get("target")?,
            provider: row.try_get("provider")?,
            template: row.try_get("template")?,
            template_version: row.try_get("template_version")?,
            spec,
            body: row.try_get("body")?,
            natural_key: row.try_get("natural_key")?,
        }),
        None => None,
    };
    Ok(Current {
        state,
        content_hash: row.try_get("content_hash")?,
        generation: row.try_get("generation")?,
        attempts: row.try_get("attempts")?,
        needs_reconcile: row.try_get("needs_reconcile")?,
        lease_left: row.try_get("lease_left")?,
        prepared,
        age: Duration::from_secs_f64(row.try_get::<f64, _>("age")?.max(0.0)),
    })
}

/// The same request_id with other content: the original request stands; the copy is noted.
async fn record_mismatch(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &str,
    content_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE requests SET mismatches = mismatches + 1 WHERE request_id = $1")
        .bind(request_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO request_mismatches (request_id, content_hash) VALUES ($1, $2)")
        .bind(request_id)
        .bind(content_hash)
        .execute(&mut **tx)
        .await?;
    crate::telemetry::METRICS.content_mismatches.inc();
    tracing::warn!(request_id, "same request_id with different content: the original request stands");
    Ok(())
}

/// Takes the lease with a new fencing token and stores the prepared request.
async fn take_lease(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &str,
    owner: &str,
    lease: Duration,
    prepared: &Prepared,
) -> Result<i64, StoreError> {
    let token = sqlx::query_scalar(
        "UPDATE requests SET fencing_token = fencing_token + 1, owner = $2,
                lease_expires_at = now() + make_interval(secs => $3), updated_at = now(),
                target = $4, provider = $5, template = $6, template_version = $7, natural_key = $8
         WHERE request_id = $1 RETURNING fencing_token",
    )
    .bind(request_id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(&prepared.target)
    .bind(&prepared.provider)
    .bind(&prepared.template)
    .bind(&prepared.template_version)
    .bind(&prepared.natural_key)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO request_bodies (request_id, spec, body) VALUES ($1, $2, $3)
         ON CONFLICT (request_id) DO UPDATE SET spec = EXCLUDED.spec, body = EXCLUDED.body
         WHERE request_bodies.spec IS DISTINCT FROM EXCLUDED.spec OR request_bodies.body IS DISTINCT FROM EXCLUDED.body",
    )
    .bind(request_id)
    .bind(&prepared.spec)
    .bind(&prepared.body)
    .execute(&mut **tx)
    .await?;
    Ok(token)
}
