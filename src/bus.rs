//! NATS JetStream: connecting, the streams and the shared durable consumer (settings that drop
//! nothing, DESIGN.md §Semantics 8), publishing requests, and the outbox relay that turns
//! committed outbox rows into published events.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::future::join_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::NatsSettings;
use crate::contract::{FAILED_TYPE, PROVISIONED_TYPE};
use crate::store::Store;
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
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
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

/// Publishes committed outbox rows until cancelled, then drains what is left (bounded by
/// `drain_timeout`). Woken by `wake` after each settle, and polls every `poll` for rows
/// committed by other replicas.
pub struct Relay {
    pub store: Store,
    pub js: jetstream::Context,
    pub wake: Arc<Notify>,
    pub poll: Duration,
    pub batch: i64,
}

impl Relay {
    pub async fn run(self, stop: CancellationToken, drain_timeout: Duration) {
        let mut failures = 0u32;
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == self.batch => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "outbox relay: publish failed; will retry");
                }
            }
            if stop.is_cancelled() {
                break;
            }
            let wait = if failures > 0 { Duration::from_millis(200 * u64::from(failures.min(25))) } else { self.poll };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while tokio::time::Instant::now() < deadline {
            match self.publish_batch().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: drain publish failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Publishes one batch concurrently; marks the confirmed rows. Returns how many rows were
    /// taken.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let (mut tx, pending) = self.store.begin_outbox_batch(self.batch).await?;
        if pending.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let publishes = pending.iter().map(|p| async move {
            let message =
                jetstream::message::PublishMessage::build().payload(p.payload.clone().into()).message_id(&p.event_id);
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
        Store::mark_published(&mut tx, &done).await?;
        tx.commit().await?;
        for _ in &done {
            METRICS.events_published.inc();
        }
        match last_error {
            Some(e) if done.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, published = done.len(), "outbox relay: some publishes failed; will retry");
                Ok(pending.len())
            }
            None => Ok(pending.len()),
        }
    }
}
