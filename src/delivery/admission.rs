//! When a call to a target may go out: a process-local pool of call slots leased from the
//! target's shared bucket ([`SlotSource`]; every replica leases from the same Postgres row,
//! see `store::PgSlots`).
//!
//! Taking a slot from the shared bucket for every call would make one row lock and one commit
//! per call the limit of the whole pipeline. Instead a worker leases a few slots at a time —
//! as many as it has callers waiting, and up to twice what it used of its last lease — and
//! hands them out locally. A leased slot is only good for [`LEASE_VALIDITY`]: the shared bucket
//! counts a slot as used when it is leased, so a slot kept longer could arrive upstream in a
//! later window than the one it was counted in. Slots that expire unused are lost, never
//! carried over, which keeps the bucket's r·w + b bound over every replica together (the
//! bucket keeps headroom for this validity and for network jitter).
//!
//! Waiting callers hold a ticket ([`Queued`]). A caller's wait is the bucket's answer or its
//! place in the local queue at the target's rate, whichever is longer, so that only as many
//! requests wait in place as the rate can serve soon; the rest are handed back to JetStream
//! with that delay instead of being held (a worker that dies strands only those it holds).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

/// How long a leased slot may wait for its call.
pub const LEASE_VALIDITY: Duration = Duration::from_millis(50);
/// The most slots one lease asks for.
const MAX_LEASE: u32 = 512;

/// What one lease from the shared bucket gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lease {
    /// Slots to use now (within [`LEASE_VALIDITY`]).
    pub granted: u32,
    /// With none granted: how long until one is free (a pause included).
    pub wait: Duration,
}

/// Where a target's shared call slots come from.
pub trait SlotSource: Send + Sync {
    /// Up to `wanted` slots to use right away; with none, how long until one is free.
    fn lease(&self, wanted: u32) -> BoxFuture<'_, Result<Lease, String>>;
    /// The upstream asked every call of this target to wait `wait`.
    fn pause(&self, wait: Duration) -> BoxFuture<'_, ()>;
    /// The rate the bucket refills at, in calls per second (infinite: no limit).
    fn per_second(&self) -> f64;
}

/// No limit at all (unit tests, `orgprov plan`): every lease grants what is asked.
pub struct Unlimited;

impl SlotSource for Unlimited {
    fn lease(&self, wanted: u32) -> BoxFuture<'_, Result<Lease, String>> {
        async move { Ok(Lease { granted: wanted, wait: Duration::ZERO }) }.boxed()
    }
    fn pause(&self, _: Duration) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
    fn per_second(&self) -> f64 {
        f64::INFINITY
    }
}

/// The local side of one target's admission.
pub struct Admission {
    source: Arc<dyn SlotSource>,
    local: Mutex<Local>,
    /// One lease at a time: callers that find the pool empty wait for the lease in flight.
    refill: tokio::sync::Mutex<()>,
    /// Callers that found the pool empty and wait for a lease: the next lease asks for one
    /// slot each, at least.
    demand: AtomicUsize,
    tickets: AtomicU64,
}

#[derive(Debug)]
struct Local {
    slots: u32,
    valid_until: Instant,
    /// No slot before this (the bucket said so, or the upstream paused the target).
    not_before: Instant,
    /// Slots used of the current lease, to size the next one.
    used: u32,
    /// Tickets of callers waiting for a slot, oldest first.
    waiting: BTreeSet<u64>,
}

/// What the local pool says without asking the bucket.
enum FromPool {
    Granted,
    Wait(Duration),
    Empty,
}

impl Admission {
    pub fn new(source: Arc<dyn SlotSource>) -> Admission {
        let now = Instant::now();
        Admission {
            source,
            local: Mutex::new(Local { slots: 0, valid_until: now, not_before: now, used: 0, waiting: BTreeSet::new() }),
            refill: tokio::sync::Mutex::new(()),
            demand: AtomicUsize::new(0),
            tickets: AtomicU64::new(0),
        }
    }

    /// A place in the queue of callers waiting for a slot of this target.
    pub fn queue(self: &Arc<Self>) -> Queued {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.lock().waiting.insert(ticket);
        Queued { admission: self.clone(), ticket }
    }

