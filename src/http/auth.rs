//! API keys: each flowgate key belongs to a tenant. With no key configured, any bearer token is
//! accepted and everything belongs to the `default` tenant (the server then listens on
//! loopback only, see config).

use std::collections::HashMap;

use actix_web::HttpRequest;
use flowgate_actors::error::{ErrorKind, GatewayError};
use flowgate_actors::keys::{Caller, KeyRegistry};
use sha2::{Digest, Sha256};

pub const DEFAULT_TENANT: &str = flowgate_actors::keys::DEFAULT_TENANT;

/// Keys are kept as digests, so a key never sits in memory dumps in clear beyond the config.
/// Virtual keys (made through the admin API) are looked up in the registry after the config's.
pub struct Auth {
    keys: HashMap<[u8; 32], String>,
    registry: KeyRegistry,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    pub fn new(
        api_keys: &[String],
        tenants: &[(String, Vec<String>)],
        registry: KeyRegistry,
    ) -> Auth {
        let default = api_keys
            .iter()
            .map(|k| (digest(k), DEFAULT_TENANT.to_string()));
        let others = tenants
            .iter()
            .flat_map(|(name, keys)| keys.iter().map(move |k| (digest(k), name.clone())));
        Auth {
            keys: default.chain(others).collect(),
            registry,
        }
    }

    pub fn registry(&self) -> &KeyRegistry {
        &self.registry
    }

    /// No key is configured: any caller is the default tenant.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant of a configured or virtual key that may be used now (the web UI's sign-in).
    pub fn tenant_of_key(&self, key: &str) -> Option<String> {
        if let Some(tenant) = self.keys.get(&digest(key)) {
            return Some(tenant.clone());
        }
        match self.registry.authenticate(key) {
            Ok(Some(caller)) => Some(caller.tenant),
            _ => None,
        }
    }

    /// The caller's tenant, or 401.
    pub fn tenant(&self, req: &HttpRequest) -> Result<String, GatewayError> {
        self.caller(req).map(|c| c.tenant)
    }

    /// The caller: its tenant and, with a virtual key, that key; or 401.
    pub fn caller(&self, req: &HttpRequest) -> Result<Caller, GatewayError> {
        self.caller_by(bearer_token(req))
    }

    /// The caller of the Anthropic door: its SDK sends the key in `x-api-key`; a bearer
    /// token is taken as well.
    pub fn anthropic_caller(&self, req: &HttpRequest) -> Result<Caller, GatewayError> {
        let api_key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty());
        self.caller_by(api_key.or_else(|| bearer_token(req)))
    }

    fn caller_by(&self, token: Option<&str>) -> Result<Caller, GatewayError> {
        let config_key = |token: Option<&str>| {
            token
                .and_then(|t| self.keys.get(&digest(t)))
                .map(|tenant| Caller {
                    tenant: tenant.clone(),
                    key: None,
                })
        };
        if let Some(caller) = config_key(token) {
            return Ok(caller);
        }
        if let Some(token) = token {
            if let Some(caller) = self.registry.authenticate(token)? {
                return Ok(caller);
            }
        }
        if self.keys.is_empty() {
            return Ok(Caller {
                tenant: DEFAULT_TENANT.to_string(),
                key: None,
            });
        }
        match token {
            None => Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "missing API key: send `Authorization: Bearer <flowgate API key>`",
            )),
            Some(_) => Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "invalid API key",
            )),
        }
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}
