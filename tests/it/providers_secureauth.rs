//! SecureAuth Connect, end to end: NATS → worker → simulated SecureAuth tenant → Postgres →
//! outcome event. (The contract tests against the vendor page's examples live next to the
//! code: `src/providers/secureauth.rs` and `src/simulator/secureauth.rs`, on the fixtures in
//! `tests/fixtures/secureauth/`.)
//!
//! SecureAuth lets the client choose the organization id, so orgprov sends a deterministic one
//! and reconciles by looking that id up. Its 409 covers both a taken id and a taken name; these
//! stories pin that a taken name fails as `conflict` at once instead of looping, and that an
//! organization at our id is adopted only when it carries our tag.

use std::time::Duration;

use orgprov::providers::TargetSettings;
use orgprov::providers::secureauth::{self, organization_id};
use orgprov::simulator::{ScriptedFault, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, calls, calls_of, target_settings};

const TARGET: &str = "acme-secureauth";
const PROVIDER: &str = "secureauth";
const TENANT: &str = "acme";
/// The organization template `templates/secureauth-standard.toml` names.
const ORG_TEMPLATE: &str = "b2b-customer-template";

/// A test environment with a SecureAuth target and the organization template in the tenant.
async fn secureauth_env(config: SimulatorConfig) -> TestEnv {
    let mut env = TestEnv::with_simulator(SimulatorConfig { providers: vec![PROVIDER.into()], ..config }).await;
    let target = TargetSettings {
        provider: secureauth::Settings { tenant: TENANT.into(), ..Default::default() }.into(),
        ..target_settings(PROVIDER, &env.sim.base_url(PROVIDER))
    };
    env.settings.targets.insert(TARGET.into(), target);
    env.sim.insert_organization(
        PROVIDER,
        json!({ "id": ORG_TEMPLATE, "name": ORG_TEMPLATE, "template": true,
                "authentication_mechanisms": ["password", "webauthn"] }),
    );
    env
}

fn request(id: &str, name: &str) -> Value {
    json!({ "request_id": id, "target": TARGET, "template": "secureauth-standard", "source": "test",
            "organization": { "name": name, "metadata": { "seats": 25 } } })
}

async fn provision(env: &TestEnv, id: &str, name: &str) -> Value {
    env.publish_json(&request(id, name), Some(id)).await;
    env.outcomes(&[id.to_owned()], 60).await.remove(id).unwrap().json
}

fn creates(env: &TestEnv) -> usize {
    env.sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/organizations")).count()
}

fn token_calls(env: &TestEnv) -> usize {
    env.sim.requests().iter().filter(|r| r.path.ends_with("/system/oauth2/token")).count()
}

fn orgs_named(env: &TestEnv, name: &str) -> Vec<Value> {
    env.sim.organizations(PROVIDER).into_iter().filter(|o| o["name"] == json!(name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_provisions_an_organization_at_its_deterministic_id() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    let worker = env.start_worker().await;
    let (id, name) = (env.id("ok"), env.name("ok"));
    let outcome = provision(&env, &id, &name).await;
    orgprov::contract::validate_event(&serde_json::to_vec(&outcome).unwrap()).unwrap();
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    let data = &outcome["data"];
    let expected_id = organization_id(TARGET, &id);
    assert_eq!(data["organization_id"], json!(expected_id));
    assert_eq!(data["provider"], PROVIDER);
    assert_eq!(data["created"], true);
    assert_eq!(data["template"], "secureauth-standard");

    let orgs = orgs_named(&env, &name);
    assert_eq!(orgs.len(), 1);
    let org = &orgs[0];
    assert_eq!(org["id"], json!(expected_id));
    assert_eq!(
        org["metadata"]["payload"],
        json!({ "orgprov_request_id": id, "plan": "standard",
                                                  "provisioned_by": "orgprov", "seats": 25 })
    );
    assert_eq!(org["description"], "Signed up via test");
    assert_eq!(org["color"], "#0059d6");
    // The template_id was passed through: the organization inherited the template's methods.
    assert_eq!(org["authentication_mechanisms"], json!(["password", "webauthn"]));
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(201))]);
    let create = env.sim.requests().into_iter().find(|r| r.method == "POST" && r.path.ends_with("/organizations"));
    let create = create.unwrap();
    assert_eq!(create.path, format!("/{PROVIDER}/api/system/{TENANT}/organizations"));
    assert_eq!(create.idempotency_key.as_deref(), Some(id.as_str()));
    assert!(create.authorized);
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

