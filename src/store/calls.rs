//! Bookkeeping of upstream calls. A call is recorded as starting under a live lease with our
//! fencing token before it goes out, so a holder that lost its lease never calls the
//! upstream; a create also marks the request as needing a lookup before the next create
//! (DESIGN.md §Semantics 5). Every call that got an answer goes into the attempt history.

use std::time::Duration;

use super::{AttemptRecord, Claim, Store, StoreError};
use crate::lifecycle::CallKind;

impl Store {
    /// Records that an upstream call is starting, under a live lease with our token: a create
    /// counts as an attempt and marks the request as needing a lookup before the next one.
    /// `false` means the lease is lost and the call must not be made.
    pub async fn begin_call(&self, claim: &Claim, call: CallKind, lease: Duration) -> Result<bool, StoreError> {
        let create = call == CallKind::Create;
        let updated = sqlx::query(
            "UPDATE requests SET attempts = attempts + CASE WHEN $3 THEN 1 ELSE 0 END,
                    needs_reconcile = needs_reconcile OR $3,
                    lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active' AND lease_expires_at > now()",
        )
        .bind(claim.request_id.as_str())
        .bind(claim.token)
        .bind(create)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Undoes `begin_call` for a create that was never sent (throttled before sending).
    pub async fn refund_call(&self, claim: &Claim, needs_reconcile: bool) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE requests SET attempts = GREATEST(attempts - 1, 0), needs_reconcile = $3
             WHERE request_id = $1 AND fencing_token = $2",
        )
        .bind(claim.request_id.as_str())
        .bind(claim.token)
        .bind(needs_reconcile)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A lookup found nothing: no earlier create of ours exists upstream.
    pub async fn mark_reconciled(&self, claim: &Claim) -> Result<(), StoreError> {
        sqlx::query("UPDATE requests SET needs_reconcile = false WHERE request_id = $1 AND fencing_token = $2")
            .bind(claim.request_id.as_str())
            .bind(claim.token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes an answered call to the attempt history, while the lease is still ours: a
    /// holder that was fenced out writes nothing.
    pub async fn record_attempt(&self, claim: &Claim, a: &AttemptRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO attempts (request_id, generation, fencing_token, call, started_at, duration_ms, status_code,
                                   outcome, error)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
             WHERE EXISTS (SELECT 1 FROM requests WHERE request_id = $1 AND fencing_token = $3)",
        )
        .bind(claim.request_id.as_str())
        .bind(claim.generation)
        .bind(claim.token)
        .bind(a.call.as_str())
        .bind(a.started_at)
        .bind(a.duration.as_millis().min(i32::MAX as u128) as i32)
        .bind(a.status.map(i32::from))
        .bind(a.outcome.as_str())
        .bind(&a.error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
