//! Simulated Auth0 tenant: the client-credentials token endpoint and the Management API calls the
//! worker needs (`POST /api/v2/organizations`, `GET /api/v2/organizations/name/{name}`, and
//! `GET /api/v2/organizations/{id}`), with Auth0's validation rules, error bodies, and
//! `x-ratelimit-*` headers as documented in PROVIDERS.md §2 and the vendor page (seed 001).
//! Where the seed's samples are wrong (branding/metadata wrapped in arrays) we follow the real
//! API, which rejects such payloads with 400.
//!
//! This module is Auth0's [`SimulatedProvider`]: its wire specifics only. Admission and the
//! faults of a create are shared (`crate::provider`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::{Map, Value, json};

use crate::faults::RateDecision;
use crate::provider::{CreateCall, Served, SimulatedProvider, lookup};
use crate::state::{SimState, TokenStatus};
use crate::wire::{
    NoBearer, authorized, bearer_token, client_secret_basic, decode_form_pair, form_pairs, with_retry_after,
};

/// Path prefix and state key of this provider.
const PROVIDER: &str = "auth0";

/// Scopes granted to every issued token: exactly what the worker needs.
const TOKEN_SCOPE: &str = "create:organizations read:organizations";

/// Limits from the vendor page (seed 001); newer SDK docs allow 25 metadata keys, but the
/// stricter documented value makes clients that overfill metadata fail here first.
const NAME_MAX: usize = 50;
const DISPLAY_NAME_MAX: usize = 255;
const METADATA_MAX_KEYS: usize = 10;
const METADATA_MAX_LEN: usize = 255;
const CONNECTIONS_MAX: usize = 10;

// Property descriptions as Auth0's schema words them; they appear in 400 messages.
const DESC_NAME: &str = "The name of this organization";
const DESC_DISPLAY_NAME: &str = "Friendly name of this organization";
const DESC_BRANDING: &str = "Theme defines how to style the login pages";
const DESC_LOGO_URL: &str = "URL of logo to display on login page";
const DESC_COLORS: &str = "Color scheme used to customize the login pages";
const DESC_PRIMARY: &str = "HEX Color for primary elements";
const DESC_PAGE_BACKGROUND: &str = "HEX Color for background";
const DESC_METADATA: &str =
    "Metadata associated with the organization, in the form of an object with string values (max 255 chars)";
const DESC_CONNECTIONS: &str = "Connections that will be enabled for this organization";
const DESC_CONNECTION_ID: &str = "Single connection ID to add to the organization";
const DESC_ASSIGN: &str = "When true, all users that log in with this connection will be automatically granted membership in the organization";
const DESC_BUTTON: &str = "Determines whether a connection should be displayed on this organization's login prompt";
const DESC_SIGNUP: &str = "Determines whether organization signup should be enabled for this organization connection";

const NAME_PATTERN: &str = "^[a-z0-9\\-_]+$";
const COLOR_PATTERN: &str = "^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$";

/// A simulated Auth0 tenant. Every answer of the Management API reports the tenant's token
/// bucket in `x-ratelimit-*` headers, so the rate decision travels with the call.
#[derive(Default)]
pub(crate) struct Auth0;

impl SimulatedProvider for Auth0 {
    const NAME: &'static str = PROVIDER;
    type Draft = Map<String, Value>;
    type Charge = RateDecision;

    fn routes(create: MethodRouter<Arc<Served<Self>>>) -> Router<Arc<Served<Self>>> {
        Router::new()
            .route("/oauth/token", post(issue_token))
            .route("/api/v2/organizations", create)
            .route("/api/v2/organizations/name/{name}", lookup(|sim, name| find_by(sim, "name", name)))
            .route("/api/v2/organizations/{id}", lookup(|sim, id| find_by(sim, "id", id)))
            .fallback(api_not_found)
    }

    /// An `org_…` id.
    fn seed_defaults() -> Map<String, Value> {
        Map::from_iter([("id".to_owned(), Value::String(new_org_id()))])
    }

