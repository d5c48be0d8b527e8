//! SecureAuth Connect (the System API of the former Cloudentity ACP): organizations.
//!
//! - Token: `POST {token_url}` (default `{base_url}/{tenant}/system/oauth2/token`), form-encoded
//!   client credentials with the configurable `scope` (default `manage_organizations`). The
//!   vendor page renders `expires_in` as a string (`"3600"`), the OpenAPI spec as an integer;
//!   both are read. Tokens are cached, refreshed before expiry, and once on a 401.
//! - Create: `POST {base_url}/api/system/{tenant}/organizations` (201, or 200 per the vendor
//!   page). SecureAuth lets the client choose the organization `id`, so we send a
//!   deterministic one: the first 32 hex characters (128 bits) of SHA-256 over
//!   `target name + "\0" + request_id` ([`organization_id`]). The target name is part of it
//!   so two targets pointing at one tenant never fight over an id. That id is the natural key.
//! - Ownership: the org must be found at our id *and* carry our request_id in
//!   `metadata.payload.orgprov_request_id` (business attributes live under `payload`; the
//!   vendor page's "recommended" example that puts them at the top of `metadata` is wrong).
//!   Lookup: `GET /api/system/{tenant}/organizations/{id}` (404 = absent).
//! - 409 is ambiguous on this API: it is answered for an existing `id` *and* for an existing
//!   `name`. The worker answers `Created::Conflict` with a lookup by natural key, and a lookup
//!   by id that finds nothing would make it create again, forever. So on a 409 `create` looks
//!   our id up itself: an organization there → `Created::Conflict` (the worker's lookup then
//!   adopts it or reports it as someone else's); nothing there → the *name* is taken by
//!   another organization, a permanent `conflict` naming the name.
//! - Template settings (`[settings.secureauth]`): `template_id` (the organization template to
//!   inherit from; the reason to use this API) and `authentication_mechanisms` (each one of
//!   `totp password otp email_otp sms_otp webauthn`). Other keys are refused.
//! - Limits checked before any call: `name` required and URL-safe (`A-Z a-z 0-9 - . _ ~`, as
//!   the vendor page asks for "URL-safe" names); `color` hex (`#rgb`/`#rrggbb`); domains look
//!   like host names; `parent_id`/`template_id` non-empty. SecureAuth publishes no length
//!   limits, so none are invented here. The spec's `display_name`, `email`, logo and page
//!   background have no field in `CreateOrganizationRequest` and are not sent.
//! - Errors: `{status_code, error, error_code, details}`. 400/422 and 404 (unknown template or
//!   parent) → `rejected`; 401 → refresh once, then `unauthorized`; 403 → `forbidden`; 429 →
//!   retry after `Retry-After`; 5xx and timeouts are ambiguous. Every `/api/system` call counts
//!   toward the target's rate limit; token calls do not.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::token::{TokenCache, expires_in};
use super::{CallError, Created, ErrorClass, Lookup, Provider, ProviderKind, Target, TargetSettings};
use crate::config::KeyError;
use crate::contract::{ErrorCode, RequestId};
use crate::delivery::{Delivery, Response};
use crate::template::OrgSpec;

pub const TAG: &str = "orgprov_request_id";
pub const DEFAULT_SCOPE: &str = "manage_organizations";
const SETTINGS: &[&str] = &["template_id", "authentication_mechanisms"];
/// The documented values of `authentication_mechanisms` (PROVIDERS.md §1).
pub const MECHANISMS: &[&str] = &["totp", "password", "otp", "email_otp", "sms_otp", "webauthn"];

/// The keys of a SecureAuth target besides those of every target.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The tenant id, in every path (`/api/system/{tenant}/...`); required, no default.
    pub tenant: String,
    /// OAuth scope of the token; default `manage_organizations`.
    pub scope: String,
    /// Token endpoint; default `{base_url}/{tenant}/system/oauth2/token`.
    pub token_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { tenant: String::new(), scope: DEFAULT_SCOPE.into(), token_url: None }
    }
}

