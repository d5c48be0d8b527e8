//! BioT (medical-device cloud) Organization Service: organizations created from a BioT template.
//!
//! - Token: a service user logs in with `POST {token_url}` (default
//!   `{base_url}/ums/v2/services/accessToken`) and `{id, secretKey}`. The answer names an absolute
//!   `accessTokenExpiration` (ISO-8601), not a lifetime: it is turned into one against the
//!   response's `Date` header (server time), one second shorter because `Date` only has whole
//!   seconds, and the shared token cache refreshes ahead of that. A 401 refreshes once.
//! - Create: `POST /organization/v1/organizations/templates/{templateName}` with
//!   `x-execution-mode: sync`, so the admin user and template work are done when 201 arrives.
//!   The prepared body is stored as `{"template_name", "organization"}`: the template name is
//!   part of what "render once" must pin, and only `organization` goes on the wire.
//! - Ownership: a string custom attribute at the top level of the organization, named by the
//!   target's `ownership_attribute` (default `orgprov_request_id`); the BioT template must define
//!   it, like every `organization.metadata` key, which become further custom attributes.
//!   Lookup: `GET /organization/v1/organizations?searchRequest={"filter":{"_name":{"eq":..}},"limit":1}`.
//! - `_name` is unique: 409 `ORGANIZATION_ALREADY_EXIST` is a [`Created::Conflict`] the lookup
//!   settles. The primary admin's e-mail is unique too: 409 `EMAIL_ALREADY_EXIST` may mean an
//!   earlier attempt of ours made the admin (and the organization), so the create looks the name
//!   up itself: ours → `Conflict` (the worker's lookup adopts it), otherwise a `conflict` failure
//!   naming the e-mail.
//! - `504 GATEWAY_TIMEOUT` and other 5xx are ambiguous (the organization may exist); BioT
//!   documents no 429, but one is still retried.
//! - The request's `admin` is required: it becomes `_primaryAdministrator` with `_name
//!   {firstName, lastName}`, `_email`, `_employeeId` (template setting `admin_employee_id`,
//!   else the admin's e-mail, which is unique per BioT user anyway), and optional `_phone`
//!   (E.164) and `_locale`.
//! - Template settings (`[settings.biot]`): `template_name` (required), `headquarters`
//!   (`country_code` ISO-3166 α-2 required, `state`, `city`, `zip_code`, `address1`,
//!   `address2`), `timezone` (Java zone id), `locale` (`en-us` form; the admin's locale wins),
//!   `phone` (E.164), `admin_employee_id`.
//! - Limits checked before any call: `_name` non-empty, `_description` ≤5000 characters,
//!   country codes, locales, phone numbers, e-mail shape, custom attribute names (BioT reserves
//!   the `_` prefix for built-in attributes) and string values. `display_name`, `domains` and
//!   `branding` have no BioT organization field and are not sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::rules::{known_settings, length, tag_free};
use super::token::{BearerAuth, Grant};
use super::upstream::{Answers, AuthScheme, CreateRequest, text_at};
use super::{CallError, Created, ErrorClass, Lookup, Provider, ProviderKind, Target, TargetKeys, Violations};
use crate::config::KeyError;
use crate::contract::{ErrorCode, RequestId};
use crate::delivery::{Delivery, Response};
use crate::template::OrgSpec;

/// The custom attribute holding our request_id unless the target names another.
pub const DEFAULT_TAG: &str = "orgprov_request_id";
const DESCRIPTION_MAX: usize = 5000;
/// Used when a token answer carries no readable expiry: short, so a wrong guess costs little
/// (the 401 path refreshes anyway).
const FALLBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const SETTINGS: &[&str] = &["template_name", "headquarters", "timezone", "locale", "phone", "admin_employee_id"];
const HEADQUARTERS: &[(&str, &str)] = &[
    ("country_code", "countryCode"),
    ("state", "state"),
    ("city", "city"),
    ("zip_code", "zipCode"),
    ("address1", "address1"),
    ("address2", "address2"),
];

/// ISO-3166-1 alpha-2, officially assigned codes.
const COUNTRY_CODES: &str = "\
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ \
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM \
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS \
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN \
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ \
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM \
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV \
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI \
    VN VU WF WS YE YT ZA ZM ZW";

/// The keys of a BioT target besides those of every target.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The string custom attribute of the BioT organization template that holds our
    /// request_id; default `orgprov_request_id`.
    pub ownership_attribute: String,
    /// Service-user login endpoint; default `{base_url}/ums/v2/services/accessToken`.
    pub token_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { ownership_attribute: DEFAULT_TAG.into(), token_url: None }
    }
}

