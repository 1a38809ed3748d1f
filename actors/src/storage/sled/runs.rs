//! Runs on sled: each run's JSON in a segment file, with a pointer to it under its id in
//! `run_pointers` (`run_files.rs`), and the agents' lists in `runs_by_agent`,
//! `tenant \0 agent \0` then the run id; both are written a batch at a time (`packs.rs`). Run ids are UUIDv7, so byte order is
//! time order and an agent's runs list newest first. Earlier releases wrote one entry a run, or
//! the JSON itself under the id: their data directories read back as they are.

use futures::future::{BoxFuture, FutureExt};
use uuid::Uuid;

use std::collections::HashMap;

use super::agents::SledDeploymentStore;
use super::packs::Packs;
use super::retention::Pruner;
use super::run_files::{Appending, RunLookup, RunRecords};
use super::search::{facets, values_by_field, SearchIndex};
use super::stats::SledStatsStore;
use super::versions::SledVersionStore;
use super::{agent_prefix, backend, off_thread};
use crate::recorder::run::{RunRecord, RunSummary};
use crate::search::{IndexedField, RunQuery};
use crate::storage::{
    Footprint, PruneBatch, Pruned, RunPage, RunStore, SearchPage, SearchScope, StorageError,
};

/// Cheap to clone (the trees are handles).
#[derive(Clone)]
pub struct SledRunStore {
    /// The whole database, for its size on disk.
    db: ::sled::Db,
    runs: RunRecords,
    by_agent: Packs,
    /// The search indexes (`search.rs`).
    pub(super) index: SearchIndex,
    /// Retention and the ledger of what the runs weigh (`retention.rs`).
    pruner: Pruner,
}

fn corrupt(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt {
        what: "run",
        detail: e.to_string(),
    }
}

impl SledRunStore {
    /// Opens the runs' trees. Retention deletes the versions whose last run it deleted:
    /// `versions` and `deployments` are the stores that keep and name them.
    /// `runs` are the records, opened first for the stats (`run_files.rs`).
    pub(super) fn open(
        db: &::sled::Db,
        runs: RunRecords,
        stats: SledStatsStore,
        versions: SledVersionStore,
        deployments: SledDeploymentStore,
    ) -> Result<SledRunStore, StorageError> {
        let by_agent = Packs::new(db.open_tree("runs_by_agent").map_err(backend)?);
        let index = SearchIndex::open(db, &runs)?;
        let store = SledRunStore {
            pruner: Pruner::open(
                db,
                &runs,
                &by_agent,
                stats,
                index.clone(),
                versions,
                deployments,
            )?,
            index,
            db: db.clone(),
            runs,
            by_agent,
        };
        store.index.build_once(&store.runs, &store.by_agent)?;
        Ok(store)
    }

    /// Writes on the calling thread: the recorder's own, never a request's. The batch's
    /// records go to the run files in one write, then one pack of pointers per 10 ms of ids
    /// and one pack per agent and second of ids for the agents' lists (`packs.rs`), rather than a
    /// `sled::Batch`: a batch would take sled's global concurrency-control write lock, which
    /// readers on the request path (cache, agents) wait for; the batch is atomic in nothing a
    /// caller relies on (a run written again reads as its later write).
    fn insert_now(&self, runs: &[Box<RunRecord>]) -> Result<(), StorageError> {
        // The free-text filters first: one that holds a run not yet written is harmless.
        self.index.text.add(runs)?;
        let mut records = Appending::default();
        for run in runs {
            records.push(run.id.as_bytes(), |buf| {
                serde_json::to_writer(buf, run.as_ref()).map_err(|e| {
                    StorageError::Backend(format!("cannot serialize run {}: {e}", run.id))
                })
            })?;
        }
        // The records first: a pointer never names bytes not yet written.
        let pointers = self.runs.files.append(&records)?;
        // For the ledger: a run written again replaces its record.
        let (added, bytes) = self.runs.insert(&pointers)?;
        let mut listed = Vec::with_capacity(runs.len());
        for (run, (id, _)) in runs.iter().zip(&pointers) {
            // The agent list's entry carries the run's facets, for searches.
            listed.push((agent_prefix(&run.tenant, &run.agent), **id, facets(run)));
            self.index.add(run)?;
        }
        // After the records' pointers, so that a list entry never points at nothing; one
        // insert per agent and second of the batch's ids (`packs.rs`).
        self.by_agent.insert_batch(
            listed
                .iter()
                .map(|(prefix, id, facets)| (prefix.as_slice(), *id, facets.as_slice())),
        )?;
        self.pruner.ledger.add(added, bytes)
    }

    fn get_now(&self, tenant: &str, id: Uuid) -> Result<Option<RunRecord>, StorageError> {
        Self::read_now(&mut self.runs.lookup(), tenant, id)
    }

