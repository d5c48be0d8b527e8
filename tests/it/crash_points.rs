//! The worker killed at each recovery point, then restarted: every request still ends once.
//!
//! The crash hooks exist only in a build with `--features fault-hooks` (the README's test
//! command runs this module that way); a build without them must ignore
//! `ORGPROV_FAULT_CRASH_AT`, which the last test proves.

#[cfg(feature = "fault-hooks")]
mod points {
    use orgprov::fault::CrashPoint;
    use orgprov_sim::{Faults, SimulatorConfig};

    use crate::helpers::TestEnv;
    use crate::reliability::assert_exactly_once;

    /// Starts a worker that SIGKILLs itself at `point`, publishes `n` requests to it (creates
    /// answer after `latency_ms`) and waits for the kill; the environment and the request ids.
    async fn crashed_at(point: CrashPoint, n: usize, latency_ms: u64) -> (TestEnv, Vec<String>) {
        let faults = Faults { latency_ms, ..Faults::default() };
        let env = TestEnv::with_simulator(SimulatorConfig { faults, ..SimulatorConfig::default() }).await;
        let ids: Vec<String> = (0..n).map(|i| env.id(i)).collect();
        let mut worker = env.worker_process(&[("ORGPROV_FAULT_CRASH_AT", point.name())]);
        for (i, id) in ids.iter().enumerate() {
            env.publish_json(&env.request(id, &env.name(i)), Some(id)).await;
        }
        let status = worker.wait_exit(60).await;
        assert!(status.is_some(), "the worker never reached {}; log:\n{}", point.name(), env.worker_log());
        assert!(env.worker_log().contains(&format!("SIGKILL at {}", point.name())));
        (env, ids)
    }

    async fn killed_at(point: CrashPoint) {
        // Latency keeps a create on the wire long enough for `during_call`.
        let (env, ids) = crashed_at(point, 5, 300).await;
        let _restarted = env.worker_process(&[]);
        assert_exactly_once(&env, &ids).await;
        env.cleanup().await;
    }

    /// Killed right after a group commit of several settles, before their events went out and
    /// their messages were acked. The restarted worker calls the upstream for none of the
    /// requests that group settled, and their events carry the bytes committed before the kill.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_between_a_group_commit_and_the_acks_then_restarted() {
        // All creates answer after the same delay, so their settles reach the writers together.
        let (env, ids) = crashed_at(CrashPoint::AfterGroupCommit, 20, 200).await;

        // What the group committed: settled requests, their attempts and their event bytes.
        let settled: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT r.request_id, (SELECT count(*) FROM attempts a WHERE a.request_id = r.request_id), e.payload
               FROM requests r JOIN events e USING (request_id)
              WHERE r.state <> 'active' ORDER BY r.request_id",
        )
        .fetch_all(&env.db)
        .await
        .unwrap();
        assert!(settled.len() > 1, "a group of settles committed before the kill: {settled:?}");

        let _restarted = env.worker_process(&[]);
        assert_exactly_once(&env, &ids).await;
        for (id, attempts_before, payload) in &settled {
            let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts WHERE request_id = $1")
                .bind(id)
                .fetch_one(&env.db)
                .await
                .unwrap();
            assert_eq!(attempts, *attempts_before, "{id}: settled before the kill, yet called again");
            let events = env.events_for(id);
            assert!(!events.is_empty(), "{id}: its event went out after the restart");
            for event in events {
                assert_eq!(&event.bytes, payload, "{id}: the event carries the bytes committed before the kill");
            }
        }
        env.cleanup().await;
    }

    /// One test per recovery point, named after it.
    macro_rules! killed_at_each_point {
        ($($test:ident => $point:ident,)+) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                killed_at(CrashPoint::$point).await;
            }
        )+};
    }

    killed_at_each_point! {
        killed_after_the_claim_then_restarted => AfterClaim,
        killed_during_the_upstream_call_then_restarted => DuringCall,
        killed_after_the_upstream_created_the_organization_then_restarted => AfterCreate,
        killed_after_the_commit_before_publish_and_ack_then_restarted => AfterCommit,
        killed_after_publishing_before_the_ack_then_restarted => AfterPublish,
    }
}

#[cfg(not(feature = "fault-hooks"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_without_fault_hooks_ignores_the_crash_variable() {
    let env = crate::helpers::TestEnv::new().await;
    let binary = std::fs::read(env!("CARGO_BIN_EXE_orgprov")).unwrap();
    let needle = b"ORGPROV_FAULT_CRASH_AT";
    assert!(!binary.windows(needle.len()).any(|w| w == needle), "the crash hooks are compiled in");
    let mut worker = env.worker_process(&[("ORGPROV_FAULT_CRASH_AT", "after_claim")]);
    let id = env.id("no-hooks");
    env.publish_json(&env.request(&id, &env.name("no-hooks")), Some(&id)).await;
    let outcome = env.outcomes(std::slice::from_ref(&id), 60).await.remove(&id).unwrap();
    assert_eq!(outcome.json["type"], "org.provisioned", "{}", outcome.json);
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker is still running");
    assert!(!env.worker_log().contains("SIGKILL"), "{}", env.worker_log());
    worker.kill();
    env.cleanup().await;
}