    /// A slot right now, if one is free and nobody waits for it (a lease is taken when the
    /// pool is empty); `false` means the caller goes through [`Admission::queue`] later.
    pub async fn try_now(&self) -> bool {
        if !self.lock().waiting.is_empty() {
            return false;
        }
        matches!(self.take(None).await, Ok(None))
    }

    /// How many more requests could start within `horizon`: the rate's worth of calls in that
    /// time, less the callers already waiting; none while the target is paused.
    pub fn room(&self, horizon: Duration) -> usize {
        let local = self.lock();
        if local.not_before > Instant::now() + horizon {
            return 0;
        }
        let rate = self.source.per_second();
        if !rate.is_finite() {
            return usize::MAX;
        }
        let soon = (rate * horizon.as_secs_f64()).ceil().clamp(1.0, 1e9) as usize;
        soon.saturating_sub(local.waiting.len())
    }

    /// The upstream asked for a pause: no slot here before it ends, and the shared bucket
    /// tells every other replica.
    pub async fn pause(&self, wait: Duration) {
        {
            let mut local = self.lock();
            local.slots = 0;
            local.not_before = local.not_before.max(Instant::now() + wait);
        }
        self.source.pause(wait).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // The pool holds plain numbers: a panic elsewhere cannot leave it half-written.
        self.local.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_local(&self, ticket: Option<u64>, now: Instant) -> FromPool {
        let mut local = self.lock();
        if local.not_before > now {
            let wait = local.not_before - now;
            return FromPool::Wait(self.queued_wait(&local, ticket, wait));
        }
        if local.slots > 0 && local.valid_until > now {
            local.slots -= 1;
            local.used += 1;
            return FromPool::Granted;
        }
        FromPool::Empty
    }

    /// The wait of the caller holding `ticket`: at least its place in the queue at the rate.
    fn queued_wait(&self, local: &Local, ticket: Option<u64>, wait: Duration) -> Duration {
        let ahead = ticket.map_or(local.waiting.len(), |t| local.waiting.range(..t).count());
        let rate = self.source.per_second();
        if ahead == 0 || !rate.is_finite() || rate <= 0.0 {
            return wait;
        }
        wait.max(Duration::from_secs_f64((ahead as f64 / rate).min(86_400.0)))
    }

    /// `Ok(None)`: a slot was taken. `Ok(Some(wait))`: none now; ask again after `wait`.
    async fn take(&self, ticket: Option<u64>) -> Result<Option<Duration>, String> {
        match self.take_local(ticket, Instant::now()) {
            FromPool::Granted => return Ok(None),
            FromPool::Wait(wait) => return Ok(Some(wait)),
            FromPool::Empty => {}
        }
        self.demand.fetch_add(1, Ordering::Relaxed);
        let refill = self.refill.lock().await;
        self.demand.fetch_sub(1, Ordering::Relaxed);
        // A lease may have landed while this caller waited for the one in flight.
        match self.take_local(ticket, Instant::now()) {
            FromPool::Granted => return Ok(None),
            FromPool::Wait(wait) => return Ok(Some(wait)),
            FromPool::Empty => {}
        }
        let wanted = {
            let local = self.lock();
            let demand = self.demand.load(Ordering::Relaxed) + local.waiting.len() + 1;
            (demand as u32).max(local.used.saturating_mul(2)).clamp(1, MAX_LEASE)
        };
        let lease = self.source.lease(wanted).await?;
        let now = Instant::now();
        let mut local = self.lock();
        drop(refill);
        if lease.granted > 0 {
            local.slots = lease.granted - 1;
            local.used = 1;
            local.valid_until = now + LEASE_VALIDITY;
            Ok(None)
        } else {
            local.slots = 0;
            local.not_before = local.not_before.max(now + lease.wait);
            Ok(Some(self.queued_wait(&local, ticket, lease.wait)))
        }
    }
}

/// A caller waiting for a slot; leaves the queue when dropped.
pub struct Queued {
    admission: Arc<Admission>,
    ticket: u64,
}

impl Queued {
    /// `Ok(None)`: a slot was taken (and this caller left the queue). `Ok(Some(wait))`: none
    /// now; ask again after `wait`. `Err`: the shared bucket cannot be reached.
    pub async fn acquire(&self) -> Result<Option<Duration>, String> {
        let taken = self.admission.take(Some(self.ticket)).await;
        if matches!(taken, Ok(None)) {
            self.admission.lock().waiting.remove(&self.ticket);
        }
        taken
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.admission.lock().waiting.remove(&self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// A bucket that grants `per_lease` slots per lease, then says "wait 1 s" once `total`
    /// slots are gone.
    struct Fake {
        left: AtomicU32,
        leases: AtomicU32,
        asked: Mutex<Vec<u32>>,
        rate: f64,
    }

    impl Fake {
        fn new(total: u32, rate: f64) -> Arc<Fake> {
            Arc::new(Fake { left: AtomicU32::new(total), leases: AtomicU32::new(0), asked: Mutex::default(), rate })
        }
    }

    impl SlotSource for Fake {
        fn lease(&self, wanted: u32) -> BoxFuture<'_, Result<Lease, String>> {
            self.leases.fetch_add(1, Ordering::SeqCst);
            self.asked.lock().unwrap().push(wanted);
            let left = self.left.load(Ordering::SeqCst);
            let granted = wanted.min(left);
            self.left.fetch_sub(granted, Ordering::SeqCst);
            let wait = if granted == 0 { Duration::from_secs(1) } else { Duration::ZERO };
            async move { Ok(Lease { granted, wait }) }.boxed()
        }
        fn pause(&self, _: Duration) -> BoxFuture<'_, ()> {
            async {}.boxed()
        }
        fn per_second(&self) -> f64 {
            self.rate
        }
    }

