//! Versions: a stable hash of the properties that shape the answer (model, message TEMPLATES,
//! temperature, max tokens, top_p, tools, tool_choice, response format, reasoning, provider).
//! Two runs with the same templates and parameters share a version whatever their `input`; a
//! version is what gets deployed. The recorder keeps each version's usage statistics.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{agent_prefix, bounded_insert, hash_json, hex, now_rfc3339, AgentStore, PendingStats};
use crate::error::GatewayError;

/// New versions kept in memory at most until the recorder writes them; past it a new version
/// is written by its request (and while the store is away, that request gets the 503).
const MAX_UNSTORED_VERSIONS: usize = 10_000;
/// Versions the writer sends to the store at once.
const UNSTORED_VERSIONS_AT_ONCE: usize = 8;
/// Versions one recorder batch writes at most (the rest go with the next): a turn of the
/// recorder stays short whatever waits.
const UNSTORED_VERSIONS_PER_BATCH: usize = 1024;

/// A new version, answered before it is written: the recorder writes it (before the runs that
/// name it are counted in its statistics), and so does any read of the agent's versions.
#[derive(Clone)]
pub(super) struct UnstoredVersion {
    tenant: String,
    agent: String,
    record: VersionRecord,
}
use crate::recorder::run::{RunRecord, RunStatus};
use crate::storage::{StorageError, VersionCursor, VersionKey};
use crate::wire::{ChatRequest, Message, ResponseFormat, Tool, ToolChoice};

/// What shapes the answer. Metadata, streaming, caching and fallback options do not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionProperties {
    /// A catalog model id (with a reasoning-effort suffix when one was asked for).
    pub model: String,
    /// The message templates, before rendering.
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// The properties, borrowed: what the id hashes, so that a request is versioned without copying
/// its messages. Field for field the serialization of [`VersionProperties`].
#[derive(Serialize)]
struct Shape<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
}

impl<'a> Shape<'a> {
    fn of_request(model: &'a str, request: &'a ChatRequest) -> Shape<'a> {
        Shape {
            model,
            messages: &request.messages,
            temperature: request.temperature,
            max_tokens: request.max_tokens.or(request.max_completion_tokens),
            top_p: request.top_p,
            tools: request.tools.as_ref(),
            tool_choice: request.tool_choice.as_ref(),
            response_format: request.response_format.as_ref(),
            reasoning_effort: request.reasoning_effort.as_deref(),
            reasoning: request.reasoning.as_ref(),
            provider: request.provider.as_deref(),
        }
    }

    /// 32 hex digits of the SHA-256 of the JSON of the properties.
    fn id(&self) -> String {
        let mut hasher = Sha256::new();
        hash_json(&mut hasher, self);
        let digest = hasher.finalize();
        hex(&digest[..16])
    }
}

impl VersionProperties {
    /// The version of a request whose messages are still templates.
    pub fn of(model: &str, request: &ChatRequest) -> VersionProperties {
        VersionProperties {
            model: model.to_string(),
            messages: request.messages.clone(),
            temperature: request.temperature,
            max_tokens: request.max_tokens.or(request.max_completion_tokens),
            top_p: request.top_p,
            tools: request.tools.clone(),
            tool_choice: request.tool_choice.clone(),
            response_format: request.response_format.clone(),
            reasoning_effort: request.reasoning_effort.clone(),
            reasoning: request.reasoning.clone(),
            provider: request.provider.clone(),
        }
    }

    /// 32 hex digits of the SHA-256 of the JSON of the properties.
    pub fn id(&self) -> String {
        Shape {
            model: &self.model,
            messages: &self.messages,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            top_p: self.top_p,
            tools: self.tools.as_ref(),
            tool_choice: self.tool_choice.as_ref(),
            response_format: self.response_format.as_ref(),
            reasoning_effort: self.reasoning_effort.as_deref(),
            reasoning: self.reasoning.as_ref(),
            provider: self.provider.as_deref(),
        }
        .id()
    }

