//! `orgprov bench`: how fast the whole pipeline runs on this machine, measured in one run.
//! Compiled only with the `simulator` feature.
//!
//! Every part runs on the configured NATS and Postgres, on streams, subjects and a database of
//! its own (removed afterwards), against an in-process provider simulator (Auth0, no faults, no
//! rate limit). Workers are real `orgprov worker` processes (this binary) with the default
//! settings, so what is measured is what a deployment gets; only the names, the URLs and a
//! target whose rate limit is far above the load are set.
//!
//! - **ceilings**: JetStream alone (publish, pull-consume and ack with the worker's stream
//!   settings) and Postgres alone (two autocommit statements per request at the worker's pool
//!   size);
//! - **drain**: a backlog published first, then drained by 1 or 3 workers, at each upstream
//!   latency; rate from the first outcome to the last, and as a ratio of the lower ceiling;
//! - **latency**: publish → outcome event at an offered rate, p50/p99/max;
//! - **memory**: a large backlog drained by one worker: its peak RSS, and the drain rate of
//!   the first and the last tenth;
//! - **crash-loop** (only when asked for, it takes minutes): three workers share a rate limit
//!   while one of them is SIGKILLed and restarted every few seconds; throughput as a share of
//!   the allowance, and how long requests waited once the kills stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use orgprov_sim::{Faults, Simulator, SimulatorConfig};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::bus;
use crate::config::NatsSettings;
use crate::contract::{FAILED_TYPE, PROVISIONED_TYPE};
use crate::providers::Settings;
use crate::store::{EventNaming, Store};

const BUILTIN_TEMPLATE: &str = include_str!("../templates/standard.toml");
const SECRET_VAR: &str = "ORGPROV_BENCH_SIM_SECRET";
const TARGET: &str = "bench-auth0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Ceilings,
    Drain,
    Latency,
    Memory,
    #[value(name = "crash-loop")]
    CrashLoop,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Parts to run (repeatable; all by default).
    #[arg(long = "only", value_enum)]
    pub only: Vec<Part>,
    /// Requests in each drain run.
    #[arg(long, default_value_t = 10_000)]
    pub backlog: usize,
    /// Worker processes of the drain runs (repeatable).
    #[arg(long = "workers", default_values_t = [1, 3])]
    pub workers: Vec<usize>,
    /// Upstream latencies of the drain runs, in milliseconds (repeatable).
    #[arg(long = "upstream-latency-ms", default_values_t = [0, 20])]
    pub upstream_latencies: Vec<u64>,
    /// Offered rates of the latency runs, requests per second (repeatable).
    #[arg(long = "rate", default_values_t = [500.0, 20.0])]
    pub rates: Vec<f64>,
    /// Seconds each latency run offers its rate.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Requests in the memory run.
    #[arg(long, default_value_t = 100_000)]
    pub memory_backlog: usize,
    /// Messages (JetStream) and requests (Postgres) of each ceiling run.
    #[arg(long, default_value_t = 20_000)]
    pub ceiling_count: usize,
    /// Seconds of kills in the crash-loop run (asked for with `--only crash-loop`).
    #[arg(long, default_value_t = 300)]
    pub crash_loop_secs: u64,
    /// The rate limit (calls per second) the three workers of the crash-loop run share.
    #[arg(long, default_value_t = 20.0)]
    pub crash_loop_rate: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
struct Report {
    machine: Machine,
    ceilings: Option<Ceilings>,
    drains: Vec<Drain>,
    latencies: Vec<Latency>,
    memory: Option<Drain>,
    crash_loop: Option<CrashLoop>,
}

#[derive(Debug, Serialize)]
struct CrashLoop {
    allowance_per_sec: f64,
    kill_every_secs: u64,
    kills: usize,
    seconds: f64,
    requests: usize,
    /// Outcomes per second while the kills went on.
    per_sec_during_kills: f64,
    /// The longest time from a request's publication to its outcome, of those published
    /// while the kills went on.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// From the last kill to the last outcome.
    settled_after_kills_secs: f64,
    creates: usize,
    lookups: usize,
}

#[derive(Debug, Default, Serialize)]
struct Machine {
    cpus: usize,
    postgres: Vec<(String, String)>,
    nats_server: String,
}

