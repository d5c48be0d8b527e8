//! The command line: `worker`, `migrate`, `simulate`, `submit`, `plan`, `bulk`, `status`,
//! `demo`, `replay`. `plan` and `bulk` live in their own modules ([`crate::plan`],
//! [`crate::bulk`]); this one parses and dispatches.
//!
//! `simulate` and `demo` need the provider simulator (crate `orgprov-sim`, default feature
//! `simulator`). A build without it still knows both commands, so scripts get a clear answer
//! (exit 2) instead of a usage error. `simulate` takes the same flags as `orgprov-sim`.
//!
//! Exit codes: 0 success; 1 the request (or demo) ended in failure; 2 bad configuration or
//! usage; 3 timed out waiting for an outcome; 4 infrastructure unreachable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use crate::bulk::BulkArgs;
use crate::config::{ConfigError, redact_url};
use crate::contract::{self, ErrorCode, OrganizationInput, RequestMessage};
pub use crate::plan::PlanArgs;
use crate::providers::Settings;
use crate::store::{EventNaming, ReplayCandidate, RequestState, Store};
use crate::template::Templates;
use crate::worker::Worker;

#[cfg(feature = "simulator")]
pub use crate::bench::BenchArgs;
#[cfg(feature = "simulator")]
pub use crate::demo::DemoArgs;
#[cfg(feature = "simulator")]
pub use orgprov_sim::cli::SimulateArgs;
/// Without the simulator, `demo` takes anything and explains (see [`WithoutSimulator`]).
#[cfg(not(feature = "simulator"))]
pub type DemoArgs = WithoutSimulator;
/// Without the simulator, `simulate` takes anything and explains (see [`WithoutSimulator`]).
#[cfg(not(feature = "simulator"))]
pub type SimulateArgs = WithoutSimulator;
/// Without the simulator, `bench` takes anything and explains (see [`WithoutSimulator`]).
#[cfg(not(feature = "simulator"))]
pub type BenchArgs = WithoutSimulator;

