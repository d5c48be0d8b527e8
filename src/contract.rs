//! The public v1 contract: the `org.provision.requested` message and the `org.provisioned` /
//! `org.failed` CloudEvents, exactly as `schemas/` defines them.
//!
//! Decoding follows "parse, don't validate": [`decode`] turns raw bytes into a
//! [`ProvisionRequest`] whose `request_id` is a [`RequestId`] (valid by construction), or into a
//! [`Rejection`] that says precisely what was wrong. The JSON Schema files are compiled into the
//! binary and are the validation rules, so the files and the code cannot drift apart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub const REQUESTED_SCHEMA: &str = include_str!("../schemas/org.provision.requested.v1.json");
pub const PROVISIONED_SCHEMA: &str = include_str!("../schemas/org.provisioned.v1.json");
pub const FAILED_SCHEMA: &str = include_str!("../schemas/org.failed.v1.json");

pub const PROVISIONED_TYPE: &str = "org.provisioned";
pub const FAILED_TYPE: &str = "org.failed";

/// Messages over this size are refused without being parsed.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How much of an unreadable payload an `org.failed` event may quote back.
const PAYLOAD_PREFIX_CHARS: usize = 120;

static REQUESTED_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| compile(REQUESTED_SCHEMA));

fn compile(schema: &str) -> jsonschema::Validator {
    // The schemas are compiled into the binary and covered by tests: a failure here is a
    // build defect, not a runtime condition.
    let schema: Value = serde_json::from_str(schema).expect("embedded schema is JSON");
    jsonschema::options().should_validate_formats(true).build(&schema).expect("embedded schema compiles")
}

/// The idempotency key of a request: 1–128 characters of `A-Z a-z 0-9 . _ : -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(s: &str) -> Result<RequestId, String> {
        if s.is_empty() || s.len() > 128 {
            return Err(format!("request_id must be 1-128 characters, got {}", s.len()));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
            return Err(format!("request_id contains {c:?}; only A-Z a-z 0-9 . _ : - are allowed"));
        }
        Ok(RequestId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Branding {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_background_color: Option<String>,
}

impl Branding {
    pub fn is_empty(&self) -> bool {
        self.logo_url.is_none() && self.primary_color.is_none() && self.page_background_color.is_none()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrganizationInput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<Branding>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Admin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// The wire shape of `org.provision.requested` v1 (what publishers send).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestMessage {
    pub request_id: String,
    pub target: String,
    pub template: String,
    pub organization: OrganizationInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
}

/// A decoded, schema-valid request.
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    pub request_id: RequestId,
    pub message: RequestMessage,
    /// The request as a JSON value (CloudEvents envelope removed): templates read from it.
    pub document: Value,
    /// SHA-256 of the canonical JSON of `document`; equal content gives equal hashes.
    pub content_hash: String,
}

/// Why a message could not become a [`ProvisionRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// No usable `request_id`: the message is recorded by its stream sequence.
    Unreadable { reason: String, details: Value },
    /// The `request_id` is usable but the rest breaks the schema.
    Invalid { request_id: RequestId, content_hash: String, document: Value, reason: String, details: Value },
}

