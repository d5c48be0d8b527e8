//! Test-only crash points. With `ORGPROV_FAULT_CRASH_AT=<point>` set, the worker kills itself
//! with SIGKILL the first time it reaches that point, so recovery can be tested at each step
//! of the pipeline. Unset (always, in production) every check is one relaxed atomic load.

use std::sync::OnceLock;

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
    /// The relay published the event; the outbox row is not marked and (maybe) not acked.
    AfterPublish,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::AfterClaim,
        CrashPoint::DuringCall,
        CrashPoint::AfterCreate,
        CrashPoint::AfterCommit,
        CrashPoint::AfterPublish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterClaim => "after_claim",
            CrashPoint::DuringCall => "during_call",
            CrashPoint::AfterCreate => "after_create",
            CrashPoint::AfterCommit => "after_commit",
            CrashPoint::AfterPublish => "after_publish",
        }
    }
}

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
