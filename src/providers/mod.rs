//! Upstream identity providers behind one trait.
//!
//! Each provider is one module that owns its wire format: its target settings (the keys only
//! that provider has, with their defaults and start-up checks), how the rendered [`OrgSpec`]
//! becomes a request body (and which documented limits it must meet first), how an
//! organization is created and found again, and how its answers map to our error codes.
//! Nothing outside this folder knows a provider's JSON.
//!
//! The providers are registered once, in the `providers!` list below the module declarations:
//! it declares [`ProviderKind`], the target settings enum [`ProviderSettings`] (tagged by
//! `provider`), their names and [`build`]. Adding a provider means one module (holding its
//! `Settings` struct, which implements [`TargetKeys`], and a provider type named like its
//! variant with a `new(&Target, &Settings, Arc<Delivery>)`), its `pub mod` line, and one line
//! in that list.

pub mod auth0;
pub mod biot;
pub mod logto;
pub mod rules;
pub mod secureauth;
pub mod stytch;
#[cfg(test)]
mod testing;
pub mod token;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::config::{self, KeyError, ProviderPart};
use crate::contract::{ErrorCode, RequestId};
use crate::delivery::{Delivery, Response, SendError};
use crate::template::OrgSpec;

pub use rules::Violations;
pub use upstream::{AuthScheme, CreateRequest};

/// The configuration with this crate's providers.
pub type Settings = config::Settings<ProviderSettings>;
/// One target's settings with this crate's providers.
pub type TargetSettings = config::TargetSettings<ProviderSettings>;
/// A resolved target with this crate's providers.
pub type Target = config::Target<ProviderSettings>;

/// What the registry needs of a provider's `Settings`: the keys only its targets have.
pub trait TargetKeys {
    /// The error when a target has no `client_id`, saying what it is for this provider (every
    /// provider needs one).
    const CLIENT_ID: &'static str;

    /// Start-up checks of the provider's own keys; the error names the key.
    fn validate(&self) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Declares, from one list of `module::Type` lines, everything that names every provider:
/// [`ProviderKind`], [`ProviderSettings`] (a variant holding `module::Settings`), the names
/// (`provider = "module"`) and [`build`] (`module::Type::new`).
macro_rules! providers {
    ($($module:ident :: $variant:ident,)+) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ProviderKind {
            $($variant,)+
        }

        impl ProviderKind {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($module),)+];

            pub fn parse(s: &str) -> Option<ProviderKind> {
                match s {
                    $(stringify!($module) => Some(ProviderKind::$variant),)+
                    _ => None,
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderKind::$variant => stringify!($module),)+
                }
            }
        }

        /// A target's provider settings: `provider = "auth0"` picks the variant, the target's
        /// other keys outside the common ones are that provider's `Settings`.
        #[derive(Clone, Debug, PartialEq)]
        pub enum ProviderSettings {
            $($variant($module::Settings),)+
        }

        impl ProviderSettings {
            pub fn kind(&self) -> ProviderKind {
                match self {
                    $(ProviderSettings::$variant(_) => ProviderKind::$variant,)+
                }
            }

            /// `provider` and the provider's keys, as a target's table in a file holds them.
            pub fn to_table(&self) -> toml::Table {
                let keys = match self {
                    $(ProviderSettings::$variant(settings) => toml::Table::try_from(settings),)+
                };
                let mut table = toml::Table::from_iter([("provider".to_owned(), self.kind().as_str().into())]);
                table.extend(keys.expect("provider settings are plain TOML values"));
                table
            }
        }

        $(impl From<$module::Settings> for ProviderSettings {
            fn from(settings: $module::Settings) -> Self {
                ProviderSettings::$variant(settings)
            }
        })+

        impl ProviderPart for ProviderSettings {
            const NAMES: &'static [&'static str] = ProviderKind::NAMES;

            fn read(name: &str, keys: toml::Table) -> Result<Self, KeyError> {
                match name {
                    $(stringify!($module) => config::read_provider_keys(name, keys).map(ProviderSettings::$variant),)+
                    _ => Err(KeyError::new("provider", format!("unknown provider {name:?}"))),
                }
            }

            fn name(&self) -> &'static str {
                self.kind().as_str()
            }

            fn validate(&self, target: &TargetSettings) -> Result<(), KeyError> {
                match self {
                    $(ProviderSettings::$variant(settings) => {
                        settings.validate()?;
                        target.require_client_id(<$module::Settings as TargetKeys>::CLIENT_ID)?;
                    })+
                }
                Ok(())
            }
        }

        /// Builds the adapter for one configured target.
        pub fn build(target: &Target, delivery: Arc<Delivery>) -> Box<dyn Provider> {
            match &target.provider {
                $(ProviderSettings::$variant(settings) => {
                    Box::new($module::$variant::new(target, settings, delivery))
                })+
            }
        }
    };
}

