//! Google OAuth access tokens for Vertex AI.
//!
//! Three sources, as [`VertexCredentials`] configures them:
//!
//! * a **service-account key**: an RS256-signed JWT (`iss` = the key's `client_email`, `scope`
//!   = cloud-platform, `aud` = the key's `token_uri`) exchanged at `token_uri` with the
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer` grant;
//! * the **metadata server** of GCE/GKE/Cloud Run:
//!   `GET {base}/computeMetadata/v1/instance/service-accounts/default/token` with
//!   `Metadata-Flavor: Google`;
//! * a **fixed token**.
//!
//! Fetched tokens are cached until shortly before they expire; when one must be refreshed,
//! one caller fetches it while the others wait for its result (no thundering herd). Tokens,
//! keys and assertions are never logged nor put in error messages.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use tokio::time::{timeout, Instant};

use super::http;
use super::{AdapterContext, VertexCredentials};
use crate::error::{ErrorKind, GatewayError};

/// The OAuth scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The OAuth grant type of the service-account flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's token endpoint, for keys that name none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Lifetime of the signed JWT (Google's maximum).
const JWT_LIFETIME_SECONDS: u64 = 3600;
/// A token is refreshed this long before it expires (or at half its life, if shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Assumed lifetime when the token endpoint does not say.
const DEFAULT_EXPIRES_IN: u64 = 3600;
/// Token endpoint error bodies longer than this are read for their start only.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// A token answer larger than this is an error (a token is a few KiB).
const MAX_TOKEN_BODY: usize = 1024 * 1024;
/// Token requests never wait longer than this.
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(30);

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The fields of a service-account key file that the flow needs.
#[derive(Deserialize)]
struct ServiceAccountKeyFile {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A parsed service-account key: who it is, where it trades JWTs for tokens, and its key.
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    key_id: Option<String>,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// Decodes a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, what Google issues) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`).
fn parse_private_key(pem: &str) -> Result<RsaKeyPair, String> {
    let pem = pem.trim();
    let (label, rest) = pem
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .ok_or("`private_key` is not a PEM key")?;
    let footer = format!("-----END {label}-----");
    let body = rest
        .split(footer.as_str())
        .next()
        .filter(|_| rest.contains(footer.as_str()))
        .ok_or("`private_key` is not a PEM key (no END line)")?;
    let der: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .map_err(|_| "`private_key` is not valid base64 PEM")?;
    match label {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
        _ => {
            return Err(format!(
                "`private_key` is a `{label}`, not an RSA private key"
            ))
        }
    }
    .map_err(|e| format!("`private_key` is not a usable RSA key: {e}"))
}

impl ServiceAccount {
    /// Parses a service-account key file (JSON text). Errors never quote the key.
    pub fn from_json(json: &str) -> Result<ServiceAccount, String> {
        let file: ServiceAccountKeyFile = serde_json::from_str(json).map_err(|e| {
            // serde's message may quote a value: keep only the position.
            format!(
                "the service-account key is not a valid key file (line {}, column {}: {})",
                e.line(),
                e.column(),
                match e.classify() {
                    serde_json::error::Category::Data => "missing or mistyped field",
                    _ => "not JSON",
                }
            )
        })?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "the credentials are of type `{kind}`, not `service_account`"
            ));
        }
        let token_uri = file
            .token_uri
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        if !token_uri.starts_with("https://") && !token_uri.starts_with("http://") {
            return Err(format!(
                "the service-account key's token_uri `{token_uri}` is not an http(s) URL"
            ));
        }
        Ok(ServiceAccount {
            key: parse_private_key(&file.private_key)?,
            client_email: file.client_email,
            token_uri,
            key_id: file.private_key_id.filter(|k| !k.is_empty()),
        })
    }

    /// The JWT header.
    pub fn jwt_header(&self) -> serde_json::Value {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        header
    }

    /// The JWT claims for an assertion issued at `now` (Unix seconds).
    pub fn jwt_claims(&self, now: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": self.client_email,
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + JWT_LIFETIME_SECONDS,
        })
    }

    /// The signed assertion `header.claims.signature` (base64url, RS256).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let signing_input = format!(
            "{}.{}",
            b64url(self.jwt_header().to_string().as_bytes()),
            b64url(self.jwt_claims(now).to_string().as_bytes())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the service-account JWT".to_string())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }

    /// The public key (PKCS#1 DER), to verify assertions in tests.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public().as_ref()
    }
}

/// Where tokens come from.
#[derive(Debug)]
enum Source {
    ServiceAccount(Box<ServiceAccount>),
    /// The metadata server's token URL.
    Metadata(String),
    Fixed(Arc<str>),
}

