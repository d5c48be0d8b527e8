//! The `orgprov` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // async-nats and sqlx use rustls with ring; reqwest is built without a provider, so one
    // process-wide provider must be installed before the first TLS connection.
    orgprov::install_crypto_provider();
    let cli = orgprov::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(orgprov::cli::run(cli))
}
