//! The worker's admin endpoint: `/healthz` (the process runs), `/readyz` (Postgres answers)
//! and `/metrics` (Prometheus text format).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::telemetry::METRICS;

/// What `prometheus_client`'s text encoder writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the endpoints on `listener` (bound by the worker at start-up, so a port that cannot
/// be had is a configuration error, never a worker running without them).
pub async fn serve(listener: tokio::net::TcpListener, store: Store, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], METRICS.render()) }),
        )
        .with_state(store);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoint listening");
    }
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
}

async fn ready(State(store): State<Store>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(store.pool()).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}
