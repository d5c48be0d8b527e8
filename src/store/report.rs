//! The read side of `orgprov status`: everything Postgres knows about one request.

use serde_json::Value;
use sqlx::Row;
use time::OffsetDateTime;

use super::{Store, StoreError};

/// Everything `orgprov status` prints about one request.
#[derive(Debug, serde::Serialize)]
pub struct RequestReport {
    pub request: Value,
    pub attempts: Vec<Value>,
    pub events: Vec<Value>,
}

impl Store {
    pub async fn report(&self, request_id: &str) -> Result<Option<RequestReport>, StoreError> {
        let request: Option<Value> = sqlx::query_scalar(
            "SELECT to_jsonb(r) - 'owner' || jsonb_build_object('document', b.document, 'spec', b.spec)
                 FROM requests r LEFT JOIN request_bodies b USING (request_id) WHERE r.request_id = $1",
        )
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
