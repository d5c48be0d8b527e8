//! Simulated Logto tenant: the OIDC client-credentials token endpoint (`POST /oidc/token`) and
//! the Management API's organization calls (`POST /api/organizations`, `GET /api/organizations`
//! with `q`/`page`/`page_size`, `GET /api/organizations/{id}`), following PROVIDERS.md §5 and the
//! vendor page (seed 004).
//!
//! What makes Logto different, and is kept here on purpose:
//! - Names are not unique: every valid create stores a new organization. There is no conflict
//!   error, so only the client's reconciliation can prevent duplicates.
//! - Search: `q` is a case-insensitive partial match on id or name; `page` starts at 1,
//!   `page_size` is 1–100 (default 20); every page carries `Total-Number`. Out-of-range paging
//!   answers 400 `guard.invalid_pagination`.
//! - Token: client authentication is HTTP Basic only (the M2M app's registered method), the
//!   `resource` must be the tenant's Management API indicator (any URL ending in `/api`, as the
//!   simulator's host varies by port) and the scope must include `all`.
//! - Rate limit: Logto Cloud documents a token bucket of 200 requests per 10 s per tenant. The
//!   simulator applies `Faults.rate_limit` as that bucket (`burst` = bucket size, `per_second` =
//!   refill), so Logto Cloud is `{per_second: 20, burst: 200}`; unset means unlimited, like
//!   self-hosted Logto. A refused call answers 429 with Logto's error body and no headers (none
//!   are documented; a scripted `RateLimited` adds `Retry-After` only when given one).
//! - Faults: a lost response stores and answers 504 (a proxy gave up); a late commit answers 500
//!   `Internal server error.` now and stores `delay_ms` later; both are what the worker's
//!   reconcile delay exists for.
//! - The body guard strips unknown keys (zod's default) and ignores client-sent `id`,
//!   `tenantId` and `createdAt`, which the server owns.
//!
//! This module is Logto's [`SimulatedProvider`]: its wire specifics only. Admission and the
//! faults of a create are shared (`crate::provider`).

// Validation helpers return the finished HTTP refusal as their error; boxing it would buy
// nothing on a test server and cost readability.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::{Map, Value, json};

use crate::provider::{CreateCall, Served, SimulatedProvider, lookup};
use crate::state::{SimState, TokenStatus};
use crate::wire::{
    NoBearer, authorized, bearer_token, client_credentials_grant, client_secret_basic, decode_form_pair, form_pairs,
};

/// Path prefix and state key of this provider.
const PROVIDER: &str = "logto";
const TENANT: &str = "default";
const NAME_MAX: usize = 128;
const DESCRIPTION_MAX: usize = 256;
const PAGE_SIZE_MAX: usize = 100;
const PAGE_SIZE_DEFAULT: usize = 20;
const BRANDING_KEYS: &[&str] = &["logoUrl", "darkLogoUrl", "favicon", "darkFavicon"];

/// A simulated Logto tenant.
#[derive(Default)]
pub(crate) struct Logto;

impl SimulatedProvider for Logto {
    const NAME: &'static str = PROVIDER;
    /// A late commit answers `Internal server error.` now.
    const LATE_COMMIT_STATUS: u16 = 500;
    type Draft = Map<String, Value>;
    type Charge = bool;

    fn routes(create: MethodRouter<Arc<Served<Self>>>) -> Router<Arc<Served<Self>>> {
        Router::new()
            .route("/oidc/token", post(issue_token))
            .route("/api/organizations", create.get(list_organizations))
            .route("/api/organizations/{id}", lookup(get_organization))
            .fallback(api_not_found)
    }

    /// What Logto's server fills in.
    fn seed_defaults() -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("tenantId".into(), json!(TENANT));
        fields.insert("id".into(), json!(new_id()));
        fields.insert("name".into(), json!(""));
        fields.insert("description".into(), Value::Null);
        fields.insert("customData".into(), json!({}));
        fields.insert("isMfaRequired".into(), json!(false));
        fields.insert("branding".into(), json!({}));
        fields.insert("createdAt".into(), json!(now_ms()));
        fields
    }

    fn authenticate(&self, sim: &SimState, headers: &HeaderMap) -> Result<(), Response> {
        match bearer_token(headers).map(|token| sim.check_token(PROVIDER, token)) {
            Ok(TokenStatus::Valid) => Ok(()),
            Ok(TokenStatus::Expired | TokenStatus::Unknown) => Err(unauthorized("auth.unauthorized", "Unauthorized.")),
            Err(NoBearer::Missing | NoBearer::Unreadable) => {
                Err(unauthorized("auth.authorization_header_missing", "Authorization header is missing."))
            }
            Err(NoBearer::OtherScheme) => {
                Err(unauthorized("auth.authorization_token_type_not_supported", "Authorization type is not supported."))
            }
        }
    }

    /// Every `/api` call is charged to the tenant bucket.
    fn charge(&self, sim: &SimState) -> bool {
        sim.take_rate_limit(PROVIDER).allowed
    }

    /// Logto documents no code for its edge rate limit; this one follows its dotted style.
    fn too_many_requests(&self) -> Response {
        api_error(StatusCode::TOO_MANY_REQUESTS, "request.too_many_requests", "Too many requests.", None)
    }

    fn validate(&self, call: &CreateCall) -> Result<Map<String, Value>, Response> {
        prepare(&call.headers, &call.body)
    }

    /// Nothing is unique in Logto, so a valid create (or late write) always lands.
    fn store(&self, sim: &SimState, org: Map<String, Value>) -> Result<Value, Response> {
        Ok(store(sim, org))
    }

    fn error_for_status(&self, status: u16) -> Response {
        error_for_status(status)
    }
}

