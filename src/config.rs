//! One typed configuration for every command: a TOML file plus `ORGPROV_*` environment
//! overrides (`ORGPROV_NATS__URL` sets `nats.url`, `ORGPROV_TARGETS__ACME__BASE_URL` sets
//! `targets.acme.base_url`).
//!
//! Every bad value fails at start-up with an error that names its key. Credentials are never
//! written in the file: a target names an environment variable or a file holding the secret,
//! and the loaded value lives in a [`SecretString`] so it cannot reach a log by accident.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::providers::ProviderKind;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.into(), message: message.into() }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub nats: NatsSettings,
    pub postgres: PostgresSettings,
    pub worker: WorkerSettings,
    pub templates_dir: PathBuf,
    pub targets: BTreeMap<String, TargetSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nats: NatsSettings::default(),
            postgres: PostgresSettings::default(),
            worker: WorkerSettings::default(),
            templates_dir: PathBuf::from("templates"),
            targets: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    pub url: String,
    /// Prepended to every subject (`org.provision.requested`, `org.provisioned`, `org.failed`);
    /// lets several isolated installations share one NATS account.
    pub subject_prefix: String,
    pub requests_stream: String,
    pub events_stream: String,
    pub consumer: String,
    pub ack_wait_secs: u64,
    /// Server-side dedupe window (by `Nats-Msg-Id`) of both streams; at least 600 s.
    pub duplicate_window_secs: u64,
    /// Cap on messages delivered but not yet acked, across all replicas together.
    pub max_ack_pending: i64,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: String::new(),
            requests_stream: "ORGPROV_REQUESTS".into(),
            events_stream: "ORGPROV_EVENTS".into(),
            consumer: "orgprov-worker".into(),
            ack_wait_secs: 60,
            duplicate_window_secs: 900,
            max_ack_pending: 20_000,
        }
    }
}

