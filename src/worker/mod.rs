//! The worker: pulls requests from the shared durable consumer, and for each one decodes,
//! claims, renders (once), calls the provider with retries and reconciliation, settles, acks.
//!
//! Shape (after mini-redis): a [`CancellationToken`] announces shutdown; a [`TaskTracker`]
//! says when every in-flight task is done. Back-pressure is a semaphore of `max_in_flight`
//! permits: the fetch loop asks JetStream for exactly as many messages as it has free
//! permits, so nothing is buffered beyond the cap. Each target also has its own cap; a
//! message for a full target is handed back with a delay so other targets keep flowing.
//!
//! Each message is decoded here and handed to [`driver`], which claims the request and carries
//! out the decisions of its [`crate::lifecycle::Lifecycle`] (DESIGN.md "Semantics we pinned": a
//! fenced lease checked before each call and at settle, reconcile-before-create after any
//! ambiguous answer, `exhausted` only after a final lookup found nothing); the message is acked
//! only after the settle committed.

mod driver;
mod prepare;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::driver::Keyed;
use crate::bus::{self, Consumer, Publisher, Relay};
use crate::contract::{self, ErrorCode, EventError, ProvisionRequest, Rejection, SourceMessage};
use crate::delivery::Delivery;
use crate::fault::{CrashPoint, crash_at};
use crate::providers::{self, Provider, Settings, Target};
use crate::store::batch::{self, Batcher};
use crate::store::{Claim, EarlyFailure, NewClaim, PgSlots, Settle, Settled, Store, StoreError};
use crate::telemetry::METRICS;
use crate::template::Templates;

/// One configured target at run time.
pub struct TargetRuntime {
    pub target: Target,
    pub provider: Box<dyn Provider>,
    delivery: Arc<Delivery>,
    slots: Arc<Semaphore>,
}

/// What to tell JetStream about a message.
#[derive(Debug, PartialEq)]
pub(super) enum Disposition {
    Ack,
    Nak(Duration),
}

pub struct Worker {
    settings: Settings,
    store: Store,
    client: async_nats::Client,
    consumer: Consumer,
    targets: HashMap<String, Arc<TargetRuntime>>,
    templates: Arc<Templates>,
    owner: String,
    /// Claims of requests seen for the first time, many per statement.
    claims: Batcher<NewClaim, Option<Claim>>,
    /// Settles, many per statement (group commit); committed events go to `publisher`.
    settles: Batcher<Arc<Settle>, Settled>,
    publisher: Publisher,
    /// Taken by [`Worker::run`].
    relay: std::sync::Mutex<Option<Relay>>,
    /// The admin endpoint's socket, bound before anything else; taken by [`Worker::run`].
    admin: std::sync::Mutex<Option<tokio::net::TcpListener>>,
}

