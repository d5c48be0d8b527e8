//! The admin API under `/_sim`: what `orgprov-sim` and other processes use to watch and steer a
//! running simulator (stored organizations, the request log, faults, scripts, token revocation).
//! Admin calls are not recorded in the request log.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::Value;

use crate::state::SimState;
use crate::{Faults, ScriptedFault};

#[derive(Deserialize)]
struct ProviderQuery {
    provider: String,
}

pub(crate) fn routes(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/organizations", get(admin_organizations).post(admin_insert_organization))
        .route("/requests", get(admin_requests))
        .route("/faults", put(admin_set_faults).get(admin_get_faults))
        .route("/script", post(admin_push_script))
        .route("/revoke-tokens", post(admin_revoke_tokens))
        .with_state(state)
}

fn unknown_provider(provider: &str) -> Response {
    let body = serde_json::json!({ "error": format!("unknown provider {provider:?}") });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn admin_organizations(State(state): State<Arc<SimState>>, Query(query): Query<ProviderQuery>) -> Response {
    match state.with_provider(&query.provider, |p| p.orgs.clone()) {
        Some(orgs) => Json(orgs).into_response(),
        None => unknown_provider(&query.provider),
    }
}

async fn admin_insert_organization(
    State(state): State<Arc<SimState>>,
    Query(query): Query<ProviderQuery>,
    Json(org): Json<Value>,
) -> Response {
    match state.insert_seed(&query.provider, org) {
        Some(stored) => (StatusCode::CREATED, Json(stored)).into_response(),
        None => unknown_provider(&query.provider),
    }
}

async fn admin_requests(State(state): State<Arc<SimState>>) -> Response {
    Json(state.requests()).into_response()
}

async fn admin_get_faults(State(state): State<Arc<SimState>>) -> Response {
    Json(state.faults()).into_response()
}

async fn admin_set_faults(State(state): State<Arc<SimState>>, Json(faults): Json<Faults>) -> Response {
    state.set_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_push_script(
    State(state): State<Arc<SimState>>,
    Query(query): Query<ProviderQuery>,
    Json(script): Json<Vec<ScriptedFault>>,
) -> Response {
    match state.with_provider(&query.provider, |p| p.script.extend(script)) {
        Some(()) => StatusCode::NO_CONTENT.into_response(),
        None => unknown_provider(&query.provider),
    }
}

async fn admin_revoke_tokens(State(state): State<Arc<SimState>>) -> Response {
    state.revoke_tokens();
    StatusCode::NO_CONTENT.into_response()
}
