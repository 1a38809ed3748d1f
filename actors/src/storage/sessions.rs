//! The web UI's sign-in sessions: [`SessionStore`]. Kept by the storage layer, so that every
//! instance on a shared database knows a session made on another, and a sign-out anywhere
//! ends it everywhere.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StorageError;

/// A session as stored (see [`crate::sessions`] for how one is made and opened). It is found
/// by the digest of its id: the id itself, the cookie's value, is never stored, so what the
/// store holds cannot be sent back as a cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the session id, hex.
    pub id_digest: String,
    /// SHA-256 of the key signed in with, hex (as keys are stored): a revoked key's sessions
    /// are found by it.
    pub key_digest: String,
    /// The key signed in with, sealed under a key derived from the session id: only the
    /// holder of the cookie can open it.
    pub sealed_key: Vec<u8>,
    /// The tenant whose data the session sees.
    pub tenant: String,
    /// The admin key's label, for an admin session.
    pub admin: Option<String>,
    /// The token every state-changing request of the session carries (useless without the
    /// session's cookie).
    pub csrf: String,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// Past this (milliseconds since the epoch) the session is over.
    pub expires_ms: u64,
}

/// Sign-in sessions by the digest of their id.
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session (or replaces the one of the same id digest).
    fn put<'a>(&'a self, session: &'a SessionRecord) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The session of this id digest, unless it has expired at `now_ms`.
    fn get<'a>(
        &'a self,
        id_digest: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StorageError>>;

    /// Ends a session (sign-out); whether there was one. Durable once answered.
    fn delete<'a>(&'a self, id_digest: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Ends every session signed in with the key of this digest; how many there were.
    fn delete_for_key<'a>(
        &'a self,
        key_digest: &'a str,
    ) -> BoxFuture<'a, Result<u64, StorageError>>;

    /// Removes the sessions expired at `now_ms`; how many.
    fn delete_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StorageError>>;
}
