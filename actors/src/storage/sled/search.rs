//! Runs search on sled: facets for the categorical fields, time from the ids, and the shared
//! matcher for the rest — with nothing written for it but a few bytes on each run's entry in its
//! agent's list, because every run is written on the recorder's thread and index entries there
//! cost more CPU than the request itself (measured with `perf` under `bench/run.sh` load: six
//! index lists, then two, took 15% of flowgate's CPU).
//!
//! * Facets: status, cache, source, a hash of the model and of the version, and the provider,
//!   packed in ~30 bytes ([`facets`]), are the value of the run's entry in its agent's list
//!   in `runs_by_agent` (`tenant \0 agent \0`, then the run id: `packs.rs`), so a filter on
//!   them is checked without reading the run.
//! * `runs_values` (`tenant \0 agent \0 field-code value`) and `runs_agents` (`tenant \0
//!   agent`): which values and agents exist, written once each (for a search UI, and so that
//!   a search over all of a tenant's agents knows which lists to merge). Not the versions:
//!   without templates every distinct prompt is a version, and an entry each (written, then
//!   deleted by retention, on hash-ordered keys) took a third of sled's files in
//!   `bench/memory.sh`; a search UI gets the agent's versions, newest first, from their time
//!   ordered records (`versions.rs`, which retention keeps to the versions with runs).
//! * Run ids are UUIDv7: a `created_at` range is an id range, and newest-first is reverse key
//!   order.
//!
//! * Free text: a trigram filter per block of runs (`text_blocks.rs`) tells which id ranges
//!   may hold a word; the others are never read.
//!
//! A search walks its agents' lists newest first (merged), passes over the entries whose facets
//! fail a filter (or outside the ranges that may hold its words), and reads and checks the
//! others with the shared matcher (free text first as a byte search over the stored record). A
//! search across all agents with no facet filter, or for a word with none, reads the runs
//! themselves in key order instead (within those ranges). A page stops after `limit` matches, or after
//! [`SCAN_BUDGET`] entries or [`TIME_BUDGET`] — then it says so and its cursor resumes the scan.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use uuid::Uuid;

use super::packs::{Entry, Packs, Scan};
use super::run_files::RunRecords;
use super::text_blocks::{IdRange, TextBlocks};
use super::versions::SledVersionStore;
use super::{agent_prefix, backend};
use crate::agents::FeedbackRecord;
use crate::recorder::run::{RunRecord, RunSummary};
use crate::search::{
    id_bounds, Field, Filter, IndexedField, Operand, Operator, RunFacts, RunQuery, TextNeedle,
};
use crate::storage::{SearchPage, SearchScope, StorageError};

/// Candidates read for one page at most, and for how long.
pub const SCAN_BUDGET: usize = 2_000_000;
pub const TIME_BUDGET: std::time::Duration = std::time::Duration::from_millis(900);
/// Matches counted for `count` at most, and entries read to count them; past either the
/// count is a lower bound.
pub const COUNT_BOUND: usize = 1_000;
pub const COUNT_SCAN: usize = 20_000;
/// Agents merged in one all-agents search at most.
pub const MAX_AGENTS: usize = 10_000;
/// Marks an index built for every run stored before it existed.
const BUILT_MARK: &[u8] = b"\xff\xffbuilt-v3";
/// Marks `runs_values` cleared of the versions earlier releases filed there.
const NO_VERSIONS_MARK: &[u8] = b"\xff\xffno-versions-v1";

/// The values of a run by categorical field written to `runs_values` (the version's are not).
fn indexed_values(run: &RunRecord) -> impl Iterator<Item = (IndexedField, &str)> {
    let model = run.model.as_deref().unwrap_or(&run.requested_model);
    [
        (IndexedField::Status, Some(run.status.as_str())),
        (IndexedField::Model, Some(model)),
        (IndexedField::Provider, run.provider.as_deref()),
        (IndexedField::Cache, Some(run.cache.as_str())),
        (IndexedField::Source, Some(run.source.as_str())),
    ]
    .into_iter()
    .filter_map(|(field, value)| Some((field, value.filter(|v| !v.is_empty())?)))
}

