//! orgprov-sim: an HTTP server that imitates identity providers' create-organization APIs, so
//! orgprov's tests and demo run against something with the real wire contract: tokens that
//! expire, validation errors, name conflicts, rate limits, and the failures that make creates
//! ambiguous (lost responses, dropped connections, late commits). Like the real providers it
//! ignores `Idempotency-Key`; only reconciliation by natural key makes a client correct here.
//!
//! It is a crate of its own because it is a tool, not part of the product: the worker uses it
//! as a dev-dependency and behind its default `simulator` feature (`orgprov simulate`,
//! `orgprov demo`), and a production build leaves it out. It knows nothing of the worker.
//! [`Simulator`] runs it in-process; the `orgprov-sim` binary and [`cli`] (feature `cli`) serve
//! it from the command line.
//!
//! Each provider is one module implementing `provider::SimulatedProvider` with its wire
//! specifics only (routes, token endpoint, validation, storage, error bodies, rate-limit
//! answer); admission and the faults of a create are shared (`provider`). Providers are
//! registered in `PROVIDERS`, one line each, and mounted under `/{provider}` so several share one
//! port. `/_sim/*` is an admin API (`admin`) for the command line and other processes; `state`
//! holds what the handlers share, `connection` the connections a fault can cut, `wire` the HTTP
//! details the providers share.

mod admin;
mod auth0;
mod biot;
#[cfg(feature = "cli")]
pub mod cli;
mod connection;
mod faults;
mod logto;
mod provider;
mod secureauth;
mod state;
mod stytch;
#[cfg(test)]
mod testing;
mod wire;

pub use faults::{Faults, RateLimit, ScriptedFault};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use connection::{ConnectionHandle, ConnectionRegistry, KillableListener};
use provider::SimulatedProvider;
use state::SimState;
use wire::{Authorized, DropConnection};

/// One simulated provider: its path prefix and how to build its routes.
struct ProviderSpec {
    name: &'static str,
    routes: fn(Arc<SimState>) -> Router,
    /// What a seeded organization gets unless the seed gives it (e.g. an id).
    seed_defaults: fn() -> Map<String, Value>,
}

impl ProviderSpec {
    const fn of<P: SimulatedProvider>() -> ProviderSpec {
        ProviderSpec { name: P::NAME, routes: provider::mount::<P>, seed_defaults: P::seed_defaults }
    }
}

/// The one place providers are registered. Adding a provider = one module + one line.
const PROVIDERS: &[ProviderSpec] = &[
    ProviderSpec::of::<auth0::Auth0>(),
    ProviderSpec::of::<biot::Biot>(),
    ProviderSpec::of::<logto::Logto>(),
    ProviderSpec::of::<secureauth::SecureAuth>(),
    ProviderSpec::of::<stytch::Stytch>(),
];

/// The names of the providers a simulator can serve, in registration order.
pub fn provider_names() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().map(|spec| spec.name)
}

fn provider_spec(name: &str) -> Option<&'static ProviderSpec> {
    PROVIDERS.iter().find(|spec| spec.name == name)
}

/// How long `shutdown` waits for in-flight connections before tearing the server down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Start-up settings of a simulator.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Providers to serve, e.g. `["auth0"]`; an unknown name makes `start` fail.
    pub providers: Vec<String>,
    /// Client credentials the token endpoints accept.
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of issued tokens; tokens stop working after it.
    pub token_ttl: Duration,
    pub faults: Faults,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            providers: vec!["auth0".to_owned()],
            client_id: "orgprov-sim".to_owned(),
            client_secret: "sim-secret".to_owned(),
            token_ttl: Duration::from_secs(86_400),
            faults: Faults::default(),
        }
    }
}

