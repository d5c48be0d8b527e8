//! What every provider module does alike with its upstream's API: describing and sending a
//! create with our `Idempotency-Key` ([`CreateRequest`], [`create_request`]), reading the
//! upstream's error bodies and created ids, and classifying failed calls. Each provider
//! describes how its answers read once, in an [`Answers`] constant; what differs (conflicts,
//! lookups, ownership) stays in its own module.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{CallError, Created, ErrorClass};
use crate::contract::RequestId;
use crate::delivery::{Delivery, Response};

/// How many bytes of an answer that is not JSON an error message quotes.
const BODY_PREFIX: usize = 200;

/// The `User-Agent` of every call (the HTTP client sends the same by default).
pub const USER_AGENT: &str = concat!("orgprov/", env!("CARGO_PKG_VERSION"));

/// How a create call is authenticated. The credential itself is never part of a
/// [`CreateRequest`]: the provider adds it when sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AuthScheme {
    /// `Authorization: Bearer <access token>` (from the provider's token endpoint).
    Bearer,
    /// `Authorization: Basic base64(client_id:secret)` (Stytch).
    Basic,
}

impl AuthScheme {
    /// The `Authorization` header with the credential redacted: `Bearer <redacted>`.
    pub fn redacted(self) -> &'static str {
        match self {
            AuthScheme::Bearer => "Bearer <redacted>",
            AuthScheme::Basic => "Basic <redacted>",
        }
    }
}

/// A create call exactly as it goes on the wire, its credential aside: each provider builds
/// this description ([`super::Provider::create_request`]), its `create` sends it through
/// [`create_request`], and `orgprov plan` prints it. Both read the same value, so what plan
/// shows is what the worker sends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CreateRequest {
    pub method: &'static str,
    pub url: String,
    /// Every header set on the call besides `Authorization`, in the order they are set:
    /// `Content-Type`, `User-Agent`, `Idempotency-Key`, and a provider's own.
    pub headers: Vec<(&'static str, String)>,
    pub auth: AuthScheme,
    /// The JSON body, sent as `serde_json` writes it.
    pub body: Value,
}

impl CreateRequest {
    /// `POST url` with `body` as JSON and `Idempotency-Key: <request_id>`. Every create sends
    /// the header (DESIGN §Guarantees 2) although none of the providers honours it.
    pub fn post_json(url: String, body: Value, request_id: &RequestId, auth: AuthScheme) -> CreateRequest {
        let headers = vec![
            ("Content-Type", "application/json".to_owned()),
            ("User-Agent", USER_AGENT.to_owned()),
            ("Idempotency-Key", request_id.as_str().to_owned()),
        ];
        CreateRequest { method: "POST", url, headers, auth, body }
    }

    /// Adds a header the provider needs (`X-Execution-Mode: sync` for BioT).
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> CreateRequest {
        self.headers.push((name, value.into()));
        self
    }
}

/// The call `request` describes, without its credential (the provider adds it).
pub fn create_request(delivery: &Delivery, request: &CreateRequest) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut builder = delivery.client().request(method, &request.url);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    builder.body(serde_json::to_vec(&request.body).unwrap_or_default())
}

/// The string at JSON `pointer` in `body`, empty when there is none (the natural key of a
/// prepared body).
pub fn text_at(body: &Value, pointer: &str) -> String {
    body.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// How one provider's answers read.
#[derive(Debug)]
pub struct Answers {
    /// The provider's name in messages ("Auth0 answered 409: ...").
    pub upstream: &'static str,
    /// JSON pointer to the new organization's id in a create's 2xx answer.
    pub created_id: &'static str,
    /// Key of an error code that prefixes the message (`guard.invalid_input: ...`), where
    /// the provider's error bodies have one.
    pub code: Option<&'static str>,
    /// Keys that may hold the message of an error body; the first string found wins.
    pub message: &'static [&'static str],
    /// Keys of an error body copied into the failure's details (and `org.failed`'s
    /// `error.details`).
    pub details: &'static [&'static str],
}

impl Answers {
    /// The message of an error answer: `[code: ]message` from a JSON body, else the first
    /// bytes of the body as text.
    pub fn error_text(&self, response: &Response) -> String {
        let Some(v) = response.json() else {
            return String::from_utf8_lossy(&response.body[..response.body.len().min(BODY_PREFIX)]).into_owned();
        };
        let message = self.message.iter().find_map(|k| v.get(*k).and_then(Value::as_str)).unwrap_or("no message");
        match self.code.and_then(|k| v.get(k)).and_then(Value::as_str) {
            Some(code) => format!("{code}: {message}"),
            None => message.to_owned(),
        }
    }

    /// The [`Answers::details`] keys an error body has (null values left out).
    pub fn error_details(&self, response: &Response) -> Option<Value> {
        let v = response.json()?;
        let details: Map<String, Value> = self
            .details
            .iter()
            .filter_map(|k| v.get(*k).filter(|x| !x.is_null()).map(|x| ((*k).to_owned(), x.clone())))
            .collect();
        (!details.is_empty()).then_some(Value::Object(details))
    }

    /// A failed call: the shared status mapping ([`CallError::from_status`]), the upstream's
    /// message and details.
    pub fn classify(&self, response: &Response, what: &str) -> CallError {
        let message = format!("{what}: {} answered {}: {}", self.upstream, response.status, self.error_text(response));
        let mut e = CallError::from_status(response, message);
        e.details = self.error_details(response);
        e
    }

