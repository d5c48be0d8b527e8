//! `orgprov plan` shows what the worker sends: for each of the five providers, the plan of a
//! request (made by the `orgprov` binary with no secret, and NATS and Postgres pointed at
//! nothing) is compared with the create call the simulator recorded when the worker provisioned
//! that same request: method, URL, every header plan lists (the credential's scheme only) and
//! the body.

use orgprov::providers::secureauth;
use orgprov_sim::SimulatorConfig;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, Upstream};

/// A provider's target, the template its test requests use, and what must be in the tenant
/// first.
struct Case {
    upstream: Upstream,
    template: &'static str,
}

fn upstream(provider: &'static str, target: &'static str, create_path: &'static str) -> Upstream {
    Upstream { provider, target, create_path, token_path: "", created_status: 201, org_id: "id", key: ("", "") }
}

async fn env_of(case: &Case) -> TestEnv {
    let u = &case.upstream;
    if u.provider == "secureauth" {
        let settings = secureauth::Settings { tenant: "acme".into(), ..Default::default() };
        let env = u.env(SimulatorConfig::default(), |t| t.provider = settings.into()).await;
        // The organization template `templates/secureauth-standard.toml` names.
        env.sim.insert_organization(
            "secureauth",
            json!({ "id": "b2b-customer-template", "name": "b2b-customer-template", "template": true }),
        );
        env
    } else {
        u.env(SimulatorConfig::default(), |_| {}).await
    }
}

fn request_of(env: &TestEnv, case: &Case) -> Value {
    let id = env.id(format!("plan-{}", case.upstream.provider));
    let mut request = json!({ "request_id": id, "target": case.upstream.target, "template": case.template,
        "source": "test", "organization": { "name": env.name("plan"), "display_name": "Plan Inc.",
            "metadata": { "crm_account": "A-1" } } });
    match case.upstream.provider {
        "biot" => {
            request["admin"] = json!({ "email": format!("admin-{}@example.com", env.run), "first_name": "Ada", "last_name": "Lovelace" })
        }
        "stytch" => request["organization"]["domains"] = json!(["plan.example"]),
        _ => {}
    }
    request
}

/// Runs `orgprov plan --file <request> --json` as a new user would, with no client secret in
/// the environment and NATS and Postgres unreachable.
fn plan_of(env: &TestEnv, request: &Value) -> (Value, i32) {
    let config = env.config_file();
    let file = env.dir.path().join("request.json");
    std::fs::write(&file, serde_json::to_vec(request).unwrap()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orgprov"))
        .args(["--config", config.to_str().unwrap(), "plan", "--json", "--file", file.to_str().unwrap()])
        .env_remove(crate::helpers::SECRET_VAR)
        .env("ORGPROV_NATS__URL", "nats://127.0.0.1:1")
        .env("ORGPROV_POSTGRES__URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("orgprov plan runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let plan = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("plan --json is JSON ({e}): {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    (plan, output.status.code().unwrap_or(-1))
}

async fn plan_matches_what_the_worker_sends(case: Case) {
    let env = env_of(&case).await;
    let u = &case.upstream;
    let request = request_of(&env, &case);
    let (plan, code) = plan_of(&env, &request);
    assert_eq!((code, &plan["valid"], &plan["violations"]), (0, &json!(true), &json!([])), "{plan:#}");
    assert_eq!(plan["provider"], u.provider);
    let planned = &plan["http_request"];

    let worker = env.start_worker().await;
    let outcome = env.provision(&request).await;
    assert_eq!(outcome["type"], "org.provisioned", "{outcome}");
    let creates: Vec<_> =
        env.sim.requests().into_iter().filter(|r| r.method == "POST" && r.path.ends_with(u.create_path)).collect();
    assert_eq!(creates.len(), 1, "one create: {creates:?}");
    let sent = &creates[0];

    assert_eq!(planned["method"], json!(sent.method));
    assert_eq!(planned["url"], json!(format!("http://{}{}", env.sim.addr(), sent.path)), "{}", u.provider);
    assert_eq!(sent.query, None);
    let body: Value = serde_json::from_str(&sent.body).expect("the create body is JSON");
    assert_eq!(planned["body"], body, "{}: plan's body is the body sent", u.provider);
    assert_eq!(sent.body, serde_json::to_string(&planned["body"]).unwrap(), "{}: byte for byte", u.provider);
    assert_eq!(sent.idempotency_key.as_deref(), request["request_id"].as_str());
    let headers = planned["headers"].as_object().expect("headers");
    for name in ["Authorization", "Content-Type", "Idempotency-Key", "User-Agent", "Content-Length"] {
        assert!(headers.contains_key(name), "{}: plan lists {name}: {headers:?}", u.provider);
    }
    for (name, value) in headers {
        let got = sent.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        assert_eq!(got, value.as_str(), "{}: header {name}", u.provider);
    }
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_create_the_worker_sends_to_auth0() {
    let upstream = upstream("auth0", "acme-auth0", "/api/v2/organizations");
    plan_matches_what_the_worker_sends(Case { upstream, template: "standard" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_create_the_worker_sends_to_secureauth() {
    let upstream = upstream("secureauth", "acme-secureauth", "/organizations");
    plan_matches_what_the_worker_sends(Case { upstream, template: "secureauth-standard" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_create_the_worker_sends_to_stytch() {
    let upstream = upstream("stytch", "acme-stytch", "/v1/b2b/organizations");
    plan_matches_what_the_worker_sends(Case { upstream, template: "stytch-standard" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_create_the_worker_sends_to_biot() {
    let upstream = upstream("biot", "acme-biot", "/organization/v1/organizations/templates/CustomerOrganization");
    plan_matches_what_the_worker_sends(Case { upstream, template: "biot-standard" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_create_the_worker_sends_to_logto() {
    let upstream = upstream("logto", "acme-logto", "/api/organizations");
    plan_matches_what_the_worker_sends(Case { upstream, template: "logto-standard" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reports_every_broken_rule_and_sends_nothing() {
    let env = TestEnv::new().await;
    let request = json!({ "request_id": env.id("bad"), "target": crate::helpers::TARGET, "template": "standard",
        "organization": { "name": "Not Lowercase", "metadata": { "n": 5 },
                          "branding": { "primary_color": "blue" } } });
    let (plan, code) = plan_of(&env, &request);
    assert_eq!((code, &plan["valid"], &plan["http_request"]), (1, &json!(false), &Value::Null), "{plan:#}");
    let fields: Vec<&str> =
        plan["violations"].as_array().unwrap().iter().map(|v| v["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["organization.name", "organization.metadata.n", "organization.branding.primary_color"]);
    assert!(plan["violations"].as_array().unwrap().iter().all(|v| v["code"] == "invalid_request"));
    // The organization was still rendered, so the plan shows it.
    assert_eq!(plan["organization"]["name"], "Not Lowercase");
    assert!(env.sim.requests().is_empty(), "plan calls nothing upstream");
    env.cleanup().await;
}
