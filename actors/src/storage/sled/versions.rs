//! The agents' versions on sled, on time-ordered keys. Every key starts with `tenant \0 agent
//! \0`:
//!
//! * `agent_versions_by_time`: `created_at \0 id` → the version record. A new version is an
//!   append at the end of its agent's range, a page of versions is one range read, and
//!   retention, which deletes the versions of the oldest runs, deletes near the front;
//! * `agent_version_stats_by_time`: the same key → the version's statistics;
//! * `agent_version_ids`: `id` → `created_at`, where a version is for a lookup by id: the one
//!   tree on hash-ordered keys, and its entries are small;
//! * `agent_version_stats`: `id` → the statistics of a version that is not stored (yet). The
//!   next batch that finds the version stored adds them to its own, and a read adds them.
//!
//! Why time-ordered: an agent whose prompts are written per request (no templates) makes a
//! version per request. Earlier releases kept each record (~1 KB) and its statistics on
//! hash-ordered keys (`agent_versions` and `agent_version_stats`, keyed `id`). sled (0.34)
//! copies a whole leaf (16 entries) on every write, and writes whole leaves to its log. Writes
//! and deletes spread over every leaf kept them all in its cache and left every segment of its
//! log partly live. Under `bench/memory.sh` (1M requests) those versions cost about half the
//! gateway's CPU, ~70 MB of RSS and ~300 MB of sled's files. On time-ordered keys the same
//! soak's data directory peaked at 426–483 MB against 501–557 MB, with 10–24% less CPU
//! (`bench/README.md`, stop 30); RSS did not change. An earlier release's versions are moved
//! when the store opens (`agent_versions` is then dropped).
//!
//! As in `agents.rs`, no write uses a sled transaction or `Batch`: records are written in an
//! order whose every prefix is harmless, and the first writer of a version wins by a
//! compare-and-swap on its id's entry.

use std::collections::HashMap;

use futures::future::{ready, BoxFuture, FutureExt};

use super::agents::{decode, encode, SledDeploymentStore};
use super::{agent_prefix, backend, off_thread};
use crate::agents::{LastRuns, VersionRecord, VersionStats};
use crate::storage::{StorageError, VersionCursor, VersionKey, VersionPage, VersionStore};

/// `prefix id`: a version's entry in `agent_version_ids` (and in `agent_version_stats`).
fn id_key(tenant: &str, agent: &str, id: &str) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `prefix created_at \0 id`: a version's key in the time-ordered trees.
fn time_key(tenant: &str, agent: &str, created_at: &[u8], id: &str) -> Vec<u8> {
    time_key_of(&agent_prefix(tenant, agent), created_at, id.as_bytes())
}

fn time_key_of(prefix: &[u8], created_at: &[u8], id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + created_at.len() + 1 + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(created_at);
    key.push(0);
    key.extend_from_slice(id);
    key
}

/// Marks the move of an earlier release's versions done (past every agent's keys: a tenant's
/// name is UTF-8, which has no 0xff byte).
const MOVED: &[u8] = b"\xff\xffrecords-v2";

/// Tries of a version's first write that may lose a race (see [`SledVersionStore::insert_now`]).
const INSERT_TRIES: usize = 4;

/// Where a version is: its id's entry key and, when it is stored, its `created_at` (the id
/// entry's value) and its key in the time-ordered trees.
struct Placed {
    id_key: Vec<u8>,
    at: Option<(::sled::IVec, Vec<u8>)>,
}

/// What the move needs of an earlier release's record.
#[derive(serde::Deserialize)]
struct Created {
    created_at: String,
}

/// Versions and their statistics on time-ordered keys (see the module's doc). Cheap to clone.
#[derive(Clone)]
pub struct SledVersionStore {
    records: ::sled::Tree,
    stats: ::sled::Tree,
    ids: ::sled::Tree,
    unplaced_stats: ::sled::Tree,
}

