//! Free text on sled without a word index: runs are grouped in blocks of up to [`BLOCK_RUNS`]
//! in the order they are written, and each block keeps a Bloom filter of the (ASCII-lowercased)
//! byte trigrams of its runs' texts, with the lowest and highest run id it holds. A search for
//! a word of three bytes or more reads the filters (~245 of them for 1M runs), and passes over
//! the runs only in the id ranges of the blocks that may hold every trigram of the word: a rare
//! word over a million runs reads a few blocks' worth, not the million.
//!
//! Why not a word index: an entry per word and run, written on the recorder's thread, costs
//! more than the request itself (see `search.rs`); a trigram filter costs a few hashes per byte
//! of text, in memory, and one write of the filter a second. It also answers what `contains`
//! means (a substring, not a word).
//!
//! Durability: the open block lives in memory and is written to `runs_text` at most every
//! [`SAVE_EVERY`] (before the batch that changed it is written, so a stored filter never misses
//! a stored run it was saved after), at once before a run older than [`LATE`] is written, and
//! when it closes; a flush saves it only when it is as old. Not on every flush: the recorder
//! flushes every few hundred milliseconds, and a 64 KiB filter written that often was most of
//! what sled wrote once the runs' records had left it (`run_files.rs`). On open, the runs written since the last save — ids from the save's
//! time less [`LATE`] onwards — are added again (adding is idempotent), and a data directory
//! written before this existed gets its blocks built from every stored run, once.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::backend;
use super::run_files::RunRecords;
use crate::recorder::run::RunRecord;
use crate::search::{id_bounds, id_millis, run_texts};
use crate::storage::StorageError;

/// Runs in one block at most.
pub const BLOCK_RUNS: u32 = 4096;
/// Bits of a block's filter (64 KiB).
const BITS: usize = 1 << 19;
/// Probes per trigram.
const PROBES: u32 = 3;
/// A block closes when this share of its bits is set (then ~1.6% of absent trigrams pass).
const MAX_FILL: f64 = 0.3;
/// The open block is saved at most this often (a flush included). What a save has not caught
/// is read again from the runs at open.
const SAVE_EVERY: Duration = Duration::from_secs(10);
/// A run written this long after its id was made is saved at once; on open, runs from the
/// last save's time less this are added again.
const LATE: Duration = Duration::from_secs(15 * 60);
/// Layout version of a stored block.
const FORMAT: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 4 + 4 + 16 + 16;

/// One block: its runs' id range and the filter of their trigrams.
#[derive(Clone)]
struct Block {
    seq: u64,
    runs: u32,
    set_bits: u32,
    min: [u8; 16],
    max: [u8; 16],
    bits: Vec<u64>,
}

impl Block {
    fn new(seq: u64) -> Block {
        Block {
            seq,
            runs: 0,
            set_bits: 0,
            min: [0xff; 16],
            max: [0; 16],
            bits: vec![0; BITS / 64],
        }
    }

    fn full(&self) -> bool {
        self.runs >= BLOCK_RUNS || f64::from(self.set_bits) >= MAX_FILL * BITS as f64
    }

    fn add(&mut self, run: &RunRecord) {
        let id = *run.id.as_bytes();
        self.min = self.min.min(id);
        self.max = self.max.max(id);
        self.runs += 1;
        for text in run_texts(run) {
            for_each_trigram(text.as_bytes(), |t| {
                for bit in probes(t) {
                    let (word, mask) = (bit / 64, 1u64 << (bit % 64));
                    if self.bits[word] & mask == 0 {
                        self.bits[word] |= mask;
                        self.set_bits += 1;
                    }
                }
            });
        }
    }

    /// Whether the block may hold a run matching every word set: for each, one of its words.
    fn may_hold(&self, words: &[Vec<Vec<u8>>]) -> bool {
        words.iter().all(|any| {
            any.iter().any(|word| {
                let mut all = true;
                for_each_trigram(word, |t| {
                    all =
                        all && probes(t).all(|bit| self.bits[bit / 64] & (1u64 << (bit % 64)) != 0)
                });
                all
            })
        })
    }

