//! Fault settings for the provider simulator: the random failure knobs (`Faults`), the
//! deterministic per-call script (`ScriptedFault`), and the tenant token bucket that backs the
//! simulated rate limit. Everything here is provider-neutral: `provider::create_with_faults`
//! applies a fault to a create, and each provider's `SimulatedProvider` says how it looks on its
//! wire (status, body, headers).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Random failure settings, applied to every provider of a running simulator.
///
/// `#[serde(default)]` lets a human `PUT /_sim/faults` with only the knobs they care about;
/// unknown fields are refused so a typo does not silently turn a fault off.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every API call (not token calls).
    pub latency_ms: u64,
    /// Plus a uniform random 0..jitter on top of `latency_ms`.
    pub latency_jitter_ms: u64,
    /// Probability that a create answers 503 and stores nothing.
    pub error_rate: f64,
    /// Probability that a create stores the organization and then answers 504.
    pub lost_response_rate: f64,
    /// Probability that a create answers 503 and the organization appears
    /// `late_commit_delay_ms` later.
    pub late_commit_rate: f64,
    pub late_commit_delay_ms: u64,
    /// Tenant-wide token bucket over the management API; `None` means unlimited.
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// One deterministic outcome for the next create call of a provider. Scripted entries take
/// precedence over the random `Faults`; each create call consumes one entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScriptedFault {
    /// Answer this status with the provider's error body; store nothing.
    Status { status: u16 },
    /// Store the organization, answer 504.
    LostResponse,
    /// Store the organization, then close the connection without any HTTP response.
    DropConnection,
    /// Answer 503 now, store the organization `delay_ms` later.
    LateCommit { delay_ms: u64 },
    /// Answer 429 now with the provider's rate-limit headers (plus `Retry-After` if given).
    RateLimited { retry_after_secs: Option<u64> },
    /// Wait `ms` before processing normally (to trigger client timeouts).
    Hang { ms: u64 },
}

impl Faults {
    /// The artificial latency for one API call: base plus uniform jitter.
    pub(crate) fn latency(&self) -> Duration {
        let jitter = if self.latency_jitter_ms > 0 { fastrand::u64(0..self.latency_jitter_ms) } else { 0 };
        Duration::from_millis(self.latency_ms.saturating_add(jitter))
    }

    /// Draws the random fault (if any) for one create call. One uniform draw is split into
    /// consecutive ranges so the three rates are mutually exclusive and add up as a human expects
    /// (0.1 + 0.1 means 20 % of creates fail, not slightly less).
    pub(crate) fn draw_create_fault(&self) -> Option<ScriptedFault> {
        let error = clamp_probability(self.error_rate);
        let lost = clamp_probability(self.lost_response_rate);
        let late = clamp_probability(self.late_commit_rate);
        if error + lost + late <= 0.0 {
            return None;
        }
        let roll = fastrand::f64();
        if roll < error {
            Some(ScriptedFault::Status { status: 503 })
        } else if roll < error + lost {
            Some(ScriptedFault::LostResponse)
        } else if roll < error + lost + late {
            Some(ScriptedFault::LateCommit { delay_ms: self.late_commit_delay_ms })
        } else {
            None
        }
    }
}

/// NaN or out-of-range rates from a hand-written admin request must not poison the draw.
fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// The `x-ratelimit-limit` reported when no rate limit is configured: real tenants always send
/// the headers, so clients that parse them must see plausible, never-exhausted values.
pub(crate) const UNLIMITED_LIMIT: u64 = 1000;

/// Refill rates at or below zero would mean "never refills"; a tiny positive floor keeps the
/// reset arithmetic finite while still behaving like a bucket that practically never refills.
const MIN_RATE_PER_SECOND: f64 = 0.001;

/// The outcome of charging one request to a bucket, in the terms providers report it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateDecision {
    pub allowed: bool,
    /// Bucket size.
    pub limit: u64,
    /// Whole requests left after this one.
    pub remaining: u64,
    /// UNIX epoch seconds (rounded up) at which the bucket is full again.
    pub reset_epoch: u64,
}