    #[tokio::test]
    async fn slots_are_leased_in_growing_batches_and_never_beyond_the_bucket() {
        let fake = Fake::new(100, 10.0);
        let admission = Arc::new(Admission::new(fake.clone()));
        let mut granted = 0;
        for _ in 0..200 {
            if admission.try_now().await {
                granted += 1;
            }
        }
        assert_eq!(granted, 100, "exactly what the bucket gave");
        let asked = fake.asked.lock().unwrap().clone();
        assert_eq!(&asked[..4], &[1, 2, 4, 8], "each lease asks for twice what the last one served");
        // Once the bucket is empty, the pool remembers its wait and stops asking.
        assert!(fake.leases.load(Ordering::SeqCst) < 20, "{asked:?}");
    }

    #[tokio::test]
    async fn leased_slots_expire_unused() {
        let fake = Fake::new(1000, 1000.0);
        let admission = Arc::new(Admission::new(fake.clone()));
        assert!(admission.try_now().await);
        assert!(admission.try_now().await); // a lease of 2: one left in the pool
        tokio::time::sleep(LEASE_VALIDITY + Duration::from_millis(20)).await;
        let before = fake.leases.load(Ordering::SeqCst);
        assert!(admission.try_now().await);
        assert_eq!(fake.leases.load(Ordering::SeqCst), before + 1, "an expired slot is not used");
    }

    #[tokio::test]
    async fn waiting_callers_get_their_place_in_the_queue_at_the_rate() {
        let fake = Fake::new(0, 10.0);
        let admission = Arc::new(Admission::new(fake.clone()));
        let queue: Vec<Queued> = (0..30).map(|_| admission.queue()).collect();
        // The bucket says 1 s; the 21st in line is 2 s away at 10 calls/s.
        assert_eq!(queue[0].acquire().await.unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(queue[20].acquire().await.unwrap(), Some(Duration::from_secs(2)));
        // Someone waits, so a newcomer does not jump the queue.
        assert!(!admission.try_now().await);
        drop(queue);
        assert!(admission.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_pause_empties_the_pool_and_holds_every_caller() {
        let fake = Fake::new(1000, 1000.0);
        let admission = Arc::new(Admission::new(fake.clone()));
        assert!(admission.try_now().await);
        admission.pause(Duration::from_secs(30)).await;
        let wait = admission.queue().acquire().await.unwrap().unwrap();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30), "{wait:?}");
    }
}
