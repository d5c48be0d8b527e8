//! Getting HTTP calls to an upstream politely: admission through the per-target rate limit
//! and pause ([`Admission`], slots leased from the bucket every replica shares through
//! Postgres, see `store::PgSlots`), pauses named by
//! the upstream (`Retry-After`, `x-ratelimit-reset`), the retry delay policy, and the one
//! place where a transport failure is classified as "never sent" or "maybe sent".
//!
//! Server times (`Retry-After` dates, `x-ratelimit-reset` epochs) are turned into delays with
//! the response's own `Date` header and rounded up, so a skewed local clock cannot make us
//! call early.

mod admission;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

pub use admission::{Admission, LEASE_VALIDITY, Lease, Queued, SlotSource, Unlimited};

use crate::config::{RetrySettings, Target};

/// A response read whole (bodies of these APIs are small).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Response {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
    /// The upstream's delay request, if this response carries one.
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers, SystemTime::now())
    }
}

/// A call that got no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection was never made: the upstream cannot have seen the request.
    #[error("connection failed: {0}")]
    NotSent(String),
    /// The request may have reached the upstream (timeout, reset after sending).
    #[error("no response: {0}")]
    MaybeSent(String),
    /// The target's rate limit or pause holds calls for longer than a worker waits in place;
    /// nothing was sent.
    #[error("target is throttled for {0:?}")]
    Throttled(Duration),
}

/// HTTP client for one target: admission, pauses and timeouts live here.
pub struct Delivery {
    client: reqwest::Client,
    admission: Arc<Admission>,
    /// Longer admission waits are handed back to the caller as [`SendError::Throttled`].
    max_wait: Duration,
    pub retry: RetryPolicy,
}

tokio::task_local! {
    /// Set by [`admitted`]: the first counted call of the future it runs has its slot already.
    static ADMITTED: Cell<bool>;
}

/// Runs `call` (one provider call: a create or a lookup) whose first counted upstream request
/// already holds a slot of the target, taken by the caller before it recorded the call as
/// starting. Further requests of the same call (a resend after a 401, a further page of a
/// search) are admitted as usual.
pub async fn admitted<F: Future>(call: F) -> F::Output {
    ADMITTED.scope(Cell::new(true), call).await
}

