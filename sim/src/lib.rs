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
//! Each provider is one module with a `routes(state) -> Router`, registered in `PROVIDERS` and
//! mounted under `/{provider}` so several providers share one port. `/_sim/*` is an admin API for
//! the command line and other processes.

mod auth0;
mod biot;
#[cfg(feature = "cli")]
pub mod cli;
mod faults;
mod logto;
mod secureauth;
mod stytch;

pub use faults::{Faults, RateLimit, ScriptedFault};

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::{IncomingStream, Listener};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};

use faults::{RateDecision, TokenBucket};

/// One simulated provider: its path prefix and how to build its routes.
struct ProviderSpec {
    name: &'static str,
    routes: fn(Arc<SimState>) -> Router,
    /// Completes a seeded organization the way the provider would have stored it (e.g. an id).
    normalize_seed: fn(Value) -> Value,
}

/// The one place providers are registered. Adding a provider = one module + one entry.
const PROVIDERS: &[ProviderSpec] = &[
    ProviderSpec { name: "auth0", routes: auth0::routes, normalize_seed: auth0::normalize_seed },
    ProviderSpec { name: "biot", routes: biot::routes, normalize_seed: biot::normalize_seed },
    ProviderSpec { name: "logto", routes: logto::routes, normalize_seed: logto::normalize_seed },
    ProviderSpec { name: "secureauth", routes: secureauth::routes, normalize_seed: secureauth::normalize_seed },
    ProviderSpec { name: "stytch", routes: stytch::routes, normalize_seed: stytch::normalize_seed },
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
    /// The `Idempotency-Key` the client sent (recorded, never honoured).
    pub idempotency_key: Option<String>,
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
            .nest("/_sim", admin_routes(state.clone()))
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
        self.state.with_provider(provider, |p| p.orgs.clone()).unwrap_or_default()
    }

    /// Every request served so far, in the order the responses were produced.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
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
// Shared state
// ---------------------------------------------------------------------------------------------

/// State shared by the handlers of all providers and the `Simulator` handle.
pub(crate) struct SimState {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) token_ttl: Duration,
    inner: Mutex<Inner>,
    /// Delayed work (late commits) that must not outlive the simulator.
    background: Mutex<Vec<AbortHandle>>,
}

struct Inner {
    faults: Faults,
    requests: Vec<RecordedRequest>,
    providers: HashMap<String, ProviderState>,
}

/// One provider's tenant: its data, its credentials and its rate-limit bucket.
pub(crate) struct ProviderState {
    /// Stored organizations in creation order, in the shape the create call returned.
    pub(crate) orgs: Vec<Value>,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    pub(crate) script: VecDeque<ScriptedFault>,
    bucket: TokenBucket,
}

pub(crate) struct IssuedToken {
    pub(crate) expires_at: Instant,
    pub(crate) revoked: bool,
}

/// What a presented bearer token turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenStatus {
    Valid,
    /// Issued by us but expired or revoked.
    Expired,
    Unknown,
}

impl SimState {
    fn new(config: &SimulatorConfig, providers: &[String]) -> Self {
        let providers = providers
            .iter()
            .map(|name| {
                let state = ProviderState {
                    orgs: Vec::new(),
                    tokens: HashMap::new(),
                    script: VecDeque::new(),
                    bucket: TokenBucket::new(config.faults.rate_limit),
                };
                (name.clone(), state)
            })
            .collect();
        SimState {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            token_ttl: config.token_ttl,
            inner: Mutex::new(Inner { faults: config.faults.clone(), requests: Vec::new(), providers }),
            background: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("simulator state poisoned")
    }

    fn is_provider(&self, name: &str) -> bool {
        self.lock().providers.contains_key(name)
    }

    /// Runs `f` on a provider's state under the lock; `None` if the provider is not served.
    pub(crate) fn with_provider<R>(&self, provider: &str, f: impl FnOnce(&mut ProviderState) -> R) -> Option<R> {
        self.lock().providers.get_mut(provider).map(f)
    }

    pub(crate) fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        for provider in inner.providers.values_mut() {
            provider.bucket.reconfigure(faults.rate_limit);
        }
        inner.faults = faults;
    }

