//! A worker process killed with SIGKILL mid-batch and started again: every request still ends
//! exactly once, with at most one organization each.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};

use orgprov::simulator::{Faults, SimulatorConfig};

use crate::helpers::{SECRET_VAR, TARGET, TestEnv, pg_base_url};

fn config_file(env: &TestEnv, dir: &std::path::Path) -> std::path::PathBuf {
    let n = &env.settings.nats;
    let text = format!(
        r#"templates_dir = "{templates}"
[nats]
url = "{nats}"
subject_prefix = "{prefix}"
requests_stream = "{requests}"
events_stream = "{events}"
consumer = "{consumer}"
ack_wait_secs = 8
[postgres]
url = "{pg}"
max_connections = 8
[worker]
max_in_flight = 16
lease_secs = 4
max_inline_wait_secs = 2
[targets.{target}]
provider = "auth0"
base_url = "{base}"
client_id = "orgprov-sim"
client_secret_env = "{secret_var}"
timeout_ms = 3000
rate_limit = {{ per_second = 500.0, burst = 50 }}
"#,
        templates = env.settings.templates_dir.display(),
        nats = n.url,
        prefix = n.subject_prefix,
        requests = n.requests_stream,
        events = n.events_stream,
        consumer = n.consumer,
        pg = env.settings.postgres.url,
        target = TARGET,
        base = env.sim.base_url("auth0"),
        secret_var = SECRET_VAR,
    );
    let path = dir.join("orgprov.toml");
    std::fs::write(&path, text).unwrap();
    let _ = pg_base_url();
    path
}

fn spawn_worker(env: &TestEnv, config: &std::path::Path) -> Child {
    // The log lands beside the config, for a look when the test fails.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(config.with_extension("log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_orgprov"))
        .args(["--config", config.to_str().unwrap(), "worker"])
        .env(SECRET_VAR, env.secret())
        .env("ORGPROV_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("worker process starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_and_restarted_finishes_every_request_exactly_once() {
    // Latency keeps calls in flight when the kill lands; lost responses exercise reconcile.
    let faults = Faults { latency_ms: 40, latency_jitter_ms: 40, lost_response_rate: 0.05, ..Faults::default() };
    let env = TestEnv::with_simulator(SimulatorConfig { faults, ..SimulatorConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&env, dir.path());
    let mut worker = spawn_worker(&env, &config);

    let n = 150;
    let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    let log = config.with_extension("log");
    let started = env.try_wait_until(60, |env| env.events().len() >= n / 3).await;
    assert!(
        started,
        "a third of the batch did not settle; worker log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let at_kill = env.events().len();
    assert!(at_kill < n, "the kill must land mid-batch ({at_kill} of {n} done)");

    let mut worker = spawn_worker(&env, &config);
    let outcomes = env.outcomes(&ids, 120).await;
    worker.kill().unwrap();
    worker.wait().unwrap();

    assert!(outcomes.values().all(|e| e.json["type"] == "org.provisioned"), "every request provisioned");
    // Exactly one terminal state per request in Postgres.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT request_id, state FROM requests").fetch_all(&env.db).await.unwrap();
    assert_eq!(rows.len(), n);
    assert!(rows.iter().all(|(_, s)| s == "succeeded"));
    // At most one organization per request, and exactly one here.
    let names: Vec<String> =
        env.sim.organizations("auth0").iter().map(|o| o["name"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(names.len(), unique.len(), "an organization was created twice");
    assert_eq!(names.len(), n);
    // Every event emitted for a request carries the same id.
    let mut ids_seen: HashMap<String, HashSet<String>> = HashMap::new();
    for e in env.events() {
        let rid = e.json["data"]["request_id"].as_str().unwrap().to_owned();
        ids_seen.entry(rid).or_default().insert(e.json["id"].as_str().unwrap().to_owned());
    }
    assert!(ids_seen.values().all(|s| s.len() == 1));
    // Database and events agree on the organization ids.
    let db: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT request_id, organization_id FROM requests")
            .fetch_all(&env.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (id, e) in &outcomes {
        assert_eq!(e.json["data"]["organization_id"].as_str().unwrap(), db[id]);
    }
    env.cleanup().await;
}
