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
    match state.with_provider(&query.provider, |p| p.orgs.to_vec()) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testing::{client, json_of, start_with};
    use crate::{Faults, SimulatorConfig};

    #[tokio::test]
    async fn admin_api_round_trip() {
        let sim = start_with("auth0", SimulatorConfig::default()).await;
        let client = client();
        let root = format!("http://{}/_sim", sim.addr());
        let get = |path: &str| client.get(format!("{root}{path}")).query(&[("provider", "auth0")]).send();

        let health = get("/health").await.expect("health");
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.expect("body"), "ok");

        let put = client
            .put(format!("{root}/faults"))
            .json(&json!({"latency_ms": 1, "rate_limit": {"per_second": 5.0, "burst": 7}}))
            .send()
            .await
            .expect("put faults");
        assert_eq!(put.status(), 204);
        let faults: Faults = get("/faults").await.expect("get faults").json().await.expect("faults json");
        assert_eq!(faults.latency_ms, 1);
        assert_eq!(faults.rate_limit.map(|r| r.burst), Some(7));

        let seed = client.post(format!("{root}/organizations")).query(&[("provider", "auth0")]);
        assert_eq!(seed.json(&json!({"name": "someone-else"})).send().await.expect("seed").status(), 201);
        let orgs = json_of(get("/organizations").await.expect("orgs")).await;
        assert_eq!(orgs.as_array().map(Vec::len), Some(1));
        assert!(orgs[0]["id"].as_str().is_some_and(|id| id.starts_with("org_")));
        let unknown = client.get(format!("{root}/organizations")).query(&[("provider", "nope")]).send();
        assert_eq!(unknown.await.expect("unknown provider").status(), 404);

        let script = client.post(format!("{root}/script")).query(&[("provider", "auth0")]);
        let script = script.json(&json!([{"kind": "status", "status": 500}])).send().await.expect("script");
        assert_eq!(script.status(), 204);
        assert_eq!(sim.state.with_provider("auth0", |p| p.script.len()), Some(1));

        let revoke = client.post(format!("{root}/revoke-tokens")).send().await.expect("revoke");
        assert_eq!(revoke.status(), 204);

        // A provider request shows up in the log; admin calls do not.
        let lookup = client.get(format!("{}/api/v2/organizations/name/x", sim.base_url("auth0")));
        let _ = lookup.header("Idempotency-Key", "k-1").send().await.expect("lookup");
        let requests = json_of(get("/requests").await.expect("requests")).await;
        assert_eq!(requests.as_array().map(Vec::len), Some(1));
        assert_eq!(requests[0]["provider"], "auth0");
        assert_eq!(requests[0]["path"], "/auth0/api/v2/organizations/name/x");
        assert_eq!(requests[0]["status"], 401);
        assert_eq!(requests[0]["idempotency_key"], "k-1");
        assert!(requests[0]["at"].as_str().is_some_and(|at| at.contains('T')));
        sim.shutdown().await;
    }
}