    fn authenticate(&self, sim: &SimState, headers: &HeaderMap) -> Result<(), Response> {
        // Worded as Auth0 words it.
        let message = match bearer_token(headers).map(|token| sim.check_token(PROVIDER, token)) {
            Ok(TokenStatus::Valid) => return Ok(()),
            Ok(TokenStatus::Expired) => "Expired token received for JSON Web Token validation",
            Ok(TokenStatus::Unknown) => "Invalid token",
            Err(NoBearer::Missing) => "Missing authentication",
            Err(NoBearer::Unreadable | NoBearer::OtherScheme) => "Bad HTTP authentication header format",
        };
        Err(unauthorized(message))
    }

    fn charge(&self, sim: &SimState) -> RateDecision {
        sim.take_rate_limit(PROVIDER)
    }

    fn too_many_requests(&self) -> Response {
        api_error(StatusCode::TOO_MANY_REQUESTS, "Global limit has been reached", Some("too_many_requests"))
    }

    /// A scripted 429 also reports an exhausted bucket in the rate-limit headers.
    fn rate_limited(&self, retry_after_secs: Option<u64>, rate: &mut RateDecision) -> Response {
        *rate = exhausted(*rate, retry_after_secs);
        with_retry_after(self.too_many_requests(), retry_after_secs)
    }

    /// What every Management API answer carries: the tenant's rate-limit headers (clients
    /// compare `x-ratelimit-reset` against the `Date`).
    fn finish(&self, response: &mut Response, rate: &RateDecision) {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(rate.reset_epoch));
    }

    fn validate(&self, call: &CreateCall) -> Result<Map<String, Value>, Response> {
        prepare(&call.headers, &call.body).map_err(IntoResponse::into_response)
    }

    fn store(&self, sim: &SimState, fields: Map<String, Value>) -> Result<Value, Response> {
        store_if_free(sim, fields).ok_or_else(conflict)
    }

    fn error_for_status(&self, status: u16) -> Response {
        error_for_status(status)
    }
}

fn new_org_id() -> String {
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric).take(16).collect();
    format!("org_{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Authentication API: POST /oauth/token
// ---------------------------------------------------------------------------------------------

/// The Authentication API's error shape (different from the Management API's).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({ "error": error, "error_description": description });
    authorized((status, Json(body)).into_response(), false)
}

/// Reads the token request's parameters from a JSON or form body, as Auth0 accepts both.
fn token_params(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, String> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if content_type.contains("json") {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("Request body must be a JSON object".to_owned()),
            Err(_) => Err("Invalid JSON in request body".to_owned()),
        };
    }
    let text = std::str::from_utf8(body).map_err(|_| "Invalid request body".to_owned())?;
    let mut params = Map::new();
    for pair in form_pairs(text) {
        let (key, value) = decode_form_pair(pair).ok_or_else(|| "Invalid form encoding".to_owned())?;
        params.insert(key, Value::String(value));
    }
    Ok(params)
}

async fn issue_token(State(served): State<Arc<Served<Auth0>>>, headers: HeaderMap, body: Bytes) -> Response {
    let state = &served.sim;
    let params = match token_params(&headers, &body) {
        Ok(params) => params,
        Err(description) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &description);
        }
    };
    let param = |name: &str| params.get(name).and_then(Value::as_str).map(str::to_owned);

    let Some(grant_type) = param("grant_type") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: grant_type");
    };
    if grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "unsupported_grant_type",
            &format!("Unsupported grant type: {grant_type}"),
        );
    }
    let (client_id, client_secret) = match (param("client_id"), param("client_secret")) {
        (Some(id), Some(secret)) => (id, secret),
        // `client_secret_basic`, the alternative Auth0 allows to sending them in the body.
        _ => client_secret_basic(&headers).unwrap_or_default(),
    };
    if client_id != state.client_id || client_secret != state.client_secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    // The Management API is the only API this tenant exposes; its identifier is the tenant's
    // `https://{domain}/api/v2/`. The simulator's domain varies by port, so any URL ending in
    // `/api/v2/` counts as it.
    let Some(audience) = param("audience") else {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "No audience parameter was provided, and no default audience has been configured",
        );
    };
    if !(audience.ends_with("/api/v2/") || audience.ends_with("/api/v2")) {
        return oauth_error(StatusCode::FORBIDDEN, "access_denied", &format!("Service not found: {audience}"));
    }

    let token = state.issue_token(PROVIDER);
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": state.token_ttl.as_secs(),
        "scope": TOKEN_SCOPE,
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    authorized(response, true)
}