const FACETS_V2: u8 = 2;
const STATUSES: [&str; 3] = ["success", "error", "cancelled"];
const CACHES: [&str; 4] = ["bypass", "miss", "hit", "coalesced"];
// Append only: stored facets hold the index.
const SOURCES: [&str; 4] = ["api", "playground", "replay", "benchmark"];
/// Where the provider's length is; its bytes follow.
const PROVIDER_AT: usize = 20;

fn code_of(list: &[&str], value: &str) -> u8 {
    list.iter()
        .position(|v| *v == value)
        .unwrap_or(u8::MAX as usize) as u8
}

/// A 64-bit hash of a model or version name (0: none). Only ever compared with hashes this
/// binary makes, and a match is confirmed on the run itself.
fn name_hash(name: Option<&str>) -> u64 {
    match name {
        None | Some("") => 0,
        Some(name) => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
            u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()).max(1)
        }
    }
}

/// A run's facets: `[2, status, cache, source, model hash (8), version hash (8), provider
/// length, provider…]`.
pub(super) fn facets(run: &RunRecord) -> Vec<u8> {
    let provider = run.provider.as_deref().unwrap_or("");
    let provider = &provider.as_bytes()[..provider.len().min(255)];
    let model = run.model.as_deref().unwrap_or(&run.requested_model);
    let mut out = Vec::with_capacity(PROVIDER_AT + 1 + provider.len());
    out.extend_from_slice(&[
        FACETS_V2,
        code_of(&STATUSES, run.status.as_str()),
        code_of(&CACHES, run.cache.as_str()),
        code_of(&SOURCES, run.source.as_str()),
    ]);
    out.extend_from_slice(&name_hash(Some(model)).to_le_bytes());
    out.extend_from_slice(&name_hash(run.version_id.as_deref()).to_le_bytes());
    out.push(provider.len() as u8);
    out.extend_from_slice(provider);
    out
}

/// The name hashes of a filter's text operands, made once per search (hashing them for each
/// entry read took a tenth of a filtered page: `perf`, `bench/ui.sh`).
fn operand_hashes(filter: &Filter) -> Vec<u64> {
    filter
        .operands
        .iter()
        .filter_map(|o| match o {
            Operand::Text(t) => Some(name_hash(Some(t))),
            _ => None,
        })
        .collect()
}

/// What a filter says of facets: `None` when the facets cannot tell (another field or
/// operator, a version named by environment, or an entry written without facets). `hashes`:
/// [`operand_hashes`] of the filter.
fn facet_answer(filter: &Filter, hashes: &[u64], facets: &[u8]) -> Option<bool> {
    if facets.len() <= PROVIDER_AT || facets[0] != FACETS_V2 {
        return None;
    }
    if !matches!(filter.operator, Operator::Is | Operator::IsNot) {
        return None;
    }
    let texts = || {
        filter.operands.iter().filter_map(|o| match o {
            Operand::Text(t) => Some(t.as_str()),
            _ => None,
        })
    };
    let hashed = |at: usize| -> Option<bool> {
        if filter
            .operands
            .iter()
            .any(|o| !matches!(o, Operand::Text(_)))
        {
            return None;
        }
        let stored = u64::from_le_bytes(facets[at..at + 8].try_into().ok()?);
        Some(stored != 0 && hashes.contains(&stored))
    };
    let listed = match filter.field {
        Field::Model => hashed(4)?,
        Field::Version => hashed(12)?,
        Field::Status | Field::Cache | Field::Source | Field::Provider => {
            let value: &str = match filter.field {
                Field::Status => STATUSES.get(facets[1] as usize)?,
                Field::Cache => CACHES.get(facets[2] as usize)?,
                Field::Source => SOURCES.get(facets[3] as usize)?,
                _ => {
                    let len = facets[PROVIDER_AT] as usize;
                    std::str::from_utf8(facets.get(PROVIDER_AT + 1..PROVIDER_AT + 1 + len)?).ok()?
                }
            };
            !value.is_empty() && texts().any(|t| t == value)
        }
        _ => return None,
    };
    Some(match filter.operator {
        Operator::Is => listed,
        _ => !listed,
    })
}

