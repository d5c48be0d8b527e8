//! Test harness: every test gets its own simulator (random port), its own NATS subjects,
//! streams and consumer, and its own Postgres database, so tests run in parallel and re-run
//! without clean-up. Waits are on events with deadlines, never fixed sleeps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use orgprov::config::{RateLimitSettings, RetrySettings};
use orgprov::contract::RequestId;
use orgprov::delivery::{Delivery, Unlimited};
use orgprov::providers::{Provider, Settings, Target, TargetSettings};
use orgprov::template::OrgSpec;
use orgprov::template::Templates;
use orgprov::worker::{Worker, WorkerHandle};
use orgprov_sim::{ScriptedFault, Simulator, SimulatorConfig};
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
    /// Set by [`TestEnv::cleanup`]; otherwise `Drop` removes the streams and the database.
    cleaned: bool,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::with_simulator(SimulatorConfig::default()).await
    }

    /// A default environment with a worker already running in it.
    pub async fn with_worker() -> (TestEnv, WorkerHandle) {
        let env = TestEnv::new().await;
        let worker = env.start_worker().await;
        (env, worker)
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
        let pg_base = pg_base.to_owned();
        TestEnv { run, dir, sim, settings, templates, js, db, events, stored, collector, pg_base, cleaned: false }
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

    /// Deletes the test's streams and database. A failed test skips this; `Drop` then does the same from a thread of its own.
    pub async fn cleanup(mut self) {
        self.collector.abort();
        self.db.close().await;
        self.leftovers().remove().await;
        self.cleaned = true;
    }

    fn leftovers(&self) -> Leftovers {
        Leftovers {
            nats_url: self.settings.nats.url.clone(),
            streams: [self.settings.nats.requests_stream.clone(), self.settings.nats.events_stream.clone()],
            pg_base: self.pg_base.clone(),
            database: format!("orgprov_test_{}", self.run),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.collector.abort();
        if self.cleaned {
            return;
        }
        // A test that panicked: its streams and database must not outlive it. The test's own
        // runtime cannot be blocked on from here, so a thread with its own runtime does it.
        let leftovers = self.leftovers();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                runtime.block_on(leftovers.remove());
            }
        })
        .join();
    }
}

/// What a test leaves behind on the shared servers.
struct Leftovers {
    nats_url: String,
    streams: [String; 2],
    pg_base: String,
    database: String,
}

impl Leftovers {
    async fn remove(self) {
        if let Ok(client) = async_nats::connect(&self.nats_url).await {
            let js = jetstream::new(client);
            for stream in &self.streams {
                let _ = js.delete_stream(stream).await;
            }
        }
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", self.pg_base)).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
            admin.close().await;
        }
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

/// One provider as the stories in `providers_*.rs` use it: a target of that provider on a
/// simulator that serves only it, how the simulator's request log names its calls, and how an
/// organization is matched to the request that made it.
pub struct Upstream {
    pub provider: &'static str,
    pub target: &'static str,
    /// How the path of a create call (POST) ends.
    pub create_path: &'static str,
    /// How the path of a token request ends (empty for a provider without tokens).
    pub token_path: &'static str,
    /// The status of a successful create.
    pub created_status: i32,
    /// Where an organization holds its id.
    pub org_id: &'static str,
    /// An organization is the request's when the value at the first pointer of the request
    /// (its natural key, or its request_id for a provider without one) is at the second
    /// pointer of the organization.
    pub key: (&'static str, &'static str),
}

impl Upstream {
    /// A test environment with this provider's target; `adjust` changes its settings from
    /// [`target_settings`].
    pub async fn env(&self, config: SimulatorConfig, adjust: impl FnOnce(&mut TargetSettings)) -> TestEnv {
        let mut env =
            TestEnv::with_simulator(SimulatorConfig { providers: vec![self.provider.into()], ..config }).await;
        let mut target = target_settings(self.provider, &env.sim.base_url(self.provider));
        adjust(&mut target);
        env.settings.targets.insert(self.target.into(), target);
        env
    }

    /// The creates the simulator received.
    pub fn creates(&self, env: &TestEnv) -> usize {
        env.sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with(self.create_path)).count()
    }

    /// The token requests the simulator received.
    pub fn token_calls(&self, env: &TestEnv) -> usize {
        env.sim.requests().iter().filter(|r| !self.token_path.is_empty() && r.path.ends_with(self.token_path)).count()
    }

