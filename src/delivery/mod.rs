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

/// A response read whole, up to the target's `max_response_bytes` (bodies of these APIs are
/// small; a larger one is [`SendError::TooLarge`] and is not kept).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// The delay the headers name, read once when the response arrives ([`named_delay`]).
    retry_after: Option<Duration>,
}

impl Response {
    /// A response; the delay its headers name is read here, once, and a header naming an
    /// unusable delay is logged here, once.
    pub fn new(status: u16, headers: HeaderMap, body: bytes::Bytes) -> Response {
        let retry_after = read_delay(status, &headers);
        Response { status, headers, body, retry_after }
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The upstream's delay request, if this response carries a usable one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// The delay `headers` name ([`named_delay`]), an unusable one logged and ignored.
fn read_delay(status: u16, headers: &HeaderMap) -> Option<Duration> {
    match named_delay(headers, SystemTime::now()) {
        Ok(delay) => delay,
        Err(Unusable { header, value, why }) => {
            tracing::warn!(status, header, value, why, "upstream named an unusable delay; ignoring it");
            None
        }
    }
}

/// A call that got no usable HTTP response.
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
    /// The upstream answered with a body larger than the target's `max_response_bytes`: not
    /// read past the cap, and as unusable as an unparseable answer. The delay the headers
    /// named, if any, is kept.
    #[error("answered {status} with a body over the {cap}-byte cap (max_response_bytes); not read")]
    TooLarge { status: u16, cap: usize, retry_after: Option<Duration> },
}

/// HTTP client for one target: admission, pauses and timeouts live here.
pub struct Delivery {
    client: reqwest::Client,
    admission: Arc<Admission>,
    /// Longer admission waits are handed back to the caller as [`SendError::Throttled`].
    max_wait: Duration,
    /// The target's `max_response_bytes`.
    max_body: usize,
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
        let max_body = target.max_response_bytes;
        Ok(Delivery { client, admission, max_wait, max_body, retry: RetryPolicy::from(target.retry) })
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
        let answer = self.send_unlimited(request).await;
        let paused = match &answer {
            Ok(response) if response.status == 429 => Some(response.retry_after()),
            Err(SendError::TooLarge { status: 429, retry_after, .. }) => Some(*retry_after),
            _ => None,
        };
        if let Some(wait) = paused {
            self.admission.pause(wait.unwrap_or(Duration::from_secs(1))).await;
        }
        answer
    }

    /// Sends a call that does not count toward the management rate limit (token requests).
    /// The body is read in chunks up to the target's `max_response_bytes`: an answer that
    /// announces (`Content-Length`) or sends more is dropped at the cap, so a hostile
    /// upstream cannot make the worker hold more than that per call.
    pub async fn send_unlimited(&self, request: reqwest::RequestBuilder) -> Result<Response, SendError> {
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let too_large = |headers: &HeaderMap| SendError::TooLarge {
            status,
            cap: self.max_body,
            retry_after: read_delay(status, headers),
        };
        if response.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large(&headers));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| SendError::MaybeSent(format!("reading the body: {}", error_chain(&e.without_url()))))?
        {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_large(&headers));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response::new(status, headers, body.freeze()))
    }
}

/// A failed call as a [`SendError`]. Its text goes into `attempts.error` and the public
/// `org.failed`, so it never names the URL (an internal host, a path with ids, credentials in
/// a query): the host and path are logged here, and only here.
fn classify(e: reqwest::Error) -> SendError {
    if let Some(url) = e.url() {
        tracing::warn!(host = url.host_str().unwrap_or_default(), path = url.path(), "upstream call failed");
    }
    // Only a failed connect proves the upstream never saw the request.
    let never_sent = e.is_connect() && !e.is_timeout();
    let text = error_chain(&e.without_url());
    if never_sent { SendError::NotSent(text) } else { SendError::MaybeSent(text) }
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

/// The longest delay an upstream can name and be believed. No provider asks for more (their
/// rate-limit windows are seconds to minutes); a longer one is a broken or hostile header, and
/// obeying it would pause the target for every replica (a year, for `Retry-After: 31536000`).
pub const MAX_NAMED_DELAY: Duration = Duration::from_secs(86_400);

/// How many bytes of an unusable header value a log line quotes.
const QUOTED_VALUE: usize = 64;

/// A header that names a delay we cannot use: not a number or date, or a delay past
/// [`MAX_NAMED_DELAY`] (including values no clock can represent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub header: &'static str,
    /// The first [`QUOTED_VALUE`] bytes of the value, as text.
    pub value: String,
    pub why: &'static str,
}

/// The delay an upstream asked for, without the logging: see [`named_delay`].
pub fn retry_after(headers: &HeaderMap, local_now: SystemTime) -> Option<Duration> {
    named_delay(headers, local_now).ok().flatten()
}