impl NatsSettings {
    pub fn requests_subject(&self) -> String {
        format!("{}org.provision.requested", self.subject_prefix)
    }
    pub fn event_subject(&self, event_type: &str) -> String {
        format!("{}{event_type}", self.subject_prefix)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    pub url: String,
    pub max_connections: u32,
    /// Apply migrations when the worker starts.
    pub migrate: bool,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: "postgres://postgres@127.0.0.1:5432/orgprov".into(),
            max_connections: 32,
            migrate: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Messages worked on at once by this process; when reached, fetching stops.
    pub max_in_flight: usize,
    /// Claim lease; renewed by a heartbeat while the work goes on.
    pub lease_secs: u64,
    /// Create attempts per request before `exhausted` (lookups and rate-limited calls do not
    /// count; the per-target retry deadline bounds them).
    pub max_attempts: u32,
    /// Waits longer than this hand the message back with a delayed NAK instead of holding it.
    pub max_inline_wait_secs: u64,
    /// CloudEvents `source` of the outcome events.
    pub event_source: String,
    pub shutdown_grace_secs: u64,
    /// Published outbox rows older than this are deleted.
    pub outbox_retention_secs: u64,
    /// Attempt history older than this is deleted.
    pub attempt_retention_days: u64,
    /// `host:port` of the health and metrics endpoint; empty disables it.
    pub admin_addr: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            max_in_flight: 256,
            lease_secs: 30,
            max_attempts: 8,
            max_inline_wait_secs: 5,
            event_source: "orgprov".into(),
            shutdown_grace_secs: 30,
            outbox_retention_secs: 3600,
            attempt_retention_days: 30,
            admin_addr: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    pub provider: String,
    pub base_url: String,
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Provider-specific: SecureAuth tenant id (path `/api/system/{tenant}/...`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Provider-specific: OAuth scope (SecureAuth: `manage_organizations`; Logto: `all`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Provider-specific: Logto resource indicator (default `{base_url}/api`).
    #[serde(default)]
    pub resource: Option<String>,
    /// Provider-specific: BioT custom attribute holding our ownership tag.
    #[serde(default)]
    pub ownership_attribute: Option<String>,
    /// Name of the environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Path of a file holding the client secret (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_target_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub retry: RetrySettings,
}

impl TargetSettings {
    /// A target with every optional key at its default.
    pub fn new(provider: &str, base_url: &str, client_id: &str, client_secret_env: &str) -> TargetSettings {
        TargetSettings {
            provider: provider.to_owned(),
            base_url: base_url.to_owned(),
            token_url: None,
            audience: None,
            tenant: None,
            scope: None,
            resource: None,
            ownership_attribute: None,
            client_id: Some(client_id.to_owned()),
            client_secret_env: Some(client_secret_env.to_owned()),
            client_secret_file: None,
            timeout_ms: default_timeout_ms(),
            max_in_flight: default_target_in_flight(),
            rate_limit: RateLimitSettings::default(),
            retry: RetrySettings::default(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_target_in_flight() -> usize {
    64
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings { per_second: 10.0, burst: 20 }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Create attempts per request for this target; `worker.max_attempts` when absent.
    pub max_attempts: Option<u32>,
    /// Overall time a request (one generation) may spend retrying before it is `exhausted`.
    pub deadline_secs: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { base_delay_ms: 200, max_delay_ms: 30_000, max_attempts: None, deadline_secs: 3600 }
    }
}

/// A target after validation: provider kind parsed, secret loaded.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// Explicit token URL; each provider has its own default.
    pub token_url: Option<String>,
    pub audience: Option<String>,
    pub tenant: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub ownership_attribute: Option<String>,
    pub client_id: String,
    pub client_secret: SecretString,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub rate_limit: RateLimitSettings,
    pub retry: RetrySettings,
}

impl Target {
    /// A target for unit tests of provider code: an unreachable base URL, defaults elsewhere.
    #[cfg(test)]
    pub fn for_tests(kind: ProviderKind) -> Target {
        Target {
            name: "t".into(),
            kind,
            base_url: "http://127.0.0.1:9".into(),
            token_url: None,
            audience: None,
            tenant: None,
            scope: None,
            resource: None,
            ownership_attribute: None,
            client_id: "c".into(),
            client_secret: SecretString::from("s"),
            timeout: Duration::from_secs(1),
            max_in_flight: 1,
            rate_limit: RateLimitSettings::default(),
            retry: RetrySettings::default(),
        }
    }
}

impl Settings {
    /// Loads `path` (if given) and applies the `ORGPROV_*` variables of `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let mut doc = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("ORGPROV_") else { continue };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            // Only variables naming a configuration section are overrides; others, such as
            // ORGPROV_LOG or a secret named ORGPROV_ACME_SECRET, are left alone.
            if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) || (path.len() == 1 && path[0] != "templates_dir") {
                continue;
            }
            set_path(&mut doc, &path, parse_env_value(&value)).map_err(|m| key_error(path.join("."), m))?;
        }
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
            let key = e.path().to_string();
            key_error(if key == "." { "(root)".into() } else { key }, e.into_inner().to_string())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        if !(n.url.starts_with("nats://") || n.url.starts_with("tls://") || n.url.starts_with("ws")) {
            return Err(key_error("nats.url", format!("{:?} is not a nats:// or tls:// URL", n.url)));
        }
        for (key, v) in [
            ("nats.requests_stream", &n.requests_stream),
            ("nats.events_stream", &n.events_stream),
            ("nats.consumer", &n.consumer),
        ] {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>')) {
                return Err(key_error(key, format!("{v:?} must be non-empty, without spaces, '.', '*' or '>'")));
            }
        }
        if !n.subject_prefix.is_empty() && !n.subject_prefix.ends_with('.') {
            return Err(key_error("nats.subject_prefix", "must end with '.'"));
        }
        if n.ack_wait_secs < 5 {
            return Err(key_error("nats.ack_wait_secs", "must be at least 5"));
        }
        if n.duplicate_window_secs < 600 {
            return Err(key_error("nats.duplicate_window_secs", "must be at least 600 (10 min)"));
        }
        if n.max_ack_pending < 1 {
            return Err(key_error("nats.max_ack_pending", "must be at least 1"));
        }
        if !(self.postgres.url.starts_with("postgres://") || self.postgres.url.starts_with("postgresql://")) {
            return Err(key_error("postgres.url", "must be a postgres:// URL"));
        }
        if self.postgres.max_connections < 2 {
            return Err(key_error("postgres.max_connections", "must be at least 2"));
        }
        let w = &self.worker;
        if w.max_in_flight == 0 {
            return Err(key_error("worker.max_in_flight", "must be at least 1"));
        }
        if w.lease_secs < 3 {
            return Err(key_error("worker.lease_secs", "must be at least 3"));
        }
        if w.max_attempts == 0 {
            return Err(key_error("worker.max_attempts", "must be at least 1"));
        }
        if w.max_inline_wait_secs * 2 >= n.ack_wait_secs {
            return Err(key_error("worker.max_inline_wait_secs", "must be under half of nats.ack_wait_secs"));
        }
        if !w.admin_addr.is_empty() && w.admin_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(key_error("worker.admin_addr", format!("{:?} is not host:port", w.admin_addr)));
        }
        for (name, t) in &self.targets {
            let key = |k: &str| format!("targets.{name}.{k}");
            let Some(kind) = ProviderKind::parse(&t.provider) else {
                return Err(key_error(
                    key("provider"),
                    format!("unknown provider {:?}; known: {}", t.provider, ProviderKind::NAMES.join(", ")),
                ));
            };
            crate::providers::check(kind, t).map_err(|(k, m)| key_error(key(k), m))?;
            if !(t.base_url.starts_with("http://") || t.base_url.starts_with("https://")) {
                return Err(key_error(key("base_url"), format!("{:?} is not an http(s) URL", t.base_url)));
            }
            if t.client_secret_env.is_some() && t.client_secret_file.is_some() {
                return Err(key_error(
                    key("client_secret_env"),
                    "set client_secret_env or client_secret_file, not both",
                ));
            }
            if !(t.rate_limit.per_second > 0.0 && t.rate_limit.per_second.is_finite()) {
                return Err(key_error(key("rate_limit.per_second"), "must be a positive number"));
            }
            if t.rate_limit.burst == 0 {
                return Err(key_error(key("rate_limit.burst"), "must be at least 1"));
            }
            if t.timeout_ms == 0 {
                return Err(key_error(key("timeout_ms"), "must be positive"));
            }
            if t.max_in_flight == 0 {
                return Err(key_error(key("max_in_flight"), "must be at least 1"));
            }
            if t.retry.max_attempts == Some(0) {
                return Err(key_error(key("retry.max_attempts"), "must be at least 1"));
            }
            if t.retry.deadline_secs == 0 {
                return Err(key_error(key("retry.deadline_secs"), "must be positive"));
            }
            if t.retry.base_delay_ms == 0 || t.retry.max_delay_ms < t.retry.base_delay_ms {
                return Err(key_error(key("retry.max_delay_ms"), "needs 0 < base_delay_ms <= max_delay_ms"));
            }
        }
        Ok(())
    }