/// A tenant's token bucket. `config == None` means unlimited.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    config: Option<RateLimit>,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(config: Option<RateLimit>) -> Self {
        let tokens = config.map_or(0.0, |c| capacity(&c));
        TokenBucket { config, tokens, last: Instant::now() }
    }

    /// Applies new settings; an unchanged limit keeps its current fill level so a
    /// `set_faults` that only touches latency does not hand out a fresh burst.
    pub(crate) fn reconfigure(&mut self, config: Option<RateLimit>) {
        let same = match (&self.config, &config) {
            (None, None) => true,
            (Some(a), Some(b)) => a.burst == b.burst && a.per_second == b.per_second,
            _ => false,
        };
        if !same {
            *self = TokenBucket::new(config);
        }
    }

    /// Charges one request. `now_epoch` is the wall clock in (fractional) UNIX seconds, used
    /// only to express the reset time.
    pub(crate) fn take(&mut self, now: Instant, now_epoch: f64) -> RateDecision {
        let Some(config) = self.config else {
            return RateDecision {
                allowed: true,
                limit: UNLIMITED_LIMIT,
                remaining: UNLIMITED_LIMIT - 1,
                reset_epoch: now_epoch.ceil() as u64,
            };
        };
        let cap = capacity(&config);
        let rate = refill_rate(&config);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.last = now;
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        let until_full = (cap - self.tokens).max(0.0) / rate;
        RateDecision {
            allowed,
            limit: cap as u64,
            remaining: self.tokens.floor().max(0.0) as u64,
            reset_epoch: (now_epoch + until_full).ceil() as u64,
        }
    }
}

/// A zero burst would reject everything forever; treat it as a bucket of one.
fn capacity(config: &RateLimit) -> f64 {
    f64::from(config.burst.max(1))
}

fn refill_rate(config: &RateLimit) -> f64 {
    if config.per_second.is_finite() { config.per_second.max(MIN_RATE_PER_SECOND) } else { MIN_RATE_PER_SECOND }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_then_refills() {
        let mut bucket = TokenBucket::new(Some(RateLimit { per_second: 2.0, burst: 2 }));
        let start = Instant::now();
        let epoch = 1_000_000.0;
        let first = bucket.take(start, epoch);
        assert!(first.allowed);
        assert_eq!((first.limit, first.remaining), (2, 1));
        assert!(bucket.take(start, epoch).allowed);
        let third = bucket.take(start, epoch);
        assert!(!third.allowed);
        assert_eq!(third.remaining, 0);
        // Empty bucket at 2/s is full again one second later.
        assert_eq!(third.reset_epoch, 1_000_001);
        let later = bucket.take(start + Duration::from_millis(600), epoch + 0.6);
        assert!(later.allowed);
    }

    #[test]
    fn unlimited_bucket_always_allows() {
        let mut bucket = TokenBucket::new(None);
        for _ in 0..5000 {
            assert!(bucket.take(Instant::now(), 10.5).allowed);
        }
        assert_eq!(bucket.take(Instant::now(), 10.5).reset_epoch, 11);
    }

    #[test]
    fn scripted_fault_wire_format() {
        let parsed: Vec<ScriptedFault> = serde_json::from_str(
            r#"[{"kind":"status","status":500},{"kind":"lost_response"},
                {"kind":"late_commit","delay_ms":5},{"kind":"rate_limited","retry_after_secs":null},
                {"kind":"drop_connection"},{"kind":"hang","ms":1}]"#,
        )
        .expect("valid script");
        assert_eq!(parsed.len(), 6);
        let faults: Faults = serde_json::from_str(r#"{"error_rate":0.5}"#).expect("partial faults");
        assert_eq!(faults.error_rate, 0.5);
        assert!(serde_json::from_str::<Faults>(r#"{"eror_rate":0.5}"#).is_err());
    }

    #[test]
    fn certain_error_rate_always_fails() {
        let faults = Faults { error_rate: 1.0, ..Faults::default() };
        for _ in 0..100 {
            assert!(matches!(faults.draw_create_fault(), Some(ScriptedFault::Status { status: 503 })));
        }
        assert!(Faults::default().draw_create_fault().is_none());
    }
}
