//! One worker, five targets of five providers, requests interleaved: every request reaches
//! its own provider, once, with that provider's tag, and its event names the right target.

use std::collections::HashMap;

use orgprov::providers::{TargetSettings, secureauth};
use orgprov_sim::{ScriptedFault, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, target_settings};
use crate::reliability::assert_exactly_once_for;

const PROVIDERS: [&str; 5] = ["auth0", "secureauth", "stytch", "biot", "logto"];

fn request(env: &TestEnv, provider: &str, i: usize) -> (String, Value) {
    let id = env.id(format!("{provider}-{i}"));
    let mut body = json!({
        "request_id": id,
        "target": format!("mixed-{provider}"),
        "template": format!("{provider}-standard"),
        "source": "test",
        "organization": { "name": env.name(format!("{provider}-{i}")) },
    });
    match provider {
        "auth0" => body["template"] = json!("standard"),
        "biot" => {
            body["admin"] = json!({ "email": format!("admin-{i}@{}.example.com", env.run), "first_name": "Ada", "last_name": "Lovelace" })
        }
        _ => {}
    }
    (id, body)
}

/// An environment with one target per provider (`mixed-<provider>`).
async fn five_targets() -> TestEnv {
    let config =
        SimulatorConfig { providers: PROVIDERS.iter().map(|p| p.to_string()).collect(), ..SimulatorConfig::default() };
    let mut env = TestEnv::with_simulator(config).await;
    for p in PROVIDERS {
        let base = target_settings(p, &env.sim.base_url(p));
        let target = match p {
            "secureauth" => TargetSettings {
                provider: secureauth::Settings { tenant: "acme".into(), ..Default::default() }.into(),
                ..base
            },
            "logto" => TargetSettings { timeout_ms: 500, ..base },
            _ => base,
        };
        env.settings.targets.insert(format!("mixed-{p}"), target);
    }
    // SecureAuth's organization template must exist in the tenant.
    env.sim.insert_organization(
        "secureauth",
        json!({ "id": "b2b-customer-template", "name": "b2b-customer-template", "template": true }),
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_providers_interleaved_in_one_worker_all_end_correctly() {
    let env = five_targets().await;
    let worker = env.start_worker().await;

    let per_provider = 8;
    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..per_provider {
        for p in PROVIDERS {
            let (id, body) = request(&env, p, i);
            env.publish_json(&body, Some(&id)).await;
            ids.entry(p).or_default().push(id);
        }
    }
    let all: Vec<String> = ids.values().flatten().cloned().collect();
    let outcomes = env.outcomes(&all, 90).await;
    for p in PROVIDERS {
        for id in &ids[p] {
            let e = &outcomes[id];
            assert_eq!(e.json["type"], "org.provisioned", "{p} {id}: {}", e.json);
            assert_eq!(e.json["data"]["provider"], p);
            assert_eq!(e.json["data"]["target"], json!(format!("mixed-{p}")));
        }
        assert_eq!(env.sim.organizations(p).len() - usize::from(p == "secureauth"), per_provider, "{p}");
        assert_exactly_once_for(&env, p, &ids[p]).await;
    }
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_then_a_late_commit_gives_one_organization_for_every_provider_with_a_unique_key() {
    let env = five_targets().await;
    // The create answers 5xx and its organization appears 1.5 s later, after the retry's lookup
    // found nothing; the retry's create is held upstream until then, so it meets the late one.
    let unique_key = ["auth0", "secureauth", "stytch", "biot"];
    for p in unique_key {
        env.sim.push_script(p, vec![ScriptedFault::LateCommit { delay_ms: 1_500 }, ScriptedFault::Hang { ms: 1_700 }]);
    }
    let worker = env.start_worker().await;
    let mut ids = Vec::new();
    for p in unique_key {
        let (id, body) = request(&env, p, 0);
        env.publish_json(&body, Some(&id)).await;
        ids.push((p, id));
    }
    for (p, id) in &ids {
        assert_exactly_once_for(&env, p, std::slice::from_ref(id)).await;
        let orgs = env.sim.organizations(p).len() - usize::from(*p == "secureauth");
        assert_eq!(orgs, 1, "{p}: one organization");
    }
    env.finish(worker).await;
}