/// Decodes a message payload: size limit, JSON, optional CloudEvents envelope, request_id,
/// then the full schema.
// The rejection carries the document by value because the worker stores it; it is built
// once per bad message, so its size on the error path does not matter.
#[allow(clippy::result_large_err)]
pub fn decode(payload: &[u8]) -> Result<ProvisionRequest, Rejection> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::Unreadable {
            reason: format!(
                "message is {} bytes, over the {} byte limit; it was not parsed",
                payload.len(),
                MAX_MESSAGE_BYTES
            ),
            details: serde_json::json!({ "size": payload.len(), "limit": MAX_MESSAGE_BYTES }),
        });
    }
    let unreadable = |reason: String| Rejection::Unreadable {
        details: serde_json::json!({ "payload_prefix": payload_prefix(payload) }),
        reason,
    };
    let value: Value = serde_json::from_slice(payload).map_err(|e| unreadable(format!("message is not JSON: {e}")))?;
    let document = unwrap_cloudevent(value).map_err(unreadable)?;
    let Some(object) = document.as_object() else {
        return Err(unreadable("message is JSON but not an object".into()));
    };
    let request_id = match object.get("request_id") {
        None => return Err(unreadable("request_id is missing".into())),
        Some(Value::String(s)) => {
            RequestId::parse(s).map_err(|e| unreadable(format!("request_id is malformed: {e}")))?
        }
        Some(other) => return Err(unreadable(format!("request_id must be a string, got {}", json_type(other)))),
    };
    let content_hash = hash_json(&document);

    let problems: Vec<String> = REQUESTED_VALIDATOR
        .iter_errors(&document)
        .take(5)
        .map(|e| {
            let path = e.instance_path().as_str().to_owned();
            let path = if path.is_empty() { "(root)".to_owned() } else { path };
            format!("{path}: {}", e.masked())
        })
        .collect();
    if !problems.is_empty() {
        return Err(Rejection::Invalid {
            request_id,
            content_hash,
            document,
            reason: format!("request breaks the org.provision.requested v1 schema: {}", problems.join("; ")),
            details: serde_json::json!({ "schema_errors": problems }),
        });
    }
    let message: RequestMessage = serde_json::from_value(document.clone()).map_err(|e| Rejection::Invalid {
        request_id: request_id.clone(),
        content_hash: content_hash.clone(),
        document: document.clone(),
        reason: format!("request does not match the v1 contract: {e}"),
        details: Value::Null,
    })?;
    Ok(ProvisionRequest { request_id, message, document, content_hash })
}

/// A CloudEvents structured envelope is recognised by `specversion`; its `data` is the request.
fn unwrap_cloudevent(value: Value) -> Result<Value, String> {
    match value {
        Value::Object(mut map) if map.contains_key("specversion") => {
            if map.get("specversion") != Some(&Value::String("1.0".into())) {
                return Err("CloudEvents envelope has a specversion other than \"1.0\"".into());
            }
            match map.remove("data") {
                Some(data @ Value::Object(_)) => Ok(data),
                Some(Value::String(s)) => {
                    serde_json::from_str(&s).map_err(|e| format!("CloudEvents data is a string that is not JSON: {e}"))
                }
                Some(_) => Err("CloudEvents data must be a JSON object".into()),
                None => Err("CloudEvents envelope has no data".into()),
            }
        }
        other => Ok(other),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A bounded, lossless-enough prefix of a payload for error details.
pub fn payload_prefix(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(PAYLOAD_PREFIX_CHARS * 4)])
        .chars()
        .take(PAYLOAD_PREFIX_CHARS)
        .collect()
}

/// SHA-256 (hex) of the canonical JSON text: `serde_json::Map` keeps keys sorted.
pub fn hash_json(v: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(v).unwrap_or_default()))
}

/// Stable event id: a digest of (key, generation, outcome type). The key is the request_id,
/// or `stream#sequence` for a message that never yielded one.
pub fn event_id(key: &str, generation: i64, event_type: &str) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(generation.to_be_bytes());
    h.update([0]);
    h.update(event_type.as_bytes());
    hex::encode(&h.finalize()[..16])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    UnknownTarget,
    UnknownTemplate,
    Conflict,
    Rejected,
    Unauthorized,
    Forbidden,
    Exhausted,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownTarget,
        ErrorCode::UnknownTemplate,
        ErrorCode::Conflict,
        ErrorCode::Rejected,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Exhausted,
        ErrorCode::Internal,
    ];

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::UnknownTemplate => "unknown_template",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Rejected => "rejected",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Exhausted => "exhausted",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// The most bytes of a publisher's `Nats-Msg-Id` echoed into `source_message.msg_id` and
/// `rejected_messages`: NATS bounds a header only by the message size, and an unreadable
/// message's id is the publisher's to choose.
pub const MAX_MSG_ID_BYTES: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceMessage {
    pub stream: String,
    pub sequence: u64,
    /// The message's `Nats-Msg-Id`, at most [`MAX_MSG_ID_BYTES`].
    pub msg_id: Option<String>,
    /// True when `msg_id` is a prefix of a longer id (cut on a character boundary); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub msg_id_truncated: bool,
}

