//! The files for users that cannot run here (no Docker engine): docker-compose.yml and the
//! configuration it mounts stay consistent with the README, and deploy/Dockerfile builds a
//! worker image without the simulator and a separate simulator image that Compose runs.

#[test]
fn compose_services_match_the_readme_and_its_config_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for service in ["nats", "postgres", "simulator", "worker", "submit"] {
        assert!(compose.contains(&format!("\n  {service}:\n")), "docker-compose.yml has no service {service}");
    }
    assert!(compose.contains("\"-js\""), "NATS runs with JetStream");
    for mention in ["docker compose up --build", "docker compose run --rm submit", "deploy/orgprov.compose.toml"] {
        assert!(readme.contains(mention), "README does not mention {mention}");
    }
    // The worker's config in compose names the simulator service and the secret variable it sets.
    let config = std::fs::read_to_string(root.join("deploy/orgprov.compose.toml")).unwrap();
    assert!(config.contains("http://simulator:8090/auth0"));
    let var = config.lines().find_map(|l| l.strip_prefix("client_secret_env = ")).unwrap().trim_matches('"');
    assert!(compose.contains(&format!("{var}: ")), "compose sets {var} for the worker");
    let settings =
        orgprov::providers::Settings::load(Some(&root.join("deploy/orgprov.compose.toml")), Vec::new()).unwrap();
    assert_eq!(settings.nats.url, "nats://nats:4222");
    assert!(settings.postgres.url.contains("@postgres:5432/"));
}

/// The lines of one service in docker-compose.yml: from `  name:` to the next line indented
/// less deeply than its keys.
fn compose_service(compose: &str, name: &str) -> String {
    let mut lines = compose.lines().skip_while(|l| *l != format!("  {name}:"));
    assert!(lines.next().is_some(), "docker-compose.yml has no service {name}");
    lines.take_while(|l| l.is_empty() || l.starts_with("   ")).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_worker_image_has_no_simulator_and_the_simulator_runs_its_own_binary() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();

    // Stages by name: the lines from `FROM … AS <name>` to the next FROM.
    let stage = |name: &str| -> String {
        let mut lines =
            dockerfile.lines().skip_while(|l| !(l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}"))));
        let first = lines.next().unwrap_or_else(|| panic!("Dockerfile has no stage {name}"));
        std::iter::once(first).chain(lines.take_while(|l| !l.starts_with("FROM "))).collect::<Vec<_>>().join("\n")
    };
    let worker = stage("worker");
    assert!(worker.contains("ENTRYPOINT [\"orgprov\"]"), "{worker}");
    let worker_build =
        stage(worker.lines().find_map(|l| l.split("--from=").nth(1)).unwrap().split(' ').next().unwrap());
    assert!(
        worker_build.contains("--no-default-features"),
        "the worker is built without the simulator: {worker_build}"
    );
    assert!(!worker_build.contains("orgprov-sim"), "{worker_build}");
    assert!(
        dockerfile.lines().rfind(|l| l.starts_with("FROM ")).is_some_and(|l| l.ends_with(" AS worker")),
        "a build without --target gives the worker"
    );
    let simulator = stage("simulator");
    assert!(simulator.contains("ENTRYPOINT [\"orgprov-sim\"]"), "{simulator}");

    let sim_service = compose_service(&compose, "simulator");
    assert!(sim_service.contains("target: simulator"), "{sim_service}");
    let command = sim_service.lines().find_map(|l| l.trim().strip_prefix("command: ")).unwrap();
    assert!(command.starts_with("[\"--provider\""), "orgprov-sim takes the flags directly: {command}");
    for provider in ["auth0", "secureauth", "stytch", "biot", "logto"] {
        assert!(command.contains(&format!("\"--provider\", \"{provider}\"")), "{command}");
    }
    assert!(command.contains("\"--listen\", \"0.0.0.0:8090\""), "{command}");
    for service in ["worker", "submit"] {
        assert!(compose_service(&compose, service).contains("target: worker"), "{service} runs the worker image");
    }
}
