//! `orgprov demo`: the whole pipeline on this machine's NATS and Postgres, against the
//! built-in simulator (crate `orgprov-sim`) with faults switched on. Compiled only with the
//! `simulator` feature.
//!
//! It starts a simulator and a worker in-process on fresh, run-specific streams and subjects,
//! publishes a batch of valid requests plus duplicates and every kind of bad input, waits for
//! the outcome events, and checks each one against what must happen. Exit 0 only when every
//! outcome is the expected one and the simulator holds exactly one organization per request.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::Args;
use futures::future::join_all;
use futures::{Stream, StreamExt};
use orgprov_sim::{Faults, RateLimit, Simulator, SimulatorConfig};
use serde_json::{Value, json};

use crate::config::{RateLimitSettings, RetrySettings, TargetSettings};
use crate::contract::{self, FAILED_TYPE, PROVISIONED_TYPE};
use crate::providers::Settings;
use crate::template::Templates;
use crate::worker::{Worker, WorkerHandle};

const BUILTIN_TEMPLATE: &str = include_str!("../templates/standard.toml");
const SECRET_VAR: &str = "ORGPROV_DEMO_SIM_SECRET";

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Valid requests to provision.
    #[arg(long, default_value_t = 300)]
    pub count: usize,
    /// Seconds to wait for every outcome.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
    /// Keep the run's streams in NATS afterwards (they are deleted by default).
    #[arg(long)]
    pub keep_streams: bool,
    /// Turn off the simulator's injected faults.
    #[arg(long)]
    pub no_faults: bool,
}

/// What one published request must end as.
#[derive(Clone, Debug)]
struct Expectation {
    label: String,
    event_type: &'static str,
    code: Option<&'static str>,
}