impl TargetKeys for Settings {
    const CLIENT_ID: &'static str = "BioT needs the service user's id (the `id` of its access-token login)";

    /// `ownership_attribute` must be a name a BioT template can define as a custom attribute.
    fn validate(&self) -> Result<(), KeyError> {
        if !is_attribute_name(&self.ownership_attribute) {
            return Err(KeyError::new(
                "ownership_attribute",
                format!(
                    "{:?} is not a BioT custom attribute name: a letter, then letters, digits or '_' \
                     (the '_' prefix is reserved for built-in attributes)",
                    self.ownership_attribute
                ),
            ));
        }
        Ok(())
    }
}

/// BioT error bodies: `{code, message, serviceName, traceId, environment, details}`.
const ANSWERS: Answers = Answers {
    upstream: "BioT",
    created_id: "/_id",
    code: Some("code"),
    message: &["message"],
    details: &["code", "traceId", "details"],
};

/// The service user's login: `POST {token_url}` with `{id, secretKey}`; the answer names an
/// absolute `accessTokenExpiration`, read against the answer's `Date`.
struct ServiceLogin {
    token_url: String,
    id: String,
    secret_key: SecretString,
}

impl Grant for ServiceLogin {
    async fn fetch(&self, delivery: &Delivery) -> Result<(SecretString, Duration), CallError> {
        let body = json!({ "id": self.id, "secretKey": self.secret_key.expose_secret() });
        let request = delivery.client().post(&self.token_url).json(&body);
        let response = delivery
            .send_unlimited(request)
            .await
            .map_err(|e| CallError::from_send(e, "BioT service login").for_lookup())?;
        if !matches!(response.status, 200 | 201) {
            // 403 LOGIN_FAILED (wrong id/secret) and 401 SERVICE_LOCKED both mean our
            // credentials are not accepted; retrying cannot fix either.
            let text = ANSWERS.error_text(&response);
            let mut e = CallError::token_refused(
                &response,
                format!("BioT service login answered {}: {text}", response.status),
                false,
            );
            e.details = ANSWERS.error_details(&response);
            return Err(e);
        }
        let v = response.json().unwrap_or(Value::Null);
        let token = v.get("accessToken").and_then(Value::as_str).ok_or_else(|| {
            CallError::new(ErrorClass::Retryable, Some(response.status), "BioT service login answer has no accessToken")
        })?;
        let server_now = response
            .headers
            .get("date")
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .unwrap_or_else(SystemTime::now);
        let lifetime =
            v.get("accessTokenExpiration").and_then(Value::as_str).and_then(|e| token_lifetime(e, server_now));
        let lifetime = lifetime.unwrap_or_else(|| {
            tracing::warn!("BioT token answer has no readable accessTokenExpiration; assuming one minute");
            FALLBACK_TOKEN_LIFETIME
        });
        Ok((SecretString::from(token.to_owned()), lifetime))
    }
}

pub struct Biot {
    base_url: String,
    attribute: String,
    delivery: Arc<Delivery>,
    auth: BearerAuth<ServiceLogin>,
}

impl Biot {
    pub fn new(target: &Target, settings: &Settings, delivery: Arc<Delivery>) -> Biot {
        let base_url = &target.base_url;
        let login = ServiceLogin {
            token_url: settings.token_url.clone().unwrap_or_else(|| format!("{base_url}/ums/v2/services/accessToken")),
            id: target.client_id.clone(),
            secret_key: target.client_secret.clone(),
        };
        Biot {
            base_url: base_url.clone(),
            attribute: settings.ownership_attribute.clone(),
            delivery,
            auth: BearerAuth::new(login),
        }
    }

