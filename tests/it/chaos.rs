//! The chaos run: three worker processes, 2,000 requests, one replica SIGKILLed and restarted
//! every few seconds, while the simulator injects 5 % 503s, 2 % lost responses and a rate
//! limit. Prints the figures quoted in the README ("Guarantees").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orgprov::config::RateLimitSettings;
use orgprov_sim::{Faults, RateLimit, SimulatorConfig};

use crate::helpers::{TARGET, TestEnv};
use crate::reliability::assert_exactly_once;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_2000_requests_with_kills_and_faults_lose_and_duplicate_nothing() {
    let faults = Faults {
        latency_ms: 5,
        latency_jitter_ms: 20,
        error_rate: 0.05,
        lost_response_rate: 0.02,
        // The upstream's own limit is below ours: real 429s happen and pause the target.
        rate_limit: Some(RateLimit { per_second: 40.0, burst: 12 }),
        ..Faults::default()
    };
    let mut env = TestEnv::with_simulator(SimulatorConfig { faults, ..SimulatorConfig::default() }).await;
    env.settings.targets.get_mut(TARGET).unwrap().rate_limit = RateLimitSettings { per_second: 40.0, burst: 10 };
    let n = 2000;
    let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
    let mut replicas: Vec<_> = (0..3).map(|_| env.worker_process(&[])).collect();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    let mut kills = 0;
    let mut victim = 0;
    loop {
        let done = env.stored_events().len();
        if done >= n || started.elapsed() > Duration::from_secs(240) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        if env.stored_events().len() < n {
            replicas[victim].kill();
            replicas[victim] = env.worker_process(&[]);
            kills += 1;
            victim = (victim + 1) % replicas.len();
        }
    }
    assert_exactly_once(&env, &ids).await;
    let elapsed = started.elapsed();
    drop(replicas);

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for r in env.sim.requests().iter().filter(|r| r.path.ends_with("/api/v2/organizations") && r.method == "POST") {
        *statuses.entry(r.status).or_default() += 1;
    }
    let orgs = env.sim.organizations("auth0").len();
    println!(
        "chaos run: {n} requests, 3 replicas, {kills} SIGKILLs, {:.1} s; creates answered 201: {}, 503: {}, \
         504 (lost response): {}, 429: {}, 409: {}; organizations: {orgs}; lost: 0; duplicates: {}",
        elapsed.as_secs_f64(),
        statuses.get(&201).unwrap_or(&0),
        statuses.get(&503).unwrap_or(&0),
        statuses.get(&504).unwrap_or(&0),
        statuses.get(&429).unwrap_or(&0),
        statuses.get(&409).unwrap_or(&0),
        orgs - n,
    );
    assert!(kills >= 2, "the run must see several kills");
    assert_eq!(orgs, n);
    env.cleanup().await;
}