    fn encode(&self, open: bool, saved_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + BITS / 8);
        out.push(FORMAT);
        out.push(u8::from(open));
        out.extend_from_slice(&saved_ms.to_be_bytes());
        out.extend_from_slice(&self.runs.to_be_bytes());
        out.extend_from_slice(&self.set_bits.to_be_bytes());
        out.extend_from_slice(&self.min);
        out.extend_from_slice(&self.max);
        for word in &self.bits {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// A stored block, with whether it was open and when it was saved.
    fn decode(seq: u64, bytes: &[u8]) -> Option<(Block, bool, u64)> {
        if bytes.len() != HEADER + BITS / 8 || bytes[0] != FORMAT {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let mut block = Block::new(seq);
        block.runs = u32_at(10);
        block.set_bits = u32_at(14);
        block.min.copy_from_slice(&bytes[18..34]);
        block.max.copy_from_slice(&bytes[34..50]);
        for (word, chunk) in block.bits.iter_mut().zip(bytes[HEADER..].chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        }
        Some((block, bytes[1] == 1, u64_at(2)))
    }
}

/// Calls `f` with every ASCII-lowercased 3-byte window of `text`.
fn for_each_trigram(text: &[u8], mut f: impl FnMut(u32)) {
    if text.len() < 3 {
        return;
    }
    let lower = |b: u8| u32::from(b.to_ascii_lowercase());
    let mut t = (lower(text[0]) << 8) | lower(text[1]);
    for &b in &text[2..] {
        t = ((t << 8) | lower(b)) & 0x00ff_ffff;
        f(t);
    }
}

/// The filter's bits for a trigram (double hashing on a 64-bit mix).
fn probes(trigram: u32) -> impl Iterator<Item = usize> {
    let mut h = u64::from(trigram).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    let (a, b) = (h as u32, (h >> 32) as u32 | 1);
    (0..PROBES).map(move |i| (a.wrapping_add(i.wrapping_mul(b)) as usize) % BITS)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Open {
    block: Block,
    changed: bool,
    saved: Instant,
}

/// The blocks of a data directory (cheap to clone).
#[derive(Clone)]
pub(super) struct TextBlocks {
    tree: ::sled::Tree,
    open: Arc<Mutex<Open>>,
}

/// An inclusive range of run ids.
pub(super) type IdRange = ([u8; 16], [u8; 16]);

impl TextBlocks {
    /// Opens the blocks, adding again the runs written since the last save (every run, the
    /// first time).
    pub(super) fn open(db: &::sled::Db, runs: &RunRecords) -> Result<TextBlocks, StorageError> {
        let tree = db.open_tree("runs_text").map_err(backend)?;
        let last = tree.last().map_err(backend)?;
        let (block, from_ms) = match last.as_ref().and_then(|(key, bytes)| {
            let seq = u64::from_be_bytes(key.as_ref().try_into().ok()?);
            Block::decode(seq, bytes)
        }) {
            Some((block, true, saved_ms)) => (block, Some(saved_ms)),
            Some((block, false, saved_ms)) => (Block::new(block.seq + 1), Some(saved_ms)),
            None if last.is_some() => {
                return Err(StorageError::Corrupt {
                    what: "text block",
                    detail: "unreadable".into(),
                })
            }
            None => (Block::new(0), None),
        };
        let blocks = TextBlocks {
            tree,
            open: Arc::new(Mutex::new(Open {
                block,
                changed: false,
                saved: Instant::now(),
            })),
        };
        let lower = match from_ms {
            Some(ms) => *id_bounds(ms.saturating_sub(LATE.as_millis() as u64))
                .0
                .as_bytes(),
            None => [0; 16],
        };
        let mut again = 0u64;
        {
            let mut open = blocks.lock();
            for entry in runs.range(lower.to_vec()..) {
                let (_, bytes) = entry?;
                let Ok(run) = serde_json::from_slice::<RunRecord>(&bytes) else {
                    continue;
                };
                blocks.add_one(&mut open, &run)?;
                again += 1;
            }
            if again > 0 {
                blocks.save(&mut open, true)?;
            }
        }
        if again > 0 && from_ms.is_none() {
            tracing::info!(
                runs = again,
                "built the free-text filters of the stored runs"
            );
        }
        Ok(blocks)
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add_one(&self, open: &mut Open, run: &RunRecord) -> Result<(), StorageError> {
        if open.block.full() {
            self.save(open, false)?;
            open.block = Block::new(open.block.seq + 1);
        }
        open.block.add(run);
        open.changed = true;
        Ok(())
    }

    /// Writes the open block (closed: for good).
    fn save(&self, open: &mut Open, still_open: bool) -> Result<(), StorageError> {
        let bytes = open.block.encode(still_open, now_ms());
        self.tree
            .insert(open.block.seq.to_be_bytes(), bytes)
            .map_err(backend)?;
        open.changed = false;
        open.saved = Instant::now();
        Ok(())
    }

    /// Adds a batch about to be written (called before the runs are).
    pub(super) fn add(&self, runs: &[Box<RunRecord>]) -> Result<(), StorageError> {
        let late_ms = now_ms().saturating_sub(LATE.as_millis() as u64);
        let mut open = self.lock();
        let mut late = false;
        for run in runs {
            late |= id_millis(&run.id) < late_ms;
            self.add_one(&mut open, run)?;
        }
        if late || open.saved.elapsed() >= SAVE_EVERY {
            self.save(&mut open, true)?;
        }
        Ok(())
    }

    /// Saves the open block if it changed and its last save is [`SAVE_EVERY`] old.
    pub(super) fn flush(&self) -> Result<(), StorageError> {
        let mut open = self.lock();
        if open.changed && open.saved.elapsed() >= SAVE_EVERY {
            self.save(&mut open, true)?;
        }
        Ok(())
    }

    /// The stored blocks but the open one (`open_seq`), oldest first: key, sequence, bytes.
    fn closed_blocks(
        &self,
        open_seq: u64,
    ) -> impl Iterator<Item = Result<(::sled::IVec, u64, ::sled::IVec), StorageError>> + '_ {
        self.tree.iter().filter_map(move |entry| {
            let (key, bytes) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(backend(e))),
            };
            let seq = u64::from_be_bytes(key.as_ref().try_into().ok()?);
            (seq != open_seq).then_some(Ok((key, seq, bytes)))
        })
    }

    /// Deletes the closed blocks whose runs are all gone (retention deletes the oldest runs
    /// first: a block whose newest run is older than the oldest run left holds none), so that
    /// blocks do not outlive their runs. `oldest`: the oldest run left (`None`: none is).
    /// How many were deleted.
    ///
    /// Blocks fill in the order runs are written, so their newest runs grow with their
    /// sequence: the walk stops at the first block that still holds a run, and a batch reads
    /// the blocks it deletes and one more, not every block (64 KiB each). A block out of that
    /// order is left for a later batch, once the oldest run left is past it.
    pub(super) fn drop_before(&self, oldest: Option<[u8; 16]>) -> Result<usize, StorageError> {
        let open_seq = self.lock().block.seq;
        let mut gone = Vec::new();
        for entry in self.closed_blocks(open_seq) {
            let (key, _, bytes) = entry?;
            // The newest run id is in the header: the filter is not decoded.
            let Some(max) = bytes.get(34..50) else {
                continue;
            };
            if bytes.first() != Some(&FORMAT) {
                continue;
            }
            if oldest.is_some_and(|oldest| max >= &oldest[..]) {
                break;
            }
            gone.push(key);
        }
        for key in &gone {
            self.tree.remove(key).map_err(backend)?;
        }
        Ok(gone.len())
    }

    /// The id ranges within `[lower, upper)` of the blocks that may hold a run with, for each
    /// word set, one of its words; newest first, merged. `None` when the filters cannot tell
    /// (a word shorter than three bytes).
    pub(super) fn ranges(
        &self,
        words: &[Vec<Vec<u8>>],
        lower: [u8; 16],
        upper: [u8; 16],
    ) -> Result<Option<Vec<IdRange>>, StorageError> {
        if words.is_empty() || words.iter().any(|any| any.iter().any(|w| w.len() < 3)) {
            return Ok(None);
        }
        let mut ranges = Vec::new();
        let mut keep = |block: &Block| {
            if block.runs > 0 && block.max >= lower && block.min < upper && block.may_hold(words) {
                ranges.push((block.min.max(lower), block.max.min(last_below(upper))));
            }
        };
        let open_seq = {
            let open = self.lock();
            keep(&open.block);
            open.block.seq
        };
        for entry in self.closed_blocks(open_seq) {
            let (_, seq, bytes) = entry?;
            match Block::decode(seq, &bytes) {
                Some((block, _, _)) => keep(&block),
                // An unreadable block could hold anything: no shortcut.
                None => return Ok(None),
            }
        }
        Ok(Some(merge(ranges)))
    }
}

/// The highest id below an exclusive bound.
fn last_below(upper: [u8; 16]) -> [u8; 16] {
    u128::from_be_bytes(upper).saturating_sub(1).to_be_bytes()
}

/// Overlapping or touching ranges joined, newest first.
fn merge(mut ranges: Vec<IdRange>) -> Vec<IdRange> {
    ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
    let mut merged: Vec<IdRange> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if hi >= last.0 || last_below(last.0) == hi => last.0 = last.0.min(lo),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> [u8; 16] {
        uuid::Uuid::from_u128(n).into_bytes()
    }

    fn test_run(text: &str) -> RunRecord {
        let mut run = crate::storage::conformance::run("default", "a");
        run.input = Some(serde_json::json!({ "text": text }));
        run
    }

    #[test]
    fn a_block_holds_the_trigrams_of_its_texts_in_any_case() {
        let mut block = Block::new(0);
        let run: RunRecord = test_run("The Xylophone plays");
        block.add(&run);
        let words = |w: &str| vec![vec![w.as_bytes().to_ascii_lowercase()]];
        assert!(block.may_hold(&words("xylophone")));
        assert!(block.may_hold(&words("PHONE PL")));
        assert!(!block.may_hold(&words("saxophone")));
        // One word of a set suffices; every set must be met.
        let either = vec![vec![b"saxophone".to_vec(), b"plays".to_vec()]];
        assert!(block.may_hold(&either));
        let both = vec![vec![b"plays".to_vec()], vec![b"saxophone".to_vec()]];
        assert!(!block.may_hold(&both));
    }

    #[test]
    fn a_stored_block_reads_back() {
        let mut block = Block::new(7);
        block.add(&test_run("refund please"));
        let (back, open, ms) = Block::decode(7, &block.encode(true, 42)).expect("a block");
        assert!(open);
        assert_eq!(ms, 42);
        assert_eq!(
            (back.runs, back.set_bits, back.min, back.max),
            (1, block.set_bits, block.min, block.max)
        );
        assert!(back.may_hold(&[vec![b"refund".to_vec()]]));
        assert!(Block::decode(7, b"short").is_none());
    }

    #[test]
    fn ranges_merge_newest_first() {
        let merged = merge(vec![
            (id(10), id(20)),
            (id(30), id(40)),
            (id(15), id(25)),
            (id(41), id(45)),
        ]);
        assert_eq!(merged, vec![(id(30), id(45)), (id(10), id(25))]);
    }

    fn with_word(word: &str) -> Box<RunRecord> {
        Box::new(test_run(&format!("a question about {word} and more")))
    }

    /// The runs of tenant `default` whose text holds `word` (all on one page), and how many
    /// runs were read.
    async fn search(storage: &super::super::SledStorage, word: &str) -> (usize, u64) {
        let page = search_page(storage, word).await;
        assert!(page.next_cursor.is_none());
        (page.items.len(), page.scanned)
    }

    async fn search_page(
        storage: &super::super::SledStorage,
        word: &str,
    ) -> crate::storage::SearchPage {
        let body: crate::search::SearchBody = serde_json::from_value(serde_json::json!({
            "field_queries": [{"field": "text", "operator": "contains", "values": [word]}],
            "limit": 200
        }))
        .unwrap();
        let query = crate::search::RunQuery::parse(body, true).unwrap();
        let scope = crate::storage::SearchScope {
            tenant: "default".into(),
            agent: None,
        };
        storage.storage().runs.search(&scope, &query).await.unwrap()
    }

    fn open(dir: &std::path::Path) -> super::super::SledStorage {
        super::super::open_waiting(dir)
    }

    #[actix_rt::test]
    async fn a_rare_word_reads_only_the_blocks_that_may_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let runs = storage.storage().runs;
        let n = 3 * BLOCK_RUNS as usize;
        let rare = BLOCK_RUNS as usize + 10;
        let batch: Vec<Box<RunRecord>> = (0..n)
            .map(|i| with_word(if i == rare { "xylophone" } else { "refunds" }))
            .collect();
        runs.insert_batch(&batch).await.unwrap();
        let (found, read) = search(&storage, "Xylophone").await;
        assert_eq!(found, 1);
        assert!(read <= u64::from(BLOCK_RUNS), "read {read} runs");
        // A word every run holds: every run read.
        let page = search_page(&storage, "refund").await;
        assert_eq!((page.items.len(), page.scanned), (200, 200));
        assert!(page.next_cursor.is_some());
        // Short words cannot be told by trigrams: the whole scan, still right.
        let (found, _) = search(&storage, "xy").await;
        assert_eq!(found, 1);
        assert_eq!(search(&storage, "saxophone").await.0, 0);
    }