    /// The usual reading of a create's answer: a 2xx is the new organization
    /// ([`Answers::created`]), a 409 a taken natural key for the lookup to settle, anything
    /// else a failure ([`Answers::classify`]).
    pub fn create_answer(&self, response: &Response) -> Result<Created, CallError> {
        match response.status {
            200 | 201 => self.created(response),
            409 => Ok(Created::Conflict { status: 409 }),
            _ => Err(self.classify(response, "create organization")),
        }
    }

    /// A create's 2xx answer: the new organization, or an ambiguous failure when the answer
    /// has no id (the organization may exist all the same).
    pub fn created(&self, response: &Response) -> Result<Created, CallError> {
        let json = response.json();
        match json.as_ref().and_then(|v| v.pointer(self.created_id)).and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Created::New { id: id.to_owned(), status: response.status }),
            _ => Err(CallError::new(
                ErrorClass::Ambiguous,
                Some(response.status),
                format!(
                    "{} answered {} without an organization id at {}",
                    self.upstream,
                    response.status,
                    self.created_id.trim_start_matches('/').replace('/', ".")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ErrorCode;
    use crate::providers::testing::response;
    use serde_json::json;

    const ANSWERS: Answers = Answers {
        upstream: "Upstream",
        created_id: "/organization/id",
        code: Some("code"),
        message: &["message", "error"],
        details: &["code", "trace"],
    };

    #[test]
    fn error_text_takes_the_first_message_key_and_the_code() {
        assert_eq!(ANSWERS.error_text(&response(400, r#"{"code":"bad","message":"m","error":"e"}"#)), "bad: m");
        assert_eq!(ANSWERS.error_text(&response(400, r#"{"error":"e"}"#)), "e");
        assert_eq!(ANSWERS.error_text(&response(400, r#"{"message":7,"error":"e"}"#)), "e");
        assert_eq!(ANSWERS.error_text(&response(400, r#"{"code":"bad"}"#)), "bad: no message");
        assert_eq!(ANSWERS.error_text(&response(502, "<html>bad gateway</html>")), "<html>bad gateway</html>");
        assert_eq!(ANSWERS.error_text(&response(502, &"x".repeat(500))).len(), BODY_PREFIX);
    }

    #[test]
    fn details_copy_the_listed_keys_that_are_set() {
        let r = response(409, r#"{"code":"taken","trace":null,"other":1}"#);
        assert_eq!(ANSWERS.error_details(&r), Some(json!({"code": "taken"})));
        assert_eq!(ANSWERS.error_details(&response(409, r#"{"other":1}"#)), None);
        assert_eq!(ANSWERS.error_details(&response(409, "nope")), None);
    }

    #[test]
    fn classify_starts_from_the_shared_status_mapping() {
        let e = ANSWERS.classify(&response(422, r#"{"code":"invalid","message":"name"}"#), "create organization");
        assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
        assert_eq!(e.message, "create organization: Upstream answered 422: invalid: name");
        assert_eq!(e.details, Some(json!({"code": "invalid"})));
        assert_eq!(ANSWERS.classify(&response(503, "{}"), "x").class, ErrorClass::Ambiguous);
        assert_eq!(ANSWERS.classify(&response(429, "{}"), "x").class, ErrorClass::Retryable);
        assert_eq!(ANSWERS.classify(&response(403, "{}"), "x").class, ErrorClass::Permanent(ErrorCode::Forbidden));
    }

    #[test]
    fn a_create_answer_is_the_organization_a_conflict_or_a_failure() {
        assert!(matches!(
            ANSWERS.create_answer(&response(201, r#"{"organization":{"id":"o1"}}"#)),
            Ok(Created::New { .. })
        ));
        assert_eq!(ANSWERS.create_answer(&response(409, "{}")).unwrap(), Created::Conflict { status: 409 });
        let e = ANSWERS.create_answer(&response(400, r#"{"message":"bad"}"#)).unwrap_err();
        assert_eq!(
            (e.class, e.message.as_str()),
            (ErrorClass::Permanent(ErrorCode::Rejected), "create organization: Upstream answered 400: bad")
        );
    }

    #[test]
    fn a_created_answer_needs_the_id() {
        let ok = ANSWERS.created(&response(201, r#"{"organization":{"id":"o1"}}"#));
        assert_eq!(ok.unwrap(), Created::New { id: "o1".into(), status: 201 });
        for body in [r#"{"organization":{"id":""}}"#, r#"{"id":"o1"}"#, "created"] {
            let e = ANSWERS.created(&response(200, body)).unwrap_err();
            assert_eq!(e.class, ErrorClass::Ambiguous, "{body}");
            assert_eq!(e.message, "Upstream answered 200 without an organization id at organization.id");
        }
    }

    #[test]
    fn a_create_request_sends_exactly_what_it_describes() {
        let target = crate::providers::Target::for_tests(crate::providers::auth0::Settings::default().into());
        let delivery = Delivery::unlimited(&target);
        let id = RequestId::parse("req-7").unwrap();
        let described = CreateRequest::post_json(
            "http://x.example/orgs".into(),
            json!({"b": [1], "a": "é"}),
            &id,
            AuthScheme::Basic,
        )
        .header("X-Execution-Mode", "sync");
        let sent = create_request(&delivery, &described).build().unwrap();
        assert_eq!((sent.method().as_str(), sent.url().as_str()), ("POST", "http://x.example/orgs"));
        let headers: Vec<(String, String)> =
            sent.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
        let expected: Vec<(String, String)> =
            described.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        assert_eq!(headers, expected);
        assert_eq!(
            sent.body().and_then(|b| b.as_bytes()),
            Some(serde_json::to_vec(&described.body).unwrap().as_slice())
        );
        assert_eq!(AuthScheme::Basic.redacted(), "Basic <redacted>");
    }
}
