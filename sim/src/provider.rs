//! What every simulated provider shares, and the one place its faults are applied.
//!
//! A provider module implements [`SimulatedProvider`] with only its wire specifics: routes,
//! authentication, rate limit, validation, storage and error bodies. Everything else is here and
//! the same for all: [`Served::admit`] (authenticate, charge the rate limit, add latency) runs
//! before every API call, and [`create_with_faults`] runs every create through the fault
//! script or the random faults — scripted status, rate limited, hang, lost response, dropped
//! connection, late commit — so a fault means the same thing for each provider and only the
//! provider's answer to it differs.

// Validation and storage hand back the finished refusal; boxing it would buy nothing on a test
// server and cost readability.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::Value;

use crate::ScriptedFault;
use crate::faults::RateDecision;
use crate::state::SimState;
use crate::wire::{DropConnection, authorized, with_retry_after};

/// One provider's API as the simulator serves it. Implementations hold no organizations,
/// tokens or faults of their own: those live in [`SimState`], under [`Self::NAME`].
pub(crate) trait SimulatedProvider: Default + Send + Sync + 'static {
    /// Path prefix and state key, e.g. `auth0`.
    const NAME: &'static str;
    /// The status a lost response answers with: the organization is stored, a gateway gave up.
    const LOST_RESPONSE_STATUS: u16 = 504;
    /// The status a late commit answers with now, while the organization is stored later.
    const LATE_COMMIT_STATUS: u16 = 503;

    /// A create that passed validation and waits to be stored (a late commit stores it later).
    type Draft: Send + 'static;
    /// What charging a call to the rate limit found; answers may report it (Auth0's
    /// `x-ratelimit-*` headers).
    type Charge: Charge;

    /// The provider's routes under its prefix. `create` is [`create_with_faults`], to be
    /// mounted at the provider's create route.
    fn routes(create: MethodRouter<Arc<Served<Self>>>) -> Router<Arc<Served<Self>>>;

    /// Completes a seeded organization the way the provider would have stored it (e.g. an id).
    fn normalize_seed(org: Value) -> Value;

    /// Checks an API call's credentials; `Err` is the provider's 401 (or similar) answer.
    fn authenticate(&self, sim: &SimState, headers: &HeaderMap) -> Result<(), Response>;

    /// Charges one API call to the provider's rate limit.
    fn charge(&self, sim: &SimState) -> Self::Charge;

    /// The provider's 429 body, without any delay named.
    fn too_many_requests(&self) -> Response;

    /// The answer to a call over the rate limit.
    fn over_limit(&self, _sim: &SimState) -> Response {
        self.too_many_requests()
    }

    /// The answer to a scripted 429 (`RateLimited`, or a `Status` of 429) that names
    /// `retry_after_secs`, if anything; it may adjust what the answer reports of the limit.
    fn rate_limited(&self, retry_after_secs: Option<u64>, _charge: &mut Self::Charge) -> Response {
        with_retry_after(self.too_many_requests(), retry_after_secs)
    }

    /// Adds what every answer to an admitted or refused API call carries beyond `Date`.
    fn finish(&self, _response: &mut Response, _charge: &Self::Charge) {}

    /// Validates a create; `Err` is the provider's refusal.
    fn validate(&self, call: &CreateCall) -> Result<Self::Draft, Response>;

    /// Stores a validated create unless the provider's uniqueness rules refuse it; returns the
    /// organization as stored.
    fn store(&self, sim: &SimState, draft: Self::Draft) -> Result<Value, Response>;

    /// The answer to a successful create.
    fn created(&self, org: Value) -> Response {
        (StatusCode::CREATED, Json(org)).into_response()
    }

    /// The error the provider answers with `status` (a scripted `Status` fault, a lost response
    /// or a late commit). Never asked for 429, which is [`Self::rate_limited`].
    fn error_for_status(&self, status: u16) -> Response;
}

/// The outcome of charging a call to a rate limit.
pub(crate) trait Charge: Send + 'static {
    fn allowed(&self) -> bool;
}

impl Charge for bool {
    fn allowed(&self) -> bool {
        *self
    }
}

impl Charge for RateDecision {
    fn allowed(&self) -> bool {
        self.allowed
    }
}

/// A provider as one simulator serves it: its wire specifics and the shared state. The state of
/// every route of the provider.
pub(crate) struct Served<P> {
    pub(crate) sim: Arc<SimState>,
    pub(crate) provider: P,
}

