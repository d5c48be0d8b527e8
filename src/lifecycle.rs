//! The life of one request generation, decided without I/O.
//!
//! Shaped like `quinn-proto`: a [`Lifecycle`] is fed what happened — the claim's state, the
//! time, what admission said, each call's answer — and answers with the next [`Step`]: make a
//! call, wait in place, hand the message back with a delay, or settle with an [`Outcome`]. It
//! owns no socket, no database and no clock; the worker's driver (`worker::driver`) carries
//! the steps out against the store, the provider and the clock. DESIGN.md §Semantics 5 lives
//! here:
//!
//! - a create whose answer is not definitive (timeout, reset, 5xx, unparseable 2xx) makes the
//!   next call a lookup by natural key, never a blind create;
//! - a provider that cannot refuse duplicates gets its reconcile delay before that lookup;
//! - rate limiting (ours or the upstream's 429) delays a request without using its attempts;
//! - `exhausted` only when the attempts or the deadline ran out **and** nothing can exist
//!   upstream: every failure was definitive, or a final lookup found nothing.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::contract::{ErrorCode, EventError};
use crate::delivery::RetryPolicy;
use crate::providers::{CallError, Created, ErrorClass, Lookup};

/// The two upstream calls (`attempts.call`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Create,
    Lookup,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Create => "create",
            CallKind::Lookup => "lookup",
        }
    }
}

/// How one answered call ended, for the attempt history (`attempts.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A definitive answer: created, found, or found nothing.
    Ok,
    /// The natural key is taken: a lookup decides whose it is.
    Conflict,
    Ambiguous,
    Retryable,
    Throttled,
    /// Retrying cannot help; the text is the error code (`rejected`, `unauthorized`, ...).
    Permanent(ErrorCode),
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Conflict => "conflict",
            AttemptOutcome::Ambiguous => "ambiguous",
            AttemptOutcome::Retryable => "retryable",
            AttemptOutcome::Throttled => "throttled",
            AttemptOutcome::Permanent(code) => code.as_str(),
        }
    }

    fn of_error(e: &CallError) -> AttemptOutcome {
        match e.class {
            _ if is_throttling(e) => AttemptOutcome::Throttled,
            ErrorClass::Ambiguous => AttemptOutcome::Ambiguous,
            ErrorClass::Retryable | ErrorClass::Throttled => AttemptOutcome::Retryable,
            ErrorClass::Permanent(code) => AttemptOutcome::Permanent(code),
        }
    }
}

/// The final state of a generation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded { organization_id: String, created: bool },
    Failed { error: EventError },
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Make this call now: take admission, record it as started under the lease, send.
    Call(CallKind),
    /// Wait this long in place (holding the message), then ask [`Lifecycle::next`] again.
    Wait(Duration),
    /// Give the lease up and hand the message back to JetStream with this delay: a long wait
    /// must not hold a message (or a worker slot).
    HandBack(Duration),
    /// End the generation.
    Settle(Outcome),
}

/// What an answered call changes in the stored request, besides the next step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bookkeeping {
    /// Write the call to the attempt history with this outcome (`None`: it never reached
    /// the upstream).
    pub record: Option<AttemptOutcome>,
    /// The create never went out: give its attempt back and restore `needs_reconcile` to
    /// this value.
    pub refund: Option<bool>,
    /// A lookup found nothing: no earlier create of ours exists upstream.
    pub reconciled: bool,
    /// A retry after a failure (not a rate-limit wait) is scheduled.
    pub retry: bool,
}

/// The next step after an answered call, and what to write down first.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub book: Bookkeeping,
    pub step: Step,
}

/// The bounds a generation runs within.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Create attempts per generation (lookups and throttled calls do not count).
    pub max_attempts: i64,
    /// When the generation's retry time runs out.
    pub deadline: Instant,
    /// Longer waits hand the message back instead of holding it.
    pub max_inline_wait: Duration,
    /// How long after an ambiguous create a lookup may trust "absent"
    /// (`Provider::reconcile_delay`).
    pub reconcile_delay: Duration,
    pub retry: RetryPolicy,
}