    /// Resolves every target: parses its kind and loads its secret (from env or file).
    pub fn resolve_targets(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Target>, ConfigError> {
        self.targets
            .iter()
            .map(|(name, t)| {
                let key = |k: &str| format!("targets.{name}.{k}");
                let kind =
                    ProviderKind::parse(&t.provider).ok_or_else(|| key_error(key("provider"), "unknown provider"))?;
                let secret = match (&t.client_secret_env, &t.client_secret_file) {
                    (Some(var), _) => env(var).ok_or_else(|| {
                        key_error(key("client_secret_env"), format!("environment variable {var} is not set"))
                    })?,
                    (None, Some(path)) => {
                        std::fs::read_to_string(path).map(|s| s.trim_end().to_owned()).map_err(|e| {
                            key_error(key("client_secret_file"), format!("cannot read {}: {e}", path.display()))
                        })?
                    }
                    (None, None) => {
                        return Err(key_error(
                            key("client_secret_env"),
                            "a target needs client_secret_env or client_secret_file",
                        ));
                    }
                };
                if secret.is_empty() {
                    return Err(key_error(key("client_secret_env"), "the secret is empty"));
                }
                let client_id = t.client_id.clone().ok_or_else(|| key_error(key("client_id"), "missing"))?;
                let base = t.base_url.trim_end_matches('/').to_owned();
                Ok(Target {
                    name: name.clone(),
                    kind,
                    token_url: t.token_url.clone(),
                    audience: t.audience.clone(),
                    tenant: t.tenant.clone(),
                    scope: t.scope.clone(),
                    resource: t.resource.clone(),
                    ownership_attribute: t.ownership_attribute.clone(),
                    base_url: base,
                    client_id,
                    client_secret: SecretString::from(secret),
                    timeout: Duration::from_millis(t.timeout_ms),
                    max_in_flight: t.max_in_flight,
                    rate_limit: t.rate_limit,
                    retry: t.retry,
                })
            })
            .collect()
    }
}

const TOP_LEVEL_KEYS: &[&str] = &["nats", "postgres", "worker", "templates_dir", "targets"];

/// Environment values are typed like TOML scalars when they parse as one (`30`, `true`,
/// `2.5`), and are strings otherwise.
fn parse_env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>()
        && raw.contains('.')
    {
        return toml::Value::Float(f);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    // Numbers typed from the environment must still land in string fields (e.g. a client id
    // of digits): keep the raw text where the file had a string.
    let value = match (current.get(last), value) {
        (
            Some(toml::Value::String(_)),
            v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
        ) => toml::Value::String(v.to_string()),
        (_, v) => v,
    };
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orgprov.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn err(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env).unwrap_err().to_string()
    }

