//! NATS and Postgres restarted under a running worker (private servers on random ports): no
//! request is lost or duplicated, and the worker recovers without being restarted.

use std::time::Duration;

use orgprov_sim::{Faults, SimulatorConfig};

use crate::helpers::{TestEnv, nats_url, pg_base_url};
use crate::reliability::assert_exactly_once;
use crate::servers::{NatsServer, PgServer};

/// Publishes every request, retrying each until the stream acknowledges it (what a
/// publisher does while NATS is down).
fn publish_all(env: &TestEnv, ids: &[String]) -> tokio::task::JoinHandle<()> {
    let js = env.js.clone();
    let subject = env.settings.nats.requests_subject();
    let bodies: Vec<(String, Vec<u8>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), serde_json::to_vec(&env.request(id, &env.name(i))).unwrap()))
        .collect();
    tokio::spawn(async move {
        for (id, body) in bodies {
            loop {
                let publish = orgprov::bus::publish_request(&js, &subject, body.clone(), Some(&id));
                match tokio::time::timeout(Duration::from_secs(3), publish).await {
                    Ok(Ok(_)) => break,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn slow_simulator() -> SimulatorConfig {
    SimulatorConfig {
        faults: Faults { latency_ms: 10, latency_jitter_ms: 20, ..Faults::default() },
        ..SimulatorConfig::default()
    }
}

/// 200 requests through a worker on `env`; `restart` runs once a quarter of them are done.
/// Every request still ends exactly once, and the worker was never restarted.
async fn survives_a_restart_mid_run(env: &TestEnv, restart: impl AsyncFnOnce()) {
    let worker = env.start_worker().await;
    let ids: Vec<String> = (0..200).map(|i| env.id(i)).collect();
    let publisher = publish_all(env, &ids);
    env.wait_until(60, "a quarter of the requests done", |env| env.stored_events().len() >= 50).await;
    assert!(env.stored_events().len() < ids.len(), "the restart must land mid-run");
    restart().await;
    publisher.await.unwrap();
    assert_exactly_once(env, &ids).await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_and_duplicates_nothing() {
    let mut nats = NatsServer::start().await;
    let env = TestEnv::with_servers(slow_simulator(), &nats.url(), &pg_base_url()).await;
    survives_a_restart_mid_run(&env, async || nats.restart(Duration::from_secs(2)).await).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_and_duplicates_nothing() {
    let pg = PgServer::start().await;
    let env = TestEnv::with_servers(slow_simulator(), &nats_url(), &pg.base_url()).await;
    survives_a_restart_mid_run(&env, async || pg.restart(Duration::from_secs(2)).await).await;
    env.cleanup().await;
}
