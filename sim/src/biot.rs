//! Simulated BioT environment: the service-user login (`POST /ums/v2/services/accessToken`)
//! and the Organization Service calls the worker needs — create from a template
//! (`POST /organization/v1/organizations/templates/{templateName}`), search
//! (`GET /organization/v1/organizations?searchRequest=…`) and get by id — with BioT's error body
//! `{code, message, serviceName, traceId, environment, details}` (PROVIDERS.md §4, seed 003).
//!
//! Choices where BioT's documents leave room:
//! - Templates: every template name exists except those starting with `missing`, which answer
//!   404 `TEMPLATE_NOT_FOUND_BY_NAME`; so tests need no configuration to get either. Each
//!   template defines every custom attribute (top-level keys without the `_` prefix) as a string;
//!   unknown `_` built-ins answer 400 `ATTRIBUTE_NOT_VALID_FOR_TEMPLATE`.
//! - Uniqueness: the primary administrator's `_email` is checked before `_name`, as BioT creates
//!   the admin user with the organization; a retried create of ours therefore meets
//!   409 `EMAIL_ALREADY_EXIST` first, the case the provider must look up by name.
//! - Tokens carry an absolute `accessTokenExpiration` (ISO-8601, the configured TTL away);
//!   expired or revoked tokens answer 401 `TOKEN_NOT_VALID`.
//! - Faults: a lost response stores and answers 504 `GATEWAY_TIMEOUT` (BioT's documented
//!   ambiguous answer); a late commit answers the same 504 and stores `delay_ms` later. BioT
//!   documents no 429: the tenant bucket only limits when `Faults.rate_limit` is set, and then
//!   (or for a scripted `RateLimited`) answers 429 `TOO_MANY_REQUESTS` in BioT's body.
//! - Search supports the `eq` and `in` operators on any top-level or dotted attribute, `page`
//!   (from 0) and `limit` (default 100), newest first like BioT's default `_creationTime` DESC.
//!
//! This module is BioT's [`SimulatedProvider`]: its wire specifics only. Admission and the
//! faults of a create are shared (`crate::provider`).

// Validation helpers return the finished HTTP refusal as their error; boxing it would buy
// nothing on a test server and cost readability.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use crate::provider::{CreateCall, Served, SimulatedProvider, lookup};
use crate::state::{SimState, TokenStatus};
use crate::wire::{authorized, bearer_token};

/// Path prefix and state key of this provider.
const PROVIDER: &str = "biot";
const DESCRIPTION_MAX: usize = 5000;
/// Built-in organization attributes a create may carry (seed 003).
const BUILT_INS: &[&str] =
    &["_name", "_description", "_headquarters", "_locale", "_phone", "_primaryAdministrator", "_timezone"];

/// A simulated BioT environment.
#[derive(Default)]
pub(crate) struct Biot;

impl SimulatedProvider for Biot {
    const NAME: &'static str = PROVIDER;
    /// The gateway answers 504 while the service is still at work.
    const LATE_COMMIT_STATUS: u16 = 504;
    type Draft = Map<String, Value>;
    type Charge = bool;

    fn routes(create: MethodRouter<Arc<Served<Self>>>) -> Router<Arc<Served<Self>>> {
        Router::new()
            .route("/ums/v2/services/accessToken", post(issue_token))
            .route("/organization/v1/organizations/templates/{template_name}", create)
            .route("/organization/v1/organizations", get(search_organizations))
            .route("/organization/v1/organizations/{id}", lookup(get_organization))
            .fallback(api_not_found)
    }

    /// An `_id` and a creation time.
    fn seed_defaults() -> Map<String, Value> {
        Map::from_iter([
            ("_id".to_owned(), json!(uuid::Uuid::new_v4().to_string())),
            ("_creationTime".to_owned(), json!(now_iso())),
        ])
    }

    fn authenticate(&self, sim: &SimState, headers: &HeaderMap) -> Result<(), Response> {
        match bearer_token(headers).map(|token| sim.check_token(PROVIDER, token)) {
            Ok(TokenStatus::Valid) => Ok(()),
            _ => Err(token_not_valid()),
        }
    }

    /// BioT documents no 429: the tenant bucket only limits when `Faults.rate_limit` is set.
    fn charge(&self, sim: &SimState) -> bool {
        sim.take_rate_limit(PROVIDER).allowed
    }