impl Delivery {
    pub fn new<P>(target: &Target<P>, slots: Arc<dyn SlotSource>, max_wait: Duration) -> anyhow::Result<Delivery> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(target.timeout)
            .connect_timeout(target.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(target.max_in_flight)
            .user_agent(concat!("orgprov/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let admission = Arc::new(Admission::new(slots));
        Ok(Delivery { client, admission, max_wait, retry: RetryPolicy::from(target.retry) })
    }

    /// A delivery without any rate limit, for unit tests of provider code.
    #[cfg(test)]
    pub fn unlimited<P>(target: &Target<P>) -> Arc<Delivery> {
        Arc::new(Delivery::new(target, Arc::new(Unlimited), Duration::from_secs(1)).expect("test client builds"))
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The target's admission: the worker takes a slot before it records that a call
    /// starts, so waiting for the rate limit (or dying while waiting) never uses up an
    /// attempt, and runs the call under [`admitted`].
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Waits for admission (the upstream's pause and a slot of the rate limit) and takes a
    /// slot, unless the call runs under [`admitted`] and this is its first request. Waits
    /// longer than the in-place limit come back as [`SendError::Throttled`].
    pub async fn admit(&self) -> Result<(), SendError> {
        if ADMITTED.try_with(|first| first.replace(false)).unwrap_or(false) {
            return Ok(());
        }
        let queued = self.admission.queue();
        let mut waited = Duration::ZERO;
        loop {
            match queued.acquire().await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) if waited + wait > self.max_wait => return Err(SendError::Throttled(wait)),
                Ok(Some(wait)) => {
                    waited += wait;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(SendError::NotSent(format!("rate limiter unavailable: {e}"))),
            }
        }
    }

    /// Sends one call counted by the rate limit: [`Delivery::admit`], then
    /// [`Delivery::send_admitted`].
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, SendError> {
        self.admit().await?;
        self.send_admitted(request).await
    }

    /// Sends a counted call that holds its slot. A 429 pauses the target for every replica.
    pub async fn send_admitted(&self, request: reqwest::RequestBuilder) -> Result<Response, SendError> {
        let response = self.send_unlimited(request).await?;
        if response.status == 429 {
            let wait = response.retry_after().unwrap_or(Duration::from_secs(1));
            self.admission.pause(wait).await;
        }
        Ok(response)
    }

    /// Sends a call that does not count toward the management rate limit (token requests).
    pub async fn send_unlimited(&self, request: reqwest::RequestBuilder) -> Result<Response, SendError> {
        let response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| SendError::MaybeSent(format!("reading the body: {e}")))?;
        Ok(Response { status, headers, body })
    }
}

fn classify(e: reqwest::Error) -> SendError {
    // Only a failed connect proves the upstream never saw the request.
    let text = error_chain(&e);
    if e.is_connect() && !e.is_timeout() { SendError::NotSent(text) } else { SendError::MaybeSent(text) }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Capped exponential backoff with full jitter: attempt n waits uniformly in
/// `0..=min(cap, base * 2^n)`.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl From<RetrySettings> for RetryPolicy {
    fn from(s: RetrySettings) -> Self {
        RetryPolicy { base: Duration::from_millis(s.base_delay_ms), cap: Duration::from_millis(s.max_delay_ms) }
    }
}

impl RetryPolicy {
    /// The capped exponential schedule comes from backon (maintained; the successor the
    /// RustSec advisory against `backoff` points to). Its own jitter is additive (up to 2x),
    /// so full jitter is applied on top in [`RetryPolicy::delay`]. The step is indexed by the
    /// attempt number because attempts outlive a process: they are counted in Postgres.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        use backon::BackoffBuilder;
        let mut schedule = backon::ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let step = schedule.nth(attempt.min(64) as usize).unwrap_or(self.cap).min(self.cap);
        // backon multiplies in f32; whole milliseconds keep the schedule exact.
        Duration::from_millis(step.as_millis() as u64)
    }

    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut fastrand::Rng::new())
    }

    /// [`RetryPolicy::delay`] drawing from `rng` (seeded in tests).
    pub fn delay_with(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

/// The delay an upstream asked for: `Retry-After` (delta seconds or HTTP date), else Auth0's
/// `x-ratelimit-reset` (epoch seconds). Dates are read against the response's `Date` header
/// (server time), falling back to `local_now` when it is absent; results are rounded up to a
/// whole second.
pub fn retry_after(headers: &HeaderMap, local_now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let server_now = header("date").and_then(|d| httpdate::parse_http_date(d).ok()).unwrap_or(local_now);
    let until = |t: SystemTime| {
        let d = t.duration_since(server_now).unwrap_or_default();
        round_up(d)
    };
    if let Some(v) = header("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = httpdate::parse_http_date(v) {
            return Some(until(date));
        }
    }
    if let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()) {
        return Some(until(UNIX_EPOCH + Duration::from_secs(reset)));
    }
    None
}

fn round_up(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_seconds_and_dates_use_the_server_clock() {
        let server = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let local = server + Duration::from_secs(3600); // our clock runs an hour fast
        let date = httpdate::fmt_http_date(server);
        assert_eq!(retry_after(&headers(&[("retry-after", "7".into())]), local), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(server + Duration::from_secs(12));
        assert_eq!(
            retry_after(&headers(&[("date", date.clone()), ("retry-after", later)]), local),
            Some(Duration::from_secs(12))
        );
        let reset = (1_800_000_000u64 + 5).to_string();
        assert_eq!(
            retry_after(&headers(&[("date", date), ("x-ratelimit-reset", reset)]), local),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_after(&headers(&[]), local), None);
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(40), Duration::from_secs(2));
        for attempt in 0..10 {
            assert!(p.delay(attempt) <= p.ceiling(attempt));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| p.delay(5)).collect();
        assert!(spread.len() > 10, "delays must be jittered");
    }
}
