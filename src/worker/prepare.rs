//! "Render once" (DESIGN.md §Semantics 2): the request and its template become the
//! provider-neutral organization spec, and the target's provider checks it against its
//! documented rules and builds the create body. Runs at the first claim only; the result is
//! stored and reused by every later attempt. Anything refused here fails the request before
//! any HTTP call.

use serde_json::Value;

use super::TargetRuntime;
use crate::contract::{ErrorCode, EventError, ProvisionRequest};
use crate::store::{EarlyFailure, Prepared};
use crate::template::{RenderError, Templates};

/// Renders the template and builds the provider body: the "render once" step.
pub(super) fn prepare(
    request: &ProvisionRequest,
    rt: Option<&TargetRuntime>,
    templates: &Templates,
) -> Result<Prepared, EarlyFailure> {
    let m = &request.message;
    let Some(rt) = rt else {
        return Err(EarlyFailure {
            target: Some(m.target.clone()),
            provider: None,
            error: EventError {
                code: ErrorCode::UnknownTarget,
                message: format!("unknown target {:?}", m.target),
                upstream_status: None,
                details: None,
            },
        });
    };
    let provider = rt.target.provider_name();
    let fail = |code, message: String| EarlyFailure {
        target: Some(m.target.clone()),
        provider: Some(provider.to_owned()),
        error: EventError { code, message, upstream_status: None, details: None },
    };
    let spec = templates.render(request, provider).map_err(|e| match e {
        RenderError::UnknownTemplate(_) => fail(ErrorCode::UnknownTemplate, e.to_string()),
        other => fail(ErrorCode::InvalidRequest, other.to_string()),
    })?;
    let body = rt.provider.prepare(&spec, &request.request_id).map_err(|e| fail(ErrorCode::InvalidRequest, e))?;
    Ok(Prepared {
        target: m.target.clone(),
        provider: provider.to_owned(),
        template: spec.template.clone(),
        template_version: spec.template_version.clone(),
        natural_key: rt.provider.natural_key(&body),
        spec: serde_json::to_value(&spec).unwrap_or(Value::Null),
        body,
    })
}
