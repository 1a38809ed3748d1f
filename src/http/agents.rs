//! The agents admin API: versions with their usage, schemas and deployments.
//!
//! * `GET /api/agents/{agent}/versions`, `GET /api/agents/{agent}/versions/{version_id}`
//! * `GET /api/agents/{agent}/schemas`
//! * `POST /api/agents/{agent}/versions/{version_id}/deploy` `{"environment", "schema_id"?}`
//! * `GET /api/agents/{agent}/deployments` (current ones and the history, newest first)
//!
//! Reads take a tenant API key, or an admin key; deploying takes an admin key from `[admin]
//! api_keys`, and records who (the key's label or a digest prefix, never the key) and when. An
//! admin acts for the tenant named by `x-flowgate-tenant` (the default tenant without it).
//! Store work runs off the worker thread.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::{excerpt, ErrorKind, GatewayError};
use flowgate_actors::model_ref::{is_slug, Environment};
use flowgate_actors::recorder::Barrier;
use flowgate_actors::storage::VersionCursor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::DEFAULT_TENANT;
use super::AppState;
use crate::config::AdminKey;

/// Admin keys, kept as digests, each with who it is.
pub struct AdminAuth {
    keys: HashMap<[u8; 32], String>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The bearer token of the request, if any.
pub(super) fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

impl AdminAuth {
    pub fn new(keys: &[AdminKey]) -> AdminAuth {
        AdminAuth {
            keys: keys
                .iter()
                .map(|k| {
                    let d = digest(&k.key);
                    let who = match &k.label {
                        Some(label) => label.clone(),
                        None => format!(
                            "key:{}",
                            d[..4]
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>()
                        ),
                    };
                    (d, who)
                })
                .collect(),
        }
    }

    /// Whether the caller holds an admin key.
    pub fn is_admin(&self, req: &HttpRequest) -> bool {
        self.identify(req).is_some()
    }

    /// Who the caller is, if it holds an admin key.
    fn identify(&self, req: &HttpRequest) -> Option<String> {
        bearer(req).and_then(|token| self.who(token))
    }

    /// Who holds `key`, if it is an admin key (the web UI's sign-in).
    pub fn who(&self, key: &str) -> Option<String> {
        self.keys.get(&digest(key)).cloned()
    }

    /// Who the caller is, or 401 when it holds no admin key.
    pub fn require(&self, req: &HttpRequest) -> Result<String, GatewayError> {
        let unauthorized = |message: &str| {
            GatewayError::new(ErrorKind::Unauthorized, message).with_code("admin_key_required")
        };
        if self.keys.is_empty() {
            return Err(unauthorized(
                "deployments need an admin key and none is configured: add `[admin] api_keys = \
                 [\"${FLOWGATE_ADMIN_KEY}\"]` to the config",
            ));
        }
        if bearer(req).is_none() {
            return Err(unauthorized(
                "this endpoint needs an admin key: send `Authorization: Bearer <admin key>`",
            ));
        }
        self.identify(req)
            .ok_or_else(|| unauthorized("this is not an admin key"))
    }
}

/// Largest body of the small JSON endpoints (deploy, feedback).
const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Header with which an admin names the tenant it acts for (the default tenant without it).
const TENANT_HEADER: &str = "x-flowgate-tenant";

/// The tenant an admin request acts for.
pub(super) fn admin_tenant(req: &HttpRequest) -> Result<String, GatewayError> {
    match req.headers().get(TENANT_HEADER) {
        None => Ok(DEFAULT_TENANT.to_string()),
        Some(value) => match value.to_str().map(str::trim) {
            Ok(tenant) if is_slug(tenant) => Ok(tenant.to_string()),
            _ => Err(GatewayError::invalid(format!(
                "`{TENANT_HEADER}` must name a tenant (a slug)"
            ))
            .with_param(TENANT_HEADER)),
        },
    }
}

/// The tenant a read is for: an admin key reads the tenant it names (the default one without
/// `x-flowgate-tenant`), any other caller its own.
pub(super) fn reader_tenant(req: &HttpRequest, state: &AppState) -> Result<String, GatewayError> {
    if state.admin.identify(req).is_some() {
        return admin_tenant(req);
    }
    state.auth.tenant(req)
}

/// An agent name from a path, or a 400 that quotes (a bounded excerpt of) it.
pub(crate) fn agent_name(raw: String) -> Result<String, GatewayError> {
    if is_slug(&raw) {
        Ok(raw)
    } else {
        Err(
            GatewayError::invalid(format!("`{}` is not an agent name", excerpt(&raw, 64)))
                .with_param("agent"),
        )
    }
}

/// Waits until the recorder has written every run sent before now, so statistics include the
/// caller's own runs.
async fn settle(state: &AppState) {
    let _ = state
        .gateway
        .recorder
        .addr
        .send(Barrier)
        .timeout(Duration::from_secs(5))
        .await;
}

/// A JSON body as a 400 that names the field, in the OpenAI error shape.
/// The JSON body of a small endpoint (deploy, feedback): read within [`SMALL_BODY_BYTES`], the
/// body timeout and the in-flight budget, then parsed.
pub(super) async fn read_small_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<T, GatewayError> {
    let (body, _reservation) = super::body::read_body(
        req,
        payload,
        SMALL_BODY_BYTES,
        state.limits.body_timeout,
        &state.body_budget,
    )
    .await?;
    parse_body(&body)
}

pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        // serde quotes the offending value: never echo all of it.
        let inner = e.inner().to_string();
        let inner = excerpt(&inner, 300);
        let message = if path == "." {
            format!("invalid body: {inner}")
        } else {
            format!("invalid body at `{}`: {inner}", excerpt(&path, 200))
        };
        let error = GatewayError::invalid(message);
        if path == "." {
            error
        } else {
            error.with_param(path)
        }
    })
}

