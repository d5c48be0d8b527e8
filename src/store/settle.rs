//! The end of a generation: outcome, last attempt, event and outbox row in one transaction,
//! fenced by the claim's token (DESIGN.md §Semantics 1, 4), and the record of messages too
//! broken to yield a request_id.

use serde_json::Value;
use time::OffsetDateTime;

use super::calls::insert_attempt;
use super::{AttemptRecord, Claim, Outcome, RequestState, Store, StoreError};
use crate::contract::{ErrorCode, EventError, FailedData, OutcomeEvent, SourceMessage};

impl Store {
    /// Settles a generation: outcome, last attempt, event and outbox row in one transaction,
    /// fenced by the claim's token. [`StoreError::LeaseLost`] when another holder took over.
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
                (RequestState::Succeeded, Some(organization_id.as_str()), Some(*created), None)
            }
            Outcome::Failed { error } => (RequestState::Failed, None, None, serde_json::to_value(error).ok()),
        };
        let updated = sqlx::query(
            "UPDATE requests SET state = $3, organization_id = $4, created = $5, error = $6,
                    completed_at = now(), updated_at = now(), owner = NULL, lease_expires_at = NULL,
                    needs_reconcile = false
             WHERE request_id = $1 AND fencing_token = $2 AND state = 'active'",
        )
        .bind(claim.request_id.as_str())
        .bind(claim.token)
        .bind(state.as_str())
        .bind(org)
        .bind(created)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::LeaseLost(claim.request_id.to_string()));
        }
        if let Some(a) = attempt {
            insert_attempt(&mut tx, claim, a).await?;
        }
        self.insert_event(&mut tx, Some(claim.request_id.as_str()), claim.generation, event).await?;
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
            Some(event_id) => super::outbox::enqueue(&mut tx, &event_id).await?,
            None => {
                let data = FailedData {
                    request_id: None,
                    generation: 1,
                    target: None,
                    provider: None,
                    attempts: 0,
                    failed_at: OffsetDateTime::now_utc(),
                    error: EventError {
                        code: ErrorCode::InvalidRequest,
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
}
