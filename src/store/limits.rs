//! Replica-wide admission per target (DESIGN.md §Semantics 9, 11): a GCRA token bucket and
//! the upstream's pause, kept in Postgres so every replica shares them and times are the
//! database's, not a local clock. [`PgAdmission`] puts them behind
//! [`crate::delivery::Admission`], the trait the HTTP side asks before every call.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::Row;

use super::{Store, StoreError};
use crate::delivery::Admission;

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

/// Admission shared by all replicas: the target's GCRA bucket and pause, rows in Postgres.
pub struct PgAdmission {
    pub store: Store,
    pub target: String,
    pub per_second: f64,
    pub burst: u32,
}

impl PgAdmission {
    /// The upstream counts arrivals, and calls granted a slot apart can arrive closer
    /// together (scheduling, connection reuse). Up to 100 ms worth of calls (at least one,
    /// leaving at least one) of the burst are kept as headroom for that jitter.
    fn effective_burst(&self) -> u32 {
        let headroom = ((self.per_second * 0.1).ceil() as u32).clamp(1, self.burst.saturating_sub(1).max(1));
        self.burst.saturating_sub(headroom).max(1)
    }
}

impl Admission for PgAdmission {
    fn acquire(&self) -> BoxFuture<'_, Result<Option<Duration>, String>> {
        let slot = self.store.acquire_slot(&self.target, self.per_second, self.effective_burst());
        slot.map(|r| r.map_err(|e| e.to_string())).boxed()
    }

    fn pause(&self, wait: Duration) -> BoxFuture<'_, ()> {
        async move {
            if let Err(e) = self.store.pause_target(&self.target, wait).await {
                tracing::warn!(target_name = %self.target, error = %e, "could not record the upstream's pause");
            }
        }
        .boxed()
    }

    fn ready_in(&self) -> BoxFuture<'_, Result<Duration, String>> {
        let wait = self.store.slot_ready_in(&self.target, self.per_second, self.effective_burst());
        wait.map(|r| r.map_err(|e| e.to_string())).boxed()
    }
}
