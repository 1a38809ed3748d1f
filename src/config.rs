//! Configuration: the TOML file is parsed into raw structs (unknown keys rejected, with the path
//! of the bad key), `${ENV_VAR}` references are interpolated, and the result is validated and
//! compiled once into the runtime config the actors use. A bad config fails at start.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_actors::breaker::BreakerSettings;
use flowgate_actors::cache::CacheSettings;
use flowgate_actors::catalog::{
    Catalog, Fallbacks, LongContextPrices, ModelEntry, Prices, ProviderOffer, Supports,
};
use flowgate_actors::engine::HedgingPolicy;
use flowgate_actors::keys::redis::{OnUnavailable, RedisSettings};
use flowgate_actors::keys::Limits as KeyLimits;
use flowgate_actors::provider::media::MediaSettings;
use flowgate_actors::provider::{
    AnthropicSettings, AzureSettings, BedrockSettings, GeminiSettings, MockBehaviour, MockSettings,
    OpenAiFlavor, OpenAiSettings, ProviderKind, ProviderSettings, Timeouts, VertexCredentials,
    VertexSettings,
};
use flowgate_actors::recorder::retention::RetentionPolicy;
use flowgate_actors::retry::RetryPolicy;
use flowgate_actors::router::Strategy;
use flowgate_actors::storage::postgres::PostgresSettings;
use flowgate_actors::storage::Backend;
use flowgate_actors::supervisor::GatewayConfig;
use flowgate_actors::templates::Limits;
use serde::Deserialize;

/// The shipped model catalog, compiled into the binary so it is always there.
const SHIPPED_CATALOG: &str = include_str!("../config/catalog.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    recorder: RawRecorder,
    #[serde(default)]
    storage: RawStorage,
    /// Limits and budgets counted across instances (absent: each instance counts alone).
    #[serde(default)]
    redis: Option<RawRedis>,
    #[serde(default)]
    media: RawMedia,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    ops: RawOps,
    /// Retries of transient upstream failures (when no other provider or model is left).
    #[serde(default)]
    retries: RetryPolicy,
    /// Hedged requests for the agents that opt in.
    #[serde(default)]
    hedging: HedgingPolicy,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    data_dir: PathBuf,
    /// Base URL of the web UI in run links; defaults to `http://<listen>`.
    public_url: Option<String>,
    /// Largest accepted request body.
    max_body_bytes: usize,
    /// HTTP worker threads; defaults to the number of cores.
    workers: Option<usize>,
    /// Log filter (`info`, `warn`, `flowgate_actors=debug`, …); `FLOWGATE_LOG` or `RUST_LOG`
    /// win over it.
    log: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            data_dir: "data".into(),
            public_url: None,
            max_body_bytes: 32 * 1024 * 1024,
            workers: None,
            log: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    /// Keys of the `default` tenant.
    api_keys: Vec<String>,
    /// Other tenants: `[auth.tenants.<name>] api_keys = [...]`. Tenants never see each
    /// other's runs, versions, deployments or cache entries.
    tenants: BTreeMap<String, RawTenant>,
    /// The `default` tenant's limits and budgets (`rpm`, `tpm`, `max_parallel`, `budgets`).
    limits: Option<KeyLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTenant {
    api_keys: Vec<String>,
    /// The tenant's limits and budgets: every request of the tenant passes them, whichever
    /// key it uses.
    limits: Option<KeyLimits>,
}

/// Keys that may change deployments: `api_keys = ["${FLOWGATE_ADMIN_KEY}", { key = "…", label =
/// "ops" }]`. The label (or a digest prefix) is what deployment records show.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    api_keys: Vec<RawAdminKey>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAdminKey {
    Key(String),
    Labelled(RawLabelledKey),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelledKey {
    /// Absent when its `${VAR}` is unset: the key is then skipped.
    #[serde(default)]
    key: Option<String>,
    label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRecorder {
    /// Runs are on disk at most this long after they finish.
    flush_interval_ms: u64,
    /// Runs older than this many days are deleted; absent: kept forever.
    max_age_days: Option<u64>,
    /// The oldest runs are deleted while the stored runs take more than this many megabytes
    /// on disk; absent: no bound.
    max_disk_mb: Option<u64>,
}

impl Default for RawRecorder {
    fn default() -> Self {
        RawRecorder {
            flush_interval_ms: 200,
            max_age_days: None,
            max_disk_mb: None,
        }
    }
}

/// `[recorder]`'s retention, checked: a bound of zero would delete every run, one past the
/// range is a typo (a century of days, a pebibyte).
fn compile_retention(raw: &RawRecorder, source: &str) -> Result<RetentionPolicy, String> {
    let invalid =
        |key: &str, why: String| format!("{source}: invalid config at `recorder.{key}`: {why}");
    if let Some(days) = raw.max_age_days {
        if !(1..=36_500).contains(&days) {
            return Err(invalid(
                "max_age_days",
                format!("{days} is not between 1 and 36500 (100 years)"),
            ));
        }
    }
    if let Some(mb) = raw.max_disk_mb {
        if !(1..=1024 * 1024).contains(&mb) {
            return Err(invalid(
                "max_disk_mb",
                format!("{mb} is not between 1 and 1048576 (1 TiB)"),
            ));
        }
    }
    let flush_interval = Duration::from_millis(raw.flush_interval_ms.max(1));
    Ok(RetentionPolicy {
        max_age: raw
            .max_age_days
            .map(|days| Duration::from_secs(days * 24 * 3600)),
        max_bytes: raw.max_disk_mb.map(|mb| mb * 1024 * 1024),
        protect: RetentionPolicy::protect_for(flush_interval),
    })
}

/// Where the gateway keeps runs, agents, feedback, shares and cached answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    backend: RawBackend,
    /// `postgres://user:password@host:port/database` (usually `${DATABASE_URL}`).
    url: Option<String>,
    /// Connections each instance keeps open at most.
    pool_size: usize,
    /// The schema of flowgate's tables (created if missing); default: the server's
    /// `search_path` (usually `public`).
    schema: Option<String>,
    /// The most megabytes of runs kept in the local spool (in `server.data_dir`) while
    /// PostgreSQL is unreachable; past it runs are refused loudly and `/readyz` answers 503.
    spool_max_mb: u64,
    /// The most megabytes of sled's pages kept in memory (sled backend).
    sled_cache_mb: u64,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            backend: RawBackend::Sled,
            url: None,
            pool_size: 16,
            schema: None,
            spool_max_mb: 1024,
            sled_cache_mb: flowgate_actors::storage::sled::DEFAULT_CACHE_BYTES / (1024 * 1024),
        }
    }
}

