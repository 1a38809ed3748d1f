//! Lists of runs written a batch at a time: entries `prefix ++ run id → value` are stored as
//! one sled entry, a *pack*, per written batch, list and bucket of the ids' timestamps, rather
//! than one sled entry per run. Two trees are written so:
//! - `runs_by_agent`: an agent's runs (prefix `tenant \0 agent \0`), with their facets, in
//!   buckets of a second;
//! - `run_pointers`: every run's pointer to its record (`run_files.rs`), no prefix, in buckets
//!   of 10 ms, as a lookup by id decodes its bucket.
//!
//! Why: a sled insert clones the leaf it lands in, and run ids grow with time, so every ninth
//! insert also splits the right-most leaf of the list and clones its parent. One insert per run
//! into each of these trees was a quarter of the recorder's CPU (`perf`, `bench/run.sh`,
//! 2026-12-07); the recorder writes batches of about 60 runs at saturation, so a pack takes one
//! insert where there were 60. A run's id is made when its request starts and a batch is made
//! of runs that ended together: with answers that take seconds, a batch's ids span several
//! buckets, and the batch takes that many inserts (at worst one a run, as before).
//!
//! Keys, after the list's prefix:
//! - `id` (16 bytes): one run, as earlier releases wrote them (they read on beside packs);
//! - `bucket start (6 bytes, ms, BE) ++ sequence (8 bytes, BE) ++ 3 zero bytes` (17 bytes): a
//!   pack of the runs whose ids' timestamps (a UUIDv7's first 48 bits, in ms) fall in the
//!   bucket, with the value `(id (16) · value length (u16 LE) · value)*`.
//!
//! A bucket's singles and packs sort together (both start with the ids' timestamps), so a list
//! reads in id order bucket by bucket ([`Scan`]): it gathers a bucket's entries, sorts them and
//! hands them out. A lookup by id ([`Lookup`]) decodes the id's bucket and keeps it for the next
//! id. A run written twice (a retried batch) is in two packs: the one with the higher sequence
//! (written later) is the one read, as a later insert replaced an earlier one before; within one
//! pack, the later entry.
//!
//! Releases before packs do not read them: once this release has written to a data directory,
//! an earlier one lists and finds only the runs recorded before. Releases before 2026-12-07
//! (stop 34) read no list packs; releases before stop 35 no pointer packs, which are in a tree
//! of their own so that such a release finds nothing it would misread (`run_files.rs`).
use std::collections::{HashMap, HashSet};
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::backend;
use crate::storage::StorageError;

/// The span of ids' timestamps one pack of an agent's list covers, in ms: wide enough that a
/// batch of answers that took seconds spans a few buckets, narrow enough that a page of a list,
/// which decodes its newest bucket whole, reads one second of the agent's runs (15,000 at
/// saturation).
const LIST_BUCKET_MS: u64 = 1000;
/// The span of one pack of the runs' pointers (`runs`), in ms: a lookup by id decodes its
/// bucket, so it stays small (~150 runs at saturation); a batch of quick answers still spans
/// one or two.
const RUN_BUCKET_MS: u64 = 10;
/// A pack's key after the prefix; a single run's is 16 bytes.
const PACK_KEY_LEN: usize = 6 + 8 + 3;
/// In front of each value in a pack: the run id and the value's length.
const ENTRY_HEAD: usize = 16 + 2;

/// A list entry: the run id and its value.
pub(super) type Entry = ([u8; 16], ::sled::IVec);

/// The lists of one tree. Cheap to clone.
#[derive(Clone)]
pub(super) struct Packs {
    tree: ::sled::Tree,
    /// The next pack's sequence: microseconds since the epoch when opened, so that a pack
    /// written after a restart reads as the later one.
    seq: Arc<AtomicU64>,
    /// The span of ids' timestamps a pack covers, in ms.
    bucket_ms: u64,
}

/// The start of the bucket of an id (or of a pack key's suffix): its first 6 bytes, in ms.
fn bucket_of(suffix: &[u8], bucket_ms: u64) -> u64 {
    let mut ms = [0u8; 8];
    let n = suffix.len().min(6);
    ms[2..2 + n].copy_from_slice(&suffix[..n]);
    u64::from_be_bytes(ms) / bucket_ms * bucket_ms
}