/// The search indexes of the runs' database.
#[derive(Clone)]
pub struct SearchIndex {
    agents: ::sled::Tree,
    values: ::sled::Tree,
    /// The versions (`versions.rs`): the values of `version`.
    versions: SledVersionStore,
    feedback: ::sled::Tree,
    /// Which blocks of runs may hold a word (`text_blocks.rs`).
    pub(super) text: TextBlocks,
    /// The keys already in `agents` and `values` (bounded: cleared past [`MAX_KNOWN`]).
    known: Arc<Mutex<HashSet<Vec<u8>>>>,
}

/// Keys of `agents` and `values` remembered as written, at most.
const MAX_KNOWN: usize = 100_000;

impl SearchIndex {
    pub(super) fn open(db: &::sled::Db, runs: &RunRecords) -> Result<SearchIndex, StorageError> {
        Ok(SearchIndex {
            agents: db.open_tree("runs_agents").map_err(backend)?,
            values: db.open_tree("runs_values").map_err(backend)?,
            versions: SledVersionStore::trees(db)?,
            feedback: db.open_tree("run_feedback").map_err(backend)?,
            text: TextBlocks::open(db, runs)?,
            known: Arc::default(),
        })
    }

    /// Notes the values and the agent of a stored run (written once each): one lock and one
    /// key buffer a run (the recorder calls this for every run).
    pub(super) fn add(&self, run: &RunRecord) -> Result<(), StorageError> {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = agent_prefix(&run.tenant, &run.agent);
        let prefix = key.len();
        debug_assert_eq!(key.last(), Some(&0), "an agent prefix ends with \\0");
        for (field, value) in indexed_values(run) {
            key.truncate(prefix);
            key.push(field.code());
            key.extend_from_slice(value.as_bytes());
            Self::once(&mut known, &self.values, &key)?;
        }
        // The agent's key: `tenant \0 agent`, the prefix without its last `\0`.
        Self::once(&mut known, &self.agents, &key[..prefix - 1])
    }

    /// Writes `key` to `tree` unless this process already did.
    fn once(
        known: &mut HashSet<Vec<u8>>,
        tree: &::sled::Tree,
        key: &[u8],
    ) -> Result<(), StorageError> {
        if !known.contains(key) {
            tree.insert(key, &[] as &[u8]).map_err(backend)?;
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(key.to_vec());
        }
        Ok(())
    }

    /// Indexes the runs stored before the index existed (once per data directory).
    pub(super) fn build_once(
        &self,
        runs: &RunRecords,
        by_agent: &Packs,
    ) -> Result<(), StorageError> {
        self.forget_versions_once()?;
        if self.values.contains_key(BUILT_MARK).map_err(backend)? {
            return Ok(());
        }
        let mut n = 0u64;
        let mut listed: Vec<(Vec<u8>, [u8; 16], Vec<u8>)> = Vec::new();
        // A thousand runs at a time: one insert per agent and second of ids (`packs.rs`).
        let list = |listed: &mut Vec<(Vec<u8>, [u8; 16], Vec<u8>)>| {
            let written = by_agent.insert_batch(
                listed
                    .iter()
                    .map(|(prefix, id, facets)| (prefix.as_slice(), *id, facets.as_slice())),
            );
            listed.clear();
            written
        };
        for entry in runs.iter() {
            let (_, bytes) = entry?;
            match serde_json::from_slice::<RunRecord>(&bytes) {
                Ok(run) => {
                    let prefix = agent_prefix(&run.tenant, &run.agent);
                    listed.push((prefix, *run.id.as_bytes(), facets(&run)));
                    if listed.len() == 1024 {
                        list(&mut listed)?;
                    }
                    self.add(&run)?;
                    n += 1;
                }
                Err(e) => tracing::warn!(error = %e, "a stored run cannot be read: not indexed"),
            }
        }
        list(&mut listed)?;
        if n > 0 {
            tracing::info!(runs = n, "indexed the runs stored by an earlier release");
        }
        self.values
            .insert(BUILT_MARK, &[] as &[u8])
            .map_err(backend)?;
        Ok(())
    }

