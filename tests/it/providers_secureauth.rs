//! SecureAuth Connect, end to end: NATS → worker → simulated SecureAuth tenant → Postgres →
//! outcome event. (The contract tests against the vendor page's examples live next to the
//! code: `src/providers/secureauth.rs` and `sim/src/secureauth.rs`, on the fixtures in
//! `tests/fixtures/secureauth/`.)
//!
//! SecureAuth lets the client choose the organization id, so orgprov sends a deterministic one
//! and reconciles by looking that id up. Its 409 covers both a taken id and a taken name; these
//! stories pin that a taken name fails as `conflict` at once instead of looping, and that an
//! organization at our id is adopted only when it carries our tag.

use std::time::Duration;

use orgprov::providers::secureauth::{self, organization_id};
use orgprov_sim::{RecordedRequest, ScriptedFault, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, Upstream, calls, calls_of};

const SECUREAUTH: Upstream = Upstream {
    provider: "secureauth",
    target: "acme-secureauth",
    create_path: "/organizations",
    token_path: "/system/oauth2/token",
    created_status: 201,
    org_id: "id",
    key: ("/organization/name", "/name"),
};
const TARGET: &str = SECUREAUTH.target;
const TENANT: &str = "acme";
/// The organization template `templates/secureauth-standard.toml` names.
const ORG_TEMPLATE: &str = "b2b-customer-template";

/// A test environment with a SecureAuth target and the organization template in the tenant.
async fn secureauth_env(config: SimulatorConfig) -> TestEnv {
    let settings = secureauth::Settings { tenant: TENANT.into(), ..Default::default() };
    let env = SECUREAUTH.env(config, |t| t.provider = settings.into()).await;
    env.sim.insert_organization(
        SECUREAUTH.provider,
        json!({ "id": ORG_TEMPLATE, "name": ORG_TEMPLATE, "template": true,
                "authentication_mechanisms": ["password", "webauthn"] }),
    );
    env
}