providers! {
    auth0::Auth0,
    biot::Biot,
    logto::Logto,
    secureauth::SecureAuth,
    stytch::Stytch,
}

/// What a create call achieved.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// A 2xx with the new organization's id.
    New { id: String, status: u16 },
    /// The natural key is taken: reconcile by lookup to learn whether it is ours.
    Conflict { status: u16 },
}

/// What a lookup by natural key found.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// An organization carrying our ownership tag.
    Ours {
        id: String,
    },
    /// Someone else's organization holds the natural key.
    NotOurs {
        id: String,
    },
    Absent,
}

/// The HTTP status behind a successful call's answer, for the attempt history.
pub trait Answered {
    fn status(&self) -> u16;
}

impl Answered for Created {
    fn status(&self) -> u16 {
        match self {
            Created::New { status, .. } | Created::Conflict { status } => *status,
        }
    }
}

impl Answered for Lookup {
    fn status(&self) -> u16 {
        if *self == Lookup::Absent { 404 } else { 200 }
    }
}

/// How a failed call must be treated (the one classification of the retry policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The upstream may have acted (timeout after sending, 5xx, unparseable 2xx): reconcile
    /// by lookup before creating again.
    Ambiguous,
    /// Nothing was done upstream (429, connect failure): retry after a delay.
    Retryable,
    /// Never sent: the target's rate limit or pause holds calls longer than a worker waits
    /// in place. Not an attempt; hand the message back for `retry_after`.
    Throttled,
    /// Retrying cannot help: end with this code.
    Permanent(ErrorCode),
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub class: ErrorClass,
    pub status: Option<u16>,
    pub message: String,
    /// A delay the upstream named (Retry-After, rate-limit reset).
    pub retry_after: Option<Duration>,
    pub details: Option<Value>,
}

impl CallError {
    pub fn new(class: ErrorClass, status: Option<u16>, message: impl Into<String>) -> CallError {
        CallError { class, status, message: message.into(), retry_after: None, details: None }
    }

    /// Maps a transport failure: never-sent is retryable, maybe-sent is ambiguous.
    pub fn from_send(e: SendError, what: &str) -> CallError {
        match &e {
            SendError::NotSent(m) => CallError::new(ErrorClass::Retryable, None, format!("{what}: {m}")),
            SendError::MaybeSent(m) => CallError::new(ErrorClass::Ambiguous, None, format!("{what}: {m}")),
            // An answer too large to read is unparseable: it may have created something.
            SendError::TooLarge { status, retry_after, .. } => CallError {
                class: ErrorClass::Ambiguous,
                status: Some(*status),
                message: format!("{what}: {e}"),
                retry_after: *retry_after,
                details: None,
            },
            SendError::Throttled(wait) => CallError {
                class: ErrorClass::Throttled,
                status: None,
                message: format!("{what}: target throttled for {wait:?}"),
                retry_after: Some(*wait),
                details: None,
            },
        }
    }

    /// The shared mapping of HTTP statuses every provider starts from; providers refine it.
    pub fn from_status(response: &Response, message: String) -> CallError {
        let status = response.status;
        let class = match status {
            429 => ErrorClass::Retryable,
            401 => ErrorClass::Permanent(ErrorCode::Unauthorized),
            403 => ErrorClass::Permanent(ErrorCode::Forbidden),
            408 => ErrorClass::Ambiguous,
            400..=499 => ErrorClass::Permanent(ErrorCode::Rejected),
            _ => ErrorClass::Ambiguous,
        };
        CallError { class, status: Some(status), message, retry_after: response.retry_after(), details: None }
    }

