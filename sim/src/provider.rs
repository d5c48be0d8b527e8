//! What every simulated provider shares, and the one place faults are applied.
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
use axum::routing::{MethodRouter, get, post};
use serde_json::{Map, Value};

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

    /// The fields a seeded organization gets unless the seed gives them: what the provider
    /// would have filled in (an id, documented defaults).
    fn seed_defaults() -> Map<String, Value>;

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

/// A `GET` route that looks one organization up by its last path parameter: admission, then
/// `answer(sim, key)`.
pub(crate) fn lookup<P: SimulatedProvider>(answer: fn(&SimState, &str) -> Response) -> MethodRouter<Arc<Served<P>>> {
    let handler = move |State(served): State<Arc<Served<P>>>,
                        Path(params): Path<Vec<(String, String)>>,
                        headers: HeaderMap| async move {
        let key = params.last().map_or("", |(_, value)| value.as_str());
        served.call(&headers, |sim| answer(sim, key)).await
    };
    get(handler)
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

/// What every provider shares, tested on all five through their [`Sample`] creates.
///
/// [`Sample`]: crate::testing::Sample
#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::testing::{Api, Sample, for_each_provider, json_of, raw_exchange, start};
    use crate::{Faults, Simulator};

    fn stored(sim: &Simulator, sample: &Sample) -> usize {
        sim.organizations(sample.provider).len()
    }

    fn post(api: &Api, name: &str) -> reqwest::RequestBuilder {
        api.request(reqwest::Method::POST, api.sample.create_path).json(&(api.sample.body)(name))
    }

    #[tokio::test]
    async fn idempotency_key_is_ignored() {
        for_each_provider(async |sample, sim, api| {
            let p = sample.provider;
            let send = async |name| post(api, name).header("Idempotency-Key", "same-key").send().await;
            assert_eq!(send("first").await.expect("create").status(), sample.created, "{p}");
            assert_eq!(send("second").await.expect("create").status(), sample.created, "{p}: key reused");
            // The same create again meets the provider's own rule, not a replay of the answer.
            assert_eq!(send("second").await.expect("create").status(), sample.again, "{p}");
            let expected = if sample.again == sample.created { 3 } else { 2 };
            assert_eq!(stored(sim, sample), expected, "{p}");
            let creates = sim.requests().into_iter().filter(|r| r.path.ends_with(sample.create_path));
            let keys: Vec<Option<String>> = creates.map(|r| r.idempotency_key).collect();
            assert_eq!(keys, vec![Some("same-key".to_owned()); 3], "{p}: keys are recorded");
        })
        .await;
    }

    #[tokio::test]
    async fn requests_are_recorded_with_body_query_and_headers_but_no_credential() {
        for_each_provider(async |sample, sim, api| {
            let p = sample.provider;
            let body = (sample.body)("recorded");
            let response = api
                .request(reqwest::Method::POST, sample.create_path)
                .query(&[("dry", "no")])
                .header("X-Extra", "1")
                .json(&body)
                .send()
                .await
                .expect("create");
            assert_eq!(response.status(), sample.created, "{p}");
            let create = sim.requests().into_iter().rfind(|r| r.path.ends_with(sample.create_path)).expect("recorded");
            assert_eq!(serde_json::from_str::<Value>(&create.body).ok(), Some(body), "{p}");
            assert_eq!(create.query.as_deref(), Some("dry=no"), "{p}");
            let header = |name: &str| create.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            assert_eq!(header("x-extra"), Some("1"), "{p}");
            let scheme = if p == "stytch" { "Basic <redacted>" } else { "Bearer <redacted>" };
            assert_eq!(header("authorization"), Some(scheme), "{p}: the credential is never recorded");
        })
        .await;
    }

    #[tokio::test]
    async fn a_lost_response_stores_then_answers_504() {
        for_each_provider(async |sample, sim, api| {
            sim.push_script(sample.provider, vec![ScriptedFault::LostResponse]);
            assert_eq!(api.create_named("lost").await.status(), 504, "{}", sample.provider);
            assert_eq!(stored(sim, sample), 1, "{}", sample.provider);
            // The script is consumed: the retry sees the real state of the tenant.
            assert_eq!(api.create_named("lost").await.status(), sample.again, "{}", sample.provider);
        })
        .await;
    }

    #[tokio::test]
    async fn a_dropped_connection_stores_and_sends_not_a_byte() {
        for_each_provider(async |sample, sim, api| {
            let p = sample.provider;
            sim.push_script(p, vec![ScriptedFault::DropConnection]);
            let started = Instant::now();
            let error = post(api, "dropped").send().await.expect_err("no HTTP response expected");
            assert!(!error.is_timeout(), "{p}: must fail fast, not time out: {error}");
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(stored(sim, sample), 1, "{p}");
            let recorded = sim.requests().into_iter().find(|r| r.path.ends_with(sample.create_path));
            assert_eq!(recorded.expect("the create is recorded").status, 0, "{p}");

            // On the wire: the connection ends without a single response byte.
            sim.push_script(p, vec![ScriptedFault::DropConnection]);
            let body = (sample.body)("dropped2").to_string();
            let request = format!(
                "POST /{p}{} HTTP/1.1\r\nHost: sim\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                sample.create_path,
                api.authorization(),
                body.len()
            );
            let received = raw_exchange(sim.addr(), request).await;
            assert!(received.is_empty(), "{p}: got {:?}", String::from_utf8_lossy(&received));
            assert_eq!(stored(sim, sample), 2, "{p}");

            // The server is unharmed: the next request on a new connection works.
            assert_eq!(api.create_named("after").await.status(), sample.created, "{p}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_late_commit_answers_at_once_and_stores_later() {
        for_each_provider(async |sample, sim, api| {
            let p = sample.provider;
            sim.push_script(p, vec![ScriptedFault::LateCommit { delay_ms: 200 }]);
            assert_eq!(api.create_named("late").await.status(), sample.late_commit, "{p}");
            assert_eq!(stored(sim, sample), 0, "{p}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(stored(sim, sample), 1, "{p}");

            // A payload the provider refuses is never stored, late or not.
            sim.push_script(p, vec![ScriptedFault::LateCommit { delay_ms: 50 }]);
            let _ = api.create(json!({})).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(stored(sim, sample), 1, "{p}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_hang_outlives_the_client_timeout_and_still_commits() {
        for_each_provider(async |sample, sim, api| {
            sim.push_script(sample.provider, vec![ScriptedFault::Hang { ms: 400 }]);
            let result = post(api, "slow").timeout(Duration::from_millis(100)).send().await;
            assert!(result.expect_err("client times out").is_timeout(), "{}", sample.provider);
            assert_eq!(stored(sim, sample), 0, "{}", sample.provider);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(stored(sim, sample), 1, "{}", sample.provider);
        })
        .await;
    }

    #[tokio::test]
    async fn scripted_rate_limits_and_statuses_store_nothing() {
        for_each_provider(async |sample, sim, api| {
            let p = sample.provider;
            let script = vec![
                ScriptedFault::RateLimited { retry_after_secs: Some(7) },
                ScriptedFault::Status { status: 429 },
                ScriptedFault::Status { status: 500 },
            ];
            sim.push_script(p, script);
            let limited = api.create_named("s1").await;
            assert_eq!(limited.status(), 429, "{p}");
            let named = limited.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_owned());
            assert_eq!(named, sample.names_retry_after.then(|| "7".to_owned()), "{p}");
            assert_eq!(api.create_named("s1").await.status(), 429, "{p}");
            assert_eq!(api.create_named("s1").await.status(), 500, "{p}");
            assert_eq!(stored(sim, sample), 0, "{p}");
            assert_eq!(api.create_named("s1").await.status(), sample.created, "{p}");

            sim.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
            assert_eq!(api.create_named("s2").await.status(), 503, "{p}");
            assert_eq!(stored(sim, sample), 1, "{p}");
        })
        .await;
    }

    #[tokio::test]
    async fn faults_are_drawn_only_for_admitted_calls() {
        for_each_provider(async |sample, sim, api| {
            sim.push_script(sample.provider, vec![ScriptedFault::LostResponse]);
            let anonymous = api.http.post(format!("{}{}", api.base, sample.create_path));
            let anonymous = anonymous.json(&(sample.body)("a")).send().await.expect("create");
            assert_eq!(anonymous.status(), 401, "{}", sample.provider);
            assert_eq!(api.create_named("a").await.status(), 504, "{}: the script waited", sample.provider);
        })
        .await;
    }

    #[tokio::test]
    async fn api_answers_carry_one_date_header() {
        for_each_provider(async |sample, sim, api| {
            let request = format!(
                "GET /{}{} HTTP/1.1\r\nHost: sim\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                sample.provider,
                sample.missing_path,
                api.authorization()
            );
            let received = String::from_utf8(raw_exchange(sim.addr(), request).await).expect("utf-8");
            assert!(received.starts_with("HTTP/1.1 404"), "{received}");
            let dates = received.lines().filter(|l| l.to_ascii_lowercase().starts_with("date:")).count();
            assert_eq!(dates, 1, "{received}");
        })
        .await;
    }

    /// Each provider answers a fault in its own documented error body: all of it where it has
    /// no generated parts, else the fields named.
    #[tokio::test]
    async fn fault_answers_carry_the_providers_error_bodies() {
        let late = ScriptedFault::LateCommit { delay_ms: 60_000 };
        let whole = |body: Value| (true, body);
        let fields = |body: Value| (false, body);
        let cases = [
            (
                "auth0",
                ScriptedFault::LostResponse,
                whole(json!({"statusCode": 504, "error": "Gateway Timeout", "message": "Request timed out"})),
            ),
            (
                "auth0",
                late.clone(),
                whole(json!({"statusCode": 503, "error": "Service Unavailable",
                             "message": "The service is temporarily unavailable"})),
            ),
            (
                "auth0",
                ScriptedFault::Status { status: 429 },
                whole(json!({"statusCode": 429, "error": "Too Many Requests",
                             "message": "Global limit has been reached", "errorCode": "too_many_requests"})),
            ),
            ("auth0", ScriptedFault::Status { status: 500 }, fields(json!({"statusCode": 500}))),
            ("biot", ScriptedFault::LostResponse, fields(json!({"code": "GATEWAY_TIMEOUT"}))),
            ("biot", late.clone(), fields(json!({"code": "GATEWAY_TIMEOUT"}))),
            ("biot", ScriptedFault::Status { status: 429 }, fields(json!({"code": "TOO_MANY_REQUESTS"}))),
            ("logto", late.clone(), whole(json!({"message": "Internal server error."}))),
            ("logto", ScriptedFault::LostResponse, whole(json!({"message": "Gateway timeout."}))),
            (
                "secureauth",
                ScriptedFault::LostResponse,
                whole(json!({"status_code": 504, "error": "upstream request timeout",
                             "error_code": "gateway_timeout", "details": null})),
            ),
            (
                "secureauth",
                ScriptedFault::Status { status: 429 },
                whole(json!({"status_code": 429, "error": "Too many requests",
                             "error_code": "too_many_requests", "details": null})),
            ),
            ("stytch", ScriptedFault::LostResponse, fields(json!({"status_code": 504}))),
            ("stytch", ScriptedFault::Status { status: 500 }, fields(json!({"error_type": "internal_server_error"}))),
        ];
        for (provider, fault, (exact, expected)) in cases {
            let (sim, api) = start(provider).await;
            sim.push_script(provider, vec![fault.clone()]);
            let body = json_of(api.create_named("x").await).await;
            if exact {
                assert_eq!(body, expected, "{provider} {fault:?}");
            }
            for (key, value) in expected.as_object().expect("object") {
                assert_eq!(&body[key], value, "{provider} {fault:?}: {key} in {body}");
            }
            sim.shutdown().await;
        }
    }
}