/// One generation of one request, from its claim to its outcome.
pub struct Lifecycle {
    limits: Limits,
    /// What the organization is found by, for the `conflict` message.
    natural_key: String,
    attempts: i64,
    /// A create may have reached the upstream (ambiguous answer, or the key was taken):
    /// the next call must be a lookup.
    needs_reconcile: bool,
    /// Failures so far that were not rate limiting: the backoff step.
    failures: u32,
    /// When the last ambiguous create ended, in this process. A redelivery after a crash
    /// comes after the lease and the ack wait, which exceed any reconcile delay.
    ambiguous_at: Option<Instant>,
    rng: fastrand::Rng,
}

impl Lifecycle {
    /// Starts from a claim: its create attempts so far and whether it needs a lookup first.
    pub fn new(
        limits: Limits,
        natural_key: impl Into<String>,
        attempts: i64,
        needs_reconcile: bool,
        rng: fastrand::Rng,
    ) -> Lifecycle {
        Lifecycle {
            limits,
            natural_key: natural_key.into(),
            attempts,
            needs_reconcile,
            failures: 0,
            ambiguous_at: None,
            rng,
        }
    }

    /// Create attempts made so far (the `attempts` of the outcome event).
    pub fn attempts(&self) -> i64 {
        self.attempts
    }

    pub fn needs_reconcile(&self) -> bool {
        self.needs_reconcile
    }

    /// What to do now: create, look up first, wait out a reconcile delay, or give up.
    pub fn next(&mut self, now: Instant) -> Step {
        let out_of_time = now >= self.limits.deadline;
        if out_of_time && !self.needs_reconcile {
            let message = format!("gave up after {} create attempts: the retry deadline passed", self.attempts);
            return Step::Settle(failed(ErrorCode::Exhausted, message, None));
        }
        if !self.needs_reconcile && self.attempts < self.limits.max_attempts && !out_of_time {
            return Step::Call(CallKind::Create);
        }
        // A provider that cannot refuse duplicates lets a late create land first.
        let wait = self
            .ambiguous_at
            .map(|t| self.limits.reconcile_delay.saturating_sub(now.saturating_duration_since(t)))
            .unwrap_or_default();
        if wait.is_zero() { Step::Call(CallKind::Lookup) } else { self.hold(wait) }
    }

    /// Admission holds the call for `wait` (the target's rate limit or an upstream pause);
    /// nothing was sent.
    pub fn throttled(&self, wait: Duration) -> Step {
        self.hold(wait)
    }

    /// The call is recorded as started under the lease: a create counts from now.
    pub fn started(&mut self, call: CallKind) {
        if call == CallKind::Create {
            self.attempts += 1;
        }
    }

    /// A create was answered (or failed to be).
    pub fn create_answered(&mut self, result: &Result<Created, CallError>, now: Instant) -> Decision {
        let e = match result {
            Ok(Created::New { id, .. }) => {
                let outcome = Outcome::Succeeded { organization_id: id.clone(), created: true };
                return settle(Some(AttemptOutcome::Ok), outcome);
            }
            Ok(Created::Conflict { .. }) => {
                // The key is taken: the lookup decides whether it is ours.
                self.needs_reconcile = true;
                let step = self.next(now);
                return Decision { book: recorded(AttemptOutcome::Conflict), step };
            }
            Err(e) => e,
        };
        let mut book = Bookkeeping::default();
        if is_throttling(e) {
            // Never sent, or refused for the rate limit: not an attempt, nothing to reconcile.
            self.attempts -= 1;
            book.refund = Some(self.needs_reconcile);
            book.record = e.status.map(|_| AttemptOutcome::Throttled);
        } else {
            if e.class == ErrorClass::Ambiguous {
                self.needs_reconcile = true;
                self.ambiguous_at = Some(now);
            }
            book.record = Some(AttemptOutcome::of_error(e));
        }
        self.after_failure(book, e, now)
    }