    /// Deletes the versions' entries of `runs_values` that earlier releases wrote (once per
    /// data directory).
    fn forget_versions_once(&self) -> Result<(), StorageError> {
        if self
            .values
            .contains_key(NO_VERSIONS_MARK)
            .map_err(backend)?
        {
            return Ok(());
        }
        let mut n = 0u64;
        for key in self.values.iter().keys() {
            let key = key.map_err(backend)?;
            // `tenant \0 agent \0 code value`: the byte after the second NUL.
            let mut nuls = key.iter().enumerate().filter(|(_, b)| **b == 0);
            let code_at = nuls.nth(1).map(|(at, _)| at + 1);
            if code_at.and_then(|at| key.get(at)) == Some(&IndexedField::Version.code()) {
                self.values.remove(&key).map_err(backend)?;
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                entries = n,
                "deleted the versions' search values of an earlier release"
            );
        }
        self.values
            .insert(NO_VERSIONS_MARK, &[] as &[u8])
            .map_err(backend)?;
        Ok(())
    }

    /// The values a categorical field has among an agent's runs (for a search UI), at most
    /// `max`; for `version`, the agent's versions, newest first.
    pub(super) fn values(
        &self,
        tenant: &str,
        agent: &str,
        field: IndexedField,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        if field == IndexedField::Version {
            return self.versions.newest_ids(tenant, agent, max);
        }
        let mut prefix = agent_prefix(tenant, agent);
        prefix.push(field.code());
        let mut values = Vec::new();
        for key in self.values.scan_prefix(&prefix).keys().take(max) {
            let key = key.map_err(backend)?;
            values.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(values)
    }

    /// A tenant's agents.
    fn agents_of(&self, tenant: &str) -> Result<Vec<String>, StorageError> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut agents = Vec::new();
        for entry in self.agents.scan_prefix(&prefix).keys().take(MAX_AGENTS) {
            let key = entry.map_err(backend)?;
            agents.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(agents)
    }

    fn feedback_of(&self, id: &Uuid) -> Result<Option<&'static str>, StorageError> {
        let mut outcome = None;
        for entry in self.feedback.scan_prefix(id.as_bytes()).values() {
            let bytes = entry.map_err(backend)?;
            if let Ok(record) = serde_json::from_slice::<FeedbackRecord>(&bytes) {
                outcome = Some(match record.outcome {
                    crate::agents::Outcome::Positive => "positive",
                    crate::agents::Outcome::Negative => "negative",
                });
            }
        }
        Ok(outcome)
    }

    /// The runs of `agents`, newest first, with their facets: their lists merged.
    fn candidates(&self, by_agent: &Packs, tenant: &str, agents: &[String]) -> Source {
        Source::Any(
            agents
                .iter()
                .map(|agent| Source::list(by_agent, agent_prefix(tenant, agent)))
                .collect(),
        )
    }