#[derive(Debug, Serialize)]
struct Ceilings {
    /// Messages per second through publish, pull-consume and ack.
    jetstream_per_sec: f64,
    /// Requests per second, each two autocommit statements.
    postgres_per_sec: f64,
    pool_size: u32,
}

impl Ceilings {
    fn lower(&self) -> f64 {
        self.jetstream_per_sec.min(self.postgres_per_sec)
    }
}

#[derive(Debug, Serialize)]
struct Drain {
    requests: usize,
    workers: usize,
    upstream_latency_ms: u64,
    /// From the first outcome to the last.
    per_sec: f64,
    /// The rate over the first and the last tenth of the outcomes.
    first_tenth_per_sec: f64,
    last_tenth_per_sec: f64,
    seconds: f64,
    creates: usize,
    lookups: usize,
    /// Peak resident set of the largest worker process, in MiB (Linux `VmHWM`).
    peak_rss_mib: f64,
    /// CPU time the workers used, per request, in microseconds.
    worker_cpu_us_per_request: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    offered_per_sec: f64,
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let bench = Bench::start(settings).await?;
    let mut report = Report { machine: bench.machine().await, ..Report::default() };
    progress(&format!(
        "machine: {} CPUs, nats-server {}, Postgres {}",
        report.machine.cpus,
        report.machine.nats_server,
        report.machine.postgres.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    ));
    if wants(Part::Ceilings) {
        report.ceilings = Some(bench.ceilings(args.ceiling_count).await?);
    }
    if wants(Part::Drain) {
        for &latency in &args.upstream_latencies {
            for &workers in &args.workers {
                report.drains.push(bench.drain(args.backlog, workers, latency).await?);
            }
        }
    }
    if wants(Part::Latency) {
        for &rate in &args.rates {
            report.latencies.push(bench.latency(rate, Duration::from_secs(args.latency_secs)).await?);
        }
    }
    if wants(Part::Memory) {
        report.memory = Some(bench.drain(args.memory_backlog, 1, 0).await?);
    }
    // Minutes long, so only when named.
    if args.only.contains(&Part::CrashLoop) {
        let length = Duration::from_secs(args.crash_loop_secs);
        report.crash_loop = Some(bench.crash_loop(args.crash_loop_rate, length).await?);
    }
    bench.sim.shutdown().await;
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        progress(&format!("wrote {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(line: &str) {
    eprintln!("[bench] {line}");
}

/// What every part shares: the configuration to start from, the simulator, this binary.
struct Bench {
    base: Settings,
    sim: Simulator,
    secret: String,
    exe: PathBuf,
    dir: PathBuf,
}

/// The names and files of one part's run.
struct Scenario {
    settings: Settings,
    config: PathBuf,
    log: PathBuf,
}

impl Bench {
    async fn start(base: Settings) -> anyhow::Result<Bench> {
        let sim_config = SimulatorConfig::default();
        let secret = sim_config.client_secret.clone();
        let sim = Simulator::start("127.0.0.1:0".parse()?, sim_config).await?;
        let dir = std::env::temp_dir().join(format!("orgprov-bench-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("templates"))?;
        std::fs::write(dir.join("templates/standard.toml"), BUILTIN_TEMPLATE)?;
        Ok(Bench { base, sim, secret, exe: std::env::current_exe()?, dir })
    }

    async fn machine(&self) -> Machine {
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(0);
        let mut postgres = Vec::new();
        if let Ok(store) = Store::connect(&admin_url(&self.base.postgres.url), 1, naming()).await {
            let names = [
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "full_page_writes",
                "autovacuum",
                "shared_buffers",
                "max_wal_size",
                "checkpoint_timeout",
                "commit_delay",
            ];
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1) ORDER BY name",
            )
            .bind(&names[..])
            .fetch_all(store.pool())
            .await
            .unwrap_or_default();
            postgres = rows;
        }
        // The server's INFO arrives with the connection; a flush makes sure it has been read.
        let nats_server = match bus::connect(&self.base.nats.url).await {
            Ok(c) => {
                let _ = c.flush().await;
                Some(c.server_info().version).filter(|v| !v.is_empty()).unwrap_or_else(|| "unknown".into())
            }
            Err(_) => "unknown".into(),
        };
        Machine { cpus, postgres, nats_server }
    }

    /// Fresh streams, subjects, consumer and database, and the worker config for them.
    fn scenario(&self, upstream_latency_ms: u64) -> anyhow::Result<Scenario> {
        self.limited_scenario(upstream_latency_ms, 1_000_000.0, 100_000)
    }

    /// A scenario whose target allows `per_second` calls with `burst`.
    fn limited_scenario(&self, upstream_latency_ms: u64, per_second: f64, burst: u32) -> anyhow::Result<Scenario> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let mut settings = self.base.clone();
        let n = &mut settings.nats;
        n.subject_prefix = format!("bench-{run}.");
        n.requests_stream = format!("BENCH_{run}_REQUESTS");
        n.events_stream = format!("BENCH_{run}_EVENTS");
        n.consumer = format!("bench-{run}");
        settings.postgres.url = with_database(&self.base.postgres.url, &format!("orgprov_bench_{run}"));
        self.sim.set_faults(Faults { latency_ms: upstream_latency_ms, ..Faults::default() });
        let config = self.dir.join(format!("{run}.toml"));
        let text = format!(
            "templates_dir = {templates:?}\n\
             [nats]\nurl = {nats:?}\nsubject_prefix = {prefix:?}\nrequests_stream = {requests:?}\n\
             events_stream = {events:?}\nconsumer = {consumer:?}\n\
             [postgres]\nurl = {pg:?}\n\
             [targets.{TARGET}]\nprovider = \"auth0\"\nbase_url = {base:?}\nclient_id = \"orgprov-sim\"\n\
             client_secret_env = {SECRET_VAR:?}\nrate_limit = {{ per_second = {per_second:?}, burst = {burst} }}\n",
            templates = self.dir.join("templates").display().to_string(),
            nats = settings.nats.url,
            prefix = settings.nats.subject_prefix,
            requests = settings.nats.requests_stream,
            events = settings.nats.events_stream,
            consumer = settings.nats.consumer,
            pg = settings.postgres.url,
            base = self.sim.base_url("auth0"),
        );
        std::fs::write(&config, text)?;
        Ok(Scenario { settings, config, log: self.dir.join(format!("{run}.log")) })
    }

    fn spawn_worker(&self, s: &Scenario) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&s.log)?;
        let child = std::process::Command::new(&self.exe)
            .args(["--config", &s.config.display().to_string(), "worker"])
            .env(SECRET_VAR, &self.secret)
            .env("ORGPROV_LOG", std::env::var("ORGPROV_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("ORGPROV_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(child)
    }

    async fn ceilings(&self, count: usize) -> anyhow::Result<Ceilings> {
        let s = self.scenario(0)?;
        let client = bus::connect(&s.settings.nats.url).await?;
        let js = bus::context(client.clone());
        let consumer = bus::ensure_topology(&js, &s.settings.nats).await?;
        let payloads: Vec<(String, Vec<u8>)> = (0..count).map(|i| request(&s.settings, "ceiling", i)).collect();

        progress(&format!("ceiling: JetStream, {count} messages published, pulled and acked"));
        let started = Instant::now();
        let subject = s.settings.nats.requests_subject();
        let publisher = {
            let js = js.clone();
            tokio::spawn(async move { publish_all(&js, &subject, &payloads).await })
        };
        let mut received = 0;
        while received < count {
            let wanted = (count - received).min(256);
            let mut batch = consumer.batch().max_messages(wanted).expires(Duration::from_secs(2)).messages().await?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("pull: {e}"))?;
                message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                received += 1;
            }
        }
        client.flush().await?;
        let jetstream_per_sec = count as f64 / started.elapsed().as_secs_f64();
        publisher.await??;
        remove_streams(&js, &s.settings.nats).await;

