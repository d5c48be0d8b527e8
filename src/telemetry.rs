//! Logs, traces and metrics, set up in one place.
//!
//! Logs go to stderr (`ORGPROV_LOG` filter, `ORGPROV_LOG_FORMAT=json` for JSON lines). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/HTTP with the
//! blocking client (the async one panics on the exporter's own thread). Metrics are plain
//! counters and histograms of prometheus-client, rendered by the admin endpoint.

use opentelemetry::trace::TracerProvider as _;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The process's metrics (prometheus-client). Counters count committed facts; each is exposed
/// with the `_total` suffix.
pub struct Metrics {
    pub messages_received: Counter,
    pub provisioned: Counter,
    pub failed: Counter,
    pub reemitted: Counter,
    pub content_mismatches: Counter,
    pub upstream_calls: Counter,
    pub upstream_retries: Counter,
    pub naks: Counter,
    pub events_published: Counter,
    pub lease_lost: Counter,
    /// Seconds from a request's publication (JetStream's timestamp) to its outcome committed
    /// and its message acked.
    pub request_seconds: Histogram,
    /// Seconds one upstream call took, from its admission to its answer (a 401 refresh and
    /// the resent call included).
    pub upstream_call_seconds: Histogram,
    registry: Registry,
}

pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        // 1 ms to about 65 s, doubling: a settle on an idle worker up to a long rate-limit wait.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let mut m = Metrics {
            messages_received: Counter::default(),
            provisioned: Counter::default(),
            failed: Counter::default(),
            reemitted: Counter::default(),
            content_mismatches: Counter::default(),
            upstream_calls: Counter::default(),
            upstream_retries: Counter::default(),
            naks: Counter::default(),
            events_published: Counter::default(),
            lease_lost: Counter::default(),
            request_seconds: seconds(),
            upstream_call_seconds: seconds(),
            registry: Registry::default(),
        };
        let counters = [
            ("orgprov_messages_received", "request messages received", &m.messages_received),
            ("orgprov_provisioned", "requests settled as provisioned", &m.provisioned),
            ("orgprov_failed", "requests settled as failed (unreadable messages included)", &m.failed),
            ("orgprov_outcomes_reemitted", "stored outcomes published again for a redelivered request", &m.reemitted),
            ("orgprov_content_mismatches", "requests seen again with a different content", &m.content_mismatches),
            ("orgprov_upstream_calls", "upstream create and lookup calls", &m.upstream_calls),
            ("orgprov_upstream_retries", "upstream calls retried", &m.upstream_retries),
            ("orgprov_naks", "messages handed back with a delay", &m.naks),
            ("orgprov_events_published", "outcome events JetStream confirmed", &m.events_published),
            ("orgprov_lease_lost", "claims another holder took over", &m.lease_lost),
        ]
        .map(|(name, help, c)| (name, help, c.clone()));
        for (name, help, counter) in counters {
            m.registry.register(name, help, counter);
        }
        m.registry.register(
            "orgprov_request_seconds",
            "publication (JetStream timestamp) to outcome committed and message acked",
            m.request_seconds.clone(),
        );
        m.registry.register(
            "orgprov_upstream_call_seconds",
            "duration of one upstream call, from admission to answer",
            m.upstream_call_seconds.clone(),
        );
        m
    }

    /// The metrics in the Prometheus text exposition format (OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Keeps the OTLP pipeline alive; flushes it on drop.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// `default_level` applies when `ORGPROV_LOG` is not set.
pub fn init(default_level: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_env("ORGPROV_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("ORGPROV_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };

    let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build().ok()?;
        Some(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("orgprov").build())
                .build(),
        )
    });
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("orgprov")));
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    TelemetryGuard { provider }
}

use tracing_subscriber::Layer as _;
