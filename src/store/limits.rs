//! Replica-wide admission per target (DESIGN.md §Semantics 9, 11): a GCRA token bucket and
//! the upstream's pause, kept in Postgres so every replica shares them and times are the
//! database's, not a local clock. [`PgSlots`] puts them behind
//! [`crate::delivery::SlotSource`], the trait the HTTP side leases call slots from.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::Row;

use super::{Store, StoreError};
use crate::delivery::{Lease, SlotSource};

impl Store {
    pub async fn ensure_limit(&self, target: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO target_limits (target) VALUES ($1) ON CONFLICT (target) DO NOTHING")
            .bind(target)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Leases up to `wanted` call slots of `target`'s GCRA bucket (`per_second`, `burst`) at
    /// once, under the row lock: as many as the bucket holds now, none while the target is
    /// paused. With none granted, the wait until one is free (pause included).
    pub async fn lease_slots(
        &self,
        target: &str,
        per_second: f64,
        burst: u32,
        wanted: u32,
    ) -> Result<Lease, StoreError> {
        // GCRA: with t = max(tat, now) and interval T, the k-th slot is free when
        // t + T·(k − b) <= now, so k = floor(b − (t − now)/T) slots are free now; granting
        // them moves tat to t + k·T.
        let row = sqlx::query(
            "WITH cur AS (
                 SELECT GREATEST(tat, now()) AS t, paused_until AS p FROM target_limits WHERE target = $1 FOR UPDATE
             ), k AS (
                 SELECT t, p, CASE WHEN p > now() THEN 0
                     ELSE LEAST($4, GREATEST(0, floor($3 - EXTRACT(EPOCH FROM (t - now())) / $2)))::int4 END AS n
                 FROM cur
             ), upd AS (
                 UPDATE target_limits SET tat = k.t + make_interval(secs => $2 * k.n) FROM k
                 WHERE target = $1 AND k.n > 0
                 RETURNING 1
             )
             SELECT k.n AS granted,
                    GREATEST(
                        CASE WHEN k.p > now() THEN EXTRACT(EPOCH FROM (k.p - now())) ELSE 0 END,
                        EXTRACT(EPOCH FROM (k.t + make_interval(secs => $2 * (1 - $3)) - now())),
                        0)::float8 AS wait
             FROM k",
        )
        .bind(target)
        .bind(1.0 / per_second)
        .bind(f64::from(burst))
        .bind(wanted.min(i32::MAX as u32) as i32)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // A target added since start-up: its row is made, and the next lease counts.
            self.ensure_limit(target).await?;
            return Ok(Lease { granted: 0, wait: Duration::from_millis(1) });
        };
        let granted: i32 = row.get("granted");
        let wait: f64 = row.get("wait");
        // At least a millisecond, so a caller never spins.
        Ok(Lease { granted: granted.max(0) as u32, wait: Duration::from_secs_f64(wait.clamp(0.001, 86_400.0)) })
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

/// The call slots every replica shares: the target's GCRA bucket and pause, a row in
/// Postgres, leased a few slots at a time by each replica's [`crate::delivery::Admission`].
pub struct PgSlots {
    pub store: Store,
    pub target: String,
    pub per_second: f64,
    pub burst: u32,
}

impl PgSlots {
    /// The upstream counts arrivals, and slots granted apart can arrive closer together: a
    /// leased slot may wait up to [`crate::delivery::LEASE_VALIDITY`] for its call, and the
    /// call's way to the upstream adds jitter (scheduling, connection reuse). Up to 150 ms
    /// worth of calls of the burst are kept as headroom for both: at least one, at most half
    /// the burst (a burst smaller than that cannot be protected by holding slots back).
    fn effective_burst(&self) -> u32 {
        let headroom = ((self.per_second * 0.15).ceil() as u32).clamp(1, (self.burst / 2).max(1));
        self.burst.saturating_sub(headroom).max(1)
    }
}

impl SlotSource for PgSlots {
    fn lease(&self, wanted: u32) -> BoxFuture<'_, Result<Lease, String>> {
        let lease = self.store.lease_slots(&self.target, self.per_second, self.effective_burst(), wanted);
        lease.map(|r| r.map_err(|e| e.to_string())).boxed()
    }

    fn pause(&self, wait: Duration) -> BoxFuture<'_, ()> {
        async move {
            if let Err(e) = self.store.pause_target(&self.target, wait).await {
                tracing::warn!(target_name = %self.target, error = %e, "could not record the upstream's pause");
            }
        }
        .boxed()
    }

    fn per_second(&self) -> f64 {
        self.per_second
    }
}
