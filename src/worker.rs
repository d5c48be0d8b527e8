//! The worker: pulls requests from the shared durable consumer, and for each one decodes,
//! claims, renders (once), calls the provider with retries and reconciliation, settles, acks.
//!
//! Shape (after mini-redis): a [`CancellationToken`] announces shutdown; a [`TaskTracker`]
//! says when every in-flight task is done. Back-pressure is a semaphore of `max_in_flight`
//! permits: the fetch loop asks JetStream for exactly as many messages as it has free
//! permits, so nothing is buffered beyond the cap. Each target also has its own cap; a
//! message for a full target is handed back with a delay so other targets keep flowing.
//!
//! The per-request state machine ([`Worker::drive`]) follows DESIGN.md "Semantics we pinned":
//! a fenced lease checked before each call and at settle, reconcile-before-create after any
//! ambiguous answer, `exhausted` only after a final lookup found nothing, ack after settle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bus::{self, Consumer, Relay};
use crate::contract::{
    self, ErrorCode, EventError, FailedData, OutcomeEvent, ProvisionedData, Rejection, RequestId, SourceMessage,
};
use crate::delivery::{Delivery, PgAdmission};
use crate::fault::{CrashPoint, crash_at, crash_soon};
use crate::providers::{self, CallError, Created, ErrorClass, Lookup, Provider, Settings, Target};
use crate::store::{AttemptRecord, Claim, ClaimResult, EarlyFailure, Outcome, Prepared, Store, StoreError};
use crate::telemetry::METRICS;
use crate::template::Templates;

/// One configured target at run time.
pub struct TargetRuntime {
    pub target: Target,
    pub provider: Box<dyn Provider>,
    delivery: Arc<Delivery>,
    slots: Arc<Semaphore>,
}

/// A message that yielded a request_id: what the claim is keyed and checked by.
struct Keyed<'a> {
    request_id: &'a RequestId,
    content_hash: &'a str,
    document: &'a Value,
}

/// What to tell JetStream about a message.
#[derive(Debug, PartialEq)]
enum Disposition {
    Ack,
    Nak(Duration),
}

pub struct Worker {
    settings: Settings,
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: Consumer,
    targets: HashMap<String, Arc<TargetRuntime>>,
    templates: Arc<Templates>,
    owner: String,
    relay_wake: Arc<Notify>,
}

/// A running worker, for the binary, the demo and the tests.
pub struct WorkerHandle {
    shutdown: CancellationToken,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Starts a graceful shutdown and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join.await?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn wait(self) -> anyhow::Result<()> {
        self.join.await?
    }
}