    /// Searches by `_name`; the first hit decides (names are unique in BioT).
    async fn lookup(&self, name: &str, request_id: &RequestId) -> Result<Lookup, CallError> {
        let url = format!("{}/organization/v1/organizations", self.base_url);
        let search = json!({ "filter": { "_name": { "eq": name } }, "limit": 1 }).to_string();
        let what = "look up organization";
        let response = self.auth.get(&self.delivery, &url, &[("searchRequest", &search)], what).await?;
        if response.status != 200 {
            return Err(ANSWERS.classify(&response, what).for_lookup());
        }
        let Some(data) = response.json().and_then(|v| v.get("data").and_then(Value::as_array).cloned()) else {
            return Err(CallError::new(
                ErrorClass::Retryable,
                Some(200),
                "BioT search answered 200 without a data list",
            ));
        };
        let Some(org) = data.first() else {
            return Ok(Lookup::Absent);
        };
        let Some(id) = org.get("_id").and_then(Value::as_str) else {
            return Err(CallError::new(
                ErrorClass::Retryable,
                Some(200),
                "BioT search returned an organization without _id",
            ));
        };
        let tag = org.get(&self.attribute).and_then(Value::as_str);
        Ok(if tag == Some(request_id.as_str()) {
            Lookup::Ours { id: id.to_owned() }
        } else {
            Lookup::NotOurs { id: id.to_owned() }
        })
    }

    /// A 409 `EMAIL_ALREADY_EXIST`: ours if an organization of ours holds the name already.
    async fn email_conflict(
        &self,
        body: &Value,
        request_id: &RequestId,
        response: &Response,
    ) -> Result<Created, CallError> {
        let name = self.natural_key(body);
        match self.lookup(&name, request_id).await {
            Ok(Lookup::Ours { .. }) => Ok(Created::Conflict { status: 409 }),
            Ok(_) => {
                let email =
                    body.pointer("/organization/_primaryAdministrator/_email").and_then(Value::as_str).unwrap_or("");
                let mut e = CallError::new(
                    ErrorClass::Permanent(ErrorCode::Conflict),
                    Some(409),
                    format!(
                        "the admin e-mail {email:?} already belongs to a BioT user outside this request \
                         (EMAIL_ALREADY_EXIST); no organization {name:?} of ours exists"
                    ),
                );
                e.details = ANSWERS.error_details(response);
                Err(e)
            }
            Err(mut e) => {
                e.message = format!(
                    "BioT answered EMAIL_ALREADY_EXIST and the check for our organization failed: {}",
                    e.message
                );
                Err(e)
            }
        }
    }
}

/// The lifetime left of a token expiring at `expiration` (ISO-8601) when the server clock says
/// `server_now`, minus one second for the `Date` header's resolution.
pub fn token_lifetime(expiration: &str, server_now: SystemTime) -> Option<Duration> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let at = time::OffsetDateTime::parse(expiration.trim(), &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(expiration.trim(), &Iso8601::DEFAULT))
        .ok()?;
    let at = SystemTime::from(at);
    let left = at.duration_since(server_now).unwrap_or_default();
    Some(left.saturating_sub(Duration::from_secs(1)))
}

fn error_code(response: &Response) -> Option<String> {
    response.json().and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned))
}

/// A BioT custom attribute name: built-in attributes own the `_` prefix.
fn is_attribute_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_country_code(s: &str) -> bool {
    s.len() == 2 && COUNTRY_CODES.split_whitespace().any(|c| c == s)
}

/// E.164: `+`, a non-zero digit, at most 15 digits in all.
fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else { return false };
    (2..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

/// A plain `local@domain.tld` address: what RFC-5322 allows in practice for a login e-mail.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else { return false };
    s.len() <= 254
        && !local.is_empty()
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// BioT locales are `{language}-{country}` in lower case (`en-us`); `en_US` and `en-US` are
/// accepted and normalized, anything else is refused.
fn normalize_locale(s: &str) -> Option<String> {
    let lower = s.trim().to_ascii_lowercase().replace('_', "-");
    let (language, country) = lower.split_once('-')?;
    let language_ok = (2..=3).contains(&language.len()) && language.chars().all(|c| c.is_ascii_lowercase());
    (language_ok && is_country_code(&country.to_ascii_uppercase())).then_some(lower)
}

/// A Java zone id (`Europe/Oslo`, `America/Argentina/Buenos_Aires`, `UTC`); the region database
/// itself is checked upstream (400 `VALIDATION_TIMEZONE_NOT_VALID`).
fn is_zone_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('/').all(|part| !part.is_empty())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

fn setting_text<'a>(spec: &'a OrgSpec, key: &str) -> Result<Option<&'a str>, String> {
    match spec.settings.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("template setting biot.{key} must be a string")),
    }
}

