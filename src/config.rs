//! One typed configuration for every command: a TOML file plus `ORGPROV_*` environment
//! overrides (`ORGPROV_NATS__URL` sets `nats.url`, `ORGPROV_TARGETS__ACME__BASE_URL` sets
//! `targets.acme.base_url`).
//!
//! Every bad value fails at start-up with an error that names its key. Credentials are never
//! written in the file: a target names an environment variable or a file holding the secret,
//! and the loaded value lives in a [`SecretString`] so it cannot reach a log by accident.
//!
//! This module knows no provider. A target's table is read in two parts: the keys every target
//! has ([`TargetSettings`]), and `provider` with the keys left over, which go to the provider
//! part `P` ([`ProviderPart`], implemented by the `providers` module with one settings struct per
//! provider). Reading each part on its own keeps every error naming its full key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

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

/// A bad key inside one table: `key` is its path in that table (empty for the table itself).
#[derive(Debug, PartialEq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError { key: key.into(), message: message.into() }
    }

    /// The error as a [`ConfigError`] naming the full key, the table being at `table`.
    fn under(self, table: &str) -> ConfigError {
        match (table, self.key.as_str()) {
            ("", "") => key_error("(root)", self.message),
            (table, "") => key_error(table, self.message),
            ("", key) => key_error(key, self.message),
            (table, key) => key_error(format!("{table}.{key}"), self.message),
        }
    }
}

/// The part of a target's settings that depends on its provider. `provider = "auth0"` picks
/// the provider; the keys that are not [`TargetSettings`]' own are that provider's. This module
/// knows no provider: the `providers` module implements the trait for its settings enum.
pub trait ProviderPart: Sized {
    /// Every name `provider` takes.
    const NAMES: &'static [&'static str];

    /// Reads the part of provider `name` (one of [`ProviderPart::NAMES`]) from `keys`: the
    /// target's keys other than [`TargetSettings`]' own. See [`read_provider_keys`].
    fn read(name: &str, keys: toml::Table) -> Result<Self, KeyError>;

    /// The provider's name, as `provider` spells it.
    fn name(&self) -> &'static str;

    /// The provider's start-up checks of its target (its own keys, and the common keys it
    /// needs, such as `client_id`); the error names a key of the target.
    fn validate(&self, target: &TargetSettings<Self>) -> Result<(), KeyError>;
}

/// The keys of a settings struct, as serde reads them (its field names).
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};

    /// A deserializer that only notes the field names a struct asks for.
    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Error::custom("field names noted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// Reads `table` as `T`; an error names the key inside `table` it is about.
fn read_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        KeyError::new(if key == "." { String::new() } else { key }, e.into_inner().to_string())
    })
}

/// Reads the keys of a `provider` target as `T`, its settings struct. A key `T` does not have
/// (another provider's, say) is refused by name, with the keys such a target takes.
pub fn read_provider_keys<T: DeserializeOwned>(provider: &str, keys: toml::Table) -> Result<T, KeyError> {
    let own = keys_of::<T>();
    if let Some(unknown) = keys.keys().find(|k| !own.contains(&k.as_str())) {
        let common = format!("the keys of every target (provider, {})", TargetSettings::<()>::keys().join(", "));
        let takes = if own.is_empty() { format!("only {common}") } else { format!("{} and {common}", own.join(", ")) };
        return Err(KeyError::new(
            unknown.clone(),
            format!("not a key for provider {provider}; its targets take {takes}"),
        ));
    }
    read_table(keys)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default, bound = "")]
pub struct Settings<P> {
    pub nats: NatsSettings,
    pub postgres: PostgresSettings,
    pub worker: WorkerSettings,
    pub templates_dir: PathBuf,
    /// Targets by name; [`Settings::load`] reads them one by one (see [`TargetSettings`]).
    #[serde(skip)]
    pub targets: BTreeMap<String, TargetSettings<P>>,
}

impl<P> Default for Settings<P> {
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

/// `Debug` shows the URL through [`redact_url`]: a NATS token or user password is a secret.
#[derive(Clone, Deserialize)]
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
            ack_wait_secs: 15,
            duplicate_window_secs: 900,
            max_ack_pending: 20_000,
        }
    }
}

impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field cannot be left out of this by accident.
        let NatsSettings {
            url,
            subject_prefix,
            requests_stream,
            events_stream,
            consumer,
            ack_wait_secs,
            duplicate_window_secs,
            max_ack_pending,
        } = self;
        f.debug_struct("NatsSettings")
            .field("url", &redact_url(url))
            .field("subject_prefix", subject_prefix)
            .field("requests_stream", requests_stream)
            .field("events_stream", events_stream)
            .field("consumer", consumer)
            .field("ack_wait_secs", ack_wait_secs)
            .field("duplicate_window_secs", duplicate_window_secs)
            .field("max_ack_pending", max_ack_pending)
            .finish()
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let PostgresSettings { url, max_connections, min_connections, migrate } = self;
        f.debug_struct("PostgresSettings")
            .field("url", &redact_url(url))
            .field("max_connections", max_connections)
            .field("min_connections", min_connections)
            .field("migrate", migrate)
            .finish()
    }
}

/// A connection URL (or NATS's comma-separated list of them) with its credentials hidden:
/// `scheme://user:***@host` for a password, `scheme://***@host` for a NATS token (userinfo
/// with no `:`). Postgres reads a lone userinfo as a user name, which is kept.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(s) = url.find("://") else { return url.to_owned() };
    let rest = &url[s + 3..];
    // The userinfo ends at the authority's last `@`; an unencoded `@` or `/` in a password
    // only makes more of the URL hidden.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@')) else { return url.to_owned() };
    let (scheme, creds, host) = (&url[..s + 3], &rest[..at], &rest[at..]);
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***{host}"),
        None if scheme.trim_start().starts_with("postgres") => url.to_owned(),
        None => format!("{scheme}***{host}"),
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

/// `Debug` shows the URL through [`redact_url`]: its password is a secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    pub url: String,
    pub max_connections: u32,
    /// Connections the worker keeps open even when idle (at most `max_connections`).
    pub min_connections: u32,
    /// Apply migrations when the worker starts.
    pub migrate: bool,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: "postgres://postgres@127.0.0.1:5432/orgprov".into(),
            max_connections: 32,
            min_connections: 8,
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
            max_in_flight: 512,
            lease_secs: 10,
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

impl NatsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://") || self.url.starts_with("ws")) {
            return Err(key_error("nats.url", format!("{:?} is not a nats:// or tls:// URL", self.url)));
        }
        for (key, v) in [
            ("nats.requests_stream", &self.requests_stream),
            ("nats.events_stream", &self.events_stream),
            ("nats.consumer", &self.consumer),
        ] {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>')) {
                return Err(key_error(key, format!("{v:?} must be non-empty, without spaces, '.', '*' or '>'")));
            }
        }
        if !self.subject_prefix.is_empty() && !self.subject_prefix.ends_with('.') {
            return Err(key_error("nats.subject_prefix", "must end with '.'"));
        }
        if self.ack_wait_secs < 5 {
            return Err(key_error("nats.ack_wait_secs", "must be at least 5"));
        }
        if self.duplicate_window_secs < 600 {
            return Err(key_error("nats.duplicate_window_secs", "must be at least 600 (10 min)"));
        }
        if self.max_ack_pending < 1 {
            return Err(key_error("nats.max_ack_pending", "must be at least 1"));
        }
        Ok(())
    }
}

impl PostgresSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(key_error("postgres.url", "must be a postgres:// URL"));
        }
        if self.max_connections < 2 {
            return Err(key_error("postgres.max_connections", "must be at least 2"));
        }
        if self.min_connections > self.max_connections {
            return Err(key_error("postgres.min_connections", "must not exceed `postgres.max_connections`"));
        }
        Ok(())
    }
}

