//! "Render once" (DESIGN.md §Semantics 2), shared by the worker, `orgprov plan` and `orgprov
//! bulk`: a decoded request and its template become the provider-neutral organization spec,
//! and the target's provider checks it against its documented rules and builds the create
//! body. The worker runs it at the first claim only and stores the result; `plan` and `bulk`
//! run the very same function offline, so a dry run and the worker can never disagree about
//! what is valid or what would be sent.
//!
//! Nothing here does I/O: the provider's `prepare` only looks at the spec.

use serde_json::{Value, json};

use crate::contract::{ErrorCode, EventError, ProvisionRequest};
use crate::providers::Provider;
use crate::store::{EarlyFailure, Prepared};
use crate::template::{OrgSpec, RenderError, Templates};

/// Everything the checks learned about a request: the rendered spec (when the template
/// rendered) and what the worker would do with it.
#[derive(Debug)]
pub struct Examined {
    /// The rendered organization, provider-neutral; `None` when the target or the template
    /// is unknown or the template could not be rendered.
    pub spec: Option<OrgSpec>,
    /// The stored form of the request, or why it fails before any HTTP call.
    pub outcome: Result<Prepared, EarlyFailure>,
}

/// Renders the template and builds the provider body: the "render once" step. `provider` is
/// the adapter of the request's target, `None` when the target is not configured.
pub fn prepare(
    request: &ProvisionRequest,
    provider: Option<&dyn Provider>,
    templates: &Templates,
) -> Result<Prepared, EarlyFailure> {
    examine(request, provider, templates).outcome
}

/// [`prepare`], keeping the rendered spec as well (for `orgprov plan`).
pub fn examine(request: &ProvisionRequest, provider: Option<&dyn Provider>, templates: &Templates) -> Examined {
    let m = &request.message;
    let Some(provider) = provider else {
        let failure = EarlyFailure {
            target: Some(m.target.clone()),
            provider: None,
            error: EventError {
                code: ErrorCode::UnknownTarget,
                message: format!("unknown target {:?}", m.target),
                upstream_status: None,
                details: None,
            },
        };
        return Examined { spec: None, outcome: Err(failure) };
    };
    let provider_name = provider.kind().as_str();
    let fail = |code, message: String, details: Option<Value>| EarlyFailure {
        target: Some(m.target.clone()),
        provider: Some(provider_name.to_owned()),
        error: EventError { code, message, upstream_status: None, details },
    };
    let spec = match templates.render(request, provider_name) {
        Ok(spec) => spec,
        Err(e @ RenderError::UnknownTemplate(_)) => {
            return Examined { spec: None, outcome: Err(fail(ErrorCode::UnknownTemplate, e.to_string(), None)) };
        }
        Err(e) => return Examined { spec: None, outcome: Err(fail(ErrorCode::InvalidRequest, e.to_string(), None)) },
    };
    let outcome = match provider.prepare(&spec, &request.request_id) {
        Ok(body) => Ok(Prepared {
            target: m.target.clone(),
            provider: provider_name.to_owned(),
            template: spec.template.clone(),
            template_version: spec.template_version.clone(),
            natural_key: provider.natural_key(&body),
            spec: serde_json::to_value(&spec).unwrap_or(Value::Null),
            body,
        }),
        Err(broken) => {
            Err(fail(ErrorCode::InvalidRequest, broken.to_string(), Some(json!({ "violations": broken.messages() }))))
        }
    };
    Examined { spec: Some(spec), outcome }
}

/// The broken rules of a failure from [`prepare`], one message each (a provider's
/// `violations`, else the one message).
pub fn violations(failure: &EarlyFailure) -> Vec<String> {
    let listed = failure.error.details.as_ref().and_then(|d| d.get("violations")).and_then(Value::as_array);
    match listed {
        Some(list) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        None => vec![failure.error.message.clone()],
    }
}