/// A token and when it must be refreshed.
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
}

/// What a token endpoint answers.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An OAuth error body: `{"error": "invalid_grant", "error_description": "…"}`.
#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Access tokens of one provider, cached and refreshed one caller at a time.
pub struct TokenSource {
    name: String,
    source: Source,
    http: http::Client,
    /// Longest wait for one token request.
    timeout: Duration,
    cached: Mutex<Option<Cached>>,
    /// Held by the one caller that refreshes.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::ServiceAccount(_) => "service_account",
            Source::Metadata(_) => "metadata_server",
            Source::Fixed(_) => "access_token",
        };
        f.debug_struct("TokenSource")
            .field("provider", &self.name)
            .field("source", &kind)
            .finish_non_exhaustive()
    }
}

/// When a token that lives `expires_in` seconds from `now` should be refreshed.
fn refresh_deadline(now: Instant, expires_in: u64) -> Instant {
    let life = Duration::from_secs(expires_in);
    now + life.saturating_sub(REFRESH_MARGIN.min(life / 2))
}

impl TokenSource {
    /// A token source for `credentials`. A service-account key is parsed now, so a broken
    /// key fails at startup (the message never quotes the key).
    pub fn new(
        name: &str,
        credentials: &VertexCredentials,
        http: http::Client,
        timeout: Duration,
    ) -> Result<TokenSource, String> {
        let source = match credentials {
            VertexCredentials::ServiceAccount(json) => Source::ServiceAccount(Box::new(
                ServiceAccount::from_json(json).map_err(|e| format!("provider `{name}`: {e}"))?,
            )),
            VertexCredentials::MetadataServer(base) => Source::Metadata(format!(
                "{}/computeMetadata/v1/instance/service-accounts/default/token",
                base.trim_end_matches('/')
            )),
            VertexCredentials::AccessToken(token) => Source::Fixed(Arc::from(token.as_str())),
        };
        Ok(TokenSource {
            name: name.to_string(),
            source,
            http,
            timeout,
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// The token source of one `vertex` provider, shared by every model family it serves
    /// (one cache, one refresh at a time). Token requests wait at most as long as the
    /// provider's first byte, and never more than 30 s.
    pub fn for_provider(
        ctx: &AdapterContext,
        credentials: &VertexCredentials,
    ) -> Result<Arc<TokenSource>, String> {
        let wait = ctx
            .timeouts
            .first_byte()
            .min(ctx.timeouts.total())
            .min(MAX_TOKEN_WAIT);
        let http = http::client(&ctx.name, &ctx.timeouts)?;
        TokenSource::new(&ctx.name, credentials, http, wait).map(Arc::new)
    }

    fn fresh(&self) -> Option<Arc<str>> {
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| Arc::clone(&c.token))
    }

    /// A valid access token: the cached one, or a new one fetched by exactly one caller
    /// while the others wait for it.
    pub async fn token(&self) -> Result<Arc<str>, GatewayError> {
        if let Source::Fixed(token) = &self.source {
            return Ok(Arc::clone(token));
        }
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _refreshing = self.refresh.lock().await;
        // Whoever held the lock before us may have refreshed it already.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let (token, expires_in) = self.fetch().await?;
        let token: Arc<str> = Arc::from(token);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            token: Arc::clone(&token),
            refresh_at: refresh_deadline(Instant::now(), expires_in),
        });
        Ok(token)
    }

