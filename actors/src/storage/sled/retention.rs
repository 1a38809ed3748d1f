//! Retention on sled: deleting the oldest runs with everything that points at them or counts
//! them, and the ledger of what the stored runs weigh.
//!
//! A batch reads the oldest runs (ids are UUIDv7: key order is time order), then for each
//! removes its feedback, its share link and its conversation link (unless a newer run filed
//! another conversation under the same hash); then the batch's pointers go, and after them its
//! runs' entries in their agents' lists, each pack rewritten once (`packs.rs`): readers pass
//! over a list entry whose run is gone. The record itself goes with its run file, once every
//! run in that file is gone (`run_files.rs`). The stats of the batch's runs are summed per
//! hour and taken out of their hours in one step (`stats.rs`: an hour left with no run goes).
//! Free-text blocks whose runs are all gone are deleted after the batch (`text_blocks.rs`).
//!
//! A version whose last run the batch deleted goes too, with its statistics, unless a
//! deployment names it (`versions.rs`,
//! [`SledVersionStore::drop_unused`](super::SledVersionStore)): an agent whose prompts are
//! written per request has a version per run, and they would otherwise outgrow the runs kept.
//!
//! What stays: the lists of an agent's other categorical values and of a tenant's agents (one
//! entry per value or agent, not per run), the statistics of the versions still in use (their
//! lifetime figures: `agents::version`), and cached answers whose source run is gone (a hit
//! reads the stored answer, never the run; the cache's own bound evicts them).
//!
//! The ledger (`runs_meta`): the number of stored runs and the bytes of their records, kept as
//! they are written and deleted, so that [`SledRunStore::footprint`] answers without a scan
//! and falls as soon as runs are deleted, which sled's size on disk does not (see
//! [`AMPLIFICATION`]).

use std::collections::HashMap;

use uuid::Uuid;

use super::agents::SledDeploymentStore;
use super::packs::Packs;
use super::run_files::{record_len, RunRecords};
use super::search::SearchIndex;
use super::stats::SledStatsStore;
use super::versions::SledVersionStore;
use super::{agent_prefix, backend};
use crate::agents::LastRuns;
use crate::recorder::run::RunRecord;
use crate::search::id_bounds;
use crate::stats::{Aggregate, RunFigures, RunView, StatsKey};
use crate::storage::{Footprint, PruneBatch, Pruned, StorageError};

/// Bytes kept beside each run's record, counted with it: its entry in its agent's list (key
/// and facets, ~70), its share of a free-text block (64 KiB per 4096 runs, 16), its
/// conversation link (~70) and its id key.
pub const BESIDE_RUN: u64 = 170;

/// What sled's files take on disk over the live bytes of the runs, in steady state (runs
/// written as old ones are deleted). `examples/sled_space.rs` measured 1.85 to 1.89 for one
/// tree of ~1 KB values in the mode the store opens sled in; the run store alone under
/// `bench/retention.sh` (1M runs, 200 MB bound) reached 2.4. The whole gateway under
/// `bench/memory.sh` (1M requests of mixed traffic, `max_disk_mb = 500`, 2026-12-06) takes far
/// more: every run of an agent whose prompts are written per request brings a version (its
/// record, statistics, time index entry and search value: ~650 bytes on hash-ordered keys,
/// which sled rewrites and cleans far worse than the time-ordered runs), and 1,581 MB of files
/// held 338 MB of live entries: 6.1 times the runs' ledger ([`BESIDE_RUN`] included). Hence
/// 6: the bound holds for that traffic, and a store whose versions are few (templated prompts)
/// keeps fewer runs than its bound would allow rather than outgrowing it. Measuring the
/// factor on the store itself (size on disk over the live bytes) was tried and undone: at
/// 3,000 requests a second it rose to its cap of 12, retention kept 26k runs (49 MB of live
/// entries), and sled's files still grew to 2.8 GB. Under this churn sled's files do not follow
/// what they hold, so a larger factor only deletes runs. Since the records are in run files
/// (`run_files.rs`), deleted whole, the same soak held the data directory at 293–478 MB
/// through 900k requests in three runs, and at 1M ended two at 338–349 MB and one at 521 MB:
/// run files ~66 MB, and sled 271 MB of files for 35 MB of live entries (versions, index
/// entries). The factor stays 6: the directory peaked at about 6 times the ledger, so at that
/// ratio a factor of 3 would let it pass the bound. It does not hold the bound either: a
/// fourth soak reached 536 MB at 800k requests, sled then holding 431 MB of files for 35 MB
/// of live entries. The bound needs fewer writes to sled, not another factor. With the
/// versions on time-ordered keys (`versions.rs`), three soaks peaked at 426–483 MB (sled 302
/// MB of files for 33 MB of live entries at the end of one), against 501–557 MB for the
/// hash-ordered layout in the same minutes: the factor stays, with a margin of 3–15%.
///
/// 7 since stop 32: that margin did not hold. At 6, 1M-request soaks on a 2-core AMD EPYC
/// (5,000–7,100 req/s) reached 517 and 541 MB, and on a 2-core Intel Xeon (8,000–12,000 req/s)
/// 626–800 MB; sled held 7.5 times its live entries at the end of one. At 7, four soaks on the
/// AMD machine peaked at 393, 445, 346 and 413 MB (the last two read every 2 s), keeping ~42k
/// runs at the end: the bound costs a seventh fewer runs kept.
pub const AMPLIFICATION: f64 = 7.0;

