//! `orgprov bulk` as its users meet it: a run killed half-way and run again, a run stopped
//! with Ctrl-C and resumed with the command it printed, a file with every kind of bad row, the
//! sample file. The 10,000-row run through faults is `tests/bulk_scale.rs`.

use std::process::{Command, Stdio};

use orgprov::bulk::{BulkArgs, exit};

use crate::bulk_support::{
    args, assert_all_provisioned, bulk, bulk_process, count, customers, organizations, results, stored_requests,
};
use crate::helpers::{TARGET, TestEnv};

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