impl Settings {
    /// SecureAuth needs a URL-safe tenant id (it is in every path) and the service client's id.
    pub fn validate(&self, target: &TargetSettings) -> Result<(), KeyError> {
        if self.tenant.is_empty() {
            return Err(KeyError::new(
                "tenant",
                "SecureAuth needs the tenant id (the first label of https://{tenant}.{region}.connect.secureauth.com)",
            ));
        }
        if !is_url_safe(&self.tenant) {
            return Err(KeyError::new(
                "tenant",
                format!("{:?} is not a SecureAuth tenant id (letters, digits, '-', '.', '_', '~')", self.tenant),
            ));
        }
        target.require_client_id("SecureAuth needs the System workspace service client's id")?;
        if self.scope.is_empty() {
            return Err(KeyError::new("scope", format!("must not be empty (default: {DEFAULT_SCOPE})")));
        }
        Ok(())
    }
}

/// The deterministic organization id of `request_id` on `target`: hex SHA-256 of
/// `target + "\0" + request_id`, truncated to 32 characters. The NUL separator keeps
/// (`"a"`, `"bc"`) and (`"ab"`, `"c"`) apart.
pub fn organization_id(target: &str, request_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(target.as_bytes());
    hasher.update([0u8]);
    hasher.update(request_id.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

pub struct SecureAuth {
    target: String,
    tenant: String,
    organizations_url: String,
    token_url: String,
    scope: String,
    client_id: String,
    client_secret: SecretString,
    delivery: Arc<Delivery>,
    tokens: TokenCache,
}

impl SecureAuth {
    pub fn new(target: &Target, settings: &Settings, delivery: Arc<Delivery>) -> SecureAuth {
        // `Settings::validate` guarantees a URL-safe tenant, so it needs no encoding in paths.
        let (tenant, base) = (&settings.tenant, &target.base_url);
        SecureAuth {
            target: target.name.clone(),
            organizations_url: format!("{base}/api/system/{tenant}/organizations"),
            token_url: settings.token_url.clone().unwrap_or_else(|| format!("{base}/{tenant}/system/oauth2/token")),
            scope: settings.scope.clone(),
            tenant: tenant.clone(),
            client_id: target.client_id.clone(),
            client_secret: target.client_secret.clone(),
            delivery,
            tokens: TokenCache::default(),
        }
    }

    async fn fetch_token(&self) -> Result<(SecretString, Duration), CallError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        let request = self.delivery.client().post(&self.token_url).form(&form);
        let response = self
            .delivery
            .send_unlimited(request)
            .await
            .map_err(|e| CallError::from_send(e, "token request").for_lookup())?;
        if response.status != 200 {
            // A scope the client was not granted is a permission problem.
            let invalid_scope = response.json().is_some_and(|v| v.get("error") == Some(&json!("invalid_scope")));
            let message = format!("token endpoint answered {}: {}", response.status, error_message(&response));
            return Err(CallError::token_refused(&response, message, response.status == 403 || invalid_scope));
        }
        let (token, lifetime) =
            response.json().as_ref().and_then(parse_token).ok_or_else(|| {
                CallError::new(ErrorClass::Retryable, Some(200), "token response has no access_token")
            })?;
        Ok((SecretString::from(token), lifetime))
    }

    /// Sends an authorized System API call; a 401 refreshes the token once and resends.
    async fn call(&self, build: impl Fn(&str) -> reqwest::RequestBuilder, what: &str) -> Result<Response, CallError> {
        self.tokens.send_authorized(&self.delivery, || self.fetch_token(), build, what).await
    }

    fn classify(&self, response: &Response, what: &str) -> CallError {
        let mut e = CallError::from_status(
            response,
            format!("{what}: SecureAuth answered {}: {}", response.status, error_message(response)),
        );
        e.details = error_details(response);
        e
    }

    /// `GET .../organizations/{id}`: the organization, or `None` on 404.
    async fn fetch(&self, id: &str) -> Result<Option<Value>, CallError> {
        let url = format!("{}/{}", self.organizations_url, urlencoding::encode(id));
        let what = "look up organization";
        let response = self
            .call(|auth| self.delivery.client().get(&url).header("authorization", auth), what)
            .await
            .map_err(CallError::for_lookup)?;
        match response.status {
            200 => match response.json() {
                Some(v @ Value::Object(_)) => Ok(Some(v)),
                _ => {
                    Err(CallError::new(ErrorClass::Retryable, Some(200), "SecureAuth lookup answered 200 without JSON"))
                }
            },
            404 => Ok(None),
            _ => Err(self.classify(&response, what).for_lookup()),
        }
    }

    /// A 409: is our id taken (reconcile) or only the name (someone else's organization)?
    async fn resolve_conflict(&self, body: &Value, response: &Response) -> Result<Created, CallError> {
        let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
        if self.fetch(id).await?.is_some() {
            return Ok(Created::Conflict { status: 409 });
        }
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
        let mut e = CallError::new(
            ErrorClass::Permanent(ErrorCode::Conflict),
            Some(409),
            format!(
                "organization name {name:?} is already taken in SecureAuth tenant {:?} by another organization \
                 (none exists at orgprov's id {id}); SecureAuth answered: {}",
                self.tenant,
                error_message(response)
            ),
        );
        let mut details = error_details(response).unwrap_or_else(|| json!({}));
        if let Some(d) = details.as_object_mut() {
            d.insert("name".into(), json!(name));
            d.insert("organization_id".into(), json!(id));
        }
        e.details = Some(details);
        Err(e)
    }
}

/// Reads a token response: `access_token` and `expires_in` (number or numeric string; an hour
/// when absent, as in the vendor's example).
fn parse_token(v: &Value) -> Option<(String, Duration)> {
    let token = v.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty())?;
    Some((token.to_owned(), expires_in(v.get("expires_in")).unwrap_or(Duration::from_secs(3600))))
}