/// The provider's router, with its create route running through [`create_with_faults`].
pub(crate) fn mount<P: SimulatedProvider>(sim: Arc<SimState>) -> Router {
    let served = Arc::new(Served { sim, provider: P::default() });
    P::routes(post(create_with_faults::<P>)).with_state(served)
}

impl<P: SimulatedProvider> Served<P> {
    /// Every API call passes here: it is authenticated, charged to the rate limit (refused calls
    /// included, as on a real tenant) and delayed by the configured latency. `Err` is the
    /// finished refusal.
    pub(crate) async fn admit(&self, headers: &HeaderMap) -> Result<P::Charge, Response> {
        let auth = self.provider.authenticate(&self.sim, headers);
        let charge = self.provider.charge(&self.sim);
        if !charge.allowed() {
            // Refused at the edge: no latency, no processing.
            let refusal = self.provider.over_limit(&self.sim);
            return Err(self.finish(refusal, &charge, auth.is_ok()));
        }
        let latency = self.sim.faults().latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match auth {
            Ok(()) => Ok(charge),
            Err(refusal) => Err(self.finish(refusal, &charge, false)),
        }
    }

    /// Answers an API call other than a create: admission, then `respond`.
    pub(crate) async fn call(&self, headers: &HeaderMap, respond: impl FnOnce(&SimState) -> Response) -> Response {
        match self.admit(headers).await {
            Ok(charge) => self.finish(respond(&self.sim), &charge, true),
            Err(refusal) => refusal,
        }
    }

    fn finish(&self, mut response: Response, charge: &P::Charge, authenticated: bool) -> Response {
        self.provider.finish(&mut response, charge);
        authorized(response, authenticated)
    }

    /// Normal processing of a create: validate, then store.
    fn commit(&self, call: &CreateCall) -> Response {
        match self.provider.validate(call).and_then(|draft| self.provider.store(&self.sim, draft)) {
            Ok(org) => self.provider.created(org),
            Err(refusal) => refusal,
        }
    }
}

/// A create call as received: path parameters (e.g. a tenant or template name), headers, body.
pub(crate) struct CreateCall {
    params: HashMap<String, String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl CreateCall {
    /// A path parameter of the create route; empty if the route has none by that name.
    pub(crate) fn param(&self, name: &str) -> &str {
        self.params.get(name).map_or("", String::as_str)
    }
}

/// The one create path of every provider: admission, then the fault for this call (the next
/// scripted one, else a random draw), then the provider's own answer to it.
async fn create_with_faults<P: SimulatedProvider>(
    State(served): State<Arc<Served<P>>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut charge = match served.admit(&headers).await {
        Ok(charge) => charge,
        Err(refusal) => return refusal,
    };
    let call = CreateCall { params, headers, body };
    let provider = &served.provider;
    // The fault is drawn only for admitted calls, so a script is not eaten by 401s/429s that a
    // client is expected to retry through.
    let response = match served.sim.next_create_fault(P::NAME) {
        None => served.commit(&call),
        Some(ScriptedFault::Hang { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            served.commit(&call)
        }
        Some(ScriptedFault::Status { status: 429 }) => provider.rate_limited(None, &mut charge),
        Some(ScriptedFault::Status { status }) => provider.error_for_status(status),
        Some(ScriptedFault::RateLimited { retry_after_secs }) => provider.rate_limited(retry_after_secs, &mut charge),
        Some(ScriptedFault::LostResponse) => {
            // The provider did its work (whatever the outcome); only the answer is lost.
            let _ = served.commit(&call);
            provider.error_for_status(P::LOST_RESPONSE_STATUS)
        }
        Some(ScriptedFault::DropConnection) => {
            let _ = served.commit(&call);
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(DropConnection);
            response
        }
        Some(ScriptedFault::LateCommit { delay_ms }) => {
            // A payload that would be refused is never stored; a valid one is stored later
            // unless its keys were taken meanwhile (then the late write simply loses).
            if let Ok(draft) = provider.validate(&call) {
                let late = served.clone();
                served.sim.spawn_delayed(Duration::from_millis(delay_ms), move || {
                    let _ = late.provider.store(&late.sim, draft);
                });
            }
            provider.error_for_status(P::LATE_COMMIT_STATUS)
        }
    };
    served.finish(response, &charge, true)
}
