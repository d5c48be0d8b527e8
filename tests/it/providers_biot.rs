//! BioT, end to end (NATS → worker → simulated BioT → Postgres → event) and by contract (our
//! requests against the vendor's documented shape, the documented answers through our parser).
//!
//! BioT specifics these stories pin: the request's `admin` becomes the primary administrator
//! (and is required), `_name` and the admin e-mail are unique upstream, and a 504
//! `GATEWAY_TIMEOUT` is reconciled by searching `_name` for our custom attribute.

use std::time::Duration;

use orgprov::contract::{ErrorCode, RequestId};
use orgprov::providers::{Created, ErrorClass, Lookup};
use orgprov_sim::{ScriptedFault, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{
    Stub, TestEnv, Upstream, assert_conflict, assert_documented, calls, calls_of, contract_body, fixture_json, org_spec,
};

const BIOT: Upstream = Upstream {
    provider: "biot",
    target: "acme-biot",
    create_path: "/organization/v1/organizations/templates/CustomerOrganization",
    token_path: "/ums/v2/services/accessToken",
    created_status: 201,
    org_id: "_id",
    key: ("/organization/name", "/_name"),
};
/// `template_name` of templates/biot-standard.toml.
const BIOT_TEMPLATE: &str = "CustomerOrganization";

async fn biot_env(config: SimulatorConfig) -> TestEnv {
    BIOT.env(config, |_| {}).await
}

fn admin_email(id: &str) -> String {
    format!("admin-{id}@example.com").to_ascii_lowercase()
}

fn request(id: &str, name: &str) -> Value {
    json!({ "request_id": id, "target": BIOT.target, "template": "biot-standard", "source": "test",
            "organization": { "name": name, "metadata": { "crm_account": "A-1" } },
            "admin": { "email": admin_email(id), "first_name": "Ada", "last_name": "Lovelace", "locale": "en-GB" } })
}

fn orgs_named(env: &TestEnv, name: &str) -> Vec<Value> {
    BIOT.orgs(env, "/_name", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_provisions_an_organization_with_the_request_admin_as_primary_administrator() {
    let env = biot_env(SimulatorConfig::default()).await;
    let id = env.id("ok");
    let (worker, org) = BIOT.provisions(&env, &request(&id, &env.name("ok"))).await;
    // The request's admin is the organization's primary administrator.
    let primary = &org["_primaryAdministrator"];
    assert_eq!((&primary["_email"], &primary["_employeeId"]), (&json!(admin_email(&id)), &json!(admin_email(&id))));
    assert_eq!(primary["_name"], json!({ "firstName": "Ada", "lastName": "Lovelace" }));
    assert_eq!(primary["_locale"], "en-gb");
    // Ownership tag, metadata and template defaults as custom / built-in attributes.
    assert_eq!(org["orgprov_request_id"], json!(id));
    assert_eq!((org["plan"].as_str(), org["crm_account"].as_str()), (Some("standard"), Some("A-1")));
    assert_eq!(
        (&org["_template"]["name"], &org["_headquarters"]["countryCode"]),
        (&json!(BIOT_TEMPLATE), &json!("US"))
    );
    assert_eq!((org["_timezone"].as_str(), org["_locale"].as_str()), (Some("UTC"), Some("en-gb")));
    env.wait_consumer_idle(10).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_lost_response_504_is_reconciled_into_exactly_one_organization() {
    let env = biot_env(SimulatorConfig::default()).await;
    let id = env.id("lost");
    BIOT.lost_create_is_adopted(&env, ScriptedFault::LostResponse, &request(&id, &env.name("lost"))).await;
    assert_eq!(calls_of(&calls(&env, &id).await), vec![("create", Some(504)), ("lookup", Some(200))]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_a_429_is_retried_and_provisions_once() {
    let env = biot_env(SimulatorConfig::default()).await;
    BIOT.rate_limited_create_is_retried(&env, None, &request(&env.id("limited"), &env.name("limited"))).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_a_name_taken_by_someone_else_fails_with_conflict() {
    let env = biot_env(SimulatorConfig::default()).await;
    let name = env.name("taken");
    let seed = json!({ "_name": name, "_primaryAdministrator": { "_email": "someone@else.example" },
                       "orgprov_request_id": "other" });
    BIOT.conflicts_with(&env, seed, &request(&env.id("taken"), &name), &name).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_a_missing_admin_fails_as_invalid_request_before_any_http_call() {
    let env = biot_env(SimulatorConfig::default()).await;
    let mut no_admin = request(&env.id("no-admin"), &env.name("no-admin"));
    no_admin.as_object_mut().unwrap().remove("admin");
    let mut no_last_name = request(&env.id("no-last-name"), &env.name("no-last-name"));
    no_last_name["admin"].as_object_mut().unwrap().remove("last_name");
    BIOT.refuses_before_any_call(&env, &[(no_admin, "admin is required"), (no_last_name, "admin.last_name")]).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_an_unknown_biot_template_is_rejected_with_biots_code() {
    let mut env = biot_env(SimulatorConfig::default()).await;
    let template = (
        "biot-missing",
        "name = \"biot-missing\"\nversion = \"1\"\n[settings.biot]\ntemplate_name = \"missing-clinic\"\n",
    );
    let request = request(&env.id("tpl"), &env.name("tpl"));
    BIOT.rejects_with_template(&mut env, template, request, (404, "TEMPLATE_NOT_FOUND_BY_NAME")).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_an_admin_email_owned_elsewhere_fails_with_conflict_naming_it_and_ours_is_adopted() {
    let env = biot_env(SimulatorConfig::default()).await;
    // Someone else's organization already has our admin as its administrator.
    let (foreign, foreign_name) = (env.id("foreign"), env.name("foreign"));
    env.sim.insert_organization(
        BIOT.provider,
        json!({ "_name": env.name("elsewhere"), "_primaryAdministrator": { "_email": admin_email(&foreign) } }),
    );
    // An earlier attempt of ours created organization and admin; BioT checks the e-mail first.
    let (ours, ours_name) = (env.id("ours"), env.name("ours"));
    env.sim.insert_organization(
        BIOT.provider,
        json!({ "_id": "6f9619ff-8b86-4011-b42d-00c04fc964ff", "_name": ours_name,
                "_primaryAdministrator": { "_email": admin_email(&ours) }, "orgprov_request_id": ours }),
    );
    let worker = env.start_worker().await;
    env.publish_json(&request(&foreign, &foreign_name), Some(&foreign)).await;
    env.publish_json(&request(&ours, &ours_name), Some(&ours)).await;
    let outcomes = env.outcomes(&[foreign.clone(), ours.clone()], 60).await;

    let error = assert_conflict(&outcomes[&foreign].json, &admin_email(&foreign));
    assert_eq!(error["details"]["code"], "EMAIL_ALREADY_EXIST");
    assert!(orgs_named(&env, &foreign_name).is_empty());

    let adopted = &outcomes[&ours].json;
    assert_eq!(adopted["type"], "org.provisioned", "{adopted}");
    assert_eq!(adopted["data"]["created"], false);
    assert_eq!(adopted["data"]["organization_id"], "6f9619ff-8b86-4011-b42d-00c04fc964ff");
    assert_eq!(orgs_named(&env, &ours_name).len(), 1);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn biot_tokens_are_refreshed_from_their_expiration_time_and_after_a_revocation() {
    // Past accessTokenExpiration the cached token is replaced before use, not after a 401.
    let env = biot_env(SimulatorConfig { token_ttl: Duration::from_secs(2), ..SimulatorConfig::default() }).await;
    BIOT.tokens_are_renewed(&env, Duration::from_millis(2500), |n| request(&env.id(n), &env.name(n))).await;
    env.cleanup().await;
}

// Contract: our requests have the documented shape; the documented answers parse.

const TOKEN: (&str, &str, u16, &str) = ("POST", "/ums/v2/services/accessToken", 200, "biot/token-response.json");
const CREATE_PATH: &str = "/organization/v1/organizations/templates/CustomerOrganization";
const SEARCH: (&str, &str, u16, &str) = ("GET", "/organization/v1/organizations", 200, "biot/search-response.json");

/// A spec with every field BioT documents, as the vendor's example fills it.
fn contract_spec() -> Value {
    json!({
        "name": "Example Inc.", "description": "Lorem Ipsum", "metadata": { "plan": "standard" },
        "admin": { "email": "john.smith@example.com", "first_name": "John", "last_name": "Smith",
                   "phone": "+12345678901", "locale": "en-us" },
        "settings": {
            "template_name": BIOT_TEMPLATE, "timezone": "Europe/Oslo", "phone": "+12345678901",
            "headquarters": { "country_code": "US", "state": "Massachusetts", "city": "Boston", "zip_code": "02101",
                              "address1": "11 Main St.", "address2": "Entry B, Apartment 1" },
        },
    })
}

#[tokio::test]
async fn biot_contract_our_create_body_has_the_documented_shape() {
    let body = contract_body(BIOT.provider, contract_spec());
    let org = &body["organization"];
    // Every built-in field we send is documented, with the documented JSON type; top-level
    // fields without the `_` prefix are template-defined custom attributes and must be strings.
    let custom = |path: &str, key: &str| path.is_empty() && !key.starts_with('_');
    assert_documented(org, &fixture_json("biot/create-request.json"), &custom);
    for (key, value) in org.as_object().unwrap().iter().filter(|(key, _)| custom("", key)) {
        assert!(value.is_string(), "custom attribute {key} must be a string");
    }
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
    let stub = Stub::start(vec![TOKEN, ("POST", CREATE_PATH, 201, "biot/create-response-201.json"), SEARCH]).await;
    let provider = stub.provider(BIOT.provider);
    let id = RequestId::parse("req-contract-1").unwrap();
    let body = provider.prepare(&org_spec(contract_spec()), &id).unwrap();

    let created = provider.create(&body, &id).await.unwrap();
    let documented = fixture_json("biot/create-response-201.json");
    assert_eq!(created, Created::New { id: documented["_id"].as_str().unwrap().to_owned(), status: 201 });
    let login = stub.seen("POST", "/ums/v2/services/accessToken");
    assert_eq!(login.len(), 1);
    let credentials: Value = serde_json::from_slice(&login[0].body).unwrap();
    assert_eq!(credentials, json!({ "id": "contract-client", "secretKey": "contract-secret" }));
    let create = &stub.seen("POST", CREATE_PATH)[0];
    assert_eq!(create.headers["x-execution-mode"], "sync");
    let token = fixture_json("biot/token-response.json")["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(create.headers["authorization"], format!("Bearer {token}").as_str());
    assert_eq!(serde_json::from_slice::<Value>(&create.body).unwrap(), body["organization"]);

    let ours = Lookup::Ours { id: documented["_id"].as_str().unwrap().into() };
    assert_eq!(provider.find(&body, &id).await.unwrap(), ours);
    let other = RequestId::parse("someone-else").unwrap();
    assert!(matches!(provider.find(&body, &other).await.unwrap(), Lookup::NotOurs { .. }));
    let search = &stub.seen("GET", "/organization/v1/organizations")[0];
    let (key, value) = search.query.split_once('=').unwrap();
    assert_eq!(key, "searchRequest");
    let decoded: Value = serde_json::from_str(&urlencoding::decode(&value.replace('+', " ")).unwrap()).unwrap();
    assert_eq!(decoded, json!({ "filter": { "_name": { "eq": "Example Inc." } }, "limit": 1 }));
    assert_eq!(stub.seen("POST", "/ums/v2/services/accessToken").len(), 1, "the expiration is far away: one login");
}

#[tokio::test]
async fn biot_contract_documented_errors_map_to_our_codes() {
    let id = RequestId::parse("req-contract-1").unwrap();
    let create = |status: u16, file: &'static str| ("POST", CREATE_PATH, status, file);

    let stub = Stub::start(vec![TOKEN, create(409, "biot/error-409-organization-already-exist.json")]).await;
    let provider = stub.provider(BIOT.provider);
    let body = provider.prepare(&org_spec(contract_spec()), &id).unwrap();
    assert_eq!(provider.create(&body, &id).await.unwrap(), Created::Conflict { status: 409 });

    let stub = Stub::start(vec![TOKEN, create(400, "biot/error-400-attribute-is-mandatory.json")]).await;
    let e = stub.provider(BIOT.provider).create(&body, &id).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Rejected));
    assert!(e.message.contains("ATTRIBUTE_IS_MANDATORY") && e.message.contains("plan"), "{}", e.message);
    assert_eq!(e.details.unwrap()["details"]["attributeName"], "plan");

    // EMAIL_ALREADY_EXIST and the name search finds our organization: the lookup adopts it.
    let stub = Stub::start(vec![TOKEN, create(409, "biot/error-409-email-already-exist.json"), SEARCH]).await;
    let provider = stub.provider(BIOT.provider);
    assert_eq!(provider.create(&body, &id).await.unwrap(), Created::Conflict { status: 409 });
    // ... and when it is not ours, a conflict naming the e-mail.
    let other = RequestId::parse("someone-else").unwrap();
    let body = provider.prepare(&org_spec(contract_spec()), &other).unwrap();
    let e = provider.create(&body, &other).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent(ErrorCode::Conflict));
    assert!(e.message.contains("john.smith@example.com"), "{}", e.message);
}
