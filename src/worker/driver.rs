//! The driver of one request: it claims the request, then carries out what the
//! [`Lifecycle`] decides — admission, the fenced call bookkeeping, the provider call, waits,
//! hand-backs and the settle — against the store, the provider and the clock. Every decision
//! is the core's; everything here is I/O and the order it happens in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Disposition, TargetRuntime, Worker, jitter, store_trouble};
use crate::contract::{ErrorCode, EventError, FailedData, OutcomeEvent, ProvisionedData, RequestId};
use crate::delivery::{Queued, admitted};
use crate::fault::{CrashPoint, crash_at, crash_soon};
use crate::lifecycle::{CallKind, Decision, Lifecycle, Limits, Outcome, Step};
use crate::providers::{Answered, CallError};
use crate::store::{AttemptRecord, Claim, ClaimResult, EarlyFailure, Prepared, Settle, Settled, Store, StoreError};
use crate::telemetry::METRICS;

/// A message that yielded a request_id: what the claim is keyed and checked by.
pub(super) struct Keyed<'a> {
    pub request_id: &'a RequestId,
    pub content_hash: &'a str,
    /// The request as received, stored when the claim creates the row.
    pub document: Option<&'a serde_json::Value>,
}

impl Worker {
    /// Claims the request (rendering it on the first claim) and drives it to an outcome.
    pub(super) async fn claim_and_drive(
        &self,
        keyed: Keyed<'_>,
        runtime: Option<&TargetRuntime>,
        abandon: &CancellationToken,
        prepare: impl FnOnce(Option<&TargetRuntime>) -> Result<Prepared, EarlyFailure>,
    ) -> Disposition {
        let lease = Duration::from_secs(self.settings.worker.lease_secs);
        let Keyed { request_id, content_hash, document } = keyed;
        let claim = self.store.claim(request_id, content_hash, document, &self.owner, lease, || prepare(runtime)).await;
        match claim {
            Ok(ClaimResult::Finished { reemitted, publish }) => {
                if reemitted {
                    METRICS.reemitted.inc();
                } else {
                    METRICS.failed.inc();
                }
                self.publisher.publish(publish);
                Disposition::Ack
            }
            Ok(ClaimResult::Busy { retry_in }) => {
                tracing::debug!(?retry_in, "request is leased by another holder");
                Disposition::Nak(retry_in)
            }
            Ok(ClaimResult::Claimed(claim)) => {
                crash_at(CrashPoint::AfterClaim);
                match self.targets.get(&claim.prepared.target) {
                    Some(rt) => self.drive(&claim, rt, abandon).await,
                    None => {
                        // Stored by an earlier deployment whose configuration had this target.
                        let error = EventError {
                            code: ErrorCode::UnknownTarget,
                            message: format!("target {:?} is not configured on this worker", claim.prepared.target),
                            upstream_status: None,
                            details: None,
                        };
                        self.settle(&claim, None, Outcome::Failed { error }, None, claim.attempts).await
                    }
                }
            }
            Err(e) => store_trouble(e),
        }
    }

    /// Runs the lifecycle of a claimed request, with the lease renewed alongside.
    pub(super) async fn drive(&self, claim: &Claim, rt: &TargetRuntime, abandon: &CancellationToken) -> Disposition {
        let lease = Duration::from_secs(self.settings.worker.lease_secs);
        let lost = CancellationToken::new();
        let _heartbeat =
            super::AbortOnDrop(tokio::spawn(heartbeat(self.store.clone(), claim.clone(), lease, lost.clone())));
        let retry = rt.target.retry;
        let limits = Limits {
            max_attempts: i64::from(retry.max_attempts.unwrap_or(self.settings.worker.max_attempts)),
            deadline: Instant::now() + Duration::from_secs(retry.deadline_secs).saturating_sub(claim.age),
            max_inline_wait: Duration::from_secs(self.settings.worker.max_inline_wait_secs),
            reconcile_delay: rt.provider.reconcile_delay(),
            retry: rt.delivery.retry,
        };
        let mut life = Lifecycle::new(
            limits,
            claim.prepared.natural_key.clone(),
            claim.attempts,
            claim.needs_reconcile,
            fastrand::Rng::new(),
        );
        let run = Run {
            worker: self,
            claim,
            rt,
            lease,
            lost: &lost,
            abandon,
            prestarted: AtomicBool::new(claim.create_started),
            queued: Mutex::new(None),
        };
        run.steps(&mut life).await
    }

