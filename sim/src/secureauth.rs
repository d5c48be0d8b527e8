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
//!
//! This module is SecureAuth's [`SimulatedProvider`]: its wire specifics only. Admission and the
//! faults of a create are shared (`crate::provider`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HOST, PRAGMA, RETRY_AFTER};
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
            .route("/api/system/{tenant}/organizations/{id}", lookup(get_organization))
            .fallback(api_not_found)
    }

    /// A random id and the documented defaults of the `Org` response.
    fn seed_defaults() -> Map<String, Value> {
        defaults(new_org_id())
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
    let unsupported = |other: &str| format!("The authorization grant type {other} is not supported");
    if let Err((error, description)) =
        client_credentials_grant(param("grant_type").as_deref(), unsupported, "grant_type is required")
    {
        return oauth_error(StatusCode::BAD_REQUEST, error, &description);
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
            let find = |id: &str| p.orgs.position("id", id);
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
            if p.orgs.has("name", &name) {
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
            if let Some(parent) = parent {
                p.orgs.update(parent, |parent| {
                    let children = parent.get("number_of_child_organizations").and_then(Value::as_u64).unwrap_or(0);
                    parent["number_of_child_organizations"] = json!(children + 1);
                });
            }
            let org = Value::Object(org);
            p.orgs.push(org.clone());
            Ok(org)
        })
        .unwrap_or_else(|| Err(not_found("tenant")))
}

