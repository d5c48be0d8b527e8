//! Stytch B2B: organizations.
//!
//! - Auth: HTTP Basic `project_id:secret` on every call (the target's `client_id` is the
//!   project id). There is no token, so a 401 is final: `unauthorized`, no refresh.
//! - Create: `POST {base_url}/v1/b2b/organizations`; success is **200** with the id at
//!   `organization.organization_id`. `organization_slug` (= the spec's `name`) and
//!   `organization_external_id` are both unique in a project.
//! - Ownership: `organization_external_id` is our request_id when it only has characters Stytch
//!   allows there (letters, digits, `.` `_` `-` `|`, at most 128); request ids may also hold
//!   `:`, and then the external id is `orgprov-` + the hex SHA-256 of the request_id (72
//!   characters, see [`external_id`]). The request_id is also written to
//!   `trusted_metadata.orgprov_request_id`.
//! - Lookup: `GET /v1/b2b/organizations/{external_id}`; an organization whose external id is
//!   ours is ours (DESIGN §6), unless its trusted metadata names a *different* request id
//!   (only possible if someone chose a request id that looks like our digest form). Otherwise
//!   `GET /v1/b2b/organizations/{slug}`: an organization holding our slug is someone else's
//!   (→ `conflict`), none means absent. Stytch resolves that path segment as an id, slug or
//!   external id, so each answer is checked against the field we meant.
//! - The natural key shown in events and messages is the slug: it is what a person recognises.
//! - Duplicate slug or external id (`organization_slug_already_used`, or any `error_type` /
//!   `error_message` saying the slug or external id is already used) → `Created::Conflict`; the
//!   lookup decides. Third-party code is the only source for the slug error type, and none was
//!   found for the external id, hence the loose match.
//! - Template settings (`[settings.stytch]`): `sso_jit_provisioning`, `email_jit_provisioning`,
//!   `email_invites`, `mfa_policy`, `auth_methods`, `allowed_auth_methods`, `mfa_methods`,
//!   `allowed_mfa_methods`, `rbac_email_implicit_role_assignments`, with their documented
//!   values; `RESTRICTED` auth/MFA methods need a non-empty allowed list (Stytch's
//!   `allowed_*_methods_required_for_restricted`). Other keys are refused.
//! - Limits checked before any call: `organization_name` (display name, else name) 1–128;
//!   slug 2–128 of letters, digits, `-` `.` `_` `~`; allowed e-mail domains are host names and
//!   not common public mail domains; logo URL is http(s). The spec's description, e-mail,
//!   parent and colours have no Stytch field and are not sent.
//! - Errors: `{status_code, request_id, error_type, error_message, error_url}`. Other 400s →
//!   `rejected` with `error_message`; 401 `unauthorized`; 403 `forbidden`; 429
//!   (`too_many_requests`, no rate-limit headers) → retry with backoff; 5xx ambiguous.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::rules::{email_domains, is_http_url, known_settings, length, name_rules, tag_free};
use super::upstream::{Answers, AuthScheme, CreateRequest, create_request, text_at};
use super::{CallError, Created, ErrorClass, Lookup, Provider, ProviderKind, Target, TargetKeys, Violations};
use crate::contract::RequestId;
use crate::delivery::{Delivery, Response};
use crate::template::OrgSpec;

pub const TAG: &str = "orgprov_request_id";
const NAME_MAX: usize = 128;
const SLUG_MIN: usize = 2;
const SLUG_MAX: usize = 128;
const EXTERNAL_ID_MAX: usize = 128;

/// One-of settings and their documented values.
const ENUM_SETTINGS: &[(&str, &[&str])] = &[
    ("sso_jit_provisioning", &["ALL_ALLOWED", "RESTRICTED", "NOT_ALLOWED"]),
    ("email_jit_provisioning", &["RESTRICTED", "NOT_ALLOWED"]),
    ("email_invites", &["ALL_ALLOWED", "RESTRICTED", "NOT_ALLOWED"]),
    ("mfa_policy", &["OPTIONAL", "REQUIRED_FOR_ALL"]),
    ("auth_methods", &["ALL_ALLOWED", "RESTRICTED"]),
    ("mfa_methods", &["ALL_ALLOWED", "RESTRICTED"]),
];
/// List settings and the documented values of their items.
const LIST_SETTINGS: &[(&str, &[&str])] = &[
    (
        "allowed_auth_methods",
        &[
            "sso",
            "magic_link",
            "email_otp",
            "password",
            "google_oauth",
            "microsoft_oauth",
            "slack_oauth",
            "github_oauth",
            "hubspot_oauth",
        ],
    ),
    ("allowed_mfa_methods", &["sms_otp", "totp"]),
];
const ROLE_ASSIGNMENTS: &str = "rbac_email_implicit_role_assignments";
/// Public mail domains Stytch refuses in `email_allowed_domains` (its list is longer; these
/// are the ones a template is likely to hold by mistake).
const COMMON_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "mail.com",
    "yandex.com",
];

