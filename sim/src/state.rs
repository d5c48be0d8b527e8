//! The state every handler shares: client credentials, fault settings, the request log, and per
//! provider its stored organizations, issued tokens, fault script and rate-limit bucket.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::task::AbortHandle;

use crate::faults::{RateDecision, TokenBucket};
use crate::{Faults, RecordedRequest, ScriptedFault, SimulatorConfig, provider_spec};

/// State shared by the handlers of all providers and the `Simulator` handle.
pub(crate) struct SimState {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) token_ttl: Duration,
    inner: Mutex<Inner>,
    /// Delayed work (late commits) that must not outlive the simulator.
    background: Mutex<Vec<AbortHandle>>,
}

struct Inner {
    faults: Faults,
    requests: Vec<RecordedRequest>,
    providers: HashMap<String, ProviderState>,
}

/// One provider's tenant: its data, its credentials and its rate-limit bucket.
pub(crate) struct ProviderState {
    /// Stored organizations in creation order, in the shape the create call returned.
    pub(crate) orgs: Orgs,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    pub(crate) script: VecDeque<ScriptedFault>,
    bucket: TokenBucket,
}

pub(crate) struct IssuedToken {
    pub(crate) expires_at: Instant,
    pub(crate) revoked: bool,
}

/// What a presented bearer token turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenStatus {
    Valid,
    /// Issued by us but expired or revoked.
    Expired,
    Unknown,
}

impl SimState {
    pub(crate) fn new(config: &SimulatorConfig, providers: &[String]) -> Self {
        let providers = providers
            .iter()
            .map(|name| {
                let state = ProviderState {
                    orgs: Orgs::default(),
                    tokens: HashMap::new(),
                    script: VecDeque::new(),
                    bucket: TokenBucket::new(config.faults.rate_limit),
                };
                (name.clone(), state)
            })
            .collect();
        SimState {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            token_ttl: config.token_ttl,
            inner: Mutex::new(Inner { faults: config.faults.clone(), requests: Vec::new(), providers }),
            background: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("simulator state poisoned")
    }

    pub(crate) fn is_provider(&self, name: &str) -> bool {
        self.lock().providers.contains_key(name)
    }

    /// Runs `f` on a provider's state under the lock; `None` if the provider is not served.
    pub(crate) fn with_provider<R>(&self, provider: &str, f: impl FnOnce(&mut ProviderState) -> R) -> Option<R> {
        self.lock().providers.get_mut(provider).map(f)
    }

    /// Every request served so far, in the order the responses were produced.
    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The first stored organization of `provider` whose `field` is the string `wanted`.
    pub(crate) fn find_organization(&self, provider: &str, field: &str, wanted: &str) -> Option<Value> {
        self.with_provider(provider, |p| p.orgs.find(field, wanted).cloned()).flatten()
    }

    pub(crate) fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        for provider in inner.providers.values_mut() {
            provider.bucket.reconfigure(faults.rate_limit);
        }
        inner.faults = faults;
    }

    /// The fault for one create call: the next scripted entry, else a random draw.
    pub(crate) fn next_create_fault(&self, provider: &str) -> Option<ScriptedFault> {
        let mut inner = self.lock();
        let scripted = inner.providers.get_mut(provider).and_then(|p| p.script.pop_front());
        scripted.or_else(|| inner.faults.draw_create_fault())
    }

    /// Charges one management-API call to the provider's tenant bucket.
    pub(crate) fn take_rate_limit(&self, provider: &str) -> RateDecision {
        let now_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let now = Instant::now();
        self.with_provider(provider, |p| p.bucket.take(now, now_epoch))
            .unwrap_or_else(|| TokenBucket::new(None).take(now, now_epoch))
    }

    /// Issues a fresh opaque token for `provider` valid for the configured TTL.
    pub(crate) fn issue_token(&self, provider: &str) -> String {
        let token: String = std::iter::repeat_with(fastrand::alphanumeric).take(48).collect();
        let expires_at = Instant::now() + self.token_ttl;
        self.with_provider(provider, |p| {
            p.tokens.insert(token.clone(), IssuedToken { expires_at, revoked: false });
        });
        token
    }

    pub(crate) fn check_token(&self, provider: &str, token: &str) -> TokenStatus {
        let now = Instant::now();
        self.with_provider(provider, |p| match p.tokens.get(token) {
            None => TokenStatus::Unknown,
            Some(t) if t.revoked || t.expires_at <= now => TokenStatus::Expired,
            Some(_) => TokenStatus::Valid,
        })
        .unwrap_or(TokenStatus::Unknown)
    }

