//! Getting HTTP calls to an upstream politely: the per-target rate limiter, pauses named by the
//! upstream (`Retry-After`, `x-ratelimit-reset`), the retry delay policy, and the one place
//! where a transport failure is classified as "never sent" or "maybe sent".
//!
//! Server times (`Retry-After` dates, `x-ratelimit-reset` epochs) are turned into delays with
//! the response's own `Date` header and rounded up, so a skewed local clock cannot make us
//! call early.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;

use crate::config::{RateLimitSettings, RetrySettings, Target};

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
}

/// HTTP client for one target: rate limit, pause and timeouts live here.
pub struct Delivery {
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    paused_until: Mutex<Option<Instant>>,
    pub retry: RetryPolicy,
}

impl Delivery {
    pub fn new(target: &Target) -> anyhow::Result<Delivery> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(target.timeout)
            .connect_timeout(target.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(target.max_in_flight)
            .user_agent(concat!("orgprov/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Delivery {
            client,
            limiter: limiter(target.rate_limit),
            paused_until: Mutex::new(None),
            retry: RetryPolicy::from(target.retry),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends one call counted by the rate limit: waits for any pause the upstream named and
    /// for a rate-limit slot, then sends. A 429 pauses every later call of this target.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, SendError> {
        loop {
            let until = *self.paused_until.lock().expect("pause lock");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
        let response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| SendError::MaybeSent(format!("reading the body: {e}")))?;
        let response = Response { status, headers, body };
        if status == 429 {
            let wait = response.retry_after().unwrap_or(Duration::from_secs(1));
            self.pause_for(wait);
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

    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }
}

fn limiter(rate: RateLimitSettings) -> DefaultDirectRateLimiter {
    // One cell every 1/r seconds, with `burst` cells available at once.
    let period = Duration::from_secs_f64(1.0 / rate.per_second);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period).unwrap_or(Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
    RateLimiter::direct(quota)
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
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
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