/// The ledger's key: runs (8 bytes) then record bytes (8 bytes), big endian.
const LEDGER: &[u8] = b"footprint-v1";

/// The count and weight of the stored runs, in the `runs_meta` tree. Cheap to clone.
#[derive(Clone)]
pub(super) struct Ledger {
    meta: ::sled::Tree,
}

fn decode(bytes: Option<&[u8]>) -> (u64, u64) {
    let Some(bytes) = bytes.filter(|b| b.len() == 16) else {
        return (0, 0);
    };
    let at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
    (at(0), at(8))
}

fn encode(runs: u64, bytes: u64) -> Vec<u8> {
    let mut out = runs.to_be_bytes().to_vec();
    out.extend_from_slice(&bytes.to_be_bytes());
    out
}

impl Ledger {
    /// Opens the ledger; a data directory written before it existed gets it counted from its
    /// runs, once.
    pub(super) fn open(db: &::sled::Db, runs: &RunRecords) -> Result<Ledger, StorageError> {
        // `runs` holds pointers to the records (or, from an earlier release, the records).
        let ledger = Ledger {
            meta: db.open_tree("runs_meta").map_err(backend)?,
        };
        if ledger.meta.get(LEDGER).map_err(backend)?.is_none() {
            let (mut n, mut bytes) = (0u64, 0u64);
            for entry in runs.pointers(..) {
                let (_, value) = entry?;
                n += 1;
                bytes += record_len(&value);
            }
            ledger
                .meta
                .insert(LEDGER, encode(n, bytes))
                .map_err(backend)?;
        }
        Ok(ledger)
    }

    /// Adds to the counts, atomically (the recorder adds, retention takes away, each on its
    /// own thread).
    pub(super) fn add(&self, runs: i64, bytes: i64) -> Result<(), StorageError> {
        if runs == 0 && bytes == 0 {
            return Ok(());
        }
        self.meta
            .fetch_and_update(LEDGER, |old| {
                let (n, b) = decode(old);
                Some(encode(
                    n.saturating_add_signed(runs),
                    b.saturating_add_signed(bytes),
                ))
            })
            .map_err(backend)?;
        Ok(())
    }

    pub(super) fn footprint(&self) -> Result<Footprint, StorageError> {
        let (runs, bytes) = decode(self.meta.get(LEDGER).map_err(backend)?.as_deref());
        let live = bytes + runs * BESIDE_RUN;
        Ok(Footprint {
            runs,
            bytes: (live as f64 * AMPLIFICATION) as u64,
        })
    }
}

/// The trees a deleted run is removed from. Cheap to clone.
#[derive(Clone)]
pub(super) struct Pruner {
    pub(super) runs: RunRecords,
    pub(super) by_agent: Packs,
    pub(super) feedback: ::sled::Tree,
    pub(super) shares: ::sled::Tree,
    pub(super) shares_by_run: ::sled::Tree,
    pub(super) conversations: ::sled::Tree,
    pub(super) stats: SledStatsStore,
    pub(super) index: SearchIndex,
    pub(super) versions: SledVersionStore,
    pub(super) deployments: SledDeploymentStore,
    pub(super) ledger: Ledger,
}

impl Pruner {
    pub(super) fn open(
        db: &::sled::Db,
        runs: &RunRecords,
        by_agent: &Packs,
        stats: SledStatsStore,
        index: SearchIndex,
        versions: SledVersionStore,
        deployments: SledDeploymentStore,
    ) -> Result<Pruner, StorageError> {
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(Pruner {
            runs: runs.clone(),
            by_agent: by_agent.clone(),
            feedback: tree("run_feedback")?,
            shares: tree("shares")?,
            shares_by_run: tree("shares_by_run")?,
            conversations: tree("agent_conversations")?,
            stats,
            index,
            versions,
            deployments,
            ledger: Ledger::open(db, runs)?,
        })
    }

