//! The end of a generation: outcome, last attempt, event and outbox row, all or nothing,
//! fenced by the claim's token (DESIGN.md §Semantics 1, 4), many generations per statement;
//! and the record of messages too broken to yield a request_id.

use std::borrow::Borrow;

use serde_json::Value;
use sqlx::Row;
use time::OffsetDateTime;

use super::{AttemptRecord, Claim, Outcome, Pending, RequestState, Store, StoreError};
use crate::contract::{ErrorCode, EventError, FailedData, OutcomeEvent, SourceMessage};

/// The end of one generation, to settle in a batch ([`Store::settle`]).
#[derive(Clone, Debug)]
pub struct Settle {
    pub request_id: String,
    pub generation: i64,
    /// The claim's fencing token: the row is settled only while it is still ours.
    pub token: i64,
    pub outcome: Outcome,
    /// The last call, when it belongs in the attempt history.
    pub attempt: Option<AttemptRecord>,
    pub event: OutcomeEvent,
}

impl Settle {
    pub fn of(claim: &Claim, outcome: Outcome, attempt: Option<AttemptRecord>, event: OutcomeEvent) -> Settle {
        Settle {
            request_id: claim.request_id.to_string(),
            generation: claim.generation,
            token: claim.token,
            outcome,
            attempt,
            event,
        }
    }
}

/// What became of one [`Settle`].
#[derive(Debug)]
pub enum Settled {
    /// Committed; `publish` is its outbox row, to publish now (absent when the event existed
    /// already: the relay then publishes the stored bytes).
    Done { publish: Option<Pending> },
    /// Another holder took the request over: nothing was written.
    LeaseLost,
}

impl Store {
    /// Settles generations, many in one statement: for each one still held with its fencing
    /// token, the outcome, the last attempt, the event and its outbox row, all or nothing.
    pub async fn settle<S: Borrow<Settle>>(&self, items: &[S]) -> Result<Vec<Settled>, StoreError> {
        let items: Vec<&Settle> = items.iter().map(Borrow::borrow).collect();
        let mut state = Vec::with_capacity(items.len());
        let mut org = Vec::with_capacity(items.len());
        let mut created = Vec::with_capacity(items.len());
        let mut error = Vec::with_capacity(items.len());
        for item in &items {
            match &item.outcome {
                Outcome::Succeeded { organization_id, created: c } => {
                    state.push(RequestState::Succeeded.as_str());
                    org.push(Some(organization_id.clone()));
                    created.push(Some(*c));
                    error.push(None);
                }
                Outcome::Failed { error: e } => {
                    state.push(RequestState::Failed.as_str());
                    org.push(None);
                    created.push(None);
                    error.push(serde_json::to_value(e).ok());
                }
            }
        }
        let attempt = |f: fn(&AttemptRecord) -> Option<String>| {
            items.iter().map(|i| i.attempt.as_ref().and_then(f)).collect::<Vec<Option<String>>>()
        };
        let subjects: Vec<String> = items.iter().map(|i| self.naming.subject(&i.event)).collect();
        let rows = sqlx::query(
            "WITH i AS (
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::bool[],
                                      $7::jsonb[], $8::text[], $9::timestamptz[], $10::int4[], $11::int4[],
                                      $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::bytea[])
                     WITH ORDINALITY AS i(request_id, generation, token, state, org, created, error, call,
                                          started_at, duration_ms, status_code, outcome, attempt_error,
                                          event_id, event_type, subject, payload, n)
             ), s AS (
                 UPDATE requests r SET state = i.state, organization_id = i.org, created = i.created,
                        error = i.error, completed_at = now(), updated_at = now(), owner = NULL,
                        lease_expires_at = NULL, needs_reconcile = false
                 FROM i
                 WHERE r.request_id = i.request_id AND r.fencing_token = i.token AND r.state = 'active'
                 RETURNING i.n
             ), a AS (
                 INSERT INTO attempts (request_id, generation, fencing_token, call, started_at, duration_ms,
                                       status_code, outcome, error)
                 SELECT i.request_id, i.generation, i.token, i.call, i.started_at, i.duration_ms, i.status_code,
                        i.outcome, i.attempt_error
                 FROM i JOIN s USING (n) WHERE i.call IS NOT NULL
             ), e AS (
                 INSERT INTO events (event_id, request_id, generation, event_type, subject, payload)
                 SELECT i.event_id, i.request_id, i.generation, i.event_type, i.subject, i.payload
                 FROM i JOIN s USING (n)
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id
             ), o AS (
                 INSERT INTO outbox (event_id) SELECT i.event_id FROM i JOIN s USING (n)
                 RETURNING id, event_id
             )
             SELECT i.n, o.id AS outbox_id, e.event_id IS NOT NULL AS new_event
             FROM i JOIN o USING (event_id) LEFT JOIN e USING (event_id)",
        )
        .bind(items.iter().map(|i| i.request_id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.generation).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.token).collect::<Vec<_>>())
        .bind(state)
        .bind(org)
        .bind(created)
        .bind(error)
        .bind(attempt(|a| Some(a.call.as_str().to_owned())))
        .bind(items.iter().map(|i| i.attempt.as_ref().map(|a| a.started_at)).collect::<Vec<_>>())
        .bind(
            items
                .iter()
                .map(|i| i.attempt.as_ref().map(|a| a.duration.as_millis().min(i32::MAX as u128) as i32))
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|i| i.attempt.as_ref().and_then(|a| a.status.map(i32::from))).collect::<Vec<_>>())
        .bind(attempt(|a| Some(a.outcome.as_str().to_owned())))
        .bind(attempt(|a| a.error.clone()))
        .bind(items.iter().map(|i| i.event.id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.event_type).collect::<Vec<_>>())
        .bind(&subjects)
        .bind(items.iter().map(|i| i.event.payload.as_slice()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut answers: Vec<Settled> = items.iter().map(|_| Settled::LeaseLost).collect();
        for row in rows {
            let n: i64 = row.try_get("n")?;
            let Some(item) = usize::try_from(n - 1).ok().and_then(|k| items.get(k)) else { continue };
            let publish = row.try_get::<bool, _>("new_event")?.then(|| -> Result<Pending, StoreError> {
                Ok(Pending {
                    outbox_id: row.try_get("outbox_id")?,
                    event_id: item.event.id.clone(),
                    subject: subjects[(n - 1) as usize].clone(),
                    payload: bytes::Bytes::copy_from_slice(&item.event.payload),
                })
            });
            answers[(n - 1) as usize] = Settled::Done { publish: publish.transpose()? };
        }
        Ok(answers)
    }

    /// Records a message that never yielded a request_id and queues its `org.failed`; a
    /// redelivery of the same stream message queues the stored event again. Returns the
    /// outbox rows to publish.
    pub async fn reject_unreadable(
        &self,
        source: &SourceMessage,
        reason: &str,
        details: Value,
    ) -> Result<Vec<Pending>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT event_id FROM rejected_messages WHERE stream = $1 AND sequence = $2")
                .bind(&source.stream)
                .bind(source.sequence as i64)
                .fetch_optional(&mut *tx)
                .await?;
        let pending = match existing {
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
                self.insert_event(&mut tx, None, 1, &event).await?
            }
        };
        tx.commit().await?;
        Ok(pending)
    }
}
