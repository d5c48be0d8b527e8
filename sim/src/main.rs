//! The `orgprov-sim` binary: the simulated providers as a stand-alone server, for Docker Compose
//! and for trying a client against them. Same flags as `orgprov simulate`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use orgprov_sim::cli::SimulateArgs;

#[derive(Parser, Debug)]
#[command(
    name = "orgprov-sim",
    version,
    about = "Serve identity providers' organization APIs locally, with fault injection"
)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only for a terminal, not in a container's log.
    tracing_subscriber::fmt().with_target(false).with_ansi(std::io::stdout().is_terminal()).init();
    match orgprov_sim::cli::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
