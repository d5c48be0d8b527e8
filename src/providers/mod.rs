//! Upstream identity providers behind one trait.
//!
//! Each provider is one module that owns its wire format: how the rendered [`OrgSpec`] becomes
//! a request body (and which documented limits it must meet first), how an organization is
//! created and found again, and how its answers map to our error codes. Nothing outside this
//! folder knows a provider's JSON. Adding a provider means one module plus one line in
//! [`build`] and [`ProviderKind`].

pub mod auth0;
pub mod biot;
pub mod logto;
pub mod secureauth;
pub mod stytch;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::config::{Target, TargetSettings};
use crate::contract::{ErrorCode, RequestId};
use crate::delivery::{Delivery, Response, SendError};
use crate::template::OrgSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Auth0,
    Biot,
    Logto,
    SecureAuth,
    Stytch,
}

impl ProviderKind {
    pub const NAMES: &'static [&'static str] = &["auth0", "biot", "logto", "secureauth", "stytch"];

    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "auth0" => Some(ProviderKind::Auth0),
            "biot" => Some(ProviderKind::Biot),
            "logto" => Some(ProviderKind::Logto),
            "secureauth" => Some(ProviderKind::SecureAuth),
            "stytch" => Some(ProviderKind::Stytch),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Auth0 => "auth0",
            ProviderKind::Biot => "biot",
            ProviderKind::Logto => "logto",
            ProviderKind::SecureAuth => "secureauth",
            ProviderKind::Stytch => "stytch",
        }
    }
}

/// Checks a target's provider-specific keys; `Err((key, message))` names the key under
/// `targets.<name>.`.
pub fn check(kind: ProviderKind, target: &TargetSettings) -> Result<(), (&'static str, String)> {
    match kind {
        ProviderKind::Auth0 => auth0::check(target),
        ProviderKind::Biot => biot::check(target),
        ProviderKind::Logto => logto::check(target),
        ProviderKind::SecureAuth => secureauth::check(target),
        ProviderKind::Stytch => stytch::check(target),
    }
}

/// Builds the adapter for one configured target.
pub fn build(target: &Target, delivery: Arc<Delivery>) -> Box<dyn Provider> {
    match target.kind {
        ProviderKind::Auth0 => Box::new(auth0::Auth0::new(target, delivery)),
        ProviderKind::Biot => Box::new(biot::Biot::new(target, delivery)),
        ProviderKind::Logto => Box::new(logto::Logto::new(target, delivery)),
        ProviderKind::SecureAuth => Box::new(secureauth::SecureAuth::new(target, delivery)),
        ProviderKind::Stytch => Box::new(stytch::Stytch::new(target, delivery)),
    }
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
        match e {
            SendError::NotSent(m) => CallError::new(ErrorClass::Retryable, None, format!("{what}: {m}")),
            SendError::MaybeSent(m) => CallError::new(ErrorClass::Ambiguous, None, format!("{what}: {m}")),
            SendError::Throttled(wait) => CallError {
                class: ErrorClass::Throttled,
                status: None,
                message: format!("{what}: target throttled for {wait:?}"),
                retry_after: Some(wait),
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
    /// reused by every attempt. `Err` names the offending field.
    fn prepare(&self, spec: &OrgSpec, request_id: &RequestId) -> Result<Value, String>;

    /// The natural key the organization is found by (shown in events and `status`).
    fn natural_key(&self, body: &Value) -> String;

    fn create<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Created, CallError>>;

    fn find<'a>(&'a self, body: &'a Value, request_id: &'a RequestId) -> BoxFuture<'a, Result<Lookup, CallError>>;

    /// How long to wait after an ambiguous create before the reconciling lookup may trust a
    /// "not found". Zero for providers with a unique key (a late duplicate create is refused
    /// there); a provider that cannot refuse duplicates waits out the upstream timeout.
    fn reconcile_delay(&self) -> Duration {
        Duration::ZERO
    }
}