#[derive(Parser, Debug)]
#[command(
    name = "orgprov",
    version,
    about = "Provision organizations in identity providers from NATS JetStream requests"
)]
pub struct Cli {
    /// Configuration file (TOML). Without one, defaults plus ORGPROV_* variables apply.
    #[arg(long, short, global = true, env = "ORGPROV_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume org.provision.requested and provision organizations.
    Worker {
        /// Do not apply database migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply database migrations (creating the database if needed) and exit.
    Migrate,
    /// Serve the providers' APIs locally, with fault injection.
    #[cfg_attr(not(feature = "simulator"), command(about = NOT_BUILT))]
    Simulate(SimulateArgs),
    /// Publish one request and wait for its outcome.
    Submit(SubmitArgs),
    /// Dry run of one request: the rendered organization, the exact HTTP request and every
    /// rule it breaks. Needs only the configuration and templates (no NATS, Postgres, secret).
    Plan(PlanArgs),
    /// Onboard many organizations from a CSV or NDJSON file: check every row, publish, wait
    /// for the outcomes with a progress bar, write a results file. Rerun to resume.
    Bulk(BulkArgs),
    /// Print a request, its attempts and its events from Postgres.
    Status { request_id: String },
    /// Run the whole pipeline on local NATS and Postgres against the built-in simulator.
    #[cfg_attr(not(feature = "simulator"), command(about = NOT_BUILT))]
    Demo(DemoArgs),
    /// Re-drive failed requests (dead letters) as a new generation: by id, code or time.
    Replay(ReplayArgs),
    /// Measure throughput, latency and memory of the whole pipeline on this machine.
    #[cfg_attr(not(feature = "simulator"), command(about = NOT_BUILT))]
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// A request to replay (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Only failed requests with this error code.
    #[arg(long, value_parser = error_code())]
    pub code: Option<ErrorCode>,
    /// Only requests that failed at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only requests that failed before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Every failed request (when no other selector is given).
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Print what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parses `--code`; `--help` lists the accepted values.
fn error_code() -> impl clap::builder::TypedValueParser<Value = ErrorCode> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(ErrorCode::ALL.map(ErrorCode::as_str))
        .map(|s| ErrorCode::parse(&s).unwrap_or(ErrorCode::Internal))
}

/// Stands in for the flags of `simulate` and `demo` in a build without the simulator: whatever
/// follows the command is accepted, so the command still parses and can say what is missing.
#[cfg(not(feature = "simulator"))]
#[derive(Args, Debug, Clone)]
pub struct WithoutSimulator {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

#[cfg(not(feature = "simulator"))]
const NOT_BUILT: &str = "Not in this build (no `simulator` feature); see `orgprov-sim`";

#[derive(Args, Debug, Clone)]
pub struct SubmitArgs {
    /// A JSON file holding the whole request (plain or CloudEvents); flags are ignored then.
    #[arg(long, conflicts_with_all = ["target", "template", "name"])]
    pub file: Option<PathBuf>,
    #[arg(long, required_unless_present = "file")]
    pub target: Option<String>,
    #[arg(long, required_unless_present = "file")]
    pub template: Option<String>,
    /// organization.name
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    #[arg(long)]
    pub display_name: Option<String>,
    /// Defaults to a new random id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Seconds to wait for the outcome event.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Publish and return without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn run(cli: Cli) -> ExitCode {
    // The worker logs its work; the interactive commands only their problems.
    let level = match cli.command {
        Command::Worker { .. } | Command::Simulate(_) => "info",
        // The demo prints its own progress and summary.
        Command::Demo(_) | Command::Bench(_) => "error",
        _ => "warn",
    };
    let _telemetry = crate::telemetry::init(level);
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars()) {
        Ok(s) => s,
        Err(e) => return config_failure(e),
    };
    let result = match cli.command {
        Command::Worker { no_migrate } => worker(settings, no_migrate).await,
        Command::Migrate => migrate(&settings).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Submit(args) => submit(&settings, args).await,
        Command::Plan(args) => Ok(crate::plan::run(&settings, &args)),
        Command::Bulk(args) => bulk(&settings, args).await,
        Command::Status { request_id } => status(&settings, &request_id).await,
        Command::Demo(args) => demo(settings, args).await,
        Command::Replay(args) => replay(&settings, args).await,
        Command::Bench(args) => bench(settings, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(4)
        }
    }
}

fn config_failure(e: ConfigError) -> ExitCode {
    eprintln!("configuration error: {e}");
    ExitCode::from(2)
}

async fn worker(mut settings: Settings, no_migrate: bool) -> anyhow::Result<ExitCode> {
    if no_migrate {
        settings.postgres.migrate = false;
    }
    let targets = match settings.resolve_targets(&|v| std::env::var(v).ok()) {
        Ok(t) => t,
        Err(e) => return Ok(config_failure(e)),
    };
    let templates = match Templates::load_dir(&settings.templates_dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error: templates_dir: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if settings.postgres.migrate {
        crate::store::ensure_database(&settings.postgres.url).await?;
    }
    let worker = match Worker::connect(settings.clone(), targets, templates).await {
        Ok(worker) => worker,
        Err(e) if e.is::<crate::worker::AdminBindError>() => {
            eprintln!("configuration error: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e),
    };
    let handle = worker.spawn();
    let shutdown = handle.shutdown_token();
    tokio::spawn(signals(shutdown));
    handle.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit now.
async fn signals(shutdown: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        seen += 1;
        if seen == 1 {
            tracing::info!("shutdown requested: finishing in-flight work");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    crate::store::ensure_database(&settings.postgres.url).await?;
    let store = Store::connect(&settings.postgres.url, 2, naming(settings)).await?;
    store.migrate().await?;
    println!("migrations applied to {}", redact_url(&settings.postgres.url));
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "simulator")]
async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    orgprov_sim::cli::run(args).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "simulator")]
async fn demo(settings: Settings, args: DemoArgs) -> anyhow::Result<ExitCode> {
    crate::demo::run(settings, args).await
}

#[cfg(feature = "simulator")]
async fn bench(settings: Settings, args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::bench::run(settings, args).await
}

#[cfg(not(feature = "simulator"))]
async fn bench(_: Settings, _: BenchArgs) -> anyhow::Result<ExitCode> {
    Ok(without_simulator("bench"))
}

#[cfg(not(feature = "simulator"))]
async fn simulate(_: SimulateArgs) -> anyhow::Result<ExitCode> {
    Ok(without_simulator("simulate"))
}

#[cfg(not(feature = "simulator"))]
async fn demo(_: Settings, _: DemoArgs) -> anyhow::Result<ExitCode> {
    Ok(without_simulator("demo"))
}

/// The answer of `simulate` and `demo` in a build without the simulator: what is missing and
/// the two ways to get it.
#[cfg(not(feature = "simulator"))]
fn without_simulator(command: &str) -> ExitCode {
    eprintln!(
        "error: `orgprov {command}` needs the provider simulator, and this orgprov was built without it \
         (--no-default-features).\n\
         Build orgprov with its default `simulator` feature (`cargo build --release`), or run the \
         simulator's own binary, `orgprov-sim` (`cargo run --release -p orgprov-sim -- --help`)."
    );
    ExitCode::from(2)
}

fn naming(settings: &Settings) -> EventNaming {
    EventNaming { source: settings.worker.event_source.clone(), subject_prefix: settings.nats.subject_prefix.clone() }
}

async fn submit(settings: &Settings, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let payload = match &args.file {
        Some(path) => std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        None => serde_json::to_vec(&RequestMessage {
            request_id: args.request_id.clone().unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7().simple())),
            target: args.target.clone().unwrap_or_default(),
            template: args.template.clone().unwrap_or_default(),
            organization: OrganizationInput {
                name: args.name.clone().unwrap_or_default(),
                display_name: args.display_name.clone(),
                ..Default::default()
            },
            admin: None,
            source: Some("orgprov-cli".into()),
            occurred_at: Some(now_rfc3339()),
        })?,
    };
    let request_id = match contract::decode(&payload) {
        Ok(r) => r.request_id.to_string(),
        Err(contract::Rejection::Invalid { request_id, reason, .. }) => {
            eprintln!("warning: the worker will reject this request: {reason}");
            request_id.to_string()
        }
        Err(contract::Rejection::Unreadable { reason, .. }) => {
            eprintln!("error: {reason}");
            return Ok(ExitCode::from(2));
        }
    };
    let client = crate::bus::connect(&settings.nats.url).await?;
    let js = crate::bus::context(client.clone());
    let n = &settings.nats;
    // Subscribe before publishing so the outcome cannot slip past.
    let mut outcomes = futures::stream::select(
        client.subscribe(n.event_subject(contract::PROVISIONED_TYPE)).await?,
        client.subscribe(n.event_subject(contract::FAILED_TYPE)).await?,
    );
    let ack = crate::bus::publish_request(&js, &n.requests_subject(), payload, Some(&request_id)).await?;
    eprintln!(
        "published {request_id} to {} (stream sequence {}{})",
        n.requests_subject(),
        ack.sequence,
        if ack.duplicate { ", duplicate" } else { "" }
    );
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    if ack.duplicate {
        // The server dropped the copy, so no new outcome is coming: read the recorded one.
        let store = Store::connect(&settings.postgres.url, 2, naming(settings)).await?;
        if let Some(report) = store.report(&request_id).await?
            && let Some(event) = report.events.last()
        {
            println!("{}", serde_json::to_string_pretty(&event["body"])?);
            return Ok(exit_for(event["body"]["type"].as_str()));
        }
    }
    let wait = async {
        while let Some(msg) = outcomes.next().await {
            let Ok(event) = serde_json::from_slice::<Value>(&msg.payload) else { continue };
            if event["subject"] == json!(request_id) {
                return Some(event);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(args.timeout_secs), wait).await {
        Ok(Some(event)) => {
            println!("{}", serde_json::to_string_pretty(&event)?);
            Ok(exit_for(event["type"].as_str()))
        }
        _ => {
            eprintln!(
                "no outcome for {request_id} within {} s; check `orgprov status {request_id}`",
                args.timeout_secs
            );
            Ok(ExitCode::from(3))
        }
    }
}

async fn bulk(settings: &Settings, args: BulkArgs) -> anyhow::Result<ExitCode> {
    let interrupt = CancellationToken::new();
    tokio::spawn(signals(interrupt.clone()));
    let invocation: Vec<String> = std::env::args().collect();
    let report = crate::bulk::run(settings, &args, &invocation, interrupt).await?;
    Ok(ExitCode::from(report.exit))
}

fn exit_for(event_type: Option<&str>) -> ExitCode {
    if event_type == Some(contract::PROVISIONED_TYPE) { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

async fn status(settings: &Settings, request_id: &str) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&settings.postgres.url, 2, naming(settings)).await?;
    match store.report(request_id).await? {
        Some(report) => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no request {request_id:?} in {}", redact_url(&settings.postgres.url));
            Ok(ExitCode::from(1))
        }
    }
}

async fn replay(settings: &Settings, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let parse_time = |flag: &str, v: &Option<String>| -> Result<Option<time::OffsetDateTime>, String> {
        v.as_deref()
            .map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339))
            .transpose()
            .map_err(|e| format!("--{flag}: not an RFC 3339 time: {e}"))
    };
    let (since, until) = match (parse_time("since", &args.since), parse_time("until", &args.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.ids.is_empty() && args.code.is_none() && since.is_none() && until.is_none() && !args.all {
        eprintln!("error: say what to replay: --id, --code, --since/--until, or --all");
        return Ok(ExitCode::from(2));
    }
    let selection =
        crate::store::ReplaySelection { ids: args.ids.clone(), code: args.code, since, until, limit: args.limit };
    let store = Store::connect(&settings.postgres.url, 2, naming(settings)).await?;
    let candidates = store.replay_candidates(&selection).await?;
    let js = crate::bus::context(crate::bus::connect(&settings.nats.url).await?);
    let subject = settings.nats.requests_subject();
    let (mut replayed, mut skipped) = (0, 0);
    for id in args.ids.iter().filter(|id| !candidates.iter().any(|c| &c.request_id == *id)) {
        println!("{id}: skipped, no such request");
        skipped += 1;
    }
    for ReplayCandidate { request_id: id, state, code } in candidates {
        if state != RequestState::Failed {
            // A request that succeeded is never provisioned again; an active one is in work.
            println!("{id}: skipped, it is {}", state.as_str());
            skipped += 1;
            continue;
        }
        if args.dry_run {
            println!("{id}: would replay (failed with {})", code.as_deref().unwrap_or("?"));
            continue;
        }
        let Some((tx, generation, document)) = store.begin_replay(&id).await? else {
            println!("{id}: skipped, not failed any more or no stored request");
            skipped += 1;
            continue;
        };
        let msg_id = format!("{id}:replay:{generation}");
        match crate::bus::publish_request(&js, &subject, serde_json::to_vec(&document)?, Some(&msg_id)).await {
            Ok(_) => {
                tx.commit().await?;
                println!("{id}: replaying as generation {generation}");
                replayed += 1;
            }
            Err(e) => {
                tx.rollback().await?;
                println!("{id}: not replayed, publish failed: {e}");
                skipped += 1;
            }
        }
    }
    println!("replayed {replayed}, skipped {skipped}");
    Ok(ExitCode::SUCCESS)
}
