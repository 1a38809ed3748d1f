//! Lists of runs written a batch at a time: entries `prefix ++ run id → value` (an agent's runs
//! in `runs_by_agent`, with their facets) are stored as one sled entry, a *pack*, per written
//! batch, list and time bucket of the ids, rather than one sled entry per run.
//!
//! Why: a sled insert clones the leaf it lands in, and run ids grow with time, so every ninth
//! insert also splits the right-most leaf of the list and clones its parent. One insert per run
//! into `runs_by_agent` was a quarter of the recorder's CPU (`perf`, `bench/run.sh`, 2026-12-07);
//! the recorder writes batches of about 60 runs at saturation, so a pack takes one insert where
//! there were 60.
//!
//! Keys, after the list's prefix (the tenant and the agent, `\0`-terminated):
//! - `id` (16 bytes): one run, as earlier releases wrote them and as an index rebuild still does;
//! - `bucket start (6 bytes, ms, BE) ++ sequence (8 bytes, BE) ++ 3 zero bytes` (17 bytes): a
//!   pack of the runs whose ids' timestamps (a UUIDv7's first 48 bits, in ms) fall in the
//!   bucket, with the value `(id (16) · value length (u16 LE) · value)*`.
//!
//! A bucket's singles and packs sort together (both start with the ids' timestamps), so a list
//! reads newest first bucket by bucket: it gathers a bucket's entries, sorts them and hands them
//! out. A run written twice (a retried batch) is in two packs: the one with the higher sequence
//! (written later) is the one read, as a later insert replaced an earlier one before.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::backend;
use crate::storage::StorageError;

/// The span of ids' timestamps one pack covers, in ms. A page of a list decodes its newest
/// bucket whole: at 15,000 runs a second of one agent that is ~240 entries.
const BUCKET_MS: u64 = 16;
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
    /// written after a restart still reads as the later one.
    seq: Arc<AtomicU64>,
}

/// The start of the bucket of an id (or of a pack key's suffix): its first 6 bytes, in ms.
fn bucket_of(suffix: &[u8]) -> u64 {
    let mut ms = [0u8; 8];
    let n = suffix.len().min(6);
    ms[2..2 + n].copy_from_slice(&suffix[..n]);
    u64::from_be_bytes(ms) / BUCKET_MS * BUCKET_MS
}

/// The 6 bytes that start the keys of a bucket.
fn bucket_bytes(bucket: u64) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&bucket.to_be_bytes()[2..]);
    out
}

/// The id, sequence and value of each entry a stored key and value hold (a single: sequence 0).
fn decode(suffix: &[u8], value: ::sled::IVec, out: &mut Vec<([u8; 16], u64, ::sled::IVec)>) {
    if let Ok(id) = <[u8; 16]>::try_from(suffix) {
        out.push((id, 0, value));
        return;
    }
    if suffix.len() != PACK_KEY_LEN {
        return;
    }
    let seq = u64::from_be_bytes(suffix[6..14].try_into().unwrap_or_default());
    let mut rest: &[u8] = &value;
    while rest.len() >= ENTRY_HEAD {
        let len = u16::from_le_bytes([rest[16], rest[17]]) as usize;
        let Some(entry_value) = rest.get(ENTRY_HEAD..ENTRY_HEAD + len) else {
            tracing::warn!("a damaged pack of runs: its last entries are skipped");
            return;
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&rest[..16]);
        out.push((id, seq, ::sled::IVec::from(entry_value)));
        rest = &rest[ENTRY_HEAD + len..];
    }
}

impl Packs {
    /// How many sled entries the tree holds (singles and packs).
    #[cfg(test)]
    pub(super) fn stored_entries(&self) -> usize {
        self.tree.len()
    }

    pub(super) fn new(tree: ::sled::Tree) -> Packs {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Packs {
            tree,
            seq: Arc::new(AtomicU64::new(now)),
        }
    }

    /// Writes entries `(prefix, id, value)`: one sled insert per prefix and bucket among them.
    /// A value is at most 64 KiB (longer ones are cut: values here are a few dozen bytes).
    pub(super) fn insert_batch<'a>(
        &self,
        entries: impl IntoIterator<Item = (Vec<u8>, [u8; 16], &'a [u8])>,
    ) -> Result<(), StorageError> {
        let mut packs: Vec<(Vec<u8>, u64, Vec<u8>)> = Vec::new();
        for (prefix, id, value) in entries {
            let bucket = bucket_of(&id);
            let at = match packs
                .iter()
                .rposition(|(p, b, _)| *b == bucket && *p == prefix)
            {
                Some(at) => at,
                None => {
                    packs.push((prefix, bucket, Vec::new()));
                    packs.len() - 1
                }
            };
            let value = &value[..value.len().min(u16::MAX as usize)];
            let pack = &mut packs[at].2;
            pack.extend_from_slice(&id);
            pack.extend_from_slice(&(value.len() as u16).to_le_bytes());
            pack.extend_from_slice(value);
        }
        for (mut key, bucket, pack) in packs {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            key.extend_from_slice(&bucket_bytes(bucket));
            key.extend_from_slice(&seq.to_be_bytes());
            key.extend_from_slice(&[0; 3]);
            self.tree.insert(key, pack).map_err(backend)?;
        }
        Ok(())
    }

