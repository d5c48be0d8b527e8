//! Simulated SecureAuth Connect tenant (System API, PROVIDERS.md §1 and the vendor page, seed
//! 000): the OAuth2 client-credentials token endpoint `/{tenant}/system/oauth2/token` and
//! `POST`/`GET /api/system/{tenant}/organizations[/{id}]`.
//!
//! Wire behaviour, as documented:
//! - The token endpoint takes a form body with client credentials in it or in HTTP Basic, and
//!   grants only `manage_organizations` (asking for any other scope is `invalid_scope`). Like
//!   the vendor page's example it renders `expires_in` as a **string**.
//! - Create: the client may choose `id` (else a random 32-hex id is made); 409 when the id *or*
//!   the name is taken; 404 for an unknown `parent_id` or `template_id` (a template is an
//!   organization created or seeded with `"template": true`); 422 for semantic validation
//!   (blank name, unknown authentication mechanism, bad colour, id not URL-safe); 400 for a
//!   body that does not decode. Unknown fields are ignored, as the Go server ignores them
//!   (the vendor page's `displayName` and `email` therefore vanish), and so are keys of
//!   `metadata` other than `payload` and `schema`. A template passes its authentication
//!   mechanisms and business-attribute schema on to the organizations made from it.
//! - Errors are `{status_code, error, error_code, details}`. System API calls (not token calls)
//!   are charged to the tenant's token bucket (`Faults::rate_limit`); over it the answer is 429
//!   with `Retry-After` (whole seconds until the bucket holds a request again) and nothing else.
//!
//! One simulator serves one tenant: any tenant name in the path is accepted and they all
//! share the organizations (tests need not care which tenant id a target names).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HOST, PRAGMA, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::{Map, Value, json};

use crate::provider::{CreateCall, Served, SimulatedProvider};
use crate::state::{SimState, TokenStatus, has_text};
use crate::wire::{NoBearer, authorized, bearer_token, client_secret_basic, decode_form_pair, form_pairs};

/// Path prefix and state key of this provider.
const PROVIDER: &str = "secureauth";

/// The one Management scope the simulated service client was granted.
const GRANTED_SCOPE: &str = "manage_organizations";

/// `CreateOrganizationRequest.authentication_mechanisms` values (PROVIDERS.md §1).
const MECHANISMS: &[&str] = &["totp", "password", "otp", "email_otp", "sms_otp", "webauthn"];

/// A simulated SecureAuth Connect tenant.
#[derive(Default)]
pub(crate) struct SecureAuth;

impl SimulatedProvider for SecureAuth {
    const NAME: &'static str = PROVIDER;
    type Draft = NewOrg;
    type Charge = bool;

    fn routes(create: MethodRouter<Arc<Served<Self>>>) -> Router<Arc<Served<Self>>> {
        Router::new()
            .route("/{tenant}/system/oauth2/token", post(issue_token))
            .route("/api/system/{tenant}/organizations", create)
            .route("/api/system/{tenant}/organizations/{id}", get(get_organization))
            .fallback(api_not_found)
    }

    /// Completes a seeded organization the way SecureAuth stores one: a random id when it has
    /// none, and the documented defaults of the `Org` response.
    fn normalize_seed(org: Value) -> Value {
        match org {
            Value::Object(fields) => {
                let id = fields.get("id").and_then(Value::as_str).map_or_else(new_org_id, str::to_owned);
                let mut stored = defaults(id);
                for (k, v) in fields {
                    stored.insert(k, v);
                }
                Value::Object(stored)
            }
            other => other,
        }
    }

    fn authenticate(&self, sim: &SimState, headers: &HeaderMap) -> Result<(), Response> {
        let message = match bearer_token(headers).map(|token| sim.check_token(PROVIDER, token)) {
            Ok(TokenStatus::Valid) => return Ok(()),
            Ok(TokenStatus::Expired) => "access token expired",
            Ok(TokenStatus::Unknown) => "invalid access token",
            Err(NoBearer::Missing) => "missing access token",
            Err(NoBearer::Unreadable | NoBearer::OtherScheme) => "malformed authorization header",
        };
        Err(api_error(StatusCode::UNAUTHORIZED, message, "unauthorized", Value::Null).into_response())
    }

