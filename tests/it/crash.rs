//! A worker process killed with SIGKILL mid-batch and started again: every request still ends
//! exactly once, with at most one organization each.

use std::collections::{HashMap, HashSet};

use orgprov_sim::{Faults, SimulatorConfig};

use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_and_restarted_finishes_every_request_exactly_once() {
    // Latency keeps calls in flight when the kill lands; lost responses exercise reconcile.
    let faults = Faults { latency_ms: 40, latency_jitter_ms: 40, lost_response_rate: 0.05, ..Faults::default() };
    let env = TestEnv::with_simulator(SimulatorConfig { faults, ..SimulatorConfig::default() }).await;
    let mut worker = env.worker_process(&[]);

    let n = 150;
    let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    let started = env.try_wait_until(60, |env| env.events().len() >= n / 3).await;
    assert!(started, "a third of the batch did not settle; worker log:\n{}", env.worker_log());
    worker.kill(); // SIGKILL
    let at_kill = env.events().len();
    assert!(at_kill < n, "the kill must land mid-batch ({at_kill} of {n} done)");

    let mut worker = env.worker_process(&[]);
    let outcomes = env.outcomes(&ids, 120).await;
    worker.kill();

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
