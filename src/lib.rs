//! orgprov: an event-driven organization-provisioning worker.
//!
//! Requests arrive on NATS JetStream (`org.provision.requested`), are rendered through a
//! template, created in an upstream identity provider with retries, rate limiting and
//! reconciliation, recorded in Postgres, and announced as `org.provisioned` / `org.failed`
//! CloudEvents through a transactional outbox. See ARCHITECTURE.md for the map.
//!
//! Layout, by domain: [`contract`] (public message and event types), [`config`],
//! [`template`], [`providers`] (one module per provider), [`delivery`] (HTTP, rate limit,
//! retry timing), [`store`] (Postgres), [`bus`] (JetStream and the outbox relay), [`worker`]
//! (the consume loop and the per-request state machine), [`cli`] (the commands), [`telemetry`]
//! and [`admin`]. With the default `simulator` feature, `demo` runs the whole pipeline against
//! the provider simulator (crate `orgprov-sim`); without it the worker has no simulator code.

pub mod admin;
#[cfg(feature = "simulator")]
pub mod bench;
pub mod bulk;
pub mod bus;
pub mod cli;
pub mod config;
pub mod contract;
pub mod delivery;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod fault;
pub mod lifecycle;
pub mod plan;
pub mod prepare;
pub mod providers;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod worker;

/// Installs rustls' `ring` provider for the process (async-nats and sqlx use ring; reqwest is
/// built without a provider so the two cannot clash). Idempotent; call before building any
/// HTTP client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