/// The delay an upstream asked for: `Retry-After` (delta seconds or HTTP date), else Auth0's
/// `x-ratelimit-reset` (epoch seconds). Dates are read against the response's `Date` header
/// (server time), falling back to `local_now` when it is absent or unreadable; results are
/// rounded up to a whole second.
///
/// Total over any header values: `Ok(None)` when no header names a delay, `Err` when one does
/// but none names a usable one (malformed, or longer than [`MAX_NAMED_DELAY`]). Either way the
/// caller goes on as if no delay were named (its own backoff schedule).
pub fn named_delay(headers: &HeaderMap, local_now: SystemTime) -> Result<Option<Duration>, Unusable> {
    let text = |name: &'static str| {
        headers.get(name).map(|v| match v.to_str() {
            Ok(t) => Ok(t.trim()),
            Err(_) => Err(unusable(name, &String::from_utf8_lossy(v.as_bytes()), "not visible ASCII")),
        })
    };
    let server_now = match text("date") {
        Some(Ok(d)) => httpdate::parse_http_date(d).unwrap_or(local_now),
        _ => local_now,
    };
    let until = |t: SystemTime| round_up(t.duration_since(server_now).unwrap_or_default());
    let mut first_unusable = None;
    if let Some(value) = text("retry-after") {
        let read = value.and_then(|v| {
            let delay = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                // Digits only, so the one failure is a number past u64.
                Duration::from_secs(v.parse::<u64>().map_err(|_| unusable("retry-after", v, "too large"))?)
            } else {
                let date = httpdate::parse_http_date(v)
                    .map_err(|_| unusable("retry-after", v, "neither delta seconds nor an HTTP date"))?;
                until(date)
            };
            believable("retry-after", v, delay)
        });
        match read {
            Ok(d) => return Ok(Some(d)),
            Err(e) => first_unusable = Some(e),
        }
    }
    if let Some(value) = text("x-ratelimit-reset") {
        let read = value.and_then(|v| {
            let secs = v.parse::<u64>().map_err(|_| unusable("x-ratelimit-reset", v, "not epoch seconds"))?;
            let at = UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .ok_or_else(|| unusable("x-ratelimit-reset", v, "past any representable time"))?;
            believable("x-ratelimit-reset", v, until(at))
        });
        match read {
            Ok(d) => return Ok(Some(d)),
            Err(e) => first_unusable = first_unusable.or(Some(e)),
        }
    }
    first_unusable.map_or(Ok(None), Err)
}

fn believable(header: &'static str, value: &str, delay: Duration) -> Result<Duration, Unusable> {
    if delay > MAX_NAMED_DELAY { Err(unusable(header, value, "longer than a day")) } else { Ok(delay) }
}