    /// These properties with the parameters the request sets itself (a deployment caller's
    /// overrides). The messages stay the version's.
    pub fn overridden_by(&self, request: &ChatRequest) -> VersionProperties {
        VersionProperties {
            model: self.model.clone(),
            messages: self.messages.clone(),
            temperature: request.temperature.or(self.temperature),
            max_tokens: request
                .max_tokens
                .or(request.max_completion_tokens)
                .or(self.max_tokens),
            top_p: request.top_p.or(self.top_p),
            tools: request.tools.clone().or_else(|| self.tools.clone()),
            tool_choice: request
                .tool_choice
                .clone()
                .or_else(|| self.tool_choice.clone()),
            response_format: request
                .response_format
                .clone()
                .or_else(|| self.response_format.clone()),
            reasoning_effort: request
                .reasoning_effort
                .clone()
                .or_else(|| self.reasoning_effort.clone()),
            reasoning: request.reasoning.clone().or_else(|| self.reasoning.clone()),
            provider: request.provider.clone().or_else(|| self.provider.clone()),
        }
    }

    /// Makes `request` one of this version: its model and shaping parameters, and its message
    /// templates ahead of the request's own messages (a continuation of the conversation).
    pub fn template_onto(&self, request: &mut ChatRequest) {
        self.apply_to(request);
        let trailing = std::mem::take(&mut request.messages);
        request.messages = self.messages.clone();
        request.messages.extend(trailing);
    }

    /// Sets the request's model and shaping parameters to these (not its messages).
    pub fn apply_to(&self, request: &mut ChatRequest) {
        request.model = self.model.clone();
        request.temperature = self.temperature;
        if request.max_tokens.is_none() && request.max_completion_tokens.is_none() {
            request.max_tokens = self.max_tokens;
        }
        request.top_p = self.top_p;
        request.tools = self.tools.clone();
        request.tool_choice = self.tool_choice.clone();
        request.response_format = self.response_format.clone();
        request.reasoning_effort = self.reasoning_effort.clone();
        request.reasoning = self.reasoning.clone();
        request.provider = self.provider.clone();
    }
}

/// A version of an agent, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    pub id: String,
    /// The schema of the run that created the version: what a deployment of it serves unless
    /// the deploy names another.
    pub schema_id: u32,
    pub created_at: String,
    pub properties: VersionProperties,
}

/// A version's usage, from its recorded runs: its lifetime figures. Retention leaves them as
/// they are when it deletes runs: first and last use cannot be taken back without the runs,
/// and a version's page says how much it was used (not how many of its runs are still
/// stored). When retention deletes a version's last run it deletes the version with them,
/// unless a deployment names it ([`LastRuns`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionStats {
    pub run_count: u64,
    pub error_count: u64,
    pub cost_usd: f64,
    pub total_duration_seconds: f64,
    pub first_used_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl VersionStats {
    /// Whether the version was used after `at` (an RFC 3339 time, a run's `created_at`), as
    /// far as these statistics say; `true` when either time does not read as one, so that a
    /// caller deleting unused versions keeps it.
    pub fn used_after(&self, at: &str) -> bool {
        let millis = |at: &str| -> Option<u128> {
            let time = humantime::parse_rfc3339_weak(at).ok()?;
            Some(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis())
        };
        match (self.last_used_at.as_deref().and_then(millis), millis(at)) {
            (Some(last_use), Some(at)) => last_use > at,
            _ => true,
        }
    }

    /// Adds `other`'s runs to these (the earliest first use, the latest last use).
    pub fn add(&mut self, other: &VersionStats) {
        self.run_count += other.run_count;
        self.error_count += other.error_count;
        self.cost_usd += other.cost_usd;
        self.total_duration_seconds += other.total_duration_seconds;
        if let Some(at) = &other.first_used_at {
            set_if(&mut self.first_used_at, at, |first| at.as_str() < first);
        }
        if let Some(at) = &other.last_used_at {
            set_if(&mut self.last_used_at, at, |last| at.as_str() > last);
        }
    }
}

/// The versions of the runs a retention batch deletes, each with the start (`created_at`) of
/// its newest run among them: a version whose recorded last use is no later has no run left
/// ([`VersionStats::used_after`]), and retention deletes it unless a deployment names it.
#[derive(Debug, Default)]
pub struct LastRuns(pub HashMap<VersionKey, String>);

