//! API keys: each flowgate key belongs to a tenant. With no key configured, any bearer token is
//! accepted and everything belongs to the `default` tenant (the server then listens on
//! loopback only, see config).

use std::collections::HashMap;

use actix_web::HttpRequest;
use flowgate_actors::error::{ErrorKind, GatewayError};
use sha2::{Digest, Sha256};

pub const DEFAULT_TENANT: &str = "default";

/// Keys are kept as digests, so a key never sits in memory dumps in clear beyond the config.
pub struct Auth {
    keys: HashMap<[u8; 32], String>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    pub fn new(api_keys: &[String], tenants: &[(String, Vec<String>)]) -> Auth {
        let default = api_keys
            .iter()
            .map(|k| (digest(k), DEFAULT_TENANT.to_string()));
        let others = tenants
            .iter()
            .flat_map(|(name, keys)| keys.iter().map(move |k| (digest(k), name.clone())));
        Auth {
            keys: default.chain(others).collect(),
        }
    }

    /// No key is configured: any caller is the default tenant.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant of a configured key (the web UI's sign-in).
    pub fn tenant_of_key(&self, key: &str) -> Option<String> {
        self.keys.get(&digest(key)).cloned()
    }

    /// The caller's tenant, or 401.
    pub fn tenant(&self, req: &HttpRequest) -> Result<String, GatewayError> {
        if self.keys.is_empty() {
            return Ok(DEFAULT_TENANT.to_string());
        }
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::Unauthorized,
                    "missing API key: send `Authorization: Bearer <flowgate API key>`",
                )
            })?;
        self.keys
            .get(&digest(token))
            .cloned()
            .ok_or_else(|| GatewayError::new(ErrorKind::Unauthorized, "invalid API key"))
    }
}
