//! BioT, end to end (NATS → worker → simulated BioT → Postgres → event) and by contract (our
//! requests against the vendor's documented shape, the documented answers through our parser).
//!
//! BioT specifics these stories pin: the request's `admin` becomes the primary administrator
//! (and is required), `_name` and the admin e-mail are unique upstream, and a 504
//! `GATEWAY_TIMEOUT` is reconciled by searching `_name` for our custom attribute.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orgprov::contract::{Admin, Branding, ErrorCode, RequestId};
use orgprov::delivery::{Delivery, Unlimited};
use orgprov::providers::{Created, ErrorClass, Lookup, Provider};
use orgprov::providers::{Settings, TargetSettings};
use orgprov::simulator::{ScriptedFault, SimulatorConfig};
use orgprov::template::OrgSpec;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, calls, calls_of, target_settings};

const TARGET: &str = "acme-biot";
const PROVIDER: &str = "biot";
/// `template_name` of templates/biot-standard.toml.
const BIOT_TEMPLATE: &str = "CustomerOrganization";

async fn biot_env(config: SimulatorConfig) -> TestEnv {
    let mut env = TestEnv::with_simulator(SimulatorConfig { providers: vec![PROVIDER.into()], ..config }).await;
    let target = target_settings(PROVIDER, &env.sim.base_url(PROVIDER));
    env.settings.targets.insert(TARGET.into(), target);
    env
}

fn admin_email(id: &str) -> String {
    format!("admin-{id}@example.com").to_ascii_lowercase()
}

fn request(id: &str, name: &str) -> Value {
    json!({ "request_id": id, "target": TARGET, "template": "biot-standard", "source": "test",
            "organization": { "name": name, "metadata": { "crm_account": "A-1" } },
            "admin": { "email": admin_email(id), "first_name": "Ada", "last_name": "Lovelace", "locale": "en-GB" } })
}

fn creates(env: &TestEnv) -> usize {
    env.sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("/organization/v1/organizations/templates/"))
        .count()
}

fn token_calls(env: &TestEnv) -> usize {
    env.sim.requests().iter().filter(|r| r.path.ends_with("/ums/v2/services/accessToken")).count()
}

