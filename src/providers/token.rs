//! Access tokens for the providers that call their API with a bearer token: how a token is
//! obtained ([`Grant`]; [`ClientCredentials`] is the OAuth grant three of them use), the
//! per-target cache, and sending a call with the token ([`BearerAuth`]).
//!
//! One cache per target. Refresh is single-flight: the first caller that finds the token
//! missing or near expiry fetches a new one while holding the lock, and everyone else waits
//! for that result, so fifty concurrent 401s cause one token request. A token is refreshed
//! ahead of its expiry by a tenth of its lifetime (at most a minute).

use std::future::Future;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::upstream::{Answers, CreateRequest, create_request};
use super::{CallError, ErrorClass, Target};
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
}

/// How a provider obtains an access token: the token and its lifetime.
pub trait Grant: Send + Sync {
    fn fetch(&self, delivery: &Delivery) -> impl Future<Output = Result<(SecretString, Duration), CallError>> + Send;
}

/// Calls an upstream API with bearer tokens from `G`, cached for the target.
pub struct BearerAuth<G> {
    grant: G,
    tokens: TokenCache,
}

impl<G: Grant> BearerAuth<G> {
    pub fn new(grant: G) -> BearerAuth<G> {
        BearerAuth { grant, tokens: TokenCache::default() }
    }

    pub fn grant(&self) -> &G {
        &self.grant
    }