/// Logto ids are short random lowercase alphanumerics (column limit 21).
fn new_id() -> String {
    std::iter::repeat_with(|| {
        fastrand::choice(b"abcdefghijklmnopqrstuvwxyz0123456789").copied().unwrap_or(b'x') as char
    })
    .take(12)
    .collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Logto's error shape: `{code, message, data?}`.
fn api_error(status: StatusCode, code: &str, message: &str, data: Option<Value>) -> Response {
    let mut body = json!({ "code": code, "message": message });
    if let (Some(data), Some(fields)) = (data, body.as_object_mut()) {
        fields.insert("data".into(), data);
    }
    (status, Json(body)).into_response()
}

fn invalid_input(issue: String) -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        "guard.invalid_input",
        &format!("The request input is invalid. {issue}"),
        Some(json!({ "issues": [{ "message": issue }] })),
    )
}

fn unauthorized(code: &str, message: &str) -> Response {
    api_error(StatusCode::UNAUTHORIZED, code, message, None)
}

fn server_error(status: StatusCode) -> Response {
    let message = match status.as_u16() {
        502 => "Bad gateway.",
        503 => "Service unavailable.",
        504 => "Gateway timeout.",
        _ => "Internal server error.",
    };
    (status, Json(json!({ "message": message }))).into_response()
}

/// The body Logto would send with `status`.
fn error_for_status(status: u16) -> Response {
    let Ok(code) = StatusCode::from_u16(status) else {
        return server_error(StatusCode::INTERNAL_SERVER_ERROR);
    };
    match status {
        400 => invalid_input("name: String must contain at least 1 character(s)".into()),
        401 => unauthorized("auth.unauthorized", "Unauthorized."),
        403 => api_error(code, "auth.forbidden", "Forbidden.", None),
        404 => api_error(code, "entity.not_found", "The resource does not exist.", None),
        422 => api_error(code, "entity.unprocessable", "The request could not be processed.", None),
        500..=599 => server_error(code),
        _ => api_error(code, "request.general", code.canonical_reason().unwrap_or("Error"), None),
    }
}

async fn api_not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "guard.invalid_path", "Not found.", None)
}

// ---------------------------------------------------------------------------------------------
// OIDC token endpoint
// ---------------------------------------------------------------------------------------------

fn oidc_error(status: StatusCode, error: &str, description: &str) -> Response {
    authorized((status, Json(json!({ "error": error, "error_description": description }))).into_response(), false)
}

/// The form's parameters; pairs that do not decode are skipped, as a lenient server would.
fn form(body: &[u8]) -> HashMap<String, String> {
    form_pairs(&String::from_utf8_lossy(body)).filter_map(decode_form_pair).collect()
}