    fn too_many_requests(&self) -> Response {
        org_error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "Too many requests", json!({}))
    }

    fn validate(&self, call: &CreateCall) -> Result<Map<String, Value>, Response> {
        prepare(call.param("template_name"), &call.headers, &call.body)
    }

    fn store(&self, sim: &SimState, org: Map<String, Value>) -> Result<Value, Response> {
        store_if_free(sim, org)
    }

    fn error_for_status(&self, status: u16) -> Response {
        error_for_status(status)
    }
}

fn now_iso() -> String {
    time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// BioT's error shape, the same for every service.
fn biot_error(status: StatusCode, service: &str, code: &str, message: &str, details: Value) -> Response {
    let trace: String = std::iter::repeat_with(|| fastrand::char('0'..='9')).take(32).collect();
    let body = json!({
        "code": code,
        "message": message,
        "serviceName": service,
        "traceId": trace,
        "environment": "orgprov-sim",
        "details": details,
    });
    (status, Json(body)).into_response()
}

fn org_error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    biot_error(status, "organization", code, message, details)
}

fn bad_request(code: &str, message: &str, details: Value) -> Response {
    org_error(StatusCode::BAD_REQUEST, code, message, details)
}

fn mandatory(attribute: &str) -> Response {
    bad_request(
        "ATTRIBUTE_IS_MANDATORY",
        &format!("Attribute {attribute} is mandatory"),
        json!({"attributeName": attribute}),
    )
}

fn type_mismatch(attribute: &str, value: &Value, expected: &str) -> Response {
    bad_request(
        "ATTRIBUTE_VALUE_TYPE_MISMATCH",
        &format!("Attribute {attribute} must be of type {expected}"),
        json!({"attributeName": attribute, "value": value, "type": expected}),
    )
}

fn regex_failed(attribute: &str, value: &str, regex: &str) -> Response {
    bad_request(
        "ATTRIBUTE_REGEX_VALIDATION_FAILED",
        &format!("Attribute {attribute} value does not match {regex}"),
        json!({"attributeName": attribute, "value": value, "regex": regex}),
    )
}

fn gateway_timeout() -> Response {
    org_error(StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT", "Gateway timeout", json!({}))
}

fn token_not_valid() -> Response {
    org_error(StatusCode::UNAUTHORIZED, "TOKEN_NOT_VALID", "Token is not valid", json!({}))
}

/// The body BioT would send with `status`: 504 `GATEWAY_TIMEOUT` is its documented ambiguous
/// answer, for lost responses and late commits.
fn error_for_status(status: u16) -> Response {
    let Ok(code) = StatusCode::from_u16(status) else {
        return org_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            "Internal server error",
            json!({}),
        );
    };
    match status {
        400 => mandatory("_name"),
        401 => token_not_valid(),
        403 => org_error(code, "ACCESS_DENIED", "Access denied", json!({})),
        404 => org_error(code, "TEMPLATE_NOT_FOUND_BY_NAME", "Template not found", json!({"templateName": "unknown"})),
        409 => org_error(code, "ORGANIZATION_ALREADY_EXIST", "Organization already exists", json!({"name": "unknown"})),
        500 => org_error(code, "INTERNAL_SERVER_ERROR", "Internal server error", json!({})),
        503 => org_error(code, "SERVICE_UNAVAILABLE", "Service unavailable", json!({})),
        504 => gateway_timeout(),
        _ => org_error(code, "ERROR", code.canonical_reason().unwrap_or("Error"), json!({})),
    }
}

fn not_found() -> Response {
    org_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not Found", json!({}))
}

async fn api_not_found() -> Response {
    not_found()
}

// ---------------------------------------------------------------------------------------------
// UMS: service-user login
// ---------------------------------------------------------------------------------------------