    /// The provider's organizations whose field at `pointer` is `value`.
    pub fn orgs(&self, env: &TestEnv, pointer: &str, value: &str) -> Vec<Value> {
        env.sim.organizations(self.provider).into_iter().filter(|o| o.pointer(pointer) == Some(&json!(value))).collect()
    }

    /// The provider's organizations of `request` (see [`Upstream::key`]).
    pub fn orgs_of(&self, env: &TestEnv, request: &Value) -> Vec<Value> {
        self.orgs(env, self.key.1, request.pointer(self.key.0).and_then(Value::as_str).expect("the request's key"))
    }

    /// The story of a request provisioned at once: one create made the request's one
    /// organization, and the outcome is a valid `org.provisioned` (checked against the schema)
    /// from this provider carrying that organization's id, the request's template and name.
    /// Returns the running worker and the organization.
    pub async fn provisions(&self, env: &TestEnv, request: &Value) -> (WorkerHandle, Value) {
        let worker = env.start_worker().await;
        let outcome = env.provision(request).await;
        orgprov::contract::validate_event(&serde_json::to_vec(&outcome).unwrap()).unwrap();
        let data = &outcome["data"];
        assert_eq!(
            (&outcome["type"], &data["provider"]),
            (&json!("org.provisioned"), &json!(self.provider)),
            "{outcome}"
        );
        assert_eq!(data["created"], true);
        assert_eq!(
            (&data["template"], &data["organization_name"]),
            (&request["template"], &request["organization"]["name"])
        );
        let orgs = self.orgs_of(env, request);
        assert_eq!(orgs.len(), 1, "one organization: {orgs:?}");
        assert_eq!(data["organization_id"], orgs[0][self.org_id]);
        let calls = calls(env, request["request_id"].as_str().unwrap()).await;
        assert_eq!(calls_of(&calls), vec![("create", Some(self.created_status))]);
        (worker, orgs[0].clone())
    }

    /// The story of a create whose answer is lost (`fault`): the worker reconciles by lookup
    /// and provisions `request` by adopting its one organization, without a second create.
    /// Returns the outcome event.
    pub async fn lost_create_is_adopted(&self, env: &TestEnv, fault: ScriptedFault, request: &Value) -> Value {
        env.sim.push_script(self.provider, vec![fault]);
        let worker = env.start_worker().await;
        let outcome = env.provision(request).await;
        assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
        assert_eq!(outcome["data"]["created"], false, "adopted, not created again");
        let orgs = self.orgs_of(env, request);
        assert_eq!(orgs.len(), 1, "one organization: {orgs:?}");
        assert_eq!(outcome["data"]["organization_id"], orgs[0][self.org_id]);
        assert_eq!(self.creates(env), 1, "reconciled by a lookup instead of a second create");
        let calls = calls(env, request["request_id"].as_str().unwrap()).await;
        assert_eq!(calls.last().map(|(c, s)| (c.as_str(), *s)), Some(("lookup", Some(200))), "{calls:?}");
        worker.stop().await.unwrap();
        outcome
    }

    /// The story of a natural key taken by someone else's organization (`seed`, there first):
    /// `request` fails as `conflict` naming `named` after a single create, and the seed stays
    /// the only organization with that key. Returns the error.
    pub async fn conflicts_with(&self, env: &TestEnv, seed: Value, request: &Value, named: &str) -> Value {
        env.sim.insert_organization(self.provider, seed);
        let worker = env.start_worker().await;
        let error = assert_conflict(&env.provision(request).await, named);
        assert_eq!(self.creates(env), 1, "one create, no retry");
        assert_eq!(self.orgs_of(env, request).len(), 1, "only the organization that was there");
        env.wait_consumer_idle(10).await;
        worker.stop().await.unwrap();
        error
    }

    /// The story of a create answered 429 (with `Retry-After: retry_after_secs`, if any): the
    /// worker creates again, without a lookup (a 429 changed nothing upstream), and `request`
    /// is provisioned with its one organization.
    pub async fn rate_limited_create_is_retried(&self, env: &TestEnv, retry_after_secs: Option<u64>, request: &Value) {
        env.sim.push_script(self.provider, vec![ScriptedFault::RateLimited { retry_after_secs }]);
        let worker = env.start_worker().await;
        let outcome = env.provision(request).await;
        assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
        assert_eq!(outcome["data"]["created"], true);
        assert_eq!(self.orgs_of(env, request).len(), 1, "one organization");
        let calls = calls(env, request["request_id"].as_str().unwrap()).await;
        assert_eq!(calls_of(&calls), vec![("create", Some(429)), ("create", Some(self.created_status))]);
        worker.stop().await.unwrap();
    }