/// One request the simulator served, as seen on the wire.
#[derive(Clone, Debug, Serialize)]
pub struct RecordedRequest {
    /// The provider the path belongs to; empty for paths outside every provider.
    pub provider: String,
    pub method: String,
    /// Full request path including the provider prefix, without the query string.
    pub path: String,
    /// Status answered; 0 when the connection was dropped without any response.
    pub status: u16,
    /// Arrival time.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    /// The query string, if any (without the `?`).
    pub query: Option<String>,
    /// The `Idempotency-Key` the client sent (recorded, never honoured).
    pub idempotency_key: Option<String>,
    /// Every header as received (lower-case names, in order), except that `authorization`
    /// keeps only its scheme: `Bearer <redacted>`, `Basic <redacted>`.
    pub headers: Vec<(String, String)>,
    /// The request body as text (lossy UTF-8); empty when there was none.
    pub body: String,
    /// API calls: a currently valid bearer token was presented. Token calls: the client
    /// credentials were accepted.
    pub authorized: bool,
    /// When the answer was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub answered_at: time::OffsetDateTime,
    /// For a 429: the time it told the client to wait until (`Retry-After`, else
    /// `x-ratelimit-reset`), so tests can check no call came before it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub retry_at: Option<time::OffsetDateTime>,
}

/// The time a 429 names: `Retry-After` (seconds or HTTP date), else `x-ratelimit-reset`.
fn named_retry_time(response: &Response, answered_at: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
    if response.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = header("retry-after") {
        if let Ok(secs) = v.parse::<i64>() {
            return Some(answered_at + time::Duration::seconds(secs));
        }
        if let Ok(date) = httpdate::parse_http_date(v) {
            return Some(time::OffsetDateTime::from(date));
        }
    }
    let reset = header("x-ratelimit-reset")?.parse::<i64>().ok()?;
    time::OffsetDateTime::from_unix_timestamp(reset).ok()
}

