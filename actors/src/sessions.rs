//! Web UI sign-in sessions: how one is made and opened, whatever stores it
//! ([`crate::storage::SessionStore`]).
//!
//! A session id is 256 random bits (the cookie's value). The store keeps its SHA-256, never the
//! id. The key the session signed in with (attached to the API calls its pages make) is kept
//! sealed (ChaCha20-Poly1305) under a key derived from the id: reading the store gives neither
//! a cookie nor an API key; an instance that receives the cookie opens both.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::keys::digest_hex;
use crate::storage::SessionRecord;

/// Labels the derivation of the sealing key, apart from the id's digest (a plain SHA-256).
const SEALING_CONTEXT: &[u8] = b"flowgate web UI session key\0";

/// A session just made: the id for the cookie, and what to store.
#[derive(Debug)]
pub struct NewSession {
    pub id: String,
    pub record: SessionRecord,
}

/// Who a session is, once opened with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSession {
    /// The key signed in with.
    pub key: String,
    pub key_digest: String,
    pub tenant: String,
    pub admin: Option<String>,
    pub csrf: String,
    pub expires_ms: u64,
}

/// The digest a session is stored under.
pub fn id_digest(id: &str) -> String {
    digest_hex(id)
}

/// Whether `id` could be a session id: checked before any hashing or store lookup.
pub fn is_well_formed(id: &str) -> bool {
    crate::share::is_well_formed(id)
}

fn sealing_key(id: &str) -> Result<LessSafeKey, GatewayError> {
    let mut hasher = Sha256::new();
    hasher.update(SEALING_CONTEXT);
    hasher.update(id.as_bytes());
    let key = UnboundKey::new(&CHACHA20_POLY1305, &hasher.finalize())
        .map_err(|_| GatewayError::internal("cannot make a session's sealing key"))?;
    Ok(LessSafeKey::new(key))
}

/// A new session of `key` for `tenant` (with the admin label for an admin), lasting `ttl_ms`
/// from `now_ms`.
pub fn new_session(
    key: &str,
    tenant: String,
    admin: Option<String>,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<NewSession, GatewayError> {
    let id = crate::share::new_token()?;
    let id_digest = id_digest(&id);
    let mut sealed_key = key.as_bytes().to_vec();
    // The sealing key is derived from a fresh random id and seals this one text only, so a
    // fixed nonce is never reused under a key.
    sealing_key(&id)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(id_digest.as_bytes()),
            &mut sealed_key,
        )
        .map_err(|_| GatewayError::internal("cannot seal a session's key"))?;
    let record = SessionRecord {
        id_digest,
        key_digest: digest_hex(key),
        sealed_key,
        tenant,
        admin,
        csrf: crate::share::new_token()?,
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl_ms),
    };
    Ok(NewSession { id, record })
}

/// Opens a stored session with its id: `None` when the id does not open it (another id, or a
/// record altered in the store).
pub fn open(id: &str, record: &SessionRecord) -> Option<OpenSession> {
    if id_digest(id) != record.id_digest {
        return None;
    }
    let mut sealed = record.sealed_key.clone();
    let key = sealing_key(id)
        .ok()?
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(record.id_digest.as_bytes()),
            &mut sealed,
        )
        .ok()?;
    let key = String::from_utf8(key.to_vec()).ok()?;
    if digest_hex(&key) != record.key_digest {
        return None;
    }
    Some(OpenSession {
        key,
        key_digest: record.key_digest.clone(),
        tenant: record.tenant.clone(),
        admin: record.admin.clone(),
        csrf: record.csrf.clone(),
        expires_ms: record.expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_with_its_id_only() {
        let made = new_session("sk-secret", "acme".into(), None, 1_000, 500).unwrap();
        let record = &made.record;
        assert_eq!(record.expires_ms, 1_500);
        assert!(is_well_formed(&made.id));
        // Neither the id nor the key is stored in clear.
        let stored = serde_json::to_string(record).unwrap();
        assert!(!stored.contains(&made.id));
        assert!(!stored.contains("sk-secret"));
        assert!(!record
            .sealed_key
            .windows(9)
            .any(|w| w == b"sk-secret".as_slice()));

        let open = open(&made.id, record).unwrap();
        assert_eq!(open.key, "sk-secret");
        assert_eq!(open.tenant, "acme");
        assert_eq!(open.csrf, record.csrf);

        let other = new_session("sk-secret", "acme".into(), None, 1_000, 500).unwrap();
        assert!(super::open(&other.id, record).is_none());
        // A record whose sealed key was tampered with does not open.
        let mut altered = record.clone();
        altered.sealed_key[0] ^= 1;
        assert!(super::open(&made.id, &altered).is_none());
        // Nor one moved under another id's digest.
        let mut moved = other.record.clone();
        moved.sealed_key = record.sealed_key.clone();
        assert!(super::open(&other.id, &moved).is_none());
    }
}
