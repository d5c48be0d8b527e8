//! Helpers for the simulator's own tests: a simulator on a random port, a client signed in to one
//! of its providers, and per provider a [`Sample`] create, so the tests of what all providers
//! share (faults, `Idempotency-Key`, headers) drive each one the same way.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Faults, RateLimit, Simulator, SimulatorConfig};

/// The tenant SecureAuth paths name in tests (any name is accepted).
pub(crate) const SECUREAUTH_TENANT: &str = "acme";

/// A simulator on a random loopback port serving `provider` only.
pub(crate) async fn start_with(provider: &str, config: SimulatorConfig) -> Simulator {
    let config = SimulatorConfig { providers: vec![provider.to_owned()], ..config };
    Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.expect("simulator starts")
}

/// A simulator serving `provider` with the default settings, and a client signed in to it.
pub(crate) async fn start(provider: &str) -> (Simulator, Api) {
    start_signed_in(provider, SimulatorConfig::default()).await
}

/// Runs `test` on each provider in turn, each on a simulator of its own.
pub(crate) async fn for_each_provider(test: impl AsyncFn(&'static Sample, &Simulator, &Api)) {
    for sample in SAMPLES {
        let (sim, api) = start(sample.provider).await;
        test(sample, &sim, &api).await;
        sim.shutdown().await;
    }
}

/// A simulator serving `provider` only, and a client signed in to it.
pub(crate) async fn start_signed_in(provider: &str, config: SimulatorConfig) -> (Simulator, Api) {
    let sim = start_with(provider, config).await;
    let api = Api::sign_in(&sim, provider).await;
    (sim, api)
}

/// Settings with the tenant bucket at `per_second` and `burst`.
pub(crate) fn rate_limited(per_second: f64, burst: u32) -> SimulatorConfig {
    let faults = Faults { rate_limit: Some(RateLimit { per_second, burst }), ..Faults::default() };
    SimulatorConfig { faults, ..SimulatorConfig::default() }
}

/// Settings whose tokens expire `ttl` after they are issued.
pub(crate) fn token_ttl(ttl: Duration) -> SimulatorConfig {
    SimulatorConfig { token_ttl: ttl, ..SimulatorConfig::default() }
}

/// The HTTP client for the tests.
pub(crate) fn client() -> reqwest::Client {
    // The workspace builds reqwest with `rustls-no-provider`, and building any Client (even one
    // that only speaks plain http) needs a process-wide crypto provider: ring, as in orgprov. A
    // second install fails harmlessly, so every test can call this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client")
}

pub(crate) async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

/// What the shared tests need to know of one provider to drive its create.
pub(crate) struct Sample {
    pub(crate) provider: &'static str,
    /// The create route, under the provider's base URL.
    pub(crate) create_path: &'static str,
    /// A valid create of an organization called `name` (lowercase letters and digits).
    pub(crate) body: fn(&str) -> Value,
    /// A lookup route that finds nothing.
    pub(crate) missing_path: &'static str,
    /// The status of a successful create.
    pub(crate) created: u16,
    /// What creating the same organization again answers: the provider's uniqueness rule.
    pub(crate) again: u16,
    /// The status a late commit answers with while it stores later.
    pub(crate) late_commit: u16,
    /// Whether a scripted 429 names its delay in `Retry-After`.
    pub(crate) names_retry_after: bool,
}

pub(crate) const SAMPLES: &[Sample] = &[
    Sample {
        provider: "auth0",
        create_path: "/api/v2/organizations",
        body: |name| json!({ "name": name }),
        missing_path: "/api/v2/organizations/name/none",
        created: 201,
        again: 409,
        late_commit: 503,
        names_retry_after: true,
    },
    Sample {
        provider: "biot",
        create_path: "/organization/v1/organizations/templates/Clinic",
        body: |name| {
            json!({ "_name": name, "_primaryAdministrator": {
                "_name": { "firstName": "A", "lastName": "B" },
                "_email": format!("{name}@example.com"), "_employeeId": name } })
        },
        missing_path: "/organization/v1/organizations/none",
        created: 201,
        again: 409,
        late_commit: 504,
        names_retry_after: true,
    },
    Sample {
        provider: "logto",
        create_path: "/api/organizations",
        body: |name| json!({ "name": name }),
        missing_path: "/api/organizations/none",
        created: 201,
        // Names are not unique in Logto.
        again: 201,
        late_commit: 500,
        names_retry_after: true,
    },
    Sample {
        provider: "secureauth",
        create_path: "/api/system/acme/organizations",
        body: |name| json!({ "id": name, "name": name }),
        missing_path: "/api/system/acme/organizations/none",
        created: 201,
        again: 409,
        late_commit: 503,
        names_retry_after: true,
    },
    Sample {
        provider: "stytch",
        create_path: "/v1/b2b/organizations",
        body: |name| json!({ "organization_name": name, "organization_slug": name }),
        missing_path: "/v1/b2b/organizations/none",
        created: 200,
        // A taken slug is a 400 in Stytch.
        again: 400,
        late_commit: 503,
        // Stytch documents no rate-limit headers.
        names_retry_after: false,
    },
];

pub(crate) fn sample(provider: &str) -> &'static Sample {
    SAMPLES.iter().find(|s| s.provider == provider).expect("a sample for every provider")
}

