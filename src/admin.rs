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

pub async fn serve(addr: String, store: Store, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], METRICS.render()) }),
        )
        .with_state(store);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "admin endpoint cannot bind");
            return;
        }
    };
    tracing::info!(%addr, "admin endpoint listening");
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
}

async fn ready(State(store): State<Store>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(store.pool()).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}