/// The whole run: set up, publish the request mix, collect the outcomes, then summarize and
/// check them.
pub async fn run(mut settings: Settings, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    println!("orgprov demo, run {run}: {} requests against the built-in Auth0 simulator", args.count);

    let (sim, secret) = start_simulator(args.no_faults).await?;
    demo_settings(&mut settings, &run, &sim.base_url("auth0"));
    let worker = start_worker(&settings, secret).await?;

    let client = crate::bus::connect(&settings.nats.url).await?;
    let js = crate::bus::context(client.clone());
    let n = &settings.nats;
    let events = futures::stream::select(
        client.subscribe(n.event_subject(PROVISIONED_TYPE)).await?,
        client.subscribe(n.event_subject(FAILED_TYPE)).await?,
    );

    // Someone else's organization holding a name we will ask for: must end as `conflict`.
    let taken = format!("d{run}-taken");
    sim.insert_organization("auth0", json!({ "name": taken, "metadata": { "owner": "someone-else" } }));
    let mix = RequestMix::new(&run, args.count, &taken)?;

    let started = Instant::now();
    let published_at = publish_all(&js, &n.requests_subject(), &mix.messages).await?;
    println!(
        "published {} messages ({} valid, {} duplicates, {} bad) in {:.2?}",
        mix.messages.len(),
        args.count,
        args.count.div_ceil(10),
        7,
        started.elapsed()
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let seen = collect_outcomes(events, &mix.expected, &published_at, started, deadline).await;
    // Let late duplicate re-emissions arrive before counting organizations.
    worker.stop().await?;

    let tally = Tally::of(&mix.expected, &seen.outcomes, &sim, &run, &taken);
    print_summary(&run, args.count, &tally, &seen);

    if !args.keep_streams {
        let _ = js.delete_stream(&settings.nats.requests_stream).await;
        let _ = js.delete_stream(&settings.nats.events_stream).await;
    }
    sim.shutdown().await;

    let mut problems = tally.wrong;
    if tally.organizations != args.count {
        let ours = tally.organizations;
        problems.push(format!("{ours} organizations for {} requests: expected exactly one each", args.count));
    }
    problems.extend(seen.schema_errors.into_iter().take(5).map(|e| format!("event breaks its schema: {e}")));
    let code = verdict(&problems);
    print_next_steps();
    Ok(code)
}

/// How to go on from the demo: the real worker as its own process, fed by `bulk`.
fn print_next_steps() {
    println!();
    println!("next: run the real worker, as its own process, against the simulator (README \"Running it for real\"):");
    for line in [
        "# terminal 1: the provider simulator",
        "cargo run --release -- simulate --provider auth0 --listen 127.0.0.1:8090",
        "# terminal 2: the worker (the simulator's secret is sim-secret)",
        "ORGPROV_SIM_CLIENT_SECRET=sim-secret cargo run --release -- --config deploy/orgprov.local.toml worker",
        "# terminal 3: onboard the sample customers (a dry run of one first: `plan`)",
        "cargo run --release -- --config deploy/orgprov.local.toml bulk deploy/bulk-sample.csv --target sim-auth0 --template standard",
    ] {
        println!("  {line}");
    }
    println!("For your own provider, start from deploy/orgprov.example.toml.");
}

/// The built-in Auth0 simulator, with the demo's faults unless they are switched off; also the
/// client secret its token endpoint accepts.
async fn start_simulator(no_faults: bool) -> anyhow::Result<(Simulator, String)> {
    let faults = if no_faults {
        Faults::default()
    } else {
        Faults {
            latency_ms: 5,
            latency_jitter_ms: 20,
            error_rate: 0.03,
            lost_response_rate: 0.02,
            late_commit_rate: 0.0,
            late_commit_delay_ms: 0,
            rate_limit: Some(RateLimit { per_second: 400.0, burst: 100 }),
        }
    };
    let sim_config = SimulatorConfig { faults, ..SimulatorConfig::default() };
    let secret = sim_config.client_secret.clone();
    let sim = Simulator::start("127.0.0.1:0".parse()?, sim_config).await?;
    Ok((sim, secret))
}

/// Streams, subjects and consumer of this run only, and one target: the simulator's Auth0.
fn demo_settings(settings: &mut Settings, run: &str, auth0_url: &str) {
    let n = &mut settings.nats;
    n.subject_prefix = format!("demo-{run}.");
    n.requests_stream = format!("DEMO_{run}_REQUESTS");
    n.events_stream = format!("DEMO_{run}_EVENTS");
    n.consumer = format!("demo-{run}");
    settings.worker.shutdown_grace_secs = 10;
    settings.targets.clear();
    settings.targets.insert(
        "demo-auth0".into(),
        TargetSettings {
            timeout_ms: 5_000,
            max_in_flight: 128,
            rate_limit: RateLimitSettings { per_second: 300.0, burst: 100 },
            retry: RetrySettings { base_delay_ms: 50, max_delay_ms: 2_000, ..RetrySettings::default() },
            ..TargetSettings::new("auth0", auth0_url, "orgprov-sim", SECRET_VAR)
        },
    );
}

/// An in-process worker on the demo's settings; the templates directory's `standard`, else the
/// built-in one.
async fn start_worker(settings: &Settings, secret: String) -> anyhow::Result<WorkerHandle> {
    let targets = settings.resolve_targets(&|v| (v == SECRET_VAR).then(|| secret.clone()))?;
    let templates = match Templates::load_dir(&settings.templates_dir) {
        Ok(t) if t.get("standard").is_ok() => t,
        _ => {
            let mut t = Templates::default();
            t.add_toml(BUILTIN_TEMPLATE)?;
            t
        }
    };
    crate::store::ensure_database(&settings.postgres.url).await?;
    Ok(Worker::connect(settings.clone(), targets, templates).await?.spawn())
}

/// The messages to publish, interleaved, and what each keyed one must end as.
struct RequestMix {
    /// Payload and `Nats-Msg-Id` (none for the duplicates, so the server cannot dedupe them).
    messages: Vec<(Vec<u8>, Option<String>)>,
    /// By request id, or by `Nats-Msg-Id` for messages too broken to carry one.
    expected: BTreeMap<String, Expectation>,
}

impl RequestMix {
    /// `count` valid requests, every tenth again, and one of each kind of bad input.
    fn new(run: &str, count: usize, taken: &str) -> anyhow::Result<RequestMix> {
        let mut expected: BTreeMap<String, Expectation> = BTreeMap::new();
        let mut messages: Vec<(Vec<u8>, Option<String>)> = Vec::new();
        let request = |id: &str, target: &str, template: &str, name: &str| {
            json!({ "request_id": id, "target": target, "template": template, "source": "demo",
                    "organization": { "name": name, "metadata": { "run": run } } })
        };
        let ok = |label: &str| Expectation { label: label.into(), event_type: PROVISIONED_TYPE, code: None };
        let fail = |label: &str, code| Expectation { label: label.into(), event_type: FAILED_TYPE, code: Some(code) };
        for i in 0..count {
            let id = format!("demo-{run}-{i:05}");
            let body = request(&id, "demo-auth0", "standard", &format!("d{run}-{i:05}"));
            messages.push((serde_json::to_vec(&body)?, Some(id.clone())));
            expected.insert(id, ok("valid"));
        }
        // Duplicates: every tenth request again, without Nats-Msg-Id so the server cannot dedupe.
        for i in (0..count).step_by(10) {
            let id = format!("demo-{run}-{i:05}");
            let body = request(&id, "demo-auth0", "standard", &format!("d{run}-{i:05}"));
            messages.push((serde_json::to_vec(&body)?, None));
        }
        let bad: Vec<(String, Vec<u8>, Expectation)> = vec![
            (
                format!("demo-{run}-bad-name"),
                serde_json::to_vec(&request(
                    &format!("demo-{run}-bad-name"),
                    "demo-auth0",
                    "standard",
                    "Not Lowercase",
                ))?,
                fail("bad organization name", "invalid_request"),
            ),
            (
                format!("demo-{run}-bad-target"),
                serde_json::to_vec(&request(&format!("demo-{run}-bad-target"), "nowhere", "standard", "x"))?,
                fail("unknown target", "unknown_target"),
            ),
            (
                format!("demo-{run}-bad-template"),
                serde_json::to_vec(&request(&format!("demo-{run}-bad-template"), "demo-auth0", "platinum", "x"))?,
                fail("unknown template", "unknown_template"),
            ),
            (
                format!("demo-{run}-taken"),
                serde_json::to_vec(&request(&format!("demo-{run}-taken"), "demo-auth0", "standard", taken))?,
                fail("name owned by someone else", "conflict"),
            ),
            (format!("demo-{run}-not-json"), b"{this is not json".to_vec(), fail("not JSON", "invalid_request")),
            (
                format!("demo-{run}-no-id"),
                serde_json::to_vec(
                    &json!({ "target": "demo-auth0", "template": "standard", "organization": { "name": "x" } }),
                )?,
                fail("missing request_id", "invalid_request"),
            ),
            (
                format!("demo-{run}-too-big"),
                vec![b' '; contract::MAX_MESSAGE_BYTES + 1],
                fail("over 64 KiB", "invalid_request"),
            ),
        ];
        for (key, payload, exp) in bad {
            messages.push((payload, Some(key.clone())));
            expected.insert(key, exp);
        }
        // Interleave so duplicates and bad input arrive among the valid requests.
        fastrand::shuffle(&mut messages);
        Ok(RequestMix { messages, expected })
    }
}

/// Publishes every message, 256 at a time; returns when each keyed message was first published.
async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: &[(Vec<u8>, Option<String>)],
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut published_at: HashMap<String, Instant> = HashMap::new();
    for chunk in messages.chunks(256) {
        let acks = join_all(chunk.iter().map(|(payload, id)| publish(js, subject, payload, id.as_deref()))).await;
        for ((_, id), ack) in chunk.iter().zip(acks) {
            ack?;
            if let Some(id) = id {
                published_at.entry(id.clone()).or_insert_with(Instant::now);
            }
        }
    }
    Ok(published_at)
}