/// The 6 bytes that start the keys of a bucket.
fn bucket_bytes(bucket: u64) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&bucket.to_be_bytes()[2..]);
    out
}

/// The entries of a pack's value: each one's id, and where its value is (start, length).
fn entries(pack: &[u8]) -> impl Iterator<Item = ([u8; 16], usize, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = pack.get(at..at + ENTRY_HEAD)?;
        let len = u16::from_le_bytes([head[16], head[17]]) as usize;
        let start = at + ENTRY_HEAD;
        if pack.len() < start + len {
            tracing::warn!("a damaged pack of runs: its last entries are skipped");
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&head[..16]);
        at = start + len;
        Some((id, start, len))
    })
}

/// A pack key's sequence; `None` for a single run's key (or a key of neither shape).
fn sequence(suffix: &[u8]) -> Option<u64> {
    (suffix.len() == PACK_KEY_LEN).then(|| {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&suffix[6..14]);
        u64::from_be_bytes(seq)
    })
}

/// The id, sequence and value of each entry a stored key and value hold (a single: sequence
/// 0), a pack's in reverse: of two entries of one run in a pack, the later one comes first.
fn decode(suffix: &[u8], value: ::sled::IVec, out: &mut Vec<([u8; 16], u64, ::sled::IVec)>) {
    if let Ok(id) = <[u8; 16]>::try_from(suffix) {
        out.push((id, 0, value));
        return;
    }
    let Some(seq) = sequence(suffix) else {
        return;
    };
    let first = out.len();
    // Slices of the stored value: no copy.
    out.extend(entries(&value).map(|(id, start, len)| (id, seq, value.subslice(start, len))));
    out[first..].reverse();
}

