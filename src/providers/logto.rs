//! Logto Management API: organizations.
//!
//! - Token: `POST {token_url}` (default `{base_url}/oidc/token`), form `grant_type=
//!   client_credentials`, `resource` (default `{base_url}/api`), `scope` (default `all`), with
//!   the machine-to-machine app's credentials as HTTP Basic. `expires_in` is a number; cached and
//!   refreshed before expiry, and once on a 401.
//! - Create: `POST /api/organizations` (201). Body: `name` (1–128), `description` (≤256),
//!   `customData` (the request's metadata, any JSON, plus our tag), `isMfaRequired` and
//!   `branding {logoUrl, darkLogoUrl, favicon, darkFavicon}`.
//! - Logto organization names are **not unique** and there is no conflict error: a blind retry
//!   makes a second organization. Ownership is proven only by `customData.orgprov_request_id`.
//!   Lookup: `GET /api/organizations?q=<name>&page=N&page_size=100` over every page
//!   (`Total-Number` header), matching the tag exactly; a name match alone is never adopted and
//!   never reported as someone else's (that would fail the request as a false `conflict`).
//! - Residual risk (DESIGN §6): a create whose answer was lost may still be running upstream
//!   when we look. [`Provider::reconcile_delay`] makes the worker wait the target timeout plus
//!   [`RECONCILE_MARGIN`] before trusting "absent". A create that commits even later than that
//!   would leave a duplicate we cannot prevent and, having no delete permission by design,
//!   cannot remove: after every successful create we search again and log a warning with the ids
//!   when more than one organization carries our tag, so an operator can merge them.
//! - Errors `{code, message, data?}`: 400 `guard.invalid_input` and 422 → `rejected`, 401 →
//!   refresh once, then `unauthorized`; 403 → `forbidden`; 429 (no headers) → retried; 5xx
//!   ambiguous.
//! - Limits checked before any call: name 1–128, description ≤256, branding URLs absolute
//!   http(s). `display_name`, `domains` and colours have no Logto organization field and are not
//!   sent (JIT e-mail domains are a separate follow-up API).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::token::{TokenCache, expires_in};
use super::{CallError, Created, ErrorClass, Lookup, Provider, ProviderKind, Target, TargetSettings};
use crate::config::KeyError;
use crate::contract::RequestId;
use crate::delivery::{Delivery, Response};
use crate::template::OrgSpec;

pub const TAG: &str = "orgprov_request_id";
/// Added to the target timeout before a reconciling lookup may trust "absent": covers the
/// upstream's own queueing and commit after our client gave up.
pub const RECONCILE_MARGIN: Duration = Duration::from_secs(1);
const NAME_MAX: usize = 128;
const DESCRIPTION_MAX: usize = 256;
/// Logto's largest page.
const PAGE_SIZE: usize = 100;
/// 100,000 organizations whose name or id contains ours: beyond that something is wrong.
const MAX_PAGES: usize = 1000;
const SETTINGS: &[&str] = &["is_mfa_required", "dark_logo_url", "favicon", "dark_favicon"];
/// Longer claimed lifetimes are cut to a day: refreshing early is harmless, while an absurd
/// `expires_in` must not overflow the cache's clock arithmetic.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// The keys of a Logto target besides those of every target. (The ownership tag's place is
/// fixed, `customData.orgprov_request_id`: BioT's `ownership_attribute` is not a Logto key.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// API resource indicator of the token; default `{base_url}/api` (self-hosted Logto:
    /// `https://default.logto.app/api`).
    pub resource: Option<String>,
    /// OAuth scope of the token; default `all`.
    pub scope: String,
    /// Token endpoint; default `{base_url}/oidc/token`.
    pub token_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { resource: None, scope: "all".into(), token_url: None }
    }
}

impl Settings {
    /// Logto needs the machine-to-machine app's id.
    pub fn validate(&self, target: &TargetSettings) -> Result<(), KeyError> {
        target.require_client_id("Logto needs the machine-to-machine application's app id")?;
        Ok(())
    }
}

pub struct Logto {
    base_url: String,
    token_url: String,
    resource: String,
    scope: String,
    client_id: String,
    client_secret: SecretString,
    timeout: Duration,
    delivery: Arc<Delivery>,
    tokens: TokenCache,
}