    /// Forgets `token` if it is the cached one (the API rejected it): the next call fetches
    /// a new one.
    pub fn invalidate(&self, token: &str) {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.as_ref().is_some_and(|c| &*c.token == token) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<(String, u64), GatewayError> {
        let (request, secret) = match &self.source {
            Source::ServiceAccount(account) => {
                let assertion = account
                    .assertion(unix_now())
                    .map_err(|e| self.auth_error(e))?;
                let request = self
                    .http
                    .post(&account.token_uri)
                    .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)]);
                (request, assertion)
            }
            Source::Metadata(url) => (
                self.http.get(url).header("Metadata-Flavor", "Google"),
                String::new(),
            ),
            Source::Fixed(token) => return Ok((token.to_string(), DEFAULT_EXPIRES_IN)),
        };
        let secrets = [secret.as_str()];
        let response = timeout(self.timeout, request.send())
            .await
            .map_err(|_| http::timeout_error(&self.name, "with an OAuth token", self.timeout))?
            .map_err(|e| {
                let mut err = http::transport_error(&self.name, e, &secrets);
                err.message = format!("{} (while fetching an OAuth token)", err.message);
                err
            })?;
        let status = response.status().as_u16();
        let success = (200..300).contains(&status);
        // An error answer is read for its start only: its status says what happened.
        let body = if success {
            futures::future::Either::Left(response.bytes(MAX_TOKEN_BODY))
        } else {
            futures::future::Either::Right(response.prefix(MAX_ERROR_BODY))
        };
        let bytes = timeout(self.timeout, body)
            .await
            .map_err(|_| http::timeout_error(&self.name, "with an OAuth token", self.timeout))?
            .map_err(|e| http::transport_error(&self.name, e, &secrets))?;
        if !success {
            let detail = serde_json::from_slice::<TokenError>(&bytes)
                .ok()
                .map(|e| {
                    let error = match e.error {
                        Some(serde_json::Value::String(s)) => s,
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    match e.error_description {
                        Some(d) if !error.is_empty() => format!("{error}: {d}"),
                        Some(d) => d,
                        None => error,
                    }
                })
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            let kind = match status {
                429 => ErrorKind::RateLimited,
                500..=599 => ErrorKind::UpstreamServer,
                _ => ErrorKind::UpstreamAuth,
            };
            return Err(GatewayError::new(
                kind,
                format!(
                    "provider `{}` could not get an OAuth token ({status}): {}",
                    self.name,
                    http::scrub(&detail, &secrets)
                ),
            )
            .with_upstream_status(status));
        }
        let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
            GatewayError::new(
                ErrorKind::UpstreamAuth,
                format!(
                    "provider `{}`: the token endpoint sent no access_token",
                    self.name
                ),
            )
        })?;
        if parsed.access_token.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::UpstreamAuth,
                format!(
                    "provider `{}`: the token endpoint sent an empty access_token",
                    self.name
                ),
            ));
        }
        Ok((
            parsed.access_token,
            parsed.expires_in.unwrap_or(DEFAULT_EXPIRES_IN),
        ))
    }

    fn auth_error(&self, message: String) -> GatewayError {
        GatewayError::new(
            ErrorKind::UpstreamAuth,
            format!("provider `{}`: {message}", self.name),
        )
    }
}

/// Where a Vertex AI provider's models answer — `{base}/projects/{project}/locations/{region}`
/// (base ends in `/v1`) — and its OAuth tokens, shared by its Gemini and Claude clients.
pub struct VertexEndpoint {
    pub base: String,
    project: String,
    region: String,
    pub tokens: Arc<TokenSource>,
}

impl VertexEndpoint {
    pub fn new(settings: &super::VertexSettings, tokens: Arc<TokenSource>) -> VertexEndpoint {
        VertexEndpoint {
            base: http::versioned_base(&settings.base_url, "v1"),
            project: settings.project.clone(),
            region: settings.region.clone(),
            tokens,
        }
    }

    /// `{base}/projects/{project}/locations/{region}`, each segment encoded.
    pub fn location(&self) -> String {
        format!(
            "{}/projects/{}/locations/{}",
            self.base,
            http::encode_segment(&self.project),
            http::encode_segment(&self.region)
        )
    }
}