        let pool_size = s.settings.postgres.max_connections;
        progress(&format!("ceiling: Postgres, {count} requests of two autocommit statements, {pool_size} connections"));
        crate::store::ensure_database(&s.settings.postgres.url).await?;
        let store = Store::connect(&s.settings.postgres.url, pool_size, naming()).await?;
        let pool = store.pool().clone();
        sqlx::query(
            "CREATE TABLE ceiling (request_id text PRIMARY KEY, state text NOT NULL, document jsonb,
                                   updated_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&pool)
        .await?;
        let permits = Arc::new(Semaphore::new(pool_size as usize));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let (pool, permit) = (pool.clone(), permits.clone().acquire_owned().await?);
            tasks.push(tokio::spawn(async move {
                let id = format!("ceiling-{i}");
                sqlx::query("INSERT INTO ceiling (request_id, state, document) VALUES ($1, 'active', $2)")
                    .bind(&id)
                    .bind(json!({ "request_id": id, "organization": { "name": format!("org-{i}") } }))
                    .execute(&pool)
                    .await?;
                sqlx::query("UPDATE ceiling SET state = 'succeeded', updated_at = now() WHERE request_id = $1")
                    .bind(&id)
                    .execute(&pool)
                    .await?;
                drop(permit);
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let postgres_per_sec = count as f64 / started.elapsed().as_secs_f64();
        pool.close().await;
        drop_database(&s.settings.postgres.url).await;
        Ok(Ceilings { jetstream_per_sec, postgres_per_sec, pool_size })
    }

    /// Publishes `count` requests, then starts `workers` workers and waits for every outcome.
    async fn drain(&self, count: usize, workers: usize, upstream_latency_ms: u64) -> anyhow::Result<Drain> {
        let s = self.scenario(upstream_latency_ms)?;
        let label = format!("drain: {count} requests, {workers} worker(s), upstream latency {upstream_latency_ms} ms");
        progress(&label);
        let client = bus::connect(&s.settings.nats.url).await?;
        let js = bus::context(client.clone());
        bus::ensure_topology(&js, &s.settings.nats).await?;
        migrate(&s.settings).await?;
        let creates_before = self.upstream_calls();
        let subject = s.settings.nats.requests_subject();
        let mut published = 0;
        while published < count {
            // Built and published in slices, so a large backlog is never held whole.
            let slice: Vec<_> =
                (published..count.min(published + 10_000)).map(|i| request(&s.settings, "d", i)).collect();
            publish_all(&js, &subject, &slice).await?;
            published += slice.len();
        }
        progress(&format!("  published {count}; starting the workers"));
        let mut outcomes = Outcomes::subscribe(&js, &s.settings.nats).await?;
        let mut children = (0..workers).map(|_| self.spawn_worker(&s)).collect::<anyhow::Result<Vec<_>>>()?;
        let deadline = Instant::now() + Duration::from_secs(120 + (count / 200) as u64);
        let mut peak_rss = 0.0f64;
        let result = outcomes
            .wait_for(count, deadline, |done| {
                for c in &children {
                    peak_rss = peak_rss.max(peak_rss_mib(c.id()));
                }
                progress(&format!("  {done}/{count} outcomes"));
            })
            .await;
        for c in &children {
            peak_rss = peak_rss.max(peak_rss_mib(c.id()));
        }
        let cpu: f64 = children.iter().map(|c| cpu_seconds(c.id())).sum();
        stop_workers(&mut children);
        let (creates, lookups) = self.upstream_calls_since(creates_before);
        remove_streams(&js, &s.settings.nats).await;
        drop_database(&s.settings.postgres.url).await;
        let arrivals = result.map_err(|e| anyhow::anyhow!("{e}; worker log: {}", s.log.display()))?;
        let rate = |from: usize, to: usize| {
            let span = arrivals[to - 1].saturating_duration_since(arrivals[from]).as_secs_f64();
            if span > 0.0 { (to - from - 1) as f64 / span } else { 0.0 }
        };
        let tenth = (count / 10).max(2);
        let drain = Drain {
            requests: count,
            workers,
            upstream_latency_ms,
            per_sec: rate(0, count),
            first_tenth_per_sec: rate(0, tenth),
            last_tenth_per_sec: rate(count - tenth, count),
            seconds: arrivals[count - 1].saturating_duration_since(arrivals[0]).as_secs_f64(),
            creates,
            lookups,
            peak_rss_mib: peak_rss,
            worker_cpu_us_per_request: cpu * 1e6 / count as f64,
        };
        progress(&format!(
            "  {:.0} provisions/s, peak RSS {:.1} MiB, worker CPU {:.0} µs per request",
            drain.per_sec, drain.peak_rss_mib, drain.worker_cpu_us_per_request
        ));
        Ok(drain)
    }

    /// Offers `rate` requests per second for `length` to one running worker.
    async fn latency(&self, rate: f64, length: Duration) -> anyhow::Result<Latency> {
        let s = self.scenario(0)?;
        progress(&format!("latency: {rate} requests/s offered for {length:?} after 1 s of warm-up, 1 worker"));
        let client = bus::connect(&s.settings.nats.url).await?;
        let js = bus::context(client.clone());
        bus::ensure_topology(&js, &s.settings.nats).await?;
        migrate(&s.settings).await?;
        let mut outcomes = Outcomes::subscribe(&js, &s.settings.nats).await?;
        let mut children = vec![self.spawn_worker(&s)?];
        let subject = s.settings.nats.requests_subject();
        // One request first, so the worker is up before the clock starts; then one second at
        // the offered rate, not counted, so the figures are of a worker in its steady state
        // (its pool open at the size this rate needs, its statements prepared).
        publish_all(&js, &subject, &[request(&s.settings, "warm", 0)]).await?;
        outcomes.wait_for(1, Instant::now() + Duration::from_secs(60), |_| {}).await?;
        let warm_up = rate.ceil() as usize;
        publish_paced(&js, &subject, &s.settings, "warm-up", warm_up, rate, |_| Ok(())).await?;
        outcomes.wait_for(warm_up, Instant::now() + Duration::from_secs(60), |_| {}).await?;

        let count = (rate * length.as_secs_f64()).round().max(1.0) as usize;
        let sent_at = publish_paced(&js, &subject, &s.settings, "l", count, rate, |_| Ok(())).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let arrivals = outcomes.arrivals(&sent_at, deadline).await;
        stop_workers(&mut children);
        remove_streams(&js, &s.settings.nats).await;
        drop_database(&s.settings.postgres.url).await;
        let arrivals = arrivals.map_err(|e| anyhow::anyhow!("{e}; worker log: {}", s.log.display()))?;
        let (p50_ms, p99_ms, max_ms) = percentiles(&arrivals);
        let result = Latency { offered_per_sec: rate, requests: count, p50_ms, p99_ms, max_ms };
        progress(&format!("  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", result.p50_ms, result.p99_ms, result.max_ms));
        Ok(result)
    }

    /// Offers `rate` requests per second to three workers sharing a `rate` calls/s limit, and
    /// SIGKILLs one of them every 3 s for `length` (restarting it at once, as an orchestrator
    /// would); then waits for every outcome.
    async fn crash_loop(&self, rate: f64, length: Duration) -> anyhow::Result<CrashLoop> {
        const KILL_EVERY: Duration = Duration::from_secs(3);
        let burst = (rate.ceil() as u32).max(1);
        let s = self.limited_scenario(0, rate, burst)?;
        progress(&format!(
            "crash loop: 3 workers share {rate} calls/s; one SIGKILLed every {}s for {length:?}, {rate} requests/s offered",
            KILL_EVERY.as_secs()
        ));
        let client = bus::connect(&s.settings.nats.url).await?;
        let js = bus::context(client.clone());
        bus::ensure_topology(&js, &s.settings.nats).await?;
        migrate(&s.settings).await?;
        let mut outcomes = Outcomes::subscribe(&js, &s.settings.nats).await?;
        let mut children = (0..3).map(|_| self.spawn_worker(&s)).collect::<anyhow::Result<Vec<_>>>()?;
        let subject = s.settings.nats.requests_subject();
        let before = self.upstream_calls();

        let count = (rate * length.as_secs_f64()).round().max(1.0) as usize;
        let started = Instant::now();
        let mut next_kill = started + KILL_EVERY;
        let mut kills = 0;
        let sent_at = publish_paced(&js, &subject, &s.settings, "crash", count, rate, |i| {
            if Instant::now() >= next_kill {
                let victim = kills % children.len();
                let _ = children[victim].kill();
                let _ = children[victim].wait();
                children[victim] = self.spawn_worker(&s)?;
                kills += 1;
                next_kill += KILL_EVERY;
                if kills % 10 == 0 {
                    progress(&format!("  {kills} kills, {i}/{count} published"));
                }
            }
            Ok(())
        })
        .await?;
        let kills_stopped = Instant::now();
        let arrivals = outcomes.arrivals(&sent_at, Instant::now() + Duration::from_secs(600)).await;
        let (creates, lookups) = self.upstream_calls_since(before);
        stop_workers(&mut children);
        remove_streams(&js, &s.settings.nats).await;
        drop_database(&s.settings.postgres.url).await;
        let arrivals = arrivals.map_err(|e| anyhow::anyhow!("{e}; worker log: {}", s.log.display()))?;

        let during = arrivals.iter().filter(|(_, at)| *at <= kills_stopped).count();
        let last = arrivals.iter().map(|(_, at)| *at).max().unwrap_or(kills_stopped);
        let (p50_ms, p99_ms, max_ms) = percentiles(&arrivals);
        let seconds = kills_stopped.saturating_duration_since(started).as_secs_f64();
        let result = CrashLoop {
            allowance_per_sec: rate,
            kill_every_secs: KILL_EVERY.as_secs(),
            kills,
            seconds,
            requests: count,
            per_sec_during_kills: during as f64 / seconds,
            p50_ms,
            p99_ms,
            max_ms,
            settled_after_kills_secs: last.saturating_duration_since(kills_stopped).as_secs_f64(),
            creates,
            lookups,
        };
        progress(&format!(
            "  {:.1} outcomes/s during the kills ({:.0} % of the allowance), p99 {:.0} ms, all settled {:.1} s after the last kill",
            result.per_sec_during_kills,
            100.0 * result.per_sec_during_kills / rate,
            result.p99_ms,
            result.settled_after_kills_secs
        ));
        Ok(result)
    }

    /// Create and lookup calls the simulator has answered so far.
    fn upstream_calls(&self) -> (usize, usize) {
        let requests = self.sim.requests();
        let creates = requests.iter().filter(|r| r.method == "POST" && r.path.ends_with("/organizations")).count();
        let lookups = requests.iter().filter(|r| r.method == "GET" && r.path.contains("/organizations")).count();
        (creates, lookups)
    }

    fn upstream_calls_since(&self, before: (usize, usize)) -> (usize, usize) {
        let now = self.upstream_calls();
        (now.0 - before.0, now.1 - before.1)
    }
}

/// The outcome events of a run, read from its events stream by a task of their own, so each
/// arrival is timed when it happens, whatever the bench does meanwhile (publishing, say).
struct Outcomes {
    arrivals: tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<(String, Instant)>>,
    reader: tokio::task::JoinHandle<()>,
    seen: std::collections::HashSet<String>,
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Outcomes {
    async fn subscribe(js: &jetstream::Context, n: &NatsSettings) -> anyhow::Result<Outcomes> {
        let stream = js.get_stream(&n.events_stream).await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                filter_subjects: vec![n.event_subject(PROVISIONED_TYPE), n.event_subject(FAILED_TYPE)],
                ..Default::default()
            })
            .await?;
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = consumer.stream().max_messages_per_batch(1000).messages().await?;
        let reader = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let arrival = match message {
                    Ok(m) => serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .map_err(anyhow::Error::from)
                        .and_then(|event| {
                            if event["type"] != PROVISIONED_TYPE {
                                anyhow::bail!("a request failed: {}", event["data"]["error"]);
                            }
                            Ok((event["subject"].as_str().unwrap_or_default().to_owned(), Instant::now()))
                        }),
                    // A missed heartbeat is not the end of the stream: the client pulls again.
                    Err(e) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => continue,
                    Err(e) => Err(anyhow::anyhow!("events: {e}")),
                };
                if tx.send(arrival).is_err() {
                    return;
                }
            }
        });
        Ok(Outcomes { arrivals, reader, seen: Default::default() })
    }

    /// The next request id with an outcome not seen before, and when it arrived; `None`
    /// when nothing came within a second.
    async fn next_new(&mut self, deadline: Instant) -> anyhow::Result<Option<(String, Instant)>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (id, at) = match tokio::time::timeout(left.min(Duration::from_secs(1)), self.arrivals.recv()).await {
                Err(_) if left <= Duration::from_secs(1) => anyhow::bail!("no outcome before the deadline"),
                Err(_) => return Ok(None),
                Ok(None) => anyhow::bail!("the events reader ended"),
                Ok(Some(arrival)) => arrival?,
            };
            if self.seen.insert(id.clone()) {
                return Ok(Some((id, at)));
            }
        }
    }

    /// Waits for `count` distinct outcomes; their arrival times, in order. `tick` runs about
    /// once a second with the count so far.
    async fn wait_for(
        &mut self,
        count: usize,
        deadline: Instant,
        mut tick: impl FnMut(usize),
    ) -> anyhow::Result<Vec<Instant>> {
        let mut arrivals = Vec::with_capacity(count);
        let mut last_tick = Instant::now();
        while arrivals.len() < count {
            if let Some((_, at)) = self.next_new(deadline).await? {
                arrivals.push(at);
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                tick(arrivals.len());
                last_tick = Instant::now();
            }
        }
        Ok(arrivals)
    }

    /// Publish → outcome time of every request in `sent_at`.
    async fn arrivals(
        &mut self,
        sent_at: &HashMap<String, Instant>,
        deadline: Instant,
    ) -> anyhow::Result<Vec<(Duration, Instant)>> {
        let mut arrivals = Vec::with_capacity(sent_at.len());
        while arrivals.len() < sent_at.len() {
            let next = self.next_new(deadline).await;
            let next = next.map_err(|e| anyhow::anyhow!("{e}; {} of {} outcomes", arrivals.len(), sent_at.len()))?;
            if let Some((id, at)) = next
                && let Some(t) = sent_at.get(&id)
            {
                arrivals.push((at.saturating_duration_since(*t), at));
            }
        }
        Ok(arrivals)
    }
}