fn request(id: &str, name: &str) -> Value {
    json!({ "request_id": id, "target": TARGET, "template": "secureauth-standard", "source": "test",
            "organization": { "name": name, "metadata": { "seats": 25 } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_provisions_an_organization_at_its_deterministic_id() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    let id = env.id("ok");
    let (worker, org) = SECUREAUTH.provisions(&env, &request(&id, &env.name("ok"))).await;
    assert_eq!(org["id"], json!(organization_id(TARGET, &id)));
    let payload = json!({ "orgprov_request_id": id, "plan": "standard", "provisioned_by": "orgprov", "seats": 25 });
    assert_eq!(org["metadata"]["payload"], payload);
    assert_eq!((&org["description"], &org["color"]), (&json!("Signed up via test"), &json!("#0059d6")));
    // The template_id was passed through: the organization inherited the template's methods.
    assert_eq!(org["authentication_mechanisms"], json!(["password", "webauthn"]));
    let is_create = |r: &RecordedRequest| r.method == "POST" && r.path.ends_with(SECUREAUTH.create_path);
    let create = env.sim.requests().into_iter().find(is_create).unwrap();
    assert_eq!(create.path, format!("/secureauth/api/system/{TENANT}/organizations"));
    assert_eq!(create.idempotency_key.as_deref(), Some(id.as_str()));
    assert!(create.authorized);
    env.wait_consumer_idle(10).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_lost_responses_and_dropped_connections_are_reconciled_into_one_organization() {
    for fault in [ScriptedFault::LostResponse, ScriptedFault::DropConnection] {
        let env = secureauth_env(SimulatorConfig::default()).await;
        let id = env.id("lost");
        let outcome = SECUREAUTH.lost_create_is_adopted(&env, fault, &request(&id, &env.name("lost"))).await;
        assert_eq!(outcome["data"]["organization_id"], json!(organization_id(TARGET, &id)), "found at our id");
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_name_taken_by_another_organization_fails_with_conflict_at_once() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    let (id, name) = (env.id("taken"), env.name("taken"));
    let seed =
        json!({ "id": "someone-elses-id", "name": name, "metadata": { "payload": { "owner": "another-system" } } });
    let error = SECUREAUTH.conflicts_with(&env, seed, &request(&id, &name), &name).await;
    assert_eq!(error["details"]["organization_id"], json!(organization_id(TARGET, &id)));
    assert_eq!(env.sim.requests().iter().filter(|r| r.method == "GET").count(), 1, "one look at our id");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_organization_at_our_id_without_our_tag_is_not_adopted() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    let id = env.id("squatted");
    let our_id = organization_id(TARGET, &id);
    env.sim.insert_organization(
        SECUREAUTH.provider,
        json!({ "id": our_id, "name": "squatter", "metadata": { "payload": { "orgprov_request_id": "another" } } }),
    );
    let worker = env.start_worker().await;
    let outcome = env.provision(&request(&id, &env.name("squatted"))).await;
    assert_eq!(outcome["type"], "org.failed", "{outcome}");
    assert_eq!(outcome["data"]["error"]["code"], "conflict");
    assert_eq!(outcome["data"]["error"]["details"]["organization_id"], json!(our_id));
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(409)), ("lookup", Some(200))]);
    assert!(SECUREAUTH.orgs(&env, "/name", &env.name("squatted")).is_empty());
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_rule_breaking_input_fails_before_any_http_call() {
    let mut env = secureauth_env(SimulatorConfig::default()).await;
    env.templates
        .add_toml("name = \"sa-bad\"\nversion = \"1\"\n[settings.secureauth]\ntemplate_id = \"t\"\ntheme = \"dark\"\n")
        .unwrap();
    let mut bad_setting = request(&env.id("bad-setting"), &env.name("bad-setting"));
    bad_setting["template"] = json!("sa-bad");
    let cases =
        [(request(&env.id("bad-name"), "Not URL safe!"), "organization.name"), (bad_setting, "secureauth.theme")];
    SECUREAUTH.refuses_before_any_call(&env, &cases).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_unknown_organization_template_is_rejected_with_the_upstream_message() {
    let mut env = secureauth_env(SimulatorConfig::default()).await;
    let template =
        ("sa-missing", "name = \"sa-missing\"\nversion = \"1\"\n[settings.secureauth]\ntemplate_id = \"gone\"\n");
    let request = request(&env.id("missing"), &env.name("missing"));
    let error =
        SECUREAUTH.rejects_with_template(&mut env, template, request, (404, "organization template not found")).await;
    assert_eq!(error["details"]["error_code"], "not_found");
    assert_eq!(SECUREAUTH.creates(&env), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_tokens_are_refreshed_before_expiry_and_once_after_revocation() {
    // A two-second token, sent as the string "2": read as a number, the worker renews it
    // before it expires and no call is refused.
    let env = secureauth_env(SimulatorConfig { token_ttl: Duration::from_secs(2), ..SimulatorConfig::default() }).await;
    SECUREAUTH.tokens_are_renewed(&env, Duration::from_millis(2100), |n| request(&env.id(n), &env.name(n))).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secureauth_429_waits_for_retry_after_and_the_request_is_provisioned() {
    let env = secureauth_env(SimulatorConfig::default()).await;
    SECUREAUTH.rate_limited_create_is_retried(&env, Some(1), &request(&env.id("limited"), &env.name("limited"))).await;
    let is_create = |r: &RecordedRequest| r.method == "POST" && r.path.ends_with(SECUREAUTH.create_path);
    let creates: Vec<_> = env.sim.requests().into_iter().filter(is_create).collect();
    let gap = creates[1].at - creates[0].at;
    assert!(gap >= time::Duration::milliseconds(950), "Retry-After: 1 was obeyed, gap {gap}");
    env.cleanup().await;
}