    /// A lookup was answered (or failed to be).
    pub fn lookup_answered(&mut self, result: &Result<Lookup, CallError>, now: Instant) -> Decision {
        let e = match result {
            Ok(Lookup::Ours { id }) => {
                let outcome = Outcome::Succeeded { organization_id: id.clone(), created: false };
                return settle(Some(AttemptOutcome::Ok), outcome);
            }
            Ok(Lookup::NotOurs { id }) => {
                let message = format!(
                    "organization {:?} already exists upstream (id {id}) and is not owned by this request",
                    self.natural_key
                );
                let error = EventError {
                    code: ErrorCode::Conflict,
                    message,
                    upstream_status: Some(409),
                    details: Some(json!({ "organization_id": id })),
                };
                return settle(Some(AttemptOutcome::Ok), Outcome::Failed { error });
            }
            Ok(Lookup::Absent) => {
                self.needs_reconcile = false;
                let book = Bookkeeping { reconciled: true, ..recorded(AttemptOutcome::Ok) };
                if self.attempts >= self.limits.max_attempts || now >= self.limits.deadline {
                    let message = format!(
                        "gave up after {} create attempts; a final lookup found no organization",
                        self.attempts
                    );
                    return Decision { book, step: Step::Settle(failed(ErrorCode::Exhausted, message, None)) };
                }
                return Decision { book, step: self.next(now) };
            }
            Err(e) => e,
        };
        // Lookups change nothing upstream: their failures never call for a reconcile, and an
        // answered 429 stays in the history.
        let record = if is_throttling(e) {
            e.status.map(|_| AttemptOutcome::Throttled)
        } else {
            Some(AttemptOutcome::of_error(e))
        };
        self.after_failure(Bookkeeping { record, ..Bookkeeping::default() }, e, now)
    }

    /// After a failed call: settle a permanent failure, give up when nothing can exist
    /// upstream and the attempts or the time ran out, else wait (in place or handed back).
    fn after_failure(&mut self, mut book: Bookkeeping, e: &CallError, now: Instant) -> Decision {
        if let ErrorClass::Permanent(code) = e.class {
            return Decision { book, step: Step::Settle(failed(code, e.message.clone(), Some(e))) };
        }
        let out = self.attempts >= self.limits.max_attempts || now >= self.limits.deadline;
        if out && !self.needs_reconcile {
            // Nothing can have been created by calls that failed definitively.
            let message = format!("gave up after {} create attempts; last error: {}", self.attempts, e.message);
            return Decision { book, step: Step::Settle(failed(ErrorCode::Exhausted, message, Some(e))) };
        }
        let delay = if is_throttling(e) {
            e.retry_after.unwrap_or(Duration::from_secs(1))
        } else {
            self.failures += 1;
            book.retry = true;
            match e.retry_after {
                Some(d) => d,
                None => self.limits.retry.delay_with(self.failures, &mut self.rng),
            }
        };
        Decision { book, step: self.hold(delay) }
    }

    fn hold(&self, wait: Duration) -> Step {
        if wait > self.limits.max_inline_wait { Step::HandBack(wait) } else { Step::Wait(wait) }
    }
}

/// Rate limiting (ours, or the upstream's 429) delays a request; it does not use up its
/// attempts.
pub fn is_throttling(e: &CallError) -> bool {
    e.class == ErrorClass::Throttled || (e.class == ErrorClass::Retryable && e.status == Some(429))
}

fn recorded(outcome: AttemptOutcome) -> Bookkeeping {
    Bookkeeping { record: Some(outcome), ..Bookkeeping::default() }
}

fn settle(record: Option<AttemptOutcome>, outcome: Outcome) -> Decision {
    Decision { book: Bookkeeping { record, ..Bookkeeping::default() }, step: Step::Settle(outcome) }
}