// ---------------------------------------------------------------------------------------------
// Management API: responses
// ---------------------------------------------------------------------------------------------

/// The Management API's error shape.
fn api_error(status: StatusCode, message: &str, error_code: Option<&str>) -> Response {
    let mut body = json!({
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    if let (Some(code), Some(fields)) = (error_code, body.as_object_mut()) {
        fields.insert("errorCode".to_owned(), Value::String(code.to_owned()));
    }
    (status, Json(body)).into_response()
}

fn unauthorized(message: &str) -> Response {
    let body = json!({
        "statusCode": 401,
        "error": "Unauthorized",
        "message": message,
        "attributes": { "error": message },
    });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

fn invalid_body(message: String) -> Response {
    api_error(StatusCode::BAD_REQUEST, &message, Some("invalid_body"))
}

fn conflict() -> Response {
    // Wording from the vendor's status-code table (seed 001).
    api_error(StatusCode::CONFLICT, "An organization with the same name already exists.", Some("organization_conflict"))
}

fn not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "No organization found by that name or id", Some("inexistent_organization"))
}

fn service_unavailable() -> Response {
    api_error(StatusCode::SERVICE_UNAVAILABLE, "The service is temporarily unavailable", None)
}

fn gateway_timeout() -> Response {
    api_error(StatusCode::GATEWAY_TIMEOUT, "Request timed out", None)
}

/// The body Auth0 would send with `status`.
fn error_for_status(status: u16) -> Response {
    let Ok(status) = StatusCode::from_u16(status) else {
        // Not a representable HTTP status: the closest honest answer is a server error.
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, "An internal server error occurred", None);
    };
    match status.as_u16() {
        400 => invalid_body("Payload validation error: 'Invalid request payload'.".to_owned()),
        401 => unauthorized("Invalid token"),
        403 => {
            api_error(status, "Insufficient scope, expected any of: create:organizations", Some("insufficient_scope"))
        }
        404 => not_found(),
        409 => conflict(),
        500 => api_error(status, "An internal server error occurred", None),
        503 => service_unavailable(),
        504 => gateway_timeout(),
        _ => api_error(status, status.canonical_reason().unwrap_or("Error"), None),
    }
}

async fn api_not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "Not Found", None)
}

// ---------------------------------------------------------------------------------------------
// Management API: organizations
// ---------------------------------------------------------------------------------------------

/// Rate-limit headers for a scripted 429: nothing left, full again after `retry_after` (or at
/// least the next second).
fn exhausted(rate: RateDecision, retry_after_secs: Option<u64>) -> RateDecision {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    RateDecision {
        allowed: false,
        remaining: 0,
        reset_epoch: rate.reset_epoch.max(now + retry_after_secs.unwrap_or(1).max(1)),
        ..rate
    }
}

/// Why a create payload was refused before it reached the schema or during it.
#[derive(Debug)]
enum Refusal {
    UnsupportedMediaType,
    MalformedJson,
    Invalid(Invalid),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::UnsupportedMediaType => {
                api_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", None)
            }
            Refusal::MalformedJson => {
                api_error(StatusCode::BAD_REQUEST, "Invalid request payload JSON format", Some("invalid_body"))
            }
            Refusal::Invalid(invalid) => invalid_body(invalid.message()),
        }
    }
}

/// Parses and validates a create payload into the fields to store (without an id yet).
fn prepare(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        let is_json = content_type.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("json"));
        if !is_json {
            return Err(Refusal::UnsupportedMediaType);
        }
    }
    // An empty body reaches the schema as `null`, as it does on Auth0's hapi stack.
    let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|_| Refusal::MalformedJson)?
    };
    validate(&payload).map_err(Refusal::Invalid)
}