    /// System API calls (not token calls) are charged to the tenant's token bucket.
    fn charge(&self, sim: &SimState) -> bool {
        sim.take_rate_limit(PROVIDER).allowed
    }

    /// A scripted 429 without a delay still names one second.
    fn too_many_requests(&self) -> Response {
        too_many_requests(1).into_response()
    }

    /// Over the bucket, `Retry-After` names when it holds a request again.
    fn over_limit(&self, sim: &SimState) -> Response {
        too_many_requests(retry_after_secs(sim)).into_response()
    }

    fn validate(&self, call: &CreateCall) -> Result<NewOrg, Response> {
        let issuer = issuer_base(&call.headers, call.param("tenant"));
        validate(&call.body, issuer).map_err(IntoResponse::into_response)
    }

    fn store(&self, sim: &SimState, new: NewOrg) -> Result<Value, Response> {
        store(sim, new).map_err(IntoResponse::into_response)
    }

    fn created(&self, org: Value) -> Response {
        let etag = format!("W/\"{}\"", uuid::Uuid::new_v4().simple());
        let mut response = (StatusCode::CREATED, Json(org)).into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(ETAG, v);
        }
        response
    }

    fn error_for_status(&self, status: u16) -> Response {
        error_for_status(status).into_response()
    }
}

fn new_org_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `Org` response's fields with the values an organization has when nothing was given,
/// in the order of the vendor page's example.
fn defaults(id: String) -> Map<String, Value> {
    let mut org = Map::new();
    org.insert("id".into(), Value::String(id));
    org.insert("name".into(), json!(""));
    org.insert("description".into(), json!(""));
    org.insert("parent_id".into(), json!(""));
    org.insert("color".into(), json!(""));
    org.insert("metadata".into(), json!({ "payload": {}, "schema": {} }));
    org.insert("domains".into(), Value::Null);
    org.insert("authentication_mechanisms".into(), Value::Null);
    org.insert("deactivated".into(), json!(false));
    org.insert("issuer_url".into(), json!(""));
    org.insert("theme_id".into(), Value::Null);
    org.insert("subject_format".into(), json!(""));
    org.insert("subject_identifier_algorithm_salt".into(), json!(""));
    org.insert("template".into(), json!(false));
    org.insert("number_of_child_organizations".into(), json!(0));
    org
}

// ---------------------------------------------------------------------------------------------
// OAuth2: POST /{tenant}/system/oauth2/token
// ---------------------------------------------------------------------------------------------

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({ "error": error, "error_description": description, "status_code": status.as_u16() });
    authorized((status, Json(body)).into_response(), false)
}

/// Parses `application/x-www-form-urlencoded` pairs; `None` if any does not decode.
fn form_params(body: &[u8]) -> Option<Vec<(String, String)>> {
    form_pairs(std::str::from_utf8(body).ok()?).map(decode_form_pair).collect()
}

