//! Bad input: every kind ends as one `org.failed` with the right code and a message naming the
//! problem, before any HTTP call, and the message is not redelivered.

use serde_json::{Value, json};

use crate::helpers::{TARGET, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_becomes_org_failed_with_the_right_code() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;

    // Messages that yield a usable request_id.
    let cases: Vec<(String, Value, &str, &str)> = vec![
        (
            env.id("bad-name"),
            env.request(&env.id("bad-name"), "Acme Corp"),
            "invalid_request",
            "organization.name \"Acme Corp\"",
        ),
        (
            env.id("bad-target"),
            json!({"request_id": env.id("bad-target"), "target": "nowhere", "template": "standard", "organization": {"name": "x"}}),
            "unknown_target",
            "nowhere",
        ),
        (
            env.id("bad-template"),
            json!({"request_id": env.id("bad-template"), "target": TARGET, "template": "platinum", "organization": {"name": "x"}}),
            "unknown_template",
            "platinum",
        ),
        (
            env.id("no-org"),
            json!({"request_id": env.id("no-org"), "target": TARGET, "template": "standard"}),
            "invalid_request",
            "organization",
        ),
    ];
    for (id, body, _, _) in &cases {
        env.publish_json(body, Some(id)).await;
    }
    // Messages too broken to yield a request_id: matched by their Nats-Msg-Id.
    let unreadable: Vec<(String, Vec<u8>, &str)> = vec![
        (env.id("not-json"), b"{\"request_id\": oops".to_vec(), "not JSON"),
        (
            env.id("missing-id"),
            serde_json::to_vec(&json!({"target": TARGET, "template": "standard", "organization": {"name": "x"}}))
                .unwrap(),
            "request_id is missing",
        ),
        (
            env.id("bad-id"),
            serde_json::to_vec(&json!({"request_id": "has spaces", "target": TARGET})).unwrap(),
            "request_id is malformed",
        ),
        (
            env.id("too-big"),
            [b"{\"request_id\":\"x\",\"pad\":\"".to_vec(), vec![b'a'; 70_000], b"\"}".to_vec()].concat(),
            "over the 65536 byte limit",
        ),
    ];
    for (msg_id, payload, _) in &unreadable {
        env.publish(payload, Some(msg_id)).await;
    }

    let ids: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let outcomes = env.outcomes(&ids, 30).await;
    for (id, _, code, needle) in &cases {
        let e = &outcomes[id];
        orgprov::contract::validate_event(&e.bytes).unwrap();
        assert_eq!(e.json["type"], "org.failed", "{id}");
        assert_eq!(e.json["data"]["error"]["code"], *code, "{id}: {}", e.json);
        let message = e.json["data"]["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{id}: message {message:?} should name {needle:?}");
    }

    let by_msg_id =
        |msg_id: &str| env.events().into_iter().find(|e| e.json["data"]["source_message"]["msg_id"] == json!(msg_id));
    env.wait_until(30, "org.failed for every unreadable message", |_| {
        unreadable.iter().all(|(m, _, _)| by_msg_id(m).is_some())
    })
    .await;
    for (msg_id, _, needle) in &unreadable {
        let e = by_msg_id(msg_id).unwrap();
        orgprov::contract::validate_event(&e.bytes).unwrap();
        let data = &e.json["data"];
        assert_eq!(data["request_id"], Value::Null);
        assert_eq!(data["target"], Value::Null);
        assert_eq!(data["provider"], Value::Null);
        assert_eq!(data["error"]["code"], "invalid_request");
        assert_eq!(data["source_message"]["stream"], json!(env.settings.nats.requests_stream));
        assert!(data["source_message"]["sequence"].as_u64().unwrap() > 0);
        let message = data["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{msg_id}: {message:?} should contain {needle:?}");
        // Details never echo more than a bounded prefix of the payload.
        assert!(e.bytes.len() < 2_000, "{msg_id}: event is {} bytes", e.bytes.len());
    }

    // Nothing reached the provider, and nothing is redelivered forever.
    assert_eq!(env.api_calls(), 0, "validation happens before any HTTP call");
    env.wait_consumer_idle(15).await;
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_messages").fetch_one(&env.db).await.unwrap();
    assert_eq!(rejected, unreadable.len() as i64);
    env.finish(worker).await;
}

#[tokio::test]
async fn config_errors_name_the_key_and_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orgprov"))
        .args(["worker"])
        .env("ORGPROV_WORKER__MAX_IN_FLIGHT", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`worker.max_in_flight`"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orgprov.toml");
    std::fs::write(&path, "[targets.acme]\nprovider = \"auth0\"\nbase_url = \"https://acme.auth0.com\"\nclient_id = \"c\"\nclient_secret_env = \"ORGPROV_TEST_UNSET_SECRET\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orgprov"))
        .args(["--config", path.to_str().unwrap(), "worker"])
        .env_remove("ORGPROV_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`targets.acme.client_secret_env`") && stderr.contains("ORGPROV_TEST_UNSET_SECRET"),
        "{stderr}"
    );
}