    /// The fault for one create call: the next scripted entry, else a random draw.
    pub(crate) fn next_create_fault(&self, provider: &str) -> Option<ScriptedFault> {
        let mut inner = self.lock();
        let scripted = inner.providers.get_mut(provider).and_then(|p| p.script.pop_front());
        scripted.or_else(|| inner.faults.draw_create_fault())
    }

    /// Charges one management-API call to the provider's tenant bucket.
    pub(crate) fn take_rate_limit(&self, provider: &str) -> RateDecision {
        let now_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let now = Instant::now();
        self.with_provider(provider, |p| p.bucket.take(now, now_epoch))
            .unwrap_or_else(|| TokenBucket::new(None).take(now, now_epoch))
    }

    /// Issues a fresh opaque token for `provider` valid for the configured TTL.
    pub(crate) fn issue_token(&self, provider: &str) -> String {
        let token: String = std::iter::repeat_with(fastrand::alphanumeric).take(48).collect();
        let expires_at = Instant::now() + self.token_ttl;
        self.with_provider(provider, |p| {
            p.tokens.insert(token.clone(), IssuedToken { expires_at, revoked: false });
        });
        token
    }

    pub(crate) fn check_token(&self, provider: &str, token: &str) -> TokenStatus {
        let now = Instant::now();
        self.with_provider(provider, |p| match p.tokens.get(token) {
            None => TokenStatus::Unknown,
            Some(t) if t.revoked || t.expires_at <= now => TokenStatus::Expired,
            Some(_) => TokenStatus::Valid,
        })
        .unwrap_or(TokenStatus::Unknown)
    }

    fn revoke_tokens(&self) {
        let mut inner = self.lock();
        for provider in inner.providers.values_mut() {
            for token in provider.tokens.values_mut() {
                token.revoked = true;
            }
        }
    }

    fn insert_seed(&self, provider: &str, org: Value) -> Option<Value> {
        let spec = provider_spec(provider)?;
        let org = (spec.normalize_seed)(org);
        self.with_provider(provider, |p| {
            p.orgs.push(org.clone());
            org
        })
    }

    fn record(&self, request: RecordedRequest) {
        self.lock().requests.push(request);
    }

    /// Runs `work` after `delay` unless the simulator shuts down first.
    pub(crate) fn spawn_delayed(&self, delay: Duration, work: impl FnOnce() + Send + 'static) -> AbortHandle {
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            work();
        });
        let handle = task.abort_handle();
        let mut background = self.background.lock().expect("simulator state poisoned");
        background.retain(|h| !h.is_finished());
        background.push(handle.clone());
        handle
    }

    fn abort_background(&self) {
        let mut background = self.background.lock().expect("simulator state poisoned");
        for handle in background.drain(..) {
            handle.abort();
        }
    }
}

/// Response extension a provider handler sets to say whether the caller was authenticated;
/// the recording middleware copies it into [`RecordedRequest::authorized`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Authorized(pub(crate) bool);

/// Response extension a provider handler sets to have the connection closed with no response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

/// Current wall-clock seconds as an HTTP `Date` value.
pub(crate) fn http_date_now() -> String {
    httpdate::fmt_http_date(SystemTime::now())
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
    let idempotency_key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let connection = req.extensions().get::<ConnectInfo<ConnectionHandle>>().map(|info| info.0.clone());
    let at = time::OffsetDateTime::now_utc();

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
            idempotency_key,
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

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

// ---------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ProviderQuery {
    provider: String,
}

fn admin_routes(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/organizations", get(admin_organizations).post(admin_insert_organization))
        .route("/requests", get(admin_requests))
        .route("/faults", put(admin_set_faults).get(admin_get_faults))
        .route("/script", post(admin_push_script))
        .route("/revoke-tokens", post(admin_revoke_tokens))
        .with_state(state)
}