    /// One page of a search.
    pub(super) fn search(
        &self,
        runs: &RunRecords,
        by_agent: &Packs,
        scope: &SearchScope,
        query: &RunQuery,
    ) -> Result<SearchPage, StorageError> {
        let agents = match &scope.agent {
            Some(agent) => vec![agent.clone()],
            None => self.agents_of(&scope.tenant)?,
        };
        // Below the cursor, within the time range.
        let (from_ms, to_ms) = query.time_range();
        let mut upper = *id_bounds(to_ms).1.as_bytes();
        if let Some(cursor) = query.cursor {
            upper = upper.min(*cursor.as_bytes());
        } else {
            // `upper` itself is a possible id: start just above it.
            upper = increment(upper);
        }
        let lower = *id_bounds(from_ms).0.as_bytes();
        // The filters the facets answer (probed on facets of the right shape).
        let probe = [FACETS_V2; PROVIDER_AT + 1];
        let by_facets: Vec<(&Filter, Vec<u64>)> = query
            .filters
            .iter()
            .map(|f| (f, operand_hashes(f)))
            .filter(|(f, hashes)| facet_answer(f, hashes, &probe).is_some())
            .collect();
        let facets_fail = |facets: &[u8]| {
            by_facets
                .iter()
                .any(|(f, hashes)| facet_answer(f, hashes, facets) == Some(false))
        };
        let mut stream = self.candidates(by_agent, &scope.tenant, &agents);
        // Where a run holding the query's words may be, newest first (`None`: anywhere).
        let word_ranges = if query.text_words().is_empty() {
            None
        } else {
            self.text.ranges(&query.text_words(), lower, upper)?
        };
        let texts: Vec<TextNeedle> = query
            .filters
            .iter()
            .filter(|f| f.field == Field::Text && f.operator == Operator::Contains)
            .filter_map(|f| {
                // One needle a filter: a run must hold one of its values. Only a single-value
                // filter can skip a record before it is parsed.
                match f.operands.as_slice() {
                    [crate::search::Operand::Text(t)]
                        if !t.chars().any(|c| c == '"' || c == '\\' || c.is_control()) =>
                    {
                        Some(TextNeedle::new(t))
                    }
                    _ => None,
                }
            })
            .collect();
        let needs_feedback = query.needs_feedback();
        // Every filter answered by the facets and the id range: counting reads no run.
        let only_facets = query.filters.iter().all(|f| {
            by_facets.iter().any(|(g, _)| std::ptr::eq(*g, f))
                || (f.time_range().is_some() && f.field == Field::CreatedAt)
        });

        let mut items = Vec::with_capacity(query.limit);
        let mut scanned = 0usize;
        let mut below = upper;
        let mut more = false;
        let mut budget_spent = false;
        let started = Instant::now();
        // Stops the page: full (one more candidate shows there is more), or out of budget.
        let mut stop = |items: &Vec<RunSummary>, scanned: usize| {
            if items.len() == query.limit {
                return true;
            }
            if scanned >= SCAN_BUDGET
                || (scanned % 1024 == 1023 && started.elapsed() >= TIME_BUDGET)
            {
                budget_spent = true;
                return true;
            }
            false
        };
        let check = Check {
            scope,
            query,
            texts: &texts,
            needs_feedback,
        };
        // With no facet to narrow the lists, every candidate is read anyway: across all agents,
        // or for a word in one agent's runs, one pass over the runs themselves, newest first,
        // is cheaper than walking the lists and looking each run up; other tenants' (and
        // agents') runs are passed over before they are parsed.
        if by_facets.is_empty() && (scope.agent.is_none() || !texts.is_empty()) {
            let owner = owner_needle(&scope.tenant, scope.agent.as_deref());
            // A word: only the blocks of runs whose filters may hold it.
            let ranges = word_ranges
                .clone()
                .unwrap_or_else(|| vec![(lower, increment_back(upper))]);
            let mut page = Pass {
                items: Vec::new(),
                scanned: 0,
                below: upper,
                more: false,
                budget_spent: false,
            };
            for (low, high) in ranges {
                let range = low.to_vec()..increment(high).to_vec();
                if self.pass(
                    runs,
                    range,
                    &owner,
                    &check,
                    started + TIME_BUDGET,
                    &mut page,
                )? {
                    break;
                }
            }
            items = page.items;
            scanned = page.scanned;
            below = page.below;
            more = page.more;
            budget_spent = page.budget_spent;
        } else {
            let mut word_ranges_left = word_ranges.as_deref();
            // Candidates come newest first: each bucket of pointers is decoded once.
            let mut lookup = runs.lookup();
            while let Some((id, facets)) = stream.next_below(&below)? {
                if id < lower {
                    break;
                }
                if stop(&items, scanned) {
                    more = true;
                    break;
                }
                // Every candidate at or above `below` has been looked at.
                below = id;
                scanned += 1;
                if facets_fail(&facets) || !may_hold(&mut word_ranges_left, &id) {
                    continue;
                }
                let Some(bytes) = lookup.get(&id)? else {
                    continue;
                };
                if let Some(item) = self.examine(&bytes, &check)? {
                    items.push(item);
                }
            }
        }
        let next_cursor = more.then(|| Uuid::from_bytes(below).to_string());
        // The count: exact when every filter is answered by the indexes and the candidates
        // fit the bound; else what the scan saw, extrapolated.
        let (count, count_is_exact) = if only_facets {
            let mut counter = self.candidates(by_agent, &scope.tenant, &agents);
            let (mut n, mut read) = (0usize, 0usize);
            let mut at = increment(*id_bounds(to_ms).1.as_bytes());
            let mut whole = true;
            while let Some((id, facets)) = counter.next_below(&at)? {
                if id < lower {
                    break;
                }
                // The count shares the page's time budget: a tenant with many agents merges
                // many lists, and the answer is a lower bound past it.
                let late = read % 1024 == 1023 && started.elapsed() >= TIME_BUDGET;
                if n == COUNT_BOUND || read == COUNT_SCAN || late {
                    whole = false;
                    break;
                }
                read += 1;
                if !facets_fail(&facets) {
                    n += 1;
                }
                at = id;
            }
            (n as u64, whole)
        } else if !more {
            (items.len() as u64, query.cursor.is_none())
        } else {
            (items.len() as u64, false)
        };
        Ok(SearchPage {
            items,
            next_cursor,
            count,
            count_is_exact,
            scanned: scanned as u64,
            scan_limit_reached: budget_spent,
        })
    }
}

