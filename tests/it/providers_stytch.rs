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

use crate::helpers::{TestEnv, Upstream, calls, calls_of};

const STYTCH: Upstream = Upstream {
    provider: "stytch",
    target: "acme-stytch",
    create_path: "/v1/b2b/organizations",
    token_path: "",
    created_status: 200,
    org_id: "organization_id",
    key: ("/organization/name", "/organization_slug"),
};

async fn stytch_env() -> TestEnv {
    STYTCH.env(SimulatorConfig::default(), |_| {}).await
}

fn request(id: &str, slug: &str) -> Value {
    json!({ "request_id": id, "target": STYTCH.target, "template": "stytch-standard", "source": "test",
            "organization": { "name": slug, "display_name": "Acme Inc.", "domains": ["acme.example"],
                              "metadata": { "seats": 25 } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_provisions_an_organization_with_our_external_id() {
    let env = stytch_env().await;
    // A ':' is fine in a request id but not in a Stytch external id: the digest form is used.
    let id = format!("crm:{}", env.id("ok"));
    let (worker, org) = STYTCH.provisions(&env, &request(&id, &env.name("ok"))).await;
    assert!(org["organization_id"].as_str().unwrap().starts_with("organization-test-"));
    assert_eq!(org["organization_name"], "Acme Inc.");
    assert_eq!(org["organization_external_id"], json!(external_id(&id)));
    assert!(org["organization_external_id"].as_str().unwrap().starts_with("orgprov-"));
    let metadata = json!({ "orgprov_request_id": id, "plan": "standard", "provisioned_by": "orgprov", "seats": 25 });
    assert_eq!(org["trusted_metadata"], metadata);
    assert_eq!(org["email_allowed_domains"], json!(["acme.example"]));
    assert_eq!((&org["mfa_policy"], &org["sso_jit_provisioning"]), (&json!("OPTIONAL"), &json!("ALL_ALLOWED")));
    let create = env.sim.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert!(create.authorized, "Basic project credentials were sent");
    assert_eq!(create.idempotency_key.as_deref(), Some(id.as_str()));
    env.wait_consumer_idle(10).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_lost_responses_and_dropped_connections_are_reconciled_into_one_organization() {
    for fault in [ScriptedFault::LostResponse, ScriptedFault::DropConnection] {
        let env = stytch_env().await;
        STYTCH.lost_create_is_adopted(&env, fault, &request(&env.id("lost"), &env.name("lost"))).await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_slug_taken_by_another_organization_fails_with_conflict() {
    let env = stytch_env().await;
    let (id, slug) = (env.id("taken"), env.name("taken"));
    let seed = json!({ "organization_name": "Someone Else", "organization_slug": slug,
                       "trusted_metadata": { "owner": "another-system" } });
    let request = request(&id, &slug);
    let error = STYTCH.conflicts_with(&env, seed, &request, &slug).await;
    assert_eq!(error["details"]["organization_id"], STYTCH.orgs_of(&env, &request)[0]["organization_id"]);
    // The lookup asked for our external id first, then for the slug.
    let gets: Vec<String> = env.sim.requests().into_iter().filter(|r| r.method == "GET").map(|r| r.path).collect();
    assert_eq!(gets, [format!("/stytch/v1/b2b/organizations/{id}"), format!("/stytch/v1/b2b/organizations/{slug}")]);
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(400)), ("lookup", Some(200))]);
    assert_eq!(env.sim.organizations(STYTCH.provider).len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_rule_breaking_input_fails_before_any_http_call() {
    let mut env = stytch_env().await;
    env.templates
        .add_toml("name = \"st-bad\"\nversion = \"1\"\n[settings.stytch]\nmfa_policy = \"SOMETIMES\"\n")
        .unwrap();
    let mut bad_setting = request(&env.id("bad-setting"), &env.name("bad-setting"));
    bad_setting["template"] = json!("st-bad");
    let mut gmail = request(&env.id("gmail"), &env.name("gmail"));
    gmail["organization"]["domains"] = json!(["gmail.com"]);
    let cases = [(request(&env.id("bad-slug"), "a"), "slug"), (bad_setting, "stytch.mfa_policy"), (gmail, "gmail.com")];
    STYTCH.refuses_before_any_call(&env, &cases).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_refused_credentials_fail_as_unauthorized_without_retries() {
    let env = STYTCH.env(SimulatorConfig::default(), |t| t.client_id = Some("project-test-not-ours".into())).await;
    let worker = env.start_worker().await;
    let outcome = env.provision(&request(&env.id("denied"), &env.name("denied"))).await;
    let error = &outcome["data"]["error"];
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!((&error["code"], &error["upstream_status"]), (&json!("unauthorized"), &json!(401)));
    assert_eq!(error["details"]["error_type"], "unauthorized_credentials");
    assert_eq!(env.sim.requests().len(), 1, "no refresh, no retry: Basic credentials cannot change");
    assert!(env.sim.organizations(STYTCH.provider).is_empty());
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stytch_429_without_headers_is_retried_with_backoff_and_the_request_is_provisioned() {
    let env = stytch_env().await;
    STYTCH.rate_limited_create_is_retried(&env, None, &request(&env.id("limited"), &env.name("limited"))).await;
    env.cleanup().await;
}
