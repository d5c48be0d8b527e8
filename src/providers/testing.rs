//! Helpers for the provider modules' unit tests.

use serde_json::{Value, json};

use super::Provider;
use crate::contract::RequestId;
use crate::delivery::Response;
use crate::template::OrgSpec;

/// A spec of `fields` (JSON, as [`OrgSpec`] reads them) over empty lists and tables.
pub fn spec(fields: Value) -> OrgSpec {
    let mut spec = json!({ "domains": [], "metadata": {}, "branding": {}, "settings": {},
                           "template": "test", "template_version": "1" });
    spec.as_object_mut().unwrap().extend(fields.as_object().expect("spec fields are an object").clone());
    serde_json::from_value(spec).expect("a valid spec")
}

/// `spec` changed by `change`.
pub fn with(spec: &OrgSpec, change: impl FnOnce(&mut OrgSpec)) -> OrgSpec {
    let mut spec = spec.clone();
    change(&mut spec);
    spec
}

/// Asserts that `provider` refuses `spec` before any call, naming `needle`.
pub fn assert_refused(provider: &dyn Provider, spec: &OrgSpec, needle: &str) {
    match provider.prepare(spec, &RequestId::parse("req-1").unwrap()) {
        Err(e) => assert!(e.to_string().contains(needle), "{e:?} does not name {needle:?}"),
        Ok(body) => panic!("{body} was accepted; expected a refusal naming {needle:?}"),
    }
}

/// An answer with `status` and `body`.
pub fn response(status: u16, body: &str) -> Response {
    Response::new(status, Default::default(), bytes::Bytes::from(body.to_owned()))
}

/// The text of `tests/fixtures/<path>` (a vendor's documented example).
pub fn fixture_text(path: &str) -> String {
    let path = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An answer with `status` and the body of `tests/fixtures/<path>`.
pub fn answer(status: u16, path: &str) -> Response {
    response(status, &fixture_text(path))
}

/// The JSON of `tests/fixtures/<path>`.
pub fn fixture(path: &str) -> Value {
    serde_json::from_str(&fixture_text(path)).expect("fixture is JSON")
}