async fn issue_token(State(served): State<Arc<Served<Logto>>>, headers: HeaderMap, body: Bytes) -> Response {
    let state = &served.sim;
    let params = form(&body);
    let Some((id, secret)) = client_secret_basic(&headers) else {
        return oidc_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication must use client_secret_basic",
        );
    };
    if id != state.client_id || secret != state.client_secret {
        return oidc_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed");
    }
    let unsupported = |other: &str| format!("unsupported grant_type {other}");
    let missing = "missing required parameter 'grant_type'";
    if let Err((error, description)) =
        client_credentials_grant(params.get("grant_type").map(String::as_str), unsupported, missing)
    {
        return oidc_error(StatusCode::BAD_REQUEST, error, &description);
    }
    let resource = params.get("resource").map(String::as_str).unwrap_or("");
    if !resource.ends_with("/api") {
        return oidc_error(StatusCode::BAD_REQUEST, "invalid_target", "resource indicator is missing, or unknown");
    }
    let scopes: Vec<&str> = params.get("scope").map(|s| s.split_whitespace().collect()).unwrap_or_default();
    if !scopes.contains(&"all") || scopes.iter().any(|s| *s != "all") {
        return oidc_error(StatusCode::BAD_REQUEST, "invalid_scope", "requested scope is not allowed: use `all`");
    }
    let token = state.issue_token(PROVIDER);
    let body = json!({
        "access_token": token,
        "expires_in": state.token_ttl.as_secs(),
        "token_type": "Bearer",
        "scope": "all",
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    authorized(response, true)
}

// ---------------------------------------------------------------------------------------------
// Management API: organizations
// ---------------------------------------------------------------------------------------------

/// Stores a new organization (ids and timestamps are assigned at commit time).
fn store(state: &SimState, mut org: Map<String, Value>) -> Value {
    org.insert("id".into(), json!(new_id()));
    org.insert("createdAt".into(), json!(now_ms()));
    let stored = Value::Object(org);
    state.with_provider(PROVIDER, |p| p.orgs.push(stored.clone()));
    stored
}

fn is_url(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !s.contains(char::is_whitespace))
}

/// Validates a create body; returns the organization without id and createdAt.
fn prepare(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Response> {
    if let Some(content_type) = headers.get(CONTENT_TYPE)
        && !content_type.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("json"))
    {
        return Err(api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "guard.invalid_input",
            "Unsupported media type.",
            None,
        ));
    }
    let Ok(Value::Object(given)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid_input("Expected object".into()));
    };
    let name = match given.get("name") {
        Some(Value::String(n)) => n.clone(),
        Some(_) => return Err(invalid_input("name: Expected string".into())),
        None => return Err(invalid_input("name: Required".into())),
    };
    let length = name.chars().count();
    if length == 0 || length > NAME_MAX {
        return Err(invalid_input(format!("name: String must contain between 1 and {NAME_MAX} character(s)")));
    }
    let description = match given.get("description") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(d)) if d.chars().count() <= DESCRIPTION_MAX => json!(d),
        Some(Value::String(_)) => {
            return Err(invalid_input(format!(
                "description: String must contain at most {DESCRIPTION_MAX} character(s)"
            )));
        }
        Some(_) => return Err(invalid_input("description: Expected string".into())),
    };
    let custom_data = match given.get("customData") {
        None => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid_input("customData: Expected object".into())),
    };
    let mfa = match given.get("isMfaRequired") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid_input("isMfaRequired: Expected boolean".into())),
    };
    let mut branding = Map::new();
    match given.get("branding") {
        None => {}
        Some(Value::Object(b)) => {
            for key in BRANDING_KEYS {
                match b.get(*key) {
                    None => {}
                    Some(Value::String(url)) if is_url(url) => {
                        branding.insert((*key).to_owned(), json!(url));
                    }
                    Some(_) => return Err(invalid_input(format!("branding.{key}: Invalid url"))),
                }
            }
        }
        Some(_) => return Err(invalid_input("branding: Expected object".into())),
    }
    let mut org = Map::new();
    org.insert("tenantId".into(), json!(TENANT));
    org.insert("name".into(), json!(name));
    org.insert("description".into(), description);
    org.insert("customData".into(), custom_data);
    org.insert("isMfaRequired".into(), json!(mfa));
    org.insert("branding".into(), Value::Object(branding));
    Ok(org)
}

async fn list_organizations(
    State(served): State<Arc<Served<Logto>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    served.call(&headers, |sim| list(sim, &query)).await
}

fn list(sim: &SimState, query: &HashMap<String, String>) -> Response {
    let number = |key: &str, default: usize| match query.get(key) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok(),
    };
    let paging = match (number("page", 1), number("page_size", PAGE_SIZE_DEFAULT)) {
        (Some(page), Some(page_size)) if page > 0 && (1..=PAGE_SIZE_MAX).contains(&page_size) => {
            Some((page, page_size))
        }
        _ => None,
    };
    let Some((page, page_size)) = paging else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "guard.invalid_pagination",
            "The pagination value is invalid.",
            None,
        );
    };
    let needle = query.get("q").map(|q| q.to_lowercase()).filter(|q| !q.is_empty());
    let orgs = sim.with_provider(PROVIDER, |p| p.orgs.to_vec()).unwrap_or_default();
    let hits: Vec<Value> = orgs
        .into_iter()
        .filter(|o| match &needle {
            None => true,
            Some(q) => ["id", "name"]
                .iter()
                .any(|k| o.get(*k).and_then(Value::as_str).is_some_and(|v| v.to_lowercase().contains(q.as_str()))),
        })
        .collect();
    let total = hits.len();
    let items: Vec<Value> = hits.into_iter().skip((page - 1).saturating_mul(page_size)).take(page_size).collect();
    let mut response = (StatusCode::OK, Json(Value::Array(items))).into_response();
    response.headers_mut().insert("total-number", HeaderValue::from(total));
    response
}

