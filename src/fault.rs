//! Test-only crash points. In a build with `--features fault-hooks`, and with
//! `ORGPROV_FAULT_CRASH_AT=<point>` set, the worker kills itself with SIGKILL the first time it
//! reaches that point, so recovery can be tested at each step of the pipeline. Without the
//! feature (every production build) the hooks are empty functions and the variable is never
//! read.

/// The recovery points, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The claim committed; no upstream call yet.
    AfterClaim,
    /// An upstream create is on the wire.
    DuringCall,
    /// The upstream created the organization; the outcome is not committed.
    AfterCreate,
    /// The outcome is committed; the event is not published and the message not acked.
    AfterCommit,
    /// A settle batch of several requests is committed; none of their events is published
    /// and none of their messages acked.
    AfterGroupCommit,
    /// The relay published the event; the outbox row is not marked and (maybe) not acked.
    AfterPublish,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 6] = [
        CrashPoint::AfterClaim,
        CrashPoint::DuringCall,
        CrashPoint::AfterCreate,
        CrashPoint::AfterCommit,
        CrashPoint::AfterGroupCommit,
        CrashPoint::AfterPublish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterClaim => "after_claim",
            CrashPoint::DuringCall => "during_call",
            CrashPoint::AfterCreate => "after_create",
            CrashPoint::AfterCommit => "after_commit",
            CrashPoint::AfterGroupCommit => "after_group_commit",
            CrashPoint::AfterPublish => "after_publish",
        }
    }
}

#[cfg(feature = "fault-hooks")]
mod hooks {
    use std::sync::OnceLock;

    use super::CrashPoint;

    fn configured() -> Option<CrashPoint> {
        static POINT: OnceLock<Option<CrashPoint>> = OnceLock::new();
        *POINT.get_or_init(|| {
            let name = std::env::var("ORGPROV_FAULT_CRASH_AT").ok()?;
            CrashPoint::ALL.into_iter().find(|p| p.name() == name)
        })
    }

    /// Dies here if this is the configured crash point.
    pub fn crash_at(point: CrashPoint) {
        if configured() == Some(point) {
            eprintln!("fault injection: SIGKILL at {}", point.name());
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    /// For `DuringCall`: dies `after` from now, while the call is in flight.
    pub fn crash_soon(point: CrashPoint, after: std::time::Duration) {
        if configured() == Some(point) {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                crash_at(point);
            });
        }
    }
}

#[cfg(feature = "fault-hooks")]
pub use hooks::{crash_at, crash_soon};

/// Without the `fault-hooks` feature: nothing.
#[cfg(not(feature = "fault-hooks"))]
#[inline(always)]
pub fn crash_at(_point: CrashPoint) {}

/// Without the `fault-hooks` feature: nothing.
#[cfg(not(feature = "fault-hooks"))]
#[inline(always)]
pub fn crash_soon(_point: CrashPoint, _after: std::time::Duration) {}
