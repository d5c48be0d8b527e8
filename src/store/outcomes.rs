//! The read side of `orgprov bulk`: where many requests stand, by request_id, in one query
//! per batch.

use serde_json::Value;
use sqlx::Row;

use super::{RequestState, Store, StoreError};

/// What Postgres records of one request's current generation.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestOutcome {
    pub request_id: String,
    pub state: RequestState,
    pub organization_id: Option<String>,
    /// False when an organization made by an earlier attempt was found and adopted.
    pub created: Option<bool>,
    /// `{code, message, ...}` of a failed request.
    pub error: Option<Value>,
}

impl Store {
    /// The recorded state of each of `ids` that Postgres knows; ids it does not know are left
    /// out. One query: callers keep `ids` to a few thousand.
    pub async fn outcomes(&self, ids: &[String]) -> Result<Vec<RequestOutcome>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, state, organization_id, created, error FROM requests WHERE request_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(RequestOutcome {
                    request_id: r.get("request_id"),
                    state: RequestState::parse(r.get::<&str, _>("state"))?,
                    organization_id: r.get("organization_id"),
                    created: r.get("created"),
                    error: r.get("error"),
                })
            })
            .collect())
    }
}