/// A Stytch target has no keys besides those of every target.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {}

/// The client id is the project id, the secret the project secret.
impl TargetKeys for Settings {
    const CLIENT_ID: &'static str = "Stytch needs the project id (project-test-... or project-live-...)";
}

/// The `organization_external_id` of a request: the request_id itself when Stytch allows its
/// characters, else `orgprov-` + hex SHA-256 of it.
pub fn external_id(request_id: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '|');
    if !request_id.is_empty() && request_id.len() <= EXTERNAL_ID_MAX && request_id.chars().all(allowed) {
        request_id.to_owned()
    } else {
        format!("orgprov-{}", hex::encode(Sha256::digest(request_id.as_bytes())))
    }
}

/// Whether `s` is a valid slug: 2–128 of letters, digits, `-` `.` `_` `~`.
pub fn is_slug(s: &str) -> bool {
    (SLUG_MIN..=SLUG_MAX).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
}

/// Stytch error bodies: `{status_code, request_id, error_type, error_message, error_url}`.
const ANSWERS: Answers = Answers {
    upstream: "Stytch",
    created_id: "/organization/organization_id",
    code: None,
    message: &["error_message", "error_type"],
    details: &["error_type", "request_id", "error_url"],
};

pub struct Stytch {
    organizations_url: String,
    project_id: String,
    secret: SecretString,
    delivery: Arc<Delivery>,
}

impl Stytch {
    pub fn new(target: &Target, _: &Settings, delivery: Arc<Delivery>) -> Stytch {
        Stytch {
            organizations_url: format!("{}/v1/b2b/organizations", target.base_url),
            project_id: target.client_id.clone(),
            secret: target.client_secret.clone(),
            delivery,
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(&self.project_id, Some(self.secret.expose_secret()))
    }

    /// `GET /v1/b2b/organizations/{key}`: the organization object, or `None` when not found.
    async fn fetch(&self, key: &str) -> Result<Option<Value>, CallError> {
        let what = "look up organization";
        let url = format!("{}/{}", self.organizations_url, urlencoding::encode(key));
        let response = self
            .delivery
            .send(self.authorized(self.delivery.client().get(&url)))
            .await
            .map_err(|e| CallError::from_send(e, what).for_lookup())?;
        let not_found = response.status == 404
            || (response.status == 400 && error_type(&response).as_deref() == Some("organization_not_found"));
        if not_found {
            return Ok(None);
        }
        if response.status != 200 {
            return Err(ANSWERS.classify(&response, what).for_lookup());
        }
        match response.json().as_ref().and_then(|v| v.get("organization")) {
            Some(org @ Value::Object(_)) => Ok(Some(org.clone())),
            _ => Err(CallError::new(
                ErrorClass::Retryable,
                Some(200),
                "Stytch lookup answered 200 without an organization",
            )),
        }
    }
}

/// Decides ownership of an organization found by our external id or our slug.
fn ownership(org: &Value, external_id: &str, slug: &str, request_id: &RequestId) -> Option<Lookup> {
    let id = org.get("organization_id").and_then(Value::as_str)?.to_owned();
    let field = |k: &str| org.get(k).and_then(Value::as_str);
    if field("organization_external_id") == Some(external_id) {
        let tag = org.pointer(&format!("/trusted_metadata/{TAG}")).and_then(Value::as_str);
        return Some(match tag {
            Some(t) if t != request_id.as_str() => Lookup::NotOurs { id },
            _ => Lookup::Ours { id },
        });
    }
    (field("organization_slug") == Some(slug)).then_some(Lookup::NotOurs { id })
}

/// Whether an error answer says the slug or the external id is already taken (as opposed to
/// malformed: `invalid_organization_slug` also mentions the slug).
fn is_duplicate(response: &Response) -> bool {
    if response.status != 400 && response.status != 409 {
        return false;
    }
    let Some(v) = response.json() else { return false };
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let (kind, message) = (text("error_type"), text("error_message"));
    if kind == "organization_slug_already_used" {
        return true;
    }
    if kind.starts_with("invalid") {
        return false;
    }
    let all = format!("{kind} {message}");
    let names_key = all.contains("slug") || all.contains("external_id") || all.contains("external id");
    let taken = ["already", "duplicate", "taken", "in use", "exists"].iter().any(|w| all.contains(w));
    names_key && taken
}

fn error_type(response: &Response) -> Option<String> {
    response.json()?.get("error_type").and_then(Value::as_str).map(str::to_owned)
}

impl Provider for Stytch {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Stytch
    }

    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, Violations> {
        let mut broken = Violations::new();
        let slug = &spec.name;
        let rules = "Stytch's slug rules: 2-128 characters of letters, digits, '-', '.', '_' and '~'";
        broken.check(name_rules(is_slug(slug), slug, rules));
        let name = spec.display_name.as_deref().unwrap_or(slug);
        if broken.check(length("organization.display_name", name, 1..=NAME_MAX, "Stytch")).is_some()
            && name.trim().is_empty()
        {
            broken.push("organization.display_name must not be blank for Stytch");
        }
        let mut body = Map::new();
        body.insert("organization_name".into(), json!(name));
        body.insert("organization_slug".into(), json!(slug));
        body.insert("organization_external_id".into(), json!(external_id(request_id.as_str())));
        broken.check(tag_free(&spec.metadata, TAG));
        let mut metadata: Map<String, Value> = spec.metadata.clone().into_iter().collect();
        metadata.insert(TAG.into(), json!(request_id.as_str()));
        body.insert("trusted_metadata".into(), Value::Object(metadata));
        if !spec.domains.is_empty() {
            broken.check(email_domains(&spec.domains));
            if let Some(d) = spec.domains.iter().find(|d| COMMON_DOMAINS.contains(&d.to_ascii_lowercase().as_str())) {
                broken.push(format!("organization.domains: Stytch refuses common public mail domains like {d:?}"));
            }
            body.insert("email_allowed_domains".into(), json!(spec.domains));
        }
        if let Some(url) = &spec.branding.logo_url {
            if !is_http_url(url) {
                broken.push(format!("organization.branding.logo_url {url:?} must be an http(s) URL"));
            }
            body.insert("organization_logo_url".into(), json!(url));
        }
        apply_settings(&spec.settings, &mut body, &mut broken);
        broken.into_result(Value::Object(body))
    }

