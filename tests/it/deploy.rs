//! The files for users that cannot run here (no Docker engine): docker-compose.yml and the
//! configuration it mounts stay consistent with the README.

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