    /// The story of tokens that expire (the simulator issues them for less than `pause`): the
    /// request `request("first")`, and `request("second")` after `pause`, go through without a
    /// refused call (the token was renewed before its expiry); after a revocation, one call of
    /// `request("third")` is refused and a single new token fetched.
    pub async fn tokens_are_renewed(&self, env: &TestEnv, pause: Duration, request: impl Fn(&str) -> Value) {
        let worker = env.start_worker().await;
        let refused = || env.sim.requests().iter().filter(|r| r.status == 401).count();
        let provisioned = |outcome: Value| assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
        provisioned(env.provision(&request("first")).await);
        tokio::time::sleep(pause).await;
        provisioned(env.provision(&request("second")).await);
        assert_eq!((self.token_calls(env), refused()), (2, 0), "renewed ahead of its expiry, no call refused");
        env.sim.revoke_tokens();
        provisioned(env.provision(&request("third")).await);
        assert_eq!((self.token_calls(env), refused()), (3, 1), "one refused call, then a single new token");
        worker.stop().await.unwrap();
    }

    /// The story of input that breaks the provider's documented rules: each request fails as
    /// `invalid_request` with a message naming what its case names, before any call upstream
    /// (no token request either).
    pub async fn refuses_before_any_call(&self, env: &TestEnv, cases: &[(Value, &str)]) {
        let worker = env.start_worker().await;
        let mut ids = Vec::new();
        for (request, _) in cases {
            let id = request["request_id"].as_str().expect("the request has a request_id").to_owned();
            env.publish_json(request, Some(&id)).await;
            ids.push(id);
        }
        let outcomes = env.outcomes(&ids, 60).await;
        for (id, (_, named)) in ids.iter().zip(cases) {
            let error = &outcomes[id].json["data"]["error"];
            assert_eq!(error["code"], "invalid_request", "{error}");
            assert!(error["message"].as_str().unwrap().contains(named), "{error} does not name {named}");
        }
        assert!(env.sim.requests().is_empty(), "no call upstream: {:?}", env.sim.requests());
        env.wait_consumer_idle(10).await;
        worker.stop().await.unwrap();
    }

    /// The story of a template naming something the upstream lacks: `request` made with the
    /// template `toml` (named `name`) fails as `rejected` with `status`, naming `named`.
    /// Returns the error.
    pub async fn rejects_with_template(
        &self,
        env: &mut TestEnv,
        (name, toml): (&str, &str),
        mut request: Value,
        (status, named): (u16, &str),
    ) -> Value {
        env.templates.add_toml(toml).unwrap();
        request["template"] = json!(name);
        let worker = env.start_worker().await;
        let outcome = env.provision(&request).await;
        let error = &outcome["data"]["error"];
        assert_eq!((&error["code"], &error["upstream_status"]), (&json!("rejected"), &json!(status)), "{outcome}");
        assert!(error["message"].as_str().unwrap().contains(named), "{error} does not name {named}");
        worker.stop().await.unwrap();
        error.clone()
    }
}

/// Asserts that `outcome` failed as `conflict` on the upstream's 409, its message naming
/// `named`; returns the error.
pub fn assert_conflict(outcome: &Value, named: &str) -> Value {
    let error = &outcome["data"]["error"];
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!((&error["code"], &error["upstream_status"]), (&json!("conflict"), &json!(409)), "{outcome}");
    assert!(error["message"].as_str().unwrap().contains(named), "{error} does not name {named}");
    error.clone()
}

impl TestEnv {
    /// Publishes `request` with its request_id as `Nats-Msg-Id` and waits for its outcome.
    pub async fn provision(&self, request: &Value) -> Value {
        let id = request["request_id"].as_str().expect("the request has a request_id").to_owned();
        self.publish_json(request, Some(&id)).await;
        self.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap().json
    }

    /// Stops `worker`, then deletes the test's streams and database.
    pub async fn finish(self, worker: WorkerHandle) {
        worker.stop().await.unwrap();
        self.cleanup().await;
    }
}

// Contract tests: a provider against a stand-in upstream that answers with the vendor's
// documented examples (`tests/fixtures/<provider>/`).