impl LastRuns {
    /// Notes a deleted run.
    pub fn note(&mut self, run: &RunRecord) {
        let Some(version_id) = run.version_id.as_deref().filter(|v| !v.is_empty()) else {
            return;
        };
        let key = VersionKey {
            tenant: run.tenant.clone(),
            agent: run.agent.clone(),
            version_id: version_id.to_string(),
        };
        let noted = self.0.entry(key).or_insert_with(|| run.created_at.clone());
        if run.created_at > *noted {
            noted.clone_from(&run.created_at);
        }
    }
}

/// What the versions listing shows.
#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    #[serde(flatten)]
    pub record: VersionRecord,
    pub stats: VersionStats,
    pub average_duration_seconds: Option<f64>,
    pub average_cost_usd: Option<f64>,
}

impl VersionSummary {
    fn new(record: VersionRecord, stats: VersionStats) -> VersionSummary {
        let n = stats.run_count as f64;
        VersionSummary {
            average_duration_seconds: (stats.run_count > 0)
                .then(|| stats.total_duration_seconds / n),
            average_cost_usd: (stats.run_count > 0).then(|| stats.cost_usd / n),
            record,
            stats,
        }
    }
}

/// The in-memory key of a version record.
pub(super) fn memo_key(tenant: &str, agent: &str, id: &str) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(id.as_bytes());
    key
}

fn stats_key(tenant: &str, agent: &str, id: &str) -> VersionKey {
    VersionKey {
        tenant: tenant.to_string(),
        agent: agent.to_string(),
        version_id: id.to_string(),
    }
}

impl AgentStore {
    /// The version of a request whose messages are still templates, stored if it is new (by
    /// the recorder, see [`Self::store_version`]). Known versions cost one hash of the
    /// request, no copy and no store access.
    pub async fn version_of_request(
        &self,
        tenant: &str,
        agent: &str,
        model: &str,
        request: &ChatRequest,
        schema_id: u32,
    ) -> Result<String, GatewayError> {
        let id = Shape::of_request(model, request).id();
        let key = memo_key(tenant, agent, &id);
        if self.inner.cache.versions.contains_key(&key) {
            return Ok(id);
        }
        let properties = VersionProperties::of(model, request);
        self.store_version(tenant, agent, key, id, &properties, schema_id)
            .await
    }

    /// Stores the version if it is new; returns its id.
    pub async fn ensure_version(
        &self,
        tenant: &str,
        agent: &str,
        properties: &VersionProperties,
        schema_id: u32,
    ) -> Result<String, GatewayError> {
        let id = properties.id();
        let key = memo_key(tenant, agent, &id);
        if self.inner.cache.versions.contains_key(&key) {
            return Ok(id);
        }
        self.store_version(tenant, agent, key, id, properties, schema_id)
            .await
    }

    /// Keeps version `id` (of `properties`) for the recorder to write, which leaves a version
    /// the store has as it is (the first writer wins). The request neither reads nor writes
    /// the store: distinct prompts without templates make a version each, and their lookups
    /// and writes go in the recorder's batches. On a store other instances read
    /// ([`crate::storage::VersionStore::shared`]) the request writes it, as it does while too
    /// many wait.
    async fn store_version(
        &self,
        tenant: &str,
        agent: &str,
        key: Vec<u8>,
        id: String,
        properties: &VersionProperties,
        schema_id: u32,
    ) -> Result<String, GatewayError> {
        if self.unstored_versions_lock().contains_key(&key) {
            return Ok(id);
        }
        let record = VersionRecord {
            id,
            schema_id,
            created_at: now_rfc3339(),
            properties: properties.clone(),
        };
        if self.inner.versions.shared() {
            match self.inner.versions.insert(tenant, agent, &record).await {
                Ok(stored) => {
                    let id = stored.id.clone();
                    bounded_insert(&self.inner.cache.versions, key, Arc::new(stored));
                    return Ok(id);
                }
                // The id is the properties' hash, so the request goes on: kept until the
                // store answers (bounded: past it, the 503).
                Err(StorageError::Unavailable(e)) => {
                    if self.unstored_versions_lock().len() >= MAX_UNSTORED_VERSIONS {
                        return Err(StorageError::Unavailable(e).into());
                    }
                    tracing::warn!(agent, version = %record.id, error = %e, "version kept in memory until the store answers");
                }
                Err(e) => return Err(e.into()),
            }
        }
        {
            let mut unstored = self.unstored_versions_lock();
            if unstored.len() < MAX_UNSTORED_VERSIONS || unstored.contains_key(&key) {
                let id = record.id.clone();
                unstored.entry(key).or_insert_with(|| UnstoredVersion {
                    tenant: tenant.to_string(),
                    agent: agent.to_string(),
                    record,
                });
                return Ok(id);
            }
        }
        // The writer is that far behind: this request writes its version itself, the first
        // writer winning.
        let stored = self.inner.versions.insert(tenant, agent, &record).await?;
        let id = stored.id.clone();
        bounded_insert(&self.inner.cache.versions, key, Arc::new(stored));
        Ok(id)
    }

