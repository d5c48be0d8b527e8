//! Stytch B2B, end to end: NATS → worker → simulated Stytch project → Postgres → outcome
//! event. (The contract tests against the vendor page's examples live next to the code:
//! `src/providers/stytch.rs` and `sim/src/stytch.rs`, on the fixtures in
//! `tests/fixtures/stytch/`.)
//!
//! Stytch has two unique keys: the slug (the organization's `name` in our requests) and the
//! external id (our request id, or its digest). These stories pin that an organization found
//! by our external id is adopted, that a slug held by anyone else is a `conflict`, and that
//! Basic credentials that are refused end the request at once: there is no token to refresh.

use orgprov::providers::stytch::external_id;
use orgprov_sim::{ScriptedFault, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, calls, calls_of, target_settings};

const TARGET: &str = "acme-stytch";
const PROVIDER: &str = "stytch";

async fn stytch_env(config: SimulatorConfig) -> TestEnv {
    let mut env = TestEnv::with_simulator(SimulatorConfig { providers: vec![PROVIDER.into()], ..config }).await;
    let target = target_settings(PROVIDER, &env.sim.base_url(PROVIDER));
    env.settings.targets.insert(TARGET.into(), target);
    env
}

fn request(id: &str, slug: &str) -> Value {
    json!({ "request_id": id, "target": TARGET, "template": "stytch-standard", "source": "test",
            "organization": { "name": slug, "display_name": "Acme Inc.", "domains": ["acme.example"],
                              "metadata": { "seats": 25 } } })
}

async fn provision(env: &TestEnv, id: &str, slug: &str) -> Value {
    env.publish_json(&request(id, slug), Some(id)).await;
    env.outcomes(&[id.to_owned()], 60).await.remove(id).unwrap().json
}

fn creates(env: &TestEnv) -> usize {
    env.sim.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/v1/b2b/organizations")).count()
}

fn orgs_with_slug(env: &TestEnv, slug: &str) -> Vec<Value> {
    env.sim.organizations(PROVIDER).into_iter().filter(|o| o["organization_slug"] == json!(slug)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_provisions_an_organization_with_our_external_id() {
    let env = stytch_env(SimulatorConfig::default()).await;
    let worker = env.start_worker().await;
    // A ':' is fine in a request id but not in a Stytch external id: the digest form is used.
    let (id, slug) = (format!("crm:{}", env.id("ok")), env.name("ok"));
    let outcome = provision(&env, &id, &slug).await;
    orgprov::contract::validate_event(&serde_json::to_vec(&outcome).unwrap()).unwrap();
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], true);
    assert_eq!(outcome["data"]["organization_name"], json!(slug));

    let orgs = orgs_with_slug(&env, &slug);
    assert_eq!(orgs.len(), 1);
    let org = &orgs[0];
    assert_eq!(outcome["data"]["organization_id"], org["organization_id"]);
    assert!(org["organization_id"].as_str().unwrap().starts_with("organization-test-"));
    assert_eq!(org["organization_name"], "Acme Inc.");
    assert_eq!(org["organization_external_id"], json!(external_id(&id)));
    assert!(org["organization_external_id"].as_str().unwrap().starts_with("orgprov-"));
    assert_eq!(
        org["trusted_metadata"],
        json!({ "orgprov_request_id": id, "plan": "standard",
                                               "provisioned_by": "orgprov", "seats": 25 })
    );
    assert_eq!(org["email_allowed_domains"], json!(["acme.example"]));
    assert_eq!((&org["mfa_policy"], &org["sso_jit_provisioning"]), (&json!("OPTIONAL"), &json!("ALL_ALLOWED")));
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(200))]);
    let create = env.sim.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert!(create.authorized, "Basic project credentials were sent");
    assert_eq!(create.idempotency_key.as_deref(), Some(id.as_str()));
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