impl std::fmt::Debug for VertexEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vertex")
            .field("base", &self.base)
            .field("project", &self.project)
            .field("region", &self.region)
            .field("tokens", &self.tokens)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_client() -> http::Client {
        http::Client::new(Default::default()).unwrap()
    }

    const TEST_KEY: &str = include_str!("../../../tests/fixtures/gcp-test-key.pem");

    fn key_json(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "flowgate-test",
            "private_key_id": "0123456789abcdef",
            "private_key": TEST_KEY,
            "client_email": "flowgate@flowgate-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn decode_segment(segment: &str) -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn jwt_claims_header_and_signature() {
        let account = ServiceAccount::from_json(&key_json("https://oauth2.example/token")).unwrap();
        let jwt = account.assertion(1_700_000_000).unwrap();
        let segments: Vec<&str> = jwt.split('.').collect();
        assert_eq!(segments.len(), 3);
        assert_eq!(
            decode_segment(segments[0]),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef"})
        );
        assert_eq!(
            decode_segment(segments[1]),
            serde_json::json!({
                "iss": "flowgate@flowgate-test.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
                "aud": "https://oauth2.example/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segments[2])
            .unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            account.public_key_der(),
        );
        let signed = format!("{}.{}", segments[0], segments[1]);
        public.verify(signed.as_bytes(), &signature).unwrap();
        assert!(public.verify(b"tampered", &signature).is_err());
    }

    #[test]
    fn bad_keys_fail_without_quoting_the_key() {
        let err = ServiceAccount::from_json("{\"private_key\": \"s3cr3t-material\"").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = ServiceAccount::from_json(
            &serde_json::json!({"client_email": "a@b", "private_key": "s3cr3t-material"})
                .to_string(),
        )
        .unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        let broken = TEST_KEY.replace("MII", "AAA");
        let err = ServiceAccount::from_json(
            &serde_json::json!({"client_email": "a@b", "private_key": broken}).to_string(),
        )
        .unwrap_err();
        assert!(err.contains("not a usable RSA key"), "{err}");
        let err = ServiceAccount::from_json(
            &serde_json::json!({"type": "authorized_user", "client_email": "a@b", "private_key": TEST_KEY}).to_string(),
        )
        .unwrap_err();
        assert!(err.contains("authorized_user"), "{err}");
        // No token_uri: Google's.
        let account = ServiceAccount::from_json(
            &serde_json::json!({"client_email": "a@b", "private_key": TEST_KEY}).to_string(),
        )
        .unwrap();
        assert_eq!(account.token_uri, DEFAULT_TOKEN_URI);
        assert_eq!(account.jwt_header().get("kid"), None);
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        let now = Instant::now();
        assert_eq!(refresh_deadline(now, 3599), now + Duration::from_secs(3299));
        // Short-lived tokens are refreshed at half their life.
        assert_eq!(refresh_deadline(now, 60), now + Duration::from_secs(30));
        assert_eq!(refresh_deadline(now, 0), now);
    }

    #[actix_rt::test]
    async fn fixed_tokens_need_no_request_and_debug_hides_them() {
        let source = TokenSource::new(
            "vertex",
            &VertexCredentials::AccessToken("ya29.fixed-token".into()),
            test_client(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(&*source.token().await.unwrap(), "ya29.fixed-token");
        assert!(!format!("{source:?}").contains("ya29"));
        let err = TokenSource::new(
            "vertex",
            &VertexCredentials::ServiceAccount("not json".into()),
            test_client(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.starts_with("provider `vertex`:"), "{err}");
    }

    #[actix_rt::test]
    async fn concurrent_callers_share_one_token_request() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let source = TokenSource::new(
            "vertex",
            &VertexCredentials::ServiceAccount(key_json(&format!("{}/token", mock.url()))),
            test_client(),
            Duration::from_secs(10),
        )
        .unwrap();
        let tokens = futures::future::join_all((0..16).map(|_| source.token())).await;
        let first = tokens[0].as_ref().unwrap().clone();
        assert!(first.starts_with("mock-token-"), "{first}");
        assert!(tokens.iter().all(|t| t.as_ref().unwrap() == &first));
        assert_eq!(mock.count(), 1, "one exchange for 16 concurrent callers");
        // Cached afterwards.
        assert_eq!(source.token().await.unwrap(), first);
        assert_eq!(mock.count(), 1);
        let sent = &mock.requests()[0];
        assert_eq!(sent.path, "/token");
        assert_eq!(
            sent.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        // A rejected token is forgotten; another token is not.
        source.invalidate("some-other-token");
        assert_eq!(source.token().await.unwrap(), first);
        source.invalidate(&first);
        let second = source.token().await.unwrap();
        assert_ne!(second, first);
        assert_eq!(mock.count(), 2);

        let metadata = TokenSource::new(
            "vertex",
            &VertexCredentials::MetadataServer(format!("{}/", mock.url())),
            test_client(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(metadata.token().await.unwrap().starts_with("mock-token-"));
        let sent = mock.requests().pop().unwrap();
        assert_eq!(
            sent.path,
            "/computeMetadata/v1/instance/service-accounts/default/token"
        );
        assert_eq!(sent.headers["metadata-flavor"], "Google");
    }

    #[actix_rt::test]
    async fn refused_exchanges_are_auth_errors_without_the_assertion() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let key = serde_json::json!({
            "type": "service_account",
            "private_key": TEST_KEY,
            "client_email": "",
            "token_uri": format!("{}/token", mock.url()),
        })
        .to_string();
        let source = TokenSource::new(
            "vertex",
            &VertexCredentials::ServiceAccount(key),
            test_client(),
            Duration::from_secs(10),
        )
        .unwrap();
        let err = source.token().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert_eq!(err.upstream_status, Some(400));
        assert!(err.message.contains("invalid_grant"), "{}", err.message);
        assert!(!err.message.contains("eyJ"), "{}", err.message);
    }

    #[actix_rt::test]
    async fn unreachable_token_endpoints_are_connection_errors() {
        let source = TokenSource::new(
            "vertex",
            &VertexCredentials::ServiceAccount(key_json("http://127.0.0.1:9/token")),
            test_client(),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = source.token().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamConnection, "{}", err.message);
        assert!(err.message.contains("OAuth token"), "{}", err.message);
    }
}