/// The id of a created organization (`Org.id`).
fn created_id(v: &Value) -> Option<&str> {
    v.get("id").and_then(Value::as_str).filter(|id| !id.is_empty())
}

/// Whether a fetched organization carries our tag.
fn ownership(org: &Value, id: &str, request_id: &RequestId) -> Lookup {
    let id = created_id(org).unwrap_or(id).to_owned();
    let tag = org.pointer(&format!("/metadata/payload/{TAG}")).and_then(Value::as_str);
    if tag == Some(request_id.as_str()) { Lookup::Ours { id } } else { Lookup::NotOurs { id } }
}

/// SecureAuth error bodies: `{status_code, error, error_code, details}`; token errors are
/// OAuth's `{error, error_description}`.
fn error_message(response: &Response) -> String {
    match response.json() {
        Some(v) => v
            .get("error_description")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("error_code"))
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_owned(),
        None => String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned(),
    }
}

fn error_details(response: &Response) -> Option<Value> {
    let v = response.json()?;
    let mut details = Map::new();
    for key in ["error_code", "details"] {
        if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
            details.insert(key.into(), x.clone());
        }
    }
    (!details.is_empty()).then_some(Value::Object(details))
}

/// RFC 3986 unreserved characters: safe in a URL path segment without encoding.
fn is_url_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
}

fn is_color(s: &str) -> bool {
    let hex = s.strip_prefix('#').unwrap_or("");
    (hex.len() == 3 || hex.len() == 6) && hex.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_domain(s: &str) -> bool {
    s.contains('.')
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn non_empty_setting<'a>(
    settings: &'a std::collections::BTreeMap<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match settings.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(format!("template setting secureauth.{key} must be a non-empty string")),
    }
}