async fn lost_response_case(fault: ScriptedFault) {
    let env = secureauth_env(SimulatorConfig::default()).await;
    env.sim.push_script(PROVIDER, vec![fault]);
    let worker = env.start_worker().await;
    let (id, name) = (env.id("lost"), env.name("lost"));
    let outcome = provision(&env, &id, &name).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], false, "adopted, not created again");
    assert_eq!(outcome["data"]["organization_id"], json!(organization_id(TARGET, &id)));
    assert_eq!(orgs_named(&env, &name).len(), 1);
    assert_eq!(creates(&env), 1, "reconciled by looking our id up instead of a second create");
    let calls = calls(&env, &id).await;
    assert_eq!(calls.last().map(|(c, s)| (c.as_str(), *s)), Some(("lookup", Some(200))));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_lost_response_is_reconciled_into_one_organization() {
    lost_response_case(ScriptedFault::LostResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_dropped_connection_is_reconciled_into_one_organization() {
    lost_response_case(ScriptedFault::DropConnection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_name_taken_by_another_organization_fails_with_conflict_at_once() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    let name = env.name("taken");
    env.sim.insert_organization(
        PROVIDER,
        json!({ "id": "someone-elses-id", "name": name, "metadata": { "payload": { "owner": "another-system" } } }),
    );
    let worker = env.start_worker().await;
    let id = env.id("taken");
    let outcome = provision(&env, &id, &name).await;
    let data = &outcome["data"];
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!(data["error"]["code"], "conflict");
    assert_eq!(data["error"]["upstream_status"], 409);
    assert!(data["error"]["message"].as_str().unwrap().contains(&name), "{data}");
    assert_eq!(data["error"]["details"]["organization_id"], json!(organization_id(TARGET, &id)));
    assert_eq!(creates(&env), 1, "one create, one look at our id, then stop");
    let lookups = env.sim.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(lookups, 1);
    assert_eq!(orgs_named(&env, &name).len(), 1);
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_organization_at_our_id_without_our_tag_is_not_adopted() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    let id = env.id("squatted");
    let our_id = organization_id(TARGET, &id);
    env.sim.insert_organization(
        PROVIDER,
        json!({ "id": our_id, "name": "squatter", "metadata": { "payload": { "orgprov_request_id": "another" } } }),
    );
    let worker = env.start_worker().await;
    let outcome = provision(&env, &id, &env.name("squatted")).await;
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!(outcome["data"]["error"]["code"], "conflict");
    assert_eq!(outcome["data"]["error"]["details"]["organization_id"], json!(our_id));
    let calls = calls(&env, &id).await;
    assert_eq!(calls_of(&calls), vec![("create", Some(409)), ("lookup", Some(200))]);
    assert!(orgs_named(&env, &env.name("squatted")).is_empty());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_rule_breaking_input_fails_before_any_http_call() {
    let mut env = secureauth_env(SimulatorConfig::default()).await;
    env.templates
        .add_toml("name = \"sa-bad\"\nversion = \"1\"\n[settings.secureauth]\ntemplate_id = \"t\"\ntheme = \"dark\"\n")
        .unwrap();
    let worker = env.start_worker().await;
    let bad_name = env.id("bad-name");
    env.publish_json(&request(&bad_name, "Not URL safe!"), Some(&bad_name)).await;
    let bad_setting = env.id("bad-setting");
    let mut with_bad_template = request(&bad_setting, &env.name("bad-setting"));
    with_bad_template["template"] = json!("sa-bad");
    env.publish_json(&with_bad_template, Some(&bad_setting)).await;

    let outcomes = env.outcomes(&[bad_name.clone(), bad_setting.clone()], 60).await;
    let error = |id: &str| outcomes[id].json["data"]["error"].clone();
    assert_eq!(error(&bad_name)["code"], "invalid_request");
    assert!(error(&bad_name)["message"].as_str().unwrap().contains("organization.name"));
    assert_eq!(error(&bad_setting)["code"], "invalid_request");
    assert!(error(&bad_setting)["message"].as_str().unwrap().contains("secureauth.theme"));
    assert!(env.sim.requests().is_empty(), "no token and no API call: {:?}", env.sim.requests());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_unknown_organization_template_is_rejected_with_the_upstream_message() {
    let mut env = secureauth_env(SimulatorConfig::default()).await;
    env.templates
        .add_toml("name = \"sa-missing\"\nversion = \"1\"\n[settings.secureauth]\ntemplate_id = \"gone\"\n")
        .unwrap();
    let worker = env.start_worker().await;
    let id = env.id("missing");
    let mut r = request(&id, &env.name("missing"));
    r["template"] = json!("sa-missing");
    env.publish_json(&r, Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap().json;
    let error = &outcome["data"]["error"];
    assert_eq!(error["code"], "rejected", "{outcome}");
    assert_eq!(error["upstream_status"], 404);
    assert!(error["message"].as_str().unwrap().contains("organization template not found"));
    assert_eq!(error["details"]["error_code"], "not_found");
    assert_eq!(creates(&env), 1);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_tokens_are_refreshed_before_expiry_and_once_after_revocation() {
    // A two-second token, sent as the string "2": read as a number, the worker renews it
    // before it expires and no call is refused.
    let env = secureauth_env(SimulatorConfig { token_ttl: Duration::from_secs(2), ..SimulatorConfig::default() }).await;
    let worker = env.start_worker().await;
    let first = env.id("first");
    assert_eq!(provision(&env, &first, &env.name("first")).await["type"], "org.provisioned");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = env.id("second");
    assert_eq!(provision(&env, &second, &env.name("second")).await["type"], "org.provisioned");
    assert_eq!(token_calls(&env), 2);
    let refused = |env: &TestEnv| env.sim.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(refused(&env), 0, "the expiry was read from the string expires_in");

    // A revoked token is refused once, refreshed once, and the call goes through.
    env.sim.revoke_tokens();
    let third = env.id("third");
    assert_eq!(provision(&env, &third, &env.name("third")).await["type"], "org.provisioned");
    assert_eq!(token_calls(&env), 3);
    assert_eq!(refused(&env), 1);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_429_waits_for_retry_after_and_the_request_is_provisioned() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    env.sim.push_script(PROVIDER, vec![ScriptedFault::RateLimited { retry_after_secs: Some(1) }]);
    let worker = env.start_worker().await;
    let (id, name) = (env.id("limited"), env.name("limited"));
    let outcome = provision(&env, &id, &name).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], true);
    assert_eq!(orgs_named(&env, &name).len(), 1);
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(429)), ("create", Some(201))]);
    let creates: Vec<_> =
        env.sim.requests().into_iter().filter(|r| r.method == "POST" && r.path.ends_with("/organizations")).collect();
    let gap = creates[1].at - creates[0].at;
    assert!(gap >= time::Duration::milliseconds(950), "Retry-After: 1 was obeyed, gap {gap}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}
