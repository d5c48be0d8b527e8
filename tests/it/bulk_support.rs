//! What the `orgprov bulk` tests share: a generated customers file, the command's arguments,
//! running it in this process or as its own, and reading what it leaves behind. Used by
//! `bulk.rs` here and by the 10,000-row test in `tests/bulk_scale.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use orgprov::bulk::{BulkArgs, Report, derived_request_id};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TARGET, TestEnv};

/// A CSV of `n` rows for this test's target, organization names from [`TestEnv::name`].
pub fn customers(env: &TestEnv, n: usize, file: &str) -> PathBuf {
    let path = env.dir.path().join(file);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "name,display_name,domains,metadata.crm_id,admin.email").unwrap();
    for i in 0..n {
        let name = env.name(i);
        writeln!(out, "{name},Customer {i},c{i}.example;c{i}.example.org,CRM-{i},admin@c{i}.example").unwrap();
    }
    out.flush().unwrap();
    path
}

pub fn args(file: &Path) -> BulkArgs {
    BulkArgs {
        file: file.to_owned(),
        format: None,
        target: Some(TARGET.into()),
        template: Some("standard".into()),
        key_column: "name".into(),
        skip_invalid: false,
        check_only: false,
        rate: None,
        timeout: 240,
        results: None,
    }
}

/// Runs `orgprov bulk` in this process.
pub async fn bulk(env: &TestEnv, args: &BulkArgs) -> Report {
    orgprov::bulk::run(&env.settings, args, &[], CancellationToken::new()).await.expect("bulk runs")
}

/// `orgprov bulk` as a process of its own, on this test's configuration.
pub fn bulk_process(env: &TestEnv, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orgprov"));
    cmd.args(["--config", env.config_file().to_str().unwrap(), "bulk"]).args(extra).env("ORGPROV_LOG", "error");
    cmd
}

/// The results file, row by row: column name → value.
pub fn results(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, orgprov::bulk::results::HEADER);
    reader.records().map(|r| header.iter().cloned().zip(r.unwrap().iter().map(str::to_owned)).collect()).collect()
}

/// The simulator's organizations of this test, by name.
pub fn organizations(env: &TestEnv) -> HashMap<String, Vec<Value>> {
    let mut by_name: HashMap<String, Vec<Value>> = HashMap::new();
    for org in env.sim.organizations("auth0") {
        by_name.entry(org["name"].as_str().unwrap_or_default().to_owned()).or_default().push(org);
    }
    by_name
}

pub async fn stored_requests(env: &TestEnv) -> u64 {
    let info = env.js.get_stream(&env.settings.nats.requests_stream).await.unwrap().get_info().await.unwrap();
    info.state.messages
}

pub async fn count(env: &TestEnv, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.db).await.unwrap()
}

/// Every row provisioned: one organization each upstream, carrying the row's derived
/// request_id, and a complete, correct results file.
pub async fn assert_all_provisioned(env: &TestEnv, n: usize, results_file: &Path) {
    let orgs = organizations(env);
    assert_eq!(orgs.len(), n, "one organization per row, no other");
    let rows = results(results_file);
    assert_eq!(rows.len(), n, "one results row per input row");
    let mut seen = HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        let name = env.name(i);
        let id = derived_request_id(TARGET, &name);
        assert_eq!((row["line"].as_str(), row["request_id"].as_str()), ((i + 2).to_string().as_str(), id.as_str()));
        assert_eq!(row["status"], "provisioned", "{row:?}");
        let upstream = &orgs[&name];
        assert_eq!(upstream.len(), 1, "{name} was created {} times upstream", upstream.len());
        assert_eq!(upstream[0]["metadata"]["orgprov_request_id"], Value::from(id.clone()));
        assert_eq!(row["organization_id"], upstream[0]["id"].as_str().unwrap());
        assert!(row["created"] == "true" || row["created"] == "false", "{row:?}");
        assert!(seen.insert(id), "request ids are unique");
    }
}