fn failed(code: ErrorCode, message: String, e: Option<&CallError>) -> Outcome {
    Outcome::Failed {
        error: EventError {
            code,
            message,
            upstream_status: e.and_then(|e| e.status),
            details: e.and_then(|e| e.details.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i64 = 3;
    const INLINE: Duration = Duration::from_secs(5);

    fn lifecycle(now: Instant, attempts: i64, needs_reconcile: bool, deadline_passed: bool) -> Lifecycle {
        let deadline = if deadline_passed { now - Duration::from_secs(1) } else { now + Duration::from_secs(60) };
        let limits = Limits {
            max_attempts: MAX,
            deadline,
            max_inline_wait: INLINE,
            reconcile_delay: Duration::ZERO,
            retry: RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1) },
        };
        Lifecycle::new(limits, "acme", attempts, needs_reconcile, fastrand::Rng::with_seed(7))
    }

    fn error(class: ErrorClass) -> CallError {
        match class {
            // What the delivery layer reports: an upstream 429 naming 2 s.
            ErrorClass::Throttled => CallError {
                retry_after: Some(Duration::from_secs(2)),
                ..CallError::new(ErrorClass::Retryable, Some(429), "429")
            },
            ErrorClass::Permanent(_) => CallError::new(class, Some(400), "bad request"),
            ErrorClass::Ambiguous => CallError::new(class, Some(503), "unavailable"),
            ErrorClass::Retryable => CallError::new(class, None, "connection refused"),
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Expect {
        /// Settled as failed with this code.
        Fails(ErrorCode),
        /// Waits in place for a backoff step (0..=ceiling).
        Backoff,
        /// Waits in place exactly the 2 s the 429 named.
        Named,
    }

    use CallKind::{Create, Lookup as Look};
    use ErrorClass::{Ambiguous, Permanent, Retryable, Throttled};
    use Expect::{Backoff, Fails, Named};
    const EXHAUSTED: Expect = Fails(ErrorCode::Exhausted);
    const REJECTED: Expect = Fails(ErrorCode::Rejected);
    const PERM: ErrorClass = Permanent(ErrorCode::Rejected);

    /// A row: under the attempt cap; before the deadline; a reconcile pending; the call made
    /// (none when the deadline alone ends the generation); what follows that call's failure
    /// for each error class, in the order of [`CLASSES`].
    type Row = (bool, bool, bool, Option<CallKind>, [Expect; 4]);

    const CLASSES: [ErrorClass; 4] = [Ambiguous, Retryable, Throttled, PERM];

    /// Every error class × under/over the attempt cap × before/after the deadline ×
    /// with/without a pending reconcile: 32 cases.
    #[rustfmt::skip]
    const TABLE: &[Row] = &[
        // under before pending  call          ambiguous  retryable  throttled  permanent
        (true,  true,  false,    Some(Create), [Backoff,   Backoff,   Named,     REJECTED]), // throttled: refunded
        (false, true,  false,    Some(Look),   [EXHAUSTED, EXHAUSTED, EXHAUSTED, REJECTED]), // the final lookup failed definitively
        (true,  false, false,    None,         [EXHAUSTED; 4]),                              // deadline, nothing to reconcile
        (false, false, false,    None,         [EXHAUSTED; 4]),
        (true,  true,  true,     Some(Look),   [Backoff,   Backoff,   Named,     REJECTED]), // a pending reconcile never
        (false, true,  true,     Some(Look),   [Backoff,   Backoff,   Named,     REJECTED]), //   gives up without a lookup
        (true,  false, true,     Some(Look),   [Backoff,   Backoff,   Named,     REJECTED]),
        (false, false, true,     Some(Look),   [Backoff,   Backoff,   Named,     REJECTED]),
    ];

    #[test]
    fn every_error_class_by_cap_deadline_and_reconcile() {
        let cases = TABLE.iter().flat_map(|&(under, before, pending, call, expects)| {
            CLASSES.into_iter().zip(expects).map(move |(class, expect)| (class, under, before, pending, call, expect))
        });
        assert_eq!(cases.clone().count(), 32);
        let ceiling = Duration::from_secs(1);
        for (class, under, before, pending, call, expect) in cases {
            let case = format!("{class:?} under={under} before={before} pending={pending}");
            let now = Instant::now();
            let attempts = if under { 1 } else { MAX };
            let mut l = lifecycle(now, attempts, pending, !before);
            let step = l.next(now);
            let Some(kind) = call else {
                let exhausted =
                    matches!(&step, Step::Settle(Outcome::Failed { error }) if error.code == ErrorCode::Exhausted);
                assert!(exhausted, "{case}: {step:?}");
                assert_eq!(expect, EXHAUSTED, "{case}");
                continue;
            };
            assert_eq!(step, Step::Call(kind), "{case}");
            l.started(kind);
            let e = error(class);
            let d = match kind {
                Create => l.create_answered(&Err(e.clone()), now),
                Look => l.lookup_answered(&Err(e.clone()), now),
            };
            match (expect, &d.step) {
                (Fails(code), Step::Settle(Outcome::Failed { error })) => assert_eq!(error.code, code, "{case}"),
                (Backoff, Step::Wait(w)) => assert!(*w <= ceiling, "{case}: {w:?}"),
                (Named, Step::Wait(w)) => assert_eq!(*w, Duration::from_secs(2), "{case}"),
                (expect, step) => panic!("{case}: expected {expect:?}, got {step:?}"),
            }
            // Throttled calls never use up an attempt; other creates do.
            let used = i64::from(kind == Create && class != Throttled);
            assert_eq!(l.attempts(), attempts + used, "{case}");
            // An ambiguous create makes the next call a lookup.
            if kind == Create && class == Ambiguous {
                assert_eq!(l.next(now), Step::Call(Look), "{case}");
            }
        }
    }

    #[test]
    fn bookkeeping_of_each_answer() {
        let now = Instant::now();
        let mut l = lifecycle(now, 0, false, false);
        l.started(Create);
        // A throttled create that was never answered: refunded, not recorded.
        let throttled = CallError { retry_after: Some(Duration::from_secs(1)), ..CallError::new(Throttled, None, "t") };
        let d = l.create_answered(&Err(throttled), now);
        assert_eq!(d.book, Bookkeeping { refund: Some(false), ..Bookkeeping::default() });
        assert_eq!(d.step, Step::Wait(Duration::from_secs(1)));
        assert_eq!(l.attempts(), 0);
        // An answered 429 is refunded and recorded.
        l.started(Create);
        let d = l.create_answered(&Err(error(Throttled)), now);
        assert_eq!(d.book.record, Some(AttemptOutcome::Throttled));
        assert_eq!(d.book.refund, Some(false));
        // A 5xx is recorded as ambiguous and schedules a retry; the next call is a lookup.
        l.started(Create);
        let d = l.create_answered(&Err(error(Ambiguous)), now);
        assert_eq!(d.book, Bookkeeping { record: Some(AttemptOutcome::Ambiguous), retry: true, ..Default::default() });
        assert_eq!(l.next(now), Step::Call(Look));
        // The lookup finds nothing: reconciled, and a create follows at once.
        l.started(Look);
        let d = l.lookup_answered(&Ok(Lookup::Absent), now);
        assert_eq!(d.book, Bookkeeping { record: Some(AttemptOutcome::Ok), reconciled: true, ..Default::default() });
        assert_eq!(d.step, Step::Call(Create));
        // The name is taken: recorded as a conflict, then a lookup decides.
        l.started(Create);
        let d = l.create_answered(&Ok(Created::Conflict { status: 409 }), now);
        assert_eq!(d.book.record, Some(AttemptOutcome::Conflict));
        assert_eq!(d.step, Step::Call(Look));
        l.started(Look);
        let d = l.lookup_answered(&Ok(Lookup::Ours { id: "org_1".into() }), now);
        assert_eq!(d.step, Step::Settle(Outcome::Succeeded { organization_id: "org_1".into(), created: false }));
        assert_eq!(l.attempts(), 2, "the two creates that were sent");
    }

    #[test]
    fn a_create_answered_with_an_id_succeeds_and_someone_elses_organization_is_a_conflict() {
        let now = Instant::now();
        let mut l = lifecycle(now, 0, false, false);
        l.started(Create);
        let d = l.create_answered(&Ok(Created::New { id: "org_9".into(), status: 201 }), now);
        assert_eq!(d.step, Step::Settle(Outcome::Succeeded { organization_id: "org_9".into(), created: true }));
        assert_eq!(d.book.record, Some(AttemptOutcome::Ok));

        let mut l = lifecycle(now, 1, true, false);
        let d = l.lookup_answered(&Ok(Lookup::NotOurs { id: "org_x".into() }), now);
        let Step::Settle(Outcome::Failed { error }) = d.step else { panic!("{:?}", d.step) };
        assert_eq!((error.code, error.upstream_status), (ErrorCode::Conflict, Some(409)));
        assert!(error.message.contains("\"acme\"") && error.message.contains("org_x"), "{}", error.message);
    }

    #[test]
    fn exhausted_only_after_a_final_lookup_found_nothing_when_a_create_may_exist() {
        let now = Instant::now();
        let mut l = lifecycle(now, MAX - 1, false, false);
        l.started(Create);
        let d = l.create_answered(&Err(error(Ambiguous)), now);
        assert!(matches!(d.step, Step::Wait(_)), "no giving up while a create may exist: {:?}", d.step);
        assert_eq!(l.next(now), Step::Call(Look));
        l.started(Look);
        let d = l.lookup_answered(&Ok(Lookup::Absent), now);
        let Step::Settle(Outcome::Failed { error }) = d.step else { panic!("{:?}", d.step) };
        assert_eq!(error.code, ErrorCode::Exhausted);
        assert!(error.message.contains("final lookup found no organization"), "{}", error.message);
        assert!(d.book.reconciled);
    }

    #[test]
    fn the_last_error_is_kept_when_definitive_failures_use_up_the_attempts() {
        let now = Instant::now();
        let mut l = lifecycle(now, MAX - 1, false, false);
        l.started(Create);
        let mut e = error(Retryable);
        e.status = Some(502);
        e.class = Retryable;
        let d = l.create_answered(&Err(e), now);
        let Step::Settle(Outcome::Failed { error }) = d.step else { panic!("{:?}", d.step) };
        assert_eq!((error.code, error.upstream_status), (ErrorCode::Exhausted, Some(502)));
        assert!(error.message.contains("last error: connection refused"), "{}", error.message);
    }

    #[test]
    fn the_reconcile_delay_is_waited_out_before_the_lookup() {
        let now = Instant::now();
        let mut l = lifecycle(now, 0, false, false);
        l.limits.reconcile_delay = Duration::from_secs(3);
        l.started(Create);
        l.create_answered(&Err(error(Ambiguous)), now);
        assert_eq!(l.next(now), Step::Wait(Duration::from_secs(3)));
        assert_eq!(l.next(now + Duration::from_secs(2)), Step::Wait(Duration::from_secs(1)));
        assert_eq!(l.next(now + Duration::from_secs(3)), Step::Call(Look));
        // A delay longer than a worker holds a message hands it back.
        l.limits.reconcile_delay = Duration::from_secs(11);
        assert_eq!(l.next(now), Step::HandBack(Duration::from_secs(11)));
        // A 409 is not ambiguous: no delay before its lookup.
        let mut l = lifecycle(now, 0, false, false);
        l.limits.reconcile_delay = Duration::from_secs(3);
        l.started(Create);
        let d = l.create_answered(&Ok(Created::Conflict { status: 409 }), now);
        assert_eq!(d.step, Step::Call(Look));
    }

    #[test]
    fn long_waits_hand_the_message_back() {
        let now = Instant::now();
        let l = lifecycle(now, 0, false, false);
        assert_eq!(l.throttled(Duration::from_secs(1)), Step::Wait(Duration::from_secs(1)));
        assert_eq!(l.throttled(INLINE + Duration::from_millis(1)), Step::HandBack(INLINE + Duration::from_millis(1)));
        let mut l = lifecycle(now, 0, false, false);
        l.started(Create);
        let e = CallError { retry_after: Some(Duration::from_secs(60)), ..error(Throttled) };
        assert_eq!(l.create_answered(&Err(e), now).step, Step::HandBack(Duration::from_secs(60)));
    }

    #[test]
    fn outcomes_are_readable_text() {
        assert_eq!(AttemptOutcome::Permanent(ErrorCode::Unauthorized).as_str(), "unauthorized");
        assert_eq!(AttemptOutcome::of_error(&error(Throttled)).as_str(), "throttled");
        assert_eq!(CallKind::Lookup.as_str(), "lookup");
    }
}
