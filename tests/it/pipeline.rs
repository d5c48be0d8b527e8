//! The happy path and idempotency: provisioning, duplicates, lost responses, conflicts.

use orgprov_sim::ScriptedFault;
use serde_json::json;

use crate::helpers::{TestEnv, calls, calls_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_requests_become_n_provisioned_events_and_n_organizations() {
    let (env, worker) = TestEnv::with_worker().await;
    let n = 40;
    let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    let outcomes = env.outcomes(&ids, 60).await;
    for (id, event) in &outcomes {
        orgprov::contract::validate_event(&event.bytes).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(event.json["type"], "org.provisioned", "{id}: {}", event.json);
        assert_eq!(event.json["subject"], json!(id));
        assert_eq!(event.json["data"]["created"], true);
        assert_eq!(event.json["data"]["template"], "standard");
        assert_eq!(event.json["data"]["template_version"], "1");
    }
    assert_eq!(env.sim.organizations("auth0").len(), n);
    let settled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM requests WHERE state = 'succeeded' AND organization_id IS NOT NULL")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(settled, n as i64);
    // The org carries our ownership tag and the template's defaults.
    let org = &env.sim.organizations("auth0")[0];
    assert!(org["metadata"]["orgprov_request_id"].as_str().unwrap().starts_with(&env.run));
    assert_eq!(org["metadata"]["plan"], "standard");
    env.wait_consumer_idle(10).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_three_times_gives_one_organization_and_identical_events() {
    let (env, worker) = TestEnv::with_worker().await;
    let id = env.id("dup");
    let request = env.request(&id, &env.name("dup"));
    // No Nats-Msg-Id: the server cannot dedupe, the worker must.
    for _ in 0..3 {
        env.publish_json(&request, None).await;
    }
    env.wait_until(60, "three outcome events", |env| env.events_for(&id).len() >= 3).await;
    let events = env.events_for(&id);
    assert!(events.iter().all(|e| e.bytes == events[0].bytes), "every emitted outcome is byte-for-byte the same");
    assert_eq!(events[0].json["type"], "org.provisioned");
    assert_eq!(env.orgs_named(&env.name("dup")), 1);
    assert_eq!(env.create_calls(), 1, "no second create");
    env.wait_consumer_idle(10).await;

    // A later copy with different content never provisions again: the original stands.
    let mut changed = request.clone();
    changed["organization"]["name"] = json!(env.name("other"));
    env.publish_json(&changed, None).await;
    env.wait_until(30, "a fourth (re-emitted) event", |env| env.events_for(&id).len() >= 4).await;
    assert_eq!(env.events_for(&id)[3].bytes, events[0].bytes);
    assert_eq!(env.orgs_named(&env.name("other")), 0);
    let mismatches: i64 = sqlx::query_scalar("SELECT mismatches FROM requests WHERE request_id = $1")
        .bind(&id)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(mismatches, 1);
    env.finish(worker).await;
}

async fn lost_response_case(fault: ScriptedFault) {
    let env = TestEnv::new().await;
    env.sim.push_script("auth0", vec![fault]);
    let worker = env.start_worker().await;
    let id = env.id("lost");
    env.publish_json(&env.request(&id, &env.name("lost")), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    assert_eq!(outcome.json["type"], "org.provisioned", "{}", outcome.json);
    assert_eq!(outcome.json["data"]["created"], false, "adopted, not created again");
    assert_eq!(env.orgs_named(&env.name("lost")), 1);
    assert_eq!(env.create_calls(), 1, "reconciled by lookup instead of a second create");
    let org_id = env.sim.organizations("auth0")[0]["id"].clone();
    assert_eq!(outcome.json["data"]["organization_id"], org_id);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_504_is_reconciled_into_one_organization() {
    lost_response_case(ScriptedFault::LostResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_after_create_is_reconciled_into_one_organization() {
    lost_response_case(ScriptedFault::DropConnection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_someone_else_fails_with_conflict_without_a_retry_loop() {
    let env = TestEnv::new().await;
    let name = env.name("taken");
    env.sim.insert_organization("auth0", json!({ "name": name, "metadata": { "owner": "another-system" } }));
    let worker = env.start_worker().await;
    let id = env.id("taken");
    env.publish_json(&env.request(&id, &name), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    let data = &outcome.json["data"];
    assert_eq!(outcome.json["type"], "org.failed");
    assert_eq!(data["error"]["code"], "conflict");
    assert_eq!(data["error"]["upstream_status"], 409);
    assert!(data["error"]["message"].as_str().unwrap().contains(&name));
    assert_eq!(env.create_calls(), 1, "one create, one lookup, then stop");
    assert_eq!(env.orgs_named(&name), 1);
    env.wait_consumer_idle(10).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_400_fails_as_rejected_with_the_upstream_message_and_5xx_is_retried() {
    let env = TestEnv::new().await;
    env.sim.push_script("auth0", vec![ScriptedFault::Status { status: 400 }, ScriptedFault::Status { status: 503 }]);
    let worker = env.start_worker().await;
    let rejected = env.id("rejected");
    env.publish_json(&env.request(&rejected, &env.name("rejected")), Some(&rejected)).await;
    let outcome = env.outcomes(std::slice::from_ref(&rejected), 30).await.remove(&rejected).unwrap();
    assert_eq!(outcome.json["data"]["error"]["code"], "rejected");
    assert_eq!(outcome.json["data"]["error"]["upstream_status"], 400);

    let retried = env.id("retried");
    env.publish_json(&env.request(&retried, &env.name("retried")), Some(&retried)).await;
    let outcome = env.outcomes(std::slice::from_ref(&retried), 30).await.remove(&retried).unwrap();
    assert_eq!(outcome.json["type"], "org.provisioned");
    assert_eq!(env.orgs_named(&env.name("retried")), 1);
    // 503 is ambiguous: the retry looks the name up before creating again.
    let recorded = calls(&env, &retried).await;
    assert_eq!(calls_of(&recorded), vec![("create", Some(503)), ("lookup", Some(404)), ("create", Some(201))]);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_refreshed_once_and_work_goes_on() {
    let (env, worker) = TestEnv::with_worker().await;
    let first = env.id("before");
    env.publish_json(&env.request(&first, &env.name("before")), Some(&first)).await;
    env.outcomes(std::slice::from_ref(&first), 30).await;
    env.sim.revoke_tokens();
    let ids: Vec<String> = (0..10).map(|i| env.id(format!("after{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(format!("after{i}"))), Some(id)).await;
    }
    let outcomes = env.outcomes(&ids, 30).await;
    assert!(outcomes.values().all(|e| e.json["type"] == "org.provisioned"));
    let token_calls = env.sim.requests().iter().filter(|r| r.path.ends_with("/oauth/token")).count();
    assert_eq!(token_calls, 2, "one token at start, one refresh after the revocation (single-flight)");
    env.finish(worker).await;
}