    pub(crate) fn revoke_tokens(&self) {
        let mut inner = self.lock();
        for provider in inner.providers.values_mut() {
            for token in provider.tokens.values_mut() {
                token.revoked = true;
            }
        }
    }

    /// Stores an organization as if someone else had created it, completed the way the
    /// provider would have stored it.
    pub(crate) fn insert_seed(&self, provider: &str, org: Value) -> Option<Value> {
        let spec = provider_spec(provider)?;
        let org = match org {
            Value::Object(given) => {
                let mut stored = (spec.seed_defaults)();
                stored.extend(given);
                Value::Object(stored)
            }
            other => other,
        };
        self.with_provider(provider, |p| {
            p.orgs.push(org.clone());
            org
        })
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        self.lock().requests.push(request);
    }

    /// Runs `work` after `delay` unless the simulator shuts down first.
    pub(crate) fn spawn_delayed(&self, delay: Duration, work: impl FnOnce() + Send + 'static) -> AbortHandle {
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            work();
        });
        let handle = task.abort_handle();
        let mut background = self.background.lock().expect("simulator state poisoned");
        background.retain(|h| !h.is_finished());
        background.push(handle.clone());
        handle
    }

    pub(crate) fn abort_background(&self) {
        let mut background = self.background.lock().expect("simulator state poisoned");
        for handle in background.drain(..) {
            handle.abort();
        }
    }
}

/// A provider's stored organizations in creation order, with an index of their top-level
/// string fields, so that finding one by its key (name, id, slug) takes the same time in a
/// tenant of ten organizations as in one of a hundred thousand (a benchmark's backlog).
#[derive(Default)]
pub(crate) struct Orgs {
    list: Vec<Value>,
    /// field → value → positions in `list`, oldest first.
    index: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl Orgs {
    pub(crate) fn push(&mut self, org: Value) {
        self.index_at(self.list.len(), &org);
        self.list.push(org);
    }

    /// The first organization whose `field` is the string `wanted`.
    pub(crate) fn find(&self, field: &str, wanted: &str) -> Option<&Value> {
        self.position(field, wanted).map(|i| &self.list[i])
    }

    pub(crate) fn position(&self, field: &str, wanted: &str) -> Option<usize> {
        self.index.get(field)?.get(wanted)?.first().copied()
    }

    pub(crate) fn has(&self, field: &str, wanted: &str) -> bool {
        self.position(field, wanted).is_some()
    }

    /// Changes the organization at `i` in place, keeping the index right.
    pub(crate) fn update(&mut self, i: usize, change: impl FnOnce(&mut Value)) {
        let Some(org) = self.list.get(i) else { return };
        for (field, value) in strings(org) {
            if let Some(at) = self.index.get_mut(&field).and_then(|v| v.get_mut(&value)) {
                at.retain(|&j| j != i);
            }
        }
        change(&mut self.list[i]);
        let org = self.list[i].clone();
        self.index_at(i, &org);
    }

    fn index_at(&mut self, i: usize, org: &Value) {
        for (field, value) in strings(org) {
            let at = self.index.entry(field).or_default().entry(value).or_default();
            at.push(i);
            at.sort_unstable();
        }
    }
}

impl std::ops::Deref for Orgs {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        &self.list
    }
}

/// The top-level string fields of an organization.
fn strings(org: &Value) -> Vec<(String, String)> {
    org.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn organizations_are_found_by_any_top_level_string_and_stay_found_after_a_change() {
        let mut orgs = Orgs::default();
        orgs.push(json!({"id": "o1", "name": "acme", "n": 1}));
        orgs.push(json!({"id": "o2", "name": "acme"}));
        assert_eq!(orgs.find("name", "acme").unwrap()["id"], "o1", "the oldest first");
        assert_eq!(orgs.position("id", "o2"), Some(1));
        assert!(!orgs.has("n", "1"), "only strings are keys");
        orgs.update(0, |o| o["name"] = json!("globex"));
        assert_eq!(orgs.find("name", "acme").unwrap()["id"], "o2");
        assert_eq!(orgs.find("name", "globex").unwrap()["id"], "o1");
        assert_eq!(orgs.len(), 2);
    }
}