/// `worker.admin_addr` cannot be listened on: a configuration error (exit 2), found at
/// start-up, before the worker connects to NATS or fetches anything.
#[derive(Debug, thiserror::Error)]
#[error("config key `worker.admin_addr`: cannot listen on {addr}: {source}")]
pub struct AdminBindError {
    pub addr: String,
    pub source: std::io::Error,
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
        let addr = &settings.worker.admin_addr;
        let admin = match addr.is_empty() {
            true => None,
            false => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AdminBindError { addr: addr.clone(), source })?,
            ),
        };
        let naming = crate::store::EventNaming {
            source: settings.worker.event_source.clone(),
            subject_prefix: settings.nats.subject_prefix.clone(),
        };
        let store = Store::connect_worker(&settings.postgres, naming).await?;
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
            let slots = Arc::new(PgSlots {
                store: store.clone(),
                target: target.name.clone(),
                per_second: target.rate_limit.per_second,
                burst: target.rate_limit.burst,
            });
            let delivery = Arc::new(Delivery::new(&target, slots, max_wait)?);
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
        let (publisher, relay) = Relay::new(store.clone(), js.clone(), Duration::from_secs(1), Duration::from_secs(5));
        let queue = settings.worker.max_in_flight.max(64);
        let claims = {
            let store = store.clone();
            Batcher::spawn(
                "claims",
                WRITERS,
                256,
                queue,
                batch::write(move |items| {
                    let store = store.clone();
                    async move { store.claim_new(items).await }.boxed()
                }),
            )
        };
        let settles = {
            let (store, publisher) = (store.clone(), publisher.clone());
            Batcher::spawn(
                "settles",
                WRITERS,
                512,
                queue,
                batch::write(move |items| {
                    let (store, publisher) = (store.clone(), publisher.clone());
                    async move {
                        let mut answers = store.settle(items).await?;
                        if items.len() > 1 {
                            crash_at(CrashPoint::AfterGroupCommit);
                        }
                        let committed = answers.iter_mut().filter_map(|a| match a {
                            Settled::Done { publish } => publish.take(),
                            Settled::LeaseLost => None,
                        });
                        publisher.publish(committed.collect());
                        Ok(answers)
                    }
                    .boxed()
                }),
            )
        };
        Ok(Worker {
            settings,
            store,
            client,
            consumer,
            targets: runtimes,
            templates: Arc::new(templates),
            owner,
            claims,
            settles,
            publisher,
            relay: std::sync::Mutex::new(Some(relay)),
            admin: std::sync::Mutex::new(admin),
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
        let relay_stopper = relay_stop.clone();
        let relay = self.relay.lock().unwrap_or_else(|p| p.into_inner()).take();
        let relay = tokio::spawn(async move {
            if let Some(relay) = relay {
                relay.run(relay_stop.clone(), Duration::from_secs(10)).await;
            }
        });
        let sweeper = tokio::spawn(self.clone().sweep(shutdown.clone()));
        if let Some(listener) = self.admin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tokio::spawn(crate::admin::serve(listener, self.store.clone(), shutdown.clone()));
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
        relay_stopper.cancel();
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
            // No more than can start soon: a message fetched and then held waiting is lost
            // for the ack wait if this process dies.
            let room = self.room().await;
            let extra = permits.available_permits().min(room.saturating_sub(1)).min(511);
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

    /// How many fetched messages could start soon, at least one: what every target has free
    /// of its in-flight slots and of its rate for the next `max_inline_wait_secs`. Under load,
    /// slots free up one at a time; waiting a few milliseconds for some of them to gather
    /// makes one pull request fetch many messages instead of one.
    async fn room(&self) -> usize {
        let horizon = Duration::from_secs(self.settings.worker.max_inline_wait_secs);
        let free = || {
            self.targets
                .values()
                .map(|rt| rt.slots.available_permits().min(rt.delivery.admission().room(horizon)))
                .fold(0usize, usize::saturating_add)
        };
        let gathered = tokio::time::Instant::now() + FETCH_GATHER;
        loop {
            let room = free();
            if room >= FETCH_AT_LEAST || tokio::time::Instant::now() >= gathered {
                if room > 0 {
                    return room;
                }
                // A slot frees up as soon as a request of a full target ends; a throttled
                // target's room comes back with time. Either way, look again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return free().max(1);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
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

    /// Works on one message while holding one of the worker's permits, then acks or NAKs it.
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
        let disposition = match contract::decode(&message.payload) {
            Err(Rejection::Unreadable { reason, details }) => self.reject_unreadable(&message, &reason, details).await,
            Err(Rejection::Invalid { request_id, content_hash, document, reason, details }) => {
                let span = tracing::info_span!("provision", request_id = %request_id);
                let keyed = Keyed { request_id: &request_id, content_hash: &content_hash, document: Some(&document) };
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
                self.claim_and_drive(keyed, None, &abandon, |_| Err(failure)).instrument(span).await
            }
            Ok(request) => {
                let span = tracing::info_span!("provision", request_id = %request.request_id, target = %request.message.target);
                self.provision(request, &abandon).instrument(span).await
            }
        };
        let settled = matches!(disposition, Disposition::Ack);
        dispose(&message, disposition).await;
        if settled && let Ok(info) = message.info() {
            let waited = time::OffsetDateTime::now_utc() - info.published;
            METRICS.request_seconds.observe(waited.as_seconds_f64().max(0.0));
        }
        drop(permit);
    }

    /// A message too broken to yield a request_id: recorded by its stream position, failed
    /// once, never redelivered.
    async fn reject_unreadable(
        &self,
        message: &jetstream::Message,
        reason: &str,
        details: serde_json::Value,
    ) -> Disposition {
        let (stream, sequence) = match message.info() {
            Ok(i) => (i.stream.to_owned(), i.stream_sequence),
            Err(_) => (self.settings.nats.requests_stream.clone(), 0),
        };
        let msg_id =
            message.headers.as_ref().and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)).map(|v| v.as_str());
        let source = SourceMessage::new(stream, sequence, msg_id);
        tracing::warn!(stream = %source.stream, sequence, %reason, "unreadable request message");
        match self.store.reject_unreadable(&source, reason, details).await {
            Ok(publish) => {
                METRICS.failed.inc();
                self.publisher.publish(publish);
                Disposition::Ack
            }
            Err(e) => store_trouble(e),
        }
    }

    /// A valid request: takes a slot of its target (or hands the message straight back when
    /// the target is full, so it never holds more than its own share of the worker) and
    /// drives it.
    async fn provision(&self, request: ProvisionRequest, abandon: &CancellationToken) -> Disposition {
        let runtime = self.targets.get(&request.message.target);
        let _slot = match runtime {
            Some(rt) => match target_slot(rt).await {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!("target full; handing the message back");
                    return Disposition::Nak(jitter(Duration::from_millis(500)));
                }
            },
            None => None,
        };
        let runtime = runtime.map(|rt| &**rt);
        // Rendered before the claim, so a request seen for the first time is claimed (and its
        // first create recorded as starting) by one batched insert; a request whose row exists
        // already keeps its stored rendering (render once).
        let prepared = prepare::prepare(&request, runtime, &self.templates);
        let ProvisionRequest { request_id, content_hash, document, .. } = request;
        let (prepared, document) = match (prepared, runtime) {
            (Ok(prepared), Some(rt)) => {
                let prepared = Arc::new(prepared);
                let claim = NewClaim {
                    request_id: request_id.clone(),
                    content_hash: content_hash.clone(),
                    document,
                    prepared: prepared.clone(),
                    owner: self.owner.clone(),
                    lease: Duration::from_secs(self.settings.worker.lease_secs),
                    create_started: rt.delivery.admission().try_now().await,
                };
                match self.claims.submit(claim).await {
                    Ok(Some(claim)) => {
                        crash_at(CrashPoint::AfterClaim);
                        return self.drive(&claim, rt, abandon).await;
                    }
                    // The row exists: the claim below reads it (its document is stored).
                    Ok(None) => (Ok(Arc::unwrap_or_clone(prepared)), None),
                    Err(e) => return store_trouble(e),
                }
            }
            (prepared, _) => (prepared, Some(document)),
        };
        let keyed = Keyed { request_id: &request_id, content_hash: &content_hash, document: document.as_ref() };
        self.claim_and_drive(keyed, runtime, abandon, move |_| prepared).await
    }
}

/// A pull request waits for this much room to fetch into...
const FETCH_AT_LEAST: usize = 32;
/// ...or this long, whichever comes first.
const FETCH_GATHER: Duration = Duration::from_millis(10);

/// Statements in flight at once per kind of batch (claims, settles).
const WRITERS: usize = 4;

/// How long a message waits for a slot of its full target before it is handed back. Slots of
/// a busy target free up within milliseconds; a slow or paused target's messages go back to
/// JetStream soon, so they never hold the worker's permits for long.
const TARGET_WAIT: Duration = Duration::from_millis(250);

/// One of the target's in-flight slots, waiting [`TARGET_WAIT`] at most.
async fn target_slot(rt: &TargetRuntime) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = rt.slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    tokio::time::timeout(TARGET_WAIT, rt.slots.clone().acquire_owned()).await.ok()?.ok()
}

/// Acks or NAKs the message. A lost ack means a redelivery, which re-emits the stored
/// outcome; a lost NAK means the message comes back after the ack wait.
async fn dispose(message: &jetstream::Message, disposition: Disposition) {
    match disposition {
        Disposition::Ack => {
            if let Err(e) = message.ack().await {
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
