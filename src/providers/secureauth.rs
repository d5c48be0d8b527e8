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

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::rules::{email_domains, is_hex_colour, is_url_safe, known_settings, name_rules, tag_free};
use super::token::{BearerAuth, ClientAuth, ClientCredentials};
use super::upstream::{Answers, AuthScheme, CreateRequest, text_at};
use super::{CallError, Created, ErrorClass, Lookup, Provider, ProviderKind, Target, TargetKeys, Violations};
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

impl TargetKeys for Settings {
    const CLIENT_ID: &'static str = "SecureAuth needs the System workspace service client's id";

    /// SecureAuth needs a URL-safe tenant id: it is in every path.
    fn validate(&self) -> Result<(), KeyError> {
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

/// SecureAuth error bodies: `{status_code, error, error_code, details}`; token errors are
/// OAuth's `{error, error_description}`.
const ANSWERS: Answers = Answers {
    upstream: "SecureAuth",
    created_id: "/id",
    code: None,
    message: &["error_description", "error", "error_code"],
    details: &["error_code", "details"],
};

pub struct SecureAuth {
    target: String,
    tenant: String,
    organizations_url: String,
    delivery: Arc<Delivery>,
    auth: BearerAuth<ClientCredentials>,
}

impl SecureAuth {
    pub fn new(target: &Target, settings: &Settings, delivery: Arc<Delivery>) -> SecureAuth {
        // `Settings::validate` guarantees a URL-safe tenant, so it needs no encoding in paths.
        let (tenant, base) = (&settings.tenant, &target.base_url);
        let token_path = format!("/{tenant}/system/oauth2/token");
        let grant = ClientCredentials {
            // A scope the client was not granted is a permission problem.
            invalid_scope_is_forbidden: true,
            ..ClientCredentials::new(target, settings.token_url.as_deref(), &token_path, ClientAuth::FormBody, &ANSWERS)
                .param("scope", &settings.scope)
        };
        SecureAuth {
            target: target.name.clone(),
            tenant: tenant.clone(),
            organizations_url: format!("{base}/api/system/{tenant}/organizations"),
            delivery,
            auth: BearerAuth::new(grant),
        }
    }

    /// `GET .../organizations/{id}`: the organization, or `None` on 404.
    async fn fetch(&self, id: &str) -> Result<Option<Value>, CallError> {
        let url = format!("{}/{}", self.organizations_url, urlencoding::encode(id));
        let what = "look up organization";
        let response = self.auth.get(&self.delivery, &url, &[], what).await?;
        match response.status {
            200 => match response.json() {
                Some(v @ Value::Object(_)) => Ok(Some(v)),
                _ => {
                    Err(CallError::new(ErrorClass::Retryable, Some(200), "SecureAuth lookup answered 200 without JSON"))
                }
            },
            404 => Ok(None),
            _ => Err(ANSWERS.classify(&response, what).for_lookup()),
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
                ANSWERS.error_text(response)
            ),
        );
        let mut details = ANSWERS.error_details(response).unwrap_or_else(|| json!({}));
        if let Some(d) = details.as_object_mut() {
            d.insert("name".into(), json!(name));
            d.insert("organization_id".into(), json!(id));
        }
        e.details = Some(details);
        Err(e)
    }
}

/// Whether a fetched organization carries our tag.
fn ownership(org: &Value, id: &str, request_id: &RequestId) -> Lookup {
    let id = org.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()).unwrap_or(id).to_owned();
    let tag = org.pointer(&format!("/metadata/payload/{TAG}")).and_then(Value::as_str);
    if tag == Some(request_id.as_str()) { Lookup::Ours { id } } else { Lookup::NotOurs { id } }
}