    /// One batch (on a blocking thread: it reads and writes the disk).
    pub(super) fn prune_now(&self, batch: PruneBatch) -> Result<Pruned, StorageError> {
        let before = *id_bounds(batch.before_ms).0.as_bytes();
        let mut stats: HashMap<StatsKey, Aggregate> = HashMap::new();
        let mut last_runs = LastRuns::default();
        let (mut runs, mut bytes) = (0u64, 0u64);
        // The agents' list entries of the batch's runs and their pointers, taken out
        // together (`packs.rs`).
        let mut listed = Vec::new();
        let mut gone = Vec::new();
        for entry in self.runs.pointers(..before.to_vec()).take(batch.max_runs) {
            let (key, value) = entry?;
            let id = Uuid::from_bytes(key);
            // A record that cannot be read still goes: retention never stalls on it.
            match self.runs.files.resolve(&key, value.clone()) {
                Ok(Some(record)) => {
                    self.unlink(id, &record, &mut stats, &mut last_runs, &mut listed)?
                }
                Ok(None) => {
                    tracing::warn!(run = %id, "a stored run's record is gone: its pointer deleted alone");
                }
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "a stored run's record cannot be read: its pointer deleted alone");
                }
            }
            gone.push(key);
            runs += 1;
            bytes += record_len(&value);
        }
        self.runs.remove_many(&gone)?;
        // After the records' pointers: an entry whose run is gone is passed over by readers.
        self.by_agent.remove_many(&listed)?;
        if runs == 0 {
            return Ok(Pruned::default());
        }
        self.stats.subtract_now(&stats)?;
        self.ledger.add(-(runs as i64), -(bytes as i64))?;
        // The versions no run names any more go with them (`versions.rs`).
        self.versions.drop_unused(&self.deployments, &last_runs)?;
        let oldest = self.runs.first_id()?;
        self.index.text.drop_before(oldest)?;
        // The run files whose runs are all deleted now (most batches: none).
        self.runs.files.drop_before(oldest)?;
        Ok(Pruned { runs })
    }

    /// Removes what points at a run about to be deleted, and adds its figures to the sums to
    /// take out of the stats; its agent list's entry joins `listed`, removed with the batch's.
    fn unlink(
        &self,
        id: Uuid,
        record: &[u8],
        stats: &mut HashMap<StatsKey, Aggregate>,
        last_runs: &mut LastRuns,
        listed: &mut Vec<(Vec<u8>, [u8; 16])>,
    ) -> Result<(), StorageError> {
        // Feedback and any share are keyed by the run id: they go even when the record
        // cannot be read.
        for key in self.feedback.scan_prefix(id.as_bytes()).keys() {
            self.feedback
                .remove(key.map_err(backend)?)
                .map_err(backend)?;
        }
        // The whole record for the conversation link (it needs the messages and the answer);
        // a run of an earlier release that no longer reads whole still has its figures.
        let run = serde_json::from_slice::<RunRecord>(record).ok();
        let figures = match &run {
            Some(_) => None,
            None => match serde_json::from_slice::<RunFigures>(record) {
                Ok(figures) => Some(figures),
                Err(_) => {
                    tracing::warn!(run = %id, "a stored run cannot be read: deleted alone");
                    return Ok(());
                }
            },
        };
        let view = match (&run, &figures) {
            (Some(run), _) => RunView::from(run),
            (None, Some(figures)) => RunView::from(figures),
            (None, None) => return Ok(()),
        };
        listed.push((agent_prefix(view.tenant, view.agent), *id.as_bytes()));
        let mut share = view.tenant.as_bytes().to_vec();
        share.push(0);
        share.extend_from_slice(id.as_bytes());
        if let Some(token) = self.shares_by_run.remove(share).map_err(backend)? {
            self.shares.remove(token).map_err(backend)?;
        }
        stats.entry(view.key()).or_default().add(&view);
        if let Some(run) = run.as_ref() {
            last_runs.note(run);
        }
        if let Some(link) = run
            .as_ref()
            .and_then(crate::agents::conversation::filed_link_of)
        {
            let mut key = agent_prefix(&link.tenant, &link.agent);
            key.extend_from_slice(&link.hash);
            // Only if it still leads to this run's conversation: a newer run may have filed
            // another under the same hash.
            let _ = self
                .conversations
                .compare_and_swap(key, Some(link.conversation_id.as_bytes()), None::<&[u8]>)
                .map_err(backend)?;
        }
        Ok(())
    }
}
