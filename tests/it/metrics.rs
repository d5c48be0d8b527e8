//! The admin endpoint of a worker process: `/metrics` (counters of committed outcomes and the
//! two latency histograms, in the exposition format Prometheus scrapes), and a port that
//! cannot be had.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::TestEnv;

/// The body of `GET /metrics` and its content type, over plain HTTP/1.0.
async fn scrape(addr: &str) -> Option<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: orgprov\r\n\r\n").await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let content_type = head.lines().find_map(|l| l.strip_prefix("content-type: "))?.to_owned();
    Some((content_type, body.to_owned()))
}

/// The value of the sample `name` (a whole line `name value`).
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_settled_outcomes_and_time_requests_and_upstream_calls() {
    let env = TestEnv::with_simulator(Default::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = env.worker_process(&[("ORGPROV_WORKER__ADMIN_ADDR", &addr)]);
    let ids: Vec<String> = (0..3).map(|i| env.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
    }
    env.outcomes(&ids, 60).await;

    // The counters move after the commit, the histogram after the ack: both may trail the event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (content_type, body) = loop {
        if let Some((content_type, body)) = scrape(&addr).await
            && sample(&body, "orgprov_request_seconds_count") == Some(3.0)
        {
            break (content_type, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}\nlog:\n{}", scrape(&addr).await, env.worker_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert_eq!(sample(&body, "orgprov_provisioned_total"), Some(3.0), "{body}");
    assert_eq!(sample(&body, "orgprov_failed_total"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "orgprov_upstream_calls_total"), Some(3.0), "{body}");
    assert_eq!(sample(&body, "orgprov_upstream_call_seconds_count"), Some(3.0), "{body}");
    assert!(body.contains("# TYPE orgprov_request_seconds histogram"), "{body}");
    // Every request took less than the largest finite bucket, and more than nothing.
    assert_eq!(sample(&body, "orgprov_request_seconds_bucket{le=\"+Inf\"}"), Some(3.0), "{body}");
    assert!(sample(&body, "orgprov_request_seconds_sum").is_some_and(|s| s > 0.0), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    worker.kill();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_port_already_taken_stops_the_worker_at_start_up_with_exit_2() {
    let env = TestEnv::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut worker = env.worker_process(&[("ORGPROV_WORKER__ADMIN_ADDR", &addr)]);
    let status = worker.wait_exit(30).await.expect("the worker exits instead of running without its admin endpoint");
    assert_eq!(status.code(), Some(2), "{}", env.worker_log());
    let log = env.worker_log();
    assert!(log.contains("`worker.admin_addr`") && log.contains(&addr), "{log}");
    drop(taken);
    env.cleanup().await;
}