impl Worker {
    /// Connects to Postgres (applying migrations unless disabled) and NATS, and sets up the
    /// streams and the consumer.
    pub async fn connect(settings: Settings, targets: Vec<Target>, templates: Templates) -> anyhow::Result<Worker> {
        let naming = crate::store::EventNaming {
            source: settings.worker.event_source.clone(),
            subject_prefix: settings.nats.subject_prefix.clone(),
        };
        let store = Store::connect(&settings.postgres.url, settings.postgres.max_connections, naming).await?;
        if settings.postgres.migrate {
            store.migrate().await?;
        }
        let client = bus::connect(&settings.nats.url).await?;
        let js = bus::context(client.clone());
        let consumer = bus::ensure_topology(&js, &settings.nats).await?;
        let mut runtimes = HashMap::new();
        let max_wait = Duration::from_secs(settings.worker.max_inline_wait_secs);
        for target in targets {
            store.ensure_limit(&target.name).await?;
            let admission = Arc::new(PgAdmission {
                store: store.clone(),
                target: target.name.clone(),
                per_second: target.rate_limit.per_second,
                burst: target.rate_limit.burst,
            });
            let delivery = Arc::new(Delivery::new(&target, admission, max_wait)?);
            let provider = providers::build(&target, delivery.clone());
            let slots = Arc::new(Semaphore::new(target.max_in_flight));
            runtimes.insert(target.name.clone(), Arc::new(TargetRuntime { target, provider, delivery, slots }));
        }
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "orgprov".into()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Worker {
            settings,
            store,
            client,
            js,
            consumer,
            targets: runtimes,
            templates: Arc::new(templates),
            owner,
            relay_wake: Arc::new(Notify::new()),
        })
    }

    pub fn spawn(self) -> WorkerHandle {
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(Arc::new(self).run(shutdown.clone()));
        WorkerHandle { shutdown, join }
    }

    /// Runs until `shutdown` is cancelled, then stops fetching, lets in-flight work finish
    /// within the grace period (releasing what is left), flushes the outbox and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let abandon = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(
            Relay {
                store: self.store.clone(),
                js: self.js.clone(),
                wake: self.relay_wake.clone(),
                poll: Duration::from_millis(500),
                batch: 512,
            }
            .run(relay_stop.clone(), Duration::from_secs(10)),
        );
        let sweeper = tokio::spawn(self.clone().sweep(shutdown.clone()));
        if !self.settings.worker.admin_addr.is_empty() {
            tokio::spawn(crate::admin::serve(
                self.settings.worker.admin_addr.clone(),
                self.store.clone(),
                shutdown.clone(),
            ));
        }
        tracing::info!(owner = %self.owner, targets = self.targets.len(), max_in_flight = self.settings.worker.max_in_flight, "worker started");

        self.fetch_loop(&tracker, &abandon, &shutdown).await;

        tracker.close();
        let grace = Duration::from_secs(self.settings.worker.shutdown_grace_secs);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("grace period over: releasing in-flight requests");
            abandon.cancel();
            tracker.wait().await;
        }
        // Acks are buffered by the client: write them out before the process can exit, or
        // finished requests would be delivered again.
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "could not flush acks to NATS");
        }
        relay_stop.cancel();
        let _ = relay.await;
        let _ = sweeper.await;
        let left = self.store.unpublished_count().await.unwrap_or(-1);
        tracing::info!(unpublished_events = left, "worker stopped");
        Ok(())
    }

    async fn fetch_loop(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        abandon: &CancellationToken,
        shutdown: &CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(self.settings.worker.max_in_flight));
        let expires = Duration::from_secs(2);
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            // Wait for one free slot, then take every free slot: fetch exactly that many.
            let mut held = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            let extra = permits.available_permits().min(255);
            if extra > 0
                && let Ok(p) = permits.clone().try_acquire_many_owned(extra as u32)
            {
                held.merge(p);
            }
            let wanted = held.num_permits();
            let batch = self.consumer.batch().max_messages(wanted).expires(expires).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "pull request failed; retrying");
                    backoff_sleep(failures, shutdown).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    // The batch ends by itself at `expires`; the margin covers a lost connection.
                    n = tokio::time::timeout(expires + Duration::from_secs(5), batch.next()) => n,
                    _ = shutdown.cancelled() => break,
                };
                match next {
                    Ok(Some(Ok(message))) => {
                        failures = 0;
                        let Some(permit) = held.split(1) else { break };
                        let worker = self.clone();
                        let abandon = abandon.clone();
                        tracker.spawn(async move { worker.on_message(message, permit, abandon).await });
                    }
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, "consumer error; continuing");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let age = Duration::from_secs(self.settings.worker.outbox_retention_secs);
        let history = Duration::from_secs(self.settings.worker.attempt_retention_days * 86_400);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.store.sweep_outbox(age).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "swept published outbox rows"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
            }
            match self.store.sweep_attempts(history).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "swept old attempt history"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "attempt history sweep failed"),
            }
        }
    }

    async fn on_message(
        self: Arc<Self>,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
        abandon: CancellationToken,
    ) {
        METRICS.messages_received.inc();
        // While this worker holds the message, JetStream must not hand it to another replica,
        // whatever step the work is at (waiting for a database connection included).
        let every = Duration::from_secs(self.settings.nats.ack_wait_secs) / 3;
        let _progress = AbortOnDrop(tokio::spawn(keep_in_progress(message.clone(), every)));
        let (stream, sequence) = match message.info() {
            Ok(i) => (i.stream.to_owned(), i.stream_sequence),
            Err(_) => (self.settings.nats.requests_stream.clone(), 0),
        };
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let disposition = match contract::decode(&message.payload) {
            Err(Rejection::Unreadable { reason, details }) => {
                let source = SourceMessage { stream, sequence, msg_id };
                tracing::warn!(stream = %source.stream, sequence, %reason, "unreadable request message");
                match self.store.reject_unreadable(&source, &reason, details).await {
                    Ok(()) => {
                        METRICS.failed.inc();
                        self.relay_wake.notify_one();
                        Disposition::Ack
                    }
                    Err(e) => store_trouble(e),
                }
            }
            Err(Rejection::Invalid { request_id, content_hash, document, reason, details }) => {
                let span = tracing::info_span!("provision", request_id = %request_id);
                let failure = EarlyFailure {
                    target: None,
                    provider: None,
                    error: EventError {
                        code: ErrorCode::InvalidRequest,
                        message: reason,
                        upstream_status: None,
                        details: Some(details),
                    },
                };
                let keyed = Keyed { request_id: &request_id, content_hash: &content_hash, document: &document };
                self.claim_and_drive(keyed, None, &abandon, |_| Err(failure)).instrument(span).await
            }
            Ok(request) => {
                let span = tracing::info_span!("provision", request_id = %request.request_id, target = %request.message.target);
                let runtime = self.targets.get(&request.message.target).cloned();
                // Per-target cap: a full target hands its message back instead of waiting
                // here, so it never holds more than its own share of the worker.
                let slot = match &runtime {
                    Some(rt) => match rt.slots.clone().try_acquire_owned() {
                        Ok(s) => Some(s),
                        Err(_) => {
                            METRICS.naks.inc();
                            let _ = message.ack_with(AckKind::Nak(Some(jitter(Duration::from_millis(500))))).await;
                            return;
                        }
                    },
                    None => None,
                };
                let templates = self.templates.clone();
                let prepare = |rt: Option<&TargetRuntime>| prepare(&request, rt, &templates);
                let d = self
                    .claim_and_drive(
                        Keyed {
                            request_id: &request.request_id,
                            content_hash: &request.content_hash,
                            document: &request.document,
                        },
                        runtime.as_deref(),
                        &abandon,
                        prepare,
                    )
                    .instrument(span)
                    .await;
                drop(slot);
                d
            }
        };
        match disposition {
            Disposition::Ack => {
                if let Err(e) = message.ack().await {
                    // A lost ack means a redelivery, which re-emits the stored outcome.
                    tracing::warn!(error = %e, "ack failed");
                }
            }
            Disposition::Nak(delay) => {
                METRICS.naks.inc();
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(error = %e, "nak failed; the message comes back after ack_wait");
                }
            }
        }
        drop(permit);
    }

    async fn claim_and_drive(
        &self,
        keyed: Keyed<'_>,
        runtime: Option<&TargetRuntime>,
        abandon: &CancellationToken,
        prepare: impl FnOnce(Option<&TargetRuntime>) -> Result<Prepared, EarlyFailure>,
    ) -> Disposition {
        let lease = Duration::from_secs(self.settings.worker.lease_secs);
        let Keyed { request_id, content_hash, document } = keyed;
        let claim = self
            .store
            .claim(request_id.as_str(), content_hash, Some(document), &self.owner, lease, || prepare(runtime))
            .await;
        match claim {
            Ok(ClaimResult::Finished { reemitted }) => {
                if reemitted {
                    METRICS.reemitted.inc();
                } else {
                    METRICS.failed.inc();
                }
                self.relay_wake.notify_one();
                Disposition::Ack
            }
            Ok(ClaimResult::Busy { retry_in }) => {
                tracing::debug!(?retry_in, "request is leased by another holder");
                Disposition::Nak(retry_in)
            }
            Ok(ClaimResult::Claimed(claim)) => {
                crash_at(CrashPoint::AfterClaim);
                let Some(runtime) = self.targets.get(&claim.prepared.target).cloned() else {
                    // Stored by an earlier deployment whose configuration had this target.
                    let error = EventError {
                        code: ErrorCode::UnknownTarget,
                        message: format!("target {:?} is not configured on this worker", claim.prepared.target),
                        upstream_status: None,
                        details: None,
                    };
                    return self.settle(&claim, None, Outcome::Failed { error }, None, claim.attempts).await;
                };
                self.drive(*claim, &runtime, abandon).await
            }
            Err(e) => store_trouble(e),
        }
    }

    /// Calls the upstream until the request has a definitive outcome, then settles it.
    async fn drive(&self, claim: Claim, rt: &TargetRuntime, abandon: &CancellationToken) -> Disposition {
        let lease = Duration::from_secs(self.settings.worker.lease_secs);
        let lost = CancellationToken::new();
        let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(self.store.clone(), claim.clone(), lease, lost.clone())));
        self.attempt_loop(&claim, rt, lease, &lost, abandon).await
    }

    async fn attempt_loop(
        &self,
        claim: &Claim,
        rt: &TargetRuntime,
        lease: Duration,
        lost: &CancellationToken,
        abandon: &CancellationToken,
    ) -> Disposition {
        let request_id = match RequestId::parse(&claim.request_id) {
            Ok(id) => id,
            Err(e) => {
                return self.settle(claim, Some(rt), failure(ErrorCode::Internal, e, None), None, claim.attempts).await;
            }
        };
        let body = &claim.prepared.body;
        let max_attempts = i64::from(rt.target.retry.max_attempts.unwrap_or(self.settings.worker.max_attempts));
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(rt.target.retry.deadline_secs).saturating_sub(claim.age);
        let max_inline = Duration::from_secs(self.settings.worker.max_inline_wait_secs);
        let mut attempts = claim.attempts;
        let mut needs_reconcile = claim.needs_reconcile;
        let mut failures = 0u32;
        // When the last ambiguous create ended (this process only; a redelivery after a
        // crash comes after the lease and ack wait, which exceed any reconcile delay).
        let mut ambiguous_at: Option<std::time::Instant> = None;
        loop {
            if lost.is_cancelled() {
                METRICS.lease_lost.inc();
                return Disposition::Nak(Duration::from_secs(1));
            }
            let out_of_time = tokio::time::Instant::now() >= deadline;
            if out_of_time && !needs_reconcile {
                let message = format!("gave up after {attempts} create attempts: the retry deadline passed");
                return self
                    .settle(claim, Some(rt), failure(ErrorCode::Exhausted, message, None), None, attempts)
                    .await;
            }
            let create = !needs_reconcile && attempts < max_attempts && !out_of_time;
            // Wait for the rate limit and any pause before the call is recorded as started, so
            // waiting (or dying while waiting) never uses up an attempt; a long pause hands the
            // message back.
            match rt.delivery.wait_ready().await {
                Ok(()) => {}
                Err(crate::delivery::SendError::Throttled(wait)) if wait > max_inline => {
                    let _ = self.store.release(claim).await;
                    return Disposition::Nak(wait);
                }
                Err(crate::delivery::SendError::Throttled(wait)) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => {
                    // The shared rate limiter lives in Postgres: no admission, no call.
                    tracing::warn!(error = %e, "rate limiter unavailable; handing the message back");
                    return Disposition::Nak(jitter(Duration::from_secs(2)));
                }
            }
            if !create {
                // A provider that cannot refuse duplicates lets a late create land first.
                let wait =
                    ambiguous_at.map(|t| rt.provider.reconcile_delay().saturating_sub(t.elapsed())).unwrap_or_default();
                if wait > max_inline {
                    let _ = self.store.release(claim).await;
                    return Disposition::Nak(wait);
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            match self.store.begin_call(claim, create, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    METRICS.lease_lost.inc();
                    tracing::warn!("lease lost before an upstream call; not calling");
                    return Disposition::Nak(Duration::from_secs(1));
                }
                Err(e) => return store_trouble(e),
            }
            if create {
                attempts += 1;
            }
            METRICS.upstream_calls.inc();
            let started_at = OffsetDateTime::now_utc();
            let clock = std::time::Instant::now();
            let error = if create {
                crash_soon(CrashPoint::DuringCall, Duration::from_millis(20));
                let result = rt.provider.create(body, &request_id).await;
                if matches!(result, Ok(Created::New { .. })) {
                    crash_at(CrashPoint::AfterCreate);
                }
                let mut record = attempt("create", started_at, clock.elapsed(), &result);
                match result {
                    Ok(Created::New { id, .. }) => {
                        return self
                            .settle(
                                claim,
                                Some(rt),
                                Outcome::Succeeded { organization_id: id, created: true },
                                Some(record),
                                attempts,
                            )
                            .await;
                    }
                    Ok(Created::Conflict { .. }) => {
                        // The name is taken: the lookup decides whether it is ours.
                        record.outcome = "conflict".into();
                        if let Err(e) = self.store.record_attempt(claim, &record).await {
                            return store_trouble(e);
                        }
                        needs_reconcile = true;
                        continue;
                    }
                    Err(e) if is_throttling(&e) => {
                        // Never sent, or refused for the rate limit: not an attempt (the retry
                        // deadline bounds these), and nothing to reconcile from it.
                        match self.refund(claim, &e, &record, needs_reconcile).await {
                            Ok(()) => attempts -= 1,
                            Err(se) => return store_trouble(se),
                        }
                        e
                    }
                    Err(e) => {
                        if e.class == ErrorClass::Ambiguous {
                            needs_reconcile = true;
                            ambiguous_at = Some(std::time::Instant::now());
                        }
                        if let ErrorClass::Permanent(code) = e.class {
                            return self
                                .settle(
                                    claim,
                                    Some(rt),
                                    failure(code, e.message.clone(), Some(&e)),
                                    Some(record),
                                    attempts,
                                )
                                .await;
                        }
                        if let Err(se) = self.store.record_attempt(claim, &record).await {
                            return store_trouble(se);
                        }
                        e
                    }
                }
            } else {
                let result = rt.provider.find(body, &request_id).await;
                let record = attempt("lookup", started_at, clock.elapsed(), &result);
                match result {
                    Ok(Lookup::Ours { id }) => {
                        return self
                            .settle(
                                claim,
                                Some(rt),
                                Outcome::Succeeded { organization_id: id, created: false },
                                Some(record),
                                attempts,
                            )
                            .await;
                    }
                    Ok(Lookup::NotOurs { id }) => {
                        let message = format!(
                            "organization {:?} already exists upstream (id {id}) and is not owned by this request",
                            claim.prepared.natural_key
                        );
                        let mut f = failure(ErrorCode::Conflict, message, None);
                        if let Outcome::Failed { error } = &mut f {
                            error.upstream_status = Some(409);
                            error.details = Some(json!({ "organization_id": id }));
                        }
                        return self.settle(claim, Some(rt), f, Some(record), attempts).await;
                    }
                    Ok(Lookup::Absent) => {
                        if let Err(e) = self.store.record_attempt(claim, &record).await {
                            return store_trouble(e);
                        }
                        if let Err(e) = self.store.mark_reconciled(claim).await {
                            return store_trouble(e);
                        }
                        needs_reconcile = false;
                        if attempts >= max_attempts || tokio::time::Instant::now() >= deadline {
                            let message = format!(
                                "gave up after {attempts} create attempts; a final lookup found no organization"
                            );
                            return self
                                .settle(claim, Some(rt), failure(ErrorCode::Exhausted, message, None), None, attempts)
                                .await;
                        }
                        continue;
                    }
                    Err(e) if is_throttling(&e) => {
                        // Lookups are not counted; an answered 429 stays in the history.
                        if e.status.is_some()
                            && let Err(se) = self.store.record_attempt(claim, &record).await
                        {
                            return store_trouble(se);
                        }
                        e
                    }
                    Err(e) => {
                        if let ErrorClass::Permanent(code) = e.class {
                            return self
                                .settle(
                                    claim,
                                    Some(rt),
                                    failure(code, e.message.clone(), Some(&e)),
                                    Some(record),
                                    attempts,
                                )
                                .await;
                        }
                        if let Err(se) = self.store.record_attempt(claim, &record).await {
                            return store_trouble(se);
                        }
                        e
                    }
                }
            };
            if (attempts >= max_attempts || tokio::time::Instant::now() >= deadline) && !needs_reconcile {
                // Nothing can have been created by the calls that failed definitively.
                let message = format!("gave up after {attempts} create attempts; last error: {}", error.message);
                return self
                    .settle(claim, Some(rt), failure(ErrorCode::Exhausted, message, Some(&error)), None, attempts)
                    .await;
            }
            let delay = if is_throttling(&error) {
                error.retry_after.unwrap_or(Duration::from_secs(1))
            } else {
                METRICS.upstream_retries.inc();
                failures += 1;
                error.retry_after.unwrap_or_else(|| rt.delivery.retry.delay(failures))
            };
            tracing::info!(attempt = attempts, error = %error.message, ?delay, "upstream call failed; retrying");
            if delay > max_inline {
                // A long wait hands the message back instead of holding it.
                let _ = self.store.release(claim).await;
                return Disposition::Nak(delay);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = lost.cancelled() => {}
                _ = abandon.cancelled() => {
                    let _ = self.store.release(claim).await;
                    return Disposition::Nak(Duration::from_millis(100));
                }
            }
        }
    }

    /// Gives back the attempt a throttled call took; a 429 that was answered stays in the
    /// history.
    async fn refund(
        &self,
        claim: &Claim,
        e: &CallError,
        record: &AttemptRecord,
        needs_reconcile: bool,
    ) -> Result<(), StoreError> {
        if e.status.is_some() {
            self.store.record_attempt(claim, record).await?;
        }
        self.store.refund_call(claim, needs_reconcile).await
    }

    /// Writes the outcome, attempt, event and outbox row in one fenced transaction.
    async fn settle(
        &self,
        claim: &Claim,
        rt: Option<&TargetRuntime>,
        outcome: Outcome,
        record: Option<AttemptRecord>,
        attempts: i64,
    ) -> Disposition {
        let now = OffsetDateTime::now_utc();
        let p = &claim.prepared;
        let provider = rt.map(|r| r.target.provider_name().to_owned()).unwrap_or_else(|| p.provider.clone());
        let event = match &outcome {
            Outcome::Succeeded { organization_id, created } => {
                METRICS.provisioned.inc();
                OutcomeEvent::provisioned(
                    &self.settings.worker.event_source,
                    ProvisionedData {
                        request_id: claim.request_id.clone(),
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
                )
            }
            Outcome::Failed { error } => {
                METRICS.failed.inc();
                OutcomeEvent::failed(
                    &self.settings.worker.event_source,
                    FailedData {
                        request_id: Some(claim.request_id.clone()),
                        generation: claim.generation,
                        target: Some(p.target.clone()),
                        provider: Some(provider),
                        attempts,
                        failed_at: now,
                        error: error.clone(),
                        source_message: None,
                    },
                )
            }
        };
        let mut tries = 0;
        loop {
            match self.store.settle(claim, &outcome, record.as_ref(), &event).await {
                Ok(()) => {
                    crash_at(CrashPoint::AfterCommit);
                    self.relay_wake.notify_one();
                    tracing::info!(event_type = event.event_type, event_id = %event.id, "settled");
                    return Disposition::Ack;
                }
                Err(StoreError::LeaseLost(_)) => {
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
}

/// Renders the template and builds the provider body: the "render once" step.
fn prepare(
    request: &contract::ProvisionRequest,
    rt: Option<&TargetRuntime>,
    templates: &Templates,
) -> Result<Prepared, EarlyFailure> {
    let m = &request.message;
    let Some(rt) = rt else {
        return Err(EarlyFailure {
            target: Some(m.target.clone()),
            provider: None,
            error: EventError {
                code: ErrorCode::UnknownTarget,
                message: format!("unknown target {:?}", m.target),
                upstream_status: None,
                details: None,
            },
        });
    };
    let provider = rt.target.provider_name();
    let fail = |code, message: String| EarlyFailure {
        target: Some(m.target.clone()),
        provider: Some(provider.to_owned()),
        error: EventError { code, message, upstream_status: None, details: None },
    };
    let spec = templates.render(request, provider).map_err(|e| match e {
        crate::template::RenderError::UnknownTemplate(_) => fail(ErrorCode::UnknownTemplate, e.to_string()),
        other => fail(ErrorCode::InvalidRequest, other.to_string()),
    })?;
    let body = rt.provider.prepare(&spec, &request.request_id).map_err(|e| fail(ErrorCode::InvalidRequest, e))?;
    Ok(Prepared {
        target: m.target.clone(),
        provider: provider.to_owned(),
        template: spec.template.clone(),
        template_version: spec.template_version.clone(),
        natural_key: rt.provider.natural_key(&body),
        spec: serde_json::to_value(&spec).unwrap_or(Value::Null),
        body,
    })
}

/// Rate limiting (ours, or the upstream's 429) delays a request; it does not use up its
/// attempts.
fn is_throttling(e: &CallError) -> bool {
    e.class == ErrorClass::Throttled || (e.class == ErrorClass::Retryable && e.status == Some(429))
}

fn failure(code: ErrorCode, message: String, e: Option<&CallError>) -> Outcome {
    Outcome::Failed {
        error: EventError {
            code,
            message,
            upstream_status: e.and_then(|e| e.status),
            details: e.and_then(|e| e.details.clone()),
        },
    }
}

fn attempt<T: providers::Answered>(
    call: &'static str,
    started_at: OffsetDateTime,
    duration: Duration,
    result: &Result<T, CallError>,
) -> AttemptRecord {
    let (status, outcome, error) = match result {
        Ok(v) => (Some(v.status()), "ok".to_owned(), None),
        Err(e) => (e.status, format!("{:?}", e.class).to_lowercase(), Some(e.message.clone())),
    };
    AttemptRecord { call, started_at, duration, status, outcome, error }
}

/// Renews the lease and tells JetStream the message is still being worked on.
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

/// Tells JetStream every `every` that the message is still being worked on.
async fn keep_in_progress(message: jetstream::Message, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let _ = message.ack_with(AckKind::Progress).await;
    }
}

/// Stops a background task when the work it accompanies ends, on every path.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Postgres trouble never loses a message: it comes back later.
fn store_trouble(e: StoreError) -> Disposition {
    tracing::warn!(error = %e, "database unavailable; handing the message back");
    Disposition::Nak(jitter(Duration::from_secs(2)))
}

fn jitter(d: Duration) -> Duration {
    d + Duration::from_millis(fastrand::u64(0..=d.as_millis() as u64 / 2))
}

async fn backoff_sleep(failures: u32, shutdown: &CancellationToken) {
    let d = Duration::from_millis(100 * u64::from(failures.min(30)));
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