/// How a test client proves who it is.
enum Credentials {
    Bearer(String),
    /// HTTP Basic with the simulator's client credentials (Stytch has no tokens).
    Basic,
}

/// A client signed in to one provider of a running simulator, the way the provider wants.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) sample: &'static Sample,
    credentials: Credentials,
}

impl Api {
    pub(crate) async fn sign_in(sim: &Simulator, provider: &str) -> Api {
        let base = sim.base_url(provider);
        let http = client();
        let credentials = match provider {
            "stytch" => Credentials::Basic,
            _ => Credentials::Bearer(token(&http, provider, &base).await),
        };
        Api { base, http, sample: sample(provider), credentials }
    }

    /// A request to `path` under the provider's base, with credentials.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.credentials {
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic => request.basic_auth("orgprov-sim", Some("sim-secret")),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path).send().await.expect("GET")
    }

    /// A create at the provider's create route.
    pub(crate) async fn create(&self, body: Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, self.sample.create_path).json(&body).send().await.expect("create")
    }

    /// The [`Sample`] create of an organization called `name`.
    pub(crate) async fn create_named(&self, name: &str) -> reqwest::Response {
        self.create((self.sample.body)(name)).await
    }

    /// The `Authorization` header value, for raw exchanges.
    pub(crate) fn authorization(&self) -> String {
        match &self.credentials {
            Credentials::Bearer(token) => format!("Bearer {token}"),
            Credentials::Basic => "Basic b3JncHJvdi1zaW06c2ltLXNlY3JldA==".to_owned(),
        }
    }
}

/// A fresh access token from the provider's token endpoint.
async fn token(http: &reqwest::Client, provider: &str, base: &str) -> String {
    let request = match provider {
        "auth0" => http.post(format!("{base}/oauth/token")).json(&json!({
            "grant_type": "client_credentials", "client_id": "orgprov-sim", "client_secret": "sim-secret",
            "audience": format!("{base}/api/v2/"),
        })),
        "biot" => http
            .post(format!("{base}/ums/v2/services/accessToken"))
            .json(&json!({ "id": "orgprov-sim", "secretKey": "sim-secret" })),
        "logto" => http.post(format!("{base}/oidc/token")).basic_auth("orgprov-sim", Some("sim-secret")).form(&[
            ("grant_type", "client_credentials"),
            ("resource", &format!("{base}/api")),
            ("scope", "all"),
        ]),
        "secureauth" => http.post(format!("{base}/{SECUREAUTH_TENANT}/system/oauth2/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "orgprov-sim"),
            ("client_secret", "sim-secret"),
            ("scope", "manage_organizations"),
        ]),
        other => panic!("{other} has no token endpoint"),
    };
    let response = request.send().await.expect("token request");
    assert_eq!(response.status(), 200, "{provider} token");
    let body = json_of(response).await;
    let token = body.get("access_token").or_else(|| body.get("accessToken"));
    token.and_then(Value::as_str).expect("an access token").to_owned()
}

/// Sends raw bytes and reads until the server closes (or 5 s pass), for assertions about
/// exactly what went over the wire. Blocking std I/O on a blocking thread keeps the test
/// independent of tokio's optional io-util feature.
pub(crate) async fn raw_exchange(addr: SocketAddr, request: String) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        stream.write_all(request.as_bytes()).expect("send request");
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                // A reset is as good as a close here: both end the exchange.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading raw response: {e}"),
            }
        }
        received
    })
    .await
    .expect("raw exchange task")
}