impl Logto {
    pub fn new(target: &Target, settings: &Settings, delivery: Arc<Delivery>) -> Logto {
        Logto {
            base_url: target.base_url.clone(),
            token_url: settings.token_url.clone().unwrap_or_else(|| format!("{}/oidc/token", target.base_url)),
            resource: settings.resource.clone().unwrap_or_else(|| format!("{}/api", target.base_url)),
            scope: settings.scope.clone(),
            client_id: target.client_id.clone(),
            client_secret: target.client_secret.clone(),
            timeout: target.timeout,
            delivery,
            tokens: TokenCache::default(),
        }
    }

    async fn fetch_token(&self) -> Result<(SecretString, Duration), CallError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("resource", self.resource.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let request = self
            .delivery
            .client()
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&form);
        let response = self
            .delivery
            .send_unlimited(request)
            .await
            .map_err(|e| CallError::from_send(e, "token request").for_lookup())?;
        if response.status != 200 {
            // A refused grant (bad client, unknown resource or scope) cannot be retried.
            let message = format!("Logto token endpoint answered {}: {}", response.status, error_text(&response));
            return Err(CallError::token_refused(&response, message, response.status == 403));
        }
        let v = response.json().unwrap_or(Value::Null);
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| CallError::new(ErrorClass::Retryable, Some(200), "token response has no access_token"))?;
        let lifetime = expires_in(v.get("expires_in")).unwrap_or(Duration::from_secs(3600));
        Ok((SecretString::from(token.to_owned()), lifetime.min(MAX_TOKEN_LIFETIME)))
    }

    /// Sends an authorized `/api` call; a 401 refreshes the token once and resends.
    async fn call(&self, build: impl Fn(&str) -> reqwest::RequestBuilder, what: &str) -> Result<Response, CallError> {
        self.tokens.send_authorized(&self.delivery, || self.fetch_token(), build, what).await
    }

    fn classify(&self, response: &Response, what: &str) -> CallError {
        let mut e = CallError::from_status(
            response,
            format!("{what}: Logto answered {}: {}", response.status, error_text(response)),
        );
        e.details = response.json().and_then(|v| {
            let mut details = Map::new();
            for key in ["code", "data"] {
                if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                    details.insert(key.to_owned(), x.clone());
                }
            }
            (!details.is_empty()).then_some(Value::Object(details))
        });
        e
    }

    /// Every organization whose `customData` carries `request_id`, oldest first, found by
    /// searching `name` over all pages.
    async fn tagged(&self, name: &str, request_id: &RequestId) -> Result<Vec<String>, CallError> {
        let url = format!("{}/api/organizations", self.base_url);
        let page_size = PAGE_SIZE.to_string();
        let mut found: Vec<(f64, String)> = Vec::new();
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let response = self
                .call(
                    |auth| {
                        self.delivery
                            .client()
                            .get(&url)
                            .query(&[("q", name), ("page", &page_text), ("page_size", &page_size)])
                            .header("authorization", auth)
                    },
                    "search organizations",
                )
                .await
                .map_err(CallError::for_lookup)?;
            if response.status != 200 {
                return Err(self.classify(&response, "search organizations").for_lookup());
            }
            let Some(items) = response.json().and_then(|v| v.as_array().cloned()) else {
                return Err(CallError::new(
                    ErrorClass::Retryable,
                    Some(200),
                    "Logto search answered 200 without a list",
                ));
            };
            for org in &items {
                let tag = org.pointer(&format!("/customData/{TAG}")).and_then(Value::as_str);
                if tag == Some(request_id.as_str())
                    && let Some(id) = org.get("id").and_then(Value::as_str)
                {
                    let created_at = org.get("createdAt").and_then(Value::as_f64).unwrap_or(f64::MAX);
                    found.push((created_at, id.to_owned()));
                }
            }
            let total = response
                .headers
                .get("total-number")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let last_page = match total {
                Some(total) => page * PAGE_SIZE >= total,
                None => items.len() < PAGE_SIZE,
            };
            // An empty page ends the walk even if the total claims more (it changed meanwhile).
            if last_page || items.is_empty() {
                found.sort_by(|a, b| a.0.total_cmp(&b.0));
                return Ok(found.into_iter().map(|(_, id)| id).collect());
            }
        }
        Err(CallError::new(
            ErrorClass::Retryable,
            None,
            format!("Logto search for {name:?} has more than {MAX_PAGES} pages; not trusting a partial answer"),
        ))
    }

    /// After a successful create: more than one organization with our tag means a duplicate we
    /// cannot remove; say so loudly, with the ids, for an operator.
    async fn warn_on_duplicates(&self, name: &str, request_id: &RequestId, created: &str) {
        match self.tagged(name, request_id).await {
            Ok(ids) if ids.len() > 1 => tracing::warn!(
                organization_ids = ?ids,
                created,
                name,
                "Logto holds more than one organization tagged with this request_id (a create committed after \
                 the reconcile wait); orgprov cannot delete, merge them by hand"
            ),
            Ok(_) => {}
            Err(e) => tracing::info!(error = %e.message, "post-create duplicate check failed; not retried"),
        }
    }
}