    fn read_now(
        lookup: &mut RunLookup<'_>,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<RunRecord>, StorageError> {
        let Some(bytes) = lookup.get(id.as_bytes())? else {
            return Ok(None);
        };
        let run: RunRecord = serde_json::from_slice(&bytes).map_err(corrupt)?;
        Ok((run.tenant == tenant).then_some(run))
    }

    fn list_agent_now(
        &self,
        tenant: &str,
        agent: &str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> Result<RunPage, StorageError> {
        let prefix = agent_prefix(tenant, agent);
        let below = cursor.map_or([0xff; 16], |cursor| *cursor.as_bytes());
        let mut items = Vec::with_capacity(limit);
        let mut more = false;
        // Newest first: each bucket of pointers is decoded once.
        let mut lookup = self.runs.lookup();
        for entry in self.by_agent.below(&prefix, &below) {
            let (id, _) = entry?;
            if items.len() == limit {
                more = true;
                break;
            }
            if let Some(run) = Self::read_now(&mut lookup, tenant, Uuid::from_bytes(id))? {
                items.push(RunSummary::from(&run));
            }
        }
        let next_cursor = if more {
            items.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(RunPage { items, next_cursor })
    }
}

impl RunStore for SledRunStore {
    fn insert_batch<'a>(
        &'a self,
        runs: &'a [Box<RunRecord>],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Answered at once: the recorder writes on its own thread.
        super::written(self.insert_now(runs))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        let store = self.clone();
        let tenant = tenant.to_string();
        off_thread(move || store.get_now(&tenant, id))
    }

    fn list_agent<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RunPage, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || store.list_agent_now(&tenant, &agent, cursor, limit))
    }

    fn search<'a>(
        &'a self,
        scope: &'a SearchScope,
        query: &'a RunQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StorageError>> {
        let store = self.clone();
        let (scope, query) = (scope.clone(), query.clone());
        off_thread(move || {
            store
                .index
                .search(&store.runs, &store.by_agent, &scope, &query)
        })
    }

    fn field_values<'a>(
        &'a self,
        scope: &'a SearchScope,
        max: usize,
    ) -> BoxFuture<'a, Result<HashMap<IndexedField, Vec<String>>, StorageError>> {
        let store = self.clone();
        let scope = scope.clone();
        off_thread(move || {
            values_by_field(&store.index, &scope.tenant, scope.agent.as_deref(), max)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        let runs = self.runs.clone();
        let text = self.index.text.clone();
        // On a blocking thread of ours, not with `flush_async`: that parks a job on sled's own
        // I/O threads, which then cannot write the buffers the flush waits for.
        off_thread(move || {
            text.flush()?;
            // The records before the pointers that name them.
            runs.files.sync()?;
            runs.ids.flush()
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(futures::future::ready(Ok(())))
    }

    fn size_on_disk(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        // sled reads the metadata of its files: a little I/O, off the caller's thread.
        let (db, files) = (self.db.clone(), self.runs.files.clone());
        off_thread(move || Ok(db.size_on_disk().map_err(backend)? + files.size_on_disk()?))
    }

    fn prune(&self, batch: PruneBatch) -> BoxFuture<'_, Result<Pruned, StorageError>> {
        let pruner = self.pruner.clone();
        off_thread(move || pruner.prune_now(batch))
    }

    fn footprint(&self) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        futures::future::ready(self.pruner.ledger.footprint()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{now_ms, run_at};

    /// A batch's runs go into their agents' lists with one sled insert per agent, and list
    /// newest first, page by page.
    #[actix_rt::test]
    async fn a_batch_lists_its_runs_with_one_insert_per_agent_and_second() {
        let dir = tempfile::tempdir().unwrap();
        let storage = super::super::open_waiting(dir.path());
        let store = storage.runs.clone();
        // Within one bucket of ids (a second), as a batch at saturation is.
        let base = now_ms() / 1000 * 1000;
        let runs: Vec<Box<RunRecord>> = (0..40u64)
            .map(|i| {
                Box::new(run_at(
                    "t",
                    if i % 2 == 0 { "a" } else { "b" },
                    base + i % 16,
                    "x",
                ))
            })
            .collect();
        store.insert_batch(&runs).await.unwrap();
        assert_eq!(store.by_agent.stored_entries(), 2);
        let mut expected: Vec<Uuid> = runs
            .iter()
            .filter(|r| r.agent == "a")
            .map(|r| r.id)
            .collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        let first = store.list_agent("t", "a", None, 15).await.unwrap();
        let cursor = first.next_cursor.as_deref().map(|c| c.parse().unwrap());
        let second = store.list_agent("t", "a", cursor, 15).await.unwrap();
        assert!(second.next_cursor.is_none());
        let listed: Vec<Uuid> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, expected);
    }
}