async fn issue_token(State(served): State<Arc<Served<Biot>>>, body: Bytes) -> Response {
    let state = &served.sim;
    let ums = |status, code: &str, message: &str| biot_error(status, "ums", code, message, json!({}));
    let Ok(Value::Object(login)) = serde_json::from_slice::<Value>(&body) else {
        return authorized(ums(StatusCode::BAD_REQUEST, "BAD_REQUEST", "Request body must be a JSON object"), false);
    };
    let field = |name: &str| login.get(name).and_then(Value::as_str);
    let (Some(id), Some(secret)) = (field("id"), field("secretKey")) else {
        return authorized(
            ums(StatusCode::BAD_REQUEST, "ATTRIBUTE_IS_MANDATORY", "id and secretKey are mandatory"),
            false,
        );
    };
    if id != state.client_id || secret != state.client_secret {
        return authorized(ums(StatusCode::FORBIDDEN, "LOGIN_FAILED", "Login failed"), false);
    }
    let token = state.issue_token(PROVIDER);
    let ttl = time::Duration::try_from(state.token_ttl).unwrap_or(time::Duration::DAY);
    let expiration = (time::OffsetDateTime::now_utc() + ttl).format(&Rfc3339).unwrap_or_default();
    let body = json!({ "accessToken": token, "accessTokenExpiration": expiration });
    authorized((StatusCode::OK, Json(body)).into_response(), true)
}

// ---------------------------------------------------------------------------------------------
// Organization Service: create
// ---------------------------------------------------------------------------------------------

/// Stores the organization with its id unless a uniqueness rule refuses it.
fn store_if_free(state: &SimState, org: Map<String, Value>) -> Result<Value, Response> {
    let email = org
        .get("_primaryAdministrator")
        .and_then(|a| a.get("_email"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let name = org.get("_name").cloned();
    state
        .with_provider(PROVIDER, |p| {
            let admin_email = |o: &Value| {
                o.pointer("/_primaryAdministrator/_email").and_then(Value::as_str).map(str::to_ascii_lowercase)
            };
            if email.is_some() && p.orgs.iter().any(|o| admin_email(o) == email) {
                let email = email.clone().unwrap_or_default();
                return Err(org_error(
                    StatusCode::CONFLICT,
                    "EMAIL_ALREADY_EXIST",
                    &format!("User with email {email} already exists"),
                    json!({"email": email}),
                ));
            }
            if name.as_ref().and_then(Value::as_str).is_some_and(|n| p.orgs.has("_name", n)) {
                let name = name.as_ref().and_then(Value::as_str).unwrap_or_default();
                return Err(org_error(
                    StatusCode::CONFLICT,
                    "ORGANIZATION_ALREADY_EXIST",
                    &format!("Organization with name {name} already exists"),
                    json!({"name": name}),
                ));
            }
            let stored = Value::Object(org);
            p.orgs.push(stored.clone());
            Ok(stored)
        })
        .unwrap_or_else(|| Err(not_found()))
}

/// Validates a create and returns the organization as BioT would store and return it.
fn prepare(template_name: &str, headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Response> {
    if template_name.starts_with("missing") {
        return Err(org_error(
            StatusCode::NOT_FOUND,
            "TEMPLATE_NOT_FOUND_BY_NAME",
            &format!("Template with name {template_name} not found"),
            json!({"templateName": template_name}),
        ));
    }
    if let Some(mode) = headers.get("x-execution-mode") {
        let mode = mode.to_str().unwrap_or("").to_ascii_lowercase();
        if mode != "sync" && mode != "async" {
            return Err(bad_request("BAD_REQUEST", "x-execution-mode must be sync or async", json!({"value": mode})));
        }
    }
    if let Some(content_type) = headers.get(CONTENT_TYPE)
        && !content_type.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("json"))
    {
        return Err(org_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "BAD_REQUEST", "Unsupported Media Type", json!({})));
    }
    let Ok(Value::Object(given)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad_request("BAD_REQUEST", "Request body must be a JSON object", json!({})));
    };
    validate(&given)?;

    let now = now_iso();
    let mut org = Map::new();
    org.insert("_id".into(), json!(uuid::Uuid::new_v4().to_string()));
    for (key, value) in &given {
        org.insert(key.clone(), value.clone());
    }
    if let Some(Value::Object(admin)) = org.get_mut("_primaryAdministrator") {
        admin.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    // A template's id is stable per name, as it would be for a configured BioT template.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(template_name.as_bytes());
    let mut template_id = [0u8; 16];
    template_id.copy_from_slice(&digest[..16]);
    org.insert(
        "_template".into(),
        json!({"id": uuid::Builder::from_random_bytes(template_id).into_uuid().to_string(),
               "name": template_name, "displayName": template_name}),
    );
    org.insert("_creationTime".into(), json!(now));
    org.insert("_lastModifiedTime".into(), json!(now));
    Ok(org)
}

fn text_at<'a>(object: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>, Response> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(type_mismatch(path, other, "STRING")),
    }
}