async fn lost_response_case(fault: ScriptedFault) {
    let env = stytch_env(SimulatorConfig::default()).await;
    env.sim.push_script(PROVIDER, vec![fault]);
    let worker = env.start_worker().await;
    let (id, slug) = (env.id("lost"), env.name("lost"));
    let outcome = provision(&env, &id, &slug).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], false, "adopted, not created again");
    let orgs = orgs_with_slug(&env, &slug);
    assert_eq!(orgs.len(), 1);
    assert_eq!(outcome["data"]["organization_id"], orgs[0]["organization_id"]);
    assert_eq!(creates(&env), 1, "reconciled by the external id instead of a second create");
    let calls = calls(&env, &id).await;
    assert_eq!(calls.last().map(|(c, s)| (c.as_str(), *s)), Some(("lookup", Some(200))));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_lost_response_is_reconciled_into_one_organization() {
    lost_response_case(ScriptedFault::LostResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_dropped_connection_is_reconciled_into_one_organization() {
    lost_response_case(ScriptedFault::DropConnection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_slug_taken_by_another_organization_fails_with_conflict() {
    let env = stytch_env(SimulatorConfig::default()).await;
    let slug = env.name("taken");
    env.sim.insert_organization(
        PROVIDER,
        json!({ "organization_name": "Someone Else", "organization_slug": slug,
                "trusted_metadata": { "owner": "another-system" } }),
    );
    let worker = env.start_worker().await;
    let id = env.id("taken");
    let outcome = provision(&env, &id, &slug).await;
    let error = &outcome["data"]["error"];
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!(error["code"], "conflict");
    assert_eq!(error["upstream_status"], 409);
    assert!(error["message"].as_str().unwrap().contains(&slug), "{error}");
    assert_eq!(error["details"]["organization_id"], orgs_with_slug(&env, &slug)[0]["organization_id"]);
    assert_eq!(creates(&env), 1, "one create, one lookup, then stop");
    // The lookup asked for our external id first, then for the slug.
    let gets: Vec<String> = env.sim.requests().into_iter().filter(|r| r.method == "GET").map(|r| r.path).collect();
    assert_eq!(
        gets,
        vec![format!("/{PROVIDER}/v1/b2b/organizations/{id}"), format!("/{PROVIDER}/v1/b2b/organizations/{slug}")]
    );
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(400)), ("lookup", Some(200))]);
    assert_eq!(env.sim.organizations(PROVIDER).len(), 1);
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_rule_breaking_input_fails_before_any_http_call() {
    let mut env = stytch_env(SimulatorConfig::default()).await;
    env.templates
        .add_toml("name = \"st-bad\"\nversion = \"1\"\n[settings.stytch]\nmfa_policy = \"SOMETIMES\"\n")
        .unwrap();
    let worker = env.start_worker().await;
    let bad_slug = env.id("bad-slug");
    env.publish_json(&request(&bad_slug, "a"), Some(&bad_slug)).await;
    let bad_setting = env.id("bad-setting");
    let mut with_bad_template = request(&bad_setting, &env.name("bad-setting"));
    with_bad_template["template"] = json!("st-bad");
    env.publish_json(&with_bad_template, Some(&bad_setting)).await;
    let common_domain = env.id("gmail");
    let mut with_gmail = request(&common_domain, &env.name("gmail"));
    with_gmail["organization"]["domains"] = json!(["gmail.com"]);
    env.publish_json(&with_gmail, Some(&common_domain)).await;

    let ids = [bad_slug.clone(), bad_setting.clone(), common_domain.clone()];
    let outcomes = env.outcomes(&ids, 60).await;
    let error = |id: &str| outcomes[id].json["data"]["error"].clone();
    for id in &ids {
        assert_eq!(error(id)["code"], "invalid_request", "{id}");
    }
    assert!(error(&bad_slug)["message"].as_str().unwrap().contains("slug"));
    assert!(error(&bad_setting)["message"].as_str().unwrap().contains("stytch.mfa_policy"));
    assert!(error(&common_domain)["message"].as_str().unwrap().contains("gmail.com"));
    assert!(env.sim.requests().is_empty(), "no API call: {:?}", env.sim.requests());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_refused_credentials_fail_as_unauthorized_without_retries() {
    let mut env = stytch_env(SimulatorConfig::default()).await;
    let mut target = target_settings(PROVIDER, &env.sim.base_url(PROVIDER));
    target.client_id = Some("project-test-not-ours".into());
    env.settings.targets.insert(TARGET.into(), target);
    let worker = env.start_worker().await;
    let id = env.id("denied");
    let outcome = provision(&env, &id, &env.name("denied")).await;
    let error = &outcome["data"]["error"];
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["upstream_status"], 401);
    assert_eq!(error["details"]["error_type"], "unauthorized_credentials");
    assert_eq!(env.sim.requests().len(), 1, "no refresh, no retry: Basic credentials cannot change");
    assert!(env.sim.organizations(PROVIDER).is_empty());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_429_without_headers_is_retried_with_backoff_and_the_request_is_provisioned() {
    let env = stytch_env(SimulatorConfig::default()).await;
    env.sim.push_script(PROVIDER, vec![ScriptedFault::RateLimited { retry_after_secs: None }]);
    let worker = env.start_worker().await;
    let (id, slug) = (env.id("limited"), env.name("limited"));
    let outcome = provision(&env, &id, &slug).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    assert_eq!(outcome["data"]["created"], true);
    assert_eq!(orgs_with_slug(&env, &slug).len(), 1);
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(429)), ("create", Some(200))]);
    worker.stop().await.unwrap();
    env.cleanup().await;
}
