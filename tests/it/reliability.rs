//! Reliability under faults, injected for real (the crash points are in `crash_points`): SIGTERM,
//! SIGSTOP past the ack wait, 429 storms, the replica-wide rate limit, isolation between
//! targets, late commits, dead letters and replay.
//!
//! The oracle everywhere: every request ends in exactly one terminal state, none is lost, at
//! most one organization per request_id upstream, every event of a request has the same id,
//! and the database and the events agree.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use orgprov_sim::{Faults, ScriptedFault, Simulator, SimulatorConfig};
use serde_json::json;

use crate::helpers::{TARGET, TestEnv, target_settings};

/// Where each provider's organizations carry our ownership tag.
fn tag_of<'a>(provider: &str, org: &'a serde_json::Value) -> Option<&'a str> {
    let pointer = match provider {
        "auth0" => "/metadata/orgprov_request_id",
        "secureauth" => "/metadata/payload/orgprov_request_id",
        "stytch" => "/trusted_metadata/orgprov_request_id",
        "biot" => "/orgprov_request_id",
        "logto" => "/customData/orgprov_request_id",
        other => panic!("no tag location for {other}"),
    };
    org.pointer(pointer).and_then(serde_json::Value::as_str)
}

/// Checks the oracle for `ids` (Auth0), all expected to be provisioned.
pub async fn assert_exactly_once(env: &TestEnv, ids: &[String]) {
    assert_exactly_once_for(env, "auth0", ids).await;
}