    /// The entries of the list `prefix` whose ids are strictly below `below`, newest first.
    pub(super) fn below(&self, prefix: &[u8], below: &[u8; 16]) -> Below {
        // To the end of `below`'s bucket: its packs may sort after `below` and hold ids under it.
        let mut end = prefix.to_vec();
        match bucket_of(below).checked_add(BUCKET_MS) {
            Some(next) if next < 1 << 48 => end.extend_from_slice(&bucket_bytes(next)),
            _ => end.extend_from_slice(&[0xff; 17]),
        }
        Below {
            iter: self.tree.range(prefix.to_vec()..end),
            prefix_len: prefix.len(),
            below: *below,
            ready: Vec::new(),
            carry: None,
        }
    }

    /// Removes the entry `prefix ++ id`, wherever it is stored.
    pub(super) fn remove(&self, prefix: &[u8], id: &[u8; 16]) -> Result<(), StorageError> {
        let mut single = prefix.to_vec();
        single.extend_from_slice(id);
        self.tree.remove(single).map_err(backend)?;
        let mut start = prefix.to_vec();
        start.extend_from_slice(&bucket_bytes(bucket_of(id)));
        let mut end = start.clone();
        start.extend_from_slice(&[0; PACK_KEY_LEN - 6]);
        end.extend_from_slice(&[0xff; PACK_KEY_LEN - 6]);
        for entry in self.tree.range(start..=end) {
            let (key, value) = entry.map_err(backend)?;
            if key.len() != prefix.len() + PACK_KEY_LEN {
                continue;
            }
            let mut kept = Vec::with_capacity(value.len());
            let mut found = false;
            let mut rest: &[u8] = &value;
            while rest.len() >= ENTRY_HEAD {
                let len = ENTRY_HEAD + u16::from_le_bytes([rest[16], rest[17]]) as usize;
                let Some(entry) = rest.get(..len) else {
                    break;
                };
                if entry[..16] == id[..] {
                    found = true;
                } else {
                    kept.extend_from_slice(entry);
                }
                rest = &rest[len..];
            }
            if !found {
                continue;
            }
            // Only retention takes entries out of packs, and the recorder never rewrites one:
            // nothing else changes this key meanwhile.
            if kept.is_empty() {
                self.tree.remove(key).map_err(backend)?;
            } else {
                self.tree.insert(key, kept).map_err(backend)?;
            }
        }
        Ok(())
    }
}

/// A list read newest first, bucket by bucket (see the module's doc).
pub(super) struct Below {
    iter: ::sled::Iter,
    prefix_len: usize,
    below: [u8; 16],
    /// The bucket being handed out, oldest first (popped from the end).
    ready: Vec<Entry>,
    /// An entry read past the bucket being gathered: the first of the next one.
    carry: Option<(::sled::IVec, ::sled::IVec)>,
}

impl Below {
    fn next_stored(&mut self) -> Option<Result<(::sled::IVec, ::sled::IVec), StorageError>> {
        if let Some(entry) = self.carry.take() {
            return Some(Ok(entry));
        }
        self.iter.next_back().map(|entry| entry.map_err(backend))
    }

    /// Reads the next (older) bucket into `ready`; `false` at the list's end.
    fn gather(&mut self) -> Result<bool, StorageError> {
        let Some(first) = self.next_stored() else {
            return Ok(false);
        };
        let (key, value) = first?;
        let bucket = bucket_of(&key[self.prefix_len..]);
        let mut items = Vec::new();
        decode(&key[self.prefix_len..], value, &mut items);
        while let Some(entry) = self.next_stored() {
            let (key, value) = entry?;
            if bucket_of(&key[self.prefix_len..]) != bucket {
                self.carry = Some((key, value));
                break;
            }
            decode(&key[self.prefix_len..], value, &mut items);
        }
        items.retain(|(id, ..)| *id < self.below);
        // Oldest first; of a run stored twice, the later write first, then kept alone.
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        items.dedup_by(|later, earlier| later.0 == earlier.0);
        self.ready = items
            .into_iter()
            .map(|(id, _, value)| (id, value))
            .collect();
        Ok(true)
    }
}

impl Iterator for Below {
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

    fn packs() -> Packs {
        let db = ::sled::Config::new().temporary(true).open().unwrap();
        Packs::new(db.open_tree("lists").unwrap())
    }