fn headquarters(value: &Value) -> Result<Value, String> {
    let given = value.as_object().ok_or("template setting biot.headquarters must be a table")?;
    if let Some(unknown) = given.keys().find(|k| !HEADQUARTERS.iter().any(|(ours, _)| ours == k)) {
        let known: Vec<&str> = HEADQUARTERS.iter().map(|(ours, _)| *ours).collect();
        return Err(format!(
            "template setting biot.headquarters.{unknown} is not supported (known: {})",
            known.join(", ")
        ));
    }
    let mut out = Map::new();
    for (ours, theirs) in HEADQUARTERS {
        match given.get(*ours) {
            None => {}
            Some(Value::String(s)) => {
                out.insert((*theirs).to_owned(), json!(s));
            }
            Some(_) => return Err(format!("template setting biot.headquarters.{ours} must be a string")),
        }
    }
    match out.get("countryCode").and_then(Value::as_str) {
        None => {
            Err("template setting biot.headquarters needs country_code (BioT requires it once headquarters is sent)"
                .into())
        }
        Some(code) if !is_country_code(code) => Err(format!(
            "template setting biot.headquarters.country_code {code:?} is not an ISO-3166 alpha-2 code like \"US\""
        )),
        Some(_) => Ok(Value::Object(out)),
    }
}