/// A range of ids as owned bounds.
type IdBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn owned<R: RangeBounds<Vec<u8>>>(range: &R) -> IdBounds {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl Packs {
    /// How many sled entries the tree holds (singles and packs).
    #[cfg(test)]
    pub(super) fn stored_entries(&self) -> usize {
        self.tree.len()
    }

    /// The tree itself: tests write what earlier releases wrote.
    #[cfg(test)]
    pub(super) fn raw(&self) -> &::sled::Tree {
        &self.tree
    }

    /// The agents' lists of runs (`runs_by_agent`).
    pub(super) fn new(tree: ::sled::Tree) -> Packs {
        Packs::with_buckets(tree, LIST_BUCKET_MS)
    }

    /// The runs' pointers (`run_pointers`), read by id: buckets of `RUN_BUCKET_MS`.
    pub(super) fn for_runs(tree: ::sled::Tree) -> Packs {
        Packs::with_buckets(tree, RUN_BUCKET_MS)
    }

    fn with_buckets(tree: ::sled::Tree, bucket_ms: u64) -> Packs {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Packs {
            tree,
            seq: Arc::new(AtomicU64::new(now)),
            bucket_ms,
        }
    }

    /// Writes one entry `prefix ++ id → value` as an earlier release did (moving its entries).
    pub(super) fn put_single(
        &self,
        prefix: &[u8],
        id: &[u8],
        value: &[u8],
    ) -> Result<(), StorageError> {
        self.tree
            .insert([prefix, id].concat(), value)
            .map(drop)
            .map_err(backend)
    }

    /// Writes entries `(prefix, id, value)`: one sled insert per prefix and bucket among them.
    /// A value is at most 64 KiB (longer ones are cut: values here are a few dozen bytes).
    pub(super) fn insert_batch<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], [u8; 16], &'a [u8])>,
    ) -> Result<(), StorageError> {
        let mut packs: HashMap<(&[u8], u64), Vec<u8>> = HashMap::new();
        for (prefix, id, value) in entries {
            let value = &value[..value.len().min(u16::MAX as usize)];
            let pack = packs
                .entry((prefix, bucket_of(&id, self.bucket_ms)))
                .or_default();
            pack.extend_from_slice(&id);
            pack.extend_from_slice(&(value.len() as u16).to_le_bytes());
            pack.extend_from_slice(value);
        }
        for ((prefix, bucket), pack) in packs {
            // A new key: should the clock have gone back since a restart, a sequence already
            // used is passed over rather than written over.
            loop {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let mut key = prefix.to_vec();
                key.extend_from_slice(&bucket_bytes(bucket));
                key.extend_from_slice(&seq.to_be_bytes());
                key.extend_from_slice(&[0; 3]);
                let written = self
                    .tree
                    .compare_and_swap(key, None::<&[u8]>, Some(pack.as_slice()))
                    .map_err(backend)?;
                if written.is_ok() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The sled keys of the buckets `first` to `last` (inclusive) of the list `prefix`.
    fn bucket_keys(&self, prefix: &[u8], first: Bound<u64>, last: Bound<u64>) -> IdBounds {
        let key = |bucket: u64| [prefix, &bucket_bytes(bucket)].concat();
        let start = match first {
            Bound::Included(bucket) | Bound::Excluded(bucket) => Bound::Included(key(bucket)),
            Bound::Unbounded => Bound::Included(prefix.to_vec()),
        };
        // To the end of the last bucket: a pack's key sorts before the UUIDv7 ids of its
        // bucket's first millisecond, not always before other ids (tests', say).
        let end = match last {
            Bound::Included(bucket) | Bound::Excluded(bucket) => {
                match bucket.checked_add(self.bucket_ms) {
                    Some(next) if next < 1 << 48 => Bound::Excluded(key(next)),
                    _ => Bound::Included([prefix, &[0xff; PACK_KEY_LEN]].concat()),
                }
            }
            Bound::Unbounded => Bound::Included([prefix, &[0xff; PACK_KEY_LEN]].concat()),
        };
        (start, end)
    }

    /// The entries of the list `prefix` whose ids are in `ids`, newest first (`reverse`) or
    /// oldest first; of a run stored twice, its later write.
    pub(super) fn scan<R: RangeBounds<Vec<u8>>>(
        &self,
        prefix: &[u8],
        ids: R,
        reverse: bool,
    ) -> Scan {
        let bucket = |bound: Bound<&Vec<u8>>| match bound {
            Bound::Included(id) | Bound::Excluded(id) => {
                Bound::Included(bucket_of(id, self.bucket_ms))
            }
            Bound::Unbounded => Bound::Unbounded,
        };
        let keys = self.bucket_keys(prefix, bucket(ids.start_bound()), bucket(ids.end_bound()));
        Scan {
            iter: self.tree.range(keys),
            prefix_len: prefix.len(),
            bucket_ms: self.bucket_ms,
            ids: owned(&ids),
            reverse,
            ready: Vec::new(),
            carry: None,
        }
    }

    /// The entries of the list `prefix` whose ids are strictly below `below`, newest first.
    pub(super) fn below(&self, prefix: &[u8], below: &[u8; 16]) -> Scan {
        self.scan(prefix, ..below.to_vec(), true)
    }

    /// Reads values by id, one bucket decoded at a time (see [`Lookup`]).
    pub(super) fn lookup<'a>(&'a self, prefix: &'a [u8]) -> Lookup<'a> {
        Lookup {
            packs: self,
            prefix,
            bucket: None,
            entries: None,
        }
    }

    /// The entries of the bucket `bucket`, oldest first.
    fn bucket(&self, prefix: &[u8], bucket: u64) -> Scan {
        let start = [&bucket_bytes(bucket)[..], &[0; 10]].concat();
        // The last bucket ends at the last timestamp 6 bytes hold.
        let last = (bucket + self.bucket_ms - 1).min((1 << 48) - 1);
        let end = [&bucket_bytes(last)[..], &[0xff; 10]].concat();
        self.scan(prefix, start..=end, false)
    }

    /// What the list `prefix` holds now for each of `ids` (its later write), reading each of
    /// their buckets once. The recorder asks this of every batch (a run written again replaces
    /// its record): the entries are walked as stored, not decoded and sorted.
    pub(super) fn stored(
        &self,
        prefix: &[u8],
        ids: &HashSet<[u8; 16]>,
    ) -> Result<HashMap<[u8; 16], ::sled::IVec>, StorageError> {
        let buckets: HashSet<u64> = ids.iter().map(|id| bucket_of(id, self.bucket_ms)).collect();
        // Each id's latest write: its sequence (a single's is 0) and value.
        let mut found: HashMap<[u8; 16], (u64, ::sled::IVec)> = HashMap::new();
        let mut decoded = Vec::new();
        for bucket in buckets {
            let at = Bound::Included(bucket);
            for entry in self.tree.range(self.bucket_keys(prefix, at, at)) {
                let (key, value) = entry.map_err(backend)?;
                decode(&key[prefix.len()..], value, &mut decoded);
                // A later pack wins; within one, `decode` gives the later entry first.
                for (id, seq, value) in decoded.drain(..) {
                    if ids.contains(&id) && found.get(&id).is_none_or(|(at, _)| *at < seq) {
                        found.insert(id, (seq, value));
                    }
                }
            }
        }
        Ok(found
            .into_iter()
            .map(|(id, (_, value))| (id, value))
            .collect())
    }

    /// Removes the entries `prefix ++ id`, wherever they are stored: each pack they are in is
    /// rewritten once (retention deletes runs by the thousand, oldest first).
    pub(super) fn remove_many(&self, entries: &[(Vec<u8>, [u8; 16])]) -> Result<(), StorageError> {
        let mut buckets: HashMap<(&[u8], u64), HashSet<[u8; 16]>> = HashMap::new();
        for (prefix, id) in entries {
            let mut single = prefix.clone();
            single.extend_from_slice(id);
            self.tree.remove(single).map_err(backend)?;
            buckets
                .entry((prefix.as_slice(), bucket_of(id, self.bucket_ms)))
                .or_default()
                .insert(*id);
        }
        for ((prefix, bucket), ids) in buckets {
            let mut start = prefix.to_vec();
            start.extend_from_slice(&bucket_bytes(bucket));
            let mut end = start.clone();
            start.extend_from_slice(&[0; PACK_KEY_LEN - 6]);
            end.extend_from_slice(&[0xff; PACK_KEY_LEN - 6]);
            for entry in self.tree.range(start..=end) {
                let (key, value) = entry.map_err(backend)?;
                if key.len() == prefix.len() + PACK_KEY_LEN {
                    self.remove_from(&key, value, &ids)?;
                }
            }
        }
        Ok(())
    }

    /// Rewrites one pack without `ids` (deletes it when nothing is left); if it changed since
    /// it was read, again from what it holds now.
    fn remove_from(
        &self,
        key: &[u8],
        mut value: ::sled::IVec,
        ids: &HashSet<[u8; 16]>,
    ) -> Result<(), StorageError> {
        loop {
            let mut kept = Vec::with_capacity(value.len());
            let mut found = false;
            for (id, start, len) in entries(&value) {
                if ids.contains(&id) {
                    found = true;
                } else {
                    kept.extend_from_slice(&value[start - ENTRY_HEAD..start + len]);
                }
            }
            if !found {
                return Ok(());
            }
            let new = (!kept.is_empty()).then_some(kept);
            match self
                .tree
                .compare_and_swap(key, Some(&value), new)
                .map_err(backend)?
            {
                Ok(()) => return Ok(()),
                Err(changed) => match changed.current {
                    Some(current) => value = current,
                    None => return Ok(()),
                },
            }
        }
    }

    /// Writes what is in the tree to disk.
    pub(super) fn flush(&self) -> Result<(), StorageError> {
        self.tree.flush().map(drop).map_err(backend)
    }
}

/// Values read by id: the bucket of the last id asked is kept decoded, so that ids asked in
/// order (a list's page, a search's candidates) decode each bucket once, not once an id.
pub(super) struct Lookup<'a> {
    packs: &'a Packs,
    prefix: &'a [u8],
    /// The bucket of the last id asked.
    bucket: Option<u64>,
    /// That bucket's entries, oldest first, each id once (its later write): decoded when a
    /// second id of the bucket is asked, as the first is found by walking the bucket.
    entries: Option<Vec<Entry>>,
}

impl Lookup<'_> {
    /// The value stored for `prefix ++ id`, if any: its later write.
    pub(super) fn get(&mut self, id: &[u8; 16]) -> Result<Option<::sled::IVec>, StorageError> {
        let bucket = bucket_of(id, self.packs.bucket_ms);
        if self.bucket != Some(bucket) {
            // The first id of a bucket (a lone lookup, a sparse list): one walk, no sort.
            self.bucket = Some(bucket);
            self.entries = None;
            let mut found = self.packs.stored(self.prefix, &HashSet::from([*id]))?;
            return Ok(found.remove(id));
        }
        let entries = match &mut self.entries {
            Some(entries) => entries,
            none => none.insert(
                self.packs
                    .bucket(self.prefix, bucket)
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(entries
            .binary_search_by(|(at, _)| at.cmp(id))
            .ok()
            .map(|i| entries[i].1.clone()))
    }
}

/// A list read in id order, bucket by bucket (see the module's doc).
pub(super) struct Scan {
    iter: ::sled::Iter,
    prefix_len: usize,
    bucket_ms: u64,
    ids: IdBounds,
    /// Newest first.
    reverse: bool,
    /// The bucket being handed out, in the order popped from its end.
    ready: Vec<Entry>,
    /// An entry read past the bucket being gathered: the first of the next one.
    carry: Option<(::sled::IVec, ::sled::IVec)>,
}

impl Scan {
    fn next_stored(&mut self) -> Option<Result<(::sled::IVec, ::sled::IVec), StorageError>> {
        if let Some(entry) = self.carry.take() {
            return Some(Ok(entry));
        }
        let next = if self.reverse {
            self.iter.next_back()
        } else {
            self.iter.next()
        };
        next.map(|entry| entry.map_err(backend))
    }

    /// Reads the next bucket into `ready`; `false` at the list's end.
    fn gather(&mut self) -> Result<bool, StorageError> {
        let Some(first) = self.next_stored() else {
            return Ok(false);
        };
        let (key, value) = first?;
        let bucket = bucket_of(&key[self.prefix_len..], self.bucket_ms);
        let mut items = Vec::new();
        decode(&key[self.prefix_len..], value, &mut items);
        while let Some(entry) = self.next_stored() {
            let (key, value) = entry?;
            if bucket_of(&key[self.prefix_len..], self.bucket_ms) != bucket {
                self.carry = Some((key, value));
                break;
            }
            decode(&key[self.prefix_len..], value, &mut items);
        }
        let ids = (
            self.ids.0.as_ref().map(Vec::as_slice),
            self.ids.1.as_ref().map(Vec::as_slice),
        );
        items.retain(|(id, ..)| RangeBounds::<[u8]>::contains(&ids, &id[..]));
        // Oldest first; of a run stored twice, the later write first (the sort is stable, and
        // `decode` puts a pack's later entry first), then kept alone.
        items.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        items.dedup_by(|later, earlier| later.0 == earlier.0);
        if !self.reverse {
            items.reverse();
        }
        self.ready = items
            .into_iter()
            .map(|(id, _, value)| (id, value))
            .collect();
        Ok(true)
    }
}

impl Iterator for Scan {
    type Item = Result<Entry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.ready.pop() {
                return Some(Ok(entry));
            }
            match self.gather() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 1_800_000_000_000; // a bucket's start

    fn packs() -> Packs {
        let db = ::sled::Config::new().temporary(true).open().unwrap();
        Packs::new(db.open_tree("lists").unwrap())
    }

    /// A UUIDv7-shaped id at `ms`, told apart by `n`.
    fn id(ms: u64, n: u8) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        id[6] = 0x70;
        id[15] = n;
        id
    }

    fn single(packs: &Packs, prefix: &[u8], id: [u8; 16], value: &[u8]) {
        packs.tree.insert([prefix, &id].concat(), value).unwrap();
    }

    fn read(packs: &Packs, prefix: &[u8], below: [u8; 16]) -> Vec<(u8, Vec<u8>)> {
        packs
            .below(prefix, &below)
            .map(|e| e.map(|(id, v)| (id[15], v.to_vec())).unwrap())
            .collect()
    }

    fn ns(entries: &[(u8, Vec<u8>)]) -> Vec<u8> {
        entries.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn batches_read_back_newest_first_across_buckets_and_lists() {
        let packs = packs();
        // Two batches whose ids interleave in time, over three buckets and two lists.
        let first = [id(BASE, 1), id(BASE + 1000, 3), id(BASE + 2000, 5)];
        let second = [id(BASE + 1, 2), id(BASE + 1001, 4), id(BASE + 2001, 6)];
        for batch in [&first, &second] {
            packs
                .insert_batch(batch.iter().flat_map(|id| {
                    [
                        (&b"t\0a\0"[..], *id, &b"A"[..]),
                        (&b"t\0b\0"[..], *id, &b"B"[..]),
                    ]
                }))
                .unwrap();
        }
        // One insert per list and bucket a batch touched.
        assert_eq!(packs.tree.len(), 2 * 2 * 3);
        // A batch within one bucket: one insert per list, whatever its runs.
        packs
            .insert_batch((0..10).map(|n| (&b"t\0c\0"[..], id(BASE + n as u64, n), &b"C"[..])))
            .unwrap();
        assert_eq!(packs.tree.len(), 2 * 2 * 3 + 1);
        assert_eq!(read(&packs, b"t\0c\0", [0xff; 16]).len(), 10);

        let all = read(&packs, b"t\0a\0", [0xff; 16]);
        assert_eq!(ns(&all), [6, 5, 4, 3, 2, 1]);
        assert!(all.iter().all(|(_, v)| v == b"A"));
        // Strictly below a bound inside a bucket, and at a bucket's start.
        assert_eq!(ns(&read(&packs, b"t\0a\0", id(BASE + 1001, 4))), [3, 2, 1]);
        assert_eq!(ns(&read(&packs, b"t\0a\0", id(BASE + 1000, 0))), [2, 1]);
        assert!(read(&packs, b"t\0d\0", [0xff; 16]).is_empty());
    }

    /// Ids that are not UUIDv7 (a pack's key may then sort after the bound): nothing under
    /// the bound is missed.
    #[test]
    fn a_bound_that_sorts_before_its_buckets_packs_misses_nothing() {
        let packs = packs();
        let low = |n: u8| {
            let mut id = [0u8; 16];
            id[15] = n;
            id
        };
        packs
            .insert_batch((1..=4).map(|n| (&b"t\0a\0"[..], low(n), &b"v"[..])))
            .unwrap();
        assert_eq!(ns(&read(&packs, b"t\0a\0", low(3))), [2, 1]);
    }

    #[test]
    fn singles_of_earlier_releases_read_with_packs_and_a_rewrite_wins() {
        let packs = packs();
        single(&packs, b"t\0a\0", id(BASE, 1), b"old");
        single(&packs, b"t\0a\0", id(BASE + 2, 3), b"single");
        packs
            .insert_batch([(&b"t\0a\0"[..], id(BASE + 1, 2), &b"new"[..])])
            .unwrap();
        // Written again, later: the later value is the one read, once.
        packs
            .insert_batch([(&b"t\0a\0"[..], id(BASE, 1), &b"again"[..])])
            .unwrap();
        // Twice in one batch: its later entry.
        packs
            .insert_batch([
                (&b"t\0a\0"[..], id(BASE + 3, 4), &b"first"[..]),
                (&b"t\0a\0"[..], id(BASE + 3, 4), &b"last"[..]),
            ])
            .unwrap();
        let all = read(&packs, b"t\0a\0", [0xff; 16]);
        let got: Vec<(u8, &[u8])> = all.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        assert_eq!(
            got,
            [
                (4, &b"last"[..]),
                (3, &b"single"[..]),
                (2, &b"new"[..]),
                (1, &b"again"[..])
            ]
        );
        // The bound inside the bucket, among singles and packs.
        assert_eq!(ns(&read(&packs, b"t\0a\0", id(BASE + 2, 3))), [2, 1]);
    }

    #[test]
    fn a_used_sequence_is_passed_over_not_written_over() {
        let packs = packs();
        packs
            .insert_batch([(&b"t\0a\0"[..], id(BASE, 1), &b"v"[..])])
            .unwrap();
        // The clock went back: the next pack would take the same sequence.
        packs.seq.fetch_sub(1, Ordering::Relaxed);
        packs
            .insert_batch([(&b"t\0a\0"[..], id(BASE, 2), &b"v"[..])])
            .unwrap();
        assert_eq!(ns(&read(&packs, b"t\0a\0", [0xff; 16])), [2, 1]);
    }

    #[test]
    fn remove_takes_entries_out_of_their_packs_and_singles() {
        let packs = packs();
        let p = b"t\0a\0".to_vec();
        let ids = [id(BASE, 1), id(BASE + 1, 2), id(BASE + 2, 3)];
        packs
            .insert_batch(ids.iter().map(|id| (p.as_slice(), *id, &b"v"[..])))
            .unwrap();
        // Run 1 written again, in a second pack.
        packs
            .insert_batch([(p.as_slice(), ids[0], &b"w"[..])])
            .unwrap();
        single(&packs, &p, id(BASE + 3, 4), b"s");
        packs
            .remove_many(&[(p.clone(), ids[1]), (p.clone(), id(BASE + 3, 4))])
            .unwrap();
        assert_eq!(ns(&read(&packs, &p, [0xff; 16])), [3, 1]);
        packs
            .remove_many(&[(p.clone(), ids[0]), (p.clone(), ids[2])])
            .unwrap();
        assert!(read(&packs, &p, [0xff; 16]).is_empty());
        assert_eq!(packs.tree.len(), 0, "emptied packs are deleted");
    }

    #[test]
    fn a_damaged_pack_reads_what_it_can() {
        let packs = packs();
        let mut key = b"t\0a\0".to_vec();
        key.extend_from_slice(&bucket_bytes(bucket_of(&id(BASE, 0), LIST_BUCKET_MS)));
        key.extend_from_slice(&7u64.to_be_bytes());
        key.extend_from_slice(&[0; 3]);
        let mut value = id(BASE, 1).to_vec();
        value.extend_from_slice(&1u16.to_le_bytes());
        value.push(b'x');
        value.extend_from_slice(&id(BASE, 2));
        value.extend_from_slice(&200u16.to_le_bytes());
        value.extend_from_slice(b"short");
        packs.tree.insert(key, value).unwrap();
        assert_eq!(read(&packs, b"t\0a\0", [0xff; 16]), [(1, b"x".to_vec())]);
    }

    #[test]
    fn scans_cross_buckets_both_ways_and_a_lookup_follows_ids_across_buckets() {
        let db = ::sled::Config::new().temporary(true).open().unwrap();
        let packs = Packs::for_runs(db.open_tree("runs").unwrap());
        let none: &[u8] = &[];
        // 20 runs 3 ms apart (7 buckets of 10 ms), in two batches whose ids interleave.
        let all: Vec<[u8; 16]> = (0..20u8).map(|n| id(BASE + 3 * u64::from(n), n)).collect();
        let value = |n: usize| {
            if n.is_multiple_of(2) {
                &b"a"[..]
            } else {
                &b"b"[..]
            }
        };
        for half in [0, 1] {
            packs
                .insert_batch(
                    all.iter()
                        .enumerate()
                        .skip(half)
                        .step_by(2)
                        .map(|(n, id)| (none, *id, value(n))),
                )
                .unwrap();
        }
        let ns = |scan: Scan| scan.map(|e| e.unwrap().0[15]).collect::<Vec<u8>>();
        let at = |n: usize| all[n].to_vec();
        assert_eq!(
            ns(packs.scan(none, at(2)..at(9), false)),
            (2..9).collect::<Vec<_>>()
        );
        assert_eq!(
            ns(packs.scan(none, at(2)..=at(9), true)),
            (2..=9).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            ns(packs.scan(none, (Bound::Excluded(at(2)), Bound::Unbounded), false)),
            (3..20).collect::<Vec<_>>()
        );
        assert_eq!(ns(packs.scan(none, ..at(5), true)), [4, 3, 2, 1, 0]);
        assert_eq!(ns(packs.scan(none, at(17).., true)), [19, 18, 17]);
        // One lookup, ids asked in both orders, across buckets.
        let mut lookup = packs.lookup(none);
        for n in (0..20).chain((0..20).rev()) {
            assert_eq!(lookup.get(&all[n]).unwrap().as_deref(), Some(value(n)));
        }
        assert!(lookup.get(&id(BASE + 4, 99)).unwrap().is_none());
        // The last bucket that 6-byte timestamps hold.
        let last = [0xff; 16];
        packs.insert_batch([(none, last, &b"z"[..])]).unwrap();
        assert_eq!(
            packs.lookup(none).get(&last).unwrap().as_deref(),
            Some(&b"z"[..])
        );
        let stored = packs.stored(none, &HashSet::from([last, all[3]])).unwrap();
        assert_eq!(stored.get(&last).map(|v| v.to_vec()), Some(b"z".to_vec()));
        assert_eq!(stored.get(&all[3]).map(|v| v.to_vec()), Some(b"b".to_vec()));
    }
}