fn get_organization(sim: &SimState, id: &str) -> Response {
    match sim.find_organization(PROVIDER, "id", id) {
        Some(org) => (StatusCode::OK, Json(org)).into_response(),
        None => not_found("organization").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testing::{
        Api, SECUREAUTH_TENANT as TENANT, client, json_of, rate_limited, start, start_signed_in, start_with, token_ttl,
    };
    use crate::{Simulator, SimulatorConfig};

    const SEED_REQUEST: &str = include_str!("../../tests/fixtures/secureauth/create_request.json");
    const SEED_RESPONSE: &str = include_str!("../../tests/fixtures/secureauth/create_response.json");

    async fn lookup(api: &Api, id: &str) -> reqwest::Response {
        api.get(&format!("/api/system/{TENANT}/organizations/{id}")).await
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
        let sim = start_with(PROVIDER, SimulatorConfig::default()).await;
        let base = sim.base_url(PROVIDER);
        let client = client();
        // A form with the client credentials, the given secret and maybe a scope.
        let token = async |secret: &str, scope: Option<&str>| {
            let mut form = vec![("grant_type", "client_credentials"), ("client_id", "orgprov-sim")];
            form.push(("client_secret", secret));
            form.extend(scope.map(|scope| ("scope", scope)));
            let request = client.post(format!("{base}/{TENANT}/system/oauth2/token")).form(&form);
            request.send().await.expect("token request")
        };
        let ok = token("sim-secret", None).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()[CACHE_CONTROL], "no-store");
        let body = json_of(ok).await;
        assert_eq!(body["expires_in"], "86400");
        assert_eq!(body["scope"], "manage_organizations");
        assert_eq!(body["token_type"], "Bearer");

        let bad_secret = token("nope", None).await;
        assert_eq!(bad_secret.status(), 401);
        assert_eq!(json_of(bad_secret).await["error"], "invalid_client");
        let scope = token("sim-secret", Some("manage_configuration")).await;
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
        let other_grant = client
            .post(format!("{base}/{TENANT}/system/oauth2/token"))
            .form(&[("grant_type", "password")])
            .send()
            .await
            .expect("grant");
        assert_eq!(json_of(other_grant).await["error"], "unsupported_grant_type");

        let recorded: Vec<bool> = sim.requests().iter().map(|r| r.authorized).collect();
        assert_eq!(recorded, vec![true, false, false, true, false, false]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_seed_request_creates_the_documented_organization() {
        let (sim, api) = start(PROVIDER).await;
        seed_template(&sim);
        sim.insert_organization(PROVIDER, json!({"id": "parent-org-id", "name": "parent"}));

        let mut request: Value = serde_json::from_str(SEED_REQUEST).expect("fixture");
        request["parent_id"] = json!("parent-org-id");
        let response = api.create(request).await;
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

        let fetched = json_of(lookup(&api, id).await).await;
        assert_eq!(fetched, created);
        let parent = json_of(lookup(&api, "parent-org-id").await).await;
        assert_eq!(parent["number_of_child_organizations"], 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_seed_recommended_example_loses_its_top_level_metadata() {
        let (sim, api) = start(PROVIDER).await;
        let response = api
            .create(json!({"name": "acme-corp-001", "displayName": "ACME Corporation", "email": "contact@acme.com",
                   "metadata": {"salesforceId": "001xx000003DGb2AAG"}}))
            .await;
        assert_eq!(response.status(), 201);
        let created = json_of(response).await;
        assert_eq!(created["metadata"], json!({"payload": {}, "schema": {}}));
        assert!(created.get("displayName").is_none() && created.get("email").is_none());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn client_chosen_id_and_name_are_unique() {
        let (sim, api) = start(PROVIDER).await;

        let first = api.create(json!({"id": "abc123", "name": "acme"})).await;
        assert_eq!(first.status(), 201);
        assert_eq!(json_of(first).await["id"], "abc123");
        let same_id = api.create(json!({"id": "abc123", "name": "other"})).await;
        assert_eq!(same_id.status(), 409);
        let body = json_of(same_id).await;
        assert_eq!(body["status_code"], 409);
        assert_eq!(body["error_code"], "conflict");
        assert_eq!(body["details"], json!({"id": "abc123"}));
        let same_name = api.create(json!({"id": "def456", "name": "acme"})).await;
        assert_eq!(same_name.status(), 409);
        assert_eq!(json_of(same_name).await["details"], json!({"name": "acme"}));
        assert_eq!(lookup(&api, "def456").await.status(), 404);
        assert_eq!(sim.organizations(PROVIDER).len(), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn validation_errors_have_the_documented_shape() {
        let (sim, api) = start(PROVIDER).await;

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
            let response = api.create(body.clone()).await;
            assert_eq!(response.status(), status, "{body}");
            let error = json_of(response).await;
            assert_eq!(error["status_code"], status);
            assert_eq!(error["error_code"], "validation_error");
            assert!(error["details"].get(field).is_some(), "{error}");
        }
        let wrong_type = api.create(json!({"name": ["acme"]})).await;
        assert_eq!(wrong_type.status(), 400);
        assert_eq!(json_of(wrong_type).await["error_code"], "bad_request");
        let unknown_template = api.create(json!({"name": "acme", "template_id": "nope"})).await;
        assert_eq!(unknown_template.status(), 404);
        assert_eq!(json_of(unknown_template).await["error"], "organization template not found");
        let unknown_parent = api.create(json!({"name": "acme", "parent_id": "nope"})).await;
        assert_eq!(unknown_parent.status(), 404);
        assert!(sim.organizations(PROVIDER).is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_retry_after_and_spares_token_calls() {
        let (sim, api) = start_signed_in(PROVIDER, rate_limited(0.5, 2)).await;
        assert_eq!(api.create(json!({"name": "r1"})).await.status(), 201);
        assert_eq!(lookup(&api, "x").await.status(), 404);
        let limited = api.create(json!({"name": "r3"})).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[RETRY_AFTER], "2", "one request per 2 s refills");
        assert!(limited.headers().get("x-ratelimit-reset").is_none());
        assert_eq!(
            json_of(limited).await,
            json!({"status_code": 429, "error": "Too many requests", "error_code": "too_many_requests",
                   "details": null})
        );
        // Token calls belong to the OAuth group, not the System API bucket.
        let _ = Api::sign_in(&sim, PROVIDER).await;
        assert_eq!(sim.organizations(PROVIDER).len(), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn expired_revoked_and_missing_tokens_get_401() {
        let (sim, api) = start_signed_in(PROVIDER, token_ttl(Duration::from_secs(1))).await;
        assert_eq!(lookup(&api, "x").await.status(), 404);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let expired = lookup(&api, "x").await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(expired.status(), 401);
        assert_eq!(json_of(expired).await["error"], "access token expired");

        let fresh = Api::sign_in(&sim, PROVIDER).await;
        sim.revoke_tokens();
        let revoked = fresh.create(json!({"name": "x"})).await;
        assert_eq!(revoked.status(), 401);
        assert_eq!(json_of(revoked).await["error_code"], "unauthorized");
        let missing = api.http.get(format!("{}/api/system/{TENANT}/organizations/x", api.base)).send().await;
        assert_eq!(missing.expect("get").status(), 401);
        assert!(sim.organizations(PROVIDER).is_empty());
        sim.shutdown().await;
    }
}