    /// An id at `ms` with `n` after it.
    fn id(ms: u64, n: u8) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        id[6] = 0x70;
        id[15] = n;
        id
    }

    fn read(packs: &Packs, prefix: &[u8], below: [u8; 16]) -> Vec<([u8; 16], Vec<u8>)> {
        packs
            .below(prefix, &below)
            .map(|e| e.map(|(id, v)| (id, v.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn batches_read_back_newest_first_across_buckets_and_lists() {
        let packs = packs();
        let base = 1_800_000_000_000u64;
        // Two batches whose ids interleave in time, over three buckets and two lists.
        let first = [id(base, 1), id(base + 20, 3), id(base + 40, 5)];
        let second = [id(base + 1, 2), id(base + 21, 4), id(base + 41, 6)];
        for batch in [&first, &second] {
            packs
                .insert_batch(batch.iter().flat_map(|id| {
                    [
                        (b"t\0a\0".to_vec(), *id, &b"A"[..]),
                        (b"t\0b\0".to_vec(), *id, &b"B"[..]),
                    ]
                }))
                .unwrap();
        }
        // One insert per list and bucket a batch touched (12 runs' entries in all).
        assert_eq!(packs.tree.len(), 2 * 2 * 3);
        // A batch within one bucket: one insert per list, whatever its runs.
        packs
            .insert_batch((0..10).map(|n| (b"t\0c\0".to_vec(), id(base + 64, n), &b"C"[..])))
            .unwrap();
        assert_eq!(packs.tree.len(), 2 * 2 * 3 + 1);
        assert_eq!(read(&packs, b"t\0c\0", [0xff; 16]).len(), 10);
        let all = read(&packs, b"t\0a\0", [0xff; 16]);
        let ids: Vec<u8> = all.iter().map(|(id, _)| id[15]).collect();
        assert_eq!(ids, [6, 5, 4, 3, 2, 1]);
        assert!(all.iter().all(|(_, v)| v == b"A"));
        // Strictly below a bound, which may fall inside a bucket.
        let ids: Vec<u8> = read(&packs, b"t\0a\0", id(base + 21, 4))
            .iter()
            .map(|(id, _)| id[15])
            .collect();
        assert_eq!(ids, [3, 2, 1]);
        assert!(read(&packs, b"t\0d\0", [0xff; 16]).is_empty());
    }

    #[test]
    fn singles_of_earlier_releases_read_with_packs_and_a_rewrite_wins() {
        let packs = packs();
        let base = 1_800_000_000_000u64;
        packs
            .tree
            .insert([b"t\0a\0".as_slice(), &id(base, 1)].concat(), b"old")
            .unwrap();
        packs
            .tree
            .insert([b"t\0a\0".as_slice(), &id(base + 2, 3)].concat(), b"single")
            .unwrap();
        packs
            .insert_batch([(b"t\0a\0".to_vec(), id(base + 1, 2), &b"new"[..])])
            .unwrap();
        // Written again, later: the later value is the one read, once.
        packs
            .insert_batch([(b"t\0a\0".to_vec(), id(base, 1), &b"again"[..])])
            .unwrap();
        let all = read(&packs, b"t\0a\0", [0xff; 16]);
        let got: Vec<(u8, &[u8])> = all.iter().map(|(id, v)| (id[15], v.as_slice())).collect();
        assert_eq!(
            got,
            [(3, &b"single"[..]), (2, &b"new"[..]), (1, &b"again"[..])]
        );
    }

    #[test]
    fn remove_takes_an_entry_out_of_its_pack_or_its_single() {
        let packs = packs();
        let base = 1_800_000_000_000u64;
        let ids = [id(base, 1), id(base + 1, 2), id(base + 2, 3)];
        packs
            .insert_batch(ids.iter().map(|id| (b"t\0a\0".to_vec(), *id, &b"v"[..])))
            .unwrap();
        packs
            .tree
            .insert([b"t\0a\0".as_slice(), &id(base + 3, 4)].concat(), b"s")
            .unwrap();
        packs.remove(b"t\0a\0", &ids[1]).unwrap();
        packs.remove(b"t\0a\0", &id(base + 3, 4)).unwrap();
        let left: Vec<u8> = read(&packs, b"t\0a\0", [0xff; 16])
            .iter()
            .map(|(id, _)| id[15])
            .collect();
        assert_eq!(left, [3, 1]);
        packs.remove(b"t\0a\0", &ids[0]).unwrap();
        packs.remove(b"t\0a\0", &ids[2]).unwrap();
        assert!(read(&packs, b"t\0a\0", [0xff; 16]).is_empty());
        assert_eq!(packs.tree.len(), 0, "an emptied pack is deleted");
    }

    #[test]
    fn a_damaged_pack_reads_what_it_can() {
        let packs = packs();
        let base = 1_800_000_000_000u64;
        let mut key = b"t\0a\0".to_vec();
        key.extend_from_slice(&bucket_bytes(bucket_of(&id(base, 0))));
        key.extend_from_slice(&7u64.to_be_bytes());
        key.extend_from_slice(&[0; 3]);
        let mut value = id(base, 1).to_vec();
        value.extend_from_slice(&1u16.to_le_bytes());
        value.push(b'x');
        value.extend_from_slice(&id(base, 2));
        value.extend_from_slice(&200u16.to_le_bytes());
        value.extend_from_slice(b"short");
        packs.tree.insert(key, value).unwrap();
        let all = read(&packs, b"t\0a\0", [0xff; 16]);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0[15], 1);
    }
}