    fn create_request(&self, body: &Value, request_id: &RequestId) -> Result<CreateRequest, CallError> {
        Ok(CreateRequest::post_json(self.organizations_url.clone(), body.clone(), request_id, AuthScheme::Basic))
    }

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>> {
        async move {
            let what = "create organization";
            let request = create_request(&self.delivery, &self.create_request(body, request_id)?);
            let response =
                self.delivery.send(self.authorized(request)).await.map_err(|e| CallError::from_send(e, what))?;
            match response.status {
                200 | 201 => ANSWERS.created(&response),
                _ if is_duplicate(&response) => Ok(Created::Conflict { status: response.status }),
                _ => Err(ANSWERS.classify(&response, what)),
            }
        }
        .boxed()
    }

    fn find<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Lookup, CallError>> {
        async move {
            let slug = self.natural_key(body);
            let external = body
                .get("organization_external_id")
                .and_then(Value::as_str)
                .map_or_else(|| external_id(request_id.as_str()), str::to_owned);
            for key in [&external, &slug] {
                if let Some(org) = self.fetch(key).await?
                    && let Some(found) = ownership(&org, &external, &slug, request_id)
                {
                    return Ok(found);
                }
            }
            Ok(Lookup::Absent)
        }
        .boxed()
    }

    fn natural_key(&self, body: &Value) -> String {
        text_at(body, "/organization_slug")
    }
}