/// What one pass over the runs found.
struct Pass {
    items: Vec<RunSummary>,
    scanned: usize,
    /// The last run looked at (every run from here up was).
    below: [u8; 16],
    /// The pass stopped before the end of its range.
    more: bool,
    budget_spent: bool,
}

impl SearchIndex {
    /// One pass over the runs in `range`, newest first, adding to `pass` until `limit` matches
    /// (and one candidate more), [`SCAN_BUDGET`] runs read in all or the deadline. True when
    /// the page is done.
    fn pass(
        &self,
        runs: &RunRecords,
        range: std::ops::Range<Vec<u8>>,
        owner: &[u8],
        check: &Check<'_>,
        deadline: Instant,
        pass: &mut Pass,
    ) -> Result<bool, StorageError> {
        for entry in runs.range_rev(range) {
            let (key, bytes) = entry?;
            if pass.items.len() == check.query.limit {
                pass.more = true;
                return Ok(true);
            }
            if pass.scanned >= SCAN_BUDGET
                || (pass.scanned % 1024 == 1023 && Instant::now() >= deadline)
            {
                pass.more = true;
                pass.budget_spent = true;
                return Ok(true);
            }
            pass.below = id_of(&key, 0);
            pass.scanned += 1;
            let head = &bytes[..bytes.len().min(OWNER_WINDOW)];
            if memchr::memmem::find(head, owner).is_none() {
                continue;
            }
            if let Some(item) = self.examine(&bytes, check)? {
                pass.items.push(item);
            }
        }
        Ok(false)
    }
}

/// What a candidate is checked against.
struct Check<'a> {
    scope: &'a SearchScope,
    query: &'a RunQuery,
    /// Words every matching record holds (a byte search before it is parsed).
    texts: &'a [TextNeedle],
    needs_feedback: bool,
}

impl SearchIndex {
    /// A stored run, if it matches: its summary.
    fn examine(&self, bytes: &[u8], check: &Check<'_>) -> Result<Option<RunSummary>, StorageError> {
        if !check.texts.iter().all(|needle| needle.is_in_bytes(bytes)) {
            return Ok(None);
        }
        let Ok(run) = serde_json::from_slice::<RunRecord>(bytes) else {
            return Ok(None);
        };
        if run.tenant != check.scope.tenant {
            return Ok(None);
        }
        let feedback = if check.needs_feedback {
            self.feedback_of(&run.id)?
        } else {
            None
        };
        let facts = RunFacts {
            run: &run,
            feedback,
        };
        Ok(check
            .query
            .filters
            .iter()
            .all(|f| f.matches(&facts))
            .then(|| RunSummary::from(&run)))
    }
}

/// How far into a stored run its tenant is looked for (it follows the id).
const OWNER_WINDOW: usize = 256;

/// `"tenant":"<tenant>",` (then `"agent":"<agent>",`) as a stored run spells it: the fields
/// follow the id in this order.
fn owner_needle(tenant: &str, agent: Option<&str>) -> Vec<u8> {
    let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut needle = format!("\"tenant\":{},", json(tenant));
    if let Some(agent) = agent {
        needle.push_str(&format!("\"agent\":{},", json(agent)));
    }
    needle.into_bytes()
}

/// The next id above `id` (for an exclusive upper bound that includes `id`).
fn increment(id: [u8; 16]) -> [u8; 16] {
    let n = u128::from_be_bytes(id);
    n.saturating_add(1).to_be_bytes()
}

