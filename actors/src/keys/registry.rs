//! The keys the request path reads: a published map from secret digest to key (lock-free
//! reads), the tenants' limits from the config, and the admin operations that change keys
//! (written to the store first, then published). Usage is persisted about once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use uuid::Uuid;

use super::admission::{Admission, Limiter};
use super::limiter::{Limits, Subject, WallClock};
use super::{
    allowed, check_budgets, check_patterns, digest_hex, new_secret, KeyRecord, KeySpec, MAX_KEYS,
    MAX_NAME,
};
use crate::error::{ErrorKind, GatewayError};
use crate::storage::{KeyStore, StorageError, SubjectUsage};

/// A key with its counters.
#[derive(Debug)]
pub struct KeyEntry {
    pub record: KeyRecord,
    pub subject: Arc<Subject>,
    pub last_used_ms: AtomicU64,
    /// The last use written to the store.
    persisted_last_used: AtomicU64,
}

/// Who is calling: the tenant, and the virtual key if one was used.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub key: Option<Arc<KeyEntry>>,
}

impl Caller {
    /// A 403 when the key may not use this model or agent.
    pub fn check_allowed(&self, model: &str, agent: &str) -> Result<(), GatewayError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        if !allowed(&key.record.models, model) {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                format!(
                    "the key `{}` may not use the model `{model}`",
                    key.record.name
                ),
            )
            .with_param("model"));
        }
        if !allowed(&key.record.agents, agent) {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                format!(
                    "the key `{}` may not use the agent `{agent}`",
                    key.record.name
                ),
            ));
        }
        Ok(())
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct KeyRegistry {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn WallClock>,
    /// Where requests are counted: this process, or Redis for every instance.
    limiter: Arc<dyn Limiter>,
    by_digest: Arc<ArcSwap<HashMap<String, Arc<KeyEntry>>>>,
    tenants: Arc<HashMap<String, Arc<Subject>>>,
    /// One admin change at a time (each replaces the published map).
    writing: Arc<tokio::sync::Mutex<()>>,
}

fn subject_of_key(id: &str) -> String {
    format!("key:{id}")
}

fn subject_of_tenant(name: &str) -> String {
    format!("tenant:{name}")
}

fn storage(e: StorageError) -> GatewayError {
    e.into()
}

impl KeyRegistry {
    /// Reads the keys and their usage from the store; requests are counted by `limiter`.
    pub async fn load(
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn WallClock>,
        tenant_limits: Vec<(String, Limits)>,
        limiter: Arc<dyn Limiter>,
    ) -> Result<KeyRegistry, StorageError> {
        let mut usage: HashMap<String, SubjectUsage> = store.usage().await?.into_iter().collect();
        let mut by_digest = HashMap::new();
        for record in store.all().await? {
            let entry = new_entry(record);
            if let Some(u) = usage.remove(&subject_of_key(&entry.record.id)) {
                entry.subject.restore(u.spends);
                if let Some(ms) = u.last_used_ms {
                    entry.last_used_ms.store(ms, Ordering::Relaxed);
                    entry.persisted_last_used.store(ms, Ordering::Relaxed);
                }
            }
            by_digest.insert(entry.record.digest.clone(), Arc::new(entry));
        }
        let tenants = tenant_limits
            .into_iter()
            .filter(|(_, limits)| !limits.is_unlimited())
            .map(|(name, limits)| {
                let subject =
                    Subject::new(subject_of_tenant(&name), format!("tenant `{name}`"), limits);
                if let Some(u) = usage.remove(&subject_of_tenant(&name)) {
                    subject.restore(u.spends);
                }
                (name, Arc::new(subject))
            })
            .collect();
        let registry = KeyRegistry {
            store,
            clock,
            limiter,
            by_digest: Arc::new(ArcSwap::from_pointee(by_digest)),
            tenants: Arc::new(tenants),
            writing: Arc::default(),
        };
        // Shared counters that lost their data (a Redis restart) start again from the store.
        registry.limiter.restore(&registry.subjects()).await;
        Ok(registry)
    }