/// p50, p99 and max, in milliseconds, of the publish → outcome times of `arrivals`.
fn percentiles(arrivals: &[(Duration, Instant)]) -> (f64, f64, f64) {
    let mut latencies: Vec<Duration> = arrivals.iter().map(|(l, _)| *l).collect();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    (pick(0.50).map_or(0.0, |d| ms(*d)), pick(0.99).map_or(0.0, |d| ms(*d)), latencies.last().map_or(0.0, |d| ms(*d)))
}

/// Publishes `count` requests of `kind` at `rate` per second, calling `each(i)` before the
/// i-th; when each was sent, by request id. Acks are awaited as they come (unread acks hold
/// the client's publish window, and a full window would hold the next publish back: a delay
/// of the bench, not of the worker), and all of them before it returns.
async fn publish_paced(
    js: &jetstream::Context,
    subject: &str,
    settings: &Settings,
    kind: &str,
    count: usize,
    rate: f64,
    mut each: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut sent_at = HashMap::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut acks = tokio::task::JoinSet::new();
    for i in 0..count {
        tick.tick().await;
        each(i)?;
        let (id, payload) = request(settings, kind, i);
        let message = jetstream::message::PublishMessage::build().payload(payload.into()).message_id(&id);
        sent_at.insert(id, Instant::now());
        let ack = js.send_publish(subject.to_owned(), message).await?;
        acks.spawn(ack.into_future());
    }
    while let Some(ack) = acks.join_next().await {
        ack??;
    }
    Ok(sent_at)
}