    #[actix_rt::test]
    async fn a_word_with_a_filter_on_facets_is_found_in_every_block_that_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let n = 3 * BLOCK_RUNS as usize;
        let rare = [5, 2 * BLOCK_RUNS as usize + 7, 2 * BLOCK_RUNS as usize + 9];
        let batch: Vec<Box<RunRecord>> = (0..n)
            .map(|i| {
                let mut run = with_word(if rare.contains(&i) {
                    "xylophone"
                } else {
                    "refunds"
                });
                if i == rare[2] {
                    run.status = crate::recorder::run::RunStatus::Error;
                }
                run
            })
            .collect();
        storage.storage().runs.insert_batch(&batch).await.unwrap();
        let body: crate::search::SearchBody = serde_json::from_value(serde_json::json!({
            "field_queries": [{"field": "text", "operator": "contains", "values": ["xylophone"]},
                              {"field": "status", "operator": "is", "values": ["success"]}],
            "limit": 1
        }))
        .unwrap();
        let query = crate::search::RunQuery::parse(body, false).unwrap();
        let scope = crate::storage::SearchScope {
            tenant: "default".into(),
            agent: Some("a".into()),
        };
        let runs = storage.storage().runs;
        let first = runs.search(&scope, &query).await.unwrap();
        assert_eq!(first.items[0].id, batch[rare[1]].id);
        let mut query = query.clone();
        query.cursor = first.next_cursor.map(|c| c.parse().unwrap());
        let second = runs.search(&scope, &query).await.unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0].id, batch[rare[0]].id);
    }

    #[actix_rt::test]
    async fn runs_written_after_the_last_save_are_found_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = open(dir.path());
            let runs = storage.storage().runs;
            runs.insert_batch(&[with_word("alpha")]).await.unwrap();
            // What follows is not saved with the block (a flush within `SAVE_EVERY` of the
            // last save does not save it either).
            runs.flush().await.unwrap();
            runs.insert_batch(&[with_word("bravo")]).await.unwrap();
            // A run that ran longer than `LATE` saves the block at once.
            let mut late = with_word("charlie");
            let old = now_ms() - LATE.as_millis() as u64 - 60_000;
            let mut id = *id_bounds(old).0.as_bytes();
            id[15] = 1;
            late.id = uuid::Uuid::from_bytes(id);
            runs.insert_batch(&[late]).await.unwrap();
            runs.insert_batch(&[with_word("delta")]).await.unwrap();
            // The runs reach the disk (sled writes every 50 ms); the block's last changes,
            // in memory, do not.
            actix_rt::time::sleep(Duration::from_millis(300)).await;
        }
        let storage = open(dir.path());
        for word in ["alpha", "bravo", "charlie", "delta"] {
            assert_eq!(search(&storage, word).await.0, 1, "{word}");
        }
    }

    #[actix_rt::test]
    async fn blocks_whose_runs_are_all_pruned_are_deleted() {
        use crate::storage::PruneBatch;
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let runs = storage.storage().runs;
        let now = now_ms();
        // Random printable texts (~300k possible trigrams) fill a block's filter in a few runs.
        let mut rng = fastrand::Rng::with_seed(5);
        let mut text = || {
            (0..20_000)
                .map(|_| char::from(rng.u8(0x21..0x7f)))
                .collect::<String>()
        };
        let old: Vec<Box<RunRecord>> = (0..12u64)
            .map(|i| {
                let ms = now - 3_600_000 + i;
                Box::new(crate::storage::conformance::run_at(
                    "default",
                    "a",
                    ms,
                    &text(),
                ))
            })
            .collect();
        runs.insert_batch(&old).await.unwrap();
        let young = crate::storage::conformance::run_at("default", "a", now, "kept words");
        runs.insert_batch(&[Box::new(young.clone())]).await.unwrap();
        runs.flush().await.unwrap();
        let blocks = || storage.runs.index.text.tree.len();
        let before = blocks();
        assert!(before >= 3, "{before} blocks");
        let pruned = runs
            .prune(PruneBatch {
                before_ms: now - 60_000,
                max_runs: 100,
            })
            .await
            .unwrap();
        assert_eq!(pruned.runs, 12);
        // Only the block that holds the young run (and any open one after it) is left.
        assert!(blocks() <= 2, "{} of {before} blocks left", blocks());
        assert_eq!(search(&storage, "kept").await.0, 1);
    }

    #[actix_rt::test]
    async fn runs_stored_before_the_filters_existed_get_them_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::storage::sled::reopen_db(dir.path());
            let tree = db.open_tree("runs").unwrap();
            for word in ["echo", "foxtrot"] {
                let run = with_word(word);
                tree.insert(run.id.as_bytes(), serde_json::to_vec(run.as_ref()).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        {
            let storage = open(dir.path());
            assert_eq!(search(&storage, "foxtrot").await.0, 1);
            storage.storage().runs.flush().await.unwrap();
        }
        let storage = open(dir.path());
        assert_eq!(search(&storage, "echo").await.0, 1);
    }
}