/// A running simulator. Dropping it stops the server too; `shutdown` does so gracefully.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    connections: Arc<ConnectionRegistry>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Binds `addr` (port 0 picks a free port) and serves the configured providers on it.
    pub async fn start(addr: SocketAddr, config: SimulatorConfig) -> anyhow::Result<Simulator> {
        let mut names: Vec<String> = Vec::new();
        for name in &config.providers {
            if provider_spec(name).is_none() {
                let known: Vec<&str> = provider_names().collect();
                anyhow::bail!("unknown simulated provider {name:?} (known: {})", known.join(", "));
            }
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let state = Arc::new(SimState::new(&config, &names));

        let mut app = Router::new();
        for name in &names {
            if let Some(spec) = provider_spec(name) {
                app = app.nest(&format!("/{name}"), (spec.routes)(state.clone()));
            }
        }
        let app = app
            .nest("/_sim", admin::routes(state.clone()))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(state.clone(), record_request));

        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding simulator to {addr}"))?;
        let local = listener.local_addr().context("reading simulator's bound address")?;
        let connections = Arc::new(ConnectionRegistry::default());
        let listener = KillableListener { inner: listener, registry: connections.clone() };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service_with_connect_info::<ConnectionHandle>())
                .with_graceful_shutdown(async move {
                    // A dropped sender means the Simulator is gone: stop as well.
                    let _ = stop_rx.await;
                });
            if let Err(error) = serve.await {
                tracing::error!(%error, "simulator server stopped");
            }
        });
        tracing::info!(addr = %local, providers = ?names, "provider simulator listening");
        Ok(Simulator { addr: local, state, connections, stop: Some(stop_tx), server: Some(server) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a client should use for `provider`, e.g. `http://127.0.0.1:PORT/auth0`.
    /// A wildcard bind address is replaced by loopback, which is what a local client can dial.
    pub fn base_url(&self, provider: &str) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/{provider}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stored organizations of `provider` in creation order, in the shape its create call
    /// returned them (empty for an unknown provider).
    pub fn organizations(&self, provider: &str) -> Vec<Value> {
        self.state.with_provider(provider, |p| p.orgs.to_vec()).unwrap_or_default()
    }

    /// Every request served so far, in the order the responses were produced.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Replaces the fault settings of all providers from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// Queues deterministic outcomes for the next create calls of `provider`.
    pub fn push_script(&self, provider: &str, faults: Vec<ScriptedFault>) {
        if self.state.with_provider(provider, |p| p.script.extend(faults)).is_none() {
            tracing::warn!(provider, "script pushed for a provider this simulator does not serve");
        }
    }

    /// Seeds an organization as if someone else had created it (e.g. for conflict tests).
    pub fn insert_organization(&self, provider: &str, org: Value) {
        if self.state.insert_seed(provider, org).is_none() {
            tracing::warn!(provider, "organization seeded for a provider this simulator does not serve");
        }
    }

    /// Makes every token issued so far invalid, so the next API call answers 401.
    pub fn revoke_tokens(&self) {
        self.state.revoke_tokens();
    }

    /// Stops accepting connections, closes the open ones and waits briefly for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for every connection; a request hanging on a scripted fault
        // would hold it for its whole duration, so close them from underneath.
        self.connections.kill_all();
        self.state.abort_background();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err()
        {
            server.abort();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.connections.kill_all();
        self.state.abort_background();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording middleware
// ---------------------------------------------------------------------------------------------

/// Records every provider request and runs its handler on a detached task. Detaching matters:
/// a real provider keeps processing after the client gives up (timeout, dropped socket), so a
/// create whose client timed out must still commit and still be recorded.
async fn record_request(State(state): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/_sim" || path.starts_with("/_sim/") {
        // Admin calls are the observer, not the observed; recording them would pollute the log
        // that tests poll through `/_sim/requests`.
        return next.run(req).await;
    }
    let first_segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let provider = if state.is_provider(first_segment) { first_segment.to_owned() } else { String::new() };
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    let idempotency_key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let headers = recorded_headers(req.headers());
    let connection = req.extensions().get::<ConnectInfo<ConnectionHandle>>().map(|info| info.0.clone());
    let at = time::OffsetDateTime::now_utc();
    // Read the body for the log, then hand the handler an identical one.
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_RECORDED_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response(),
    };
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));

    let task_state = state.clone();
    let task = tokio::spawn(async move {
        let response = next.run(req).await;
        let dropped = response.extensions().get::<DropConnection>().is_some();
        if dropped {
            // Close before the response reaches hyper, so not a byte of it is written.
            match &connection {
                Some(conn) => conn.kill.kill(),
                None => tracing::warn!("cannot drop a connection without connection info"),
            }
        }
        let authorized = response.extensions().get::<Authorized>().is_some_and(|a| a.0);
        let status = if dropped { 0 } else { response.status().as_u16() };
        let peer = connection.as_ref().map(|conn| conn.remote);
        tracing::debug!(%provider, %method, %path, status, ?peer, "simulator served request");
        let answered_at = time::OffsetDateTime::now_utc();
        let retry_at = named_retry_time(&response, answered_at);
        task_state.record(RecordedRequest {
            provider,
            method,
            path,
            status,
            at,
            query,
            idempotency_key,
            headers,
            body,
            authorized,
            answered_at,
            retry_at,
        });
        response
    });
    match task.await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "simulator handler failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Bodies larger than this are refused (413); the providers' create bodies are a few KiB.
const MAX_RECORDED_BODY: usize = 1 << 20;

/// Headers for the request log, the credential of `authorization` replaced by `<redacted>`.
fn recorded_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let value = match (name == axum::http::header::AUTHORIZATION, value.split_once(' ')) {
                (true, Some((scheme, _))) => format!("{scheme} <redacted>"),
                (true, None) => "<redacted>".to_owned(),
                (false, _) => value,
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_provider_is_refused() {
        let config = SimulatorConfig { providers: vec!["okta".to_owned()], ..SimulatorConfig::default() };
        let result = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn base_url_uses_loopback_for_wildcard_bind() {
        let sim = Simulator::start(SocketAddr::from(([0, 0, 0, 0], 0)), SimulatorConfig::default())
            .await
            .expect("simulator starts");
        let port = sim.addr().port();
        assert_eq!(sim.base_url("auth0"), format!("http://127.0.0.1:{port}/auth0"));
        sim.shutdown().await;
    }
}