    /// Writes the outcome, attempt, event and outbox row, fenced by the claim's token, in the
    /// next group commit; the message is acked after it.
    async fn settle(
        &self,
        claim: &Claim,
        rt: Option<&TargetRuntime>,
        outcome: Outcome,
        record: Option<AttemptRecord>,
        attempts: i64,
    ) -> Disposition {
        let provider =
            rt.map(|r| r.target.provider_name().to_owned()).unwrap_or_else(|| claim.prepared.provider.clone());
        let event = self.outcome_event(claim, provider, &outcome, attempts);
        let (event_type, event_id) = (event.event_type, event.id.clone());
        let settle = Arc::new(Settle::of(claim, outcome, record, event));
        let mut tries = 0;
        loop {
            match self.settles.submit(settle.clone()).await {
                Ok(Settled::Done { .. }) => {
                    crash_at(CrashPoint::AfterCommit);
                    match settle.outcome {
                        Outcome::Succeeded { .. } => METRICS.provisioned.inc(),
                        Outcome::Failed { .. } => METRICS.failed.inc(),
                    };
                    tracing::info!(event_type, %event_id, "settled");
                    return Disposition::Ack;
                }
                Ok(Settled::LeaseLost) => {
                    METRICS.lease_lost.inc();
                    tracing::warn!("lease lost before settle; the new holder reconciles");
                    return Disposition::Nak(Duration::from_secs(1));
                }
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(error = %e, "settle failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => return store_trouble(e),
            }
        }
    }

    /// The outcome event of a generation (its id is stable per request, generation and type).
    fn outcome_event(&self, claim: &Claim, provider: String, outcome: &Outcome, attempts: i64) -> OutcomeEvent {
        let now = OffsetDateTime::now_utc();
        let p = &claim.prepared;
        let source = &self.settings.worker.event_source;
        match outcome {
            Outcome::Succeeded { organization_id, created } => OutcomeEvent::provisioned(
                source,
                ProvisionedData {
                    request_id: claim.request_id.to_string(),
                    generation: claim.generation,
                    target: p.target.clone(),
                    provider,
                    template: p.template.clone(),
                    template_version: p.template_version.clone(),
                    organization_id: organization_id.clone(),
                    // The name the request asked for (a provider's natural key may be an id).
                    organization_name: p.spec["name"].as_str().unwrap_or(&p.natural_key).to_owned(),
                    created: *created,
                    attempts,
                    completed_at: now,
                },
            ),
            Outcome::Failed { error } => OutcomeEvent::failed(
                source,
                FailedData {
                    request_id: Some(claim.request_id.to_string()),
                    generation: claim.generation,
                    target: Some(p.target.clone()),
                    provider: Some(provider),
                    attempts,
                    failed_at: now,
                    error: error.clone(),
                    source_message: None,
                },
            ),
        }
    }
}

/// One claimed request being driven: the context every step needs.
struct Run<'a> {
    worker: &'a Worker,
    claim: &'a Claim,
    rt: &'a TargetRuntime,
    lease: Duration,
    /// Cancelled by the heartbeat when another holder took the lease over.
    lost: &'a CancellationToken,
    /// Cancelled when the shutdown grace period is over.
    abandon: &'a CancellationToken,
    /// The claim recorded the first create as starting, with its slot taken: that create
    /// goes out at once.
    prestarted: AtomicBool,
    /// This request's place in the target's admission queue while it waits for a slot.
    queued: Mutex<Option<Queued>>,
}

/// What became of a [`Step::Call`].
enum Called {
    /// Admission holds the call: this is the next step instead.
    Held(Step),
    /// The call went out (or failed to): the core's decision, and the attempt-history row
    /// when the decision records one.
    Answered { decision: Decision, record: Option<AttemptRecord>, error: Option<String> },
}