fn orgs_named(env: &TestEnv, name: &str) -> Vec<Value> {
    env.sim.organizations(PROVIDER).into_iter().filter(|o| o["_name"] == json!(name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_provisions_an_organization_with_the_request_admin_as_primary_administrator() {
    let env = biot_env(SimulatorConfig::default()).await;
    let worker = env.start_worker().await;
    let (id, name) = (env.id("ok"), env.name("ok"));
    env.publish_json(&request(&id, &name), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    orgprov::contract::validate_event(&outcome.bytes).unwrap();
    assert_eq!(outcome.json["type"], "org.provisioned", "{}", outcome.json);
    let data = &outcome.json["data"];
    assert_eq!((data["provider"].as_str(), data["created"].as_bool()), (Some("biot"), Some(true)));
    assert_eq!(data["template"], "biot-standard");
    assert_eq!(data["organization_name"], json!(name));

    let orgs = orgs_named(&env, &name);
    assert_eq!(orgs.len(), 1);
    let org = &orgs[0];
    assert_eq!(data["organization_id"], org["_id"]);
    // The request's admin is the organization's primary administrator.
    let primary = &org["_primaryAdministrator"];
    assert_eq!(primary["_email"], json!(admin_email(&id)));
    assert_eq!(primary["_name"], json!({ "firstName": "Ada", "lastName": "Lovelace" }));
    assert_eq!(primary["_employeeId"], json!(admin_email(&id)));
    assert_eq!(primary["_locale"], "en-gb");
    // Ownership tag, metadata and template defaults as custom / built-in attributes.
    assert_eq!(org["orgprov_request_id"], json!(id));
    assert_eq!((org["plan"].as_str(), org["crm_account"].as_str()), (Some("standard"), Some("A-1")));
    assert_eq!(org["_template"]["name"], BIOT_TEMPLATE);
    assert_eq!(org["_headquarters"]["countryCode"], "US");
    assert_eq!((org["_timezone"].as_str(), org["_locale"].as_str()), (Some("UTC"), Some("en-gb")));
    assert_eq!(creates(&env), 1);
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_lost_response_504_is_reconciled_into_exactly_one_organization() {
    let env = biot_env(SimulatorConfig::default()).await;
    env.sim.push_script(PROVIDER, vec![ScriptedFault::LostResponse]);
    let worker = env.start_worker().await;
    let (id, name) = (env.id("lost"), env.name("lost"));
    env.publish_json(&request(&id, &name), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    assert_eq!(outcome.json["type"], "org.provisioned", "{}", outcome.json);
    assert_eq!(outcome.json["data"]["created"], false, "adopted, not created again");
    let orgs = orgs_named(&env, &name);
    assert_eq!(orgs.len(), 1);
    assert_eq!(outcome.json["data"]["organization_id"], orgs[0]["_id"]);
    assert_eq!(creates(&env), 1, "reconciled by search instead of a second create");
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(504)), ("lookup", Some(200))]);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_a_name_taken_by_someone_else_fails_with_conflict() {
    let env = biot_env(SimulatorConfig::default()).await;
    let name = env.name("taken");
    env.sim.insert_organization(
        PROVIDER,
        json!({ "_name": name, "_primaryAdministrator": { "_email": "someone@else.example" },
                "orgprov_request_id": "other" }),
    );
    let worker = env.start_worker().await;
    let id = env.id("taken");
    env.publish_json(&request(&id, &name), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    let error = &outcome.json["data"]["error"];
    assert_eq!(outcome.json["type"], "org.failed");
    assert_eq!(error["code"], "conflict");
    assert_eq!(error["upstream_status"], 409);
    assert!(error["message"].as_str().unwrap().contains(&name));
    assert_eq!(creates(&env), 1, "one create, one lookup, then stop");
    assert_eq!(orgs_named(&env, &name).len(), 1);
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_an_admin_email_owned_elsewhere_fails_with_conflict_naming_it_and_ours_is_adopted() {
    let env = biot_env(SimulatorConfig::default()).await;
    // Someone else's organization already has our admin as its administrator.
    let (foreign, foreign_name) = (env.id("foreign"), env.name("foreign"));
    env.sim.insert_organization(
        PROVIDER,
        json!({ "_name": env.name("elsewhere"), "_primaryAdministrator": { "_email": admin_email(&foreign) } }),
    );
    // An earlier attempt of ours created organization and admin; BioT checks the e-mail first.
    let (ours, ours_name) = (env.id("ours"), env.name("ours"));
    env.sim.insert_organization(
        PROVIDER,
        json!({ "_id": "6f9619ff-8b86-4011-b42d-00c04fc964ff", "_name": ours_name,
                "_primaryAdministrator": { "_email": admin_email(&ours) }, "orgprov_request_id": ours }),
    );
    let worker = env.start_worker().await;
    env.publish_json(&request(&foreign, &foreign_name), Some(&foreign)).await;
    env.publish_json(&request(&ours, &ours_name), Some(&ours)).await;
    let outcomes = env.outcomes(&[foreign.clone(), ours.clone()], 60).await;

    let failed = &outcomes[&foreign].json;
    assert_eq!(failed["type"], "org.failed", "{failed}");
    assert_eq!(failed["data"]["error"]["code"], "conflict");
    assert_eq!(failed["data"]["error"]["upstream_status"], 409);
    assert!(failed["data"]["error"]["message"].as_str().unwrap().contains(&admin_email(&foreign)));
    assert_eq!(failed["data"]["error"]["details"]["code"], "EMAIL_ALREADY_EXIST");
    assert!(orgs_named(&env, &foreign_name).is_empty());

    let adopted = &outcomes[&ours].json;
    assert_eq!(adopted["type"], "org.provisioned", "{adopted}");
    assert_eq!(adopted["data"]["created"], false);
    assert_eq!(adopted["data"]["organization_id"], "6f9619ff-8b86-4011-b42d-00c04fc964ff");
    assert_eq!(orgs_named(&env, &ours_name).len(), 1);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_a_missing_admin_fails_as_invalid_request_before_any_http_call() {
    let env = biot_env(SimulatorConfig::default()).await;
    let worker = env.start_worker().await;
    let id = env.id("no-admin");
    let mut body = request(&id, &env.name("no-admin"));
    body.as_object_mut().unwrap().remove("admin");
    env.publish_json(&body, Some(&id)).await;
    let no_name = env.id("no-last-name");
    let mut body = request(&no_name, &env.name("no-last-name"));
    body["admin"].as_object_mut().unwrap().remove("last_name");
    env.publish_json(&body, Some(&no_name)).await;

    let outcomes = env.outcomes(&[id.clone(), no_name.clone()], 30).await;
    for (key, what) in [(&id, "admin is required"), (&no_name, "admin.last_name")] {
        let error = &outcomes[key].json["data"]["error"];
        assert_eq!(error["code"], "invalid_request", "{error}");
        assert!(error["message"].as_str().unwrap().contains(what), "{error}");
    }
    assert!(env.sim.requests().is_empty(), "no token call, no API call: {:?}", env.sim.requests());
    env.wait_consumer_idle(10).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_an_unknown_biot_template_is_rejected_with_biots_code() {
    let mut env = biot_env(SimulatorConfig::default()).await;
    env.templates
        .add_toml("name = \"biot-missing\"\nversion = \"1\"\n[settings.biot]\ntemplate_name = \"missing-clinic\"\n")
        .unwrap();
    let worker = env.start_worker().await;
    let id = env.id("tpl");
    let mut body = request(&id, &env.name("tpl"));
    body["template"] = json!("biot-missing");
    env.publish_json(&body, Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 30).await.remove(&id).unwrap();
    let error = &outcome.json["data"]["error"];
    assert_eq!(error["code"], "rejected", "{error}");
    assert_eq!(error["upstream_status"], 404);
    assert!(error["message"].as_str().unwrap().contains("TEMPLATE_NOT_FOUND_BY_NAME"), "{error}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_tokens_are_refreshed_from_their_expiration_time_and_after_a_revocation() {
    let env = biot_env(SimulatorConfig { token_ttl: Duration::from_secs(2), ..SimulatorConfig::default() }).await;
    let worker = env.start_worker().await;
    let provision = |n: &'static str| {
        let (id, name) = (env.id(n), env.name(n));
        let env = &env;
        async move {
            env.publish_json(&request(&id, &name), Some(&id)).await;
            let outcome = env.outcomes(std::slice::from_ref(&id), 30).await.remove(&id).unwrap();
            assert_eq!(outcome.json["type"], "org.provisioned", "{}", outcome.json);
        }
    };
    provision("first").await;
    // Past accessTokenExpiration: the cached token is replaced before use, not after a 401.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    provision("second").await;
    assert_eq!(token_calls(&env), 2);
    assert!(env.sim.requests().iter().all(|r| r.status != 401), "the expiry was honoured ahead of time");

    env.sim.revoke_tokens();
    provision("third").await;
    assert_eq!(token_calls(&env), 3, "one refresh after the 401");
    assert_eq!(env.sim.requests().iter().filter(|r| r.status == 401).count(), 1);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_a_429_is_retried_and_provisions_once() {
    let env = biot_env(SimulatorConfig::default()).await;
    env.sim.push_script(PROVIDER, vec![ScriptedFault::RateLimited { retry_after_secs: None }]);
    let worker = env.start_worker().await;
    let (id, name) = (env.id("limited"), env.name("limited"));
    env.publish_json(&request(&id, &name), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 30).await.remove(&id).unwrap();
    assert_eq!(outcome.json["type"], "org.provisioned", "{}", outcome.json);
    assert_eq!(outcome.json["data"]["created"], true);
    assert_eq!(orgs_named(&env, &name).len(), 1);
    // A 429 changed nothing upstream: retried without a lookup.
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(429)), ("create", Some(201))]);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Contract: our requests have the documented shape; the documented answers parse.
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/biot/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// One request the stub received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// A stand-in upstream: answers `(method, path)` with a status and a fixture file, records
/// every request.
struct Stub {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    async fn start(routes: Vec<(&'static str, &'static str, u16, &'static str)>) -> Stub {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (record, routes) = (record.clone(), routes.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default().to_vec();
                let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
                let query = parts.uri.query().unwrap_or("").to_owned();
                record.lock().unwrap().push(Seen {
                    method: method.clone(),
                    path: path.clone(),
                    query,
                    headers: parts.headers,
                    body,
                });
                let route = routes.iter().find(|(m, p, _, _)| *m == method && *p == path);
                let (status, text) = match route {
                    Some((_, _, status, file)) => (*status, fixture(file)),
                    None => (404, "{}".to_owned()),
                };
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("date", httpdate::fmt_http_date(std::time::SystemTime::now()))
                    .body(axum::body::Body::from(text))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub { base, seen, task }
    }

    fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.method == method && s.path == path).cloned().collect()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contract_provider(base: &str) -> Box<dyn Provider> {
    orgprov::install_crypto_provider();
    let mut settings = Settings::load(None, Vec::new()).unwrap();
    settings.targets.insert("contract".into(), TargetSettings::new(PROVIDER, base, "svc-id", "CONTRACT_SECRET"));
    let target = settings.resolve_targets(&|_| Some("svc-secret".into())).unwrap().remove(0);
    let delivery = Delivery::new(&target, Arc::new(Unlimited), Duration::from_secs(5)).unwrap();
    orgprov::providers::build(&target, Arc::new(delivery))
}

fn contract_spec() -> OrgSpec {
    OrgSpec {
        name: "Example Inc.".into(),
        display_name: None,
        description: Some("Lorem Ipsum".into()),
        email: None,
        parent_id: None,
        domains: vec![],
        metadata: BTreeMap::from([("plan".into(), json!("standard"))]),
        branding: Branding::default(),
        admin: Some(Admin {
            email: Some("john.smith@example.com".into()),
            first_name: Some("John".into()),
            last_name: Some("Smith".into()),
            phone: Some("+12345678901".into()),
            locale: Some("en-us".into()),
        }),
        settings: BTreeMap::from([
            ("template_name".into(), json!(BIOT_TEMPLATE)),
            (
                "headquarters".into(),
                json!({ "country_code": "US", "state": "Massachusetts", "city": "Boston", "zip_code": "02101",
                        "address1": "11 Main St.", "address2": "Entry B, Apartment 1" }),
            ),
            ("timezone".into(), json!("Europe/Oslo")),
            ("phone".into(), json!("+12345678901")),
        ]),
        template: "biot-standard".into(),
        template_version: "1".into(),
    }
}

/// Every built-in field we send is documented, with the documented JSON type; top-level
/// fields without the `_` prefix are template-defined custom attributes and must be strings.
fn assert_documented(ours: &Value, documented: &Value, path: &str) {
    let (Some(ours), Some(documented)) = (ours.as_object(), documented.as_object()) else {
        panic!("{path}: expected objects");
    };
    for (key, value) in ours {
        let here = format!("{path}.{key}");
        if path.is_empty() && !key.starts_with('_') {
            assert!(value.is_string(), "custom attribute {here} must be a string");
            continue;
        }
        let doc = documented.get(key).unwrap_or_else(|| panic!("{here} is not a documented field"));
        let kind = |v: &Value| std::mem::discriminant(v);
        assert_eq!(kind(value), kind(doc), "{here}: we send {value}, the documentation shows {doc}");
        if value.is_object() {
            assert_documented(value, doc, &here);
        }
    }
}

#[tokio::test]
async fn biot_contract_our_create_body_has_the_documented_shape() {
    let stub = Stub::start(vec![]).await;
    let provider = contract_provider(&stub.base);
    let id = RequestId::parse("req-contract-1").unwrap();
    let body = provider.prepare(&contract_spec(), &id).unwrap();
    let org = &body["organization"];
    assert_documented(org, &fixture_json("create-request.json"), "");
    // Everything the documentation marks mandatory is there.
    for pointer in [
        "/_name",
        "/_primaryAdministrator/_email",
        "/_primaryAdministrator/_employeeId",
        "/_primaryAdministrator/_name/firstName",
        "/_primaryAdministrator/_name/lastName",
        "/_headquarters/countryCode",
    ] {
        assert!(org.pointer(pointer).is_some_and(Value::is_string), "{pointer} missing from {org}");
    }
    assert_eq!(org["orgprov_request_id"], "req-contract-1");
}

#[tokio::test]
async fn biot_contract_documented_answers_parse_and_requests_go_where_documented() {
    let create_path = "/organization/v1/organizations/templates/CustomerOrganization";
    let stub = Stub::start(vec![
        ("POST", "/ums/v2/services/accessToken", 200, "token-response.json"),
        ("POST", create_path, 201, "create-response-201.json"),
        ("GET", "/organization/v1/organizations", 200, "search-response.json"),
    ])
    .await;
    let provider = contract_provider(&stub.base);
    let id = RequestId::parse("req-contract-1").unwrap();
    let body = provider.prepare(&contract_spec(), &id).unwrap();

    let created = provider.create(&body, &id).await.unwrap();
    let documented = fixture_json("create-response-201.json");
    assert_eq!(created, Created::New { id: documented["_id"].as_str().unwrap().to_owned(), status: 201 });
    let login = stub.seen("POST", "/ums/v2/services/accessToken");
    assert_eq!(login.len(), 1);
    let credentials: Value = serde_json::from_slice(&login[0].body).unwrap();
    assert_eq!(credentials, json!({ "id": "svc-id", "secretKey": "svc-secret" }));
    let create = &stub.seen("POST", create_path)[0];
    assert_eq!(create.headers["x-execution-mode"], "sync");
    let token = fixture_json("token-response.json")["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(create.headers["authorization"], format!("Bearer {token}").as_str());
    assert_eq!(serde_json::from_slice::<Value>(&create.body).unwrap(), body["organization"]);

    assert_eq!(
        provider.find(&body, &id).await.unwrap(),
        Lookup::Ours { id: documented["_id"].as_str().unwrap().into() }
    );
    let other = RequestId::parse("someone-else").unwrap();
    assert!(matches!(provider.find(&body, &other).await.unwrap(), Lookup::NotOurs { .. }));
    let search = &stub.seen("GET", "/organization/v1/organizations")[0];
    let (key, value) = search.query.split_once('=').unwrap();
    assert_eq!(key, "searchRequest");
    let decoded: Value = serde_json::from_str(&urlencoding::decode(&value.replace('+', " ")).unwrap()).unwrap();
    assert_eq!(decoded, json!({ "filter": { "_name": { "eq": "Example Inc." } }, "limit": 1 }));
    assert_eq!(token_fetches(&stub), 1, "the documented expiration is far away: one login");
}

fn token_fetches(stub: &Stub) -> usize {
    stub.seen("POST", "/ums/v2/services/accessToken").len()
}

#[tokio::test]
async fn biot_contract_documented_errors_map_to_our_codes() {
    let create_path = "/organization/v1/organizations/templates/CustomerOrganization";
    let id = RequestId::parse("req-contract-1").unwrap();

    let stub = Stub::start(vec![
        ("POST", "/ums/v2/services/accessToken", 200, "token-response.json"),
        ("POST", create_path, 409, "error-409-organization-already-exist.json"),
    ])
    .await;
    let provider = contract_provider(&stub.base);
    let body = provider.prepare(&contract_spec(), &id).unwrap();
    assert_eq!(provider.create(&body, &id).await.unwrap(), Created::Conflict { status: 409 });

    let stub = Stub::start(vec![
        ("POST", "/ums/v2/services/accessToken", 200, "token-response.json"),
        ("POST", create_path, 400, "error-400-attribute-is-mandatory.json"),
    ])
    .await;
    let provider = contract_provider(&stub.base);
    let e = provider.create(&body, &id).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
    assert!(e.message.contains("ATTRIBUTE_IS_MANDATORY") && e.message.contains("plan"), "{}", e.message);
    assert_eq!(e.details.unwrap()["details"]["attributeName"], "plan");

    // EMAIL_ALREADY_EXIST and the name search finds our organization: the lookup adopts it.
    let stub = Stub::start(vec![
        ("POST", "/ums/v2/services/accessToken", 200, "token-response.json"),
        ("POST", create_path, 409, "error-409-email-already-exist.json"),
        ("GET", "/organization/v1/organizations", 200, "search-response.json"),
    ])
    .await;
    let provider = contract_provider(&stub.base);
    assert_eq!(provider.create(&body, &id).await.unwrap(), Created::Conflict { status: 409 });
    // ... and when it is not ours, a conflict naming the e-mail.
    let other = RequestId::parse("someone-else").unwrap();
    let body = provider.prepare(&contract_spec(), &other).unwrap();
    let e = provider.create(&body, &other).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Conflict));
    assert!(e.message.contains("john.smith@example.com"), "{}", e.message);
}