    /// A token endpoint's refusal. A refused grant (400–404) is an authorization failure
    /// whatever its status: `forbidden` when the client lacks a permission, `unauthorized`
    /// otherwise; 429 and 5xx stay retryable. Never ambiguous: a token request creates nothing.
    pub fn token_refused(response: &Response, message: String, forbidden: bool) -> CallError {
        let mut e = CallError::from_status(response, message);
        if matches!(response.status, 400..=404) {
            e.class = ErrorClass::Permanent(if forbidden { ErrorCode::Forbidden } else { ErrorCode::Unauthorized });
        }
        e.for_lookup()
    }

    /// Lookups change nothing upstream, so their failures are never ambiguous.
    pub fn for_lookup(mut self) -> CallError {
        if self.class == ErrorClass::Ambiguous {
            self.class = ErrorClass::Retryable;
        }
        self
    }
}

/// One upstream provider, configured for one target.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Checks the spec against the provider's documented rules and builds the create body,
    /// ownership tag included. Runs once, before any HTTP call; the result is stored and
    /// reused by every attempt. `Err` holds every rule broken, each naming its field.
    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, Violations>;

    /// The natural key the organization is found by (shown in events and `status`).
    fn natural_key(&self, body: &Value) -> String;

    /// The create call for a prepared `body`, as `create` sends it (credentials aside): what
    /// `orgprov plan` shows. Makes no call. `Err` only for a stored body this provider could
    /// not have prepared.
    fn create_request(&self, body: &Value, request_id: &RequestId) -> Result<CreateRequest, CallError>;

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>>;

    fn find<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Lookup, CallError>>;

    /// How long to wait after an ambiguous create before the reconciling lookup may trust a
    /// "not found". Zero for providers with a unique key (a late duplicate create is refused
    /// there); a provider that cannot refuse duplicates waits out the upstream timeout.
    fn reconcile_delay(&self) -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn an_answer_too_large_to_read_is_ambiguous_and_keeps_its_status_and_delay() {
        let wait = Some(Duration::from_secs(7));
        let e = CallError::from_send(
            SendError::TooLarge { status: 429, cap: 1024, retry_after: wait },
            "create organization",
        );
        assert_eq!((e.class, e.status, e.retry_after), (ErrorClass::Ambiguous, Some(429), wait));
        assert_eq!(
            e.message,
            "create organization: answered 429 with a body over the 1024-byte cap (max_response_bytes); not read"
        );
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orgprov.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn target(provider: &str, keys: &str) -> String {
        format!(
            "[targets.acme]\nprovider = {provider:?}\nbase_url = \"https://acme.example\"\nclient_id = \"id\"\n\
             client_secret_env = \"ACME_SECRET\"\n{keys}"
        )
    }

    #[test]
    fn every_provider_name_parses_reads_its_defaults_and_builds() {
        assert_eq!(ProviderKind::NAMES, ["auth0", "biot", "logto", "secureauth", "stytch"]);
        for &name in ProviderKind::NAMES {
            let kind = ProviderKind::parse(name).unwrap();
            assert_eq!(kind.as_str(), name);
            let settings = ProviderSettings::read(name, toml::Table::new()).unwrap();
            assert_eq!((settings.kind(), settings.name()), (kind, name));
            assert_eq!(settings.to_table()["provider"].as_str(), Some(name));
            let target = Target::for_tests(settings);
            assert_eq!(target.provider_name(), name);
            assert_eq!(build(&target, Delivery::unlimited(&target)).kind(), kind);
        }
        assert_eq!(ProviderKind::parse("okta"), None);
    }

    #[test]
    fn the_shipped_configs_load_with_every_provider_of_the_example() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["deploy/orgprov.example.toml", "deploy/orgprov.compose.toml", "deploy/orgprov.local.toml"] {
            let s = Settings::load(Some(&root.join(file)), Vec::new()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!s.targets.is_empty(), "{file}");
        }
        // The example shows the other providers' targets commented out: they load as well.
        let example = std::fs::read_to_string(root.join("deploy/orgprov.example.toml")).unwrap();
        let (active, others) = example.split_once("# The other providers.").unwrap();
        let others = others.split_once('\n').unwrap().1;
        let others: String = others.lines().map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l))).collect();
        let s = load(&format!("{active}{others}"), &[]).unwrap();
        let names: Vec<&str> = s.targets.values().map(|t| t.provider.name()).collect();
        assert_eq!(names, ["auth0", "biot", "logto", "secureauth", "stytch"]);
        assert_eq!(
            s.targets["acme-secureauth"].provider,
            ProviderSettings::SecureAuth(secureauth::Settings {
                tenant: "acme".into(),
                scope: "manage_organizations".into(),
                token_url: Some("https://acme.us.connect.secureauth.com/acme/system/oauth2/token".into()),
            })
        );
    }

    #[test]
    fn a_key_of_another_provider_is_refused_with_its_full_path() {
        for (provider, key) in [
            ("auth0", "tenant = \"acme\""),
            ("biot", "resource = \"https://x/api\""),
            ("logto", "ownership_attribute = \"tag\""),
            ("secureauth", "audience = \"https://x/\""),
            ("stytch", "token_url = \"https://x/token\""),
        ] {
            let keys =
                if provider == "secureauth" { format!("tenant = \"acme\"\n{key}\n") } else { format!("{key}\n") };
            let e = load(&target(provider, &keys), &[]).unwrap_err().to_string();
            let name = key.split(' ').next().unwrap();
            let expected =
                format!("config key `targets.acme.{name}`: not a key for provider {provider}; its targets take");
            assert!(e.starts_with(&expected), "{e}");
        }
        let e = load(&target("auth0", "tenant = \"acme\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("take token_url, audience and the keys of every target (provider, base_url, "), "{e}");
    }

    #[test]
    fn provider_keys_default_and_are_overridden_from_the_environment() {
        let s = load(&target("logto", ""), &[]).unwrap();
        assert_eq!(s.targets["acme"].provider, ProviderSettings::Logto(logto::Settings::default()));
        let env = [
            ("ORGPROV_TARGETS__ACME__RESOURCE", "https://default.logto.app/api"),
            ("ORGPROV_TARGETS__ACME__SCOPE", "read"),
        ];
        let s = load(&target("logto", ""), &env).unwrap();
        let expected = logto::Settings {
            resource: Some("https://default.logto.app/api".into()),
            scope: "read".into(),
            token_url: None,
        };
        assert_eq!(s.targets["acme"].provider, ProviderSettings::Logto(expected));
        let s = load(&target("biot", ""), &[("ORGPROV_TARGETS__ACME__OWNERSHIP_ATTRIBUTE", "crmRequest")]).unwrap();
        assert_eq!(s.targets["acme"].provider.to_table()["ownership_attribute"].as_str(), Some("crmRequest"));
    }

    #[test]
    fn provider_checks_fail_at_load_naming_their_key() {
        let e = |provider: &str, keys: &str| load(&target(provider, keys), &[]).unwrap_err().to_string();
        let tenant = e("secureauth", "");
        assert!(tenant.starts_with("config key `targets.acme.tenant`: SecureAuth needs the tenant id"), "{tenant}");
        let tenant = e("secureauth", "tenant = \"a b\"\n");
        assert!(tenant.starts_with("config key `targets.acme.tenant`: \"a b\" is not"), "{tenant}");
        let attribute = e("biot", "ownership_attribute = \"_x\"\n");
        assert!(attribute.starts_with("config key `targets.acme.ownership_attribute`"), "{attribute}");
        // Every provider needs a client id, and says what it is.
        for provider in ProviderKind::NAMES {
            let keys = if *provider == "secureauth" { "tenant = \"acme\"\n" } else { "" };
            let text = target(provider, keys).replace("client_id = \"id\"\n", "");
            let missing = load(&text, &[]).unwrap_err().to_string();
            assert!(missing.starts_with("config key `targets.acme.client_id`: "), "{missing}");
        }
    }

    #[test]
    fn provider_keys_are_written_back_as_they_are_read() {
        let s = load(&target("secureauth", "tenant = \"acme\"\nscope = \"manage_configuration\"\n"), &[]).unwrap();
        let written = s.targets["acme"].provider.to_table();
        assert_eq!(
            ProviderSettings::read("secureauth", written.into_iter().filter(|(k, _)| k != "provider").collect())
                .unwrap(),
            s.targets["acme"].provider
        );
    }
}