impl Provider for Biot {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Biot
    }

    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, Violations> {
        let mut broken = Violations::new();
        // Unknown settings are reported, and the known ones still checked.
        broken.check(known_settings(&spec.settings, "biot", SETTINGS));
        let setting = |broken: &mut Violations, key: &str| broken.check(setting_text(spec, key)).flatten();
        let template_name = match setting(&mut broken, "template_name") {
            Some(t) if !t.trim().is_empty() => t.to_owned(),
            _ => {
                broken.push(format!(
                    "template {} has no [settings.biot] template_name: BioT creates organizations from a named \
                     organization template",
                    spec.template
                ));
                String::new()
            }
        };
        if spec.name.trim().is_empty() {
            broken.push("organization.name must not be empty for BioT");
        }
        let mut org = Map::new();
        org.insert("_name".into(), json!(spec.name));
        if let Some(d) = &spec.description {
            broken.check(length("organization.description", d, 0..=DESCRIPTION_MAX, "BioT"));
            org.insert("_description".into(), json!(d));
        }

        let mut admin_locale = None;
        match spec.admin.as_ref() {
            None => broken.push("admin is required for BioT: it becomes the organization's primary administrator"),
            Some(admin) => {
                let mut required = |value: &Option<String>, field: &str| match value.as_deref().map(str::trim) {
                    Some(v) if !v.is_empty() => v.to_owned(),
                    _ => {
                        broken.push(format!("admin.{field} is required for BioT's primary administrator"));
                        String::new()
                    }
                };
                let email = required(&admin.email, "email");
                let first_name = required(&admin.first_name, "first_name");
                let last_name = required(&admin.last_name, "last_name");
                if !email.is_empty() && !is_email(&email) {
                    broken.push(format!("admin.email {email:?} is not an e-mail address"));
                }
                let employee_id = match setting(&mut broken, "admin_employee_id") {
                    Some(id) if !id.trim().is_empty() => id.to_owned(),
                    _ => email.clone(),
                };
                let mut primary = Map::new();
                primary.insert("_name".into(), json!({ "firstName": first_name, "lastName": last_name }));
                primary.insert("_email".into(), json!(email));
                primary.insert("_employeeId".into(), json!(employee_id));
                if let Some(phone) = &admin.phone {
                    if !is_e164(phone) {
                        broken
                            .push(format!("admin.phone {phone:?} must be an E.164 number like +12345678901 for BioT"));
                    }
                    primary.insert("_phone".into(), json!(phone));
                }
                if let Some(l) = &admin.locale {
                    match normalize_locale(l) {
                        Some(l) => admin_locale = Some(l),
                        None => {
                            broken.push(format!("admin.locale {l:?} must be language-country like \"en-us\" for BioT"))
                        }
                    }
                }
                if let Some(l) = &admin_locale {
                    primary.insert("_locale".into(), json!(l));
                }
                org.insert("_primaryAdministrator".into(), Value::Object(primary));
            }
        }

        if let Some(hq) = spec.settings.get("headquarters")
            && let Some(hq) = broken.check(headquarters(hq))
        {
            org.insert("_headquarters".into(), hq);
        }
        if let Some(zone) = setting(&mut broken, "timezone") {
            if !is_zone_id(zone) {
                broken.push(format!(
                    "template setting biot.timezone {zone:?} is not a Java zone id like \"Europe/Oslo\""
                ));
            }
            org.insert("_timezone".into(), json!(zone));
        }
        let template_locale = setting(&mut broken, "locale").and_then(|l| {
            let normalized = normalize_locale(l);
            if normalized.is_none() {
                broken.push(format!("template setting biot.locale {l:?} must be language-country like \"en-us\""));
            }
            normalized
        });
        if let Some(l) = admin_locale.or(template_locale) {
            org.insert("_locale".into(), json!(l));
        }
        if let Some(phone) = setting(&mut broken, "phone") {
            if !is_e164(phone) {
                broken.push(format!("template setting biot.phone {phone:?} must be an E.164 number like +12345678901"));
            }
            org.insert("_phone".into(), json!(phone));
        }

        broken.check(tag_free(&spec.metadata, &self.attribute));
        for (k, v) in &spec.metadata {
            if !is_attribute_name(k) {
                broken.push(format!(
                    "organization.metadata.{k} cannot be a BioT custom attribute: names start with a letter and \
                     hold letters, digits and '_'"
                ));
            }
            if !v.is_string() {
                broken.push(format!("organization.metadata.{k} must be a string for BioT"));
            }
            org.insert(k.clone(), v.clone());
        }
        org.insert(self.attribute.clone(), json!(request_id.as_str()));
        broken.into_result(json!({ "template_name": template_name, "organization": Value::Object(org) }))
    }

    fn create_request(&self, body: &Value, request_id: &RequestId) -> Result<CreateRequest, CallError> {
        let (Some(template), Some(org)) = (body.get("template_name").and_then(Value::as_str), body.get("organization"))
        else {
            return Err(CallError::new(
                ErrorClass::Permanent(ErrorCode::Internal),
                None,
                "stored BioT body lacks template_name or organization",
            ));
        };
        let url =
            format!("{}/organization/v1/organizations/templates/{}", self.base_url, urlencoding::encode(template));
        Ok(CreateRequest::post_json(url, org.clone(), request_id, AuthScheme::Bearer)
            .header("X-Execution-Mode", "sync"))
    }

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>> {
        async move {
            let request = self.create_request(body, request_id)?;
            let response = self.auth.create(&self.delivery, &request).await?;
            match response.status {
                409 if error_code(&response).as_deref() == Some("EMAIL_ALREADY_EXIST") => {
                    self.email_conflict(body, request_id, &response).await
                }
                // ORGANIZATION_ALREADY_EXIST (or an undocumented 409): the name lookup decides.
                _ => ANSWERS.create_answer(&response),
            }
        }
        .boxed()
    }

    fn find<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Lookup, CallError>> {
        async move { self.lookup(&self.natural_key(body), request_id).await }.boxed()
    }

    fn natural_key(&self, body: &Value) -> String {
        text_at(body, "/organization/_name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Admin;
    use crate::providers::testing::{assert_refused, spec, with};

    fn biot(attribute: Option<&str>) -> Biot {
        let mut settings = Settings::default();
        if let Some(attribute) = attribute {
            settings.ownership_attribute = attribute.into();
        }
        let target = Target::for_tests(settings.clone().into());
        Biot::new(&target, &settings, Delivery::unlimited(&target))
    }

    fn clinic() -> OrgSpec {
        spec(json!({
            "name": "Example Inc.", "display_name": "ignored", "description": "Lorem Ipsum",
            "metadata": { "plan": "gold" },
            "admin": { "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "locale": "en_US" },
            "settings": { "template_name": "Clinic", "headquarters": { "country_code": "US", "city": "Boston" },
                          "timezone": "Europe/Oslo" },
        }))
    }

    #[test]
    fn body_has_the_documented_shape_with_our_attribute() {
        let id = RequestId::parse("req-1").unwrap();
        let body = biot(None).prepare(&clinic(), &id).unwrap();
        assert_eq!(
            body,
            json!({"template_name": "Clinic", "organization": {
                "_name": "Example Inc.", "_description": "Lorem Ipsum",
                "_primaryAdministrator": {"_name": {"firstName": "Ada", "lastName": "Lovelace"},
                    "_email": "ada@example.com", "_employeeId": "ada@example.com", "_locale": "en-us"},
                "_headquarters": {"countryCode": "US", "city": "Boston"},
                "_timezone": "Europe/Oslo", "_locale": "en-us",
                "plan": "gold", "orgprov_request_id": "req-1"}})
        );
        assert_eq!(biot(None).natural_key(&body), "Example Inc.");
        let custom = biot(Some("crmRequest")).prepare(&clinic(), &id).unwrap();
        assert_eq!(custom["organization"]["crmRequest"], "req-1");
        assert!(custom["organization"].get(DEFAULT_TAG).is_none());
    }

    #[test]
    fn admin_and_template_name_are_required_and_limits_are_checked() {
        let b = biot(None);
        let changed = |change: fn(&mut OrgSpec)| with(&clinic(), change);
        let admin = |change: fn(&mut Admin)| with(&clinic(), |s| change(s.admin.as_mut().unwrap()));
        assert_refused(&b, &changed(|s| s.admin = None), "admin is required");
        assert_refused(&b, &admin(|a| a.last_name = Some(" ".into())), "admin.last_name");
        assert_refused(&b, &admin(|a| a.email = Some("not-an-email".into())), "admin.email");
        assert_refused(&b, &admin(|a| a.locale = Some("english".into())), "admin.locale");
        assert_refused(&b, &admin(|a| a.phone = Some("555-1234".into())), "E.164");
        assert_refused(&b, &changed(|s| _ = s.settings.remove("template_name")), "template_name");
        assert_refused(&b, &changed(|s| s.description = Some("x".repeat(5001))), "5000");
        let setting = |key: &str, value: Value| with(&clinic(), |s| _ = s.settings.insert(key.into(), value));
        assert_refused(&b, &setting("headquarters", json!({"country_code": "XX"})), "ISO-3166");
        assert_refused(&b, &setting("headquarters", json!({"city": "Boston"})), "country_code");
        assert_refused(&b, &setting("colour", json!("red")), "biot.colour");
        let metadata = |key: &str, value: Value| with(&clinic(), |s| _ = s.metadata.insert(key.into(), value));
        assert_refused(&b, &metadata("_name", json!("x")), "organization.metadata._name");
        assert_refused(&b, &metadata("count", json!(3)), "must be a string");
        assert_refused(&b, &metadata(DEFAULT_TAG, json!("forged")), "reserved");
    }

    #[test]
    fn expiry_timestamps_become_lifetimes_on_the_server_clock() {
        let server = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let exp = time::OffsetDateTime::from(server + Duration::from_secs(3600))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(token_lifetime(&exp, server), Some(Duration::from_secs(3599)));
        assert_eq!(token_lifetime("2020-01-01T00:00:00Z", server), Some(Duration::ZERO));
        let fractional = time::OffsetDateTime::from(server + Duration::from_millis(10_500))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(token_lifetime(&fractional, server), Some(Duration::from_millis(9_500)));
        assert_eq!(token_lifetime("tomorrow", server), None);
    }

    proptest::proptest! {
        /// A token expiry read against the server's `Date` never panics, whatever either says
        /// (the token cache caps the lifetime at a day).
        #[test]
        fn any_expiry_against_any_server_clock_is_total(
            expiration in proptest::prelude::any::<String>(),
            year in -9999i32..=9999,
            server_secs in 0u64..253_402_300_799,
        ) {
            let server = SystemTime::UNIX_EPOCH + Duration::from_secs(server_secs);
            let _ = token_lifetime(&expiration, server);
            let dated = format!("{year:+05}-06-01T00:00:00Z");
            let _ = token_lifetime(&dated, server);
        }
    }

    #[test]
    fn field_rules() {
        assert_eq!(COUNTRY_CODES.split_whitespace().count(), 249);
        assert!(is_country_code("NO") && !is_country_code("no") && !is_country_code("UK"));
        assert_eq!(normalize_locale("en-US").as_deref(), Some("en-us"));
        assert_eq!(normalize_locale("en"), None);
        assert!(is_e164("+4712345678") && !is_e164("+0123") && !is_e164("12345"));
        assert!(is_zone_id("America/Argentina/Buenos_Aires") && is_zone_id("UTC") && !is_zone_id("Europe//Oslo"));
        assert!(is_attribute_name("orgprov_request_id") && !is_attribute_name("_id") && !is_attribute_name("a-b"));
        assert_eq!(Settings::default().validate(), Ok(()));
        let owner = Settings { ownership_attribute: "_owner".into(), ..Settings::default() };
        assert_eq!(owner.validate().unwrap_err().key, "ownership_attribute");
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let bad = with(&clinic(), |s| {
            s.admin = None;
            s.settings.remove("template_name");
            s.metadata.insert("_reserved".into(), json!(1));
        });
        let e = biot(None).prepare(&bad, &RequestId::parse("req-1").unwrap()).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.messages().len(), 4, "{text}");
        for needle in ["template_name", "admin is required", "_reserved cannot be", "_reserved must be a string"] {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
    }
}