impl SourceMessage {
    /// The source of an unreadable message, its `Nats-Msg-Id` bounded.
    pub fn new(stream: String, sequence: u64, msg_id: Option<&str>) -> SourceMessage {
        let (msg_id, msg_id_truncated) = match msg_id {
            Some(id) if id.len() > MAX_MSG_ID_BYTES => {
                let mut end = MAX_MSG_ID_BYTES;
                while !id.is_char_boundary(end) {
                    end -= 1;
                }
                (Some(id[..end].to_owned()), true)
            }
            other => (other.map(str::to_owned), false),
        };
        SourceMessage { stream, sequence, msg_id, msg_id_truncated }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedData {
    pub request_id: String,
    pub generation: i64,
    pub target: String,
    pub provider: String,
    pub template: String,
    pub template_version: String,
    pub organization_id: String,
    pub organization_name: String,
    pub created: bool,
    pub attempts: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedData {
    pub request_id: Option<String>,
    pub generation: i64,
    pub target: Option<String>,
    pub provider: Option<String>,
    pub attempts: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
    pub error: EventError,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_message: Option<SourceMessage>,
}

/// A CloudEvents 1.0 structured event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub datacontenttype: String,
    pub data: T,
}

/// An outcome event ready to store and publish: its id, type and exact bytes.
#[derive(Clone, Debug)]
pub struct OutcomeEvent {
    pub id: String,
    pub event_type: &'static str,
    pub payload: Vec<u8>,
}

impl OutcomeEvent {
    fn build<T: Serialize>(
        id: String,
        event_type: &'static str,
        source: &str,
        subject: String,
        at: OffsetDateTime,
        data: T,
    ) -> OutcomeEvent {
        let event = CloudEvent {
            specversion: "1.0".into(),
            id: id.clone(),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            subject,
            time: at,
            datacontenttype: "application/json".into(),
            data,
        };
        // Serialising plain structs of strings, numbers and JSON values cannot fail.
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        OutcomeEvent { id, event_type, payload }
    }

    pub fn provisioned(source: &str, data: ProvisionedData) -> OutcomeEvent {
        let id = event_id(&data.request_id, data.generation, PROVISIONED_TYPE);
        OutcomeEvent::build(id, PROVISIONED_TYPE, source, data.request_id.clone(), data.completed_at, data)
    }

    pub fn failed(source: &str, data: FailedData) -> OutcomeEvent {
        let key = match (&data.request_id, &data.source_message) {
            (Some(id), _) => id.clone(),
            (None, Some(m)) => format!("{}#{}", m.stream, m.sequence),
            (None, None) => String::new(),
        };
        let id = event_id(&key, data.generation, FAILED_TYPE);
        // An unreadable message has no request_id; its subject names the stream position.
        OutcomeEvent::build(id, FAILED_TYPE, source, key, data.failed_at, data)
    }
}

/// Validates an event against its schema (used by tests, the demo and `submit`).
pub fn validate_event(bytes: &[u8]) -> Result<(), String> {
    static PROVISIONED: LazyLock<jsonschema::Validator> = LazyLock::new(|| compile(PROVISIONED_SCHEMA));
    static FAILED: LazyLock<jsonschema::Validator> = LazyLock::new(|| compile(FAILED_SCHEMA));
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("event is not JSON: {e}"))?;
    let validator = match value.get("type").and_then(Value::as_str) {
        Some(PROVISIONED_TYPE) => &*PROVISIONED,
        Some(FAILED_TYPE) => &*FAILED,
        other => return Err(format!("unknown event type {other:?}")),
    };
    let errors: Vec<String> =
        validator.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path().as_str())).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"request_id": "r-1", "target": "t", "template": "standard",
               "organization": {"name": "acme"}})
    }

    #[test]
    fn decodes_plain_json_and_cloudevents_envelope_to_the_same_request() {
        let plain = decode(&serde_json::to_vec(&valid()).unwrap()).unwrap();
        let envelope = json!({"specversion": "1.0", "id": "x", "source": "crm", "type": "org.provision.requested", "data": valid()});
        let enveloped = decode(&serde_json::to_vec(&envelope).unwrap()).unwrap();
        assert_eq!(plain.request_id.as_str(), "r-1");
        assert_eq!(plain.content_hash, enveloped.content_hash);
        assert_eq!(plain.message, enveloped.message);
    }

    #[test]
    fn content_hash_ignores_key_order_but_not_content() {
        let a = decode(br#"{"request_id":"r","target":"t","template":"x","organization":{"name":"a"}}"#).unwrap();
        let b = decode(br#"{"organization":{"name":"a"},"template":"x","target":"t","request_id":"r"}"#).unwrap();
        let c = decode(br#"{"organization":{"name":"b"},"template":"x","target":"t","request_id":"r"}"#).unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn unreadable_messages_say_why() {
        let reason = |p: &[u8]| match decode(p) {
            Err(Rejection::Unreadable { reason, .. }) => reason,
            other => panic!("expected unreadable, got {other:?}"),
        };
        assert!(reason(b"not json").contains("not JSON"));
        assert!(reason(br#"{"target":"t"}"#).contains("request_id is missing"));
        assert!(reason(br#"{"request_id":"has space"}"#).contains("malformed"));
        assert!(reason(br#"{"request_id":7}"#).contains("must be a string"));
        assert!(reason(&vec![b' '; MAX_MESSAGE_BYTES + 1]).contains("over the 65536 byte limit"));
    }

    #[test]
    fn schema_errors_name_the_field() {
        match decode(br#"{"request_id":"r","target":"t","template":"x","organization":{}}"#) {
            Err(Rejection::Invalid { reason, request_id, .. }) => {
                assert_eq!(request_id.as_str(), "r");
                assert!(reason.contains("/organization"), "{reason}");
                assert!(reason.contains("name"), "{reason}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn payload_prefix_is_bounded() {
        assert_eq!(payload_prefix(&[b'a'; 10_000]).len(), PAYLOAD_PREFIX_CHARS);
    }

    #[test]
    fn built_events_validate_against_the_schemas() {
        let now = OffsetDateTime::now_utc();
        let ok = OutcomeEvent::provisioned(
            "orgprov",
            ProvisionedData {
                request_id: "r".into(),
                generation: 1,
                target: "t".into(),
                provider: "auth0".into(),
                template: "standard".into(),
                template_version: "1".into(),
                organization_id: "org_1".into(),
                organization_name: "acme".into(),
                created: true,
                attempts: 1,
                completed_at: now,
            },
        );
        validate_event(&ok.payload).unwrap();
        let failed = OutcomeEvent::failed(
            "orgprov",
            FailedData {
                request_id: None,
                generation: 1,
                target: None,
                provider: None,
                attempts: 0,
                failed_at: now,
                error: EventError {
                    code: ErrorCode::InvalidRequest,
                    message: "x".into(),
                    upstream_status: None,
                    details: None,
                },
                source_message: Some(SourceMessage::new("S".into(), 4, None)),
            },
        );
        validate_event(&failed.payload).unwrap();
        let mut cut = failed.clone();
        let mut data = serde_json::from_slice::<Value>(&cut.payload).unwrap();
        data["data"]["source_message"] =
            serde_json::to_value(SourceMessage::new("S".into(), 4, Some(&"é".repeat(200)))).unwrap();
        cut.payload = serde_json::to_vec(&data).unwrap();
        validate_event(&cut.payload).unwrap();
        assert_ne!(ok.id, failed.id);
        assert_eq!(ok.id, event_id("r", 1, PROVISIONED_TYPE));
    }

    #[test]
    fn a_long_msg_id_is_cut_on_a_character_boundary_and_flagged() {
        let short = SourceMessage::new("S".into(), 1, Some("bad-1"));
        assert_eq!((short.msg_id.as_deref(), short.msg_id_truncated), (Some("bad-1"), false));
        assert!(!serde_json::to_string(&short).unwrap().contains("msg_id_truncated"), "absent unless cut");
        let exact = "a".repeat(MAX_MSG_ID_BYTES);
        assert!(!SourceMessage::new("S".into(), 1, Some(&exact)).msg_id_truncated);
        // 2-byte characters: 256 bytes fall between two of them after "a".
        let long = format!("a{}", "é".repeat(100_000));
        let cut = SourceMessage::new("S".into(), 1, Some(&long));
        let id = cut.msg_id.as_deref().unwrap();
        assert!(cut.msg_id_truncated && id.len() <= MAX_MSG_ID_BYTES && id.len() == 255 && long.starts_with(id));
        assert_eq!(serde_json::to_value(&cut).unwrap()["msg_id_truncated"], true);
    }
}