/// Validates `[settings.stytch]` (every broken rule into `broken`) and copies it into the body.
fn apply_settings(settings: &BTreeMap<String, Value>, body: &mut Map<String, Value>, broken: &mut Violations) {
    let mut known: Vec<&str> = ENUM_SETTINGS.iter().chain(LIST_SETTINGS).map(|(k, _)| *k).collect();
    known.push(ROLE_ASSIGNMENTS);
    if broken.check(known_settings(settings, "stytch", &known)).is_none() {
        return;
    }
    for (key, value) in settings {
        if let Some((_, allowed)) = ENUM_SETTINGS.iter().find(|(k, _)| k == key) {
            if !value.as_str().is_some_and(|s| allowed.contains(&s)) {
                broken.push(format!("template setting stytch.{key} is {value}; Stytch accepts {}", allowed.join(", ")));
            }
        } else if let Some((_, allowed)) = LIST_SETTINGS.iter().find(|(k, _)| k == key) {
            match value.as_array() {
                None => broken.push(format!("template setting stytch.{key} must be an array")),
                Some(list) => {
                    if let Some(bad) = list.iter().find(|i| !i.as_str().is_some_and(|s| allowed.contains(&s))) {
                        broken
                            .push(format!("template setting stytch.{key}: {bad} is not one of {}", allowed.join(", ")));
                    }
                }
            }
        } else {
            match value.as_array() {
                None => broken.push(format!("template setting stytch.{key} must be an array")),
                Some(list) => {
                    for item in list {
                        let ok = item.as_object().is_some_and(|o| {
                            o.len() == 2
                                && ["domain", "role_id"]
                                    .iter()
                                    .all(|f| o.get(*f).and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
                        });
                        if !ok {
                            broken.push(format!(
                                "template setting stytch.{key}: each entry needs exactly a domain and a role_id, got {item}"
                            ));
                        }
                    }
                }
            }
        }
        body.insert(key.clone(), value.clone());
    }
    for (mode, list) in [("auth_methods", "allowed_auth_methods"), ("mfa_methods", "allowed_mfa_methods")] {
        let restricted = settings.get(mode).and_then(Value::as_str) == Some("RESTRICTED");
        let empty = settings.get(list).and_then(Value::as_array).is_none_or(Vec::is_empty);
        if restricted && empty {
            broken.push(format!("template setting stytch.{mode} = \"RESTRICTED\" needs a non-empty stytch.{list}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ErrorCode;
    use crate::providers::testing::{answer, assert_refused, fixture, response, spec, with};

    fn stytch() -> Stytch {
        let target = Target {
            name: "acme-stytch".into(),
            base_url: "https://test.stytch.com".into(),
            client_id: "project-test-1".into(),
            ..Target::for_tests(Settings::default().into())
        };
        Stytch::new(&target, &Settings::default(), Delivery::unlimited(&target))
    }

    /// A spec with slug `name` and display name `display` (the description is not sent).
    fn slugged(name: &str, display: &str) -> OrgSpec {
        spec(json!({ "name": name, "display_name": display, "description": "not sent" }))
    }

    #[test]
    fn external_id_is_the_request_id_when_stytch_allows_it() {
        assert_eq!(external_id("crm-42.a_b"), "crm-42.a_b");
        let hashed = external_id("crm:42");
        assert!(hashed.starts_with("orgprov-") && hashed.len() == 8 + 64, "{hashed}");
        assert_eq!(hashed, format!("orgprov-{}", hex::encode(Sha256::digest(b"crm:42"))));
        assert_eq!(external_id(&"a".repeat(128)), "a".repeat(128));
    }

    /// The vendor page's example request, rebuilt from a spec: ours is the same plus our keys.
    #[test]
    fn body_has_the_documented_shape_with_our_external_id_and_tag() {
        let documented = fixture("stytch/create_request.json");
        let id = RequestId::parse("crm:42").unwrap();
        let s = slugged(
            documented["organization_slug"].as_str().unwrap(),
            documented["organization_name"].as_str().unwrap(),
        );
        let body = stytch().prepare(&s, &id).unwrap();
        let mut expected = documented.clone();
        expected["organization_external_id"] = json!(external_id("crm:42"));
        expected["trusted_metadata"] = json!({ TAG: "crm:42" });
        assert_eq!(body, expected);
        assert_eq!(stytch().natural_key(&body), "example-org");
    }

    #[test]
    fn spec_fields_and_settings_map_to_the_documented_fields() {
        let id = RequestId::parse("r1").unwrap();
        let s = spec(json!({
            "name": "acme", "domains": ["acme.com"], "metadata": { "plan": { "tier": "gold" } },
            "branding": { "logo_url": "https://acme.com/logo.png" },
            "settings": { "mfa_policy": "REQUIRED_FOR_ALL", "auth_methods": "RESTRICTED",
                          "allowed_auth_methods": ["sso", "magic_link"],
                          "rbac_email_implicit_role_assignments": [{ "domain": "acme.com", "role_id": "admin" }] },
        }));
        let body = stytch().prepare(&s, &id).unwrap();
        assert_eq!(body["organization_name"], "acme", "the name stands in for a missing display name");
        assert_eq!(body["email_allowed_domains"], json!(["acme.com"]));
        assert_eq!(body["organization_logo_url"], "https://acme.com/logo.png");
        assert_eq!(body["trusted_metadata"], json!({"plan": {"tier": "gold"}, TAG: "r1"}));
        assert_eq!(body["organization_external_id"], "r1");
        assert_eq!(body["mfa_policy"], "REQUIRED_FOR_ALL");
        assert_eq!(body["allowed_auth_methods"], json!(["sso", "magic_link"]));
        assert!(body.get("description").is_none());
    }

    #[test]
    fn documented_rules_are_checked_before_any_call() {
        let st = stytch();
        let acme = slugged("acme", "Acme");
        assert_refused(&st, &slugged("a", "A"), "organization.name \"a\"");
        assert_refused(&st, &slugged("acme/corp", "A"), "slug");
        assert_refused(&st, &slugged(&"a".repeat(129), "A"), "slug");
        assert_refused(&st, &slugged("acme", &"n".repeat(129)), "1-128");
        assert_refused(&st, &slugged("acme", "  "), "blank");
        let setting = |key: &str, value: Value| with(&acme, |s| _ = s.settings.insert(key.into(), value));
        assert_refused(&st, &setting("mfa_policy", json!("SOMETIMES")), "stytch.mfa_policy");
        assert_refused(&st, &setting("email_jit_provisioning", json!("ALL_ALLOWED")), "stytch.email_jit_provisioning");
        assert_refused(&st, &setting("allowed_mfa_methods", json!(["carrier_pigeon"])), "carrier_pigeon");
        assert_refused(&st, &setting("auth_methods", json!("RESTRICTED")), "stytch.allowed_auth_methods");
        assert_refused(&st, &setting("mfa_methods", json!("RESTRICTED")), "stytch.allowed_mfa_methods");
        assert_refused(&st, &setting(ROLE_ASSIGNMENTS, json!([{"domain": "acme.com"}])), "role_id");
        assert_refused(&st, &setting("organization_color", json!("red")), "stytch.organization_color is not supported");
        assert_refused(&st, &with(&acme, |s| s.domains = vec!["gmail.com".into()]), "gmail.com");
        assert_refused(&st, &with(&acme, |s| s.branding.logo_url = Some("ftp://x".into())), "logo_url");
        assert_refused(&st, &with(&acme, |s| _ = s.metadata.insert(TAG.into(), json!("x"))), "reserved");
    }

    #[test]
    fn the_documented_create_response_parses() {
        let created = ANSWERS.created(&answer(200, "stytch/create_response.json")).unwrap();
        let id = "organization-test-07971b06-ac8b-4cdb-9c15-63b17e653931";
        assert_eq!(created, Created::New { id: id.into(), status: 200 });
        let v = fixture("stytch/create_response.json");
        let org = &v["organization"];
        let id = RequestId::parse("r1").unwrap();
        // Found by slug, without our external id: someone else's.
        assert_eq!(
            ownership(org, "r1", "example-org", &id),
            Some(Lookup::NotOurs { id: "organization-test-07971b06-ac8b-4cdb-9c15-63b17e653931".into() })
        );
        assert_eq!(ownership(org, "r1", "other-slug", &id), None);
        let mut ours = org.clone();
        ours["organization_external_id"] = json!("r1");
        assert!(matches!(ownership(&ours, "r1", "example-org", &id), Some(Lookup::Ours { .. })));
        ours["trusted_metadata"] = json!({ TAG: "someone-else" });
        assert!(matches!(ownership(&ours, "r1", "example-org", &id), Some(Lookup::NotOurs { .. })));
    }

    #[test]
    fn documented_errors_are_classified() {
        let invalid_slug = answer(400, "stytch/error_invalid_slug.json");
        let too_many = answer(429, "stytch/error_too_many_requests.json");
        assert!(is_duplicate(&answer(400, "stytch/error_slug_already_used.json")));
        assert!(!is_duplicate(&invalid_slug), "a malformed slug is not a taken one");
        let ext = r#"{"status_code":400,"error_type":"duplicate_organization_external_id",
                      "error_message":"external_id is already used"}"#;
        assert!(is_duplicate(&response(400, ext)));
        assert!(!is_duplicate(&too_many));

        let e = ANSWERS.classify(&invalid_slug, "create organization");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
        let documented = fixture("stytch/error_invalid_slug.json");
        assert!(e.message.contains(documented["error_message"].as_str().unwrap()));
        assert_eq!(e.details.unwrap()["error_type"], "invalid_organization_slug");
        let e = ANSWERS.classify(&too_many, "create organization");
        assert_eq!((e.class, e.retry_after), (ErrorClass::Retryable, None));
        let e = ANSWERS.classify(&response(401, r#"{"status_code":401,"error_type":"unauthorized_credentials"}"#), "x");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Unauthorized));
    }
}