fn unknown_provider(provider: &str) -> Response {
    let body = serde_json::json!({ "error": format!("unknown provider {provider:?}") });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn admin_organizations(State(state): State<Arc<SimState>>, Query(query): Query<ProviderQuery>) -> Response {
    match state.with_provider(&query.provider, |p| p.orgs.clone()) {
        Some(orgs) => Json(orgs).into_response(),
        None => unknown_provider(&query.provider),
    }
}

async fn admin_insert_organization(
    State(state): State<Arc<SimState>>,
    Query(query): Query<ProviderQuery>,
    Json(org): Json<Value>,
) -> Response {
    match state.insert_seed(&query.provider, org) {
        Some(stored) => (StatusCode::CREATED, Json(stored)).into_response(),
        None => unknown_provider(&query.provider),
    }
}

async fn admin_requests(State(state): State<Arc<SimState>>) -> Response {
    Json(state.lock().requests.clone()).into_response()
}

async fn admin_get_faults(State(state): State<Arc<SimState>>) -> Response {
    Json(state.faults()).into_response()
}

async fn admin_set_faults(State(state): State<Arc<SimState>>, Json(faults): Json<Faults>) -> Response {
    state.set_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_push_script(
    State(state): State<Arc<SimState>>,
    Query(query): Query<ProviderQuery>,
    Json(script): Json<Vec<ScriptedFault>>,
) -> Response {
    match state.with_provider(&query.provider, |p| p.script.extend(script)) {
        Some(()) => StatusCode::NO_CONTENT.into_response(),
        None => unknown_provider(&query.provider),
    }
}

async fn admin_revoke_tokens(State(state): State<Arc<SimState>>) -> Response {
    state.revoke_tokens();
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------------
// Connections that can be cut without a response
// ---------------------------------------------------------------------------------------------
//
// axum gives handlers no way to abandon a connection, but it lets us choose the listener. Each
// accepted socket is wrapped in a `KillableStream` whose switch reaches the handler through
// `ConnectInfo`. Once the switch is thrown, every read and write fails, so hyper gives up on the
// connection and drops the socket before writing anything: the client sees the connection close
// with no HTTP response, exactly like a provider whose response was lost on the way.

/// Per-connection kill switch.
#[derive(Debug, Default)]
struct KillSwitch {
    killed: AtomicBool,
    /// Tasks parked on the socket; woken on kill so they notice promptly.
    wakers: Mutex<Vec<Waker>>,
}

impl KillSwitch {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().expect("simulator state poisoned"));
        for waker in wakers {
            waker.wake();
        }
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().expect("simulator state poisoned");
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection dropped by the simulator")
}

/// All live connections, so shutdown can close them.
#[derive(Debug, Default)]
struct ConnectionRegistry {
    live: Mutex<Vec<Weak<KillSwitch>>>,
}

impl ConnectionRegistry {
    fn add(&self, switch: &Arc<KillSwitch>) {
        let mut live = self.live.lock().expect("simulator state poisoned");
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(switch));
    }

    fn kill_all(&self) {
        let live = std::mem::take(&mut *self.live.lock().expect("simulator state poisoned"));
        for switch in live.iter().filter_map(Weak::upgrade) {
            switch.kill();
        }
    }
}

struct KillableListener {
    inner: TcpListener,
    registry: Arc<ConnectionRegistry>,
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, remote)) => {
                    // Small JSON exchanges: don't let Nagle add latency nobody configured.
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(KillSwitch::default());
                    self.registry.add(&kill);
                    return (KillableStream { inner: stream, kill }, remote);
                }
                Err(error) => {
                    // Same policy as axum's own TcpListener: per-connection failures are the
                    // client's problem; anything else (e.g. EMFILE) gets a pause before retrying.
                    if !matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(%error, "simulator accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

struct KillableStream {
    inner: TcpStream,
    kill: Arc<KillSwitch>,
}

impl KillableStream {
    /// Fails if killed; otherwise registers for a wake-up on kill. Checked again after
    /// registering so a kill racing with the registration is not missed.
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if self.kill.is_killed() {
            return Err(killed_error());
        }
        self.kill.register(cx.waker());
        if self.kill.is_killed() {
            return Err(killed_error());
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.kill.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Connection info handed to every request: the peer and the connection's kill switch.
#[derive(Clone, Debug)]
struct ConnectionHandle {
    remote: SocketAddr,
    kill: Arc<KillSwitch>,
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnectionHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnectionHandle { remote: *stream.remote_addr(), kill: stream.io().kill.clone() }
    }
}

/// Helpers shared by the provider modules' tests.
#[cfg(test)]
mod testing {
    use super::*;

    /// A simulator on a random loopback port serving `provider` only.
    pub async fn start_with(provider: &str, config: SimulatorConfig) -> Simulator {
        let config = SimulatorConfig { providers: vec![provider.to_owned()], ..config };
        Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.expect("simulator starts")
    }

    /// The HTTP client for the tests.
    pub fn client() -> reqwest::Client {
        // The workspace builds reqwest with `rustls-no-provider`, and building any Client (even
        // one that only speaks plain http) needs a process-wide crypto provider: ring, as in
        // orgprov. A second install fails harmlessly, so every test can call this.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client")
    }

    pub async fn json_of(response: reqwest::Response) -> Value {
        response.json().await.expect("json body")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> Simulator {
        Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), SimulatorConfig::default())
            .await
            .expect("simulator starts")
    }

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

    #[tokio::test]
    async fn admin_api_round_trip() {
        let sim = start().await;
        let client = testing::client();
        let root = format!("http://{}", sim.addr());

        let health = client.get(format!("{root}/_sim/health")).send().await.expect("health");
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.expect("body"), "ok");

        let put = client
            .put(format!("{root}/_sim/faults"))
            .json(&serde_json::json!({"latency_ms": 1, "rate_limit": {"per_second": 5.0, "burst": 7}}))
            .send()
            .await
            .expect("put faults");
        assert_eq!(put.status(), 204);
        let faults: Faults = client
            .get(format!("{root}/_sim/faults"))
            .send()
            .await
            .expect("get faults")
            .json()
            .await
            .expect("faults json");
        assert_eq!(faults.latency_ms, 1);
        assert_eq!(faults.rate_limit.map(|r| r.burst), Some(7));

        let seeded = client
            .post(format!("{root}/_sim/organizations"))
            .query(&[("provider", "auth0")])
            .json(&serde_json::json!({"name": "someone-else"}))
            .send()
            .await
            .expect("seed");
        assert_eq!(seeded.status(), 201);
        let orgs: Vec<Value> = client
            .get(format!("{root}/_sim/organizations"))
            .query(&[("provider", "auth0")])
            .send()
            .await
            .expect("orgs")
            .json()
            .await
            .expect("orgs json");
        assert_eq!(orgs.len(), 1);
        assert!(orgs[0]["id"].as_str().is_some_and(|id| id.starts_with("org_")));

        let unknown = client
            .get(format!("{root}/_sim/organizations"))
            .query(&[("provider", "nope")])
            .send()
            .await
            .expect("unknown provider");
        assert_eq!(unknown.status(), 404);

        let script = client
            .post(format!("{root}/_sim/script"))
            .query(&[("provider", "auth0")])
            .json(&serde_json::json!([{"kind": "status", "status": 500}]))
            .send()
            .await
            .expect("script");
        assert_eq!(script.status(), 204);
        assert_eq!(sim.state.with_provider("auth0", |p| p.script.len()), Some(1));

        let revoke = client.post(format!("{root}/_sim/revoke-tokens")).send().await.expect("revoke");
        assert_eq!(revoke.status(), 204);

        // A provider request shows up in the log; admin calls do not.
        let _ = client
            .get(format!("{}/api/v2/organizations/name/x", sim.base_url("auth0")))
            .header("Idempotency-Key", "k-1")
            .send()
            .await
            .expect("lookup");
        let requests: Vec<Value> = client
            .get(format!("{root}/_sim/requests"))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("requests json");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0]["provider"], "auth0");
        assert_eq!(requests[0]["path"], "/auth0/api/v2/organizations/name/x");
        assert_eq!(requests[0]["status"], 401);
        assert_eq!(requests[0]["idempotency_key"], "k-1");
        assert!(requests[0]["at"].as_str().is_some_and(|at| at.contains('T')));
        sim.shutdown().await;
    }
}