impl WorkerSettings {
    fn validate(&self, nats: &NatsSettings) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 {
            return Err(key_error("worker.max_in_flight", "must be at least 1"));
        }
        if self.lease_secs < 3 {
            return Err(key_error("worker.lease_secs", "must be at least 3"));
        }
        if self.max_attempts == 0 {
            return Err(key_error("worker.max_attempts", "must be at least 1"));
        }
        if self.max_inline_wait_secs * 2 >= nats.ack_wait_secs {
            return Err(key_error("worker.max_inline_wait_secs", "must be under half of nats.ack_wait_secs"));
        }
        if !self.admin_addr.is_empty() && self.admin_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(key_error("worker.admin_addr", format!("{:?} is not host:port", self.admin_addr)));
        }
        Ok(())
    }
}

/// One upstream target: the keys every target has, and its provider's settings `P`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSettings<P> {
    /// `provider` and the keys only that provider has: read apart from the others, see
    /// [`ProviderPart`].
    #[serde(skip)]
    pub provider: P,
    /// Required.
    pub base_url: String,
    /// Client id, Stytch project id or BioT service user id; every provider needs one.
    pub client_id: Option<String>,
    /// Name of the environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Path of a file holding the client secret (e.g. a mounted Kubernetes secret).
    pub client_secret_file: Option<PathBuf>,
    /// Whole-call timeout of one upstream call; default 10000.
    pub timeout_ms: u64,
    /// Requests of this target in work at once in one worker; default 256.
    pub max_in_flight: usize,
    /// The most bytes of one answer's body that are read; a larger answer is not read and
    /// counts as unparseable. Default 1 MiB.
    pub max_response_bytes: usize,
    pub rate_limit: RateLimitSettings,
    pub retry: RetrySettings,
}

impl<P: Default> Default for TargetSettings<P> {
    fn default() -> Self {
        TargetSettings {
            provider: P::default(),
            base_url: String::new(),
            client_id: None,
            client_secret_env: None,
            client_secret_file: None,
            timeout_ms: 10_000,
            max_in_flight: 256,
            max_response_bytes: 1 << 20,
            rate_limit: RateLimitSettings::default(),
            retry: RetrySettings::default(),
        }
    }
}

impl TargetSettings<()> {
    /// The keys every target has besides `provider`.
    pub fn keys() -> &'static [&'static str] {
        keys_of::<TargetSettings<()>>()
    }

    /// The common keys of a target with every optional key at its default.
    fn common(base_url: &str, client_id: &str, client_secret_env: &str) -> TargetSettings<()> {
        TargetSettings {
            base_url: base_url.to_owned(),
            client_id: Some(client_id.to_owned()),
            client_secret_env: Some(client_secret_env.to_owned()),
            ..TargetSettings::default()
        }
    }

    fn with_provider<P>(self, provider: P) -> TargetSettings<P> {
        TargetSettings {
            provider,
            base_url: self.base_url,
            client_id: self.client_id,
            client_secret_env: self.client_secret_env,
            client_secret_file: self.client_secret_file,
            timeout_ms: self.timeout_ms,
            max_in_flight: self.max_in_flight,
            max_response_bytes: self.max_response_bytes,
            rate_limit: self.rate_limit,
            retry: self.retry,
        }
    }
}

impl<P> TargetSettings<P> {
    /// The client id, or an error naming `client_id` that says `what` it is for this provider.
    pub fn require_client_id(&self, what: &str) -> Result<&str, KeyError> {
        self.client_id.as_deref().filter(|id| !id.is_empty()).ok_or_else(|| KeyError::new("client_id", what))
    }
}

impl<P: ProviderPart> TargetSettings<P> {
    /// A target of `provider` with every optional key at its default.
    ///
    /// # Panics
    /// When `provider` is not one of [`ProviderPart::NAMES`].
    pub fn new(provider: &str, base_url: &str, client_id: &str, client_secret_env: &str) -> TargetSettings<P> {
        let part = P::read(provider, toml::Table::new()).unwrap_or_else(|e| panic!("{provider}: {}", e.message));
        TargetSettings::common(base_url, client_id, client_secret_env).with_provider(part)
    }