impl Provider for SecureAuth {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SecureAuth
    }

    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, String> {
        let name = &spec.name;
        if !is_url_safe(name) {
            return Err(format!(
                "organization.name {name:?} breaks SecureAuth's rules: a URL-safe name of letters, digits, \
                 '-', '.', '_' and '~' is required"
            ));
        }
        if let Some(unknown) = spec.settings.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(format!(
                "template setting secureauth.{unknown} is not supported (known: {})",
                SETTINGS.join(", ")
            ));
        }
        let mut body = Map::new();
        body.insert("id".into(), json!(organization_id(&self.target, request_id.as_str())));
        body.insert("name".into(), json!(name));
        if let Some(d) = &spec.description {
            body.insert("description".into(), json!(d));
        }
        if let Some(p) = &spec.parent_id {
            if p.is_empty() {
                return Err("organization.parent_id must not be empty".into());
            }
            body.insert("parent_id".into(), json!(p));
        }
        if !spec.domains.is_empty() {
            if let Some(bad) = spec.domains.iter().find(|d| !is_domain(d)) {
                return Err(format!("organization.domains: {bad:?} is not an e-mail domain like example.com"));
            }
            body.insert("domains".into(), json!(spec.domains));
        }
        if let Some(c) = &spec.branding.primary_color {
            if !is_color(c) {
                return Err(format!("organization.branding.primary_color {c:?} must be a hex colour like #007FFF"));
            }
            body.insert("color".into(), json!(c));
        }
        let mut payload = Map::new();
        for (k, v) in &spec.metadata {
            if k == TAG {
                return Err(format!("organization.metadata.{TAG} is reserved for orgprov's ownership tag"));
            }
            payload.insert(k.clone(), v.clone());
        }
        payload.insert(TAG.into(), json!(request_id.as_str()));
        body.insert("metadata".into(), json!({ "payload": payload }));
        if let Some(t) = non_empty_setting(&spec.settings, "template_id")? {
            body.insert("template_id".into(), json!(t));
        }
        if let Some(m) = spec.settings.get("authentication_mechanisms") {
            let list = m.as_array().ok_or("template setting secureauth.authentication_mechanisms must be an array")?;
            for item in list {
                if !item.as_str().is_some_and(|s| MECHANISMS.contains(&s)) {
                    return Err(format!(
                        "template setting secureauth.authentication_mechanisms: {item} is not one of {}",
                        MECHANISMS.join(", ")
                    ));
                }
            }
            body.insert("authentication_mechanisms".into(), m.clone());
        }
        Ok(Value::Object(body))
    }

    fn natural_key(&self, body: &Value) -> String {
        body.get("id").and_then(Value::as_str).unwrap_or_default().to_owned()
    }

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>> {
        async move {
            let what = "create organization";
            let response = self
                .call(
                    |auth| {
                        self.delivery
                            .client()
                            .post(&self.organizations_url)
                            .header("authorization", auth)
                            .header("idempotency-key", request_id.as_str())
                            .json(body)
                    },
                    what,
                )
                .await?;
            match response.status {
                200 | 201 => match response.json().as_ref().and_then(created_id) {
                    Some(id) => Ok(Created::New { id: id.to_owned(), status: response.status }),
                    None => Err(CallError::new(
                        ErrorClass::Ambiguous,
                        Some(response.status),
                        "SecureAuth answered 2xx without an organization id",
                    )),
                },
                409 => self.resolve_conflict(body, &response).await,
                _ => Err(self.classify(&response, what)),
            }
        }
        .boxed()
    }

    fn find<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Lookup, CallError>> {
        async move {
            let id = self.natural_key(body);
            Ok(match self.fetch(&id).await? {
                Some(org) => ownership(&org, &id, request_id),
                None => Lookup::Absent,
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Branding;
    use std::collections::BTreeMap;

    const TOKEN_RESPONSE: &str = include_str!("../../tests/fixtures/secureauth/token_response.json");
    const CREATE_REQUEST: &str = include_str!("../../tests/fixtures/secureauth/create_request.json");
    const CREATE_RESPONSE: &str = include_str!("../../tests/fixtures/secureauth/create_response.json");
    const ERROR_409: &str = include_str!("../../tests/fixtures/secureauth/error_409.json");

    fn settings() -> Settings {
        Settings { tenant: "acme".into(), ..Settings::default() }
    }

    fn secureauth() -> SecureAuth {
        let target = Target {
            name: "acme-secureauth".into(),
            base_url: "https://acme.us.connect.secureauth.com".into(),
            ..Target::for_tests(settings().into())
        };
        SecureAuth::new(&target, &settings(), Delivery::unlimited(&target))
    }

    fn spec(name: &str) -> OrgSpec {
        OrgSpec {
            name: name.into(),
            display_name: Some("ACME Corporation".into()),
            description: None,
            email: None,
            parent_id: None,
            domains: vec![],
            metadata: BTreeMap::new(),
            branding: Branding::default(),
            admin: None,
            settings: BTreeMap::new(),
            template: "secureauth-standard".into(),
            template_version: "1".into(),
        }
    }

    fn fixture(text: &str) -> Value {
        serde_json::from_str(text).expect("fixture is JSON")
    }

    fn response(status: u16, body: &str) -> Response {
        Response { status, headers: Default::default(), body: bytes::Bytes::from(body.to_owned()) }
    }

    #[test]
    fn urls_default_from_base_url_and_tenant() {
        let s = secureauth();
        assert_eq!(s.token_url, "https://acme.us.connect.secureauth.com/acme/system/oauth2/token");
        assert_eq!(s.organizations_url, "https://acme.us.connect.secureauth.com/api/system/acme/organizations");
        assert_eq!(s.scope, "manage_organizations");
    }

    #[test]
    fn settings_need_a_url_safe_tenant_and_a_client_id() {
        let mut target = TargetSettings::new("secureauth", "https://x", "c", "V");
        let check = |s: &Settings, t: &TargetSettings| s.validate(t).map_err(|e| e.key);
        assert_eq!(check(&Settings::default(), &target), Err("tenant".into()));
        assert_eq!(check(&Settings { tenant: "a/b".into(), ..settings() }, &target), Err("tenant".into()));
        assert_eq!(check(&Settings { scope: String::new(), ..settings() }, &target), Err("scope".into()));
        assert_eq!(check(&settings(), &target), Ok(()));
        target.client_id = None;
        assert_eq!(check(&settings(), &target), Err("client_id".into()));
    }

    #[test]
    fn the_id_is_deterministic_per_target_and_request() {
        let a = organization_id("t", "req-1");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a, organization_id("t", "req-1"));
        assert_ne!(a, organization_id("t2", "req-1"));
        assert_ne!(organization_id("a", "bc"), organization_id("ab", "c"));
        // Pinned to the documented formula: a change would orphan every organization made so far.
        let mut h = Sha256::new();
        h.update(b"acme-secureauth\0req-1");
        assert_eq!(organization_id("acme-secureauth", "req-1"), hex::encode(h.finalize())[..32]);
    }

    /// The vendor page's cURL body, rebuilt from a spec: ours is the same plus `id` and our tag.
    #[test]
    fn body_has_the_documented_shape_with_our_id_and_tag() {
        let id = RequestId::parse("req-1").unwrap();
        let documented = fixture(CREATE_REQUEST);
        let mut s = spec("acme-corp-001");
        s.description = documented["description"].as_str().map(str::to_owned);
        s.parent_id = documented["parent_id"].as_str().map(str::to_owned);
        s.metadata = serde_json::from_value(documented["metadata"]["payload"].clone()).unwrap();
        s.settings.insert("template_id".into(), documented["template_id"].clone());
        let body = secureauth().prepare(&s, &id).unwrap();

        let mut expected = documented.clone();
        expected["id"] = json!(organization_id("acme-secureauth", "req-1"));
        expected["metadata"]["payload"][TAG] = json!("req-1");
        assert_eq!(body, expected);
        assert_eq!(secureauth().natural_key(&body), organization_id("acme-secureauth", "req-1"));
    }

    #[test]
    fn optional_fields_and_settings_map_to_the_documented_fields() {
        let id = RequestId::parse("req-1").unwrap();
        let mut s = spec("acme");
        s.domains = vec!["acme.com".into()];
        s.branding.primary_color = Some("#007FFF".into());
        s.settings.insert("authentication_mechanisms".into(), json!(["password", "webauthn"]));
        let body = secureauth().prepare(&s, &id).unwrap();
        assert_eq!(body["domains"], json!(["acme.com"]));
        assert_eq!(body["color"], "#007FFF");
        assert_eq!(body["authentication_mechanisms"], json!(["password", "webauthn"]));
        assert!(body.get("displayName").is_none() && body.get("display_name").is_none());
    }

    #[test]
    fn documented_rules_are_checked_before_any_call() {
        let id = RequestId::parse("req-1").unwrap();
        let sa = secureauth();
        assert!(sa.prepare(&spec("acme corp"), &id).unwrap_err().contains("organization.name \"acme corp\""));
        assert!(sa.prepare(&spec(""), &id).is_err());
        assert!(sa.prepare(&spec("a/b"), &id).is_err());
        let mut s = spec("acme");
        s.settings.insert("theme".into(), json!("dark"));
        assert!(sa.prepare(&s, &id).unwrap_err().contains("secureauth.theme"));
        let mut s = spec("acme");
        s.settings.insert("authentication_mechanisms".into(), json!(["password", "carrier_pigeon"]));
        assert!(sa.prepare(&s, &id).unwrap_err().contains("carrier_pigeon"));
        let mut s = spec("acme");
        s.settings.insert("template_id".into(), json!(""));
        assert!(sa.prepare(&s, &id).unwrap_err().contains("secureauth.template_id"));
        let mut s = spec("acme");
        s.branding.primary_color = Some("blue".into());
        assert!(sa.prepare(&s, &id).unwrap_err().contains("primary_color"));
        let mut s = spec("acme");
        s.domains = vec!["not a domain".into()];
        assert!(sa.prepare(&s, &id).unwrap_err().contains("organization.domains"));
        let mut s = spec("acme");
        s.metadata.insert(TAG.into(), json!("x"));
        assert!(sa.prepare(&s, &id).unwrap_err().contains("reserved"));
    }

    #[test]
    fn the_documented_token_response_parses_with_a_string_expires_in() {
        let (token, lifetime) = parse_token(&fixture(TOKEN_RESPONSE)).unwrap();
        assert_eq!(token, "eyJhbGc...");
        assert_eq!(lifetime, Duration::from_secs(3600));
        let (_, lifetime) = parse_token(&json!({"access_token": "t", "expires_in": 60})).unwrap();
        assert_eq!(lifetime, Duration::from_secs(60));
        assert!(parse_token(&json!({"expires_in": 60})).is_none());
    }

    #[test]
    fn the_documented_create_response_parses() {
        let org = fixture(CREATE_RESPONSE);
        assert_eq!(created_id(&org), Some("c74c00101ecf45c6a08e5f4a370bd71a"));
        // The documented org carries business attributes but not our tag: someone else's.
        let id = RequestId::parse("req-1").unwrap();
        assert_eq!(ownership(&org, "x", &id), Lookup::NotOurs { id: "c74c00101ecf45c6a08e5f4a370bd71a".into() });
        let mut ours = org.clone();
        ours["metadata"]["payload"][TAG] = json!("req-1");
        assert_eq!(ownership(&ours, "x", &id), Lookup::Ours { id: "c74c00101ecf45c6a08e5f4a370bd71a".into() });
    }

    #[test]
    fn error_bodies_give_message_and_details() {
        let r = response(409, ERROR_409);
        assert_eq!(error_message(&r), fixture(ERROR_409)["error"].as_str().unwrap());
        let e = secureauth().classify(&response(422, ERROR_409), "create organization");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
        assert_eq!(e.details.unwrap()["error_code"], fixture(ERROR_409)["error_code"]);
        let e = secureauth().classify(&response(404, r#"{"status_code":404,"error":"template not found"}"#), "x");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
        assert!(e.message.contains("template not found"));
        assert_eq!(error_message(&response(502, "<html>bad gateway</html>")), "<html>bad gateway</html>");
    }
}