/// Stores `fields` under a fresh id if no organization has that name yet; returns the stored
/// organization, or `None` on a name conflict.
fn store_if_free(state: &SimState, fields: Map<String, Value>) -> Option<Value> {
    let name = fields.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    state
        .with_provider(PROVIDER, |p| {
            if p.orgs.has("name", &name) {
                return None;
            }
            let mut stored = Map::new();
            stored.insert("id".to_owned(), Value::String(new_org_id()));
            stored.extend(fields);
            let stored = Value::Object(stored);
            p.orgs.push(stored.clone());
            Some(stored)
        })
        .flatten()
}

/// The GET representation: Auth0 serves enabled connections from their own endpoint
/// (`/organizations/{id}/enabled_connections`), not in the organization object.
fn as_fetched(org: &Value) -> Value {
    let mut org = org.clone();
    if let Some(fields) = org.as_object_mut() {
        fields.remove("enabled_connections");
    }
    org
}

fn find_by(sim: &SimState, field: &str, wanted: &str) -> Response {
    match sim.find_organization(PROVIDER, field, wanted) {
        Some(org) => (StatusCode::OK, Json(as_fetched(&org))).into_response(),
        None => not_found(),
    }
}

// ---------------------------------------------------------------------------------------------
// Payload validation
// ---------------------------------------------------------------------------------------------

/// One schema violation, in the terms of Auth0's (z-schema based) messages.
#[derive(Debug)]
struct Invalid {
    what: String,
    /// Property path and its schema description; `None` for the payload root.
    property: Option<(String, &'static str)>,
}

impl Invalid {
    fn root(what: impl Into<String>) -> Self {
        Invalid { what: what.into(), property: None }
    }

    fn at(property: impl Into<String>, description: &'static str, what: impl Into<String>) -> Self {
        Invalid { what: what.into(), property: Some((property.into(), description)) }
    }

    fn message(&self) -> String {
        match &self.property {
            Some((property, description)) => {
                format!("Payload validation error: '{}' on property {property} ({description}).", self.what)
            }
            None => format!("Payload validation error: '{}'.", self.what),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn wrong_type(expected: &str, found: &Value) -> String {
    format!("Expected type {expected} but found type {}", type_name(found))
}

fn as_object<'a>(
    value: &'a Value,
    property: &str,
    description: &'static str,
) -> Result<&'a Map<String, Value>, Invalid> {
    value.as_object().ok_or_else(|| Invalid::at(property, description, wrong_type("object", value)))
}

/// Refuses keys outside `allowed` (the schemas set `additionalProperties: false`).
fn only_keys(
    object: &Map<String, Value>,
    allowed: &[&str],
    property: Option<(&str, &'static str)>,
) -> Result<(), Invalid> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(extra) => {
            let what = format!("Additional properties not allowed: {extra}");
            Err(match property {
                Some((path, description)) => Invalid::at(path, description, what),
                None => Invalid::root(what),
            })
        }
    }
}

fn string_within<'a>(
    value: &'a Value,
    property: &str,
    description: &'static str,
    min: usize,
    max: usize,
) -> Result<&'a str, Invalid> {
    let text = value.as_str().ok_or_else(|| Invalid::at(property, description, wrong_type("string", value)))?;
    let length = text.chars().count();
    if length < min {
        return Err(Invalid::at(property, description, format!("String is too short ({length} chars), minimum {min}")));
    }
    if length > max {
        return Err(Invalid::at(property, description, format!("String is too long ({length} chars), maximum {max}")));
    }
    Ok(text)
}

fn optional_bool(object: &Map<String, Value>, key: &str, path: &str, description: &'static str) -> Result<(), Invalid> {
    match object.get(key) {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(other) => Err(Invalid::at(format!("{path}.{key}"), description, wrong_type("boolean", other))),
    }
}

fn is_hex_color(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('#') else {
        return false;
    };
    (digits.len() == 3 || digits.len() == 6) && digits.chars().all(|c| c.is_ascii_hexdigit())
}

