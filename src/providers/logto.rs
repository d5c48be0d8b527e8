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
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::rules::{is_http_url, known_settings, length, tag_free};
use super::token::{BearerAuth, ClientAuth, ClientCredentials};
use super::upstream::{Answers, AuthScheme, CreateRequest, text_at};
use super::{CallError, Created, ErrorClass, Lookup, Provider, ProviderKind, Target, TargetKeys, Violations};
use crate::contract::RequestId;
use crate::delivery::Delivery;
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

impl TargetKeys for Settings {
    const CLIENT_ID: &'static str = "Logto needs the machine-to-machine application's app id";
}

/// Logto error bodies: `{code, message, data?}`; a 500 is just `{message}`; token errors are
/// OAuth's `{error, error_description}`.
const ANSWERS: Answers = Answers {
    upstream: "Logto",
    created_id: "/id",
    code: Some("code"),
    message: &["message", "error_description", "error"],
    details: &["code", "data"],
};

pub struct Logto {
    organizations_url: String,
    timeout: Duration,
    delivery: Arc<Delivery>,
    auth: BearerAuth<ClientCredentials>,
}

impl Logto {
    pub fn new(target: &Target, settings: &Settings, delivery: Arc<Delivery>) -> Logto {
        let resource = settings.resource.clone().unwrap_or_else(|| format!("{}/api", target.base_url));
        let grant =
            ClientCredentials::new(target, settings.token_url.as_deref(), "/oidc/token", ClientAuth::Basic, &ANSWERS)
                .param("resource", resource)
                .param("scope", &settings.scope);
        let auth = BearerAuth::new(grant);
        let organizations_url = format!("{}/api/organizations", target.base_url);
        Logto { organizations_url, timeout: target.timeout, delivery, auth }
    }

    /// Every organization whose `customData` carries `request_id`, oldest first, found by
    /// searching `name` over all pages.
    async fn tagged(&self, name: &str, request_id: &RequestId) -> Result<Vec<String>, CallError> {
        let page_size = PAGE_SIZE.to_string();
        let mut found: Vec<(f64, String)> = Vec::new();
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let what = "search organizations";
            let query = [("q", name), ("page", &page_text), ("page_size", &page_size)];
            let response = self.auth.get(&self.delivery, &self.organizations_url, &query, what).await?;
            if response.status != 200 {
                return Err(ANSWERS.classify(&response, what).for_lookup());
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

impl Provider for Logto {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Logto
    }

    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, Violations> {
        let mut broken = Violations::new();
        broken.check(known_settings(&spec.settings, "logto", SETTINGS));
        broken.check(length("organization.name", &spec.name, 1..=NAME_MAX, "Logto"));
        let mut body = Map::new();
        body.insert("name".into(), json!(spec.name));
        if let Some(d) = &spec.description {
            broken.check(length("organization.description", d, 0..=DESCRIPTION_MAX, "Logto"));
            body.insert("description".into(), json!(d));
        }
        broken.check(tag_free(&spec.metadata, TAG));
        // customData is arbitrary JSON in Logto: metadata values keep their types.
        let mut custom: Map<String, Value> = spec.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        custom.insert(TAG.into(), json!(request_id.as_str()));
        body.insert("customData".into(), Value::Object(custom));
        match spec.settings.get("is_mfa_required") {
            None => {}
            Some(Value::Bool(b)) => {
                body.insert("isMfaRequired".into(), json!(b));
            }
            Some(_) => broken.push("template setting logto.is_mfa_required must be true or false"),
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
                Some(url) if is_http_url(url) => {
                    branding.insert(key.into(), json!(url));
                }
                _ => broken.push(format!("{what} {value} must be an absolute http(s) URL for Logto")),
            }
        }
        if !branding.is_empty() {
            body.insert("branding".into(), Value::Object(branding));
        }
        broken.into_result(Value::Object(body))
    }

    fn create_request(&self, body: &Value, request_id: &RequestId) -> Result<CreateRequest, CallError> {
        Ok(CreateRequest::post_json(self.organizations_url.clone(), body.clone(), request_id, AuthScheme::Bearer))
    }

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>> {
        async move {
            let request = self.create_request(body, request_id)?;
            let response = self.auth.create(&self.delivery, &request).await?;
            match response.status {
                200 | 201 => {
                    let created = ANSWERS.created(&response)?;
                    if let Created::New { id, .. } = &created {
                        self.warn_on_duplicates(&self.natural_key(body), request_id, id).await;
                    }
                    Ok(created)
                }
                _ => Err(ANSWERS.classify(&response, "create organization")),
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

    fn natural_key(&self, body: &Value) -> String {
        text_at(body, "/name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{assert_refused, spec, with};

    fn logto() -> Logto {
        let target = Target { timeout: Duration::from_millis(700), ..Target::for_tests(Settings::default().into()) };
        Logto::new(&target, &Settings::default(), Delivery::unlimited(&target))
    }

    fn named(name: &str) -> OrgSpec {
        spec(json!({
            "name": name, "display_name": "not sent", "description": "Signed up", "domains": ["acme.example"],
            "metadata": { "plan": "gold", "seats": 25 },
            "branding": { "logo_url": "https://cdn.example/logo.png", "primary_color": "#aabbcc" },
            "settings": { "is_mfa_required": true, "favicon": "https://cdn.example/favicon.ico" },
        }))
    }

    #[test]
    fn body_has_the_documented_shape_with_our_tag() {
        let id = RequestId::parse("req-1").unwrap();
        let body = logto().prepare(&named("Acme Corp"), &id).unwrap();
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
        let l = logto();
        assert_refused(&l, &named(""), "1-128");
        assert!(l.prepare(&named(&"é".repeat(128)), &RequestId::parse("req-1").unwrap()).is_ok());
        assert_refused(&l, &named(&"a".repeat(129)), "got 129");
        let acme = named("acme");
        assert_refused(&l, &with(&acme, |s| s.description = Some("d".repeat(257))), "256");
        let relative_logo = with(&acme, |s| s.branding.logo_url = Some("logo.png".into()));
        assert_refused(&l, &relative_logo, "organization.branding.logo_url");
        let setting = |key: &str, value: Value| with(&acme, |s| _ = s.settings.insert(key.into(), value));
        assert_refused(&l, &setting("is_mfa_required", json!("yes")), "is_mfa_required");
        assert_refused(&l, &setting("colour", json!("red")), "logto.colour");
        assert_refused(&l, &with(&acme, |s| _ = s.metadata.insert(TAG.into(), json!("forged"))), "reserved");
    }

    #[test]
    fn reconcile_waits_out_the_target_timeout() {
        assert_eq!(logto().reconcile_delay(), Duration::from_millis(1700));
    }
}