/// `[redis]`: where keys' and tenants' limits are counted when several instances share them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    /// `redis://[user:password@]host:port[/db]` (usually `${REDIS_URL}`).
    url: Option<String>,
    #[serde(default = "default_redis_prefix")]
    key_prefix: String,
    /// A call to Redis that takes longer is a failure (see `on_unavailable`).
    #[serde(default = "default_redis_timeout")]
    timeout_ms: u64,
    /// A request's place in `max_parallel` lapses this long after its instance stopped
    /// renewing it (the instance died).
    #[serde(default = "default_redis_lease")]
    lease_seconds: u64,
    #[serde(default)]
    on_unavailable: RawOnUnavailable,
}

fn default_redis_prefix() -> String {
    "flowgate:".into()
}

fn default_redis_timeout() -> u64 {
    250
}

fn default_redis_lease() -> u64 {
    30
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOnUnavailable {
    #[default]
    Local,
    Refuse,
}

/// `[redis]`: a URL that parses, bounded times, a prefix of plain characters. Errors name the
/// key, never the URL's text (it may hold a password).
fn compile_redis(raw: Option<RawRedis>, source: &str) -> Result<Option<RedisSettings>, String> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let invalid =
        |key: &str, why: String| format!("{source}: invalid config at `redis.{key}`: {why}");
    let url = raw
        .url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("url", "required in [redis] (is REDIS_URL set?)".into()))?;
    RedisSettings::check_url(&url).map_err(|e| invalid("url", e))?;
    if !(1..=60_000).contains(&raw.timeout_ms) {
        return Err(invalid(
            "timeout_ms",
            format!("{} is not between 1 and 60000", raw.timeout_ms),
        ));
    }
    if !(3..=86_400).contains(&raw.lease_seconds) {
        return Err(invalid(
            "lease_seconds",
            format!("{} is not between 3 and 86400", raw.lease_seconds),
        ));
    }
    let prefix_ok = raw.key_prefix.len() <= 64
        && raw
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:{}".contains(&b));
    if !prefix_ok {
        return Err(invalid(
            "key_prefix",
            "at most 64 letters, digits and `-_.:{}`".into(),
        ));
    }
    Ok(Some(RedisSettings {
        url,
        key_prefix: raw.key_prefix,
        timeout: Duration::from_millis(raw.timeout_ms),
        lease: Duration::from_secs(raw.lease_seconds),
        on_unavailable: match raw.on_unavailable {
            RawOnUnavailable::Local => OnUnavailable::Local,
            RawOnUnavailable::Refuse => OnUnavailable::Refuse,
        },
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawBackend {
    Sled,
    Postgres,
}

/// Stored answers: how long they are served and how many bytes they may take.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    /// 0: answers are not stored (identical in-flight requests are still shared).
    ttl_seconds: u64,
    /// 0: answers are not stored.
    max_bytes: u64,
    /// Shards of the in-flight table; default: the number of workers.
    shards: Option<usize>,
}

impl Default for RawCache {
    fn default() -> Self {
        let d = CacheSettings::default();
        RawCache {
            ttl_seconds: d.ttl.as_secs(),
            max_bytes: d.max_bytes,
            shards: None,
        }
    }
}

/// How plans order a model's providers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    /// `ordered` (the catalog's order) or `fastest` (what routing learned: latency, failures).
    strategy: Strategy,
}

/// Bounds on what one request may ask for: past each, a clear 4xx.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    /// Largest `n` (choices per request).
    max_n: u32,
    /// Longest `model` string, in bytes.
    max_model_bytes: usize,
    /// Time a client has to send its whole request body.
    body_timeout_seconds: f64,
    /// Open client connections at most (all workers together); more wait in the backlog.
    max_connections: usize,
    /// Request body bytes held by all requests in flight together (MiB).
    max_inflight_body_mb: usize,
    /// Most inputs in one `/v1/embeddings` request.
    max_embedding_inputs: usize,
    /// Largest input of an embeddings request, in bytes (a token counts 4).
    max_embedding_input_bytes: usize,
    templates: RawTemplateLimits,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_n: 8,
            max_model_bytes: 256,
            body_timeout_seconds: 30.0,
            max_connections: 10_000,
            max_inflight_body_mb: 1024,
            // OpenAI's own bounds: 2,048 inputs of at most 8,192 tokens.
            max_embedding_inputs: 2048,
            max_embedding_input_bytes: 32 * 1024,
            templates: RawTemplateLimits::default(),
        }
    }
}

/// What rendering a request's templates may cost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTemplateLimits {
    /// Memory of a render worker process.
    memory_mb: u64,
    /// Wall-clock time of one request's rendering.
    timeout_seconds: f64,
    /// Instructions executed by every template of a request together.
    fuel: u64,
    max_template_bytes: usize,
    max_output_bytes: usize,
    /// Render worker processes at most.
    workers: usize,
}

impl Default for RawTemplateLimits {
    fn default() -> Self {
        let d = Limits::default();
        RawTemplateLimits {
            memory_mb: d.max_memory_bytes / (1024 * 1024),
            timeout_seconds: d.timeout.as_secs_f64(),
            fuel: d.fuel,
            max_template_bytes: d.max_template_bytes,
            max_output_bytes: d.max_output_bytes,
            workers: 2,
        }
    }
}

/// Who may read the operations endpoints (`/metrics`, `/readyz`, `/api/providers`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOps {
    /// Empty: anyone who reaches the port (the scraper's network). Else a bearer token from
    /// this list or an admin key. `/healthz` stays open for liveness probes.
    api_keys: Vec<String>,
}

/// How provider adapters download media (for providers that cannot fetch URLs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMedia {
    max_bytes: usize,
    /// Allow image/file URLs that resolve to private, loopback or link-local addresses.
    allow_private_networks: bool,
    timeout_seconds: f64,
}