async fn issue_token(State(served): State<Arc<Served<SecureAuth>>>, headers: HeaderMap, body: Bytes) -> Response {
    let state = &served.sim;
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    let Some(params) = form_params(&body).filter(|_| is_form) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request must be application/x-www-form-urlencoded",
        );
    };
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match param("grant_type").as_deref() {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("The authorization grant type {other} is not supported"),
            );
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required"),
    }
    let (client_id, client_secret) = match (param("client_id"), param("client_secret")) {
        (Some(id), Some(secret)) => (id, secret),
        // `client_secret_basic`, the alternative to sending them in the form.
        _ => client_secret_basic(&headers).unwrap_or_default(),
    };
    if client_id != state.client_id || client_secret != state.client_secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    }
    // No scope asks for everything granted; any scope beyond the grant is refused outright.
    let requested = param("scope").unwrap_or_else(|| GRANTED_SCOPE.to_owned());
    if let Some(denied) = requested.split_whitespace().find(|s| *s != GRANTED_SCOPE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("The client is not allowed to request scope {denied}"),
        );
    }

    let token = state.issue_token(PROVIDER);
    let body = json!({
        "access_token": token,
        // A string, as on the vendor page.
        "expires_in": state.token_ttl.as_secs().to_string(),
        "scope": GRANTED_SCOPE,
        "token_type": "Bearer",
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    authorized(response, true)
}

// ---------------------------------------------------------------------------------------------
// System API: responses
// ---------------------------------------------------------------------------------------------

/// An answer in the System API's error shape, `{status_code, error, error_code, details}`.
/// A plain struct rather than a `Response` so validation results stay small.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: String,
    error_code: &'static str,
    details: Value,
    retry_after_secs: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status_code": self.status.as_u16(),
            "error": self.error,
            "error_code": self.error_code,
            "details": self.details,
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn api_error(status: StatusCode, error: &str, error_code: &'static str, details: Value) -> ApiError {
    ApiError { status, error: error.to_owned(), error_code, details, retry_after_secs: None }
}

fn bad_request(error: &str) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, error, "bad_request", Value::Null)
}

fn unprocessable(field: &str, problem: &str) -> ApiError {
    api_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("validation failed: {field}: {problem}"),
        "validation_error",
        json!({ field: problem }),
    )
}

fn not_found(what: &str) -> ApiError {
    api_error(StatusCode::NOT_FOUND, &format!("{what} not found"), "not_found", Value::Null)
}

fn conflict(field: &str, value: &str) -> ApiError {
    api_error(
        StatusCode::CONFLICT,
        &format!("organization with {field} {value} already exists"),
        "conflict",
        json!({ field: value }),
    )
}

fn too_many_requests(retry_after_secs: u64) -> ApiError {
    ApiError {
        retry_after_secs: Some(retry_after_secs),
        ..api_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests", "too_many_requests", Value::Null)
    }
}

fn service_unavailable() -> ApiError {
    api_error(StatusCode::SERVICE_UNAVAILABLE, "service temporarily unavailable", "service_unavailable", Value::Null)
}

fn gateway_timeout() -> ApiError {
    api_error(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout", "gateway_timeout", Value::Null)
}

/// The body SecureAuth would send with `status`.
fn error_for_status(status: u16) -> ApiError {
    let Ok(status) = StatusCode::from_u16(status) else {
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error", "internal_error", Value::Null);
    };
    match status.as_u16() {
        400 => bad_request("failed to decode request body"),
        401 => api_error(status, "invalid access token", "unauthorized", Value::Null),
        403 => {
            api_error(status, "access token is missing required scope manage_organizations", "forbidden", Value::Null)
        }
        404 => not_found("organization template"),
        409 => api_error(status, "organization already exists", "conflict", Value::Null),
        422 => unprocessable("name", "cannot be blank"),
        503 => service_unavailable(),
        504 => gateway_timeout(),
        _ => api_error(status, status.canonical_reason().unwrap_or("error"), "internal_error", Value::Null),
    }
}

async fn api_not_found() -> Response {
    not_found("route").into_response()
}

// ---------------------------------------------------------------------------------------------
// System API: rate limit
// ---------------------------------------------------------------------------------------------

/// Seconds until the tenant bucket holds one request again: one refill period, at least 1.
fn retry_after_secs(state: &SimState) -> u64 {
    let rate = state.faults().rate_limit.map_or(1.0, |r| r.per_second);
    if rate.is_finite() && rate > 0.0 { (1.0 / rate).ceil().max(1.0) as u64 } else { 1 }
}

// ---------------------------------------------------------------------------------------------
// System API: organizations
// ---------------------------------------------------------------------------------------------

/// `{scheme}://{host}/secureauth/{tenant}`, the prefix of an organization's `issuer_url`.
fn issuer_base(headers: &HeaderMap, tenant: &str) -> String {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}/{PROVIDER}/{tenant}")
}

