//! End-to-end tests: real NATS JetStream, real Postgres, the provider simulator over HTTP.
//! One test binary (zero2prod style); each module is a group of user stories.

mod bad_input;
mod bulk;
mod bulk_support;
mod chaos;
mod crash;
mod crash_points;
mod deploy;
mod helpers;
mod layout;
mod metrics;
mod mixed;
mod pipeline;
mod plan;
mod providers_biot;
mod providers_logto;
mod providers_secureauth;
mod providers_stytch;
mod reconnect;
mod reliability;
mod servers;
