//! End-to-end tests: real NATS JetStream, real Postgres, the provider simulator over HTTP.
//! One test binary (zero2prod style); each module is a group of user stories.

mod bad_input;
mod crash;
mod helpers;
mod pipeline;