fn get_organization(sim: &SimState, id: &str) -> Response {
    match sim.find_organization(PROVIDER, "id", id) {
        Some(org) => (StatusCode::OK, Json(org)).into_response(),
        None => api_error(StatusCode::NOT_FOUND, "entity.not_exists_with_id", "The organization does not exist.", None),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::RETRY_AFTER;

    use super::*;
    use crate::SimulatorConfig;
    use crate::testing::{Api, client, json_of, rate_limited, start_signed_in, start_with};

    async fn list(api: &Api, query: &[(&str, &str)]) -> reqwest::Response {
        let request = api.request(reqwest::Method::GET, "/api/organizations");
        request.query(query).send().await.expect("list")
    }

    #[tokio::test]
    async fn token_requires_basic_auth_resource_and_scope() {
        let sim = start_with(PROVIDER, SimulatorConfig::default()).await;
        let token = client().post(format!("{}/oidc/token", sim.base_url(PROVIDER)));
        let in_body = token.try_clone().expect("clone").form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "orgprov-sim"),
            ("client_secret", "sim-secret"),
        ]);
        assert_eq!(in_body.send().await.expect("token").status(), 401);
        let basic = token.basic_auth("orgprov-sim", Some("sim-secret"));
        let no_resource =
            basic.try_clone().expect("clone").form(&[("grant_type", "client_credentials"), ("scope", "all")]);
        let no_resource = no_resource.send().await.expect("token");
        assert_eq!(no_resource.status(), 400);
        assert_eq!(json_of(no_resource).await["error"], "invalid_target");
        let resource = format!("{}/api", sim.base_url(PROVIDER));
        let ok = basic.form(&[("grant_type", "client_credentials"), ("resource", &resource), ("scope", "all")]);
        let ok = json_of(ok.send().await.expect("token")).await;
        assert!(ok["expires_in"].is_u64(), "{ok}");
        assert!(ok["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{ok}");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn names_are_not_unique_and_search_pages_with_total_number() {
        let (sim, api) = start_signed_in(PROVIDER, SimulatorConfig::default()).await;
        for _ in 0..2 {
            let r = api.create(json!({"name": "Acme", "customData": {"k": 1}, "tenantId": "x"})).await;
            assert_eq!(r.status(), 201);
            let body = json_of(r).await;
            assert_eq!(body["tenantId"], TENANT);
            assert_eq!(body["customData"]["k"], 1);
            assert!(body["createdAt"].is_u64());
        }
        for i in 0..3 {
            assert_eq!(api.create(json!({"name": format!("Acme {i}")})).await.status(), 201);
        }
        assert_eq!(api.create(json!({"name": "Other"})).await.status(), 201);
        let page = list(&api, &[("q", "acme"), ("page", "2"), ("page_size", "2")]).await;
        assert_eq!(page.headers()["total-number"], "5");
        assert_eq!(json_of(page).await.as_array().map(Vec::len), Some(2));
        let past = list(&api, &[("q", "acme"), ("page", "9"), ("page_size", "2")]).await;
        assert_eq!(json_of(past).await, json!([]));
        for paging in [[("page", "1"), ("page_size", "101")], [("page", "0"), ("page_size", "5")]] {
            let bad = list(&api, &paging).await;
            assert_eq!(bad.status(), 400);
            assert_eq!(json_of(bad).await["code"], "guard.invalid_pagination");
        }
        let invalid = api.create(json!({"name": ""})).await;
        assert_eq!(invalid.status(), 400);
        assert_eq!(json_of(invalid).await["code"], "guard.invalid_input");
        assert_eq!(sim.organizations(PROVIDER).len(), 6);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_bucket_of_logto_cloud_refuses_the_201st_call() {
        let (sim, api) = start_signed_in(PROVIDER, rate_limited(20.0, 200)).await;
        // 200 requests per 10 s: the bucket is spent by the 201st call in a burst.
        let mut limited = None;
        for i in 0..260 {
            let r = list(&api, &[("q", "x")]).await;
            if r.status() == 429 {
                limited = Some((i, r));
                break;
            }
        }
        let (i, r) = limited.expect("rate limited within the burst");
        assert!((190..=240).contains(&i), "limited after {i} calls");
        assert!(r.headers().get(RETRY_AFTER).is_none());
        assert_eq!(json_of(r).await["code"], "request.too_many_requests");
        sim.shutdown().await;
    }
}