    /// The caller a virtual key names: `None` when the secret is not one; a 401 when the key
    /// was revoked or has expired.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Caller>, GatewayError> {
        let map = self.by_digest.load();
        if map.is_empty() {
            return Ok(None);
        }
        let Some(entry) = map.get(&digest_hex(secret)) else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        if entry.record.revoked_ms.is_some() {
            return Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "this API key was revoked",
            ));
        }
        if entry.record.expires_ms.is_some_and(|at| at <= now) {
            return Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "this API key has expired",
            ));
        }
        entry.last_used_ms.store(now, Ordering::Relaxed);
        Ok(Some(Caller {
            tenant: entry.record.tenant.clone(),
            key: Some(entry.clone()),
        }))
    }

    /// Takes the request's place in its key's and tenant's counters (`None`: nothing limits
    /// it), or refuses it. One call to the limiter, whichever it is.
    pub async fn admit(&self, caller: &Caller) -> Result<Option<Admission>, GatewayError> {
        let mut subjects = Vec::new();
        if let Some(key) = &caller.key {
            if !key.record.limits.is_unlimited() {
                subjects.push(key.subject.clone());
            }
        }
        if let Some(tenant) = self.tenants.get(&caller.tenant) {
            subjects.push(tenant.clone());
        }
        if subjects.is_empty() {
            return Ok(None);
        }
        self.limiter.admit(subjects).await.map(Some)
    }

    /// A subject's use, from wherever it is counted.
    async fn usage_view(&self, subject: &Arc<Subject>) -> serde_json::Value {
        let now = self.clock.now_ms();
        let usage = self
            .limiter
            .usage(std::slice::from_ref(subject))
            .await
            .pop()
            .unwrap_or_default();
        usage.view(&subject.limits(), now)
    }

    /// Every subject's use, in one call to the limiter (for metrics).
    pub async fn usages(&self) -> Vec<(Arc<Subject>, super::Usage)> {
        let subjects = self.subjects();
        let usages = self.limiter.usage(&subjects).await;
        subjects.into_iter().zip(usages).collect()
    }

    /// Waits (at most `within`) for the charges of finished runs to reach the limiter's
    /// counters (at shutdown).
    pub async fn drain(&self, within: std::time::Duration) {
        self.limiter.drain(within).await;
    }

    pub(super) fn limiter(&self) -> &dyn Limiter {
        self.limiter.as_ref()
    }

    /// A key as the admin API shows it.
    pub async fn view(&self, entry: &KeyEntry) -> serde_json::Value {
        let r = &entry.record;
        let time = |ms: Option<u64>| {
            ms.map(|ms| {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            })
        };
        let last_used = entry.last_used_ms.load(Ordering::Relaxed);
        serde_json::json!({
            "object": "key", "id": r.id, "name": r.name, "tenant": r.tenant,
            "prefix": r.prefix, "created_at": time(Some(r.created_ms)),
            "expires_at": time(r.expires_ms), "revoked_at": time(r.revoked_ms),
            "last_used_at": time((last_used > 0).then_some(last_used)),
            "models": r.models, "agents": r.agents,
            "rpm": r.limits.rpm, "tpm": r.limits.tpm, "max_parallel": r.limits.max_parallel,
            "budgets": r.limits.budgets,
            "usage": self.usage_view(&entry.subject).await,
        })
    }

    /// Keys of a tenant (all tenants: `None`), newest first.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Arc<KeyEntry>> {
        let mut keys: Vec<Arc<KeyEntry>> = self
            .by_digest
            .load()
            .values()
            .filter(|e| tenant.is_none_or(|t| e.record.tenant == t))
            .cloned()
            .collect();
        keys.sort_by(|a, b| b.record.id.cmp(&a.record.id));
        keys
    }

    pub fn get(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.by_digest
            .load()
            .values()
            .find(|e| e.record.id == id)
            .cloned()
    }

    /// Model and agent patterns that match nothing known (a warning for the caller).
    pub fn unmatched_patterns(spec: &KeyRecord, models: &[String]) -> Vec<String> {
        spec.models
            .iter()
            .filter(|p| !models.iter().any(|m| super::glob(p, m)))
            .map(|p| format!("the model pattern `{p}` matches no model of the catalog"))
            .collect()
    }

    /// Creates a key: its record, and its secret (shown this once).
    pub async fn create(&self, spec: KeySpec) -> Result<(Arc<KeyEntry>, String), GatewayError> {
        let name = spec
            .name
            .clone()
            .ok_or_else(|| GatewayError::invalid("a key needs a `name`").with_param("name"))?;
        let tenant = spec
            .tenant
            .clone()
            .unwrap_or_else(|| super::DEFAULT_TENANT.to_string());
        check_slug("tenant", &tenant)?;
        let secret = new_secret()?;
        let now = self.clock.now_ms();
        let mut record = KeyRecord {
            id: format!("key_{}", Uuid::now_v7().simple()),
            name,
            tenant,
            digest: digest_hex(&secret),
            prefix: secret.chars().take(8).collect(),
            created_ms: now,
            expires_ms: None,
            revoked_ms: None,
            models: Vec::new(),
            agents: Vec::new(),
            limits: Limits::default(),
        };
        apply(&mut record, spec, now)?;
        let _writing = self.writing.lock().await;
        let tenant_keys = self
            .by_digest
            .load()
            .values()
            .filter(|e| e.record.tenant == record.tenant)
            .count();
        if tenant_keys >= MAX_KEYS {
            return Err(GatewayError::invalid(format!(
                "a tenant has at most {MAX_KEYS} keys: revoke some first"
            )));
        }
        self.store.put(&record).await.map_err(storage)?;
        let entry = Arc::new(new_entry(record));
        self.publish(|map| {
            map.insert(entry.record.digest.clone(), entry.clone());
        });
        Ok((entry, secret))
    }

    /// Changes a key's name, expiry, allowlists or limits (its tenant and secret stay).
    pub async fn update(&self, id: &str, spec: KeySpec) -> Result<Arc<KeyEntry>, GatewayError> {
        let _writing = self.writing.lock().await;
        let old = self.get(id).ok_or_else(|| no_key(id))?;
        if spec
            .tenant
            .as_ref()
            .is_some_and(|t| *t != old.record.tenant)
        {
            return Err(
                GatewayError::invalid("a key's tenant cannot change: create a new key")
                    .with_param("tenant"),
            );
        }
        if old.record.revoked_ms.is_some() {
            return Err(GatewayError::invalid(format!(
                "the key `{id}` is revoked: create a new key"
            )));
        }
        let mut record = old.record.clone();
        apply(&mut record, spec, self.clock.now_ms())?;
        self.store.put(&record).await.map_err(storage)?;
        old.subject.set_limits(record.limits.clone());
        let entry = Arc::new(KeyEntry {
            record,
            subject: old.subject.clone(),
            last_used_ms: AtomicU64::new(old.last_used_ms.load(Ordering::Relaxed)),
            persisted_last_used: AtomicU64::new(old.persisted_last_used.load(Ordering::Relaxed)),
        });
        self.publish(|map| {
            map.insert(entry.record.digest.clone(), entry.clone());
        });
        Ok(entry)
    }

    /// Revokes a key for good: it answers 401 from now on.
    pub async fn revoke(&self, id: &str) -> Result<Arc<KeyEntry>, GatewayError> {
        let _writing = self.writing.lock().await;
        let old = self.get(id).ok_or_else(|| no_key(id))?;
        if old.record.revoked_ms.is_some() {
            return Ok(old);
        }
        let mut record = old.record.clone();
        record.revoked_ms = Some(self.clock.now_ms());
        self.store.put(&record).await.map_err(storage)?;
        let entry = Arc::new(KeyEntry {
            record,
            subject: old.subject.clone(),
            last_used_ms: AtomicU64::new(old.last_used_ms.load(Ordering::Relaxed)),
            persisted_last_used: AtomicU64::new(old.persisted_last_used.load(Ordering::Relaxed)),
        });
        self.publish(|map| {
            map.insert(entry.record.digest.clone(), entry.clone());
        });
        Ok(entry)
    }

    /// Reads the keys again: a key made, changed or revoked through another instance on the
    /// same database takes effect here (called twice a second; a no-op on an embedded store).
    pub async fn refresh(&self) -> Result<(), StorageError> {
        if !self.store.shared() {
            // Every change went through this registry: nothing to read.
            return Ok(());
        }
        let records = self.store.all().await?;
        let _writing = self.writing.lock().await;
        let current = self.by_digest.load();
        let mut changed = records.len() != current.len();
        let mut map = HashMap::with_capacity(records.len());
        for record in records {
            let entry = match current.get(&record.digest) {
                Some(entry) if entry.record == record => entry.clone(),
                Some(entry) => {
                    changed = true;
                    entry.subject.set_limits(record.limits.clone());
                    Arc::new(KeyEntry {
                        record,
                        subject: entry.subject.clone(),
                        last_used_ms: AtomicU64::new(entry.last_used_ms.load(Ordering::Relaxed)),
                        persisted_last_used: AtomicU64::new(
                            entry.persisted_last_used.load(Ordering::Relaxed),
                        ),
                    })
                }
                None => {
                    changed = true;
                    Arc::new(new_entry(record))
                }
            };
            map.insert(entry.record.digest.clone(), entry);
        }
        if changed {
            self.by_digest.store(Arc::new(map));
        }
        Ok(())
    }

    fn publish(&self, change: impl FnOnce(&mut HashMap<String, Arc<KeyEntry>>)) {
        let mut map = HashMap::clone(&self.by_digest.load());
        change(&mut map);
        self.by_digest.store(Arc::new(map));
    }

    /// Writes the usage that changed since the last call (spend, last use).
    pub async fn persist_usage(&self) -> Result<(), StorageError> {
        let mut changed = Vec::new();
        for entry in self.by_digest.load().values() {
            let last = entry.last_used_ms.load(Ordering::Relaxed);
            let used = entry.persisted_last_used.swap(last, Ordering::Relaxed) != last;
            let spends = match entry.subject.take_dirty() {
                Some(spends) => spends,
                None if used => entry.subject.spends(),
                None => continue,
            };
            changed.push((
                subject_of_key(&entry.record.id),
                SubjectUsage {
                    spends,
                    last_used_ms: (last > 0).then_some(last),
                },
            ));
        }
        for (name, subject) in self.tenants.iter() {
            if let Some(spends) = subject.take_dirty() {
                changed.push((
                    subject_of_tenant(name),
                    SubjectUsage {
                        spends,
                        last_used_ms: None,
                    },
                ));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.store.put_usage(&changed).await
    }

    /// Every key's and tenant's counters (for metrics).
    pub fn subjects(&self) -> Vec<Arc<Subject>> {
        self.by_digest
            .load()
            .values()
            .map(|e| e.subject.clone())
            .chain(self.tenants.values().cloned())
            .collect()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// What `GET /api/keys/self` shows to a caller.
    pub async fn own_view(&self, caller: &Caller) -> serde_json::Value {
        let key = match &caller.key {
            Some(k) => Some(self.view(k).await),
            None => None,
        };
        let tenant = match self.tenants.get(&caller.tenant) {
            Some(s) => Some(self.usage_view(s).await),
            None => None,
        };
        serde_json::json!({"tenant": caller.tenant, "key": key, "tenant_limits": tenant})
    }
}

fn new_entry(record: KeyRecord) -> KeyEntry {
    let subject = Subject::new(
        subject_of_key(&record.id),
        format!("key `{}`", record.name),
        record.limits.clone(),
    );
    KeyEntry {
        record,
        subject: Arc::new(subject),
        last_used_ms: AtomicU64::new(0),
        persisted_last_used: AtomicU64::new(0),
    }
}

fn no_key(id: &str) -> GatewayError {
    GatewayError::not_found(format!("no key `{}`", crate::error::excerpt(id, 80)))
}

fn check_slug(field: &str, value: &str) -> Result<(), GatewayError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(
            GatewayError::invalid(format!("`{field}` must be a slug (a-z, 0-9, - and _)"))
                .with_param(field.to_string()),
        )
    }
}

