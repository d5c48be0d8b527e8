//! Outcome events and the transactional outbox. An event is stored once, as the exact bytes
//! that are published; each publication owed is an outbox row, which the relay marks when
//! JetStream confirmed it. A redelivered finished request queues its stored event again, so
//! it is re-published with the same id and the same bytes (DESIGN.md §Semantics 4).

use std::time::Duration;

use sqlx::{Postgres, Row, Transaction};

use super::{Store, StoreError};
use crate::contract::OutcomeEvent;

/// An outbox row ready to publish.
#[derive(Clone, Debug)]
pub struct Pending {
    pub outbox_id: i64,
    pub event_id: String,
    pub subject: String,
    /// The stored bytes (cheap to clone for a publish).
    pub payload: bytes::Bytes,
}

impl Store {
    /// Stores `event` (once: a second insert of the same id keeps the first bytes) and queues
    /// its publication; the outbox row to publish, with the stored bytes.
    pub(super) async fn insert_event(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request_id: Option<&str>,
        generation: i64,
        event: &OutcomeEvent,
    ) -> Result<Vec<Pending>, StoreError> {
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
        enqueue(tx, &event.id).await
    }

    /// Locks up to `limit` unpublished outbox rows queued at least `min_age` ago (skipping
    /// rows another relay holds): the orphans, whose publisher died or failed. Rows the
    /// committing process is still publishing are younger.
    pub async fn begin_outbox_batch(
        &self,
        limit: i64,
        min_age: Duration,
    ) -> Result<(Transaction<'static, Postgres>, Vec<Pending>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT o.id, e.event_id, e.subject, e.payload FROM outbox o JOIN events e ON e.event_id = o.event_id
             WHERE o.published_at IS NULL AND o.enqueued_at <= now() - make_interval(secs => $2)
             ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(limit)
        .bind(min_age.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        Ok((tx, rows.iter().map(pending).collect()))
    }

    /// Marks outbox rows as published (JetStream confirmed them).
    pub async fn mark_published<'c, E>(executor: E, ids: &[i64]) -> Result<(), StoreError>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL")
            .bind(ids)
            .execute(executor)
            .await?;
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

/// Queues one more publication of a stored event; its outbox row.
pub(super) async fn enqueue(tx: &mut Transaction<'_, Postgres>, event_id: &str) -> Result<Vec<Pending>, StoreError> {
    let rows = sqlx::query(
        "WITH o AS (INSERT INTO outbox (event_id) VALUES ($1) RETURNING id, event_id)
         SELECT o.id, e.event_id, e.subject, e.payload FROM o JOIN events e USING (event_id)",
    )
    .bind(event_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(pending).collect())
}

/// Queues the stored outcome of a finished generation again (a redelivered request); its
/// outbox rows.
pub(super) async fn requeue_outcome(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &str,
    generation: i64,
) -> Result<Vec<Pending>, StoreError> {
    let rows = sqlx::query(
        "WITH o AS (
             INSERT INTO outbox (event_id)
             SELECT event_id FROM events WHERE request_id = $1 AND generation = $2
             RETURNING id, event_id
         )
         SELECT o.id, e.event_id, e.subject, e.payload FROM o JOIN events e USING (event_id)",
    )
    .bind(request_id)
    .bind(generation)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(pending).collect())
}

fn pending(r: &sqlx::postgres::PgRow) -> Pending {
    Pending { outbox_id: r.get(0), event_id: r.get(1), subject: r.get(2), payload: r.get::<Vec<u8>, _>(3).into() }
}