    pub(super) fn has_unstored_versions(&self) -> bool {
        !self.unstored_versions_lock().is_empty()
    }

    fn unstored_versions_lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, UnstoredVersion>> {
        self.inner
            .unstored_versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the versions answered and not yet written whose key starts with `scope` (an
    /// agent's prefix, a version's key), or, with none, up to [`UNSTORED_VERSIONS_PER_BATCH`]
    /// of them: the recorder calls it before it counts a batch's runs, the readers of an
    /// agent's versions and `deploy` before they read. Several at once; a version is answered
    /// from memory until its write succeeds. While the store is away the rest wait for the
    /// next call; a version the store refuses otherwise is dropped (logged), so that it
    /// cannot fail every later call; the first error is returned.
    pub(super) async fn store_unstored_versions(
        &self,
        scope: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let waiting: Vec<(Vec<u8>, UnstoredVersion)> = {
            let unstored = self.unstored_versions_lock();
            if unstored.is_empty() {
                return Ok(());
            }
            let in_scope = unstored
                .iter()
                .filter(|(k, _)| scope.is_none_or(|prefix| k.starts_with(prefix)));
            let limit = if scope.is_some() {
                usize::MAX
            } else {
                UNSTORED_VERSIONS_PER_BATCH
            };
            in_scope
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut first_error = None;
        for group in waiting.chunks(UNSTORED_VERSIONS_AT_ONCE) {
            let written =
                futures::future::join_all(group.iter().map(|(key, version)| async move {
                    let stored = self
                        .inner
                        .versions
                        .insert(&version.tenant, &version.agent, &version.record)
                        .await?;
                    // The stored record (the first writer's, on a race) is the one answered next.
                    bounded_insert(&self.inner.cache.versions, key.clone(), Arc::new(stored));
                    self.unstored_versions_lock().remove(key);
                    Ok::<(), StorageError>(())
                }))
                .await;
            for ((key, version), result) in group.iter().zip(written) {
                match result {
                    Ok(()) => {}
                    Err(e @ StorageError::Unavailable(_)) => return Err(e),
                    Err(e) => {
                        tracing::error!(agent = %version.agent, version = %version.record.id, error = %e, "the store refused a new version: dropped");
                        self.unstored_versions_lock().remove(key);
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The version's record: the stored one (the first writer's) when the store has it, else
    /// the one this instance answered and has not written yet.
    pub async fn version(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
    ) -> Result<Option<Arc<VersionRecord>>, GatewayError> {
        let key = memo_key(tenant, agent, id);
        if let Some(record) = self.inner.cache.versions.get(&key) {
            return Ok(Some(record.clone()));
        }
        let unstored = self
            .unstored_versions_lock()
            .get(&key)
            .map(|unstored| Arc::new(unstored.record.clone()));
        let record = match self.inner.versions.get(tenant, agent, id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(unstored),
            Err(_) if unstored.is_some() => return Ok(unstored),
            Err(e) => return Err(e.into()),
        };
        let record = Arc::new(record);
        bounded_insert(&self.inner.cache.versions, key, record.clone());
        Ok(Some(record))
    }

    /// The version's statistics: the recorder's latest, whether or not they are written yet.
    pub async fn version_stats(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
    ) -> Result<VersionStats, GatewayError> {
        let key = stats_key(tenant, agent, id);
        // Not beside a write of the pending statistics: a write that ended between reading the
        // store and reading the pending ones would leave its runs in neither.
        let _gate = self.inner.stats_gate.read().await;
        let mut stats = self.inner.versions.stats(&key).await?.unwrap_or_default();
        // What this instance observed and has not added to the store yet.
        if let Some(pending) = self.pending_stats_lock().get(&key) {
            pending.add_to(&mut stats);
        }
        Ok(stats)
    }

    /// The agent's versions with their statistics, most recently used first.
    pub async fn versions(
        &self,
        tenant: &str,
        agent: &str,
    ) -> Result<Vec<VersionSummary>, GatewayError> {
        self.store_unstored_versions(Some(&agent_prefix(tenant, agent)))
            .await?;
        let records = self.inner.versions.list(tenant, agent).await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let stats = self.version_stats(tenant, agent, &record.id).await?;
            out.push(VersionSummary::new(record, stats));
        }
        out.sort_by(|a, b| {
            b.stats
                .last_used_at
                .cmp(&a.stats.last_used_at)
                .then_with(|| b.record.created_at.cmp(&a.record.created_at))
        });
        Ok(out)
    }

    /// A page of the agent's versions, newest first, with their statistics (the recorder's
    /// latest, as [`Self::version_stats`]); the cursor of the next page.
    pub async fn versions_page(
        &self,
        tenant: &str,
        agent: &str,
        after: Option<&VersionCursor>,
        limit: usize,
    ) -> Result<(Vec<VersionSummary>, Option<VersionCursor>), GatewayError> {
        self.store_unstored_versions(Some(&agent_prefix(tenant, agent)))
            .await?;
        // Not beside a write of the pending statistics (see `version_stats`).
        let _gate = self.inner.stats_gate.read().await;
        let page = self
            .inner
            .versions
            .page(tenant, agent, after, limit)
            .await?;
        let pending = self.pending_stats_lock();
        let items = page
            .items
            .into_iter()
            .map(|(record, stored)| {
                let key = stats_key(tenant, agent, &record.id);
                let mut stats = stored.unwrap_or_default();
                if let Some(p) = pending.get(&key) {
                    p.add_to(&mut stats);
                }
                VersionSummary::new(record, stats)
            })
            .collect();
        Ok((items, page.next_cursor))
    }

    /// One version with its statistics.
    pub async fn version_summary(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
    ) -> Result<Option<VersionSummary>, GatewayError> {
        let Some(record) = self.version(tenant, agent, id).await? else {
            return Ok(None);
        };
        let stats = self.version_stats(tenant, agent, id).await?;
        Ok(Some(VersionSummary::new((*record).clone(), stats)))
    }

    pub(super) fn pending_stats_lock(&self) -> MutexGuard<'_, HashMap<VersionKey, PendingStats>> {
        // The map is consistent after any panic (every update is a whole value): keep going.
        self.inner
            .pending_stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a recorded run to its version's statistics, in memory: the first run of a version
    /// since the last write starts from the stored statistics.
    /// Counts a recorded run in its version's statistics, in memory until the next write.
    pub(super) fn add_run_to_stats(&self, version_id: &str, run: &RunRecord) {
        let key = stats_key(&run.tenant, &run.agent, version_id);
        let mut pending = self.pending_stats_lock();
        let stats = &mut pending.entry(key).or_default().stats;
        stats.run_count += 1;
        if run.status != RunStatus::Success {
            stats.error_count += 1;
        }
        stats.cost_usd += run.cost_usd;
        stats.total_duration_seconds += run.duration_seconds;
        let at = &run.created_at;
        set_if(&mut stats.first_used_at, at, |first| at.as_str() < first);
        set_if(&mut stats.last_used_at, at, |last| at.as_str() > last);
    }

    /// Adds the statistics observed since the last write to the stored ones, in one batch:
    /// instances sharing a store each add their own runs, none overwrites another's. What
    /// cannot be written stays in memory for the next write.
    pub(super) async fn write_pending_stats(&self) -> Result<(), StorageError> {
        // One write at a time: a scheduled write and a flush never send the same runs twice.
        let _gate = self.inner.stats_gate.write().await;
        let batch: Vec<(VersionKey, VersionStats)> = {
            let mut pending = self.pending_stats_lock();
            pending
                .iter_mut()
                .filter(|(_, p)| p.stats.run_count > 0)
                .map(|(key, p)| {
                    let delta = std::mem::take(&mut p.stats);
                    p.writing = Some(delta.clone());
                    (key.clone(), delta)
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let written = self.inner.versions.add_stats(&batch).await;
        let mut pending = self.pending_stats_lock();
        for (key, _) in &batch {
            if let Some(p) = pending.get_mut(key) {
                if let Some(writing) = p.writing.take() {
                    if written.is_err() {
                        p.stats.add(&writing);
                    }
                }
            }
        }
        pending.retain(|_, p| p.stats.run_count > 0 || p.writing.is_some());
        written
    }
}

/// Sets `slot` to `at` when it is empty or `replaces` its value, reusing its allocation.
fn set_if(slot: &mut Option<String>, at: &str, replaces: impl FnOnce(&str) -> bool) {
    match slot {
        Some(current) if replaces(current) => {
            current.clear();
            current.push_str(at);
        }
        Some(_) => {}
        None => *slot = Some(at.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn the_id_hashes_templates_and_shaping_parameters_only() {
        let a = request(json!({
            "model": "x", "messages": [{"role": "user", "content": "Hi {{ name }}"}],
            "temperature": 0.5, "input": {"name": "A"}, "metadata": {"k": 1}, "stream": true
        }));
        let mut b = a.clone();
        b.input = Some(json!({"name": "B"}).as_object().unwrap().clone());
        b.metadata = None;
        b.stream = None;
        let va = VersionProperties::of("gpt-4o-mini-latest", &a);
        assert_eq!(
            va.id(),
            VersionProperties::of("gpt-4o-mini-latest", &b).id()
        );
        assert_eq!(va.id().len(), 32);
        b.temperature = Some(0.6);
        assert_ne!(
            va.id(),
            VersionProperties::of("gpt-4o-mini-latest", &b).id()
        );
        assert_ne!(va.id(), VersionProperties::of("other-model", &a).id());
        // Hashing the borrowed request and the stored properties agree.
        assert_eq!(Shape::of_request("gpt-4o-mini-latest", &a).id(), va.id());
        let full = request(json!({
            "model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.1,
            "max_completion_tokens": 9, "top_p": 0.5, "reasoning_effort": "low", "provider": "p",
            "reasoning": {"effort": "low"}, "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"
        }));
        assert_eq!(
            Shape::of_request("m", &full).id(),
            VersionProperties::of("m", &full).id()
        );
        let mut c = a.clone();
        c.messages[0].content = Some(crate::wire::MessageContent::Text("Hi {{ who }}".into()));
        assert_ne!(
            va.id(),
            VersionProperties::of("gpt-4o-mini-latest", &c).id()
        );
    }

    #[test]
    fn request_parameters_override_the_version() {
        let base = VersionProperties::of(
            "m",
            &request(json!({"model": "x", "messages": [], "temperature": 0.1, "max_tokens": 10})),
        );
        let caller = request(json!({"model": "a/#1/prod", "messages": [], "temperature": 0.9}));
        let merged = base.overridden_by(&caller);
        assert_eq!(merged.temperature, Some(0.9));
        assert_eq!(merged.max_tokens, Some(10));
        assert_eq!(merged.model, "m");
        let mut effective = caller.clone();
        merged.apply_to(&mut effective);
        assert_eq!(effective.model, "m");
        assert_eq!(effective.max_tokens, Some(10));
        // Not overridden: the same version.
        assert_eq!(
            base.overridden_by(&request(json!({"model": "a/#1/prod", "messages": []})))
                .id(),
            base.id()
        );
    }

    #[actix_rt::test]
    async fn versions_are_stored_once_and_listed_with_stats() {
        let (_dir, storage) = crate::storage::temporary();
        let store = AgentStore::open(&storage);
        let props = VersionProperties::of(
            "m",
            &request(json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]})),
        );
        let id = store.ensure_version("t", "a", &props, 1).await.unwrap();
        assert_eq!(store.ensure_version("t", "a", &props, 2).await.unwrap(), id);
        // Answered from memory: the request did not write it, the recorder's write does.
        assert!(!is_stored(&storage, &id).await);
        assert_eq!(schema_of(&store, &id).await, 1);
        store.write_stats().await.unwrap();
        // The first record stays, in memory and in the store.
        assert_eq!(
            storage
                .versions
                .get("t", "a", &id)
                .await
                .unwrap()
                .unwrap()
                .schema_id,
            1
        );
        assert_eq!(schema_of(&store, &id).await, 1);
        let fresh = AgentStore::open(&storage);
        assert_eq!(fresh.ensure_version("t", "a", &props, 3).await.unwrap(), id);
        assert_eq!(
            fresh
                .version("t", "a", &id)
                .await
                .unwrap()
                .unwrap()
                .schema_id,
            1
        );
        let mut run: RunRecord = serde_json::from_value(json!({
            "id": uuid::Uuid::now_v7(), "tenant": "t", "agent": "a",
            "created_at": "2026-01-01T00:00:01.000Z", "status": "success",
            "requested_model": "m", "model": "m", "provider": null, "provider_model": null,
            "version_id": id, "stream": false, "request": null, "input": null, "output": null,
            "attempts": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "cost_usd": 0.25, "duration_seconds": 1.0, "cache": "bypass", "error": null,
            "metadata": null, "feedback_token": "x", "source_run_id": null
        }))
        .unwrap();
        assert!(store.observe(&[Box::new(run.clone())]).await.is_empty());
        run.created_at = "2026-01-01T00:00:00.000Z".into();
        run.status = RunStatus::Error;
        run.duration_seconds = 3.0;
        assert!(store.observe(&[Box::new(run)]).await.is_empty());
        let listed = store.versions("t", "a").await.unwrap();
        assert_eq!(listed.len(), 1);
        let s = &listed[0].stats;
        assert_eq!((s.run_count, s.error_count), (2, 1));
        assert!((s.cost_usd - 0.5).abs() < 1e-9);
        assert_eq!(listed[0].average_duration_seconds, Some(2.0));
        assert_eq!(s.first_used_at.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(s.last_used_at.as_deref(), Some("2026-01-01T00:00:01.000Z"));
        assert!(store.versions("t", "other").await.unwrap().is_empty());
    }

    /// The schema of version `id` of agent `a`, as the agent store answers it.
    async fn schema_of(store: &AgentStore, id: &str) -> u32 {
        store
            .version("t", "a", id)
            .await
            .unwrap()
            .unwrap()
            .schema_id
    }

    /// The version of one user message to model `m`.
    fn props_of(content: &str) -> VersionProperties {
        VersionProperties::of(
            "m",
            &request(json!({"model": "x", "messages": [{"role": "user", "content": content}]})),
        )
    }

    /// Whether the store (not this instance's memory) has version `id` of agent `a`.
    async fn is_stored(storage: &crate::storage::Storage, id: &str) -> bool {
        storage.versions.get("t", "a", id).await.unwrap().is_some()
    }

    #[actix_rt::test]
    async fn new_versions_are_written_before_the_agents_versions_are_read() {
        let (_dir, storage) = crate::storage::temporary();
        let store = AgentStore::open(&storage);
        let ids: Vec<String> = futures::future::join_all((0..20).map(|n| {
            let store = store.clone();
            async move {
                let props = props_of(&format!("prompt {n}"));
                store.ensure_version("t", "a", &props, 1).await.unwrap()
            }
        }))
        .await;
        for id in &ids {
            assert!(!is_stored(&storage, id).await);
        }
        let props = props_of("b's");
        let of_b = store.ensure_version("t", "b", &props, 1).await.unwrap();
        // A listing, a page and a deploy each see them: the first writes them all, and only
        // the agent's own.
        assert_eq!(store.versions("t", "a").await.unwrap().len(), 20);
        for id in &ids {
            assert!(is_stored(&storage, id).await);
        }
        let b_stored = || storage.versions.get("t", "b", &of_b);
        assert!(b_stored().await.unwrap().is_none());
        store.write_stats().await.unwrap();
        assert!(b_stored().await.unwrap().is_some());
        let props = props_of("late");
        let late = store.ensure_version("t", "a", &props, 1).await.unwrap();
        let (page, _) = store.versions_page("t", "a", None, 100).await.unwrap();
        assert_eq!(page.len(), 21);
        assert!(page.iter().any(|v| v.record.id == late));
        // A deployment names a stored version.
        let schema = store.schema_id("t", "a", None, &Value::Null).await.unwrap();
        let props = props_of("shipped");
        let shipped = store
            .ensure_version("t", "a", &props, schema)
            .await
            .unwrap();
        assert!(!is_stored(&storage, &shipped).await);
        store
            .deploy(
                "t",
                "a",
                &shipped,
                None,
                crate::model_ref::Environment::Production,
                "me",
            )
            .await
            .unwrap();
        assert!(is_stored(&storage, &shipped).await);
    }

    #[actix_rt::test]
    async fn statistics_count_at_once_and_are_stored_when_written() {
        let (dir, storage) = crate::storage::temporary();
        let id = {
            let store = AgentStore::open(&storage);
            let props = VersionProperties::of(
                "m",
                &request(json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]})),
            );
            let id = store.ensure_version("t", "a", &props, 1).await.unwrap();
            let key = stats_key("t", "a", &id);
            let run = |at: &str, cost: f64| -> RunRecord {
                serde_json::from_value(json!({
                    "id": uuid::Uuid::now_v7(), "tenant": "t", "agent": "a", "created_at": at,
                    "status": "success", "requested_model": "m", "model": "m", "provider": null,
                    "provider_model": null, "version_id": id, "stream": false, "request": null,
                    "input": null, "output": null, "attempts": [],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "cost_usd": cost,
                    "duration_seconds": 1.0, "cache": "bypass", "error": null, "metadata": null,
                    "feedback_token": "x", "source_run_id": null
                }))
                .unwrap()
            };
            assert!(store
                .observe(&[Box::new(run("2026-01-01T00:00:02.000Z", 0.5))])
                .await
                .is_empty());
            // Counted before it is written.
            assert!(store.has_pending_stats());
            assert!(storage.versions.stats(&key).await.unwrap().is_none());
            assert_eq!(
                store.version_stats("t", "a", &id).await.unwrap().run_count,
                1
            );
            store.write_stats().await.unwrap();
            assert!(!store.has_pending_stats());
            assert_eq!(
                storage
                    .versions
                    .stats(&key)
                    .await
                    .unwrap()
                    .unwrap()
                    .run_count,
                1
            );
            // The next runs start from the stored statistics.
            let later = [
                Box::new(run("2026-01-01T00:00:01.000Z", 0.25)),
                Box::new(run("2026-01-01T00:00:03.000Z", 0.25)),
            ];
            assert!(store.observe(&later).await.is_empty());
            let s = store.version_stats("t", "a", &id).await.unwrap();
            assert_eq!(s.run_count, 3);
            assert_eq!(s.first_used_at.as_deref(), Some("2026-01-01T00:00:01.000Z"));
            assert_eq!(s.last_used_at.as_deref(), Some("2026-01-01T00:00:03.000Z"));
            store.write_stats().await.unwrap();
            id
        };
        drop(storage);
        let store = AgentStore::open(&crate::storage::in_dir(dir.path()));
        let listed = store.versions("t", "a").await.unwrap();
        let s = &listed[0].stats;
        assert_eq!((s.run_count, s.error_count), (3, 0));
        assert!((s.cost_usd - 1.0).abs() < 1e-9);
        assert_eq!(s.last_used_at.as_deref(), Some("2026-01-01T00:00:03.000Z"));
        assert_eq!(listed[0].record.id, id);
    }
}
