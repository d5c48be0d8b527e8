//! "Render once" (DESIGN.md §Semantics 2) for the worker: the shared [`crate::prepare`] step,
//! given the adapter of the request's target. Runs at the first claim only; the result is
//! stored and reused by every later attempt. Anything refused here fails the request before
//! any HTTP call. `orgprov plan` and `orgprov bulk` call the same function.

use super::TargetRuntime;
use crate::contract::ProvisionRequest;
use crate::store::{EarlyFailure, Prepared};
use crate::template::Templates;

/// Renders the template and builds the provider body: the "render once" step.
pub(super) fn prepare(
    request: &ProvisionRequest,
    rt: Option<&TargetRuntime>,
    templates: &Templates,
) -> Result<Prepared, EarlyFailure> {
    crate::prepare::prepare(request, rt.map(|rt| &*rt.provider), templates)
}
