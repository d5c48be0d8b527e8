//! NATS JetStream: connecting, the streams and the shared durable consumer (settings that drop
//! nothing, DESIGN.md §Semantics 8), publishing requests, and the outbox relay that turns
//! committed outbox rows into published events.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::NatsSettings;
use crate::contract::{FAILED_TYPE, PROVISIONED_TYPE};
use crate::store::{Pending, Store};
use crate::telemetry::METRICS;

pub type Consumer = consumer::PullConsumer;

pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name("orgprov")
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                other => tracing::debug!(%other, "NATS event"),
            }
        })
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", crate::config::redact_url(url)))?;
    Ok(client)
}

pub fn context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_secs(10)).build(client)
}

/// Creates (or brings up to date) both streams and the shared durable pull consumer.
pub async fn ensure_topology(js: &jetstream::Context, n: &NatsSettings) -> anyhow::Result<Consumer> {
    let window = Duration::from_secs(n.duplicate_window_secs);
    js.create_or_update_stream(stream::Config {
        name: n.requests_stream.clone(),
        subjects: vec![n.requests_subject()],
        // A full stream refuses publishes (the publisher sees it) instead of dropping requests.
        discard: stream::DiscardPolicy::New,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::ZERO,
        duplicate_window: window,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("requests stream {}: {e}", n.requests_stream))?;
    js.create_or_update_stream(stream::Config {
        name: n.events_stream.clone(),
        subjects: vec![n.event_subject(PROVISIONED_TYPE), n.event_subject(FAILED_TYPE)],
        discard: stream::DiscardPolicy::New,
        duplicate_window: window,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("events stream {}: {e}", n.events_stream))?;
    let stream = js.get_stream(&n.requests_stream).await?;
    let wanted = consumer::pull::Config {
        durable_name: Some(n.consumer.clone()),
        filter_subject: n.requests_subject(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(n.ack_wait_secs),
        // Attempts are counted and capped in Postgres: throttling NAKs count as deliveries.
        max_deliver: -1,
        max_ack_pending: n.max_ack_pending,
        // No `backoff` list: it would replace ack_wait with its first step.
        ..Default::default()
    };
    // The config is sent only when the consumer is missing or differs. Re-sending an identical
    // config is not a no-op everywhere: on nats-server 2.9 it made a message that had been
    // NAK'ed with a delay, redelivered and acked come back once more, so every replica start
    // re-emitted a finished outcome.
    if let Ok(existing) = stream.get_consumer::<consumer::pull::Config>(&n.consumer).await {
        let have = &existing.cached_info().config;
        if have.filter_subject == wanted.filter_subject
            && have.ack_wait == wanted.ack_wait
            && have.max_deliver == wanted.max_deliver
            && have.max_ack_pending == wanted.max_ack_pending
            && have.backoff.is_empty()
        {
            return Ok(existing);
        }
    }
    let consumer = stream
        .create_consumer(wanted)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {} on {}: {e}", n.consumer, n.requests_stream))?;
    Ok(consumer)
}

/// Publishes one request with `Nats-Msg-Id` = request_id (when given) and waits for the
/// stream's acknowledgement. Returns whether the server dropped it as a duplicate.
pub async fn publish_request(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    msg_id: Option<&str>,
) -> anyhow::Result<jetstream::publish::PublishAck> {
    let mut message = jetstream::message::PublishMessage::build().payload(payload.into());
    // Headers first, message id last: `.headers()` replaces the whole map.
    message = message.headers(HeaderMap::new());
    if let Some(id) = msg_id {
        message = message.message_id(id);
    }
    let ack = js.send_publish(subject.to_owned(), message).await?.await?;
    Ok(ack)
}

/// Confirmed publications marked in one statement, at most.
const MARK_BATCH: usize = 2000;
/// How long a confirmed publication waits for its mark, at most.
const MARK_DELAY: Duration = Duration::from_millis(200);

/// How the worker hands committed outbox rows to its [`Relay`]; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    rows: mpsc::Sender<Vec<Pending>>,
}

impl Publisher {
    /// Publishes `rows` (committed outbox rows) as soon as the relay can. Never waits: when the
    /// relay is behind, the rows stay in the outbox and its orphan poll publishes them.
    pub fn publish(&self, rows: Vec<Pending>) {
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.rows.try_send(rows) {
            tracing::debug!(error = %e, "relay queue full; the outbox poll publishes these events");
        }
    }
}

/// Publishes committed outbox rows until cancelled, then drains what is left (bounded by
/// `drain_timeout`). Events go out straight from the process that committed them, handed over
/// by its [`Publisher`]; every `poll` the relay also looks for orphans, rows older than
/// `orphan_age` that nobody published (their process died, or a publish failed).
pub struct Relay {
    store: Store,
    js: jetstream::Context,
    rows: mpsc::Receiver<Vec<Pending>>,
    poll: Duration,
    orphan_age: Duration,
    batch: i64,
}

impl Relay {
    pub fn new(store: Store, js: jetstream::Context, poll: Duration, orphan_age: Duration) -> (Publisher, Relay) {
        let (tx, rows) = mpsc::channel(1024);
        (Publisher { rows: tx }, Relay { store, js, rows, poll, orphan_age, batch: 512 })
    }

    pub async fn run(mut self, stop: CancellationToken, drain_timeout: Duration) {
        let mut failures = 0u32;
        let mut next_poll = tokio::time::Instant::now();
        // Confirmed rows are marked in bulk, a little later: a publication must go out at
        // once, its mark need not (the orphan poll leaves rows younger than `orphan_age`).
        let mut confirmed: Vec<i64> = Vec::new();
        let mut mark_by: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                rows = self.rows.recv() => {
                    let Some(mut rows) = rows else { break };
                    // Whatever else has been committed meanwhile goes out in the same round.
                    while rows.len() < 4096 {
                        match self.rows.try_recv() {
                            Ok(more) => rows.extend(more),
                            Err(_) => break,
                        }
                    }
                    confirmed.extend(self.publish_committed(&rows).await);
                    if confirmed.len() >= MARK_BATCH {
                        self.mark(&mut confirmed).await;
                        mark_by = None;
                    } else if !confirmed.is_empty() && mark_by.is_none() {
                        mark_by = Some(tokio::time::Instant::now() + MARK_DELAY);
                    }
                }
                _ = tokio::time::sleep_until(mark_by.unwrap_or_else(tokio::time::Instant::now)), if mark_by.is_some() => {
                    self.mark(&mut confirmed).await;
                    mark_by = None;
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    match self.publish_orphans(self.orphan_age).await {
                        Ok(n) if n as i64 == self.batch => failures = 0,
                        Ok(_) => {
                            failures = 0;
                            next_poll = tokio::time::Instant::now() + self.poll;
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, "outbox relay: publish failed; will retry");
                            next_poll = tokio::time::Instant::now() + Duration::from_millis(200 * u64::from(failures.min(25)));
                        }
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while let Ok(rows) = self.rows.try_recv() {
            confirmed.extend(self.publish_committed(&rows).await);
        }
        self.mark(&mut confirmed).await;
        while tokio::time::Instant::now() < deadline {
            match self.publish_orphans(Duration::ZERO).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: drain publish failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Publishes rows the worker just committed; the outbox ids JetStream confirmed. The
    /// others stay for the orphan poll.
    async fn publish_committed(&self, rows: &[Pending]) -> Vec<i64> {
        let (done, error) = self.publish(rows).await;
        if let Some(e) = error {
            tracing::warn!(error = %e, published = done.len(), "outbox relay: some publishes failed; the poll retries them");
        }
        done
    }

    /// Marks confirmed rows as published, and forgets them either way: rows left unmarked
    /// are published again by the orphan poll, which JetStream's dedupe window absorbs.
    async fn mark(&self, confirmed: &mut Vec<i64>) {
        if confirmed.is_empty() {
            return;
        }
        match Store::mark_published(self.store.pool(), confirmed).await {
            Ok(()) => {
                METRICS.events_published.inc_by(confirmed.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: could not mark published rows; the poll publishes them again")
            }
        }
        confirmed.clear();
    }

    /// Publishes one batch of orphans (rows queued at least `min_age` ago) and marks the
    /// confirmed ones. Returns how many rows were taken.
    pub async fn publish_orphans(&self, min_age: Duration) -> anyhow::Result<usize> {
        let (mut tx, pending) = self.store.begin_outbox_batch(self.batch, min_age).await?;
        if pending.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let (done, error) = self.publish(&pending).await;
        Store::mark_published(&mut *tx, &done).await?;
        tx.commit().await?;
        METRICS.events_published.inc_by(done.len() as u64);
        match error {
            Some(e) if done.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, published = done.len(), "outbox relay: some publishes failed; will retry");
                Ok(pending.len())
            }
            None => Ok(pending.len()),
        }
    }

    /// Publishes `rows` concurrently, each with `Nats-Msg-Id` = event id; the outbox ids
    /// JetStream confirmed, and the last error.
    async fn publish(&self, rows: &[Pending]) -> (Vec<i64>, Option<anyhow::Error>) {
        let publishes = rows.iter().map(|p| async move {
            let message =
                jetstream::message::PublishMessage::build().payload(p.payload.clone()).message_id(&p.event_id);
            let ack = self.js.send_publish(p.subject.clone(), message).await?;
            tokio::time::timeout(Duration::from_secs(10), ack)
                .await
                .map_err(|_| anyhow::anyhow!("no publish ack within 10 s"))??;
            anyhow::Ok(p.outbox_id)
        });
        let results = join_all(publishes).await;
        crate::fault::crash_at(crate::fault::CrashPoint::AfterPublish);
        let mut done = Vec::with_capacity(results.len());
        let mut last_error = None;
        for r in results {
            match r {
                Ok(id) => done.push(id),
                Err(e) => last_error = Some(e),
            }
        }
        (done, last_error)
    }
}