/// Validates a create payload against Auth0's schema; returns the fields to store.
fn validate(payload: &Value) -> Result<Map<String, Value>, Invalid> {
    let Some(body) = payload.as_object() else {
        return Err(Invalid::root(wrong_type("object", payload)));
    };
    only_keys(body, &["name", "display_name", "branding", "metadata", "enabled_connections"], None)?;

    let Some(name) = body.get("name") else {
        return Err(Invalid::root("Missing required property: name"));
    };
    let name = string_within(name, "name", DESC_NAME, 1, NAME_MAX)?;
    let name_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !name_ok {
        return Err(Invalid::at("name", DESC_NAME, format!("String does not match pattern {NAME_PATTERN}: {name}")));
    }

    if let Some(display_name) = body.get("display_name") {
        string_within(display_name, "display_name", DESC_DISPLAY_NAME, 1, DISPLAY_NAME_MAX)?;
    }
    if let Some(branding) = body.get("branding") {
        validate_branding(branding)?;
    }
    if let Some(metadata) = body.get("metadata") {
        validate_metadata(metadata)?;
    }
    if let Some(connections) = body.get("enabled_connections") {
        validate_connections(connections)?;
    }

    // Echo in Auth0's field order, only what was given.
    let mut fields = Map::new();
    for key in ["name", "display_name", "branding", "metadata", "enabled_connections"] {
        if let Some(value) = body.get(key) {
            fields.insert(key.to_owned(), value.clone());
        }
    }
    Ok(fields)
}

