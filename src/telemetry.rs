//! Logs, traces and metrics, set up in one place.
//!
//! Logs go to stderr (`ORGPROV_LOG` filter, `ORGPROV_LOG_FORMAT=json` for JSON lines). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/HTTP with the
//! blocking client (the async one panics on the exporter's own thread). Metrics are plain
//! process counters rendered in the Prometheus text format by the admin endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
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
}

pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);

impl Metrics {
    pub fn render(&self) -> String {
        let rows = [
            ("orgprov_messages_received_total", &self.messages_received),
            ("orgprov_provisioned_total", &self.provisioned),
            ("orgprov_failed_total", &self.failed),
            ("orgprov_outcomes_reemitted_total", &self.reemitted),
            ("orgprov_content_mismatches_total", &self.content_mismatches),
            ("orgprov_upstream_calls_total", &self.upstream_calls),
            ("orgprov_upstream_retries_total", &self.upstream_retries),
            ("orgprov_naks_total", &self.naks),
            ("orgprov_events_published_total", &self.events_published),
            ("orgprov_lease_lost_total", &self.lease_lost),
        ];
        rows.iter().map(|(name, c)| format!("# TYPE {name} counter\n{name} {}\n", c.get())).collect()
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