/// Applies a create or patch body to a record, checking every field.
fn apply(record: &mut KeyRecord, spec: KeySpec, now: u64) -> Result<(), GatewayError> {
    if let Some(name) = spec.name {
        if name.trim().is_empty() || name.chars().count() > MAX_NAME {
            return Err(GatewayError::invalid(format!(
                "`name` must be 1 to {MAX_NAME} characters"
            ))
            .with_param("name"));
        }
        record.name = name;
    }
    if let Some(expires) = spec.expires_at {
        record.expires_ms = match expires {
            None => None,
            Some(text) => {
                let at = humantime::parse_rfc3339_weak(&text)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .ok_or_else(|| {
                        GatewayError::invalid("`expires_at` must be an RFC 3339 time")
                            .with_param("expires_at")
                    })?;
                if at <= now {
                    return Err(GatewayError::invalid("`expires_at` is in the past")
                        .with_param("expires_at"));
                }
                Some(at)
            }
        };
    }
    if let Some(models) = spec.models {
        check_patterns("models", &models)?;
        record.models = models;
    }
    if let Some(agents) = spec.agents {
        check_patterns("agents", &agents)?;
        record.agents = agents;
    }
    if let Some(rpm) = spec.rpm {
        if rpm == Some(0) {
            return Err(
                GatewayError::invalid("`rpm` must be at least 1 (or null)").with_param("rpm")
            );
        }
        record.limits.rpm = rpm;
    }
    if let Some(tpm) = spec.tpm {
        if tpm == Some(0) {
            return Err(
                GatewayError::invalid("`tpm` must be at least 1 (or null)").with_param("tpm")
            );
        }
        record.limits.tpm = tpm;
    }
    if let Some(max_parallel) = spec.max_parallel {
        if max_parallel == Some(0) {
            return Err(
                GatewayError::invalid("`max_parallel` must be at least 1 (or null)")
                    .with_param("max_parallel"),
            );
        }
        record.limits.max_parallel = max_parallel;
    }
    if let Some(budgets) = spec.budgets {
        check_budgets(&budgets)?;
        record.limits.budgets = budgets;
    }
    Ok(())
}