fn unusable(header: &'static str, value: &str, why: &'static str) -> Unusable {
    let mut end = value.len().min(QUOTED_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Unusable { header, value: value[..end].to_owned(), why }
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
    fn absurd_or_malformed_delays_are_ignored_never_obeyed_and_never_panic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let unusable = |pairs: &[(&'static str, String)]| named_delay(&headers(pairs), now).unwrap_err();
        // Past i64::MAX seconds: `UNIX_EPOCH + from_secs(reset)` used to panic the task.
        let e = unusable(&[("x-ratelimit-reset", u64::MAX.to_string())]);
        assert_eq!((e.header, e.why), ("x-ratelimit-reset", "past any representable time"));
        // A year's pause for every replica.
        assert_eq!(unusable(&[("retry-after", "31536000".into())]).why, "longer than a day");
        assert_eq!(unusable(&[("retry-after", "9".repeat(40))]).why, "too large");
        assert_eq!(unusable(&[("retry-after", "-5".into())]).header, "retry-after");
        assert_eq!(unusable(&[("retry-after", "1.5".into())]).header, "retry-after");
        assert_eq!(unusable(&[("x-ratelimit-reset", "soon".into())]).why, "not epoch seconds");
        // A server clock decades behind makes a reset "now" decades away.
        let ancient = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(86_400));
        let reset = 1_800_000_000u64.to_string();
        assert_eq!(unusable(&[("date", ancient), ("x-ratelimit-reset", reset.clone())]).why, "longer than a day");
        // A bad Retry-After does not hide a good reset; the limit itself is believed.
        let date = httpdate::fmt_http_date(now);
        let fine = [("date", date), ("retry-after", "later".into()), ("x-ratelimit-reset", reset)];
        assert_eq!(named_delay(&headers(&fine), now), Ok(Some(Duration::ZERO)));
        let day = MAX_NAMED_DELAY.as_secs().to_string();
        assert_eq!(named_delay(&headers(&[("retry-after", day)]), now), Ok(Some(MAX_NAMED_DELAY)));
        // Quoted values in the log are bounded.
        assert_eq!(unusable(&[("retry-after", "x".repeat(5000))]).value.len(), QUOTED_VALUE);
        // The response reads them once, as no delay at all.
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("18446744073709551615"));
        h.insert("retry-after", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(Response::new(429, h, bytes::Bytes::new()).retry_after(), None);
    }

    /// A one-answer HTTP server that writes `head` and then `body_len` bytes in 64 KiB
    /// chunks (chunked encoding unless `head` says otherwise), as a hostile upstream would.
    async fn upstream(head: &'static str, body_len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/orgs", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = socket.read(&mut [0u8; 4096]).await;
            let _ = socket.write_all(head.as_bytes()).await;
            let chunked = !head.contains("Content-Length");
            let mut left = body_len;
            while left > 0 {
                let n = left.min(64 << 10);
                let chunk = vec![b'x'; n];
                let framed =
                    if chunked { [format!("{n:x}\r\n").into_bytes(), chunk, b"\r\n".to_vec()].concat() } else { chunk };
                if socket.write_all(&framed).await.is_err() {
                    return; // the client stopped reading at its cap
                }
                left -= n;
            }
            if chunked {
                let _ = socket.write_all(b"0\r\n\r\n").await;
            }
        });
        url
    }

    fn capped_delivery(cap: usize) -> Delivery {
        let mut target = crate::config::Target::for_tests(());
        target.timeout = Duration::from_secs(5);
        target.max_response_bytes = cap;
        Delivery::new(&target, Arc::new(Unlimited), Duration::from_secs(1)).unwrap()
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_not_read_and_the_error_names_the_cap() {
        let delivery = capped_delivery(1 << 20);
        // 64 MiB sent chunked: reading stops at the cap.
        let url = upstream("HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n", 64 << 20).await;
        let e = delivery.send_unlimited(delivery.client().post(&url)).await.unwrap_err();
        assert!(matches!(e, SendError::TooLarge { status: 503, cap: 1_048_576, .. }), "{e:?}");
        assert_eq!(e.to_string(), "answered 503 with a body over the 1048576-byte cap (max_response_bytes); not read");
        // A Content-Length past the cap is refused before any of the body is read (this
        // server never sends it).
        let head = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 67108864\r\n\r\n";
        let url = upstream(head, 0).await;
        let e = tokio::time::timeout(Duration::from_secs(2), delivery.send_unlimited(delivery.client().get(&url)))
            .await
            .expect("refused without waiting for the body")
            .unwrap_err();
        let SendError::TooLarge { status: 429, retry_after, .. } = e else { panic!("{e:?}") };
        assert_eq!(retry_after, Some(Duration::from_secs(7)), "the named delay is kept");
        // Up to the cap is read whole.
        let url = upstream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1 << 20).await;
        let ok = delivery.send_unlimited(delivery.client().get(&url)).await.unwrap();
        assert_eq!((ok.status, ok.body.len()), (200, 1 << 20));
    }

    #[tokio::test]
    async fn transport_errors_do_not_name_the_url() {
        // Nothing listens on port 9 of the test target.
        let delivery = capped_delivery(1 << 20);
        let url = "http://127.0.0.1:9/internal/tenant-42/orgs?api_key=k3y";
        let e = delivery.send(delivery.client().post(url)).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SendError::NotSent(_)), "{e:?}");
        for leak in ["127.0.0.1", "internal", "tenant-42", "k3y", "http://"] {
            assert!(!text.contains(leak), "{text:?} names {leak}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Header values as a hostile upstream could send them: any bytes a header value may
        /// hold (no control bytes besides tab), and numbers of every size.
        fn value() -> impl Strategy<Value = HeaderValue> {
            let bytes = proptest::collection::vec(any::<u8>(), 0..48)
                .prop_map(|b| b.into_iter().filter(|c| *c == b'\t' || (*c >= 0x20 && *c != 0x7f)).collect::<Vec<_>>());
            let text = any::<String>().prop_map(|s| s.into_bytes());
            let number = any::<u64>().prop_map(|n| n.to_string().into_bytes());
            let date = (0u64..253_402_300_799)
                .prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)).into_bytes());
            prop_oneof![bytes, text, number, date]
                .prop_filter_map("a valid header value", |b| HeaderValue::from_bytes(&b).ok())
        }

        proptest! {
            #[test]
            fn every_header_combination_gives_a_bounded_delay_or_none(
                date in proptest::option::of(value()),
                retry in proptest::option::of(value()),
                reset in proptest::option::of(value()),
                local in 0u64..253_402_300_799,
            ) {
                let mut h = HeaderMap::new();
                for (name, v) in [("date", date), ("retry-after", retry), ("x-ratelimit-reset", reset)] {
                    if let Some(v) = v {
                        h.insert(name, v);
                    }
                }
                let now = UNIX_EPOCH + Duration::from_secs(local);
                if let Ok(Some(d)) = named_delay(&h, now) {
                    prop_assert!(d <= MAX_NAMED_DELAY);
                    // What the worker does with it may not overflow either.
                    let _ = std::time::Instant::now() + d;
                }
                let response = Response::new(429, h, bytes::Bytes::new());
                prop_assert!(response.retry_after().is_none_or(|d| d <= MAX_NAMED_DELAY));
            }

            #[test]
            fn delta_seconds_are_obeyed_up_to_a_day(secs in any::<u64>()) {
                let got = retry_after(&headers(&[("retry-after", secs.to_string())]), SystemTime::now());
                prop_assert_eq!(got, (secs <= MAX_NAMED_DELAY.as_secs()).then(|| Duration::from_secs(secs)));
            }
        }
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
