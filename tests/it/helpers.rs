//! Test harness: every test gets its own simulator (random port), its own NATS subjects,
//! streams and consumer, and its own Postgres database, so tests run in parallel and re-run
//! without clean-up. Waits are on events with deadlines, never fixed sleeps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use orgprov::config::{RateLimitSettings, RetrySettings};
use orgprov::providers::{Settings, Target, TargetSettings};
use orgprov::simulator::{Simulator, SimulatorConfig};
use orgprov::template::Templates;
use orgprov::worker::{Worker, WorkerHandle};
use serde_json::{Value, json};
use sqlx::PgPool;

pub const TARGET: &str = "acme-auth0";
pub const SECRET_VAR: &str = "ORGPROV_TEST_SIM_SECRET";

pub fn nats_url() -> String {
    std::env::var("ORGPROV_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn pg_base_url() -> String {
    std::env::var("ORGPROV_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// One outcome event as received on the wire.
#[derive(Clone, Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub json: Value,
}

/// A target for `provider` at `base_url` with test-friendly timeouts, limits and retries.
pub fn target_settings(provider: &str, base_url: &str) -> TargetSettings {
    TargetSettings {
        timeout_ms: 2_000,
        max_in_flight: 32,
        rate_limit: RateLimitSettings { per_second: 500.0, burst: 100 },
        retry: RetrySettings { base_delay_ms: 20, max_delay_ms: 500, ..RetrySettings::default() },
        ..TargetSettings::new(provider, base_url, "orgprov-sim", SECRET_VAR)
    }
}

/// The upstream calls recorded for `id`, in order: (`create` | `lookup`, HTTP status).
pub async fn calls(env: &TestEnv, id: &str) -> Vec<(String, Option<i32>)> {
    sqlx::query_as("SELECT call, status_code FROM attempts WHERE request_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(&env.db)
        .await
        .unwrap()
}

/// [`calls`] in a shape that compares with literals.
pub fn calls_of(list: &[(String, Option<i32>)]) -> Vec<(&str, Option<i32>)> {
    list.iter().map(|(c, s)| (c.as_str(), *s)).collect()
}

pub struct TestEnv {
    pub run: String,
    /// Config and log files of worker processes.
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    pub settings: Settings,
    pub templates: Templates,
    pub js: jetstream::Context,
    pub db: PgPool,
    events: Arc<Mutex<Vec<Received>>>,
    stored: Arc<Mutex<Vec<Received>>>,
    pg_base: String,
    collector: tokio::task::JoinHandle<()>,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::with_simulator(SimulatorConfig::default()).await
    }

    pub async fn with_simulator(config: SimulatorConfig) -> TestEnv {
        TestEnv::with_servers(config, &nats_url(), &pg_base_url()).await
    }

    /// A test environment on the given NATS server and Postgres (base URL, no database).
    pub async fn with_servers(config: SimulatorConfig, nats: &str, pg_base: &str) -> TestEnv {
        orgprov::install_crypto_provider();
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), config).await.expect("simulator starts");
        let mut settings = Settings::load(None, Vec::new()).unwrap();
        settings.nats.url = nats.to_owned();
        settings.nats.subject_prefix = format!("t{run}.");
        settings.nats.requests_stream = format!("T{run}_REQUESTS");
        settings.nats.events_stream = format!("T{run}_EVENTS");
        settings.nats.consumer = format!("t{run}");
        settings.nats.ack_wait_secs = 8;
        settings.postgres.url = format!("{pg_base}/orgprov_test_{run}");
        settings.postgres.max_connections = 10;
        settings.worker.max_in_flight = 64;
        settings.worker.lease_secs = 4;
        settings.worker.max_inline_wait_secs = 2;
        settings.worker.shutdown_grace_secs = 5;
        settings.templates_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/templates").into();
        settings.targets.insert(TARGET.into(), target_settings("auth0", &sim.base_url("auth0")));
        let templates = Templates::load_dir(&settings.templates_dir).unwrap();
        orgprov::store::ensure_database(&settings.postgres.url).await.expect("test database");
        let db = PgPool::connect(&settings.postgres.url).await.unwrap();
        orgprov::store::MIGRATOR.run(&db).await.expect("migrations apply");
        let client = orgprov::bus::connect(&settings.nats.url).await.expect("NATS is running");
        let js = orgprov::bus::context(client.clone());
        orgprov::bus::ensure_topology(&js, &settings.nats).await.expect("streams");

        // A core subscription sees every publish, including re-emissions the events stream
        // drops as duplicates: exactly what subscribers receive.
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut subs = futures::stream::select(
            client.subscribe(settings.nats.event_subject("org.provisioned")).await.unwrap(),
            client.subscribe(settings.nats.event_subject("org.failed")).await.unwrap(),
        );
        client.flush().await.unwrap();
        let sink = events.clone();
        let core = tokio::spawn(async move {
            while let Some(msg) = subs.next().await {
                let bytes = msg.payload.to_vec();
                let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                sink.lock().unwrap().push(Received { bytes, json });
            }
        });
        // The events stream too: a core subscription misses what is published while this
        // client reconnects (NATS restart tests); the stream keeps it.
        let stored = Arc::new(Mutex::new(Vec::new()));
        let sink = stored.clone();
        let events_stream = js.get_stream(&settings.nats.events_stream).await.unwrap();
        let ordered = events_stream.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
        let stream_reader = tokio::spawn(async move {
            let Ok(mut messages) = ordered.messages().await else { return };
            while let Some(msg) = messages.next().await {
                let Ok(msg) = msg else { continue };
                let bytes = msg.payload.to_vec();
                let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                sink.lock().unwrap().push(Received { bytes, json });
            }
        });
        let collector = tokio::spawn(async move {
            let _ = tokio::join!(core, stream_reader);
        });
        let dir = tempfile::tempdir().unwrap();
        TestEnv { run, dir, sim, settings, templates, js, db, events, stored, collector, pg_base: pg_base.to_owned() }
    }

    pub fn secret(&self) -> String {
        SimulatorConfig::default().client_secret
    }

    pub fn targets(&self) -> Vec<Target> {
        let secret = self.secret();
        self.settings.resolve_targets(&move |v| (v == SECRET_VAR).then(|| secret.clone())).unwrap()
    }

    pub async fn start_worker(&self) -> WorkerHandle {
        Worker::connect(self.settings.clone(), self.targets(), self.templates.clone())
            .await
            .expect("worker connects")
            .spawn()
    }

    /// A unique request id for this test.
    pub fn id(&self, n: impl std::fmt::Display) -> String {
        format!("{}-{n}", self.run)
    }

    /// A valid organization name for this test.
    pub fn name(&self, n: impl std::fmt::Display) -> String {
        format!("o{}-{n}", self.run)
    }

    pub fn request(&self, request_id: &str, name: &str) -> Value {
        json!({ "request_id": request_id, "target": TARGET, "template": "standard", "source": "test",
                "organization": { "name": name, "display_name": "Test Org" } })
    }

    pub async fn publish(&self, payload: &[u8], msg_id: Option<&str>) {
        orgprov::bus::publish_request(&self.js, &self.settings.nats.requests_subject(), payload.to_vec(), msg_id)
            .await
            .expect("publish");
    }

    pub async fn publish_json(&self, v: &Value, msg_id: Option<&str>) {
        self.publish(&serde_json::to_vec(v).unwrap(), msg_id).await;
    }

    pub fn events(&self) -> Vec<Received> {
        self.events.lock().unwrap().clone()
    }

    /// Every event the events stream stored (duplicates within the dedupe window dropped).
    pub fn stored_events(&self) -> Vec<Received> {
        self.stored.lock().unwrap().clone()
    }

    /// Events whose CloudEvents `subject` is `key` (request_id, or stream#sequence).
    pub fn events_for(&self, request_id: &str) -> Vec<Received> {
        self.events().into_iter().filter(|e| e.json["data"]["request_id"] == json!(request_id)).collect()
    }

    /// Waits until `check` holds, or panics with `what` after `secs`.
    pub async fn wait_until<F: FnMut(&TestEnv) -> bool>(&self, secs: u64, what: &str, check: F) {
        if !self.try_wait_until(secs, check).await {
            panic!("timed out after {secs} s waiting for: {what}");
        }
    }

    /// Waits until `check` holds; `false` after `secs`.
    pub async fn try_wait_until<F: FnMut(&TestEnv) -> bool>(&self, secs: u64, mut check: F) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if check(self) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first outcome event of each request id, waiting until all `ids` have one.
    pub async fn outcomes(&self, ids: &[String], secs: u64) -> BTreeMap<String, Received> {
        self.wait_until(secs, &format!("outcome events for {} requests", ids.len()), |env| {
            let seen: std::collections::HashSet<String> = env
                .events()
                .iter()
                .chain(env.stored_events().iter())
                .filter_map(|e| e.json["data"]["request_id"].as_str().map(str::to_owned))
                .collect();
            ids.iter().all(|id| seen.contains(id))
        })
        .await;
        let mut map = BTreeMap::new();
        for e in self.events().into_iter().chain(self.stored_events()) {
            if let Some(id) = e.json["data"]["request_id"].as_str() {
                map.entry(id.to_owned()).or_insert(e);
            }
        }
        map
    }

    /// Creates (POSTs) the simulator received for organizations.
    pub fn create_calls(&self) -> usize {
        self.sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/api/v2/organizations")).count()
    }

    pub fn api_calls(&self) -> usize {
        self.sim.requests().iter().filter(|r| r.path.contains("/api/")).count()
    }

    pub fn orgs_named(&self, name: &str) -> usize {
        self.sim.organizations("auth0").iter().filter(|o| o["name"] == json!(name)).count()
    }

    pub async fn consumer_idle(&self) -> bool {
        let Ok(stream) = self.js.get_stream(&self.settings.nats.requests_stream).await else { return false };
        let Ok(mut consumer) =
            stream.get_consumer::<jetstream::consumer::pull::Config>(&self.settings.nats.consumer).await
        else {
            return false;
        };
        match consumer.info().await {
            Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
            Err(_) => false,
        }
    }

    /// Waits until the consumer has nothing pending or unacked.
    pub async fn wait_consumer_idle(&self, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !self.consumer_idle().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer still has pending or unacked messages after {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the TOML configuration a worker process needs to join this test.
    pub fn config_file(&self) -> std::path::PathBuf {
        let n = &self.settings.nats;
        let w = &self.settings.worker;
        let mut text = format!(
            "templates_dir = {:?}\n[nats]\nurl = {:?}\nsubject_prefix = {:?}\nrequests_stream = {:?}\nevents_stream = {:?}\n\
             consumer = {:?}\nack_wait_secs = {}\n[postgres]\nurl = {:?}\nmax_connections = 8\n[worker]\nmax_in_flight = {}\n\
             lease_secs = {}\nmax_inline_wait_secs = {}\nshutdown_grace_secs = {}\nmax_attempts = {}\n",
            self.settings.templates_dir.display().to_string(),
            n.url,
            n.subject_prefix,
            n.requests_stream,
            n.events_stream,
            n.consumer,
            n.ack_wait_secs,
            self.settings.postgres.url,
            w.max_in_flight,
            w.lease_secs,
            w.max_inline_wait_secs,
            w.shutdown_grace_secs,
            w.max_attempts,
        );
        for (name, t) in &self.settings.targets {
            text.push_str(&format!(
                "[targets.{name}]\n{}base_url = {:?}\nclient_id = {:?}\nclient_secret_env = {:?}\n\
                 timeout_ms = {}\nmax_in_flight = {}\nrate_limit = {{ per_second = {:?}, burst = {} }}\n\
                 retry = {{ base_delay_ms = {}, max_delay_ms = {} }}\n",
                t.provider.to_table(),
                t.base_url,
                t.client_id.clone().unwrap_or_default(),
                t.client_secret_env.clone().unwrap_or_default(),
                t.timeout_ms,
                t.max_in_flight,
                t.rate_limit.per_second,
                t.rate_limit.burst,
                t.retry.base_delay_ms,
                t.retry.max_delay_ms,
            ));
        }
        let path = self.dir.path().join("orgprov.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `orgprov worker` as a separate process (for kill -9, SIGTERM, SIGSTOP). Its
    /// stderr goes to `worker.log` in the test's directory ([`TestEnv::worker_log`]).
    pub fn worker_process(&self, env: &[(&str, &str)]) -> WorkerProcess {
        let config = self.config_file();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("worker.log")).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orgprov"));
        cmd.args(["--config", config.to_str().unwrap(), "worker"])
            .env(SECRET_VAR, self.secret())
            .env("ORGPROV_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        WorkerProcess { child: cmd.spawn().expect("worker process starts") }
    }

    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// Deletes the test's streams and database.
    pub async fn cleanup(self) {
        self.collector.abort();
        let _ = self.js.delete_stream(&self.settings.nats.requests_stream).await;
        let _ = self.js.delete_stream(&self.settings.nats.events_stream).await;
        self.db.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", self.pg_base)).await {
            let sql = format!("DROP DATABASE IF EXISTS orgprov_test_{} WITH (FORCE)", self.run);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
        }
        self.sim.shutdown().await;
    }
}

/// A worker running as its own process; killed when dropped.
pub struct WorkerProcess {
    pub child: std::process::Child,
}

impl WorkerProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        let status =
            std::process::Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit on its own; `None` after `secs`.
    pub async fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