/// The fields of a valid `CreateOrganizationRequest`, before the tenant's checks.
pub(crate) struct NewOrg {
    id: Option<String>,
    fields: Map<String, Value>,
    template_id: Option<String>,
    /// The prefix of the organization's `issuer_url`, from the call that created it.
    issuer: String,
}

/// Decodes and validates a create payload (400 for what does not decode, 422 for semantics).
fn validate(body: &[u8], issuer: String) -> Result<NewOrg, ApiError> {
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad_request("failed to decode request body: expected a JSON object"));
    };
    let string = |key: &str| -> Result<Option<String>, ApiError> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad_request(&format!(
                "failed to decode request body: cannot unmarshal {} into field {key} of type string",
                kind(other)
            ))),
        }
    };
    let strings = |key: &str| -> Result<Option<Vec<String>>, ApiError> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => {
                items.iter().map(|i| i.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().map(Some).ok_or_else(
                    || bad_request(&format!("failed to decode request body: {key} must be an array of strings")),
                )
            }
            Some(other) => Err(bad_request(&format!(
                "failed to decode request body: cannot unmarshal {} into field {key} of type []string",
                kind(other)
            ))),
        }
    };

    let name = string("name")?.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(unprocessable("name", "cannot be blank"));
    }
    if !name.chars().all(url_safe) {
        return Err(unprocessable("name", "must be URL-safe"));
    }
    let id = string("id")?;
    if let Some(id) = &id
        && (id.is_empty() || !id.chars().all(url_safe))
    {
        return Err(unprocessable("id", "must be URL-safe"));
    }
    let color = string("color")?;
    if let Some(c) = &color
        && !is_hex_color(c)
    {
        return Err(unprocessable("color", "must be a HEX color"));
    }
    let mechanisms = strings("authentication_mechanisms")?;
    if let Some(bad) = mechanisms.iter().flatten().find(|m| !MECHANISMS.contains(&m.as_str())) {
        return Err(unprocessable(
            "authentication_mechanisms",
            &format!("{bad} is not one of {}", MECHANISMS.join(", ")),
        ));
    }
    let domains = strings("domains")?;
    let template = match payload.get("template") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad_request(&format!(
                "failed to decode request body: cannot unmarshal {} into field template of type bool",
                kind(other)
            )));
        }
    };
    let metadata = match payload.get("metadata") {
        None | Some(Value::Null) => json!({ "payload": {}, "schema": {} }),
        Some(Value::Object(m)) => {
            let part = |k: &str| match m.get(k) {
                None | Some(Value::Null) => Ok(json!({})),
                Some(v @ Value::Object(_)) => Ok(v.clone()),
                Some(other) => Err(bad_request(&format!(
                    "failed to decode request body: cannot unmarshal {} into field metadata.{k} of type object",
                    kind(other)
                ))),
            };
            // Keys beside payload/schema have no place in ServerMetadata: they are dropped.
            json!({ "payload": part("payload")?, "schema": part("schema")? })
        }
        Some(other) => {
            return Err(bad_request(&format!(
                "failed to decode request body: cannot unmarshal {} into field metadata of type object",
                kind(other)
            )));
        }
    };

    let mut fields = Map::new();
    fields.insert("name".into(), json!(name));
    for (key, value) in [("description", string("description")?), ("parent_id", string("parent_id")?), ("color", color)]
    {
        if let Some(v) = value {
            fields.insert(key.into(), json!(v));
        }
    }
    fields.insert("metadata".into(), metadata);
    if let Some(d) = domains {
        fields.insert("domains".into(), json!(d));
    }
    if let Some(m) = mechanisms {
        fields.insert("authentication_mechanisms".into(), json!(m));
    }
    fields.insert("template".into(), json!(template));
    Ok(NewOrg { id, fields, template_id: string("template_id")?, issuer })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn url_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