impl Run<'_> {
    /// Carries out steps until one ends the message's stay with this worker.
    async fn steps(&self, life: &mut Lifecycle) -> Disposition {
        let store = &self.worker.store;
        let mut step = life.next(Instant::now());
        loop {
            if self.lost.is_cancelled() {
                METRICS.lease_lost.inc();
                tracing::warn!("lease lost; the new holder carries on");
                return Disposition::Nak(Duration::from_secs(1));
            }
            step = match step {
                Step::Call(kind) => match self.call(life, kind).await {
                    Ok(Called::Held(next)) => next,
                    Ok(Called::Answered { decision, record, error }) => {
                        match self.book(decision, record, error, life.attempts()).await {
                            Ok(next) => next,
                            Err(done) => return done,
                        }
                    }
                    Err(done) => return done,
                },
                Step::Wait(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.lost.cancelled() => {}
                        _ = self.abandon.cancelled() => {
                            let _ = store.release(self.claim).await;
                            return Disposition::Nak(Duration::from_millis(100));
                        }
                    }
                    life.next(Instant::now())
                }
                Step::HandBack(delay) => {
                    // A long wait hands the message back instead of holding it.
                    let _ = store.release(self.claim).await;
                    return Disposition::Nak(delay);
                }
                Step::Settle(outcome) => {
                    return self.worker.settle(self.claim, Some(self.rt), outcome, None, life.attempts()).await;
                }
            };
        }
    }

    /// Admission, the fenced "call starting" record, then the call itself; `Err` when the
    /// message must go back now.
    async fn call(&self, life: &mut Lifecycle, kind: CallKind) -> Result<Called, Disposition> {
        // A slot of the rate limit first, then the call is recorded as started: waiting (or
        // dying while waiting) never uses up an attempt, and the upstream only ever sees calls
        // recorded as started. A create the claim recorded already has both.
        let prestarted = kind == CallKind::Create && self.prestarted.swap(false, Ordering::Relaxed);
        if !prestarted {
            if let Some(next) = self.admit(life).await? {
                return Ok(Called::Held(next));
            }
            match self.worker.store.begin_call(self.claim, kind, self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    METRICS.lease_lost.inc();
                    tracing::warn!("lease lost before an upstream call; not calling");
                    return Err(Disposition::Nak(Duration::from_secs(1)));
                }
                Err(e) => return Err(store_trouble(e)),
            }
        }
        life.started(kind);
        METRICS.upstream_calls.inc();
        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let (body, id) = (&self.claim.prepared.body, &self.claim.request_id);
        // The call's first request holds the slot taken above.
        let (decision, status, error) = match kind {
            CallKind::Create => {
                crash_soon(CrashPoint::DuringCall, Duration::from_millis(20));
                let result = admitted(self.rt.provider.create(body, id)).await;
                if result.is_ok() {
                    crash_at(CrashPoint::AfterCreate);
                }
                (life.create_answered(&result, Instant::now()), status_of(&result), error_of(&result))
            }
            CallKind::Lookup => {
                let result = admitted(self.rt.provider.find(body, id)).await;
                (life.lookup_answered(&result, Instant::now()), status_of(&result), error_of(&result))
            }
        };
        let duration = clock.elapsed();
        METRICS.upstream_call_seconds.observe(duration.as_secs_f64());
        let record = decision.book.record.map(|outcome| AttemptRecord {
            call: kind,
            started_at,
            duration,
            status,
            outcome,
            error: error.clone(),
        });
        Ok(Called::Answered { decision, record, error })
    }

    /// Takes a slot of the target for the next call. `Ok(None)`: taken. `Ok(Some(step))`:
    /// none yet, wait (in place or handed back) as the core decides. `Err`: the shared rate
    /// limiter cannot be reached, so no call; the message goes back.
    async fn admit(&self, life: &Lifecycle) -> Result<Option<Step>, Disposition> {
        let queued = self.queued.lock().unwrap_or_else(|p| p.into_inner()).take();
        let queued = queued.unwrap_or_else(|| self.rt.delivery.admission().queue());
        match queued.acquire().await {
            Ok(None) => Ok(None),
            Ok(Some(wait)) => {
                *self.queued.lock().unwrap_or_else(|p| p.into_inner()) = Some(queued);
                Ok(Some(life.throttled(wait)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; handing the message back");
                Err(Disposition::Nak(jitter(Duration::from_secs(2))))
            }
        }
    }

    /// Writes down what an answered call changed, and returns the next step; a settle takes
    /// the call's attempt record into its own transaction.
    async fn book(
        &self,
        decision: Decision,
        record: Option<AttemptRecord>,
        error: Option<String>,
        attempts: i64,
    ) -> Result<Step, Disposition> {
        let Decision { book, step } = decision;
        let store = &self.worker.store;
        let result: Result<(), StoreError> = async {
            if let Some(needs_reconcile) = book.refund {
                store.refund_call(self.claim, needs_reconcile).await?;
            }
            if matches!(step, Step::Settle(_)) {
                return Ok(());
            }
            if let Some(record) = &record {
                store.record_attempt(self.claim, record).await?;
            }
            if book.reconciled {
                store.mark_reconciled(self.claim).await?;
            }
            Ok(())
        }
        .await;
        result.map_err(store_trouble)?;
        if book.retry {
            METRICS.upstream_retries.inc();
        }
        match step {
            Step::Settle(outcome) => {
                Err(self.worker.settle(self.claim, Some(self.rt), outcome, record, attempts).await)
            }
            Step::Wait(delay) | Step::HandBack(delay) => {
                tracing::info!(
                    attempt = attempts,
                    error = error.as_deref().unwrap_or(""),
                    ?delay,
                    "upstream call failed; retrying"
                );
                Ok(step)
            }
            step => Ok(step),
        }
    }
}

fn status_of<T: Answered>(result: &Result<T, CallError>) -> Option<u16> {
    match result {
        Ok(v) => Some(v.status()),
        Err(e) => e.status,
    }
}

fn error_of<T>(result: &Result<T, CallError>) -> Option<String> {
    result.as_ref().err().map(|e| e.message.clone())
}

/// Renews the lease while the request is driven; cancels `lost` when another holder took
/// it over.
async fn heartbeat(store: Store, claim: Claim, lease: Duration, lost: CancellationToken) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&claim, lease).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
        }
    }
}