/// Whether `id` is in one of `ranges` (newest first), for ids asked newest first: the ranges
/// above it are dropped. `None`: any id may be.
fn may_hold(ranges: &mut Option<&[IdRange]>, id: &[u8; 16]) -> bool {
    let Some(left) = ranges else {
        return true;
    };
    while let Some(((low, _), rest)) = left.split_first() {
        if low <= id {
            break;
        }
        *left = rest;
    }
    left.first()
        .is_some_and(|(low, high)| low <= id && id <= high)
}

/// The id below `id` (the inclusive end of a range that ends before `id`).
fn increment_back(id: [u8; 16]) -> [u8; 16] {
    u128::from_be_bytes(id).saturating_sub(1).to_be_bytes()
}

/// A candidate: a run id and its facets (an entry of its agent's list).
type Candidate = Entry;

/// A stream of run ids (with their facets), newest first, that can start below any id.
enum Source {
    /// One agent's list (`packs.rs`: ids with their facets).
    List(Box<List>),
    /// The union of streams.
    Any(Vec<Source>),
}

struct List {
    packs: Packs,
    prefix: Vec<u8>,
    /// A newest-first iterator that stands just after `last`.
    iter: Option<Scan>,
    /// The newest entry of the list strictly below `bound` (`None`: there is none).
    last: Option<Candidate>,
    bound: [u8; 16],
}

/// How many entries a list walks to reach a bound before it opens a new range instead.
const WALK: usize = 8;

impl Source {
    fn list(packs: &Packs, prefix: Vec<u8>) -> Source {
        Source::List(Box::new(List {
            packs: packs.clone(),
            prefix,
            iter: None,
            last: None,
            bound: [0; 16],
        }))
    }

    /// The newest entry strictly below `below`.
    fn next_below(&mut self, below: &[u8; 16]) -> Result<Option<Candidate>, StorageError> {
        match self {
            Source::List(list) => list.next_below(below),
            Source::Any(sources) => {
                let mut best: Option<Candidate> = None;
                for source in sources.iter_mut() {
                    if let Some(found) = source.next_below(below)? {
                        if best.as_ref().is_none_or(|b| found.0 > b.0) {
                            best = Some(found);
                        }
                    }
                }
                Ok(best)
            }
        }
    }
}

impl List {
    fn next_below(&mut self, below: &[u8; 16]) -> Result<Option<Candidate>, StorageError> {
        if self.iter.is_some() && *below <= self.bound {
            match &self.last {
                // Nothing below the bound, so nothing below `below`.
                None => return Ok(None),
                // The newest below the bound is below `below` too: the newest below it.
                Some(last) if last.0 < *below => return Ok(Some(last.clone())),
                // Older entries are wanted: walk on a few steps.
                Some(_) => {
                    for _ in 0..WALK {
                        let next = match self.iter.as_mut().and_then(Iterator::next) {
                            None => None,
                            Some(entry) => Some(entry?),
                        };
                        self.last = next.clone();
                        self.bound = *below;
                        match next {
                            None => return Ok(None),
                            Some(found) if found.0 < *below => return Ok(Some(found)),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        // Open a range that ends at `below`.
        let mut iter = self.packs.below(&self.prefix, below);
        let next = match iter.next() {
            None => None,
            Some(entry) => Some(entry?),
        };
        self.iter = Some(iter);
        self.bound = *below;
        self.last = next.clone();
        Ok(next)
    }
}

fn id_of(key: &[u8], prefix: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    let tail = &key[prefix.min(key.len())..];
    let n = tail.len().min(16);
    id[..n].copy_from_slice(&tail[..n]);
    id
}

/// Distinct categorical values, for `…/search/fields`.
pub(super) fn values_by_field(
    index: &SearchIndex,
    tenant: &str,
    agent: Option<&str>,
    max: usize,
) -> Result<HashMap<IndexedField, Vec<String>>, StorageError> {
    let agents = match agent {
        Some(agent) => vec![agent.to_string()],
        None => index.agents_of(tenant)?,
    };
    let mut out: HashMap<IndexedField, Vec<String>> = HashMap::new();
    for field in IndexedField::ALL {
        let values = out.entry(field).or_default();
        for agent in &agents {
            for value in index.values(tenant, agent, field, max)? {
                if !values.contains(&value) && values.len() < max {
                    values.push(value);
                }
            }
        }
        values.sort();
    }
    Ok(out)
}