    const TARGET: &str = "[targets.acme]\nprovider = \"auth0\"\nbase_url = \"https://acme.auth0.com\"\nclient_id = \"id\"\nclient_secret_env = \"ACME_SECRET\"\n";

    #[test]
    fn the_shipped_example_configs_load() {
        for file in ["deploy/orgprov.example.toml", "deploy/orgprov.compose.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let s = Settings::load(Some(&path), Vec::new()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!s.targets.is_empty(), "{file}");
        }
    }

    #[test]
    fn defaults_load_without_a_file() {
        let s = Settings::load(None, Vec::new()).unwrap();
        assert_eq!(s.nats.requests_subject(), "org.provision.requested");
        assert_eq!(s.worker.max_in_flight, 256);
    }

    #[test]
    fn env_overrides_the_file() {
        let s = load(
            TARGET,
            &[
                ("ORGPROV_NATS__URL", "nats://10.0.0.1:4222"),
                ("ORGPROV_TARGETS__ACME__RATE_LIMIT__PER_SECOND", "2.5"),
                ("ORGPROV_WORKER__MAX_IN_FLIGHT", "9"),
            ],
        )
        .unwrap();
        assert_eq!(s.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(s.targets["acme"].rate_limit.per_second, 2.5);
        assert_eq!(s.worker.max_in_flight, 9);
        // Variables that name no section are not configuration (secrets, log settings).
        assert!(load("", &[("ORGPROV_ACME_SECRET", "x"), ("ORGPROV_LOG", "debug")]).is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(err("[worker]\nmax_in_flight = \"many\"\n", &[]).contains("`worker.max_in_flight`"));
        assert!(err("[worker]\nmax_in_flight = 0\n", &[]).contains("`worker.max_in_flight`"));
        assert!(err("[nats]\nurl = \"http://x\"\n", &[]).contains("`nats.url`"));
        assert!(err("[nats]\nduplicate_window_secs = 60\n", &[]).contains("`nats.duplicate_window_secs`"));
        assert!(err("[worker]\ncolour = 1\n", &[]).contains("colour"));
        assert!(err(&TARGET.replace("auth0\"", "okta\""), &[]).contains("`targets.acme.provider`"));
        assert!(
            err(&format!("{TARGET}[targets.acme.rate_limit]\nburst = 0\n"), &[])
                .contains("`targets.acme.rate_limit.burst`")
        );
        assert!(err("", &[("ORGPROV_POSTGRES__URL", "mysql://x")]).contains("`postgres.url`"));
        assert!(err("", &[("ORGPROV_WORKER__NOPE", "1")]).contains("nope"));
        assert!(err("[worker\n", &[]).contains("not valid TOML"));
    }

    #[test]
    fn secrets_come_from_env_or_file_and_a_missing_one_names_its_key() {
        let s = load(TARGET, &[]).unwrap();
        let e = s.resolve_targets(&|_| None).unwrap_err().to_string();
        assert!(e.contains("`targets.acme.client_secret_env`") && e.contains("ACME_SECRET"), "{e}");
        let targets = s.resolve_targets(&|v| (v == "ACME_SECRET").then(|| "s3cret".to_string())).unwrap();
        assert_eq!(targets[0].base_url, "https://acme.auth0.com");
        assert!(!format!("{:?}", targets[0]).contains("s3cret"), "secrets must not appear in Debug output");
    }
}