/// The text of `tests/fixtures/<path>`.
pub fn fixture(path: &str) -> String {
    let path = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON of `tests/fixtures/<path>`.
pub fn fixture_json(path: &str) -> Value {
    serde_json::from_str(&fixture(path)).unwrap()
}

/// One request the stub received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

/// A stand-in upstream: answers `(method, path)` with a status and a fixture file (a list with
/// its length as `Total-Number`, as Logto does), 404 to anything else, and records every request.
pub struct Stub {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    pub async fn start(routes: Vec<(&'static str, &'static str, u16, &'static str)>) -> Stub {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (record, routes) = (record.clone(), routes.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default().to_vec();
                let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
                let query = parts.uri.query().unwrap_or("").to_owned();
                let route = routes.iter().find(|(m, p, _, _)| *m == method && *p == path);
                record.lock().unwrap().push(Seen { method, path, query, headers: parts.headers, body });
                let (status, text) = match route {
                    Some((_, _, status, file)) => (*status, fixture(file)),
                    None => (404, "{}".to_owned()),
                };
                let mut response = axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("date", httpdate::fmt_http_date(std::time::SystemTime::now()));
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) {
                    response = response.header("total-number", items.len());
                }
                response.body(axum::body::Body::from(text)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub { base, seen, task }
    }

    /// The requests received with `method` at `path`.
    pub fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.method == method && s.path == path).cloned().collect()
    }

    /// `provider`'s adapter for a target at this stub, its client `contract-client` with the
    /// secret `contract-secret`.
    pub fn provider(&self, provider: &str) -> Box<dyn Provider> {
        contract_provider(provider, &self.base)
    }
}

/// `provider`'s adapter for a target at `base_url`, its client `contract-client` with the
/// secret `contract-secret`.
fn contract_provider(provider: &str, base_url: &str) -> Box<dyn Provider> {
    orgprov::install_crypto_provider();
    let mut settings = Settings::load(None, Vec::new()).unwrap();
    let target = TargetSettings::new(provider, base_url, "contract-client", "CONTRACT_SECRET");
    settings.targets.insert("contract".into(), target);
    let target = settings.resolve_targets(&|_| Some("contract-secret".to_owned())).unwrap().remove(0);
    let delivery = Delivery::new(&target, Arc::new(Unlimited), Duration::from_secs(5)).unwrap();
    orgprov::providers::build(&target, Arc::new(delivery))
}

/// The create body `provider` prepares from `fields` (JSON, as an organization spec reads
/// them; lists, tables and the template name may be left out) for request `req-contract-1`.
/// No call is made.
pub fn contract_body(provider: &str, fields: Value) -> Value {
    contract_provider(provider, "http://127.0.0.1:9")
        .prepare(&org_spec(fields), &RequestId::parse("req-contract-1").unwrap())
        .unwrap()
}

/// An organization spec of `fields` (JSON, as [`OrgSpec`] reads them) over empty lists and
/// tables and a made-up template name.
pub fn org_spec(fields: Value) -> OrgSpec {
    let defaults = [("domains", json!([])), ("metadata", json!({})), ("branding", json!({})), ("settings", json!({}))];
    let mut spec = serde_json::Map::from_iter(defaults.map(|(k, v)| (k.to_owned(), v)));
    spec.extend([("template".to_owned(), json!("contract")), ("template_version".to_owned(), json!("1"))]);
    spec.extend(fields.as_object().expect("spec fields are an object").clone());
    serde_json::from_value(Value::Object(spec)).expect("a valid organization spec")
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that every field of `ours` appears in `documented` with the same JSON type, in
/// nested objects too. `chosen(path, key)` names the fields whose content is ours to choose:
/// they are not compared.
pub fn assert_documented(ours: &Value, documented: &Value, chosen: &dyn Fn(&str, &str) -> bool) {
    fn walk(ours: &Value, documented: &Value, path: &str, chosen: &dyn Fn(&str, &str) -> bool) {
        let (Some(ours), Some(documented)) = (ours.as_object(), documented.as_object()) else {
            panic!("{path}: expected objects");
        };
        for (key, value) in ours.iter().filter(|(key, _)| !chosen(path, key)) {
            let here = format!("{path}.{key}");
            let doc = documented.get(key).unwrap_or_else(|| panic!("{here} is not a documented field"));
            let kind = |v: &Value| std::mem::discriminant(v);
            assert_eq!(kind(value), kind(doc), "{here}: we send {value}, the documentation shows {doc}");
            if value.is_object() {
                walk(value, doc, &here, chosen);
            }
        }
    }
    walk(ours, documented, "", chosen);
}