impl Default for RawMedia {
    fn default() -> Self {
        let d = MediaSettings::default();
        RawMedia {
            max_bytes: d.max_bytes,
            allow_private_networks: d.allow_private_networks,
            timeout_seconds: d.timeout.as_secs_f64(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum RawProvider {
    Openai(RawOpenAi),
    Azure(RawAzure),
    Anthropic(RawAnthropic),
    Gemini(RawGemini),
    Vertex(RawVertex),
    Bedrock(RawBedrock),
    Mock(RawMock),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenAi {
    #[serde(default = "default_openai_url")]
    base_url: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Which OpenAI-compatible API (groq, mistral, …); detected from `base_url` if absent.
    #[serde(default)]
    flavor: Option<OpenAiFlavor>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

fn default_openai_url() -> String {
    "https://api.openai.com/v1".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    /// `https://<resource>.openai.azure.com`; unset: the provider is disabled.
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default = "default_azure_version")]
    api_version: String,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

fn default_azure_version() -> String {
    "2024-10-21".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnthropic {
    #[serde(default = "default_anthropic_url")]
    base_url: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default = "default_anthropic_version")]
    version: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

fn default_anthropic_url() -> String {
    "https://api.anthropic.com".into()
}

fn default_anthropic_version() -> String {
    "2023-06-01".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGemini {
    #[serde(default = "default_gemini_url")]
    base_url: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

fn default_gemini_url() -> String {
    "https://generativelanguage.googleapis.com".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVertex {
    /// Unset: the provider is disabled.
    #[serde(default)]
    project: Option<String>,
    #[serde(default = "default_vertex_region")]
    region: String,
    #[serde(default)]
    base_url: Option<String>,
    /// Path to a service-account key file.
    #[serde(default)]
    credentials_file: Option<PathBuf>,
    /// A service-account key, as JSON text.
    #[serde(default)]
    credentials_json: Option<String>,
    /// A fixed OAuth access token.
    #[serde(default)]
    access_token: Option<String>,
    /// The metadata server (used when no other credential is given).
    #[serde(default = "default_metadata_url")]
    metadata_url: String,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

fn default_bedrock_region() -> String {
    "us-east-1".into()
}

fn default_vertex_region() -> String {
    "us-central1".into()
}

fn default_metadata_url() -> String {
    "http://metadata.google.internal".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBedrock {
    #[serde(default = "default_bedrock_region")]
    region: String,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<String>,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMock {
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    chunk_delay_ms: u64,
    #[serde(default)]
    failure_rate: f64,
    #[serde(default)]
    failure_status: Option<u16>,
    /// Per-model behaviour, by provider model id.
    #[serde(default)]
    models: BTreeMap<String, MockBehaviour>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    breaker: BreakerSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    release_date: Option<String>,
    #[serde(default)]
    context_window: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    supports: Supports,
    providers: Vec<RawOffer>,
    #[serde(default)]
    fallback: Fallbacks,
    /// An embedding model: `{ dimensions = N, shortens = true|false }`.
    #[serde(default)]
    embedding: Option<flowgate_actors::catalog::EmbeddingSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffer {
    provider: String,
    model: String,
    input_per_mtok: f64,
    output_per_mtok: f64,
    #[serde(default)]
    cached_input_per_mtok: Option<f64>,
    #[serde(default)]
    cache_write_per_mtok: Option<f64>,
    #[serde(default)]
    long_context: Option<LongContextPrices>,
}

/// Who may call the gateway.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Keys of the `default` tenant. With no key at all (here or in `tenants`), any bearer
    /// token is accepted (loopback only).
    pub api_keys: Vec<String>,
    /// Other tenants and their keys.
    pub tenants: Vec<(String, Vec<String>)>,
    /// Tenants' limits and budgets (only the tenants that have some).
    pub tenant_limits: Vec<(String, KeyLimits)>,
}

/// One admin key.
#[derive(Debug, Clone)]
pub struct AdminKey {
    pub key: String,
    /// Who the key is, in deployment records.
    pub label: Option<String>,
}

/// Who may change deployments.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// Empty: nobody (deployment writes are refused).
    pub api_keys: Vec<AdminKey>,
}

/// The HTTP edge's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub workers: usize,
    /// Base URL of the web UI in run links; `None`: `http://<bound address>`.
    pub public_url: Option<String>,
    /// Log filter from the config.
    pub log: Option<String>,
}

/// Bounds on one request (see `[limits]`).
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_n: u32,
    pub max_model_bytes: usize,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_inflight_body_bytes: usize,
    /// Most inputs in one `/v1/embeddings` request.
    pub max_embedding_inputs: usize,
    /// Largest input of an embeddings request, in bytes (a token counts 4).
    pub max_embedding_input_bytes: usize,
    pub templates: Limits,
    pub template_workers: usize,
}

/// The validated, compiled configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: RequestLimits,
    /// Tokens that may read `/metrics`, `/readyz` and `/api/providers`; empty: anyone.
    pub ops_keys: Vec<String>,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub gateway: GatewayConfig,
    /// `[redis]`: limits counted across instances; `None`: in this process.
    pub redis: Option<RedisSettings>,
}

/// Replaces `${VAR}` in every string. A string naming an unset (or empty) variable is removed,
/// so the field reads as absent; `unset` collects `path → variable` for the log and for
/// disabling providers whose key is missing.
fn interpolate(value: &mut toml::Value, path: &str, unset: &mut BTreeMap<String, String>) -> bool {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    out.push_str(&rest[start..]);
                    rest = "";
                    break;
                };
                let name = &rest[start + 2..start + end];
                match std::env::var(name) {
                    Ok(v) if !v.is_empty() => out.push_str(&v),
                    _ => {
                        unset.insert(path.to_string(), name.to_string());
                        return false;
                    }
                }
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
            true
        }
        toml::Value::Table(table) => {
            let keys: Vec<String> = table.keys().cloned().collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let keep = table
                    .get_mut(&key)
                    .is_some_and(|v| interpolate(v, &child, unset));
                if !keep {
                    table.remove(&key);
                }
            }
            true
        }
        toml::Value::Array(items) => {
            let mut index = 0;
            items.retain_mut(|item| {
                let keep = interpolate(item, &format!("{path}[{index}]"), unset);
                index += 1;
                keep
            });
            true
        }
        _ => true,
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: toml::Value, source: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let where_ = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        format!("{source}: invalid config{where_}: {}", e.inner())
    })
}

/// `[storage]`: sled needs nothing; PostgreSQL needs a URL that parses, a pool size and, if
/// given, a plain schema name. Errors name the key, never the URL's text (it may hold a
/// password).
fn compile_storage(raw: RawStorage, source: &str) -> Result<Backend, String> {
    let invalid =
        |key: &str, why: String| format!("{source}: invalid config at `storage.{key}`: {why}");
    match raw.backend {
        RawBackend::Sled => Ok(Backend::Sled),
        RawBackend::Postgres => {
            let url = raw.url.filter(|u| !u.is_empty()).ok_or_else(|| {
                invalid(
                    "url",
                    "required with backend = \"postgres\" (is DATABASE_URL set?)".into(),
                )
            })?;
            if raw.pool_size == 0 || raw.pool_size > 1000 {
                return Err(invalid(
                    "pool_size",
                    format!("{} is not between 1 and 1000", raw.pool_size),
                ));
            }
            if let Some(schema) = &raw.schema {
                PostgresSettings::new("postgres://localhost", 1, Some(schema.clone()))
                    .map_err(|e| invalid("schema", e))?;
            }
            if raw.spool_max_mb == 0 || raw.spool_max_mb > 1024 * 1024 {
                return Err(invalid(
                    "spool_max_mb",
                    format!("{} is not between 1 and 1048576 (1 TiB)", raw.spool_max_mb),
                ));
            }
            let mut settings = PostgresSettings::new(&url, raw.pool_size, raw.schema)
                .map_err(|e| invalid("url", e))?;
            settings.spool_max_bytes = raw.spool_max_mb * 1024 * 1024;
            Ok(Backend::Postgres(Box::new(settings)))
        }
    }
}

fn compile_model(id: &str, raw: RawModel) -> ModelEntry {
    ModelEntry {
        id: id.to_string(),
        display_name: raw.display_name.unwrap_or_else(|| id.to_string()),
        aliases: raw.aliases,
        context_window: raw.context_window,
        max_output_tokens: raw.max_output_tokens,
        release_date: raw.release_date,
        supports: raw.supports,
        fallbacks: raw.fallback,
        embedding: raw.embedding,
        providers: raw
            .providers
            .into_iter()
            .map(|o| ProviderOffer {
                provider: o.provider,
                model: o.model,
                prices: Prices {
                    input_per_mtok: o.input_per_mtok,
                    output_per_mtok: o.output_per_mtok,
                    cached_input_per_mtok: o.cached_input_per_mtok,
                    cache_write_per_mtok: o.cache_write_per_mtok,
                    long_context: o.long_context,
                },
            })
            .collect(),
    }
}

/// Admin keys: unset ones skipped, none shared with a tenant key (an admin key must never work
/// as a client key, nor the reverse), labels unique.
fn compile_admin(
    raw: RawAdmin,
    client_keys: &[&String],
    source: &str,
) -> Result<AdminConfig, String> {
    let mut keys: Vec<AdminKey> = Vec::new();
    for (i, raw_key) in raw.api_keys.into_iter().enumerate() {
        let path = format!("admin.api_keys[{i}]");
        let (key, label) = match raw_key {
            RawAdminKey::Key(key) => (Some(key), None),
            RawAdminKey::Labelled(l) => (l.key, Some(l.label)),
        };
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            continue;
        };
        if let Some(label) = &label {
            if label.trim().is_empty() {
                return Err(format!(
                    "{source}: invalid config at `{path}.label`: must not be empty"
                ));
            }
            if keys.iter().any(|k| k.label.as_ref() == Some(label)) {
                return Err(format!(
                    "{source}: invalid config at `{path}.label`: `{label}` names another key too"
                ));
            }
        }
        if client_keys.contains(&&key) {
            return Err(format!(
                "{source}: invalid config at `{path}`: an admin key must not also be a client \
                 key of `auth`"
            ));
        }
        if keys.iter().any(|k| k.key == key) {
            return Err(format!(
                "{source}: invalid config at `{path}`: the same key is listed twice"
            ));
        }
        keys.push(AdminKey { key, label });
    }
    Ok(AdminConfig { api_keys: keys })
}

fn compile_limits(raw: &RawLimits, source: &str) -> Result<RequestLimits, String> {
    let positive = |key: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{source}: invalid config at `limits.{key}`: must be positive"
            ))
        }
    };
    let seconds = |key: &str, value: f64| {
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("{source}: invalid config at `limits.{key}`: must be a positive number of seconds")
            })
    };
    let t = &raw.templates;
    positive("max_n", raw.max_n > 0)?;
    positive("max_model_bytes", raw.max_model_bytes > 0)?;
    positive("max_connections", raw.max_connections > 0)?;
    positive("max_inflight_body_mb", raw.max_inflight_body_mb > 0)?;
    positive("max_embedding_inputs", raw.max_embedding_inputs > 0)?;
    positive(
        "max_embedding_input_bytes",
        raw.max_embedding_input_bytes > 0,
    )?;
    positive("templates.fuel", t.fuel > 0)?;
    positive("templates.max_template_bytes", t.max_template_bytes > 0)?;
    positive("templates.max_output_bytes", t.max_output_bytes > 0)?;
    positive("templates.workers", t.workers > 0)?;
    if t.memory_mb < 64 {
        return Err(format!(
            "{source}: invalid config at `limits.templates.memory_mb`: at least 64 (a worker \
             process needs some to start)"
        ));
    }
    Ok(RequestLimits {
        max_n: raw.max_n,
        max_model_bytes: raw.max_model_bytes,
        body_timeout: seconds("body_timeout_seconds", raw.body_timeout_seconds)?,
        max_connections: raw.max_connections,
        max_inflight_body_bytes: raw.max_inflight_body_mb.saturating_mul(1024 * 1024),
        max_embedding_inputs: raw.max_embedding_inputs,
        max_embedding_input_bytes: raw.max_embedding_input_bytes,
        templates: Limits {
            max_template_bytes: t.max_template_bytes,
            max_output_bytes: t.max_output_bytes,
            fuel: t.fuel,
            max_memory_bytes: t.memory_mb * 1024 * 1024,
            timeout: seconds("templates.timeout_seconds", t.timeout_seconds)?,
            ..Limits::default()
        },
        template_workers: t.workers,
    })
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