fn required_text<'a>(object: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, Response> {
    match text_at(object, key, path)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(mandatory(path)),
    }
}

fn object_at<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Response> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(type_mismatch(path, other, "OBJECT")),
    }
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| (2..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

fn is_locale(s: &str) -> bool {
    s.split_once('-').is_some_and(|(l, c)| {
        (2..=3).contains(&l.len())
            && l.chars().all(|x| x.is_ascii_lowercase())
            && c.len() == 2
            && c.chars().all(|x| x.is_ascii_lowercase())
    })
}

fn is_country(s: &str) -> bool {
    s.len() == 2 && s.chars().all(|c| c.is_ascii_uppercase())
}

fn validate(org: &Map<String, Value>) -> Result<(), Response> {
    if let Some(unknown) = org.keys().find(|k| k.starts_with('_') && !BUILT_INS.contains(&k.as_str())) {
        return Err(bad_request(
            "ATTRIBUTE_NOT_VALID_FOR_TEMPLATE",
            &format!("Attribute {unknown} is not valid for the template"),
            json!({"attributeName": unknown}),
        ));
    }
    required_text(org, "_name", "_name")?;
    if let Some(d) = text_at(org, "_description", "_description")?
        && d.chars().count() > DESCRIPTION_MAX
    {
        return Err(bad_request(
            "VALIDATION_MAX_ALLOWED_VALUE",
            "_description is too long",
            json!({"attributeName": "_description", "maxValue": DESCRIPTION_MAX}),
        ));
    }
    if let Some(hq) = object_at(org, "_headquarters", "_headquarters")? {
        let code = required_text(hq, "countryCode", "_headquarters.countryCode")?;
        if !is_country(code) {
            return Err(regex_failed("_headquarters.countryCode", code, "^[A-Z]{2}$"));
        }
    }
    if let Some(locale) = text_at(org, "_locale", "_locale")?
        && !is_locale(locale)
    {
        return Err(bad_request("VALIDATION_LOCALE_NOT_VALID", "Locale is not valid", json!({"value": locale})));
    }
    if let Some(zone) = text_at(org, "_timezone", "_timezone")?
        && !(zone == "UTC" || zone == "GMT" || zone.contains('/'))
    {
        return Err(bad_request("VALIDATION_TIMEZONE_NOT_VALID", "Timezone is not valid", json!({"value": zone})));
    }
    if let Some(phone) = text_at(org, "_phone", "_phone")?
        && !is_e164(phone)
    {
        return Err(regex_failed("_phone", phone, "^\\+[1-9]\\d{1,14}$"));
    }
    let Some(admin) = object_at(org, "_primaryAdministrator", "_primaryAdministrator")? else {
        return Err(mandatory("_primaryAdministrator"));
    };
    let Some(name) = object_at(admin, "_name", "_primaryAdministrator._name")? else {
        return Err(mandatory("_primaryAdministrator._name"));
    };
    required_text(name, "firstName", "_primaryAdministrator._name.firstName")?;
    required_text(name, "lastName", "_primaryAdministrator._name.lastName")?;
    let email = required_text(admin, "_email", "_primaryAdministrator._email")?;
    let email_ok = email.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !email.contains(' '));
    if !email_ok {
        return Err(regex_failed("_primaryAdministrator._email", email, "RFC-5322"));
    }
    required_text(admin, "_employeeId", "_primaryAdministrator._employeeId")?;
    if let Some(phone) = text_at(admin, "_phone", "_primaryAdministrator._phone")?
        && !is_e164(phone)
    {
        return Err(regex_failed("_primaryAdministrator._phone", phone, "^\\+[1-9]\\d{1,14}$"));
    }
    if let Some(locale) = text_at(admin, "_locale", "_primaryAdministrator._locale")?
        && !is_locale(locale)
    {
        return Err(bad_request("VALIDATION_LOCALE_NOT_VALID", "Locale is not valid", json!({"value": locale})));
    }
    // The simulated template defines every custom attribute as a string.
    for (key, value) in org.iter().filter(|(k, _)| !k.starts_with('_')) {
        if !(value.is_string() || value.is_null()) {
            return Err(type_mismatch(key, value, "STRING"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Organization Service: search and get
// ---------------------------------------------------------------------------------------------

/// One filter condition the simulator understands.
fn matches(org: &Value, attribute: &str, condition: &Map<String, Value>) -> Result<bool, String> {
    let pointer = format!("/{}", attribute.replace('.', "/"));
    let actual = org.pointer(&pointer);
    for (operator, wanted) in condition {
        let ok = match operator.as_str() {
            "eq" => actual == Some(wanted),
            "in" => wanted.as_array().ok_or("`in` needs an array")?.iter().any(|w| actual == Some(w)),
            other => return Err(format!("operator {other:?} is not supported by the simulator (eq, in)")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn search_organizations(
    State(served): State<Arc<Served<Biot>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    served.call(&headers, |sim| search(sim, &query)).await
}

fn search(sim: &SimState, query: &HashMap<String, String>) -> Response {
    let search: Value = match query.get("searchRequest") {
        None => json!({}),
        Some(text) => match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => return bad_request("BAD_REQUEST", "searchRequest is not a JSON object", json!({})),
        },
    };
    let limit = search.get("limit").and_then(Value::as_u64).unwrap_or(100) as usize;
    let page = search.get("page").and_then(Value::as_u64).unwrap_or(0) as usize;
    let filter = search.get("filter").and_then(Value::as_object).cloned().unwrap_or_default();
    let orgs = sim.with_provider(PROVIDER, |p| p.orgs.to_vec()).unwrap_or_default();
    let mut hits = Vec::new();
    // Newest first: BioT sorts by _creationTime DESC unless told otherwise.
    for org in orgs.iter().rev() {
        let mut keep = true;
        for (attribute, condition) in &filter {
            let Some(condition) = condition.as_object() else {
                return bad_request("BAD_REQUEST", "filter conditions must be objects", json!({}));
            };
            match matches(org, attribute, condition) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(message) => return bad_request("BAD_REQUEST", &message, json!({})),
            }
        }
        if keep {
            hits.push(org.clone());
        }
    }
    let total = hits.len();
    let data: Vec<Value> = hits.into_iter().skip(page.saturating_mul(limit)).take(limit).collect();
    let body = json!({
        "data": data,
        "metadata": { "page": { "totalResults": total, "page": page, "limit": limit }, "filter": filter, "sort": [] },
    });
    (StatusCode::OK, Json(body)).into_response()
}

fn get_organization(sim: &SimState, id: &str) -> Response {
    match sim.find_organization(PROVIDER, "_id", id) {
        Some(org) => (StatusCode::OK, Json(org)).into_response(),
        None => org_error(StatusCode::NOT_FOUND, "ORGANIZATION_NOT_FOUND", "Organization not found", json!({"id": id})),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::header::DATE;

    use super::*;
    use crate::SimulatorConfig;
    use crate::testing::{Api, client, json_of, rate_limited, start_signed_in, start_with, token_ttl};

    fn org(name: &str, email: &str) -> Value {
        json!({"_name": name, "_primaryAdministrator": {"_name": {"firstName": "A", "lastName": "B"},
               "_email": email, "_employeeId": email}, "orgprov_request_id": "r1"})
    }

    async fn create(api: &Api, template: &str, body: Value) -> reqwest::Response {
        let path = format!("/organization/v1/organizations/templates/{template}");
        let request = api.request(reqwest::Method::POST, &path).header("x-execution-mode", "sync");
        request.json(&body).send().await.expect("create")
    }

    async fn search(api: &Api, name: &str) -> Value {
        let request = json!({"filter": {"_name": {"eq": name}}, "limit": 1}).to_string();
        let path = format!("/organization/v1/organizations?searchRequest={}", urlencoding::encode(&request));
        json_of(api.get(&path).await).await
    }

    #[tokio::test]
    async fn login_answers_an_absolute_expiry_and_refuses_wrong_secrets() {
        let sim = start_with(PROVIDER, SimulatorConfig::default()).await;
        let login = |secret: &'static str| {
            client()
                .post(format!("{}/ums/v2/services/accessToken", sim.base_url(PROVIDER)))
                .json(&json!({"id": "orgprov-sim", "secretKey": secret}))
                .send()
        };
        let wrong = login("nope").await.expect("login");
        assert_eq!(wrong.status(), 403);
        assert_eq!(json_of(wrong).await["code"], "LOGIN_FAILED");
        let ok = login("sim-secret").await.expect("login");
        assert_eq!(ok.status(), 200);
        assert!(ok.headers().contains_key(DATE));
        let body = json_of(ok).await;
        let expiration = body["accessTokenExpiration"].as_str().expect("expiration");
        assert!(time::OffsetDateTime::parse(expiration, &Rfc3339).is_ok(), "{expiration}");
        assert!(body["accessToken"].as_str().is_some_and(|t| !t.is_empty()));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn create_search_and_uniqueness() {
        let (sim, api) = start_signed_in(PROVIDER, SimulatorConfig::default()).await;
        let created = create(&api, "Clinic", org("Acme", "a@example.com")).await;
        assert_eq!(created.status(), 201);
        let created = json_of(created).await;
        assert!(created["_id"].as_str().is_some_and(|id| id.len() == 36));
        assert_eq!(created["_template"]["name"], "Clinic");
        assert_eq!(created["orgprov_request_id"], "r1");

        let same_email = create(&api, "Clinic", org("Other", "A@example.com")).await;
        assert_eq!(same_email.status(), 409);
        assert_eq!(json_of(same_email).await["code"], "EMAIL_ALREADY_EXIST");
        let same_name = create(&api, "Clinic", org("Acme", "b@example.com")).await;
        assert_eq!(same_name.status(), 409);
        let body = json_of(same_name).await;
        assert_eq!(body["code"], "ORGANIZATION_ALREADY_EXIST");
        for key in ["message", "serviceName", "traceId", "environment", "details"] {
            assert!(body.get(key).is_some(), "{key} missing from {body}");
        }
        let missing = create(&api, "missing-template", org("New", "n@example.com")).await;
        assert_eq!(missing.status(), 404);
        assert_eq!(json_of(missing).await["code"], "TEMPLATE_NOT_FOUND_BY_NAME");

        let found = search(&api, "Acme").await;
        assert_eq!(found["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(found["data"][0]["_id"], created["_id"]);
        assert_eq!(found["metadata"]["page"]["totalResults"], 1);
        assert_eq!(search(&api, "Nobody").await["data"], json!([]));
        let id = created["_id"].as_str().expect("id");
        assert_eq!(json_of(api.get(&format!("/organization/v1/organizations/{id}")).await).await, created);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn validation_errors_use_biot_codes() {
        let (sim, api) = start_signed_in(PROVIDER, SimulatorConfig::default()).await;
        let with = |key: &str, value: Value| {
            let mut body = org("X", "x@example.com");
            body[key] = value;
            body
        };
        let cases = [
            (json!({"_name": "X"}), "ATTRIBUTE_IS_MANDATORY"),
            (with("_locale", json!("EN")), "VALIDATION_LOCALE_NOT_VALID"),
            (with("seats", json!(3)), "ATTRIBUTE_VALUE_TYPE_MISMATCH"),
            (with("_branding", json!({})), "ATTRIBUTE_NOT_VALID_FOR_TEMPLATE"),
        ];
        for (body, code) in cases {
            let response = create(&api, "Clinic", body.clone()).await;
            assert_eq!(response.status(), 400, "{body}");
            assert_eq!(json_of(response).await["code"], code, "{body}");
        }
        assert!(sim.organizations(PROVIDER).is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn expired_tokens_are_not_valid() {
        let (sim, api) = start_signed_in(PROVIDER, token_ttl(Duration::from_millis(300))).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let expired = create(&api, "Clinic", org("X", "x@example.com")).await;
        assert_eq!(expired.status(), 401);
        assert_eq!(json_of(expired).await["code"], "TOKEN_NOT_VALID");
        assert!(sim.organizations(PROVIDER).is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_only_when_configured() {
        let (sim, api) = start_signed_in(PROVIDER, rate_limited(0.5, 1)).await;
        assert_eq!(search(&api, "x").await["data"], json!([]));
        let limited = create(&api, "Clinic", org("X", "x@example.com")).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(json_of(limited).await["code"], "TOO_MANY_REQUESTS");
        sim.shutdown().await;
    }
}