fn is_hex_color(s: &str) -> bool {
    let hex = s.strip_prefix('#').unwrap_or("");
    (hex.len() == 3 || hex.len() == 6) && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// The tenant's checks and the write, atomically: parent and template must exist, id and name
/// must be free. Returns the stored organization.
fn store(state: &SimState, new: NewOrg) -> Result<Value, ApiError> {
    state
        .with_provider(PROVIDER, |p| {
            let find = |id: &str| p.orgs.iter().position(|o| o.get("id").and_then(Value::as_str) == Some(id));
            let text = |key: &str| new.fields.get(key).and_then(Value::as_str).map(str::to_owned);
            let parent = match text("parent_id").filter(|s| !s.is_empty()) {
                Some(parent_id) => Some(find(&parent_id).ok_or_else(|| not_found("parent organization"))?),
                None => None,
            };
            let template = match &new.template_id {
                Some(t) => Some(
                    p.orgs
                        .iter()
                        .find(|o| {
                            o.get("id").and_then(Value::as_str) == Some(t) && o.get("template") == Some(&json!(true))
                        })
                        .cloned()
                        .ok_or_else(|| not_found("organization template"))?,
                ),
                None => None,
            };
            if let Some(id) = &new.id
                && find(id).is_some()
            {
                return Err(conflict("id", id));
            }
            let name = text("name").unwrap_or_default();
            if p.orgs.iter().any(|o| o.get("name").and_then(Value::as_str) == Some(name.as_str())) {
                return Err(conflict("name", &name));
            }

            let id = new.id.clone().unwrap_or_else(new_org_id);
            let mut org = defaults(id.clone());
            org.insert("issuer_url".into(), json!(format!("{}/{id}", new.issuer)));
            for (k, v) in new.fields {
                org.insert(k, v);
            }
            // Template inheritance: sign-in methods and the business-attribute schema.
            if let Some(t) = template {
                if org.get("authentication_mechanisms").is_none_or(Value::is_null) {
                    org.insert("authentication_mechanisms".into(), t["authentication_mechanisms"].clone());
                }
                let schema = t.pointer("/metadata/schema").cloned().unwrap_or_else(|| json!({}));
                if let Some(m) = org.get_mut("metadata").and_then(Value::as_object_mut)
                    && m.get("schema").is_none_or(|s| s == &json!({}))
                {
                    m.insert("schema".into(), schema);
                }
            }
            if let Some(parent) = parent.and_then(|i| p.orgs.get_mut(i)).and_then(Value::as_object_mut) {
                let children = parent.get("number_of_child_organizations").and_then(Value::as_u64).unwrap_or(0);
                parent.insert("number_of_child_organizations".into(), json!(children + 1));
            }
            let org = Value::Object(org);
            p.orgs.push(org.clone());
            Ok(org)
        })
        .unwrap_or_else(|| Err(not_found("tenant")))
}

async fn get_organization(
    State(served): State<Arc<Served<SecureAuth>>>,
    Path((_tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    served
        .call(&headers, |sim| match sim.find_organization(PROVIDER, |org| has_text(org, "id", &id)) {
            Some(org) => (StatusCode::OK, Json(org)).into_response(),
            None => not_found("organization").into_response(),
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::testing::{client, json_of, start_with};
    use crate::ScriptedFault;
    use std::time::Duration;

    use std::time::Instant;

    use super::super::{Faults, RateLimit, Simulator, SimulatorConfig};
    use super::*;

    const SEED_REQUEST: &str = include_str!("../../tests/fixtures/secureauth/create_request.json");
    const SEED_RESPONSE: &str = include_str!("../../tests/fixtures/secureauth/create_response.json");
    const TENANT: &str = "acme";

    async fn start() -> Simulator {
        start_with(PROVIDER, SimulatorConfig::default()).await
    }

    async fn token_response(client: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> reqwest::Response {
        client.post(format!("{base}/{TENANT}/system/oauth2/token")).form(form).send().await.expect("token request")
    }

    async fn fetch_token(client: &reqwest::Client, base: &str) -> String {
        let response = token_response(
            client,
            base,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "orgprov-sim"),
                ("client_secret", "sim-secret"),
                ("scope", "manage_organizations"),
            ],
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("token json");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn create(client: &reqwest::Client, base: &str, token: &str, body: Value) -> reqwest::Response {
        client
            .post(format!("{base}/api/system/{TENANT}/organizations"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("create request")
    }

    async fn lookup(client: &reqwest::Client, base: &str, token: &str, id: &str) -> reqwest::Response {
        client
            .get(format!("{base}/api/system/{TENANT}/organizations/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("lookup request")
    }

    fn seed_template(sim: &Simulator) {
        sim.insert_organization(
            PROVIDER,
            json!({"id": "b2b-customer-template", "name": "b2b-customer-template", "template": true,
                   "authentication_mechanisms": ["password", "totp"],
                   "metadata": {"payload": {}, "schema": {"properties": {"salesforceId": {"type": "string"}}}}}),
        );
    }

    #[tokio::test]
    async fn token_is_form_encoded_checks_credentials_and_scope_and_renders_expires_in_as_a_string() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let ok = token_response(
            &client,
            &base,
            &[("grant_type", "client_credentials"), ("client_id", "orgprov-sim"), ("client_secret", "sim-secret")],
        )
        .await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()[CACHE_CONTROL], "no-store");
        let body = json_of(ok).await;
        assert_eq!(body["expires_in"], "86400");
        assert_eq!(body["scope"], "manage_organizations");
        assert_eq!(body["token_type"], "Bearer");

        let bad_secret = token_response(
            &client,
            &base,
            &[("grant_type", "client_credentials"), ("client_id", "orgprov-sim"), ("client_secret", "nope")],
        )
        .await;
        assert_eq!(bad_secret.status(), 401);
        assert_eq!(json_of(bad_secret).await["error"], "invalid_client");

        let scope = token_response(
            &client,
            &base,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "orgprov-sim"),
                ("client_secret", "sim-secret"),
                ("scope", "manage_configuration"),
            ],
        )
        .await;
        assert_eq!(scope.status(), 400);
        assert_eq!(json_of(scope).await["error"], "invalid_scope");

        // Basic client authentication works too; JSON bodies do not.
        let basic = client
            .post(format!("{base}/other-tenant/system/oauth2/token"))
            .basic_auth("orgprov-sim", Some("sim-secret"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("basic");
        assert_eq!(basic.status(), 200);
        let json = client
            .post(format!("{base}/{TENANT}/system/oauth2/token"))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .expect("json");
        assert_eq!(json.status(), 400);

        let recorded: Vec<bool> = sim.requests().iter().map(|r| r.authorized).collect();
        assert_eq!(recorded, vec![true, false, false, true, false]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_seed_request_creates_the_documented_organization() {
        let sim = start().await;
        seed_template(&sim);
        sim.insert_organization(PROVIDER, json!({"id": "parent-org-id", "name": "parent"}));
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;

        let mut request: Value = serde_json::from_str(SEED_REQUEST).expect("fixture");
        request["parent_id"] = json!("parent-org-id");
        let response = create(&client, &base, &token, request).await;
        assert_eq!(response.status(), 201);
        assert!(response.headers().contains_key(ETAG));
        let created = json_of(response).await;

        // Same fields as the documented response, the same values where they are not generated.
        let documented: Value = serde_json::from_str(SEED_RESPONSE).expect("fixture");
        let keys = |v: &Value| v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&created), keys(&documented));
        for field in ["name", "description", "parent_id", "deactivated", "template", "number_of_child_organizations"] {
            assert_eq!(created[field], documented[field], "{field}");
        }
        assert_eq!(created["metadata"]["payload"], documented["metadata"]["payload"]);
        let id = created["id"].as_str().expect("id");
        assert_eq!(id.len(), 32);
        assert!(created["issuer_url"].as_str().expect("issuer").ends_with(&format!("/{TENANT}/{id}")));
        // Inherited from the template.
        assert_eq!(created["authentication_mechanisms"], json!(["password", "totp"]));
        assert_eq!(created["metadata"]["schema"]["properties"]["salesforceId"]["type"], "string");

        let fetched = json_of(lookup(&client, &base, &token, id).await).await;
        assert_eq!(fetched, created);
        let parent = json_of(lookup(&client, &base, &token, "parent-org-id").await).await;
        assert_eq!(parent["number_of_child_organizations"], 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_seed_recommended_example_loses_its_top_level_metadata() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;
        let response = create(
            &client,
            &base,
            &token,
            json!({"name": "acme-corp-001", "displayName": "ACME Corporation", "email": "contact@acme.com",
                   "metadata": {"salesforceId": "001xx000003DGb2AAG"}}),
        )
        .await;
        assert_eq!(response.status(), 201);
        let created = json_of(response).await;
        assert_eq!(created["metadata"], json!({"payload": {}, "schema": {}}));
        assert!(created.get("displayName").is_none() && created.get("email").is_none());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn client_chosen_id_and_name_are_unique() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;

        let first = create(&client, &base, &token, json!({"id": "abc123", "name": "acme"})).await;
        assert_eq!(first.status(), 201);
        assert_eq!(json_of(first).await["id"], "abc123");
        let same_id = create(&client, &base, &token, json!({"id": "abc123", "name": "other"})).await;
        assert_eq!(same_id.status(), 409);
        let body = json_of(same_id).await;
        assert_eq!(body["status_code"], 409);
        assert_eq!(body["error_code"], "conflict");
        assert_eq!(body["details"], json!({"id": "abc123"}));
        let same_name = create(&client, &base, &token, json!({"id": "def456", "name": "acme"})).await;
        assert_eq!(same_name.status(), 409);
        assert_eq!(json_of(same_name).await["details"], json!({"name": "acme"}));
        assert_eq!(lookup(&client, &base, &token, "def456").await.status(), 404);
        assert_eq!(sim.organizations(PROVIDER).len(), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn validation_errors_have_the_documented_shape() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;

        let cases = [
            (json!({"description": "no name"}), 422, "name"),
            (json!({"name": "acme corp"}), 422, "name"),
            (
                json!({"name": "acme", "authentication_mechanisms": ["carrier_pigeon"]}),
                422,
                "authentication_mechanisms",
            ),
            (json!({"name": "acme", "color": "blue"}), 422, "color"),
            (json!({"name": "acme", "id": "a/b"}), 422, "id"),
        ];
        for (body, status, field) in cases {
            let response = create(&client, &base, &token, body.clone()).await;
            assert_eq!(response.status(), status, "{body}");
            let error = json_of(response).await;
            assert_eq!(error["status_code"], status);
            assert_eq!(error["error_code"], "validation_error");
            assert!(error["details"].get(field).is_some(), "{error}");
        }
        let wrong_type = create(&client, &base, &token, json!({"name": ["acme"]})).await;
        assert_eq!(wrong_type.status(), 400);
        assert_eq!(json_of(wrong_type).await["error_code"], "bad_request");
        let unknown_template = create(&client, &base, &token, json!({"name": "acme", "template_id": "nope"})).await;
        assert_eq!(unknown_template.status(), 404);
        assert_eq!(json_of(unknown_template).await["error"], "organization template not found");
        let unknown_parent = create(&client, &base, &token, json!({"name": "acme", "parent_id": "nope"})).await;
        assert_eq!(unknown_parent.status(), 404);
        assert!(sim.organizations(PROVIDER).is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn idempotency_key_is_ignored() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;
        let send = |name: &'static str| {
            client
                .post(format!("{base}/api/system/{TENANT}/organizations"))
                .bearer_auth(&token)
                .header("Idempotency-Key", "same-key")
                .json(&json!({ "name": name }))
                .send()
        };
        assert_eq!(send("first").await.expect("create").status(), 201);
        assert_eq!(send("second").await.expect("create").status(), 201);
        assert_eq!(send("second").await.expect("create").status(), 409);
        assert_eq!(sim.organizations(PROVIDER).len(), 2);
        let keys: Vec<Option<String>> = sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/organizations"))
            .map(|r| r.idempotency_key)
            .collect();
        assert_eq!(keys, vec![Some("same-key".to_owned()); 3]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn lost_response_stores_and_answers_504_then_the_id_conflicts() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;
        sim.push_script(PROVIDER, vec![ScriptedFault::LostResponse]);
        let response = create(&client, &base, &token, json!({"id": "lost1", "name": "lost"})).await;
        assert_eq!(response.status(), 504);
        assert_eq!(json_of(response).await["status_code"], 504);
        assert_eq!(lookup(&client, &base, &token, "lost1").await.status(), 200);
        assert_eq!(create(&client, &base, &token, json!({"id": "lost1", "name": "lost"})).await.status(), 409);
        assert_eq!(sim.organizations(PROVIDER).len(), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn dropped_connection_and_late_commit_still_store() {
        let sim = start().await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;
        sim.push_script(PROVIDER, vec![ScriptedFault::DropConnection, ScriptedFault::LateCommit { delay_ms: 200 }]);
        let dropped = client
            .post(format!("{base}/api/system/{TENANT}/organizations"))
            .bearer_auth(&token)
            .json(&json!({"id": "d1", "name": "dropped"}))
            .send()
            .await;
        assert!(dropped.is_err());
        assert_eq!(lookup(&client, &base, &token, "d1").await.status(), 200);
        let late = create(&client, &base, &token, json!({"id": "l1", "name": "late"})).await;
        assert_eq!(late.status(), 503);
        assert_eq!(lookup(&client, &base, &token, "l1").await.status(), 404);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(lookup(&client, &base, &token, "l1").await.status(), 200);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_retry_after_and_spares_token_calls() {
        let config = SimulatorConfig {
            faults: Faults { rate_limit: Some(RateLimit { per_second: 0.5, burst: 2 }), ..Faults::default() },
            ..SimulatorConfig::default()
        };
        let sim = start_with(PROVIDER, config).await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;
        assert_eq!(create(&client, &base, &token, json!({"name": "r1"})).await.status(), 201);
        assert_eq!(lookup(&client, &base, &token, "x").await.status(), 404);
        let limited = create(&client, &base, &token, json!({"name": "r3"})).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[RETRY_AFTER], "2", "one request per 2 s refills");
        assert!(limited.headers().get("x-ratelimit-reset").is_none());
        assert_eq!(
            json_of(limited).await,
            json!({"status_code": 429, "error": "Too many requests", "error_code": "too_many_requests",
                   "details": null})
        );
        // Token calls belong to the OAuth group, not the System API bucket.
        let _ = fetch_token(&client, &base).await;
        assert_eq!(sim.organizations(PROVIDER).len(), 1);

        sim.set_faults(Faults::default());
        sim.push_script(PROVIDER, vec![ScriptedFault::RateLimited { retry_after_secs: Some(7) }]);
        let scripted = create(&client, &base, &token, json!({"name": "r4"})).await;
        assert_eq!(scripted.status(), 429);
        assert_eq!(scripted.headers()[RETRY_AFTER], "7");
        assert_eq!(create(&client, &base, &token, json!({"name": "r4"})).await.status(), 201);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn expired_revoked_and_missing_tokens_get_401() {
        let sim =
            start_with(PROVIDER, SimulatorConfig { token_ttl: Duration::from_secs(1), ..SimulatorConfig::default() })
                .await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        let token = fetch_token(&client, &base).await;
        assert_eq!(lookup(&client, &base, &token, "x").await.status(), 404);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let expired = lookup(&client, &base, &token, "x").await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(expired.status(), 401);
        assert_eq!(json_of(expired).await["error"], "access token expired");

        let fresh = fetch_token(&client, &base).await;
        sim.revoke_tokens();
        let revoked = create(&client, &base, &fresh, json!({"name": "x"})).await;
        assert_eq!(revoked.status(), 401);
        assert_eq!(json_of(revoked).await["error_code"], "unauthorized");
        let missing = client.get(format!("{base}/api/system/{TENANT}/organizations/x")).send().await.expect("get");
        assert_eq!(missing.status(), 401);
        assert!(sim.organizations(PROVIDER).is_empty());
        sim.shutdown().await;
    }
}