/// Versions on a page of `GET /api/agents/{agent}/versions` unless `limit` says otherwise.
const VERSIONS_PAGE: usize = 100;
/// Most versions on one page.
const MAX_VERSIONS_PAGE: usize = 500;

#[derive(Deserialize)]
pub struct VersionsQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `GET /api/agents/{agent}/versions?limit=&cursor=`: the agent's versions newest first, with
/// their statistics, a page at a time (`next_cursor` while more follow).
pub async fn list_versions(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<VersionsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(path.into_inner())?;
    let limit = query
        .limit
        .unwrap_or(VERSIONS_PAGE)
        .clamp(1, MAX_VERSIONS_PAGE);
    let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => Some(VersionCursor::decode(text).ok_or_else(|| {
            GatewayError::invalid("`cursor` is not a versions cursor").with_param("cursor")
        })?),
    };
    settle(&state).await;
    let (items, next) = state
        .gateway
        .agents
        .versions_page(&tenant, &agent, after.as_ref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "items": items,
        "next_cursor": next.map(|c| c.encode()),
    })))
}

pub async fn get_version(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, version_id) = path.into_inner();
    let agent = agent_name(agent)?;
    settle(&state).await;
    let found = state
        .gateway
        .agents
        .version_summary(&tenant, &agent, &version_id)
        .await?;
    let summary = found.ok_or_else(|| {
        GatewayError::not_found(format!("agent `{agent}` has no version `{version_id}`"))
    })?;
    Ok(HttpResponse::Ok().json(summary))
}

pub async fn list_schemas(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(path.into_inner())?;
    let items = state.gateway.agents.schemas(&tenant, &agent).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

pub async fn list_deployments(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(path.into_inner())?;
    let deployments = state.gateway.agents.deployments(&tenant, &agent).await?;
    Ok(HttpResponse::Ok().json(deployments))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    environment: String,
    /// The schema whose callers get the version; the version's own schema when absent.
    #[serde(default)]
    schema_id: Option<u32>,
}

pub async fn deploy(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let who = state.admin.require(&req)?;
    let tenant = admin_tenant(&req)?;
    let (agent, version_id) = path.into_inner();
    let agent = agent_name(agent)?;
    let body: DeployBody = read_small_json(&req, payload, &state).await?;
    let environment = Environment::parse(&body.environment).ok_or_else(|| {
        GatewayError::invalid(format!(
            "`{}` is not an environment: use dev, staging or production",
            excerpt(&body.environment, 64)
        ))
        .with_param("environment")
    })?;
    let record = state
        .gateway
        .agents
        .deploy(
            &tenant,
            &agent,
            &version_id,
            body.schema_id,
            environment,
            &who,
        )
        .await?;
    tracing::info!(
        agent = %record.agent,
        schema_id = record.schema_id,
        environment = record.environment.as_str(),
        version_id = %record.version_id,
        deployed_by = %record.deployed_by,
        "deployed"
    );
    Ok(HttpResponse::Ok().json(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn admin_keys_are_recognised_by_digest_and_named_without_the_key() {
        let auth = AdminAuth::new(&[
            AdminKey {
                key: "secret-one".into(),
                label: Some("ops".into()),
            },
            AdminKey {
                key: "secret-two".into(),
                label: None,
            },
        ]);
        let with = |token: &str| {
            TestRequest::default()
                .insert_header(("authorization", format!("Bearer {token}")))
                .to_http_request()
        };
        assert_eq!(auth.require(&with("secret-one")).unwrap(), "ops");
        let who = auth.require(&with("secret-two")).unwrap();
        assert!(who.starts_with("key:") && who.len() == 12, "{who}");
        assert!(!who.contains("secret"));
        let e = auth.require(&with("nope")).unwrap_err();
        assert_eq!(e.status_code().as_u16(), 401);
        let e = auth
            .require(&TestRequest::default().to_http_request())
            .unwrap_err();
        assert!(e.message.contains("Authorization"), "{}", e.message);
        let none = AdminAuth::new(&[]);
        let e = none.require(&with("secret-one")).unwrap_err();
        assert!(e.message.contains("[admin]"), "{}", e.message);
    }
}
