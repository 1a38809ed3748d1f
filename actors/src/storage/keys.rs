//! Virtual API keys and what they (and tenants) spent: [`KeyStore`].

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::keys::{KeyRecord, Spend};

/// What a key or tenant used, persisted about once a second: the current periods' spend and
/// when a key was last used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectUsage {
    pub spends: Vec<Spend>,
    #[serde(default)]
    pub last_used_ms: Option<u64>,
}

/// Keys by id (stored with their secret's digest only), and usage by subject (`key:<id>` or
/// `tenant:<name>`).
pub trait KeyStore: Send + Sync + 'static {
    /// Creates or replaces a key.
    fn put<'a>(&'a self, key: &'a KeyRecord) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every key, revoked ones included (they must keep answering 401).
    fn all(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StorageError>>;

    /// Replaces the usage of subjects.
    fn put_usage<'a>(
        &'a self,
        usage: &'a [(String, SubjectUsage)],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every subject's usage.
    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, SubjectUsage)>, StorageError>>;

    /// Whether other instances change the same keys (a shared database): then the registry
    /// reads them again every half second; an embedded store is only changed through this one.
    fn shared(&self) -> bool {
        false
    }
}
