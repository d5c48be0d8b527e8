//! The simulator's command line, shared by the `orgprov-sim` binary and `orgprov simulate`: one
//! set of flags ([`SimulateArgs`]) and one way to serve them ([`run`]), so both commands accept
//! and do the same.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use clap::builder::PossibleValuesParser;

use crate::{Faults, RateLimit, Simulator, SimulatorConfig, provider_names};

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Provider to serve (repeatable).
    #[arg(
        long = "provider",
        default_values_t = vec!["auth0".to_string()],
        value_parser = PossibleValuesParser::new(provider_names()),
    )]
    pub providers: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "orgprov-sim")]
    pub client_id: String,
    /// The client secret the token endpoint accepts.
    #[arg(long, env = "ORGPROV_SIM_CLIENT_SECRET", default_value = "sim-secret", hide_env_values = true)]
    pub client_secret: String,
    #[arg(long, default_value_t = 86_400)]
    pub token_ttl_secs: u64,
    /// Probability that a create answers 503 and stores nothing.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability that a create stores the organization and answers 504.
    #[arg(long, default_value_t = 0.0)]
    pub lost_response_rate: f64,
    /// Probability that a create answers 503 and the organization appears later.
    #[arg(long, default_value_t = 0.0)]
    pub late_commit_rate: f64,
    #[arg(long, default_value_t = 2_000)]
    pub late_commit_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Tenant rate limit in requests per second (token bucket); off when absent.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub rate_burst: u32,
}

impl SimulateArgs {
    pub fn simulator_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            providers: self.providers.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            faults: Faults {
                latency_ms: self.latency_ms,
                latency_jitter_ms: self.latency_jitter_ms,
                error_rate: self.error_rate,
                lost_response_rate: self.lost_response_rate,
                late_commit_rate: self.late_commit_rate,
                late_commit_delay_ms: self.late_commit_delay_ms,
                rate_limit: self.rate_limit.map(|per_second| RateLimit { per_second, burst: self.rate_burst }),
            },
        }
    }
}

/// Serves the simulator the flags describe, prints where each provider and the admin API are,
/// and runs until Ctrl-C or SIGTERM (a container's stop signal).
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let sim = Simulator::start(args.listen, args.simulator_config()).await?;
    for p in &args.providers {
        println!("{p}: {}", sim.base_url(p));
    }
    println!("admin: http://{}/_sim/ (organizations, requests, faults, script)", sim.addr());
    stop_requested().await;
    sim.shutdown().await;
    Ok(())
}

async fn stop_requested() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C alone stops the simulator.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn provider_accepts_exactly_the_registered_names_and_help_lists_them() {
        let parsed = Cli::try_parse_from(["sim", "--provider", "stytch", "--provider", "logto"]).expect("parses");
        assert_eq!(parsed.args.providers, ["stytch", "logto"]);
        assert_eq!(Cli::try_parse_from(["sim"]).expect("parses").args.providers, ["auth0"]);
        assert!(Cli::try_parse_from(["sim", "--provider", "okta"]).is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("auth0, biot, logto, secureauth, stytch"), "{help}");
    }

    #[test]
    fn flags_become_the_simulator_config() {
        let parsed = Cli::try_parse_from(["sim", "--rate-limit", "5", "--rate-burst", "7", "--error-rate", "0.5"])
            .expect("parses");
        let config = parsed.args.simulator_config();
        assert_eq!(config.faults.error_rate, 0.5);
        assert_eq!(config.faults.rate_limit.map(|r| (r.per_second, r.burst)), Some((5.0, 7)));
        assert_eq!(config.token_ttl, Duration::from_secs(86_400));
    }
}
