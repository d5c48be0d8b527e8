//! `orgprov replay` (DESIGN.md §Semantics 10): a failed request is re-driven as a new
//! generation, never a succeeded one; and the retention sweeps (§Semantics 12).

use std::time::Duration;

use serde_json::Value;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::{RequestState, Store, StoreError};
use crate::contract::ErrorCode;

/// What `orgprov replay` selects.
#[derive(Clone, Debug, Default)]
pub struct ReplaySelection {
    pub ids: Vec<String>,
    pub code: Option<ErrorCode>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub limit: i64,
}

/// A request `orgprov replay` selected, with what it is now.
#[derive(Clone, Debug)]
pub struct ReplayCandidate {
    pub request_id: String,
    pub state: RequestState,
    /// The error code it failed with.
    pub code: Option<String>,
}

impl Store {
    /// Failed requests matching `selection` (every given id is reported, whatever its state).
    pub async fn replay_candidates(&self, sel: &ReplaySelection) -> Result<Vec<ReplayCandidate>, StoreError> {
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
        .bind(sel.code.map(ErrorCode::as_str))
        .bind(sel.since)
        .bind(sel.until)
        .bind(sel.limit)
        .fetch_all(&self.pool)
        .await?;
        let candidates = rows
            .into_iter()
            .map(|r| {
                let state: String = r.try_get(1)?;
                let state = RequestState::parse(&state)
                    .ok_or_else(|| sqlx::Error::Decode(format!("unknown request state {state:?}").into()))?;
                Ok(ReplayCandidate { request_id: r.try_get(0)?, state, code: r.try_get(2)? })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(candidates)
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
            "SELECT r.generation, b.document, b.spec IS NOT NULL AS rendered, to_jsonb(r) AS previous
             FROM requests r JOIN request_bodies b USING (request_id)
             WHERE r.request_id = $1 AND r.state = 'failed' AND b.document IS NOT NULL FOR UPDATE OF r",
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
                    needs_reconcile = $3
             WHERE request_id = $1",
        )
        .bind(request_id)
        .bind(generation)
        .bind(row.get::<bool, _>("rendered"))
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