/// Checks the oracle for `ids` of `provider`, all expected to be provisioned.
pub async fn assert_exactly_once_for(env: &TestEnv, provider: &str, ids: &[String]) {
    let outcomes = env.outcomes(ids, 120).await;
    let rows: HashMap<String, (String, Option<String>)> = sqlx::query_as::<_, (String, String, Option<String>)>(
        "SELECT request_id, state, organization_id FROM requests",
    )
    .fetch_all(&env.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, state, org)| (id, (state, org)))
    .collect();
    let mut event_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for e in env.events().into_iter().chain(env.stored_events()) {
        if let Some(id) = e.json["data"]["request_id"].as_str() {
            event_ids.entry(id.to_owned()).or_default().insert(e.json["id"].as_str().unwrap().to_owned());
        }
    }
    let orgs = env.sim.organizations(provider);
    let mut per_request: HashMap<String, usize> = HashMap::new();
    for o in &orgs {
        if let Some(tag) = tag_of(provider, o) {
            *per_request.entry(tag.to_owned()).or_default() += 1;
        }
    }
    for id in ids {
        let event = &outcomes[id];
        assert_eq!(event.json["type"], "org.provisioned", "{id}: {}", event.json);
        let (state, org) = &rows[id];
        assert_eq!(state, "succeeded", "{id}");
        assert_eq!(org.as_deref(), event.json["data"]["organization_id"].as_str(), "{id}: database and event agree");
        assert_eq!(event_ids[id].len(), 1, "{id}: every event of a request has the same id");
        assert_eq!(per_request.get(id), Some(&1), "{id}: exactly one organization upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_in_the_grace_period_and_redelivers_nothing_finished() {
    let faults = Faults { latency_ms: 20, latency_jitter_ms: 30, ..Faults::default() };
    let env = TestEnv::with_simulator(SimulatorConfig { faults, ..SimulatorConfig::default() }).await;
    let n = 200;
    let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
    let mut worker = env.worker_process(&[]);
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    env.wait_until(60, "some requests settled", |env| env.events().len() >= 40).await;
    worker.signal("TERM");
    let grace = env.settings.worker.shutdown_grace_secs;
    let status = worker.wait_exit(grace + 15).await.expect("worker exits within the grace period");
    assert_eq!(status.code(), Some(0), "log:\n{}", env.worker_log());
    let finished_before: HashSet<String> =
        sqlx::query_scalar("SELECT request_id FROM requests WHERE state <> 'active'")
            .fetch_all(&env.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&env.db).await.unwrap();
    assert_eq!(unpublished, 0, "the outbox is flushed before exit");

    let _next = env.worker_process(&[]);
    assert_exactly_once(&env, &ids).await;
    // A finished request that came back would re-emit its outcome: none did.
    for id in &finished_before {
        assert_eq!(
            env.events_for(id).len(),
            1,
            "{id} finished before SIGTERM but was delivered again; worker log:\n{}",
            env.worker_log()
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_the_ack_wait_is_fenced_out_by_the_replica_that_took_over() {
    let env = TestEnv::new().await;
    // The first create is held upstream for 3 s (then commits), so worker A is mid-call when
    // it is stopped.
    env.sim.push_script("auth0", vec![ScriptedFault::Hang { ms: 3_000 }]);
    let id = env.id("paused");
    let a = env.worker_process(&[]);
    env.publish_json(&env.request(&id, &env.name("paused")), Some(&id)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started: Option<i64> = sqlx::query_scalar("SELECT attempts FROM requests WHERE request_id = $1")
            .bind(&id)
            .fetch_optional(&env.db)
            .await
            .unwrap();
        if started == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "worker A never started its create");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("STOP");
    let _b = env.worker_process(&[]);
    // B gets the redelivery after the ack wait, claims (A's lease expired) and reconciles.
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    assert_eq!(outcome.json["data"]["created"], false, "B adopted the organization A's call created");
    a.signal("CONT");
    // A wakes up with a 201 in hand but a stale fencing token: it must not settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once(&env, std::slice::from_ref(&id)).await;
    let token: i64 = sqlx::query_scalar("SELECT fencing_token FROM requests WHERE request_id = $1")
        .bind(&id)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(token >= 2, "B claimed with a newer token");
    assert_eq!(env.orgs_named(&env.name("paused")), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_then_a_late_commit_still_gives_one_organization() {
    let env = TestEnv::new().await;
    // 503 now, the organization appears 1.5 s later: after the retry's lookup found nothing.
    // The retry's create is held upstream until the late organization exists: it meets a 409.
    env.sim
        .push_script("auth0", vec![ScriptedFault::LateCommit { delay_ms: 1_500 }, ScriptedFault::Hang { ms: 1_700 }]);
    let worker = env.start_worker().await;
    let id = env.id("late");
    env.publish_json(&env.request(&id, &env.name("late")), Some(&id)).await;
    assert_exactly_once(&env, std::slice::from_ref(&id)).await;
    assert_eq!(env.orgs_named(&env.name("late")), 1);
    env.finish(worker).await;
}

/// Arrival times (seconds since the first) of every `/api/v2` call.
fn api_arrivals(sim: &Simulator) -> Vec<f64> {
    let calls: Vec<_> = sim.requests().into_iter().filter(|r| r.path.contains("/api/v2/")).collect();
    let Some(first) = calls.iter().map(|r| r.at).min() else { return Vec::new() };
    let mut t: Vec<f64> = calls.iter().map(|r| (r.at - first).as_seconds_f64()).collect();
    t.sort_by(f64::total_cmp);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_together_never_exceed_the_configured_rate() {
    let mut env = TestEnv::new().await;
    let (rate, burst) = (20.0, 5u32);
    env.settings.targets.get_mut(TARGET).unwrap().rate_limit =
        orgprov::config::RateLimitSettings { per_second: rate, burst };
    let replicas: Vec<_> = (0..3).map(|_| env.worker_process(&[])).collect();
    let n = 200;
    let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    assert_exactly_once(&env, &ids).await;
    drop(replicas);
    let t = api_arrivals(&env.sim);
    assert!(t.len() >= n);
    for w in [1.0, 5.0, 10.0] {
        let allowed = (rate * w).floor() as usize + burst as usize;
        let worst = (0..t.len()).map(|i| t[i..].iter().take_while(|&&x| x < t[i] + w).count()).max().unwrap();
        assert!(worst <= allowed, "{worst} calls in a {w} s window; allowed {allowed}");
    }
    env.cleanup().await;
}

async fn storm(retry_after: bool) {
    let mut env = TestEnv::new().await;
    env.settings.targets.get_mut(TARGET).unwrap().max_in_flight = 4;
    let script = (0..3).map(|_| ScriptedFault::RateLimited { retry_after_secs: retry_after.then_some(3) }).collect();
    env.sim.push_script("auth0", script);
    let replicas: Vec<_> = (0..3).map(|_| env.worker_process(&[])).collect();
    let ids: Vec<String> = (0..30).map(|i| env.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    assert_exactly_once(&env, &ids).await;
    drop(replicas);
    let requests = env.sim.requests();
    let limited: Vec<_> = requests.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 3);
    // Calls already on their way when a 429 was answered cannot be called back (another
    // replica may have taken its slot just before the pause was recorded); any call that
    // starts later must wait for the named time. The margin covers the in-flight ones on a
    // loaded machine.
    let grace = time::Duration::milliseconds(500);
    for l in &limited {
        let named = l.retry_at.expect("the 429 names a time");
        let early: Vec<_> = requests
            .iter()
            .filter(|r| r.path.contains("/api/v2/") && r.at > l.answered_at + grace && r.at < named)
            .map(|r| (r.path.clone(), r.at))
            .collect();
        assert!(early.is_empty(), "calls before the time a 429 named ({named}): {early:?}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_obeyed_by_every_replica() {
    storm(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_only_the_reset_header_is_obeyed_by_every_replica() {
    storm(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_target_does_not_starve_the_others() {
    let mut env = TestEnv::new().await;
    // Target B is a second tenant on its own simulator.
    let sim_b = Simulator::start("127.0.0.1:0".parse().unwrap(), SimulatorConfig::default()).await.unwrap();
    env.settings.targets.insert("tenant-b".into(), target_settings("auth0", &sim_b.base_url("auth0")));
    env.sim.push_script("auth0", vec![ScriptedFault::RateLimited { retry_after_secs: Some(60) }]);
    let worker = env.start_worker().await;
    let paused: Vec<String> = (0..1000).map(|i| env.id(format!("a{i}"))).collect();
    for (i, id) in paused.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(format!("a{i}"))), Some(id)).await;
    }
    env.wait_until(30, "target A paused", |env| env.sim.requests().iter().any(|r| r.status == 429)).await;
    let started = std::time::Instant::now();
    let flowing: Vec<String> = (0..100).map(|i| env.id(format!("b{i}"))).collect();
    for (i, id) in flowing.iter().enumerate() {
        let mut body = env.request(id, &env.name(format!("b{i}")));
        body["target"] = json!("tenant-b");
        env.publish_json(&body, Some(id)).await;
    }
    let outcomes = env.outcomes(&flowing, 60).await;
    let took = started.elapsed();
    assert!(outcomes.values().all(|e| e.json["type"] == "org.provisioned"));
    assert!(took < Duration::from_secs(30), "target B took {took:?} while A was paused");
    assert_eq!(sim_b.organizations("auth0").len(), 100);
    // Calls already on the wire when the 429 was answered cannot be called back; after that,
    // nothing reaches the paused target.
    let requests = env.sim.requests();
    let paused_at = requests.iter().find(|r| r.status == 429).unwrap().answered_at + time::Duration::milliseconds(500);
    let after = requests.iter().filter(|r| r.path.contains("/api/v2/") && r.at > paused_at).count();
    assert_eq!(after, 0, "no call to the paused target");
    let failed_a = env
        .events()
        .iter()
        .filter(|e| e.json["data"]["target"] == json!(TARGET) && e.json["type"] == "org.failed")
        .count();
    assert_eq!(failed_a, 0, "A's requests wait, they do not fail");
    worker.stop().await.unwrap();
    sim_b.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_requests_are_dead_lettered_and_replay_provisions_them_once() {
    let mut env = TestEnv::new().await;
    env.settings.worker.max_attempts = 3;
    env.sim.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    let worker = env.start_worker().await;
    let id = env.id("dead");
    env.publish_json(&env.request(&id, &env.name("dead")), Some(&id)).await;
    let failed = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    assert_eq!(failed.json["data"]["error"]["code"], "exhausted", "{}", failed.json);
    assert_eq!(failed.json["data"]["generation"], 1);
    // `exhausted` only after a final lookup found nothing.
    let last_call: String =
        sqlx::query_scalar("SELECT call FROM attempts WHERE request_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(&id)
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(last_call, "lookup");
    let ok = env.id("ok");
    env.sim.set_faults(Faults::default());
    env.publish_json(&env.request(&ok, &env.name("ok")), Some(&ok)).await;
    env.outcomes(std::slice::from_ref(&ok), 30).await;

    let replay = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orgprov"));
        cmd.args(["--config", env.config_file().to_str().unwrap(), "replay"]).args(args);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = replay(&["--code", "exhausted"]);
    assert!(printed.contains(&format!("{id}: replaying as generation 2")), "{printed}");
    let printed = replay(&["--id", &ok]);
    assert!(printed.contains("skipped, it is succeeded"), "{printed}");

    env.wait_until(30, "the replayed generation's outcome", |env| {
        env.events_for(&id).iter().any(|e| e.json["data"]["generation"] == 2)
    })
    .await;
    let second = env.events_for(&id).into_iter().find(|e| e.json["data"]["generation"] == 2).unwrap();
    assert_eq!(second.json["type"], "org.provisioned");
    assert_ne!(second.json["id"], failed.json["id"], "each generation has its own event id");
    assert_eq!(env.orgs_named(&env.name("dead")), 1);
    assert_eq!(env.orgs_named(&env.name("ok")), 1, "a succeeded request is never provisioned again");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_published_outbox_rows_and_old_attempts_but_never_unsent_events() {
    let env = TestEnv::new().await;
    let naming = orgprov::store::EventNaming { source: "t".into(), subject_prefix: String::new() };
    let store = orgprov::store::Store::connect(&env.settings.postgres.url, 2, naming).await.unwrap();
    let setup = "
        INSERT INTO requests (request_id, content_hash, state) VALUES ('r1', 'h', 'failed');
        INSERT INTO events (event_id, request_id, generation, event_type, subject, payload)
            VALUES ('e1', 'r1', 1, 'org.failed', 'org.failed', '\\x7b7d');
        INSERT INTO outbox (event_id, enqueued_at, published_at) VALUES
            ('e1', now() - interval '3 hours', now() - interval '2 hours'),
            ('e1', now() - interval '3 hours', NULL),
            ('e1', now(), now());
        INSERT INTO attempts (request_id, generation, fencing_token, call, started_at, duration_ms, outcome) VALUES
            ('r1', 1, 1, 'create', now() - interval '31 days', 5, 'ok'),
            ('r1', 1, 1, 'create', now() - interval '1 day', 5, 'ok');";
    sqlx::raw_sql(setup).execute(&env.db).await.unwrap();

    assert_eq!(store.sweep_outbox(Duration::from_secs(3600)).await.unwrap(), 1);
    let left: Vec<(Option<time::OffsetDateTime>,)> =
        sqlx::query_as("SELECT published_at FROM outbox ORDER BY id").fetch_all(&env.db).await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(left[0].0.is_none(), "an unsent event is never swept, however old");
    assert_eq!(store.sweep_attempts(Duration::from_secs(30 * 86_400)).await.unwrap(), 1);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts").fetch_one(&env.db).await.unwrap();
    assert_eq!(attempts, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_and_the_request_still_ends_once() {
    let env = TestEnv::new().await;
    env.sim.push_script("auth0", vec![ScriptedFault::Hang { ms: 1_500 }]);
    let mut worker = env.worker_process(&[]);
    let id = env.id("twice");
    env.publish_json(&env.request(&id, &env.name("twice")), Some(&id)).await;
    env.wait_until(30, "the create is on the wire", |env| {
        env.sim.requests().iter().any(|r| r.path.ends_with("/oauth/token"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.signal("TERM");
    let status = worker.wait_exit(3).await.expect("the second signal ends the process at once");
    assert_eq!(status.code(), Some(130));
    let _next = env.worker_process(&[]);
    assert_exactly_once(&env, std::slice::from_ref(&id)).await;
    env.cleanup().await;
}