    /// Reads `targets.<name>`: `provider` and the provider's keys go to `P`, the rest here.
    fn read(name: &str, value: toml::Value) -> Result<TargetSettings<P>, ConfigError> {
        let table = format!("targets.{name}");
        let toml::Value::Table(mut keys) = value else {
            return Err(key_error(table, "must be a table"));
        };
        let provider = match keys.remove("provider") {
            Some(toml::Value::String(p)) if P::NAMES.contains(&p.as_str()) => p,
            Some(other) => {
                return Err(key_error(
                    format!("{table}.provider"),
                    format!("unknown provider {other}; known: {}", P::NAMES.join(", ")),
                ));
            }
            None => {
                return Err(key_error(format!("{table}.provider"), format!("missing; one of {}", P::NAMES.join(", "))));
            }
        };
        let common_keys = TargetSettings::keys();
        let (common, own): (toml::Table, toml::Table) =
            keys.into_iter().partition(|(k, _)| common_keys.contains(&k.as_str()));
        let part = P::read(&provider, own).map_err(|e| e.under(&table))?;
        let common: TargetSettings<()> = read_table(common).map_err(|e| e.under(&table))?;
        Ok(common.with_provider(part))
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("targets.{name}.{k}");
        self.provider.validate(self).map_err(|e| e.under(&format!("targets.{name}")))?;
        if self.base_url.is_empty() {
            return Err(key_error(key("base_url"), "missing: the upstream's base URL, e.g. https://acme.eu.auth0.com"));
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(key_error(key("base_url"), format!("{:?} is not an http(s) URL", self.base_url)));
        }
        if self.client_secret_env.is_some() && self.client_secret_file.is_some() {
            return Err(key_error(key("client_secret_env"), "set client_secret_env or client_secret_file, not both"));
        }
        if !(self.rate_limit.per_second > 0.0 && self.rate_limit.per_second.is_finite()) {
            return Err(key_error(key("rate_limit.per_second"), "must be a positive number"));
        }
        if self.rate_limit.burst == 0 {
            return Err(key_error(key("rate_limit.burst"), "must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(key_error(key("timeout_ms"), "must be positive"));
        }
        if self.max_in_flight == 0 {
            return Err(key_error(key("max_in_flight"), "must be at least 1"));
        }
        if !(1024..=1 << 30).contains(&self.max_response_bytes) {
            return Err(key_error(key("max_response_bytes"), "must be between 1024 and 1073741824"));
        }
        if self.retry.max_attempts == Some(0) {
            return Err(key_error(key("retry.max_attempts"), "must be at least 1"));
        }
        if self.retry.deadline_secs == 0 {
            return Err(key_error(key("retry.deadline_secs"), "must be positive"));
        }
        if self.retry.base_delay_ms == 0 || self.retry.max_delay_ms < self.retry.base_delay_ms {
            return Err(key_error(key("retry.max_delay_ms"), "needs 0 < base_delay_ms <= max_delay_ms"));
        }
        Ok(())
    }
}

impl<P: Clone> TargetSettings<P> {
    /// Loads the secret (from env or file) and gives the target as the worker uses it.
    fn resolve(&self, name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Target<P>, ConfigError> {
        let key = |k: &str| format!("targets.{name}.{k}");
        let secret = match (&self.client_secret_env, &self.client_secret_file) {
            (Some(var), _) => env(var)
                .ok_or_else(|| key_error(key("client_secret_env"), format!("environment variable {var} is not set")))?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end().to_owned())
                .map_err(|e| key_error(key("client_secret_file"), format!("cannot read {}: {e}", path.display())))?,
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
        self.with_secret(name, SecretString::from(secret))
    }

    /// The target with `secret` as its client secret.
    fn with_secret(&self, name: &str, secret: SecretString) -> Result<Target<P>, ConfigError> {
        Ok(Target {
            name: name.to_owned(),
            provider: self.provider.clone(),
            base_url: self.base_url.trim_end_matches('/').to_owned(),
            client_id: self
                .client_id
                .clone()
                .ok_or_else(|| key_error(format!("targets.{name}.client_id"), "missing"))?,
            client_secret: secret,
            timeout: Duration::from_millis(self.timeout_ms),
            max_in_flight: self.max_in_flight,
            max_response_bytes: self.max_response_bytes,
            rate_limit: self.rate_limit,
            retry: self.retry,
        })
    }
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

/// A target after validation, its secret loaded: what the worker and the provider use.
#[derive(Clone, Debug)]
pub struct Target<P> {
    pub name: String,
    /// The provider's own settings.
    pub provider: P,
    /// Without a trailing `/`.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub max_response_bytes: usize,
    pub rate_limit: RateLimitSettings,
    pub retry: RetrySettings,
}

impl<P: ProviderPart> Target<P> {
    /// The provider's name (`auth0`, `stytch`, ...).
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }
}

#[cfg(test)]
impl<P: Clone> Target<P> {
    /// A target of `provider` for unit tests of provider code: an unreachable base URL, short
    /// timeouts, defaults elsewhere.
    pub fn for_tests(provider: P) -> Target<P> {
        let settings = TargetSettings {
            timeout_ms: 1000,
            max_in_flight: 1,
            ..TargetSettings::common("http://127.0.0.1:9", "c", "S").with_provider(provider)
        };
        settings.resolve("t", &|_| Some("s".into())).expect("a test target resolves")
    }
}

impl<P: ProviderPart> Settings<P> {
    /// Loads `path` (if given) and applies the `ORGPROV_*` variables of `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings<P>, ConfigError> {
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
        let targets = doc.remove("targets");
        let mut settings: Settings<P> = read_table(doc).map_err(|e| e.under(""))?;
        match targets {
            None => {}
            Some(toml::Value::Table(targets)) => {
                for (name, target) in targets {
                    let target = TargetSettings::read(&name, target)?;
                    settings.targets.insert(name, target);
                }
            }
            Some(_) => return Err(key_error("targets", "must be a table of targets by name")),
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.postgres.validate()?;
        self.worker.validate(&self.nats)?;
        self.targets.iter().try_for_each(|(name, target)| target.validate(name))
    }

    /// Resolves every target: loads its secret (from env or file).
    pub fn resolve_targets(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Target<P>>, ConfigError>
    where
        P: Clone,
    {
        self.targets.iter().map(|(name, t)| t.resolve(name, env)).collect()
    }

    /// Every target without its secret, for commands that build calls but never send them
    /// (`orgprov plan`, the checks of `orgprov bulk`): the client secret is neither read nor
    /// required, and the target's secret is an empty placeholder no call may use.
    pub fn offline_targets(&self) -> Result<Vec<Target<P>>, ConfigError>
    where
        P: Clone,
    {
        self.targets.iter().map(|(name, t)| t.with_secret(name, SecretString::from(String::new()))).collect()
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

    /// Two made-up providers: `plain` has no keys of its own; `tenanted` has `tenant`, which
    /// its start-up check requires, and `scope`, which defaults.
    #[derive(Clone, Debug, PartialEq)]
    enum Part {
        Plain(Plain),
        Tenanted(Tenanted),
    }

    #[derive(Clone, Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Plain {}

    #[derive(Clone, Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Tenanted {
        tenant: String,
        scope: String,
    }

    impl Default for Tenanted {
        fn default() -> Self {
            Tenanted { tenant: String::new(), scope: "all".into() }
        }
    }

    impl ProviderPart for Part {
        const NAMES: &'static [&'static str] = &["plain", "tenanted"];

        fn read(name: &str, keys: toml::Table) -> Result<Self, KeyError> {
            match name {
                "plain" => read_provider_keys(name, keys).map(Part::Plain),
                _ => read_provider_keys(name, keys).map(Part::Tenanted),
            }
        }

        fn name(&self) -> &'static str {
            match self {
                Part::Plain(_) => "plain",
                Part::Tenanted(_) => "tenanted",
            }
        }

        fn validate(&self, target: &TargetSettings<Self>) -> Result<(), KeyError> {
            match self {
                Part::Tenanted(t) if t.tenant.is_empty() => Err(KeyError::new("tenant", "required")),
                _ if target.client_id.is_none() => Err(KeyError::new("client_id", "required")),
                _ => Ok(()),
            }
        }
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings<Part>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orgprov.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn err(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env).unwrap_err().to_string()
    }

    const TARGET: &str = "[targets.acme]\nprovider = \"plain\"\nbase_url = \"https://acme.example\"\n\
                          client_id = \"id\"\nclient_secret_env = \"ACME_SECRET\"\n";
    const TENANTED: &str = "[targets.acme]\nprovider = \"tenanted\"\nbase_url = \"https://acme.example\"\n\
                            client_id = \"id\"\nclient_secret_env = \"ACME_SECRET\"\ntenant = \"t1\"\n";

    #[test]
    fn defaults_load_without_a_file() {
        let s = Settings::<Part>::load(None, Vec::new()).unwrap();
        assert_eq!(s.nats.requests_subject(), "org.provision.requested");
        assert_eq!(s.worker.max_in_flight, 512);
        assert!(s.targets.is_empty());
    }

    #[test]
    fn env_overrides_the_file() {
        let s = load(
            TENANTED,
            &[
                ("ORGPROV_NATS__URL", "nats://10.0.0.1:4222"),
                ("ORGPROV_TARGETS__ACME__RATE_LIMIT__PER_SECOND", "2.5"),
                ("ORGPROV_TARGETS__ACME__TENANT", "t2"),
                ("ORGPROV_TARGETS__ACME__SCOPE", "manage"),
                ("ORGPROV_WORKER__MAX_IN_FLIGHT", "9"),
            ],
        )
        .unwrap();
        assert_eq!(s.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(s.targets["acme"].rate_limit.per_second, 2.5);
        assert_eq!(
            s.targets["acme"].provider,
            Part::Tenanted(Tenanted { tenant: "t2".into(), scope: "manage".into() })
        );
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
        assert!(err("[worker]\ncolour = 1\n", &[]).contains("`worker.colour`"));
        assert!(err("[postgres]\nmax_connections = 1\n", &[]).contains("`postgres.max_connections`"));
        assert!(
            err("[postgres]\nmax_connections = 4\nmin_connections = 5\n", &[]).contains("`postgres.min_connections`")
        );
        assert!(err("[worker]\nmax_inline_wait_secs = 30\n", &[]).contains("`worker.max_inline_wait_secs`"));
        assert!(err("targets = 1\n", &[]).contains("`targets`"));
        assert!(err("[targets]\nacme = 1\n", &[]).contains("`targets.acme`"));
        assert!(
            err(&format!("{TARGET}[targets.acme.rate_limit]\nburst = 0\n"), &[])
                .contains("`targets.acme.rate_limit.burst`")
        );
        assert!(err(&format!("{TARGET}timeout_ms = \"soon\"\n"), &[]).contains("`targets.acme.timeout_ms`"));
        assert!(err(&format!("{TARGET}max_response_bytes = 10\n"), &[]).contains("`targets.acme.max_response_bytes`"));
        assert!(err(&TARGET.replace("https:", "ftp:"), &[]).contains("`targets.acme.base_url`"));
        assert!(err(&TARGET.replace("base_url", "# base_url"), &[]).contains("`targets.acme.base_url`: missing"));
        assert!(err("", &[("ORGPROV_POSTGRES__URL", "mysql://x")]).contains("`postgres.url`"));
        assert!(err("", &[("ORGPROV_WORKER__NOPE", "1")]).contains("nope"));
        assert!(err("[worker\n", &[]).contains("not valid TOML"));
    }

    #[test]
    fn the_provider_key_picks_the_provider_and_must_be_known() {
        let e = err(&TARGET.replace("\"plain\"", "\"okta\""), &[]);
        assert!(e.contains("`targets.acme.provider`") && e.contains("plain, tenanted"), "{e}");
        assert!(err(&TARGET.replace("provider = \"plain\"", "provider = 5"), &[]).contains("`targets.acme.provider`"));
        assert!(err(&TARGET.replace("provider", "# provider"), &[]).contains("`targets.acme.provider`: missing"));
        assert_eq!(load(TARGET, &[]).unwrap().targets["acme"].provider, Part::Plain(Plain {}));
    }

    #[test]
    fn a_key_of_another_provider_is_refused_by_its_full_path_with_the_keys_the_provider_takes() {
        let e = err(&format!("{TARGET}tenant = \"t1\"\n"), &[]);
        assert!(e.starts_with("config key `targets.acme.tenant`: not a key for provider plain"), "{e}");
        assert!(e.contains("its targets take only the keys of every target (provider, base_url, client_id"), "{e}");
        let e = err(&format!("{TENANTED}audience = \"x\"\n"), &[]);
        assert!(e.starts_with("config key `targets.acme.audience`: not a key for provider tenanted"), "{e}");
        assert!(e.contains("its targets take tenant, scope and the keys of every target (provider, "), "{e}");
        let e = err(&format!("{TENANTED}scope = 3\n"), &[]);
        assert!(e.contains("`targets.acme.scope`: invalid type: integer `3`, expected a string"), "{e}");
    }

    #[test]
    fn provider_checks_run_at_load_and_name_their_key() {
        assert_eq!(err(&TENANTED.replace("tenant = \"t1\"\n", ""), &[]), "config key `targets.acme.tenant`: required");
        assert_eq!(
            err(&TARGET.replace("client_id = \"id\"\n", ""), &[]),
            "config key `targets.acme.client_id`: required"
        );
        let s = load(TENANTED, &[]).unwrap();
        assert_eq!(s.targets["acme"].provider, Part::Tenanted(Tenanted { tenant: "t1".into(), scope: "all".into() }));
    }

    #[test]
    fn urls_hide_passwords_and_tokens_in_debug_too() {
        assert_eq!(redact_url("nats://s3cr3t-token@nats.internal:4222"), "nats://***@nats.internal:4222");
        assert_eq!(
            redact_url("nats://orgprov:pw@a:4222,nats://tok@b:4222"),
            "nats://orgprov:***@a:4222,nats://***@b:4222"
        );
        assert_eq!(redact_url("tls://tok@a:4222"), "tls://***@a:4222");
        assert_eq!(redact_url("postgres://orgprov:p@ss@db/orgprov?x=1"), "postgres://orgprov:***@db/orgprov?x=1");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/orgprov"),
            "postgres://postgres@127.0.0.1:5432/orgprov"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        let mut s: Settings<Part> = Settings::default();
        s.nats.url = "nats://n4ts-token@nats:4222".into();
        s.postgres.url = "postgres://orgprov:pg-pass@db/orgprov".into();
        let debug = format!("{s:?}");
        assert!(!debug.contains("n4ts-token") && !debug.contains("pg-pass"), "{debug}");
        assert!(debug.contains("nats://***@nats:4222") && debug.contains("max_ack_pending"), "{debug}");
    }

    #[test]
    fn targets_built_in_code_take_the_defaults() {
        let t = TargetSettings::<Part>::new("tenanted", "https://x.example", "id", "VAR");
        assert_eq!(t.provider, Part::Tenanted(Tenanted::default()));
        assert_eq!((t.timeout_ms, t.max_in_flight, t.client_secret_file), (10_000, 256, None));
        assert_eq!(t.max_response_bytes, 1 << 20);
        assert_eq!(TargetSettings::keys().len(), 9);
    }

    #[test]
    fn secrets_come_from_env_or_file_and_a_missing_one_names_its_key() {
        let s = load(TARGET, &[]).unwrap();
        let e = s.resolve_targets(&|_| None).unwrap_err().to_string();
        assert!(e.contains("`targets.acme.client_secret_env`") && e.contains("ACME_SECRET"), "{e}");
        let targets = s.resolve_targets(&|v| (v == "ACME_SECRET").then(|| "s3cret".to_string())).unwrap();
        assert_eq!(targets[0].base_url, "https://acme.example");
        assert_eq!(targets[0].provider_name(), "plain");
        assert!(!format!("{:?}", targets[0]).contains("s3cret"), "secrets must not appear in Debug output");
    }

    #[test]
    fn offline_targets_need_no_secret() {
        let s = load(TARGET, &[]).unwrap();
        let targets = s.offline_targets().unwrap();
        assert_eq!((targets[0].name.as_str(), targets[0].base_url.as_str()), ("acme", "https://acme.example"));
        use secrecy::ExposeSecret;
        assert_eq!(targets[0].client_secret.expose_secret(), "");
    }
}