fn validate_branding(branding: &Value) -> Result<(), Invalid> {
    let branding = as_object(branding, "branding", DESC_BRANDING)?;
    only_keys(branding, &["logo_url", "colors"], Some(("branding", DESC_BRANDING)))?;
    if let Some(logo) = branding.get("logo_url") {
        let url =
            logo.as_str().ok_or_else(|| Invalid::at("branding.logo_url", DESC_LOGO_URL, wrong_type("string", logo)))?;
        // Auth0's format is "absolute-https-uri-or-empty".
        let valid = url.is_empty()
            || url.strip_prefix("https://").is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !valid {
            return Err(Invalid::at(
                "branding.logo_url",
                DESC_LOGO_URL,
                format!("Object didn't pass validation for format absolute-https-uri-or-empty: {url}"),
            ));
        }
    }
    if let Some(colors) = branding.get("colors") {
        let colors = as_object(colors, "branding.colors", DESC_COLORS)?;
        only_keys(colors, &["primary", "page_background"], Some(("branding.colors", DESC_COLORS)))?;
        for (key, description) in [("primary", DESC_PRIMARY), ("page_background", DESC_PAGE_BACKGROUND)] {
            let Some(color) = colors.get(key) else {
                continue;
            };
            let path = format!("branding.colors.{key}");
            let text = color.as_str().ok_or_else(|| Invalid::at(&path, description, wrong_type("string", color)))?;
            if !is_hex_color(text) {
                return Err(Invalid::at(
                    &path,
                    description,
                    format!("String does not match pattern {COLOR_PATTERN}: {text}"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_metadata(metadata: &Value) -> Result<(), Invalid> {
    let metadata = as_object(metadata, "metadata", DESC_METADATA)?;
    if metadata.len() > METADATA_MAX_KEYS {
        return Err(Invalid::at(
            "metadata",
            DESC_METADATA,
            format!("Too many properties defined ({}), maximum {METADATA_MAX_KEYS}", metadata.len()),
        ));
    }
    for (key, value) in metadata {
        let key_length = key.chars().count();
        if key_length > METADATA_MAX_LEN {
            return Err(Invalid::at(
                "metadata",
                DESC_METADATA,
                format!("Property name is too long ({key_length} chars), maximum {METADATA_MAX_LEN}"),
            ));
        }
        string_within(value, &format!("metadata.{key}"), DESC_METADATA, 0, METADATA_MAX_LEN)?;
    }
    Ok(())
}

fn validate_connections(connections: &Value) -> Result<(), Invalid> {
    let items = connections
        .as_array()
        .ok_or_else(|| Invalid::at("enabled_connections", DESC_CONNECTIONS, wrong_type("array", connections)))?;
    if items.len() > CONNECTIONS_MAX {
        return Err(Invalid::at(
            "enabled_connections",
            DESC_CONNECTIONS,
            format!("Array is too long ({}), maximum {CONNECTIONS_MAX}", items.len()),
        ));
    }
    for (index, item) in items.iter().enumerate() {
        let path = format!("enabled_connections[{index}]");
        let connection = as_object(item, &path, DESC_CONNECTIONS)?;
        only_keys(
            connection,
            &["connection_id", "assign_membership_on_login", "show_as_button", "is_signup_enabled"],
            Some((&path, DESC_CONNECTIONS)),
        )?;
        let Some(id) = connection.get("connection_id") else {
            return Err(Invalid::at(&path, DESC_CONNECTIONS, "Missing required property: connection_id"));
        };
        string_within(id, &format!("{path}.connection_id"), DESC_CONNECTION_ID, 1, usize::MAX)?;
        optional_bool(connection, "assign_membership_on_login", &path, DESC_ASSIGN)?;
        optional_bool(connection, "show_as_button", &path, DESC_BUTTON)?;
        optional_bool(connection, "is_signup_enabled", &path, DESC_SIGNUP)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::header::RETRY_AFTER;

    use super::*;
    use crate::testing::{Api, client, json_of, rate_limited, start, start_signed_in, start_with, token_ttl};
    use crate::{ScriptedFault, SimulatorConfig};

    async fn lookup(api: &Api, name: &str) -> reqwest::Response {
        api.get(&format!("/api/v2/organizations/name/{name}")).await
    }

    #[tokio::test]
    async fn token_is_issued_and_wrong_credentials_are_refused() {
        let sim = start_with(PROVIDER, SimulatorConfig::default()).await;
        let base = sim.base_url(PROVIDER);
        let client = client();

        let ok = client
            .post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "orgprov-sim"),
                ("client_secret", "sim-secret"),
                ("audience", "https://tenant.example/api/v2/"),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(ok.status(), 200);
        let body = json_of(ok).await;
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 86_400);
        assert_eq!(body["scope"], TOKEN_SCOPE);
        assert!(body["access_token"].as_str().is_some_and(|t| t.len() >= 32));

        let wrong = client
            .post(format!("{base}/oauth/token"))
            .json(&json!({
                "grant_type": "client_credentials",
                "client_id": "orgprov-sim",
                "client_secret": "nope",
                "audience": format!("{base}/api/v2/"),
            }))
            .send()
            .await
            .expect("token request");
        assert_eq!(wrong.status(), 401);
        assert_eq!(json_of(wrong).await, json!({"error": "access_denied", "error_description": "Unauthorized"}));

        let grant = client
            .post(format!("{base}/oauth/token"))
            .json(&json!({"grant_type": "password", "client_id": "orgprov-sim", "client_secret": "sim-secret"}))
            .send()
            .await
            .expect("token request");
        assert_eq!(grant.status(), 403);
        assert_eq!(json_of(grant).await["error"], "unsupported_grant_type");

        let no_audience = client
            .post(format!("{base}/oauth/token"))
            .json(
                &json!({"grant_type": "client_credentials", "client_id": "orgprov-sim", "client_secret": "sim-secret"}),
            )
            .send()
            .await
            .expect("token request");
        assert_eq!(no_audience.status(), 403);

        let requests = sim.requests();
        assert_eq!(requests.len(), 4);
        assert!(requests[0].authorized && requests[0].path == "/auth0/oauth/token");
        assert_eq!(requests[1].status, 401);
        assert!(!requests[1].authorized);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn create_then_same_name_conflicts_and_lookup_finds_it() {
        let (sim, api) = start(PROVIDER).await;

        let payload = json!({
            "name": "acme-1",
            "display_name": "Acme One",
            "branding": {"logo_url": "https://acme.example/logo.png", "colors": {"primary": "#0059d6", "page_background": "#fff"}},
            "metadata": {"request_key": "rk-1"},
            "enabled_connections": [{"connection_id": "con_0123456789abcdef", "assign_membership_on_login": true}],
        });
        let created = api.create(payload.clone()).await;
        assert_eq!(created.status(), 201);
        for header in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "date"] {
            assert!(created.headers().contains_key(header), "missing {header}");
        }
        let org = json_of(created).await;
        let id = org["id"].as_str().expect("id").to_owned();
        assert!(id.starts_with("org_") && id.len() == 20);
        assert!(id[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        for key in ["name", "display_name", "branding", "metadata", "enabled_connections"] {
            assert_eq!(org[key], payload[key], "{key} echoed");
        }

        let again = api.create(json!({"name": "acme-1"})).await;
        assert_eq!(again.status(), 409);
        let body = json_of(again).await;
        assert_eq!(body["statusCode"], 409);
        assert_eq!(body["errorCode"], "organization_conflict");

        let found = lookup(&api, "acme-1").await;
        assert_eq!(found.status(), 200);
        let found = json_of(found).await;
        assert_eq!(found["id"], id.as_str());
        assert_eq!(found["metadata"]["request_key"], "rk-1");

        assert_eq!(api.get(&format!("/api/v2/organizations/{id}")).await.status(), 200);

        let missing = lookup(&api, "nobody").await;
        assert_eq!(missing.status(), 404);
        assert_eq!(
            json_of(missing).await,
            json!({"statusCode": 404, "error": "Not Found", "message": "No organization found by that name or id", "errorCode": "inexistent_organization"})
        );
        assert_eq!(sim.organizations("auth0").len(), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn invalid_payloads_are_refused_with_invalid_body() {
        let (sim, api) = start(PROVIDER).await;

        let long_name = "a".repeat(51);
        let many_metadata: Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!("v"))).collect();
        let cases = [
            (json!({"name": "Acme Corp"}), "name"),
            (json!({"name": long_name}), "name"),
            (json!({"name": ""}), "name"),
            (json!({"display_name": "x"}), "Missing required property: name"),
            (json!({"name": "ok", "tenant": "x"}), "Additional properties not allowed: tenant"),
            (json!({"name": "ok", "display_name": ""}), "display_name"),
            (json!({"name": "ok", "branding": {"colors": {"primary": "red"}}}), "branding.colors.primary"),
            (json!({"name": "ok", "branding": {"logo_url": "http://insecure.example/x.png"}}), "branding.logo_url"),
            (json!({"name": "ok", "metadata": {"n": 5}}), "metadata.n"),
            (json!({"name": "ok", "metadata": many_metadata}), "Too many properties"),
            (json!({"name": "ok", "enabled_connections": [{"assign_membership_on_login": true}]}), "connection_id"),
            (json!({"name": "ok", "enabled_connections": {"connection_id": "con_1"}}), "enabled_connections"),
            (json!(["name"]), "Expected type object but found type array"),
        ];
        for (payload, needle) in cases {
            let response = api.create(payload.clone()).await;
            assert_eq!(response.status(), 400, "payload {payload}");
            let body = json_of(response).await;
            assert_eq!(body["errorCode"], "invalid_body", "payload {payload}");
            let message = body["message"].as_str().expect("message");
            assert!(
                message.starts_with("Payload validation error: '") && message.contains(needle),
                "payload {payload}: {message}"
            );
        }
        assert_eq!(
            json_of(api.create(json!({"name": "Acme"})).await).await["message"],
            format!(
                "Payload validation error: 'String does not match pattern {NAME_PATTERN}: Acme' on property name (The name of this organization)."
            )
        );

        let not_json = api
            .request(reqwest::Method::POST, "/api/v2/organizations")
            .header(CONTENT_TYPE, "application/json")
            .body("{not json")
            .send()
            .await
            .expect("create request");
        assert_eq!(not_json.status(), 400);
        assert!(sim.organizations("auth0").is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn seed_sample_with_arrays_is_refused() {
        let (sim, api) = start(PROVIDER).await;

        // The vendor page's cURL sample wraps branding in an array; the real API refuses it.
        let response =
            api.create(json!({"name": "org-name", "branding": [{"logo_url": "https://x.example/l.png"}]})).await;
        assert_eq!(response.status(), 400);
        let body = json_of(response).await;
        assert_eq!(body["statusCode"], 400);
        assert_eq!(body["error"], "Bad Request");
        assert_eq!(body["errorCode"], "invalid_body");
        assert!(body["message"].as_str().is_some_and(
            |m| m.contains("Expected type object but found type array") && m.contains("on property branding")
        ));

        let metadata = api.create(json!({"name": "org-name", "metadata": [{"k": "v"}]})).await;
        assert_eq!(metadata.status(), 400);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_refuses_the_call_over_the_burst() {
        let (sim, api) = start_signed_in(PROVIDER, rate_limited(2.0, 2)).await;

        let first = api.create(json!({"name": "r1"})).await;
        assert_eq!(first.status(), 201);
        assert_eq!(first.headers()["x-ratelimit-limit"], "2");
        assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
        assert_eq!(lookup(&api, "r1").await.status(), 200);
        let third = api.create(json!({"name": "r3"})).await;
        assert_eq!(third.status(), 429);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after epoch").as_secs();
        let header = |name: &str| -> u64 { third.headers()[name].to_str().expect("ascii").parse().expect("number") };
        assert_eq!(header("x-ratelimit-limit"), 2);
        assert_eq!(header("x-ratelimit-remaining"), 0);
        let reset = header("x-ratelimit-reset");
        assert!(reset >= now && reset <= now + 3, "reset {reset} now {now}");
        assert!(third.headers().get(RETRY_AFTER).is_none());
        assert_eq!(
            json_of(third).await,
            json!({"statusCode": 429, "error": "Too Many Requests", "message": "Global limit has been reached", "errorCode": "too_many_requests"})
        );
        assert_eq!(sim.organizations("auth0").len(), 1);

        // Token calls are not charged to the management bucket.
        let _ = Api::sign_in(&sim, PROVIDER).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(api.create(json!({"name": "r4"})).await.status(), 201);

        // A scripted 429 reports the bucket empty, whatever its real state.
        sim.push_script(PROVIDER, vec![ScriptedFault::RateLimited { retry_after_secs: Some(7) }]);
        let limited = api.create(json!({"name": "r5"})).await;
        assert_eq!(limited.headers()[RETRY_AFTER], "7");
        assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn revoked_expired_and_missing_tokens_get_401() {
        let (sim, api) = start_signed_in(PROVIDER, token_ttl(Duration::from_secs(1))).await;
        assert_eq!(lookup(&api, "x").await.status(), 404);

        sim.revoke_tokens();
        let revoked = api.create(json!({"name": "x"})).await;
        assert_eq!(revoked.status(), 401);
        assert!(revoked.headers().contains_key("x-ratelimit-limit"));
        let message = "Expired token received for JSON Web Token validation";
        assert_eq!(
            json_of(revoked).await,
            json!({"statusCode": 401, "error": "Unauthorized", "message": message, "attributes": {"error": message}})
        );
        assert!(sim.organizations("auth0").is_empty());

        let fresh = Api::sign_in(&sim, PROVIDER).await;
        assert_eq!(api.create(json!({"name": "x"})).await.status(), 401);
        assert_eq!(fresh.create(json!({"name": "x"})).await.status(), 201);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let expired = lookup(&fresh, "x").await;
        assert_eq!(expired.status(), 401);
        assert_eq!(json_of(expired).await["message"], message);

        let lookup_x = api.http.get(format!("{}/api/v2/organizations/name/x", api.base));
        let invalid = lookup_x.try_clone().expect("clone").bearer_auth("not-a-token").send().await.expect("lookup");
        assert_eq!(json_of(invalid).await["message"], "Invalid token");
        assert_eq!(lookup_x.send().await.expect("lookup").status(), 401, "no token at all");

        let recorded: Vec<(u16, bool)> =
            sim.requests().iter().filter(|r| r.path.contains("/api/v2/")).map(|r| (r.status, r.authorized)).collect();
        assert_eq!(recorded[0], (404, true));
        assert_eq!(recorded[1], (401, false));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn seeded_organization_conflicts() {
        let (sim, api) = start(PROVIDER).await;

        sim.insert_organization("auth0", json!({"name": "taken", "display_name": "Someone Else"}));
        let response = api.create(json!({"name": "taken"})).await;
        assert_eq!(response.status(), 409);
        let found = json_of(lookup(&api, "taken").await).await;
        assert_eq!(found["display_name"], "Someone Else");
        assert!(found["id"].as_str().is_some_and(|id| id.starts_with("org_")));
        sim.shutdown().await;
    }
}
