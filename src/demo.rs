//! `orgprov demo`: the whole pipeline on this machine's NATS and Postgres, against the
//! built-in simulator with faults switched on.
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
use futures::StreamExt;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::config::{RateLimitSettings, RetrySettings, TargetSettings};
use crate::contract::{self, FAILED_TYPE, PROVISIONED_TYPE};
use crate::providers::Settings;
use crate::simulator::{Faults, RateLimit, Simulator, SimulatorConfig};
use crate::template::Templates;
use crate::worker::Worker;

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

pub async fn run(mut settings: Settings, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    println!("orgprov demo, run {run}: {} requests against the built-in Auth0 simulator", args.count);

    let faults = if args.no_faults {
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
            ..TargetSettings::new("auth0", &sim.base_url("auth0"), "orgprov-sim", SECRET_VAR)
        },
    );
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
    let worker = Worker::connect(settings.clone(), targets, templates).await?.spawn();

    let client = crate::bus::connect(&settings.nats.url).await?;
    let js = crate::bus::context(client.clone());
    let n = &settings.nats;
    let mut events = futures::stream::select(
        client.subscribe(n.event_subject(PROVISIONED_TYPE)).await?,
        client.subscribe(n.event_subject(FAILED_TYPE)).await?,
    );

    // Someone else's organization holding a name we will ask for: must end as `conflict`.
    let taken = format!("d{run}-taken");
    sim.insert_organization("auth0", json!({ "name": taken, "metadata": { "owner": "someone-else" } }));

    let mut expected: BTreeMap<String, Expectation> = BTreeMap::new();
    let mut messages: Vec<(Vec<u8>, Option<String>)> = Vec::new();
    let request = |id: &str, target: &str, template: &str, name: &str| {
        json!({ "request_id": id, "target": target, "template": template, "source": "demo",
                "organization": { "name": name, "metadata": { "run": run } } })
    };
    let ok = |label: &str| Expectation { label: label.into(), event_type: PROVISIONED_TYPE, code: None };
    let fail = |label: &str, code| Expectation { label: label.into(), event_type: FAILED_TYPE, code: Some(code) };
    for i in 0..args.count {
        let id = format!("demo-{run}-{i:05}");
        let body = request(&id, "demo-auth0", "standard", &format!("d{run}-{i:05}"));
        messages.push((serde_json::to_vec(&body)?, Some(id.clone())));
        expected.insert(id, ok("valid"));
    }
    // Duplicates: every tenth request again, without Nats-Msg-Id so the server cannot dedupe.
    for i in (0..args.count).step_by(10) {
        let id = format!("demo-{run}-{i:05}");
        let body = request(&id, "demo-auth0", "standard", &format!("d{run}-{i:05}"));
        messages.push((serde_json::to_vec(&body)?, None));
    }
    let bad: Vec<(String, Vec<u8>, Expectation)> = vec![
        (
            format!("demo-{run}-bad-name"),
            serde_json::to_vec(&request(&format!("demo-{run}-bad-name"), "demo-auth0", "standard", "Not Lowercase"))?,
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
            serde_json::to_vec(&request(&format!("demo-{run}-taken"), "demo-auth0", "standard", &taken))?,
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

    let started = Instant::now();
    let mut published_at: HashMap<String, Instant> = HashMap::new();
    let subject = n.requests_subject();
    for chunk in messages.chunks(256) {
        let acks = join_all(chunk.iter().map(|(payload, id)| publish(&js, &subject, payload, id.as_deref()))).await;
        for ((_, id), ack) in chunk.iter().zip(acks) {
            ack?;
            if let Some(id) = id {
                published_at.entry(id.clone()).or_insert_with(Instant::now);
            }
        }
    }
    println!(
        "published {} messages ({} valid, {} duplicates, {} bad) in {:.2?}",
        messages.len(),
        args.count,
        args.count.div_ceil(10),
        7,
        started.elapsed()
    );

    let mut outcomes: HashMap<String, Value> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut events_seen = 0usize;
    let mut schema_errors = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while outcomes.len() < expected.len() {
        tokio::select! {
            msg = events.next() => {
                let Some(msg) = msg else { break };
                events_seen += 1;
                if let Err(e) = contract::validate_event(&msg.payload) {
                    schema_errors.push(e);
                }
                let Ok(event) = serde_json::from_slice::<Value>(&msg.payload) else { continue };
                let key = event["data"]["request_id"].as_str().map(str::to_owned)
                    .or_else(|| event["data"]["source_message"]["msg_id"].as_str().map(str::to_owned));
                let Some(key) = key else { continue };
                if let Some(t) = published_at.get(&key)
                    && !outcomes.contains_key(&key) {
                        latencies.push(t.elapsed());
                    }
                outcomes.entry(key).or_insert(event);
            }
            _ = tick.tick() => {
                let done = outcomes.len();
                println!("  {done:>5}/{} outcomes  ({:.1} s)", expected.len(), started.elapsed().as_secs_f64());
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let elapsed = started.elapsed();
    // Let late duplicate re-emissions arrive before counting organizations.
    worker.stop().await?;

    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut provisioned = 0;
    let mut adopted = 0;
    let mut wrong = Vec::new();
    for (key, exp) in &expected {
        let Some(event) = outcomes.get(key) else {
            wrong.push(format!("{key} ({}): no outcome", exp.label));
            continue;
        };
        let event_type = event["type"].as_str().unwrap_or_default();
        let code = event["data"]["error"]["code"].as_str();
        if event_type == PROVISIONED_TYPE {
            provisioned += 1;
            if event["data"]["created"] == json!(false) {
                adopted += 1;
            }
        } else {
            *by_code.entry(code.unwrap_or("?").to_owned()).or_default() += 1;
        }
        if event_type != exp.event_type || code != exp.code {
            wrong.push(format!(
                "{key} ({}): expected {} {:?}, got {event_type} {code:?}: {}",
                exp.label, exp.event_type, exp.code, event["data"]["error"]["message"]
            ));
        }
    }
    let orgs = sim.organizations("auth0");
    let ours = orgs
        .iter()
        .filter(|o| o["name"].as_str().is_some_and(|n| n.starts_with(&format!("d{run}-")) && *n != taken))
        .count();
    let creates = sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/organizations")).count();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };

    println!();
    println!("summary (run {run})");
    println!("  provisioned             {provisioned} ({adopted} adopted after a lost response)");
    for (code, count) in &by_code {
        println!("  failed {:<17}{count}", format!("{code}:"));
    }
    println!("  outcome events seen     {events_seen} (re-emissions for duplicates reuse the event id)");
    println!(
        "  organizations           {ours} in the simulator for {} valid requests; {creates} create calls",
        args.count
    );
    println!(
        "  throughput              {:.1} requests/s over {:.2?}",
        expected.len() as f64 / elapsed.as_secs_f64(),
        elapsed
    );
    println!(
        "  latency                 p50 {:.0?}  p99 {:.0?}  max {:.0?}",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );

    if !args.keep_streams {
        let _ = js.delete_stream(&settings.nats.requests_stream).await;
        let _ = js.delete_stream(&settings.nats.events_stream).await;
    }
    sim.shutdown().await;

    let mut problems = wrong;
    if ours != args.count {
        problems.push(format!("{ours} organizations for {} requests: expected exactly one each", args.count));
    }
    problems.extend(schema_errors.into_iter().take(5).map(|e| format!("event breaks its schema: {e}")));
    if problems.is_empty() {
        println!("OK: every outcome is the expected one");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED:");
        for p in problems.iter().take(20) {
            println!("  {p}");
        }
        Ok(ExitCode::from(1))
    }
}

async fn publish(js: &jetstream::Context, subject: &str, payload: &[u8], msg_id: Option<&str>) -> anyhow::Result<()> {
    // Bad messages get a Nats-Msg-Id so their org.failed can be matched; duplicates get none.
    crate::bus::publish_request(js, subject, payload.to_vec(), msg_id).await?;
    Ok(())
}