/// Logto error bodies: `{code, message, data?}`; a 500 is just `{message}`.
fn error_text(response: &Response) -> String {
    match response.json() {
        Some(v) => {
            let message = v
                .get("message")
                .or_else(|| v.get("error_description"))
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no message");
            match v.get("code").and_then(Value::as_str) {
                Some(code) => format!("{code}: {message}"),
                None => message.to_owned(),
            }
        }
        None => String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned(),
    }
}

/// Logto's guard uses zod's `.url()`; we hold branding to absolute http(s) URLs.
fn is_url(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

impl Provider for Logto {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Logto
    }

    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, String> {
        if let Some(unknown) = spec.settings.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(format!("template setting logto.{unknown} is not supported (known: {})", SETTINGS.join(", ")));
        }
        let length = spec.name.chars().count();
        if length == 0 || length > NAME_MAX {
            return Err(format!("organization.name must be 1-{NAME_MAX} characters for Logto, got {length}"));
        }
        let mut body = Map::new();
        body.insert("name".into(), json!(spec.name));
        if let Some(d) = &spec.description {
            if d.chars().count() > DESCRIPTION_MAX {
                return Err(format!(
                    "organization.description has {} characters; Logto allows {DESCRIPTION_MAX}",
                    d.chars().count()
                ));
            }
            body.insert("description".into(), json!(d));
        }
        if spec.metadata.contains_key(TAG) {
            return Err(format!("organization.metadata.{TAG} is reserved for orgprov's ownership tag"));
        }
        // customData is arbitrary JSON in Logto: metadata values keep their types.
        let mut custom: Map<String, Value> = spec.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        custom.insert(TAG.into(), json!(request_id.as_str()));
        body.insert("customData".into(), Value::Object(custom));
        match spec.settings.get("is_mfa_required") {
            None => {}
            Some(Value::Bool(b)) => {
                body.insert("isMfaRequired".into(), json!(b));
            }
            Some(_) => return Err("template setting logto.is_mfa_required must be true or false".into()),
        }
        let mut branding = Map::new();
        let urls = [
            ("organization.branding.logo_url", "logoUrl", spec.branding.logo_url.as_ref().map(|s| json!(s))),
            ("template setting logto.dark_logo_url", "darkLogoUrl", spec.settings.get("dark_logo_url").cloned()),
            ("template setting logto.favicon", "favicon", spec.settings.get("favicon").cloned()),
            ("template setting logto.dark_favicon", "darkFavicon", spec.settings.get("dark_favicon").cloned()),
        ];
        for (what, key, value) in urls {
            let Some(value) = value else { continue };
            match value.as_str() {
                Some(url) if is_url(url) => {
                    branding.insert(key.into(), json!(url));
                }
                _ => return Err(format!("{what} {value} must be an absolute http(s) URL for Logto")),
            }
        }
        if !branding.is_empty() {
            body.insert("branding".into(), Value::Object(branding));
        }
        Ok(Value::Object(body))
    }

    fn natural_key(&self, body: &Value) -> String {
        body.get("name").and_then(Value::as_str).unwrap_or_default().to_owned()
    }

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>> {
        async move {
            let url = format!("{}/api/organizations", self.base_url);
            let response = self
                .call(
                    |auth| {
                        self.delivery
                            .client()
                            .post(&url)
                            .header("authorization", auth)
                            .header("idempotency-key", request_id.as_str())
                            .json(body)
                    },
                    "create organization",
                )
                .await?;
            match response.status {
                200 | 201 => match response.json().as_ref().and_then(|v| v.get("id")).and_then(Value::as_str) {
                    Some(id) => {
                        self.warn_on_duplicates(&self.natural_key(body), request_id, id).await;
                        Ok(Created::New { id: id.to_owned(), status: response.status })
                    }
                    None => Err(CallError::new(
                        ErrorClass::Ambiguous,
                        Some(response.status),
                        "Logto answered 2xx without an organization id",
                    )),
                },
                _ => Err(self.classify(&response, "create organization")),
            }
        }
        .boxed()
    }

    fn find<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Lookup, CallError>> {
        async move {
            let name = self.natural_key(body);
            let ids = self.tagged(&name, request_id).await?;
            if ids.len() > 1 {
                tracing::warn!(
                    organization_ids = ?ids,
                    name,
                    "more than one Logto organization carries this request_id; adopting the oldest"
                );
            }
            Ok(match ids.into_iter().next() {
                Some(id) => Lookup::Ours { id },
                None => Lookup::Absent,
            })
        }
        .boxed()
    }

    /// Logto cannot refuse a duplicate, so a lookup after an ambiguous create waits until a
    /// create still running upstream must have landed.
    fn reconcile_delay(&self) -> Duration {
        self.timeout + RECONCILE_MARGIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Branding;
    use std::collections::BTreeMap;

    fn logto() -> Logto {
        let target = Target { timeout: Duration::from_millis(700), ..Target::for_tests(Settings::default().into()) };
        Logto::new(&target, &Settings::default(), Delivery::unlimited(&target))
    }

    fn spec(name: &str) -> OrgSpec {
        OrgSpec {
            name: name.into(),
            display_name: Some("not sent".into()),
            description: Some("Signed up".into()),
            email: None,
            parent_id: None,
            domains: vec!["acme.example".into()],
            metadata: BTreeMap::from([("plan".into(), json!("gold")), ("seats".into(), json!(25))]),
            branding: Branding {
                logo_url: Some("https://cdn.example/logo.png".into()),
                primary_color: Some("#aabbcc".into()),
                page_background_color: None,
            },
            admin: None,
            settings: BTreeMap::from([
                ("is_mfa_required".into(), json!(true)),
                ("favicon".into(), json!("https://cdn.example/favicon.ico")),
            ]),
            template: "logto-standard".into(),
            template_version: "1".into(),
        }
    }

    #[test]
    fn body_has_the_documented_shape_with_our_tag() {
        let id = RequestId::parse("req-1").unwrap();
        let body = logto().prepare(&spec("Acme Corp"), &id).unwrap();
        assert_eq!(
            body,
            json!({"name": "Acme Corp", "description": "Signed up",
                   "customData": {"plan": "gold", "seats": 25, "orgprov_request_id": "req-1"},
                   "isMfaRequired": true,
                   "branding": {"logoUrl": "https://cdn.example/logo.png",
                                "favicon": "https://cdn.example/favicon.ico"}})
        );
        assert_eq!(logto().natural_key(&body), "Acme Corp");
    }

    #[test]
    fn documented_limits_are_checked_before_any_call() {
        let id = RequestId::parse("req-1").unwrap();
        let l = logto();
        assert!(l.prepare(&spec(""), &id).unwrap_err().contains("1-128"));
        assert!(l.prepare(&spec(&"é".repeat(128)), &id).is_ok());
        assert!(l.prepare(&spec(&"a".repeat(129)), &id).unwrap_err().contains("got 129"));
        let mut s = spec("acme");
        s.description = Some("d".repeat(257));
        assert!(l.prepare(&s, &id).unwrap_err().contains("256"));
        let mut s = spec("acme");
        s.branding.logo_url = Some("logo.png".into());
        assert!(l.prepare(&s, &id).unwrap_err().contains("organization.branding.logo_url"));
        let mut s = spec("acme");
        s.settings.insert("is_mfa_required".into(), json!("yes"));
        assert!(l.prepare(&s, &id).unwrap_err().contains("is_mfa_required"));
        let mut s = spec("acme");
        s.metadata.insert(TAG.into(), json!("forged"));
        assert!(l.prepare(&s, &id).unwrap_err().contains("reserved"));
        let mut s = spec("acme");
        s.settings.insert("colour".into(), json!("red"));
        assert!(l.prepare(&s, &id).unwrap_err().contains("logto.colour"));
    }

    #[test]
    fn reconcile_waits_out_the_target_timeout_and_config_is_checked() {
        assert_eq!(logto().reconcile_delay(), Duration::from_millis(1700));
        let mut target = TargetSettings::new("logto", "http://x", "app", "S");
        assert_eq!(Settings::default().validate(&target), Ok(()));
        target.client_id = None;
        assert_eq!(Settings::default().validate(&target).unwrap_err().key, "client_id");
    }
}