impl SledVersionStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledVersionStore, StorageError> {
        let store = SledVersionStore::trees(db)?;
        store.move_earlier_release(db)?;
        Ok(store)
    }

    /// A handle on the trees, for a reader of another store (`search.rs`); [`Self::open`]
    /// opens the store.
    pub(super) fn trees(db: &::sled::Db) -> Result<SledVersionStore, StorageError> {
        Ok(SledVersionStore {
            records: db.open_tree("agent_versions_by_time").map_err(backend)?,
            stats: db
                .open_tree("agent_version_stats_by_time")
                .map_err(backend)?,
            ids: db.open_tree("agent_version_ids").map_err(backend)?,
            unplaced_stats: db.open_tree("agent_version_stats").map_err(backend)?,
        })
    }

    /// Moves the versions of an earlier release (`agent_versions`, keyed by id, with their
    /// statistics in `agent_version_stats`) to the time-ordered trees: once per data
    /// directory, and again if that tree is back (an earlier release ran on the directory
    /// since). A move cut short is done again: records and id entries are written as before,
    /// and statistics are added to the version's before they leave `agent_version_stats`
    /// (a crash between counts them twice rather than losing them).
    fn move_earlier_release(&self, db: &::sled::Db) -> Result<(), StorageError> {
        let earlier_name: &[u8] = b"agent_versions";
        let had_earlier = db.tree_names().iter().any(|name| name == earlier_name);
        if !had_earlier && self.records.contains_key(MOVED).map_err(backend)? {
            return Ok(());
        }
        let mut n = 0u64;
        if had_earlier {
            let earlier = db.open_tree(earlier_name).map_err(backend)?;
            for entry in earlier.iter() {
                let (key, bytes) = entry.map_err(backend)?;
                // `tenant \0 agent \0 id`
                let Some(split) = key
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == 0)
                    .nth(1)
                    .map(|(i, _)| i)
                else {
                    continue;
                };
                let created: Created = decode("version", &bytes)?;
                let placed = time_key_of(
                    &key[..=split],
                    created.created_at.as_bytes(),
                    &key[split + 1..],
                );
                self.records
                    .insert(placed.as_slice(), bytes)
                    .map_err(backend)?;
                self.ids
                    .insert(&key, created.created_at.as_bytes())
                    .map_err(backend)?;
                if let Some(bytes) = self.unplaced_stats.get(&key).map_err(backend)? {
                    let mut sum: VersionStats = match self.stats.get(&placed).map_err(backend)? {
                        Some(stored) => decode("version's statistics", &stored)?,
                        None => VersionStats::default(),
                    };
                    sum.add(&decode("version's statistics", &bytes)?);
                    self.stats
                        .insert(placed, encode("version's statistics", &sum)?)
                        .map_err(backend)?;
                    self.unplaced_stats.remove(&key).map_err(backend)?;
                }
                n += 1;
            }
        }
        // The earlier release's time index held no records: its entries (and its marker)
        // have empty values. The records just moved replaced those of versions it had.
        for entry in self.records.iter() {
            let (key, value) = entry.map_err(backend)?;
            if value.is_empty() {
                self.records.remove(key).map_err(backend)?;
            }
        }
        self.records.insert(MOVED, &[]).map_err(backend)?;
        if had_earlier {
            // What was moved is on disk before the tree it came from goes.
            db.flush().map_err(backend)?;
            db.drop_tree(earlier_name).map_err(backend)?;
        }
        if n > 0 {
            tracing::info!(
                versions = n,
                "moved the versions of an earlier release to time-ordered keys"
            );
        }
        Ok(())
    }

    /// Where version `id` is: one read of its id's entry.
    fn placed(&self, tenant: &str, agent: &str, id: &str) -> Result<Placed, StorageError> {
        let id_key = id_key(tenant, agent, id);
        let at = self.ids.get(&id_key).map_err(backend)?.map(|created_at| {
            let key = time_key(tenant, agent, &created_at, id);
            (created_at, key)
        });
        Ok(Placed { id_key, at })
    }

    /// The stored record of version `id`. An id's entry whose record is gone (a crash in the
    /// middle of retention's deletes) is deleted, so that the version can be stored again.
    fn find(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, StorageError> {
        let Placed {
            id_key,
            at: Some((created_at, key)),
        } = self.placed(tenant, agent, id)?
        else {
            return Ok(None);
        };
        match self.records.get(key).map_err(backend)? {
            Some(bytes) => decode("version", &bytes).map(Some),
            None => {
                self.ids
                    .compare_and_swap(&id_key, Some(created_at), None::<&[u8]>)
                    .map_err(backend)?
                    .ok();
                Ok(None)
            }
        }
    }

    /// Stores `record` unless its version is stored; returns the stored record (the first
    /// writer's).
    fn insert_now(
        &self,
        tenant: &str,
        agent: &str,
        record: &VersionRecord,
    ) -> Result<VersionRecord, StorageError> {
        // A lost race is tried again: a writer that lost to a version retention then deleted
        // has nothing to answer with. Each try ends unless another writer changed the id's
        // entry in between.
        for _ in 0..INSERT_TRIES {
            if let Some(stored) = self.find(tenant, agent, &record.id)? {
                return Ok(stored);
            }
            if let Some(stored) = self.try_insert(tenant, agent, record)? {
                return Ok(stored);
            }
        }
        Err(StorageError::Backend(format!(
            "version {} of agent {agent}: its id changed hands {INSERT_TRIES} times while it was stored",
            record.id
        )))
    }

    /// One try of [`Self::insert_now`] for a version `find` did not find: `None` when another
    /// writer's version won and is gone again.
    fn try_insert(
        &self,
        tenant: &str,
        agent: &str,
        record: &VersionRecord,
    ) -> Result<Option<VersionRecord>, StorageError> {
        let created_at = record.created_at.as_bytes();
        let placed = time_key(tenant, agent, created_at, &record.id);
        // The record first (a lookup by id does not find it until its id's entry names it),
        // then the id's entry. Both by compare-and-swap: a concurrent first writer wins and its
        // record is the answer.
        let mut answer = record.clone();
        if let Err(lost) = self
            .records
            .compare_and_swap(
                &placed,
                None::<&[u8]>,
                Some(encode("version", record)?.as_slice()),
            )
            .map_err(backend)?
        {
            // The same version made in the same millisecond: another writer's, whose id entry
            // may still be coming, or one a crash left without its id entry. Either way that
            // record stands, and the id entry below names it.
            if let Some(existing) = lost.current {
                answer = decode("version", &existing)?;
            }
        }
        match self
            .ids
            .compare_and_swap(
                id_key(tenant, agent, &record.id),
                None::<&[u8]>,
                Some(created_at),
            )
            .map_err(backend)?
        {
            Ok(()) => Ok(Some(answer)),
            Err(lost) => {
                let Some(winner) = lost.current else {
                    return Ok(Some(answer));
                };
                if winner.as_ref() == created_at {
                    return Ok(Some(answer));
                }
                // Another writer's version won: ours would list it twice.
                self.records.remove(&placed).map_err(backend)?;
                match self
                    .records
                    .get(time_key(tenant, agent, &winner, &record.id))
                    .map_err(backend)?
                {
                    Some(bytes) => decode("version", &bytes).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// Whether the record at `created_at` is the one version `id`'s entry names: a record a
    /// crash left behind (written before its id entry, or one retention was deleting) is
    /// not listed.
    fn named(
        &self,
        tenant: &str,
        agent: &str,
        id: &str,
        created_at: &[u8],
    ) -> Result<bool, StorageError> {
        let named = self.ids.get(id_key(tenant, agent, id)).map_err(backend)?;
        Ok(named.as_deref() == Some(created_at))
    }

    /// The ids of the agent's versions, newest first, at most `max` (a search's values).
    pub(super) fn newest_ids(
        &self,
        tenant: &str,
        agent: &str,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        let prefix = agent_prefix(tenant, agent);
        let mut ids = Vec::new();
        for key in self.records.scan_prefix(&prefix).keys().rev() {
            if ids.len() >= max {
                break;
            }
            let key = key.map_err(backend)?;
            let rest = &key[prefix.len()..];
            let Some(nul) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let (created_at, id) = (&rest[..nul], String::from_utf8_lossy(&rest[nul + 1..]));
            if self.named(tenant, agent, &id, created_at)? {
                ids.push(id.into_owned());
            }
        }
        Ok(ids)
    }

    /// The statistics at `placed` (the version's time-ordered key, when it is stored) with
    /// those kept under its id while it was not.
    fn stats_of(&self, placed: &Placed) -> Result<Option<VersionStats>, StorageError> {
        let mut sum: Option<VersionStats> = match &placed.at {
            Some((_, key)) => match self.stats.get(key).map_err(backend)? {
                Some(bytes) => Some(decode("version's statistics", &bytes)?),
                None => None,
            },
            None => None,
        };
        if let Some(bytes) = self.unplaced_stats.get(&placed.id_key).map_err(backend)? {
            let unplaced: VersionStats = decode("version's statistics", &bytes)?;
            sum.get_or_insert_with(VersionStats::default).add(&unplaced);
        }
        Ok(sum)
    }

    fn page_now(
        &self,
        tenant: &str,
        agent: &str,
        after: Option<&VersionCursor>,
        limit: usize,
    ) -> Result<VersionPage, StorageError> {
        let prefix = agent_prefix(tenant, agent);
        let end = match after {
            Some(c) => time_key(tenant, agent, c.created_at.as_bytes(), &c.id),
            None => {
                // Past every key of the prefix.
                let mut end = prefix.clone();
                end.push(0xff);
                end
            }
        };
        let mut items: Vec<(VersionRecord, Option<VersionStats>)> =
            Vec::with_capacity(limit.min(1000));
        let mut next_cursor = None;
        for entry in self.records.range(prefix..end).rev() {
            let (key, bytes) = entry.map_err(backend)?;
            if bytes.is_empty() {
                continue;
            }
            let record: VersionRecord = decode("version", &bytes)?;
            if !self.named(tenant, agent, &record.id, record.created_at.as_bytes())? {
                continue;
            }
            if items.len() == limit {
                let (last, _) = &items[items.len() - 1];
                next_cursor = Some(VersionCursor {
                    created_at: last.created_at.clone(),
                    id: last.id.clone(),
                });
                break;
            }
            let placed = Placed {
                id_key: id_key(tenant, agent, &record.id),
                at: Some((record.created_at.as_bytes().into(), key.to_vec())),
            };
            let stats = self.stats_of(&placed)?;
            items.push((record, stats));
        }
        Ok(VersionPage { items, next_cursor })
    }

    fn list_now(&self, tenant: &str, agent: &str) -> Result<Vec<VersionRecord>, StorageError> {
        let mut records = Vec::new();
        for bytes in self
            .records
            .scan_prefix(agent_prefix(tenant, agent))
            .values()
        {
            let bytes = bytes.map_err(backend)?;
            if bytes.is_empty() {
                continue;
            }
            let record: VersionRecord = decode("version", &bytes)?;
            if self.named(tenant, agent, &record.id, record.created_at.as_bytes())? {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn add_stats_now(&self, batch: &[(VersionKey, VersionStats)]) -> Result<(), StorageError> {
        /// Where a version's sum goes, and whether statistics kept under its id while it was
        /// not stored were added to it.
        struct Sum {
            placed: Placed,
            drains_unplaced: bool,
            stats: VersionStats,
        }
        // One process writes statistics (the recorder's thread): read, add, write.
        let mut sums: HashMap<Vec<u8>, Sum> = HashMap::new();
        for (key, stats) in batch {
            let id = id_key(&key.tenant, &key.agent, &key.version_id);
            if !sums.contains_key(&id) {
                let placed = self.placed(&key.tenant, &key.agent, &key.version_id)?;
                let unplaced = self.unplaced_stats.get(&id).map_err(backend)?;
                let drains_unplaced = placed.at.is_some() && unplaced.is_some();
                let stored = match &placed.at {
                    Some((_, placed)) => self.stats.get(placed).map_err(backend)?,
                    None => unplaced.clone(),
                };
                let mut sum = match stored {
                    Some(bytes) => decode("version's statistics", &bytes)?,
                    None => VersionStats::default(),
                };
                if drains_unplaced {
                    if let Some(bytes) = &unplaced {
                        sum.add(&decode("version's statistics", bytes)?);
                    }
                }
                sums.insert(
                    id.clone(),
                    Sum {
                        placed,
                        drains_unplaced,
                        stats: sum,
                    },
                );
            }
            if let Some(sum) = sums.get_mut(&id) {
                sum.stats.add(stats);
            }
        }
        // One insert per version, not a `sled::Batch` (see `agents.rs`' doc).
        for (id, sum) in sums {
            let bytes = encode("version's statistics", &sum.stats)?;
            match sum.placed.at {
                Some((created_at, placed)) => {
                    self.stats
                        .insert(placed.as_slice(), bytes.as_slice())
                        .map_err(backend)?;
                    if self.ids.get(&id).map_err(backend)? != Some(created_at) {
                        // Retention deleted the version since it was read: the sum goes
                        // under the id, as for a version not stored, and not beside a record
                        // that is gone.
                        self.stats.remove(placed).map_err(backend)?;
                        self.unplaced_stats.insert(id, bytes).map_err(backend)?;
                    } else if sum.drains_unplaced {
                        // After: a crash between counts them twice rather than losing them.
                        self.unplaced_stats.remove(&id).map_err(backend)?;
                    }
                }
                None => {
                    self.unplaced_stats.insert(id, bytes).map_err(backend)?;
                }
            }
        }
        Ok(())
    }

    /// Retention's part: deletes each version of `last_runs` (a version and the start of the
    /// newest of its runs that retention just deleted) whose recorded last use is no later,
    /// so that it has no run left, unless a deployment (current or past) names it. Its id's
    /// entry, its record and its statistics go; returns the versions deleted. Without this an
    /// agent whose prompts are written per request (no templates) keeps a version per run it
    /// ever served, and the store grows with them whatever retention does. A version without
    /// stored statistics (its first runs not yet written) stays.
    pub(super) fn drop_unused(
        &self,
        deployments: &SledDeploymentStore,
        last_runs: &LastRuns,
    ) -> Result<Vec<VersionKey>, StorageError> {
        let mut deployed: HashMap<(String, String), std::collections::HashSet<String>> =
            HashMap::new();
        let mut dropped = Vec::new();
        for (version, last_run) in &last_runs.0 {
            let placed = self.placed(&version.tenant, &version.agent, &version.version_id)?;
            let Some(stats) = self.stats_of(&placed)? else {
                continue;
            };
            if stats.used_after(last_run) {
                continue;
            }
            let agent = (version.tenant.clone(), version.agent.clone());
            let names = match deployed.entry(agent) {
                std::collections::hash_map::Entry::Occupied(names) => names.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(deployments.versions_named(&version.tenant, &version.agent)?)
                }
            };
            if names.contains(&version.version_id) {
                continue;
            }
            self.unplaced_stats
                .remove(&placed.id_key)
                .map_err(backend)?;
            let Some((created_at, key)) = placed.at else {
                continue;
            };
            // The record first: from then on a lookup or a listing does not find the version
            // (a crash after it leaves an id entry `find` deletes, and maybe statistics no
            // record has). The id's entry last, and only if it still names this record: a
            // writer storing the version again meanwhile keeps its own.
            self.records.remove(&key).map_err(backend)?;
            self.stats.remove(&key).map_err(backend)?;
            self.ids
                .compare_and_swap(&placed.id_key, Some(created_at), None::<&[u8]>)
                .map_err(backend)?
                .ok();
            dropped.push(version.clone());
        }
        Ok(dropped)
    }
}

impl VersionStore for SledVersionStore {
    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        record: &'a VersionRecord,
    ) -> BoxFuture<'a, Result<VersionRecord, StorageError>> {
        // Rare on the request path (the recorder writes new versions): in place.
        super::written(self.insert_now(tenant, agent, record))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, StorageError>> {
        ready(self.find(tenant, agent, id)).boxed()
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VersionRecord>, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || store.list_now(&tenant, &agent))
    }

    fn page<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        after: Option<&'a VersionCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<VersionPage, StorageError>> {
        let store = self.clone();
        let (tenant, agent, after) = (tenant.to_string(), agent.to_string(), after.cloned());
        off_thread(move || store.page_now(&tenant, &agent, after.as_ref(), limit))
    }

    fn stats<'a>(
        &'a self,
        key: &'a VersionKey,
    ) -> BoxFuture<'a, Result<Option<VersionStats>, StorageError>> {
        let read = || self.stats_of(&self.placed(&key.tenant, &key.agent, &key.version_id)?);
        ready(read()).boxed()
    }

    fn add_stats<'a>(
        &'a self,
        batch: &'a [(VersionKey, VersionStats)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Answered at once: the recorder writes on its own thread.
        super::written(self.add_stats_now(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::VersionProperties;

    fn record(id: &str, created_at: &str) -> VersionRecord {
        VersionRecord {
            id: id.into(),
            schema_id: 1,
            created_at: created_at.into(),
            properties: VersionProperties::of(
                "m",
                &serde_json::from_value(serde_json::json!({"model": "m", "messages": []})).unwrap(),
            ),
        }
    }

    fn stats(runs: u64, last_used_at: &str) -> VersionStats {
        VersionStats {
            run_count: runs,
            error_count: 0,
            cost_usd: 0.0,
            total_duration_seconds: 1.0,
            first_used_at: Some("2026-01-01T00:00:00.000Z".into()),
            last_used_at: Some(last_used_at.into()),
        }
    }

    fn key(id: &str) -> VersionKey {
        VersionKey {
            tenant: "t".into(),
            agent: "a".into(),
            version_id: id.into(),
        }
    }

    /// Agent `t`/`a`'s first page: each version's id and run count (`-`: no statistics).
    fn listed(store: &SledVersionStore) -> Vec<String> {
        let runs = |s: Option<VersionStats>| s.map_or("-".into(), |s| s.run_count.to_string());
        store
            .page_now("t", "a", None, 10)
            .unwrap()
            .items
            .into_iter()
            .map(|(r, s)| format!("{} {}", r.id, runs(s)))
            .collect()
    }

    fn keys(tree: &::sled::Tree) -> Vec<String> {
        tree.iter()
            .keys()
            .map(|k| String::from_utf8_lossy(&k.unwrap()).replace('\0', "|"))
            .collect()
    }

    /// Records and statistics are on time-ordered keys, whatever the order of the ids; the
    /// only entry keyed by id is the small one that says where the version is.
    #[test]
    fn versions_are_kept_in_the_order_they_were_made() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledVersionStore::open(&db).unwrap();
        for (id, second) in [("vc", 1), ("va", 2), ("vb", 3)] {
            let at = format!("2026-01-01T00:00:0{second}.000Z");
            store.insert_now("t", "a", &record(id, &at)).unwrap();
        }
        store
            .add_stats_now(&[(key("va"), stats(2, "2026-01-02T00:00:00.000Z"))])
            .unwrap();
        assert_eq!(
            keys(&db.open_tree("agent_versions_by_time").unwrap()),
            [
                "t|a|2026-01-01T00:00:01.000Z|vc",
                "t|a|2026-01-01T00:00:02.000Z|va",
                "t|a|2026-01-01T00:00:03.000Z|vb",
                "\u{fffd}\u{fffd}records-v2",
            ]
        );
        assert_eq!(
            keys(&store.stats),
            ["t|a|2026-01-01T00:00:02.000Z|va"],
            "the statistics beside their record"
        );
        assert_eq!(
            store.ids.get(b"t\0a\0va").unwrap().as_deref(),
            Some(&b"2026-01-01T00:00:02.000Z"[..])
        );
        assert!(store.unplaced_stats.is_empty());
        assert_eq!(
            store.find("t", "a", "va").unwrap(),
            Some(record("va", "2026-01-01T00:00:02.000Z"))
        );
        assert!(!db.tree_names().iter().any(|n| n == b"agent_versions"));
    }

    /// Statistics that come before their version are kept under its id, read with it, and
    /// moved beside the record by the first batch that finds it stored.
    #[test]
    fn statistics_before_their_version_are_kept_and_then_moved() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledVersionStore::open(&db).unwrap();
        let later = "2026-01-03T00:00:00.000Z";
        store.add_stats_now(&[(key("v"), stats(2, later))]).unwrap();
        assert_eq!(keys(&store.unplaced_stats), ["t|a|v"]);
        let read = |store: &SledVersionStore| {
            let placed = store.placed("t", "a", "v").unwrap();
            store.stats_of(&placed).unwrap().map(|s| s.run_count)
        };
        assert_eq!(read(&store), Some(2));
        store
            .insert_now("t", "a", &record("v", "2026-01-02T00:00:00.000Z"))
            .unwrap();
        assert_eq!(read(&store), Some(2), "read with the stored version");
        store.add_stats_now(&[(key("v"), stats(3, later))]).unwrap();
        assert_eq!(read(&store), Some(5));
        assert!(store.unplaced_stats.is_empty(), "moved beside the record");
        let page = store.page_now("t", "a", None, 10).unwrap();
        assert_eq!(page.items[0].1.as_ref().map(|s| s.run_count), Some(5));
    }

    /// A data directory of an earlier release (records and statistics keyed by id, a time
    /// index without values) is moved once: every version reads back with its statistics, in
    /// the same order, and statistics of a version never stored stay readable.
    #[test]
    fn an_earlier_releases_versions_are_moved_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::storage::sled::reopen_db(dir.path());
            let versions = db.open_tree("agent_versions").unwrap();
            let old_stats = db.open_tree("agent_version_stats").unwrap();
            let by_time = db.open_tree("agent_versions_by_time").unwrap();
            for (id, at) in [
                ("vz", "2026-01-01T00:00:01.000Z"),
                ("vy", "2026-01-01T00:00:02.000Z"),
            ] {
                let key = format!("t\0a\0{id}");
                versions
                    .insert(key.as_bytes(), serde_json::to_vec(&record(id, at)).unwrap())
                    .unwrap();
                by_time
                    .insert(format!("t\0a\0{at}\0{id}").as_bytes(), &[])
                    .unwrap();
            }
            // The index entry of a version a crash lost, and the index's marker.
            by_time
                .insert(b"t\0a\x002026-01-01T00:00:00.000Z\0vlost", &[])
                .unwrap();
            by_time.insert(b"\xff\xffbuilt-v1", &[]).unwrap();
            for (id, runs) in [("vz", 4), ("never-stored", 7)] {
                let stats = stats(runs, "2026-01-02T00:00:00.000Z");
                old_stats
                    .insert(
                        format!("t\0a\0{id}").as_bytes(),
                        serde_json::to_vec(&stats).unwrap(),
                    )
                    .unwrap();
            }
            db.flush().unwrap();
        }
        for _ in 0..2 {
            let db = crate::storage::sled::reopen_db(dir.path());
            let store = SledVersionStore::open(&db).unwrap();
            assert!(!db.tree_names().iter().any(|n| n == b"agent_versions"));
            assert_eq!(listed(&store), ["vy -", "vz 4"]);
            assert_eq!(
                store.find("t", "a", "vz").unwrap(),
                Some(record("vz", "2026-01-01T00:00:01.000Z"))
            );
            assert_eq!(store.find("t", "a", "vlost").unwrap(), None);
            assert_eq!(keys(&store.unplaced_stats), ["t|a|never-stored"]);
            assert_eq!(
                store
                    .stats_of(&store.placed("t", "a", "never-stored").unwrap())
                    .unwrap()
                    .map(|s| s.run_count),
                Some(7)
            );
            let mut ids = keys(&store.ids);
            ids.sort();
            assert_eq!(ids, ["t|a|vy", "t|a|vz"]);
            db.flush().unwrap();
        }
    }

    /// Retention deletes an unused version's id entry, record and statistics, and keeps one
    /// used after the runs it deleted.
    #[test]
    fn an_unused_version_goes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledVersionStore::open(&db).unwrap();
        let deployments = SledDeploymentStore::open(&db).unwrap();
        for id in ["old", "busy"] {
            store
                .insert_now("t", "a", &record(id, "2026-01-01T00:00:00.000Z"))
                .unwrap();
        }
        store
            .add_stats_now(&[
                (key("old"), stats(1, "2026-01-01T00:00:01.000Z")),
                (key("busy"), stats(9, "2026-01-05T00:00:00.000Z")),
            ])
            .unwrap();
        let deleted_runs_until = "2026-01-02T00:00:00.000Z".to_string();
        let last_runs = LastRuns(HashMap::from([
            (key("old"), deleted_runs_until.clone()),
            (key("busy"), deleted_runs_until),
        ]));
        let dropped = store.drop_unused(&deployments, &last_runs).unwrap();
        assert_eq!(dropped, [key("old")]);
        assert_eq!(store.find("t", "a", "old").unwrap(), None);
        assert_eq!(keys(&store.ids), ["t|a|busy"]);
        assert_eq!(keys(&store.stats), ["t|a|2026-01-01T00:00:00.000Z|busy"]);
        assert_eq!(
            keys(&store.records),
            [
                "t|a|2026-01-01T00:00:00.000Z|busy",
                "\u{fffd}\u{fffd}records-v2"
            ]
        );
    }

    /// What a crash can leave between two writes is never listed, and the version can be
    /// stored again, once: a record without its id entry (a first write cut short), and an id
    /// entry without its record (retention's deletes cut short).
    #[test]
    fn what_a_crash_leaves_is_not_listed_and_the_version_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledVersionStore::open(&db).unwrap();
        let first = record("v", "2026-01-01T00:00:01.000Z");
        store.insert_now("t", "a", &first).unwrap();
        // Retention cut short: the record went, its id entry did not.
        store
            .records
            .remove(time_key("t", "a", first.created_at.as_bytes(), "v"))
            .unwrap();
        assert_eq!(store.find("t", "a", "v").unwrap(), None);
        assert!(
            store.ids.is_empty(),
            "the id entry of a missing record goes"
        );
        // A first write cut short: the record, and no id entry.
        let orphan = record("w", "2026-01-01T00:00:02.000Z");
        store
            .records
            .insert(
                time_key("t", "a", orphan.created_at.as_bytes(), "w"),
                serde_json::to_vec(&orphan).unwrap(),
            )
            .unwrap();
        assert!(store.page_now("t", "a", None, 10).unwrap().items.is_empty());
        assert!(store.list_now("t", "a").unwrap().is_empty());
        assert!(store.newest_ids("t", "a", 10).unwrap().is_empty());
        // Both are stored again, and listed once.
        let again = record("v", "2026-01-01T00:00:03.000Z");
        assert_eq!(store.insert_now("t", "a", &again).unwrap(), again);
        assert_eq!(store.insert_now("t", "a", &orphan).unwrap(), orphan);
        assert_eq!(store.find("t", "a", "w").unwrap(), Some(orphan));
        assert_eq!(store.newest_ids("t", "a", 10).unwrap(), ["v", "w"]);
        assert_eq!(store.list_now("t", "a").unwrap().len(), 2);
    }

    /// Writers storing one version at once, each with its own time: one record and one id
    /// entry stay, and every writer answers the same record.
    #[test]
    fn concurrent_first_writes_agree_on_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledVersionStore::open(&db).unwrap();
        for round in 0..20 {
            let id = format!("v{round}");
            let answers: Vec<VersionRecord> = std::thread::scope(|scope| {
                let writers: Vec<_> = (0..4)
                    .map(|w| {
                        let (store, id) = (store.clone(), id.clone());
                        scope.spawn(move || {
                            let at = format!("2026-01-01T00:00:0{w}.000Z");
                            store.insert_now("t", "a", &record(&id, &at)).unwrap()
                        })
                    })
                    .collect();
                writers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
            assert_eq!(
                store.find("t", "a", &id).unwrap().as_ref(),
                Some(&answers[0])
            );
        }
        assert_eq!(store.ids.len(), 20);
        assert_eq!(store.records.len(), 21, "20 records and the marker");
    }

    /// An earlier release run on the directory after the move writes `agent_versions` again:
    /// its versions are moved at the next start, their statistics added to what was moved.
    #[test]
    fn versions_an_earlier_release_wrote_after_the_move_are_moved_too() {
        let dir = tempfile::tempdir().unwrap();
        let at = "2026-01-01T00:00:01.000Z";
        {
            let db = crate::storage::sled::reopen_db(dir.path());
            let store = SledVersionStore::open(&db).unwrap();
            store.insert_now("t", "a", &record("v", at)).unwrap();
            store
                .add_stats_now(&[(key("v"), stats(2, "2026-01-02T00:00:00.000Z"))])
                .unwrap();
            // The earlier release: its record, an index entry without a value, its statistics
            // under the id.
            let earlier = db.open_tree("agent_versions").unwrap();
            let w = record("w", "2026-01-01T00:00:02.000Z");
            earlier
                .insert(b"t\0a\0w", serde_json::to_vec(&w).unwrap())
                .unwrap();
            earlier
                .insert(b"t\0a\0v", serde_json::to_vec(&record("v", at)).unwrap())
                .unwrap();
            store
                .records
                .insert(b"t\0a\x002026-01-01T00:00:02.000Z\0w", &[])
                .unwrap();
            store
                .unplaced_stats
                .insert(
                    b"t\0a\0v",
                    serde_json::to_vec(&stats(3, "2026-01-03T00:00:00.000Z")).unwrap(),
                )
                .unwrap();
            db.flush().unwrap();
        }
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledVersionStore::open(&db).unwrap();
        assert!(!db.tree_names().iter().any(|n| n == b"agent_versions"));
        assert_eq!(listed(&store), ["w -", "v 5"]);
        assert!(store.unplaced_stats.is_empty());
    }
}
