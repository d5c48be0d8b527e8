//! The 10,000-row `orgprov bulk` run through 5 % 503s and 2 % lost responses: every row
//! provisioned exactly once upstream, the results file complete and correct.
//!
//! It is a test binary of its own because it keeps the machine busy for a few minutes in a
//! debug build: beside the timing-sensitive tests of `tests/it` (rate limits, pauses, leases)
//! it would make them flaky. `cargo test` runs test binaries one after another.

#[allow(dead_code)]
#[path = "it/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "it/bulk_support.rs"]
mod bulk_support;

use orgprov::bulk::{BulkArgs, exit};
use orgprov_sim::{Faults, SimulatorConfig};

use bulk_support::{args, assert_all_provisioned, bulk, customers, results, stored_requests};
use helpers::{TARGET, TestEnv};

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
    // Adopted after a lost response, or after a create the client gave up on (its timeout) that
    // the upstream still committed.
    assert!(adopted > 0, "{adopted} adopted for {lost} lost responses");
    assert_eq!(stored_requests(&env).await, n as u64, "each row published once");
    env.finish(worker).await;
}
