//! `orgprov bulk` as its users meet it: a large file through faults, a run killed half-way
//! and run again, a run stopped with Ctrl-C and resumed with the command it printed, and a
//! file with every kind of bad row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use orgprov::bulk::{BulkArgs, Report, derived_request_id, exit};
use orgprov_sim::{Faults, SimulatorConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TARGET, TestEnv};

/// A CSV of `n` rows for this test's target, organization names from [`TestEnv::name`].
fn customers(env: &TestEnv, n: usize, file: &str) -> PathBuf {
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

fn args(file: &Path) -> BulkArgs {
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
async fn bulk(env: &TestEnv, args: &BulkArgs) -> Report {
    orgprov::bulk::run(&env.settings, args, &[], CancellationToken::new()).await.expect("bulk runs")
}

/// `orgprov bulk` as a process of its own, on this test's configuration.
fn bulk_process(env: &TestEnv, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orgprov"));
    cmd.args(["--config", env.config_file().to_str().unwrap(), "bulk"]).args(extra).env("ORGPROV_LOG", "error");
    cmd
}

/// The results file, row by row: column name → value.
fn results(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, orgprov::bulk::results::HEADER);
    reader.records().map(|r| header.iter().cloned().zip(r.unwrap().iter().map(str::to_owned)).collect()).collect()
}

/// The simulator's organizations of this test, by name.
fn organizations(env: &TestEnv) -> HashMap<String, Vec<Value>> {
    let mut by_name: HashMap<String, Vec<Value>> = HashMap::new();
    for org in env.sim.organizations("auth0") {
        by_name.entry(org["name"].as_str().unwrap_or_default().to_owned()).or_default().push(org);
    }
    by_name
}

async fn stored_requests(env: &TestEnv) -> u64 {
    let info = env.js.get_stream(&env.settings.nats.requests_stream).await.unwrap().get_info().await.unwrap();
    info.state.messages
}

async fn count(env: &TestEnv, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.db).await.unwrap()
}

