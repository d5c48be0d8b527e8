//! Logto, end to end (NATS → worker → simulated Logto → Postgres → event) and by contract (our
//! requests against the vendor's documented examples, the documented answers through our
//! parser).
//!
//! Logto cannot refuse a duplicate: names are not unique and there is no conflict error. These
//! stories pin how reconciliation copes: the tag in `customData` is the only proof of ownership,
//! a name alone is never adopted, the search walks every page, and after an ambiguous create
//! the worker waits out the upstream timeout so that a create still running upstream (a lost
//! response, a late commit) is found instead of duplicated. Every target here has
//! `timeout_ms = 500`, so the reconcile delay is 1.5 s.

use std::time::Duration;

use orgprov::contract::{ErrorCode, RequestId};
use orgprov::providers::{Created, ErrorClass, Lookup};
use orgprov_sim::{ScriptedFault, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{
    Stub, TestEnv, Upstream, assert_documented, calls, calls_of, contract_body, fixture_json, org_spec,
};

const LOGTO: Upstream = Upstream {
    provider: "logto",
    target: "acme-logto",
    create_path: "/api/organizations",
    token_path: "/oidc/token",
    created_status: 201,
    org_id: "id",
    key: ("/request_id", "/customData/orgprov_request_id"),
};
const TIMEOUT_MS: u64 = 500;
/// Target timeout plus the provider's one-second margin.
const RECONCILE_DELAY: Duration = Duration::from_millis(TIMEOUT_MS + 1000);

async fn logto_env() -> TestEnv {
    LOGTO.env(SimulatorConfig::default(), |t| t.timeout_ms = TIMEOUT_MS).await
}

fn request(id: &str, name: &str) -> Value {
    json!({ "request_id": id, "target": LOGTO.target, "template": "logto-standard", "source": "test",
            "organization": { "name": name, "metadata": { "seats": 25 } } })
}

fn tagged(env: &TestEnv, id: &str) -> Vec<Value> {
    LOGTO.orgs(env, "/customData/orgprov_request_id", id)
}

/// The searches (lookups) the simulator received.
fn searches(env: &TestEnv) -> usize {
    env.sim.requests().iter().filter(|r| r.method == "GET" && r.path.ends_with(LOGTO.create_path)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_provisions_an_organization_tagged_with_the_request_id() {
    let env = logto_env().await;
    let (worker, org) = LOGTO.provisions(&env, &request(&env.id("ok"), &env.name("ok"))).await;
    // customData keeps metadata types: Logto allows any JSON there.
    assert_eq!((org["customData"]["seats"].as_u64(), org["customData"]["plan"].as_str()), (Some(25), Some("standard")));
    assert_eq!(org["description"], "Customer organization provisioned by orgprov");
    assert_eq!(org["isMfaRequired"], false);
    assert!(searches(&env) > 0, "after creating, the worker searched for duplicates of its tag");
    env.wait_consumer_idle(10).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_a_lost_response_is_reconciled_after_the_reconcile_delay_into_one_organization() {
    let env = logto_env().await;
    let id = env.id("lost");
    LOGTO.lost_create_is_adopted(&env, ScriptedFault::LostResponse, &request(&id, &env.name("lost"))).await;
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(504)), ("lookup", Some(200))]);
    // The lookup waited out the upstream timeout before trusting the search.
    let requests = env.sim.requests();
    let at = |method: &str| requests.iter().find(|r| r.method == method && r.path.ends_with(LOGTO.create_path));
    let waited = at("GET").unwrap().at - at("POST").unwrap().at;
    assert!(waited >= RECONCILE_DELAY - Duration::from_millis(50), "looked up after {waited}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_late_commits_within_the_reconcile_delay_never_leave_two_organizations() {
    let env = logto_env().await;
    // 100 ms: lands almost at once. 1000 ms: longer than the target timeout and than a lookup
    // takes, so only the reconcile delay (1.5 s) keeps the lookup from missing it.
    let delays = [100u64, 1000];
    let worker = env.start_worker().await;
    for delay_ms in delays {
        env.sim.push_script(LOGTO.provider, vec![ScriptedFault::LateCommit { delay_ms }]);
        let (id, name) = (env.id(format!("late{delay_ms}")), env.name(format!("late{delay_ms}")));
        let outcome = env.provision(&request(&id, &name)).await;
        assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
        assert_eq!(outcome["data"]["created"], false, "delay {delay_ms} ms: found, not created again");
        assert_eq!(tagged(&env, &id).len(), 1, "delay {delay_ms} ms");
        assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(500)), ("lookup", Some(200))]);
    }
    // Nothing is still on its way: wait longer than any scripted delay and count again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for delay_ms in delays {
        assert_eq!(tagged(&env, &env.id(format!("late{delay_ms}"))).len(), 1);
    }
    assert_eq!(LOGTO.creates(&env), 2);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_an_organization_with_the_same_name_but_not_our_tag_is_never_adopted() {
    let env = logto_env().await;
    let (id, name) = (env.id("same"), env.name("same"));
    env.sim.insert_organization(LOGTO.provider, json!({ "name": name, "customData": {} }));
    let someone_else = json!({ "name": name, "customData": { "orgprov_request_id": "someone-else" } });
    env.sim.insert_organization(LOGTO.provider, someone_else);
    // A 503 makes the create ambiguous, so the worker searches and meets both namesakes.
    env.sim.push_script(LOGTO.provider, vec![ScriptedFault::Status { status: 503 }]);
    let worker = env.start_worker().await;
    let outcome = env.provision(&request(&id, &name)).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], true, "created its own organization");
    assert_eq!(LOGTO.orgs(&env, "/name", &name).len(), 3);
    let ours = tagged(&env, &id);
    assert_eq!(ours.len(), 1);
    assert_eq!(outcome["data"]["organization_id"], ours[0]["id"]);
    assert_eq!(
        calls_of(&calls(&env, &id).await),
        vec![("create", Some(503)), ("lookup", Some(404)), ("create", Some(201))],
        "the namesakes were neither adopted nor reported as a conflict"
    );
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_the_lookup_walks_every_page_of_the_search() {
    let env = logto_env().await;
    let (id, name) = (env.id("paged"), env.name("paged"));
    // 150 older organizations whose names contain ours: `q` matches them all, ours is on page 2.
    for i in 0..150 {
        env.sim.insert_organization(LOGTO.provider, json!({ "name": format!("{name} branch {i}") }));
    }
    env.sim.push_script(LOGTO.provider, vec![ScriptedFault::LostResponse]);
    let worker = env.start_worker().await;
    let outcome = env.provision(&request(&id, &name)).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], false);
    assert_eq!(tagged(&env, &id).len(), 1);
    assert_eq!(searches(&env), 2, "two pages of 100");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_input_breaking_logtos_limits_fails_before_any_http_call() {
    let env = logto_env().await;
    let mut long_description = request(&env.id("long-description"), &env.name("d"));
    long_description["organization"]["description"] = json!("d".repeat(257));
    let cases = [(request(&env.id("long-name"), &"n".repeat(129)), "1-128"), (long_description, "256")];
    LOGTO.refuses_before_any_call(&env, &cases).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_tokens_are_refreshed_once_after_expiry() {
    let env = logto_env().await;
    let worker = env.start_worker().await;
    let first = env.provision(&request(&env.id("first"), &env.name("first"))).await;
    assert_eq!(first["type"], "org.provisioned");
    env.sim.revoke_tokens();
    let ids: Vec<String> = (0..5).map(|i| env.id(format!("after{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&request(id, &env.name(format!("after{i}"))), Some(id)).await;
    }
    let outcomes = env.outcomes(&ids, 30).await;
    assert!(outcomes.values().all(|e| e.json["type"] == "org.provisioned"));
    assert_eq!(LOGTO.token_calls(&env), 2, "one token at start, one refresh after the revocation (single-flight)");
    for id in &ids {
        assert_eq!(tagged(&env, id).len(), 1);
    }
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_a_429_without_headers_is_retried_and_provisions_once() {
    let env = logto_env().await;
    LOGTO.rate_limited_create_is_retried(&env, None, &request(&env.id("limited"), &env.name("limited"))).await;
    env.cleanup().await
}

// Contract: our requests have the documented shape; the documented answers parse.

const TOKEN: (&str, &str, u16, &str) = ("POST", "/oidc/token", 200, "logto/token-response.json");

/// A spec with every field Logto documents, as the vendor's example fills it.
fn contract_spec() -> Value {
    json!({
        "name": "string", "description": "string", "metadata": { "plan": "standard" },
        "branding": { "logo_url": "https://cdn.example/logo.png" },
        "settings": {
            "is_mfa_required": true,
            "dark_logo_url": "https://cdn.example/logo-dark.png",
            "favicon": "https://cdn.example/favicon.ico",
            "dark_favicon": "https://cdn.example/favicon-dark.ico",
        },
    })
}

#[tokio::test]
async fn logto_contract_our_create_body_has_the_documented_shape() {
    let body = contract_body(LOGTO.provider, contract_spec());
    // customData is "arbitrary": its keys are ours to choose.
    let custom_data = |path: &str, key: &str| path.is_empty() && key == "customData";
    assert_documented(&body, &fixture_json("logto/create-request.json"), &custom_data);
    assert!(body["customData"].is_object(), "customData is an object, as documented");
    assert!(body.get("tenantId").is_none() && body.get("createdAt").is_none(), "server-owned fields are not sent");
    assert_eq!(body["customData"]["orgprov_request_id"], "req-contract-1");
    assert_eq!(body["branding"].as_object().map(|b| b.len()), Some(4));
}

#[tokio::test]
async fn logto_contract_documented_answers_parse_and_requests_go_where_documented() {
    let stub = Stub::start(vec![
        TOKEN,
        ("POST", "/api/organizations", 201, "logto/create-response-201.json"),
        ("GET", "/api/organizations", 200, "logto/list-response.json"),
    ])
    .await;
    let provider = stub.provider(LOGTO.provider);
    let id = RequestId::parse("req-contract-1").unwrap();
    let body = provider.prepare(&org_spec(contract_spec()), &id).unwrap();

    let documented = fixture_json("logto/create-response-201.json");
    let created = provider.create(&body, &id).await.unwrap();
    assert_eq!(created, Created::New { id: documented["id"].as_str().unwrap().to_owned(), status: 201 });

    let token = &stub.seen("POST", "/oidc/token")[0];
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "contract-client:contract-secret");
    assert_eq!(token.headers["authorization"], format!("Basic {basic}").as_str());
    let form = String::from_utf8(token.body.clone()).unwrap();
    let resource = format!("resource={}", urlencoding::encode(&format!("{}/api", stub.base)));
    for part in ["grant_type=client_credentials", resource.as_str(), "scope=all"] {
        assert!(form.split('&').any(|p| p == part), "{part} missing from {form}");
    }
    let create = &stub.seen("POST", "/api/organizations")[0];
    let access = fixture_json("logto/token-response.json")["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create.headers["authorization"], format!("Bearer {access}").as_str());
    assert_eq!(serde_json::from_slice::<Value>(&create.body).unwrap(), body);

    // The documented list shape, searched by name over pages of 100.
    assert_eq!(provider.find(&body, &id).await.unwrap(), Lookup::Ours { id: "string".into() });
    let other = RequestId::parse("someone-else").unwrap();
    assert_eq!(provider.find(&body, &other).await.unwrap(), Lookup::Absent, "a namesake is never adopted");
    let search = stub.seen("GET", "/api/organizations");
    let query = &search.last().unwrap().query;
    for part in ["q=string", "page=1", "page_size=100"] {
        assert!(query.split('&').any(|p| p == part), "{part} missing from {query}");
    }
}

#[tokio::test]
async fn logto_contract_documented_errors_map_to_our_codes() {
    let stub =
        Stub::start(vec![TOKEN, ("POST", "/api/organizations", 400, "logto/error-400-invalid-input.json")]).await;
    let provider = stub.provider(LOGTO.provider);
    let id = RequestId::parse("req-contract-1").unwrap();
    let body = provider.prepare(&org_spec(contract_spec()), &id).unwrap();
    let e = provider.create(&body, &id).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
    assert!(e.message.contains("guard.invalid_input"), "{}", e.message);
    assert_eq!(e.details.unwrap()["code"], "guard.invalid_input");
    assert_eq!(provider.reconcile_delay(), Duration::from_secs(11), "default 10 s timeout plus the margin");
}