/// A request of run `settings` (id and payload); `kind` and `i` make the id and name.
fn request(settings: &Settings, kind: &str, i: usize) -> (String, Vec<u8>) {
    let run = settings.nats.consumer.trim_start_matches("bench-");
    let id = format!("bench-{run}-{kind}-{i:07}");
    let body = json!({
        "request_id": id, "target": TARGET, "template": "standard", "source": "bench",
        "organization": { "name": format!("b{run}-{kind}-{i:07}"), "metadata": { "crm_id": i.to_string() } }
    });
    (id, serde_json::to_vec(&body).unwrap_or_default())
}

/// Publishes with `Nats-Msg-Id` = request id, many acks outstanding at a time.
async fn publish_all(js: &jetstream::Context, subject: &str, requests: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    for chunk in requests.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (id, payload) in chunk {
            let message = jetstream::message::PublishMessage::build().payload(payload.clone().into()).message_id(id);
            acks.push(js.send_publish(subject.to_owned(), message).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    crate::store::ensure_database(&settings.postgres.url).await?;
    let store = Store::connect(&settings.postgres.url, 1, naming()).await?;
    store.migrate().await?;
    // Dropping the last part's database made Postgres write everything out; a checkpoint now
    // (where the role may) keeps that writing out of this part's measurement.
    let _ = sqlx::query("CHECKPOINT").execute(store.pool()).await;
    store.pool().close().await;
    Ok(())
}

fn stop_workers(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

async fn remove_streams(js: &jetstream::Context, n: &NatsSettings) {
    let _ = js.delete_stream(&n.requests_stream).await;
    let _ = js.delete_stream(&n.events_stream).await;
}

async fn drop_database(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else { return };
    if let Ok(store) = Store::connect(&admin_url(url), 1, naming()).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(store.pool()).await;
        store.pool().close().await;
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |s| s + 2) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

fn admin_url(url: &str) -> String {
    with_database(url, "postgres")
}

fn naming() -> EventNaming {
    EventNaming { source: "orgprov-bench".into(), subject_prefix: String::new() }
}

/// Peak resident set of process `pid` in MiB (`VmHWM`); 0 where /proc does not tell.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) process `pid` has used so far, in seconds; 0 where /proc does
/// not tell.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name; 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

fn print_table(r: &Report) {
    let lower = r.ceilings.as_ref().map(Ceilings::lower);
    let ratio = |v: f64| lower.map_or(String::new(), |c| format!("{:>5.0} %", 100.0 * v / c));
    println!();
    println!("orgprov bench: {} CPUs, nats-server {}", r.machine.cpus, r.machine.nats_server);
    let pg: Vec<String> = r.machine.postgres.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("Postgres: {}", pg.join(" "));
    println!();
    println!("{:<58} {:>12} {:>9}", "measure", "value", "/ceiling");
    if let Some(c) = &r.ceilings {
        println!("{:<58} {:>10.0}/s", "ceiling: JetStream publish + pull-consume + ack", c.jetstream_per_sec);
        let pg = format!("ceiling: Postgres, 2 autocommit statements, {} connections", c.pool_size);
        println!("{pg:<58} {:>10.0}/s", c.postgres_per_sec);
    }
    for d in &r.drains {
        let label =
            format!("drain {} requests, {} worker(s), upstream {} ms", d.requests, d.workers, d.upstream_latency_ms);
        println!("{label:<58} {:>10.0}/s {}", d.per_sec, ratio(d.per_sec));
        let extra = format!(
            "  first/last tenth {:.0}/{:.0}/s; {:.2} lookups per request; worker CPU {:.0} µs per request",
            d.first_tenth_per_sec,
            d.last_tenth_per_sec,
            d.lookups as f64 / d.requests as f64,
            d.worker_cpu_us_per_request
        );
        println!("{extra}");
    }
    for l in &r.latencies {
        let label = format!("latency at {} requests/s offered (p50 / p99 / max)", l.offered_per_sec);
        println!("{label:<58} {:>6.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms);
    }
    if let Some(m) = &r.memory {
        let label = format!("memory: {} backlog, 1 worker: peak RSS", m.requests);
        println!("{label:<58} {:>8.1} MiB", m.peak_rss_mib);
        let flat = if m.first_tenth_per_sec > 0.0 { 100.0 * m.last_tenth_per_sec / m.first_tenth_per_sec } else { 0.0 };
        let label = "  drain rate, first tenth → last tenth";
        println!(
            "{label:<58} {:>6.0} → {:.0}/s ({flat:.0} %) {}",
            m.first_tenth_per_sec,
            m.last_tenth_per_sec,
            ratio(m.per_sec)
        );
    }
    if let Some(c) = &r.crash_loop {
        let label = format!(
            "crash loop: 3 workers, {}/s allowed, {} SIGKILLs in {:.0} s",
            c.allowance_per_sec, c.kills, c.seconds
        );
        let share = 100.0 * c.per_sec_during_kills / c.allowance_per_sec;
        println!("{label:<58} {:>10.1}/s ({share:.0} % of the allowance)", c.per_sec_during_kills);
        println!(
            "  publish → outcome p50 / p99 / max {:.0} / {:.0} / {:.0} ms; all settled {:.1} s after the last kill; {} creates, {} lookups for {} requests",
            c.p50_ms, c.p99_ms, c.max_ms, c.settled_after_kills_secs, c.creates, c.lookups, c.requests
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(with_database("postgres://u@h:5432/orgprov", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
    }
}