/// Every row provisioned: one organization each upstream, carrying the row's derived
/// request_id, and a complete, correct results file.
async fn assert_all_provisioned(env: &TestEnv, n: usize, results_file: &Path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_through_faults_are_each_provisioned_exactly_once() {
    let faults = Faults { error_rate: 0.05, lost_response_rate: 0.02, ..Faults::default() };
    let mut env = TestEnv::with_simulator(SimulatorConfig { faults, ..SimulatorConfig::default() }).await;
    let target = env.settings.targets.get_mut(TARGET).unwrap();
    target.rate_limit.per_second = 20_000.0;
    target.rate_limit.burst = 2_000;
    target.max_in_flight = 128;
    env.settings.worker.max_in_flight = 256;
    env.settings.postgres.max_connections = 32;
    // Every upstream call takes a slot of the replica-wide rate limit, one row in Postgres:
    // committed one by one, those wait for the disk, which is what bounds a debug build here.
    // This test is about exactly-once through upstream faults, not about Postgres surviving a
    // crash, so its database commits without waiting for the disk (the worker's own sessions,
    // opened after this, pick the setting up).
    let database = env.settings.postgres.url.rsplit('/').next().unwrap().to_owned();
    let sql = format!("ALTER DATABASE \"{database}\" SET synchronous_commit TO off");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&env.db).await.unwrap();
    let n = 10_000;
    let file = customers(&env, n, "customers.csv");
    let worker = env.start_worker().await;

    let started = std::time::Instant::now();
    let report = bulk(&env, &BulkArgs { timeout: 600, ..args(&file) }).await;
    eprintln!("10,000 rows in {:.1?}: {report:?}", started.elapsed());
    assert_eq!(report.exit, exit::PROVISIONED, "{report:?}");
    assert_eq!((report.rows, report.invalid, report.published, report.had_outcome), (n as u64, 0, n as u64, 0));
    let counts = report.counts.clone().unwrap();
    assert_eq!((counts.provisioned, counts.failed, counts.pending), (n as u64, 0, 0));
    let results_file = file.with_file_name("customers.results.csv");
    assert_eq!(report.results.as_deref(), Some(results_file.as_path()), "beside the input by default");
    assert_all_provisioned(&env, n, &results_file).await;

    // The faults happened, and were reconciled: a lost response is adopted, not created again.
    let statuses: Vec<u16> = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/api/v2/organizations"))
        .map(|r| r.status)
        .collect();
    let (lost, unavailable) =
        (statuses.iter().filter(|s| **s == 504).count(), statuses.iter().filter(|s| **s == 503).count());
    assert!(lost > 50 && unavailable > 200, "faults injected: {lost} lost, {unavailable} 503");
    let adopted = results(&results_file).iter().filter(|r| r["created"] == "false").count();
    assert_eq!(adopted as u64, counts.adopted);
    assert!(adopted > 0 && adopted <= lost, "{adopted} adopted for {lost} lost responses");
    assert_eq!(stored_requests(&env).await, n as u64, "each row published once");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_run_killed_half_way_and_run_again_publishes_only_the_rest() {
    let env = TestEnv::new().await;
    let n = 600;
    let file = customers(&env, n, "half.csv");
    let worker = env.start_worker().await;

    // At 100 rows/s the kill lands while rows are still being published.
    let mut first =
        bulk_process(&env, &[file.to_str().unwrap(), "--target", TARGET, "--template", "standard", "--rate", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&env, "SELECT count(*) FROM requests").await < 150 {
        assert!(tokio::time::Instant::now() < deadline, "the first run published nothing");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // Whatever the first run published is worked off.
    env.wait_consumer_idle(60).await;
    let published_first = stored_requests(&env).await;
    assert!((150..n as u64).contains(&published_first), "killed half-way: {published_first} of {n} published");
    let settled = count(&env, "SELECT count(*) FROM requests WHERE state <> 'active'").await as u64;
    assert_eq!(settled, published_first, "every published row has its outcome");

    let report = bulk(&env, &args(&file)).await;
    assert_eq!(report.exit, exit::PROVISIONED, "{report:?}");
    assert_eq!(report.had_outcome, published_first, "rows with an outcome are skipped");
    assert_eq!(report.published, n as u64 - published_first, "only the remaining rows are published");
    assert_eq!(report.duplicates, 0);
    assert_eq!(stored_requests(&env).await, n as u64, "no row published twice");
    assert_all_provisioned(&env, n, &file.with_file_name("half.results.csv")).await;
    let creates = env.create_calls();
    assert_eq!(creates, n, "one create per row, no faults here");
    assert_eq!(count(&env, "SELECT count(*) FROM requests WHERE state = 'succeeded'").await, n as i64);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_publishing_writes_the_results_and_prints_the_command_that_resumes() {
    let env = TestEnv::new().await;
    let n = 300;
    let file = customers(&env, n, "stopped.csv");
    let out = env.dir.path().join("out.csv");
    let worker = env.start_worker().await;
    let file_arg = file.to_str().unwrap();
    let run = bulk_process(
        &env,
        &[file_arg, "--target", TARGET, "--template", "standard", "--rate", "40", "--results", out.to_str().unwrap()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&env, "SELECT count(*) FROM requests").await < 40 {
        assert!(tokio::time::Instant::now() < deadline, "the run published nothing");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = run.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let output = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(exit::INTERRUPTED as i32), "{stdout}");
    let rows = results(&out);
    assert_eq!(rows.len(), n, "the results so far, one row per input row");
    let pending = rows.iter().filter(|r| r["status"] == "pending").count();
    assert!(pending > 0 && rows.iter().all(|r| r["status"] == "pending" || r["status"] == "provisioned"), "{stdout}");
    let resume = stdout.lines().skip_while(|l| !l.contains("Resume with:")).nth(1).expect("a resume command").trim();
    assert!(resume.contains(" bulk ") && resume.contains(file_arg), "{resume}");

    // The printed command, as a user would paste it.
    let again = Command::new("sh").args(["-c", resume]).env("ORGPROV_LOG", "error").output().unwrap();
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{again_out}\n{}", String::from_utf8_lossy(&again.stderr));
    assert!(again_out.contains("resuming:"), "{again_out}");
    let rows = results(&out);
    assert!(rows.iter().all(|r| r["status"] == "provisioned"), "all provisioned after the resume");
    assert_eq!(organizations(&env).len(), n);
    assert_eq!(stored_requests(&env).await, n as u64, "no row published twice");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_every_kind_of_bad_row_is_reported_in_one_run_and_nothing_is_published() {
    let env = TestEnv::new().await;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bulk/bad-rows.csv");
    let file = env.dir.path().join("bad-rows.csv");
    std::fs::copy(fixture, &file).unwrap();
    let output =
        bulk_process(&env, &[file.to_str().unwrap(), "--target", TARGET, "--template", "standard"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(exit::INVALID as i32), "{stderr}");
    let expected = [
        ("line 3, column name:", "breaks Auth0's rules"),
        ("line 4, column target:", "unknown target \"nowhere\""),
        ("line 5, column template:", "unknown template \"platinum\""),
        ("line 6, column request_id:", "repeats the one of line 2"),
        ("line 7, column request_id:", "request_id is malformed"),
        ("line 8, column name:", "required"),
        ("line 9, column branding.primary_color:", "must be a hex colour"),
        ("line 10, column -:", "the row has 3 fields, the header 8 columns"),
        ("line 11, column display_name:", "longer than 255 characters"),
        ("line 12, column name:", "\"Wayne Enterprises\" breaks Auth0's rules"),
        ("line 12, column branding.primary_color:", "\"red\" must be a hex colour"),
        ("line 13, column occurred_at:", "date-time"),
        ("line 14, column name:", "is empty"),
    ];
    let lines: Vec<&str> = stderr.lines().filter(|l| l.trim_start().starts_with("line ")).collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for ((at, what), line) in expected.iter().zip(&lines) {
        assert!(line.trim_start().starts_with(at) && line.contains(what), "expected {at} ... {what}, got {line}");
    }
    assert!(stderr.contains("12 of 14 rows are invalid") && stderr.contains("Nothing was published"), "{stderr}");
    assert_eq!(stored_requests(&env).await, 0, "nothing published");
    assert_eq!(count(&env, "SELECT count(*) FROM requests").await, 0);
    assert!(env.sim.requests().is_empty());

    // NDJSON files are checked the same way, naming fields.
    let ndjson = env.dir.path().join("bad.ndjson");
    std::fs::write(
        &ndjson,
        "{\"organization\":{\"name\":\"fine\"}}\n{not json\n[1,2]\n{\"request_id\":\"r4\",\"organization\":{}}\n\
         {\"request_id\":7,\"organization\":{\"name\":\"x\"}}\n{\"request_id\":\"r6\",\"organization\":{\"name\":\"Caps\",\"color\":1}}\n",
    )
    .unwrap();
    let output =
        bulk_process(&env, &[ndjson.to_str().unwrap(), "--target", TARGET, "--template", "standard"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(exit::INVALID as i32), "{stderr}");
    for needle in [
        "line 2, field -: not JSON",
        "line 3, field -: the line is JSON but not a request object",
        "line 4, field organization.name:",
        "line 5, field request_id: request_id must be a string",
        "line 6, field organization:",
        "5 of 6 rows are invalid",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }

    // With --skip-invalid the two good rows go through; the results say what became of each.
    let worker = env.start_worker().await;
    let report = bulk(&env, &BulkArgs { skip_invalid: true, ..args(&file) }).await;
    assert_eq!(report.exit, exit::FAILED, "invalid rows make the run a failure: {report:?}");
    assert_eq!((report.invalid, report.published), (12, 2));
    let rows = results(&file.with_file_name("bad-rows.results.csv"));
    assert_eq!(rows.len(), 14);
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    let mut expected_status = vec!["invalid"; 14];
    (expected_status[0], expected_status[13]) = ("provisioned", "provisioned");
    assert_eq!(status, expected_status);
    assert_eq!(
        (rows[2]["error_code"].as_str(), rows[3]["error_code"].as_str()),
        ("unknown_target", "unknown_template")
    );
    assert_eq!(rows[1]["error_code"], "invalid_request");
    assert!(
        rows[10]["error_message"].contains("column name:")
            && rows[10]["error_message"].contains("column branding.primary_color:")
    );
    assert_eq!(rows[4]["request_id"], "ok-1");
    assert_eq!(organizations(&env).len(), 2);
    env.finish(worker).await;
}

#[test]
fn the_sample_file_is_valid_for_the_local_configuration() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(env!("CARGO_BIN_EXE_orgprov"))
        .current_dir(root)
        .args(["--config", "deploy/orgprov.local.toml", "bulk", "deploy/bulk-sample.csv", "--check-only"])
        .args(["--target", "sim-auth0", "--template", "standard"])
        .env("ORGPROV_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("all 10 rows are valid"), "{stdout}");
}
