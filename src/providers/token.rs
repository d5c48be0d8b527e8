//! Access-token caching shared by the providers that use OAuth-style tokens.
//!
//! One cache per target. Refresh is single-flight: the first caller that finds the token
//! missing or near expiry fetches a new one while holding the lock, and everyone else waits
//! for that result, so fifty concurrent 401s cause one token request. A token is refreshed
//! ahead of its expiry by a tenth of its lifetime (at most a minute).

use std::future::Future;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::CallError;
use crate::delivery::{Delivery, Response};

struct Cached {
    token: SecretString,
    refresh_at: Instant,
    /// Bumped on every fetch; a 401 invalidates only the generation it was sent with.
    generation: u64,
}

#[derive(Default)]
pub struct TokenCache {
    inner: Mutex<Option<Cached>>,
    fetches: std::sync::atomic::AtomicU64,
}

/// A token handed to a caller, with the generation needed to invalidate exactly it.
pub struct Token {
    pub secret: SecretString,
    pub generation: u64,
}

impl TokenCache {
    /// Returns a valid token, fetching one (single-flight) when needed. `fetch` yields the
    /// token and its lifetime.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Token, CallError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SecretString, Duration), CallError>>,
    {
        let mut slot = self.inner.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.refresh_at > Instant::now()) {
            return Ok(Token { secret: c.token.clone(), generation: c.generation });
        }
        let (token, lifetime) = fetch().await?;
        // An absurd lifetime from upstream must not overflow the clock; a day is plenty.
        let lifetime = lifetime.min(Duration::from_secs(86_400));
        let generation = self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let early = (lifetime / 10).min(Duration::from_secs(60));
        *slot = Some(Cached { token: token.clone(), refresh_at: Instant::now() + lifetime - early, generation });
        Ok(Token { secret: token, generation })
    }

    /// Drops the cached token if it is still the one that was refused.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.inner.lock().await;
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }

    /// How many tokens were fetched so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl TokenCache {
    /// Sends a call with `Authorization: Bearer <token>` through `delivery`; a 401
    /// invalidates the token, fetches a new one (single-flight) and resends once. A second
    /// 401 is returned to the caller, which maps it to `unauthorized`.
    pub async fn send_authorized<F, Fut>(
        &self,
        delivery: &Delivery,
        fetch: F,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Response, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(SecretString, Duration), CallError>>,
    {
        let mut refreshed = false;
        loop {
            let token = self.get(&fetch).await?;
            let response = delivery.send(build(&bearer(&token))).await.map_err(|e| CallError::from_send(e, what))?;
            if response.status == 401 && !refreshed {
                self.invalidate(token.generation).await;
                refreshed = true;
                continue;
            }
            return Ok(response);
        }
    }
}

/// `Authorization: Bearer` value.
pub fn bearer(token: &Token) -> String {
    format!("Bearer {}", token.secret.expose_secret())
}

/// Reads `expires_in`, which some providers send as a number and others as a numeric string.
pub fn expires_in(v: Option<&serde_json::Value>) -> Option<Duration> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64().map(Duration::from_secs),
        serde_json::Value::String(s) => s.trim().parse().ok().map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_invalidation_is_per_generation() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok((SecretString::from("t1"), Duration::from_secs(3600)))
                    })
                    .await
                    .map(|t| t.generation)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache.invalidate(0).await; // a stale generation changes nothing
        let t = cache.get(|| async { panic!("must not fetch") }).await.unwrap();
        cache.invalidate(t.generation).await;
        let t = cache.get(|| async { Ok((SecretString::from("t2"), Duration::from_secs(60))) }).await.unwrap();
        assert_eq!(t.generation, 2);
    }

    #[test]
    fn expires_in_accepts_numbers_and_numeric_strings() {
        assert_eq!(expires_in(Some(&serde_json::json!(3600))), Some(Duration::from_secs(3600)));
        assert_eq!(expires_in(Some(&serde_json::json!("3600"))), Some(Duration::from_secs(3600)));
        assert_eq!(expires_in(Some(&serde_json::json!("soon"))), None);
    }
}