/// What came back: the first outcome event of each expected key, and about all events.
struct Collected {
    outcomes: HashMap<String, Value>,
    /// From publishing to the first outcome, per key, sorted.
    latencies: Vec<Duration>,
    events_seen: usize,
    schema_errors: Vec<String>,
    /// From the start of publishing until collecting ended.
    elapsed: Duration,
}

/// Reads outcome events until every expected key has one or `deadline` passes, printing
/// progress once a second.
async fn collect_outcomes(
    mut events: impl Stream<Item = async_nats::Message> + Unpin,
    expected: &BTreeMap<String, Expectation>,
    published_at: &HashMap<String, Instant>,
    started: Instant,
    deadline: tokio::time::Instant,
) -> Collected {
    let mut seen = Collected {
        outcomes: HashMap::new(),
        latencies: Vec::new(),
        events_seen: 0,
        schema_errors: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while seen.outcomes.len() < expected.len() {
        tokio::select! {
            msg = events.next() => {
                let Some(msg) = msg else { break };
                seen.events_seen += 1;
                if let Err(e) = contract::validate_event(&msg.payload) {
                    seen.schema_errors.push(e.to_string());
                }
                let Ok(event) = serde_json::from_slice::<Value>(&msg.payload) else { continue };
                let key = event["data"]["request_id"].as_str().map(str::to_owned)
                    .or_else(|| event["data"]["source_message"]["msg_id"].as_str().map(str::to_owned));
                let Some(key) = key else { continue };
                if let Some(t) = published_at.get(&key)
                    && !seen.outcomes.contains_key(&key) {
                        seen.latencies.push(t.elapsed());
                    }
                seen.outcomes.entry(key).or_insert(event);
            }
            _ = tick.tick() => {
                let done = seen.outcomes.len();
                println!("  {done:>5}/{} outcomes  ({:.1} s)", expected.len(), started.elapsed().as_secs_f64());
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    seen.elapsed = started.elapsed();
    seen.latencies.sort();
    seen
}

/// The outcomes counted by kind, every one that is not what its request must end as, and what
/// the simulator holds afterwards.
struct Tally {
    /// Messages with an expected outcome.
    requests: usize,
    provisioned: usize,
    /// Provisioned by adopting an organization an earlier attempt created.
    adopted: usize,
    failed_by_code: BTreeMap<String, usize>,
    wrong: Vec<String>,
    /// The run's organizations in the simulator (not the one seeded as someone else's).
    organizations: usize,
    /// Create calls the simulator received.
    creates: usize,
}

impl Tally {
    fn of(
        expected: &BTreeMap<String, Expectation>,
        outcomes: &HashMap<String, Value>,
        sim: &Simulator,
        run: &str,
        taken: &str,
    ) -> Tally {
        let organizations = sim
            .organizations("auth0")
            .iter()
            .filter(|o| o["name"].as_str().is_some_and(|n| n.starts_with(&format!("d{run}-")) && n != taken))
            .count();
        let creates =
            sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/organizations")).count();
        let mut tally = Tally {
            requests: expected.len(),
            provisioned: 0,
            adopted: 0,
            failed_by_code: BTreeMap::new(),
            wrong: Vec::new(),
            organizations,
            creates,
        };
        for (key, exp) in expected {
            let Some(event) = outcomes.get(key) else {
                tally.wrong.push(format!("{key} ({}): no outcome", exp.label));
                continue;
            };
            let event_type = event["type"].as_str().unwrap_or_default();
            let code = event["data"]["error"]["code"].as_str();
            if event_type == PROVISIONED_TYPE {
                tally.provisioned += 1;
                if event["data"]["created"] == json!(false) {
                    tally.adopted += 1;
                }
            } else {
                *tally.failed_by_code.entry(code.unwrap_or("?").to_owned()).or_default() += 1;
            }
            if event_type != exp.event_type || code != exp.code {
                tally.wrong.push(format!(
                    "{key} ({}): expected {} {:?}, got {event_type} {code:?}: {}",
                    exp.label, exp.event_type, exp.code, event["data"]["error"]["message"]
                ));
            }
        }
        tally
    }
}

fn print_summary(run: &str, count: usize, tally: &Tally, seen: &Collected) {
    let latencies = &seen.latencies;
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!();
    println!("summary (run {run})");
    println!("  provisioned             {} ({} adopted after a lost response)", tally.provisioned, tally.adopted);
    for (code, count) in &tally.failed_by_code {
        println!("  failed {:<17}{count}", format!("{code}:"));
    }
    println!("  outcome events seen     {} (re-emissions for duplicates reuse the event id)", seen.events_seen);
    println!(
        "  organizations           {} in the simulator for {count} valid requests; {} create calls",
        tally.organizations, tally.creates
    );
    let elapsed = seen.elapsed;
    println!(
        "  throughput              {:.1} requests/s over {:.2?}",
        tally.requests as f64 / elapsed.as_secs_f64(),
        elapsed
    );
    println!(
        "  latency                 p50 {:.0?}  p99 {:.0?}  max {:.0?}",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

/// `OK` and exit 0 when nothing is wrong, else the first problems and exit 1.
fn verdict(problems: &[String]) -> ExitCode {
    if problems.is_empty() {
        println!("OK: every outcome is the expected one");
        ExitCode::SUCCESS
    } else {
        println!("FAILED:");
        for p in problems.iter().take(20) {
            println!("  {p}");
        }
        ExitCode::from(1)
    }
}

async fn publish(js: &jetstream::Context, subject: &str, payload: &[u8], msg_id: Option<&str>) -> anyhow::Result<()> {
    // Bad messages get a Nats-Msg-Id so their org.failed can be matched; duplicates get none.
    crate::bus::publish_request(js, subject, payload.to_vec(), msg_id).await?;
    Ok(())
}
