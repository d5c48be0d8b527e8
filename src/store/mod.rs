//! Postgres, the record of truth. One file per concern:
//!
//! - [`claim`]: the fenced lease (claim, heartbeat, release) and "render once";
//! - [`calls`]: bookkeeping of upstream calls (a call starting, a refund, the attempt history);
//! - [`settle`]: the end of a generation (outcome + attempt + event + outbox row, one
//!   statement for many requests) and unreadable messages;
//! - [`batch`]: group commit, the [`batch::Batcher`] that writes the hot path's claims and
//!   settles many rows per statement;
//! - [`outbox`]: stored outcome events and the queries of the outbox relay;
//! - [`limits`]: the replica-wide rate limit and pause of each target ([`PgSlots`]);
//! - [`replay`]: `orgprov replay` and the retention sweeps;
//! - [`report`]: the read side of `orgprov status`;
//! - [`outcomes`]: the read side of `orgprov bulk` (many requests' states at once).
//!
//! No transaction is ever held across an upstream HTTP call: a claim commits before the
//! call, and the settle opens its own transaction after it. States and kinds are Rust enums
//! here and readable text in the tables.

pub mod batch;
mod calls;
mod claim;
mod limits;
mod outbox;
mod outcomes;
mod replay;
mod report;
mod settle;

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use time::OffsetDateTime;

use crate::contract::{EventError, OutcomeEvent, RequestId};
pub use crate::lifecycle::Outcome;
use crate::lifecycle::{AttemptOutcome, CallKind};

pub use claim::{ClaimResult, NewClaim};
pub use limits::PgSlots;
pub use outbox::Pending;
pub use outcomes::RequestOutcome;
pub use replay::{ReplayCandidate, ReplaySelection};
pub use report::RequestReport;
pub use settle::{Settle, Settled};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where outcome events go: CloudEvents `source` and the NATS subject prefix.
#[derive(Clone, Debug)]
pub struct EventNaming {
    pub source: String,
    pub subject_prefix: String,
}

impl EventNaming {
    fn subject(&self, event: &OutcomeEvent) -> String {
        format!("{}{}", self.subject_prefix, event.event_type)
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    naming: EventNaming,
}

/// `requests.state`: a generation is active until it settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    Active,
    Succeeded,
    Failed,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Active => "active",
            RequestState::Succeeded => "succeeded",
            RequestState::Failed => "failed",
        }
    }

    /// Reads the column; the table's CHECK constraint admits nothing else.
    pub fn parse(s: &str) -> Option<RequestState> {
        [RequestState::Active, RequestState::Succeeded, RequestState::Failed].into_iter().find(|v| v.as_str() == s)
    }
}

/// The rendered, provider-ready form of a request, stored at the first claim.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub target: String,
    pub provider: String,
    pub template: String,
    pub template_version: String,
    pub spec: Value,
    pub body: Value,
    pub natural_key: String,
}

/// A request that cannot be worked on, known before any HTTP call.
#[derive(Clone, Debug)]
pub struct EarlyFailure {
    pub target: Option<String>,
    pub provider: Option<String>,
    pub error: EventError,
}

/// A held lease on a request.
#[derive(Clone, Debug)]
pub struct Claim {
    pub request_id: RequestId,
    pub generation: i64,
    /// The fencing token: every write of the holder is checked against it.
    pub token: i64,
    pub prepared: std::sync::Arc<Prepared>,
    /// Create attempts made for this generation so far.
    pub attempts: i64,
    /// A create may have reached the upstream and no lookup has settled it since.
    pub needs_reconcile: bool,
    /// The claim itself recorded the first create as starting ([`NewClaim::create_started`]):
    /// the create goes out without admission or a statement of its own. `attempts` and
    /// `needs_reconcile` are then as they were before it.
    pub create_started: bool,
    /// Time since this generation started (the retry deadline counts from there).
    pub age: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease lost: another holder claimed request {0}")]
    LeaseLost(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A batch write failed as a whole (the database error, as text, for each item).
    #[error("{0}")]
    Batch(String),
    /// The worker is shutting down: the batch writer is gone.
    #[error("the batch writer has stopped")]
    Closed,
}

/// One upstream call, for the attempt history.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub call: CallKind,
    pub started_at: OffsetDateTime,
    pub duration: Duration,
    pub status: Option<u16>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// Creates the database named in `url` if it does not exist (used by `migrate`, `demo`, tests).
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse()?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        // Two processes racing to create it is fine: the loser sees "already exists".
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await
            && !e.to_string().contains("already exists")
        {
            return Err(e.into());
        }
    }
    admin.close().await?;
    Ok(())
}

impl Store {
    /// A pool of up to `max_connections`, opened as they are needed (commands and tools).
    pub async fn connect(url: &str, max_connections: u32, naming: EventNaming) -> anyhow::Result<Store> {
        Store::open(url, max_connections, 0, naming).await
    }

    /// The worker's pool: `postgres.max_connections` at most, and `postgres.min_connections`
    /// kept open from the start, so the first burst after start-up or a quiet spell does not
    /// wait for connections to be opened (and their statements prepared).
    pub async fn connect_worker(
        settings: &crate::config::PostgresSettings,
        naming: EventNaming,
    ) -> anyhow::Result<Store> {
        Store::open(&settings.url, settings.max_connections, settings.min_connections, naming).await
    }

    async fn open(url: &str, max_connections: u32, min_connections: u32, naming: EventNaming) -> anyhow::Result<Store> {
        // Every statement of orgprov finds rows by key. A plan that scans a table instead
        // (a hash join over `requests`, a sequential scan) is cheaper only while the table is
        // tiny, yet Postgres keeps the generic plan of a prepared statement for as long as the
        // connection lives, and without statistics (autovacuum off, or a table that grew since
        // the last ANALYZE) it would pick one early and then pay for every row of the table on
        // every batch. Re-planning each execution instead costs more than the batch itself.
        // So the planner is told to use the indexes: plans stay keyed, whatever the statistics.
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]);
        // No ping before handing out a connection: a round trip per statement on the hot path,
        // and a broken connection fails its statement anyway, which every caller handles.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(min_connections.min(max_connections))
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Store { pool, naming })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_they_are_written() {
        for s in [RequestState::Active, RequestState::Succeeded, RequestState::Failed] {
            assert_eq!(RequestState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RequestState::parse("Active"), None);
    }
}