    /// Sends `build()` with `Authorization: Bearer <token>` through `delivery`; a 401
    /// invalidates the token, fetches a new one (single-flight) and resends once. A second
    /// 401 is returned to the caller, which maps it to `unauthorized`.
    pub async fn send(
        &self,
        delivery: &Delivery,
        build: impl Fn() -> reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Response, CallError> {
        let mut refreshed = false;
        loop {
            // The slot first, the token after: a token taken before a long wait for the rate
            // limit could expire on the way and cost a 401 and a second call.
            delivery.admit().await.map_err(|e| CallError::from_send(e, what))?;
            let token = self.tokens.get(|| self.grant.fetch(delivery)).await?;
            let request = bearer(build(), &token.secret);
            let response = delivery.send_admitted(request).await.map_err(|e| CallError::from_send(e, what))?;
            if response.status == 401 && !refreshed {
                self.tokens.invalidate(token.generation).await;
                refreshed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends a create: the call `request` describes ([`create_request`]) with the bearer token.
    pub async fn create(&self, delivery: &Delivery, request: &CreateRequest) -> Result<Response, CallError> {
        self.send(delivery, || create_request(delivery, request), "create organization").await
    }

    /// Sends a lookup, `GET url` with `query`, with the bearer token. A lookup changes
    /// nothing upstream, so its failures are never ambiguous.
    pub async fn get(
        &self,
        delivery: &Delivery,
        url: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Response, CallError> {
        let build = || match query {
            [] => delivery.client().get(url),
            query => delivery.client().get(url).query(query),
        };
        self.send(delivery, build, what).await.map_err(CallError::for_lookup)
    }
}

/// `request` with `Authorization: Bearer <token>`, the value marked sensitive (reqwest's
/// `bearer_auth` does): `Debug` of the request shows no token and HTTP/2 never puts it in the
/// HPACK table.
pub fn bearer(request: reqwest::RequestBuilder, token: &SecretString) -> reqwest::RequestBuilder {
    request.bearer_auth(token.expose_secret())
}

/// Where a client-credentials grant puts the client's id and secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// In a JSON body, with the other parameters (Auth0).
    JsonBody,
    /// In the form body, with the other parameters (SecureAuth).
    FormBody,
    /// As HTTP Basic; the other parameters in the form body (Logto).
    Basic,
}

/// The OAuth client-credentials grant (RFC 6749 §4.4) at one token endpoint. The answer is
/// `access_token` and `expires_in` (a number or a numeric string; an hour when absent).
/// Token requests do not count toward the target's rate limit.
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub auth: ClientAuth,
    /// The grant's other parameters: `audience` (Auth0), `scope` (SecureAuth), `resource`
    /// and `scope` (Logto).
    pub params: Vec<(&'static str, String)>,
    /// How the token endpoint's error bodies read.
    pub answers: &'static Answers,
    /// Whether OAuth's `invalid_scope` error means the client lacks a permission
    /// (`forbidden`) rather than that its credentials are refused (`unauthorized`).
    pub invalid_scope_is_forbidden: bool,
}

impl ClientCredentials {
    /// The grant of `target`'s client at the configured `token_url`, else at `default_path`
    /// under the target's base URL.
    pub fn new(
        target: &Target,
        token_url: Option<&str>,
        default_path: &str,
        auth: ClientAuth,
        answers: &'static Answers,
    ) -> ClientCredentials {
        ClientCredentials {
            token_url: token_url.map_or_else(|| format!("{}{default_path}", target.base_url), str::to_owned),
            client_id: target.client_id.clone(),
            client_secret: target.client_secret.clone(),
            auth,
            params: Vec::new(),
            answers,
            invalid_scope_is_forbidden: false,
        }
    }

    /// Adds a parameter of the grant.
    pub fn param(mut self, name: &'static str, value: impl Into<String>) -> ClientCredentials {
        self.params.push((name, value.into()));
        self
    }
}

impl Grant for ClientCredentials {
    async fn fetch(&self, delivery: &Delivery) -> Result<(SecretString, Duration), CallError> {
        let secret = self.client_secret.expose_secret();
        let mut pairs = vec![("grant_type", "client_credentials")];
        if self.auth != ClientAuth::Basic {
            pairs.extend([("client_id", self.client_id.as_str()), ("client_secret", secret)]);
        }
        pairs.extend(self.params.iter().map(|(k, v)| (*k, v.as_str())));
        let request = delivery.client().post(&self.token_url);
        let request = match self.auth {
            ClientAuth::JsonBody => {
                request.json(&pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect::<Map<_, _>>())
            }
            ClientAuth::FormBody => request.form(&pairs),
            ClientAuth::Basic => request.basic_auth(&self.client_id, Some(secret)).form(&pairs),
        };
        let response = delivery
            .send_unlimited(request)
            .await
            .map_err(|e| CallError::from_send(e, "token request").for_lookup())?;
        if response.status != 200 {
            let error = response.json().and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
            let invalid_scope = self.invalid_scope_is_forbidden && error.as_deref() == Some("invalid_scope");
            let message = format!(
                "{} token endpoint answered {}: {}",
                self.answers.upstream,
                response.status,
                self.answers.error_text(&response)
            );
            return Err(CallError::token_refused(&response, message, response.status == 403 || invalid_scope));
        }
        response
            .json()
            .as_ref()
            .and_then(access_token)
            .ok_or_else(|| CallError::new(ErrorClass::Retryable, Some(200), "token response has no access_token"))
    }
}

/// Reads an OAuth token answer: `access_token` and `expires_in`, which some providers send as
/// a number and others as a numeric string (an hour when absent).
pub fn access_token(v: &Value) -> Option<(SecretString, Duration)> {
    let token = v.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty())?;
    let lifetime = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        Some(Value::String(s)) => s.trim().parse().ok().map(Duration::from_secs),
        _ => None,
    };
    Some((SecretString::from(token.to_owned()), lifetime.unwrap_or(Duration::from_secs(3600))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn credentials_in_authorization_headers_are_sensitive() {
        crate::install_crypto_provider();
        let client = reqwest::Client::new();
        let token = SecretString::from("t0ken".to_owned());
        let sent = bearer(client.get("http://x.example/"), &token).build().unwrap();
        let header = &sent.headers()[reqwest::header::AUTHORIZATION];
        assert!(header.is_sensitive());
        assert!(!format!("{sent:?}").contains("t0ken"));
        // The client-credentials grant's Basic header (Logto, SecureAuth) and Stytch's use
        // reqwest's basic_auth, which marks it the same way.
        let basic = client.get("http://x.example/").basic_auth("id", Some("s3cret")).build().unwrap();
        assert!(basic.headers()[reqwest::header::AUTHORIZATION].is_sensitive());
    }

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
    fn expires_in_is_a_number_or_a_numeric_string_and_an_hour_when_unreadable() {
        let lifetime = |v: Value| access_token(&v).map(|(_, lifetime)| lifetime);
        assert_eq!(lifetime(json!({"access_token": "t", "expires_in": 60})), Some(Duration::from_secs(60)));
        assert_eq!(lifetime(json!({"access_token": "t", "expires_in": "60"})), Some(Duration::from_secs(60)));
        assert_eq!(lifetime(json!({"access_token": "t", "expires_in": "soon"})), Some(Duration::from_secs(3600)));
        assert_eq!(lifetime(json!({"access_token": "t"})), Some(Duration::from_secs(3600)));
        assert_eq!(lifetime(json!({"access_token": "", "expires_in": 60})), None);
        assert_eq!(lifetime(json!({"expires_in": 60})), None);
    }

    const ANSWERS: Answers =
        Answers { upstream: "Upstream", created_id: "/id", code: None, message: &["error"], details: &[] };

    /// Serves one token endpoint on a local port; returns its URL and what it received
    /// (authorization header, content type, body).
    async fn token_endpoint(status: u16, answer: &'static str) -> (String, Arc<std::sync::Mutex<Vec<[String; 3]>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let record = record.clone();
            async move {
                let (parts, body) = request.into_parts();
                let header =
                    |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let (authorization, content_type) = (header("authorization"), header("content-type"));
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                record.lock().unwrap().push([authorization, content_type, String::from_utf8_lossy(&body).into()]);
                axum::response::Response::builder().status(status).body(axum::body::Body::from(answer)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    async fn grant(auth: ClientAuth, status: u16, answer: &'static str) -> (Result<Duration, CallError>, [String; 3]) {
        let (url, seen) = token_endpoint(status, answer).await;
        let target = Target::for_tests(crate::providers::auth0::Settings::default().into());
        let grant = ClientCredentials::new(&target, Some(&url), "/unused", auth, &ANSWERS).param("scope", "all");
        let lifetime = grant.fetch(&Delivery::unlimited(&target)).await.map(|(_, lifetime)| lifetime);
        let seen = seen.lock().unwrap().pop().expect("one token request");
        (lifetime, seen)
    }

    #[tokio::test]
    async fn client_credentials_go_where_each_provider_sends_them() {
        let ok = r#"{"access_token":"t","expires_in":60}"#;
        let (lifetime, [authorization, content_type, body]) = grant(ClientAuth::JsonBody, 200, ok).await;
        assert_eq!(lifetime.unwrap(), Duration::from_secs(60));
        assert_eq!((authorization.as_str(), content_type.as_str()), ("", "application/json"));
        let body: Value = serde_json::from_str(&body).unwrap();
        let expected =
            json!({"grant_type": "client_credentials", "client_id": "c", "client_secret": "s", "scope": "all"});
        assert_eq!(body, expected);

        let (_, [authorization, content_type, body]) = grant(ClientAuth::FormBody, 200, ok).await;
        assert_eq!((authorization.as_str(), content_type.as_str()), ("", "application/x-www-form-urlencoded"));
        assert_eq!(body, "grant_type=client_credentials&client_id=c&client_secret=s&scope=all");

        let (_, [authorization, _, body]) = grant(ClientAuth::Basic, 200, ok).await;
        assert_eq!(authorization, "Basic Yzpz", "c:s");
        assert_eq!(body, "grant_type=client_credentials&scope=all");
    }

    #[tokio::test]
    async fn a_refused_grant_is_final_and_names_the_upstream() {
        let (lifetime, _) = grant(ClientAuth::FormBody, 400, r#"{"error":"invalid_client"}"#).await;
        let e = lifetime.unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent(crate::contract::ErrorCode::Unauthorized));
        assert_eq!(e.message, "Upstream token endpoint answered 400: invalid_client");
        let (lifetime, _) = grant(ClientAuth::FormBody, 200, r#"{"expires_in":60}"#).await;
        assert_eq!(lifetime.unwrap_err().class, ErrorClass::Retryable);
        let (lifetime, _) = grant(ClientAuth::FormBody, 503, "busy").await;
        assert_eq!(lifetime.unwrap_err().class, ErrorClass::Retryable, "a token request creates nothing");
    }
}