impl Provider for SecureAuth {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SecureAuth
    }

    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, Violations> {
        let mut broken = Violations::new();
        let rules = "SecureAuth's rules: a URL-safe name of letters, digits, '-', '.', '_' and '~' is required";
        broken.check(name_rules(is_url_safe(&spec.name), &spec.name, rules));
        broken.check(known_settings(&spec.settings, "secureauth", SETTINGS));
        broken.check(tag_free(&spec.metadata, TAG));
        let mut body = Map::new();
        body.insert("id".into(), json!(organization_id(&self.target, request_id.as_str())));
        body.insert("name".into(), json!(spec.name));
        if let Some(d) = &spec.description {
            body.insert("description".into(), json!(d));
        }
        if let Some(p) = &spec.parent_id {
            if p.is_empty() {
                broken.push("organization.parent_id must not be empty");
            }
            body.insert("parent_id".into(), json!(p));
        }
        if !spec.domains.is_empty() {
            broken.check(email_domains(&spec.domains));
            body.insert("domains".into(), json!(spec.domains));
        }
        if let Some(c) = &spec.branding.primary_color {
            if !is_hex_colour(c) {
                broken.push(format!("organization.branding.primary_color {c:?} must be a hex colour like #007FFF"));
            }
            body.insert("color".into(), json!(c));
        }
        let mut payload: Map<String, Value> = spec.metadata.clone().into_iter().collect();
        payload.insert(TAG.into(), json!(request_id.as_str()));
        body.insert("metadata".into(), json!({ "payload": payload }));
        if let Some(Some(t)) = broken.check(non_empty_setting(&spec.settings, "template_id")) {
            body.insert("template_id".into(), json!(t));
        }
        if let Some(m) = spec.settings.get("authentication_mechanisms") {
            match m.as_array() {
                None => broken.push("template setting secureauth.authentication_mechanisms must be an array"),
                Some(list) => {
                    for item in list.iter().filter(|item| !item.as_str().is_some_and(|s| MECHANISMS.contains(&s))) {
                        broken.push(format!(
                            "template setting secureauth.authentication_mechanisms: {item} is not one of {}",
                            MECHANISMS.join(", ")
                        ));
                    }
                }
            }
            body.insert("authentication_mechanisms".into(), m.clone());
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
                409 => self.resolve_conflict(body, &response).await,
                _ => ANSWERS.create_answer(&response),
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

    fn natural_key(&self, body: &Value) -> String {
        text_at(body, "/id")
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{answer, assert_refused, fixture, response, spec, with};
    use crate::providers::token::access_token;
    use secrecy::ExposeSecret;
    use std::time::Duration;

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

    fn acme() -> OrgSpec {
        spec(json!({ "name": "acme", "display_name": "ACME Corporation" }))
    }

    #[test]
    fn urls_default_from_base_url_and_tenant() {
        let s = secureauth();
        let grant = s.auth.grant();
        assert_eq!(grant.token_url, "https://acme.us.connect.secureauth.com/acme/system/oauth2/token");
        assert_eq!(s.organizations_url, "https://acme.us.connect.secureauth.com/api/system/acme/organizations");
        assert_eq!(grant.params, [("scope", "manage_organizations".to_owned())]);
        assert_eq!((grant.auth, grant.invalid_scope_is_forbidden), (ClientAuth::FormBody, true));
    }

    #[test]
    fn settings_need_a_url_safe_tenant_and_a_scope() {
        let key = |s: Settings| s.validate().map_err(|e| e.key);
        assert_eq!(key(Settings::default()), Err("tenant".into()));
        assert_eq!(key(Settings { tenant: "a/b".into(), ..settings() }), Err("tenant".into()));
        assert_eq!(key(Settings { scope: String::new(), ..settings() }), Err("scope".into()));
        assert_eq!(key(settings()), Ok(()));
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
        let documented = fixture("secureauth/create_request.json");
        let s = spec(json!({ "name": "acme-corp-001", "description": documented["description"],
                             "parent_id": documented["parent_id"], "metadata": documented["metadata"]["payload"],
                             "settings": { "template_id": documented["template_id"] } }));
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
        let s = spec(json!({ "name": "acme", "display_name": "ACME", "domains": ["acme.com"],
                             "branding": { "primary_color": "#007FFF" },
                             "settings": { "authentication_mechanisms": ["password", "webauthn"] } }));
        let body = secureauth().prepare(&s, &id).unwrap();
        assert_eq!(body["domains"], json!(["acme.com"]));
        assert_eq!(body["color"], "#007FFF");
        assert_eq!(body["authentication_mechanisms"], json!(["password", "webauthn"]));
        assert!(body.get("displayName").is_none() && body.get("display_name").is_none());
    }

    #[test]
    fn documented_rules_are_checked_before_any_call() {
        let sa = secureauth();
        assert_refused(&sa, &with(&acme(), |s| s.name = "acme corp".into()), "organization.name \"acme corp\"");
        assert_refused(&sa, &with(&acme(), |s| s.name = String::new()), "organization.name");
        assert_refused(&sa, &with(&acme(), |s| s.name = "a/b".into()), "organization.name");
        let setting = |key: &str, value: Value| with(&acme(), |s| _ = s.settings.insert(key.into(), value));
        assert_refused(&sa, &setting("theme", json!("dark")), "secureauth.theme");
        assert_refused(&sa, &setting("authentication_mechanisms", json!(["password", "pigeon"])), "pigeon");
        assert_refused(&sa, &setting("template_id", json!("")), "secureauth.template_id");
        assert_refused(&sa, &with(&acme(), |s| s.branding.primary_color = Some("blue".into())), "primary_color");
        assert_refused(&sa, &with(&acme(), |s| s.domains = vec!["not a domain".into()]), "organization.domains");
        assert_refused(&sa, &with(&acme(), |s| _ = s.metadata.insert(TAG.into(), json!("x"))), "reserved");
    }

    #[test]
    fn the_documented_token_response_parses_with_a_string_expires_in() {
        let (token, lifetime) = access_token(&fixture("secureauth/token_response.json")).unwrap();
        assert_eq!(token.expose_secret(), "eyJhbGc...");
        assert_eq!(lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn the_documented_create_response_parses() {
        let created = ANSWERS.created(&answer(201, "secureauth/create_response.json")).unwrap();
        assert_eq!(created, Created::New { id: "c74c00101ecf45c6a08e5f4a370bd71a".into(), status: 201 });
        // The documented org carries business attributes but not our tag: someone else's.
        let org = fixture("secureauth/create_response.json");
        let id = RequestId::parse("req-1").unwrap();
        assert_eq!(ownership(&org, "x", &id), Lookup::NotOurs { id: "c74c00101ecf45c6a08e5f4a370bd71a".into() });
        let mut ours = org.clone();
        ours["metadata"]["payload"][TAG] = json!("req-1");
        assert_eq!(ownership(&ours, "x", &id), Lookup::Ours { id: "c74c00101ecf45c6a08e5f4a370bd71a".into() });
    }

    #[test]
    fn error_bodies_give_message_and_details() {
        let documented = fixture("secureauth/error_409.json");
        assert_eq!(
            ANSWERS.error_text(&answer(409, "secureauth/error_409.json")),
            documented["error"].as_str().unwrap()
        );
        let e = ANSWERS.classify(&answer(422, "secureauth/error_409.json"), "create organization");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
        assert_eq!(e.details.unwrap()["error_code"], documented["error_code"]);
        let e = ANSWERS.classify(&response(404, r#"{"status_code":404,"error":"template not found"}"#), "x");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
        assert!(e.message.contains("template not found"));
    }
}