impl Config {
    /// Reads, interpolates, validates and compiles the config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config `{}`: {e}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Compiles config text. A relative `data_dir` is relative to the working directory.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, String> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| format!("{source}: not valid TOML: {e}"))?;
        let mut unset = BTreeMap::new();
        interpolate(&mut value, "", &mut unset);
        for (path, var) in &unset {
            tracing::info!(key = %path, variable = %var, "config: environment variable unset");
        }
        let raw: RawConfig = parse(value, source)?;

        let shipped: toml::Value = toml::from_str(SHIPPED_CATALOG)
            .map_err(|e| format!("shipped catalog: not valid TOML: {e}"))?;
        let shipped: RawCatalog = parse(shipped, "config/catalog.toml")?;

        // Server.
        let listen: SocketAddr = raw.server.listen.parse().map_err(|e| {
            format!(
                "{source}: invalid config at `server.listen`: `{}` is not an address: {e}",
                raw.server.listen
            )
        })?;
        let api_keys: Vec<String> = raw
            .auth
            .api_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        let mut tenants = Vec::new();
        let mut tenant_limits = Vec::new();
        let mut check_limits = |at: String, name: &str, limits: Option<KeyLimits>| {
            let Some(limits) = limits else {
                return Ok(());
            };
            flowgate_actors::keys::check_budgets(&limits.budgets)
                .map_err(|e| format!("{source}: invalid config at `{at}`: {}", e.message))?;
            if [
                limits.rpm.map(u64::from),
                limits.tpm,
                limits.max_parallel.map(u64::from),
            ]
            .contains(&Some(0))
            {
                return Err(format!(
                    "{source}: invalid config at `{at}`: a limit of 0 refuses everything; leave it out for none"
                ));
            }
            tenant_limits.push((name.to_string(), limits));
            Ok::<(), String>(())
        };
        check_limits("auth.limits".into(), "default", raw.auth.limits)?;
        for (name, tenant) in raw.auth.tenants {
            if !flowgate_actors::model_ref::is_slug(&name) || name == "default" {
                return Err(format!(
                    "{source}: invalid config at `auth.tenants.{name}`: tenant names are slugs other than `default`"
                ));
            }
            check_limits(format!("auth.tenants.{name}.limits"), &name, tenant.limits)?;
            let keys: Vec<String> = tenant
                .api_keys
                .into_iter()
                .filter(|k| !k.is_empty())
                .collect();
            tenants.push((name, keys));
        }
        let no_key = api_keys.is_empty() && tenants.iter().all(|(_, keys)| keys.is_empty());
        if no_key && !is_loopback(&listen) {
            return Err(format!(
                "{source}: refusing to listen on {listen} with no API key: anyone could use \
                 your providers. Set `auth.api_keys` (e.g. FLOWGATE_API_KEY) or listen on 127.0.0.1"
            ));
        }
        let client_keys: Vec<&String> = api_keys
            .iter()
            .chain(tenants.iter().flat_map(|(_, keys)| keys))
            .collect();
        let admin = compile_admin(raw.admin, &client_keys, source)?;
        if raw.server.max_body_bytes == 0 {
            return Err(format!(
                "{source}: invalid config at `server.max_body_bytes`: must be positive"
            ));
        }
        let workers = raw
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);

        // Providers.
        let mut providers = Vec::new();
        for (name, raw_provider) in raw.providers {
            let path = format!("providers.{name}");
            // A secret whose variable is unset disables the provider.
            let unset_secret = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| unset.get(&format!("{path}.{k}")))
                    .map(|var| format!("{var} is not set"))
            };
            let check_url = |key: &str, url: &str| {
                if url.starts_with("http://") || url.starts_with("https://") {
                    Ok(())
                } else {
                    Err(format!(
                        "{source}: invalid config at `{path}.{key}`: `{url}` is not an http(s) URL"
                    ))
                }
            };
            let provider =
                |kind, disabled_reason: Option<String>, timeouts, breaker| ProviderSettings {
                    name: name.clone(),
                    kind,
                    enabled: disabled_reason.is_none(),
                    disabled_reason,
                    timeouts,
                    breaker,
                };
            let settings = match raw_provider {
                RawProvider::Openai(o) => {
                    check_url("base_url", &o.base_url)?;
                    let flavor = o
                        .flavor
                        .unwrap_or_else(|| OpenAiFlavor::detect(&o.base_url));
                    provider(
                        ProviderKind::OpenAi(OpenAiSettings {
                            base_url: o.base_url,
                            api_key: o.api_key,
                            headers: o.headers,
                            flavor,
                        }),
                        unset_secret(&["api_key"]),
                        o.timeouts,
                        o.breaker,
                    )
                }
                RawProvider::Azure(a) => {
                    let endpoint = a.endpoint.unwrap_or_default();
                    let missing = endpoint
                        .is_empty()
                        .then(|| "no endpoint is set".to_string());
                    if missing.is_none() {
                        check_url("endpoint", &endpoint)?;
                    }
                    provider(
                        ProviderKind::Azure(AzureSettings {
                            endpoint,
                            api_key: a.api_key,
                            api_version: a.api_version,
                        }),
                        unset_secret(&["endpoint", "api_key"]).or(missing),
                        a.timeouts,
                        a.breaker,
                    )
                }
                RawProvider::Anthropic(a) => {
                    check_url("base_url", &a.base_url)?;
                    provider(
                        ProviderKind::Anthropic(AnthropicSettings {
                            base_url: a.base_url,
                            api_key: a.api_key,
                            version: a.version,
                            headers: a.headers,
                        }),
                        unset_secret(&["api_key"]),
                        a.timeouts,
                        a.breaker,
                    )
                }
                RawProvider::Gemini(g) => {
                    check_url("base_url", &g.base_url)?;
                    provider(
                        ProviderKind::Gemini(GeminiSettings {
                            base_url: g.base_url,
                            api_key: g.api_key,
                        }),
                        unset_secret(&["api_key"]),
                        g.timeouts,
                        g.breaker,
                    )
                }
                RawProvider::Vertex(v) => {
                    let base_url = v.base_url.clone().unwrap_or_else(|| {
                        if v.region == "global" {
                            "https://aiplatform.googleapis.com".to_string()
                        } else {
                            format!("https://{}-aiplatform.googleapis.com", v.region)
                        }
                    });
                    check_url("base_url", &base_url)?;
                    let mut disabled = unset_secret(&[
                        "project",
                        "credentials_file",
                        "credentials_json",
                        "access_token",
                    ])
                    .or_else(|| v.project.is_none().then(|| "no project is set".to_string()));
                    let credentials = if let Some(token) = v.access_token {
                        VertexCredentials::AccessToken(token)
                    } else if let Some(json) = v.credentials_json {
                        VertexCredentials::ServiceAccount(json)
                    } else if let Some(file) = v.credentials_file {
                        match std::fs::read_to_string(&file) {
                            Ok(json) => VertexCredentials::ServiceAccount(json),
                            Err(e) => {
                                disabled = Some(format!(
                                    "cannot read credentials_file `{}`: {e}",
                                    file.display()
                                ));
                                VertexCredentials::MetadataServer(v.metadata_url.clone())
                            }
                        }
                    } else {
                        VertexCredentials::MetadataServer(v.metadata_url.clone())
                    };
                    provider(
                        ProviderKind::Vertex(VertexSettings {
                            project: v.project.unwrap_or_default(),
                            region: v.region,
                            base_url,
                            credentials,
                        }),
                        disabled,
                        v.timeouts,
                        v.breaker,
                    )
                }
                RawProvider::Bedrock(b) => {
                    let base_url = b.base_url.clone().unwrap_or_else(|| {
                        format!("https://bedrock-runtime.{}.amazonaws.com", b.region)
                    });
                    check_url("base_url", &base_url)?;
                    let missing = (b.access_key_id.is_none() || b.secret_access_key.is_none())
                        .then(|| "access_key_id and secret_access_key are required".to_string());
                    provider(
                        ProviderKind::Bedrock(BedrockSettings {
                            region: b.region,
                            access_key_id: b.access_key_id,
                            secret_access_key: b.secret_access_key,
                            session_token: b.session_token,
                            base_url,
                        }),
                        unset_secret(&["access_key_id", "secret_access_key", "region"]).or(missing),
                        b.timeouts,
                        b.breaker,
                    )
                }
                RawProvider::Mock(m) => {
                    let behaviours = std::iter::once((path.clone(), m.failure_rate)).chain(
                        m.models
                            .iter()
                            .map(|(k, b)| (format!("{path}.models.{k}"), b.failure_rate)),
                    );
                    for (p, rate) in behaviours {
                        if !(0.0..=1.0).contains(&rate) {
                            return Err(format!(
                                "{source}: invalid config at `{p}.failure_rate`: must be between 0 and 1"
                            ));
                        }
                    }
                    ProviderSettings {
                        name: name.clone(),
                        kind: ProviderKind::Mock(MockSettings {
                            default: MockBehaviour {
                                latency_ms: m.latency_ms,
                                chunk_delay_ms: m.chunk_delay_ms,
                                failure_rate: m.failure_rate,
                                failure_status: m.failure_status,
                            },
                            models: m.models,
                        }),
                        enabled: true,
                        disabled_reason: None,
                        timeouts: m.timeouts,
                        breaker: m.breaker,
                    }
                }
            };
            if settings.breaker.failure_threshold == 0 {
                return Err(format!(
                    "{source}: invalid config at `{path}.breaker.failure_threshold`: must be at least 1"
                ));
            }
            providers.push(settings);
        }
        let provider_names: HashMap<&str, ()> =
            providers.iter().map(|p| (p.name.as_str(), ())).collect();

        // Catalog: the shipped models, then the user's, which add or replace.
        for (id, model) in &raw.models {
            for (i, offer) in model.providers.iter().enumerate() {
                if !provider_names.contains_key(offer.provider.as_str()) {
                    return Err(format!(
                        "{source}: invalid config at `models.{id}.providers[{i}].provider`: no provider named `{}` in [providers]",
                        offer.provider
                    ));
                }
            }
        }
        let mut models: BTreeMap<String, RawModel> = shipped.models;
        models.extend(raw.models);
        let catalog = Catalog::new(
            models
                .into_iter()
                .map(|(id, m)| compile_model(&id, m))
                .collect(),
        )
        .map_err(|e| format!("{source}: invalid catalog: {e}"))?;

        let limits = compile_limits(&raw.limits, source)?;
        let ops_keys: Vec<String> = raw
            .ops
            .api_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        let data_dir = raw.server.data_dir;
        if raw.storage.sled_cache_mb == 0 || raw.storage.sled_cache_mb > 1024 * 1024 {
            return Err(format!(
                "{source}: invalid config at `storage.sled_cache_mb`: {} is not between 1 and 1048576 (1 TiB)",
                raw.storage.sled_cache_mb
            ));
        }
        let sled_cache_bytes = raw.storage.sled_cache_mb * 1024 * 1024;
        let storage = compile_storage(raw.storage, source)?;
        let retention = compile_retention(&raw.recorder, source)?;
        let redis = compile_redis(raw.redis, source)?;
        Ok(Config {
            redis,
            limits,
            ops_keys,
            server: ServerConfig {
                listen,
                max_body_bytes: raw.server.max_body_bytes,
                workers,
                public_url: raw.server.public_url.clone(),
                log: raw.server.log.clone(),
            },
            auth: AuthConfig {
                api_keys,
                tenants,
                tenant_limits,
            },
            admin,
            gateway: GatewayConfig {
                providers,
                catalog,
                storage,
                data_dir,
                flush_interval: Duration::from_millis(raw.recorder.flush_interval_ms.max(1)),
                sled_cache_bytes,
                retention,
                cache: CacheSettings {
                    shards: raw.cache.shards.unwrap_or(workers).max(1),
                    ttl: Duration::from_secs(raw.cache.ttl_seconds),
                    max_bytes: raw.cache.max_bytes,
                },
                // Completed once the listener is bound (see `http::serve`).
                public_url: raw.server.public_url.unwrap_or_default(),
                retry: raw.retries,
                hedging: raw.hedging,
                routing: raw.routing.strategy,
                media: MediaSettings {
                    max_bytes: raw.media.max_bytes,
                    allow_private_networks: raw.media.allow_private_networks,
                    timeout: Duration::try_from_secs_f64(raw.media.timeout_seconds)
                        .unwrap_or(Duration::from_secs(30)),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, "test.toml")
    }

    #[test]
    fn shipped_config_compiles_and_serves_mock_echo() {
        let text = include_str!("../config/flowgate.toml");
        let config = load(text).unwrap();
        let mock = config.gateway.catalog.get("mock-echo").unwrap();
        assert_eq!(mock.providers[0].provider, "mock");
        assert!(config.gateway.catalog.models().len() >= 5);
    }

    #[test]
    fn storage_is_sled_unless_postgres_is_asked_for() {
        let text = include_str!("../config/flowgate.toml");
        assert!(matches!(load(text).unwrap().gateway.storage, Backend::Sled));
        // sled's page cache is bounded by default, and as configured.
        assert_eq!(load(text).unwrap().gateway.sled_cache_bytes, 16 << 20);
        let small = load("[storage]\nsled_cache_mb = 48\n").unwrap();
        assert_eq!(small.gateway.sled_cache_bytes, 48 << 20);
        let config = load(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:pw@db.internal:5433/fg\"\npool_size = 4\nschema = \"flowgate\"\nspool_max_mb = 64\n",
        )
        .unwrap();
        let Backend::Postgres(settings) = config.gateway.storage else {
            panic!("not postgres");
        };
        assert_eq!(settings.pool_size, 4);
        assert_eq!(settings.spool_max_bytes, 64 * 1024 * 1024);
        assert_eq!(settings.schema.as_deref(), Some("flowgate"));
    }

    #[test]
    fn runs_are_kept_forever_unless_retention_is_asked_for() {
        let text = include_str!("../config/flowgate.toml");
        let retention = load(text).unwrap().gateway.retention;
        assert!(retention.keeps_everything(), "{retention:?}");
        let config = load("[recorder]\nmax_age_days = 30\nmax_disk_mb = 512\n").unwrap();
        let retention = config.gateway.retention;
        assert_eq!(retention.max_age, Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(retention.max_bytes, Some(512 * 1024 * 1024));
        // Runs the recorder may still be counting are never deleted.
        assert!(retention.protect >= Duration::from_secs(5));
    }

    #[test]
    fn abusive_retention_values_fail_at_start_with_their_path() {
        for (text, path, why) in [
            (
                "[recorder]\nmax_age_days = 0\n",
                "recorder.max_age_days",
                "between 1 and 36500",
            ),
            (
                "[recorder]\nmax_age_days = 36501\n",
                "recorder.max_age_days",
                "between 1 and 36500",
            ),
            (
                "[recorder]\nmax_disk_mb = 0\n",
                "recorder.max_disk_mb",
                "between 1 and 1048576",
            ),
            (
                "[recorder]\nmax_disk_mb = 1048577\n",
                "recorder.max_disk_mb",
                "between 1 and 1048576",
            ),
            ("[recorder]\nmax_disk_mb = -1\n", "recorder.max_disk_mb", ""),
            (
                "[recorder]\nmax_age_days = \"30d\"\n",
                "recorder.max_age_days",
                "",
            ),
            ("[recorder]\nmax_age = 3\n", "recorder", ""),
        ] {
            let err = load(text).unwrap_err();
            assert!(
                err.contains(&format!("`{path}")) || err.contains(path),
                "{text}: {err}"
            );
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn bad_storage_values_fail_at_start_with_their_path() {
        for (text, path) in [
            ("[storage]\nbackend = \"mysql\"\n", "storage.backend"),
            ("[storage]\nbackend = \"postgres\"\n", "storage.url"),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"mysql://u:secret@h/db\"\n",
                "storage.url",
            ),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\npool_size = 0\n",
                "storage.pool_size",
            ),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nschema = \"a-b\"\n",
                "storage.schema",
            ),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nspool_max_mb = 0\n",
                "storage.spool_max_mb",
            ),
            ("[storage]\nbackend = \"sled\"\nurll = \"x\"\n", "storage"),
            ("[storage]\nsled_cache_mb = 0\n", "storage.sled_cache_mb"),
            (
                "[storage]\nsled_cache_mb = 2000000\n",
                "storage.sled_cache_mb",
            ),
            ("[storage]\nsled_cache_mb = -1\n", "storage.sled_cache_mb"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.contains(&format!("`{path}")), "{text}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn redis_is_off_unless_configured_and_checked_with_its_path() {
        let shipped = include_str!("../config/flowgate.toml");
        assert!(load(shipped).unwrap().redis.is_none());
        let config = load(
            "[redis]\nurl = \"redis://:pw@cache.internal:6380/2\"\nkey_prefix = \"fg:prod:\"\non_unavailable = \"refuse\"\n",
        )
        .unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(redis.key_prefix, "fg:prod:");
        assert_eq!(redis.timeout, Duration::from_millis(250));
        assert_eq!(redis.lease, Duration::from_secs(30));
        assert_eq!(redis.on_unavailable, OnUnavailable::Refuse);
        for (text, path) in [
            ("[redis]\n", "redis.url"),
            ("[redis]\nurl = \"http://u:secret@h:6379\"\n", "redis.url"),
            (
                "[redis]\nurl = \"redis://h\"\ntimeout_ms = 0\n",
                "redis.timeout_ms",
            ),
            (
                "[redis]\nurl = \"redis://h\"\nlease_seconds = 1\n",
                "redis.lease_seconds",
            ),
            (
                "[redis]\nurl = \"redis://h\"\nkey_prefix = \"a b\"\n",
                "redis.key_prefix",
            ),
            (
                "[redis]\nurl = \"redis://h\"\non_unavailable = \"ignore\"\n",
                "redis.on_unavailable",
            ),
            ("[redis]\nurl = \"redis://h\"\nurll = \"x\"\n", "redis"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.contains(&format!("`{path}")), "{text}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err =
            load("[providers.openai]\ntype = \"openai\"\nbase_urll = \"http://x\"\n").unwrap_err();
        assert!(err.contains("providers.openai"), "{err}");
        assert!(err.contains("base_urll"), "{err}");
        let err = load("[server]\nlisten = \"127.0.0.1:1\"\nworkerz = 2\n").unwrap_err();
        assert!(err.contains("server"), "{err}");
        assert!(err.contains("workerz"), "{err}");
    }

    #[test]
    fn unset_key_disables_provider_and_set_key_interpolates() {
        std::env::set_var("FLOWGATE_TEST_KEY_SET", "sk-test");
        let config = load(
            "[providers.a]\ntype = \"openai\"\napi_key = \"${FLOWGATE_TEST_KEY_UNSET}\"\n\
             [providers.b]\ntype = \"openai\"\napi_key = \"${FLOWGATE_TEST_KEY_SET}\"\n",
        )
        .unwrap();
        let a = config
            .gateway
            .providers
            .iter()
            .find(|p| p.name == "a")
            .unwrap();
        assert!(!a.enabled);
        assert_eq!(
            a.disabled_reason.as_deref(),
            Some("FLOWGATE_TEST_KEY_UNSET is not set")
        );
        let b = config
            .gateway
            .providers
            .iter()
            .find(|p| p.name == "b")
            .unwrap();
        assert!(b.enabled);
        assert!(
            matches!(&b.kind, ProviderKind::OpenAi(o) if o.api_key.as_deref() == Some("sk-test"))
        );
    }

    #[test]
    fn limits_default_small_and_bad_ones_name_their_key() {
        let config = load("").unwrap();
        assert_eq!(config.limits.max_n, 8);
        assert_eq!(config.limits.max_model_bytes, 256);
        assert_eq!(config.limits.templates.max_memory_bytes, 256 * 1024 * 1024);
        let config = load(
            "[limits]\nmax_n = 2\n[limits.templates]\ntimeout_seconds = 0.25\nmemory_mb = 128\n",
        )
        .unwrap();
        assert_eq!(config.limits.max_n, 2);
        assert_eq!(config.limits.templates.timeout, Duration::from_millis(250));
        for (text, key) in [
            ("[limits]\nmax_n = 0\n", "limits.max_n"),
            (
                "[limits]\nbody_timeout_seconds = -1\n",
                "limits.body_timeout_seconds",
            ),
            (
                "[limits.templates]\nmemory_mb = 1\n",
                "limits.templates.memory_mb",
            ),
            (
                "[limits.templates]\nworkers = 0\n",
                "limits.templates.workers",
            ),
            ("[limits]\nmax_nn = 3\n", "max_nn"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn no_keys_refuses_public_listen_and_unset_key_list_is_empty() {
        let err = load("[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap_err();
        assert!(err.contains("refusing"), "{err}");
        let config = load(
            "[auth]\napi_keys = [\"${FLOWGATE_TEST_NOPE}\"]\n[server]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        assert!(config.auth.api_keys.is_empty());
        std::env::set_var("FLOWGATE_TEST_GW_KEY", "k1");
        let config = load(
            "[auth]\napi_keys = [\"${FLOWGATE_TEST_GW_KEY}\"]\n[server]\nlisten = \"0.0.0.0:0\"\n",
        )
        .unwrap();
        assert_eq!(config.auth.api_keys, vec!["k1".to_string()]);
    }

    #[test]
    fn admin_keys_take_labels_skip_unset_and_never_double_as_api_keys() {
        std::env::set_var("FLOWGATE_TEST_ADMIN_KEY", "adm-1");
        let config = load(
            "[admin]\napi_keys = [\"${FLOWGATE_TEST_ADMIN_KEY}\", \"${FLOWGATE_TEST_ADMIN_UNSET}\",\n\
             { key = \"adm-2\", label = \"ops\" }, { key = \"${FLOWGATE_TEST_ADMIN_UNSET}\", label = \"gone\" }]\n",
        )
        .unwrap();
        let keys: Vec<(&str, Option<&str>)> = config
            .admin
            .api_keys
            .iter()
            .map(|k| (k.key.as_str(), k.label.as_deref()))
            .collect();
        assert_eq!(keys, vec![("adm-1", None), ("adm-2", Some("ops"))]);
        assert!(load("").unwrap().admin.api_keys.is_empty());
        let err =
            load("[auth]\napi_keys = [\"same\"]\n[admin]\napi_keys = [\"same\"]\n").unwrap_err();
        assert!(err.contains("admin.api_keys[0]"), "{err}");
        let err = load(
            "[auth.tenants.acme]\napi_keys = [\"acme-key\"]\n[admin]\napi_keys = [\"x\", \"acme-key\"]\n",
        )
        .unwrap_err();
        assert!(err.contains("admin.api_keys[1]"), "{err}");
        let err = load("[admin]\napi_keys = [{ key = \"k\", lable = \"x\" }]\n").unwrap_err();
        assert!(err.contains("admin.api_keys"), "{err}");
        let err = load("[admin]\napi_keys = [{ key = \"a\", label = \"x\" }, { key = \"b\", label = \"x\" }]\n")
            .unwrap_err();
        assert!(err.contains("admin.api_keys[1].label"), "{err}");
    }

    #[test]
    fn user_models_override_and_must_name_known_providers() {
        let config = load(
            "[providers.up]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [models.\"gpt-4o-mini-latest\"]\naliases = [\"gpt-4o-mini\"]\n\
             providers = [{ provider = \"up\", model = \"x\", input_per_mtok = 1.0, output_per_mtok = 2.0 }]\n",
        )
        .unwrap();
        let m = config.gateway.catalog.get("gpt-4o-mini").unwrap();
        assert_eq!(m.providers[0].provider, "up");
        let err = load(
            "[models.x]\nproviders = [{ provider = \"nope\", model = \"x\", input_per_mtok = 1.0, output_per_mtok = 2.0 }]\n",
        )
        .unwrap_err();
        assert!(err.contains("models.x.providers[0].provider"), "{err}");
    }
}
