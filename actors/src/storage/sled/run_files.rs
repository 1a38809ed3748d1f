//! The runs' records on sled, in files of their own: the `run_pointers` tree maps a run's id to
//! where its record is (a 21-byte pointer, in packs: [`RunRecords`]), and the records are
//! appended to segment files in
//! `run-files/` beside sled's. Retention deletes the oldest runs, so it empties the oldest
//! segments, and a segment whose runs are all gone is deleted whole.
//!
//! Why: sled rewrites and cleans its own files as they churn, and under a gateway's steady
//! write-and-delete it did not keep up: `bench/memory.sh` (1M requests, 2026-12-06) ended with
//! 1.5 GB of sled files for 91 MB of live entries. Records of ~1–2 KB were most of the bytes
//! sled wrote; out of sled, they are written once, with no cleaning, and leave with their file.
//!
//! A segment file is a sequence of records, each `body length (u32 LE) · run id (16 bytes) ·
//! body` (the run's JSON). A pointer names the segment, the body's offset and its length; a
//! read checks the header in front of the body against the id asked for. The `run_files` tree
//! holds, per segment, the highest run id written into it: ids are UUIDv7, retention deletes
//! every id below the oldest one kept, so a segment whose highest id is below it holds no run
//! anyone can read. That entry is written before the records' pointers, so a segment file
//! without an entry (a crash between the two) holds nothing a pointer names: it is deleted at
//! open.
//!
//! Durability: records are written with one `pwrite` per recorder batch, before their pointers
//! are inserted, so a `kill -9` loses nothing that sled kept. The current segment is synced on
//! [`RunFiles::sync`] (the store's flush, which the recorder calls every flush interval) and
//! when it is closed; after a power cut, a pointer may name bytes that never reached the disk,
//! and reads as a missing run.
//!
//! Data directories of earlier releases hold one entry a run in `runs`, a pointer or the record
//! itself; they are moved to `run_pointers` at open. A value that is not a pointer is a record,
//! read as it is, and retention deletes it like the others.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::backend;
use super::packs::{Lookup, Packs, Scan};
use crate::storage::StorageError;

/// A segment is closed, and the next one opened, once it holds this much.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// The first byte of a pointer: a stored record is JSON, which starts with `{`.
const POINTER_TAG: u8 = 1;
/// Tag, segment (u64 BE), body offset (u64 BE), body length (u32 BE).
const POINTER_LEN: usize = 1 + 8 + 8 + 4;
/// In front of each body: its length (u32 LE) and the run's id.
const HEADER_LEN: usize = 4 + 16;
/// Read handles kept open (the newest segments are the ones read); past it they are closed.
const MAX_READERS: usize = 64;
/// A file name: the segment number in hex and this extension.
const EXTENSION: &str = "runs";

/// A pointer as the `runs` tree stores it.
pub(super) type EncodedPointer = [u8; POINTER_LEN];

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pointer {
    segment: u64,
    offset: u64,
    len: u32,
}

impl Pointer {
    fn encode(&self) -> EncodedPointer {
        let mut out = [0u8; POINTER_LEN];
        out[0] = POINTER_TAG;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    fn decode(value: &[u8]) -> Option<Pointer> {
        if value.len() != POINTER_LEN || value[0] != POINTER_TAG {
            return None;
        }
        Some(Pointer {
            segment: u64::from_be_bytes(value[1..9].try_into().ok()?),
            offset: u64::from_be_bytes(value[9..17].try_into().ok()?),
            len: u32::from_be_bytes(value[17..21].try_into().ok()?),
        })
    }
}

/// The bytes of a stored record: from a segment file, or (written by an earlier release)
/// from the tree itself.
pub(super) enum RunBytes {
    Inline(::sled::IVec),
    File(Vec<u8>),
}

impl std::ops::Deref for RunBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            RunBytes::Inline(bytes) => bytes,
            RunBytes::File(bytes) => bytes,
        }
    }
}

/// How many bytes of record a stored value stands for (a pointer's body, or the value).
pub(super) fn record_len(value: &[u8]) -> u64 {
    match Pointer::decode(value) {
        Some(pointer) => u64::from(pointer.len),
        None => value.len() as u64,
    }
}

/// Records to append, framed, in one buffer.
#[derive(Default)]
pub(super) struct Appending {
    buf: Vec<u8>,
    /// Each record's id, body start in `buf` and body length.
    records: Vec<([u8; 16], usize, u32)>,
}

impl Appending {
    /// Adds a record whose body `write` puts at the end of the buffer it is given.
    pub(super) fn push<E>(
        &mut self,
        id: &[u8; 16],
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let header = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(id);
        let start = self.buf.len();
        if let Err(e) = write(&mut self.buf) {
            self.buf.truncate(header);
            return Err(e);
        }
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.buf[header..header + 4].copy_from_slice(&len.to_le_bytes());
        self.records.push((*id, start, len));
        Ok(())
    }
}

/// The segment being written.
struct Writer {
    segment: u64,
    file: File,
    len: u64,
    /// The highest id written into it, as its entry in `run_files` says.
    max_id: [u8; 16],
}

/// The segment files of a data directory. Cheap to clone.
#[derive(Clone)]
pub(super) struct RunFiles {
    dir: PathBuf,
    /// Segment number (u64 BE) → the highest run id written into it.
    segments: ::sled::Tree,
    writer: Arc<Mutex<Option<Writer>>>,
    readers: Arc<Mutex<HashMap<u64, Arc<File>>>>,
    segment_bytes: u64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Backend(format!("cannot {what} {}: {e}", path.display()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RunFiles {
    /// Opens the segments of `dir/run-files` (creating the folder), with their entries in
    /// `db`'s `run_files` tree; deletes files without an entry and entries without a file.
    pub(super) fn open(
        db: &::sled::Db,
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<RunFiles, StorageError> {
        let dir = dir.join("run-files");
        fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        let segments = db.open_tree("run_files").map_err(backend)?;
        let mut on_disk = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(|e| io("list", &dir, e))? {
            let entry = entry.map_err(|e| io("list", &dir, e))?;
            let path = entry.path();
            let segment = path
                .extension()
                .filter(|ext| *ext == EXTENSION)
                .and_then(|_| path.file_stem()?.to_str())
                .and_then(|stem| u64::from_str_radix(stem, 16).ok());
            if let Some(segment) = segment {
                on_disk.insert(segment, path);
            }
        }
        let mut last: Option<(u64, [u8; 16])> = None;
        for entry in segments.iter() {
            let (key, max_id) = entry.map_err(backend)?;
            let (Ok(segment), Ok(max_id)) = (
                <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes),
                <[u8; 16]>::try_from(max_id.as_ref()),
            ) else {
                segments.remove(key).map_err(backend)?;
                continue;
            };
            if on_disk.remove(&segment).is_none() {
                // Deleted, and the process stopped before its entry went.
                segments.remove(key).map_err(backend)?;
                continue;
            }
            last = Some((segment, max_id));
        }
        for (_, orphan) in on_disk {
            tracing::info!(file = %orphan.display(), "deleting a run file no run points into");
            fs::remove_file(&orphan).map_err(|e| io("delete", &orphan, e))?;
        }
        let files = RunFiles {
            dir,
            segments,
            writer: Arc::default(),
            readers: Arc::default(),
            segment_bytes,
        };
        if let Some((segment, max_id)) = last {
            // Go on writing the newest segment (after whatever a crash left at its end).
            let path = files.path(segment);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io("open", &path, e))?;
            let len = file.metadata().map_err(|e| io("read", &path, e))?.len();
            *lock(&files.writer) = Some(Writer {
                segment,
                file,
                len,
                max_id,
            });
        }
        Ok(files)
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:016x}.{EXTENSION}"))
    }

    /// Appends the records, returning each one's pointer (in the order they were pushed), to
    /// store in the tree.
    pub(super) fn append<'a>(
        &self,
        batch: &'a Appending,
    ) -> Result<Vec<(&'a [u8; 16], EncodedPointer)>, StorageError> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let mut writer = lock(&self.writer);
        let full = writer
            .as_ref()
            .is_none_or(|w| w.len > 0 && w.len + batch.buf.len() as u64 > self.segment_bytes);
        if full {
            let next = writer.as_ref().map_or(1, |w| w.segment + 1);
            if let Some(old) = writer.take() {
                // A closed segment is read, never written again: on disk now.
                if let Err(e) = old.file.sync_data() {
                    tracing::warn!(error = %e, "cannot sync a closed run file");
                }
            }
            let path = self.path(next);
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io("create", &path, e))?;
            *writer = Some(Writer {
                segment: next,
                file,
                len: 0,
                max_id: [0; 16],
            });
        }
        let Some(w) = writer.as_mut() else {
            return Err(StorageError::Backend("no run file to write".into()));
        };
        // The segment's entry first: a pointer never names a segment that open would delete.
        let batch_max = batch
            .records
            .iter()
            .map(|(id, ..)| *id)
            .max()
            .unwrap_or([0; 16]);
        if batch_max > w.max_id || w.len == 0 {
            w.max_id = w.max_id.max(batch_max);
            self.segments
                .insert(w.segment.to_be_bytes(), &w.max_id)
                .map_err(backend)?;
        }
        let at = w.len;
        w.file
            .write_all_at(&batch.buf, at)
            .map_err(|e| io("write", &self.path(w.segment), e))?;
        w.len += batch.buf.len() as u64;
        let segment = w.segment;
        Ok(batch
            .records
            .iter()
            .map(|(id, start, len)| {
                let pointer = Pointer {
                    segment,
                    offset: at + *start as u64,
                    len: *len,
                };
                (id, pointer.encode())
            })
            .collect())
    }

    /// The record a stored value stands for: read from its segment when it is a pointer.
    /// `None` when the segment or the bytes are gone, or are not this run's.
    pub(super) fn resolve(
        &self,
        id: &[u8],
        value: ::sled::IVec,
    ) -> Result<Option<RunBytes>, StorageError> {
        let Some(pointer) = Pointer::decode(&value) else {
            return Ok(Some(RunBytes::Inline(value)));
        };
        let Some(file) = self.reader(pointer.segment)? else {
            return Ok(None);
        };
        let Some(start) = pointer.offset.checked_sub(HEADER_LEN as u64) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; HEADER_LEN + pointer.len as usize];
        match file.read_exact_at(&mut buf, start) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                tracing::warn!(
                    segment = pointer.segment,
                    "a run's record is past its file's end"
                );
                return Ok(None);
            }
            Err(e) => return Err(io("read", &self.path(pointer.segment), e)),
        }
        if buf[..4] != pointer.len.to_le_bytes() || &buf[4..HEADER_LEN] != id {
            tracing::warn!(
                segment = pointer.segment,
                "a run's pointer names another record"
            );
            return Ok(None);
        }
        buf.drain(..HEADER_LEN);
        Ok(Some(RunBytes::File(buf)))
    }

    fn reader(&self, segment: u64) -> Result<Option<Arc<File>>, StorageError> {
        if let Some(file) = lock(&self.readers).get(&segment) {
            return Ok(Some(file.clone()));
        }
        let path = self.path(segment);
        let file = match File::open(&path) {
            Ok(file) => Arc::new(file),
            // Deleted by retention since the pointer was read.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &path, e)),
        };
        let mut readers = lock(&self.readers);
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        readers.insert(segment, file.clone());
        Ok(Some(file))
    }

    /// Deletes the segments whose runs are all older than `oldest`, the oldest run kept (all
    /// of them when no run is kept), except the one being written. Returns how many went.
    pub(super) fn drop_before(&self, oldest: Option<[u8; 16]>) -> Result<usize, StorageError> {
        let current = lock(&self.writer).as_ref().map(|w| w.segment);
        let mut dropped = 0;
        for entry in self.segments.iter() {
            let (key, max_id) = entry.map_err(backend)?;
            let Ok(segment) = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes) else {
                continue;
            };
            let dead = oldest.is_none_or(|oldest| max_id.as_ref() < oldest.as_slice());
            if Some(segment) == current || !dead {
                continue;
            }
            let path = self.path(segment);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path, e)),
            }
            lock(&self.readers).remove(&segment);
            self.segments.remove(key).map_err(backend)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Syncs the segment being written to disk.
    pub(super) fn sync(&self) -> Result<(), StorageError> {
        let writer = lock(&self.writer);
        if let Some(w) = writer.as_ref() {
            w.file
                .sync_data()
                .map_err(|e| io("sync", &self.path(w.segment), e))?;
        }
        Ok(())
    }

    /// The bytes of the segment files.
    pub(super) fn size_on_disk(&self) -> Result<u64, StorageError> {
        let mut total = 0;
        for entry in fs::read_dir(&self.dir).map_err(|e| io("list", &self.dir, e))? {
            let Ok(entry) = entry else { continue };
            // A file deleted meanwhile weighs nothing.
            if let Ok(meta) = entry.metadata() {
                total += meta.len();
            }
        }
        Ok(total)
    }
}

/// The runs' pointers with the files they name: what the store, search and retention read
/// records through. Cheap to clone.
///
/// The tree `run_pointers` maps run ids to pointers, written a batch at a time as packs of
/// 10 ms of ids (`packs.rs`, with an empty prefix): one sled insert per batch and bucket rather
/// than per run. Earlier releases wrote one entry per run, a pointer or the record itself, in
/// `runs`: those are moved to `run_pointers` when the store opens, and read on beside the
/// packs.
///
/// Why a tree of its own: an earlier release run again on this data directory (a rollback)
/// would take a pack's key in `runs` for junk and its retention would delete the run files of
/// every run it cannot see. With the packs elsewhere, it finds `runs` empty (or holding only
/// what it wrote itself after the rollback) and leaves the files alone until it prunes runs of
/// its own; it then drops the files of runs older than its oldest kept, as retention would.
#[derive(Clone)]
pub(super) struct RunRecords {
    /// Run id → pointer (or, from an earlier release, the record).
    pub(super) ids: Packs,
    pub(super) files: RunFiles,
}

/// Records read by id ([`RunRecords::lookup`]).
pub(super) struct RunLookup<'a> {
    ids: Lookup<'a>,
    files: &'a RunFiles,
}

impl RunLookup<'_> {
    /// A run's record, if it is stored and readable.
    pub(super) fn get(&mut self, id: &[u8]) -> Result<Option<RunBytes>, StorageError> {
        let Ok(key) = <&[u8; 16]>::try_from(id) else {
            return Ok(None);
        };
        match self.ids.get(key)? {
            Some(value) => self.files.resolve(id, value),
            None => Ok(None),
        }
    }
}

/// Run ids have no prefix in `run_pointers`.
const NO_PREFIX: &[u8] = &[];

impl RunRecords {
    pub(super) fn open(db: &::sled::Db, files: RunFiles) -> Result<RunRecords, StorageError> {
        let records = RunRecords {
            ids: Packs::for_runs(db.open_tree("run_pointers").map_err(backend)?),
            files,
        };
        records.move_earlier_entries(&db.open_tree("runs").map_err(backend)?)?;
        Ok(records)
    }

    /// Moves the entries of `runs` (an earlier release's, one per run) into `run_pointers`,
    /// where they read as singles beside the packs; a chunk at a time, each copied before it is
    /// removed, so that a crash midway leaves them readable and the next start finishes.
    fn move_earlier_entries(&self, earlier: &::sled::Tree) -> Result<(), StorageError> {
        const CHUNK: usize = 10_000;
        let mut moved = 0usize;
        loop {
            let chunk: Vec<(::sled::IVec, ::sled::IVec)> = earlier
                .iter()
                .take(CHUNK)
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            if chunk.is_empty() {
                break;
            }
            for (key, value) in &chunk {
                // A key of another length was never a run's: it is dropped.
                if key.len() == 16 {
                    self.ids.put_single(NO_PREFIX, key, value)?;
                }
            }
            for (key, _) in &chunk {
                earlier.remove(key).map_err(backend)?;
            }
            moved += chunk.len();
        }
        if moved > 0 {
            tracing::info!(
                runs = moved,
                "moved the runs of an earlier release to the tree of run pointers"
            );
        }
        Ok(())
    }

    /// Stores the batch's pointers (`RunFiles::append`'s), one sled insert per 10 ms of ids.
    /// Returns the runs it adds and the bytes of records it adds: a run written again (a
    /// retried batch) replaces its earlier record, which no longer counts.
    pub(super) fn insert(
        &self,
        pointers: &[(&[u8; 16], EncodedPointer)],
    ) -> Result<(i64, i64), StorageError> {
        // What the batch's ids already point at.
        let ids: HashSet<[u8; 16]> = pointers.iter().map(|(id, _)| **id).collect();
        let mut before: HashMap<[u8; 16], u64> = self
            .ids
            .stored(NO_PREFIX, &ids)?
            .into_iter()
            .map(|(id, value)| (id, record_len(&value)))
            .collect();
        let (mut added, mut bytes) = (0i64, 0i64);
        for (id, pointer) in pointers {
            bytes += record_len(pointer) as i64;
            match before.insert(**id, record_len(pointer)) {
                Some(old) => bytes -= old as i64,
                None => added += 1,
            }
        }
        self.ids.insert_batch(
            pointers
                .iter()
                .map(|(id, pointer)| (NO_PREFIX, **id, pointer.as_slice())),
        )?;
        Ok((added, bytes))
    }

    /// Reads records by id; ids asked in order decode each bucket of pointers once.
    pub(super) fn lookup(&self) -> RunLookup<'_> {
        RunLookup {
            ids: self.ids.lookup(NO_PREFIX),
            files: &self.files,
        }
    }

    /// Every record, in id order.
    pub(super) fn iter(
        &self,
    ) -> impl Iterator<Item = Result<([u8; 16], RunBytes), StorageError>> + '_ {
        self.range::<std::ops::RangeFull>(..)
    }

    /// The records in a range of ids, in id order; a pointer whose record is gone is passed
    /// over.
    pub(super) fn range<R: std::ops::RangeBounds<Vec<u8>>>(
        &self,
        range: R,
    ) -> impl Iterator<Item = Result<([u8; 16], RunBytes), StorageError>> + '_ {
        self.resolved(self.ids.scan(NO_PREFIX, range, false))
    }

    /// The records in a range of ids, newest first.
    pub(super) fn range_rev<R: std::ops::RangeBounds<Vec<u8>>>(
        &self,
        range: R,
    ) -> impl Iterator<Item = Result<([u8; 16], RunBytes), StorageError>> + '_ {
        self.resolved(self.ids.scan(NO_PREFIX, range, true))
    }

    /// The stored ids and pointers (not resolved) in a range of ids, oldest first.
    pub(super) fn pointers<R: std::ops::RangeBounds<Vec<u8>>>(&self, range: R) -> Scan {
        self.ids.scan(NO_PREFIX, range, false)
    }

    /// The oldest stored run id.
    pub(super) fn first_id(&self) -> Result<Option<[u8; 16]>, StorageError> {
        self.end_id(false)
    }

    /// The newest stored run id.
    pub(super) fn last_id(&self) -> Result<Option<[u8; 16]>, StorageError> {
        self.end_id(true)
    }

    fn end_id(&self, newest: bool) -> Result<Option<[u8; 16]>, StorageError> {
        let first = self.ids.scan(NO_PREFIX, .., newest).next().transpose()?;
        Ok(first.map(|(id, _)| id))
    }

    /// Deletes runs' pointers (retention; their records go with their files).
    pub(super) fn remove_many(&self, ids: &[[u8; 16]]) -> Result<(), StorageError> {
        let entries: Vec<(Vec<u8>, [u8; 16])> = ids.iter().map(|id| (Vec::new(), *id)).collect();
        self.ids.remove_many(&entries)
    }

    fn resolved(
        &self,
        scan: Scan,
    ) -> impl Iterator<Item = Result<([u8; 16], RunBytes), StorageError>> + '_ {
        scan.filter_map(move |entry| {
            let (id, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            match self.files.resolve(&id, value) {
                Ok(Some(bytes)) => Some(Ok((id, bytes))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }
}

/// The segment files in the data directory `dir` (tests here and of the store).
#[cfg(test)]
pub(super) fn segment_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("run-files")).unwrap().count()
}

/// The bytes of the segment files in the data directory `dir`, as `ls` counts them.
#[cfg(test)]
pub(super) fn segment_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir.join("run-files"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[15] = n;
        id
    }

    fn write(files: &RunFiles, tree: &::sled::Tree, ids: &[u8]) {
        let mut batch = Appending::default();
        for n in ids {
            batch
                .push(&id(*n), |buf| {
                    buf.extend_from_slice(format!("{{\"run\":{n}}}").as_bytes());
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        for (id, pointer) in files.append(&batch).unwrap() {
            tree.insert(id, &pointer).unwrap();
        }
    }

    fn read(files: &RunFiles, tree: &::sled::Tree, n: u8) -> Option<String> {
        let value = tree.get(id(n)).unwrap()?;
        let bytes = files.resolve(&id(n), value).unwrap()?;
        Some(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn records_read_back_from_their_segments_which_go_whole_once_their_runs_are_older_than_the_oldest_kept(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let tree = db.open_tree("runs").unwrap();
        // Two records a segment.
        let files = RunFiles::open(&db, dir.path(), 40).unwrap();
        for batch in [[1u8, 2], [3, 4], [5, 6]] {
            write(&files, &tree, &batch);
        }
        assert_eq!(segment_files(dir.path()), 3);
        for n in 1..=6 {
            assert_eq!(read(&files, &tree, n), Some(format!("{{\"run\":{n}}}")));
        }
        // A record of an earlier release, in the tree itself, reads as it is.
        tree.insert(id(9), b"{\"old\":true}".as_slice()).unwrap();
        assert_eq!(read(&files, &tree, 9).as_deref(), Some("{\"old\":true}"));
        assert_eq!(record_len(&tree.get(id(9)).unwrap().unwrap()), 12);
        assert_eq!(record_len(&tree.get(id(1)).unwrap().unwrap()), 9);

        // Runs 1..=3 deleted: the first segment is dead, the second still holds 4.
        assert_eq!(files.drop_before(Some(id(4))).unwrap(), 1);
        assert_eq!(segment_files(dir.path()), 2);
        assert_eq!(read(&files, &tree, 1), None);
        assert_eq!(read(&files, &tree, 4).as_deref(), Some("{\"run\":4}"));
        // Every run deleted: all but the segment being written go.
        assert_eq!(files.drop_before(None).unwrap(), 1);
        assert_eq!(segment_files(dir.path()), 1);
        assert_eq!(read(&files, &tree, 6).as_deref(), Some("{\"run\":6}"));
        // The size on disk is the files' (with sled's, in the store).
        let on_disk = segment_bytes(dir.path());
        assert!(on_disk > 0);
        assert_eq!(files.size_on_disk().unwrap(), on_disk);
    }

    #[test]
    fn a_reopened_store_writes_on_after_its_newest_segment_and_deletes_files_no_entry_names() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::storage::sled::reopen_db(dir.path());
            let tree = db.open_tree("runs").unwrap();
            let files = RunFiles::open(&db, dir.path(), 1 << 20).unwrap();
            write(&files, &tree, &[1, 2]);
            db.flush().unwrap();
        }
        // A file a crash left before its entry was written.
        fs::write(
            dir.path().join("run-files").join("00000000000000ff.runs"),
            b"junk",
        )
        .unwrap();
        // sled's threads of the first handle may still hold its lock for a moment.
        let db = crate::storage::sled::wait_for_lock(|| {
            ::sled::Config::new()
                .path(dir.path())
                .open()
                .map_err(backend)
        });
        let tree = db.open_tree("runs").unwrap();
        let files = RunFiles::open(&db, dir.path(), 1 << 20).unwrap();
        assert_eq!(segment_files(dir.path()), 1);
        write(&files, &tree, &[3]);
        assert_eq!(segment_files(dir.path()), 1);
        for n in 1..=3 {
            assert_eq!(read(&files, &tree, n), Some(format!("{{\"run\":{n}}}")));
        }
    }

    #[test]
    fn a_pointer_past_the_end_of_its_file_or_at_another_record_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let tree = db.open_tree("runs").unwrap();
        let files = RunFiles::open(&db, dir.path(), 1 << 20).unwrap();
        write(&files, &tree, &[1, 2]);
        // Run 2's pointer under run 1's id: the header says it is another run.
        let two = tree.get(id(2)).unwrap().unwrap();
        assert!(files.resolve(&id(1), two.clone()).unwrap().is_none());
        // The file cut short, as a power cut may leave it.
        let path = files.path(1);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(files.resolve(&id(2), two).unwrap().is_none());
        assert!(read(&files, &tree, 1).is_some());
    }

    /// A UUIDv7-shaped id at `ms`, told apart by `n`.
    fn id_at(ms: u64, n: u8) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        id[6] = 0x70;
        id[15] = n;
        id
    }

    /// Appends records `{"run":n}` for `(ms, n)` and stores their pointers in one batch.
    fn store(records: &RunRecords, runs: &[(u64, u8)]) -> (i64, i64) {
        let mut batch = Appending::default();
        for (ms, n) in runs {
            batch
                .push(&id_at(*ms, *n), |buf| {
                    buf.extend_from_slice(format!("{{\"run\":{n}}}").as_bytes());
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        records
            .insert(&records.files.append(&batch).unwrap())
            .unwrap()
    }

    fn text(bytes: RunBytes) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    const BASE: u64 = 1_800_000_000_000;

    /// A store's records in `dir`, as the store opens them.
    fn records_in(dir: &Path) -> RunRecords {
        let db = crate::storage::sled::reopen_db(dir);
        RunRecords::open(&db, RunFiles::open(&db, dir, 1 << 20).unwrap()).unwrap()
    }

    #[test]
    fn a_batchs_pointers_take_one_insert_per_10_ms_of_ids_and_read_back_by_id_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let records = records_in(dir.path());
        // 40 runs over 2 buckets of 10 ms: 2 sled entries, not 40.
        let batch: Vec<(u64, u8)> = (0..40).map(|n| (BASE + n as u64 / 2, n)).collect();
        assert_eq!(store(&records, &batch), (40, 10 * 9 + 30 * 10));
        assert_eq!(records.ids.stored_entries(), 2);
        // An earlier release's entries read on beside the packs: a pointer-less record...
        records
            .ids
            .raw()
            .insert(id_at(BASE + 30, 50), &b"{\"run\":50}"[..])
            .unwrap();
        // ...and a pointer, written here one run at a time.
        let mut one = Appending::default();
        one.push(&id_at(BASE + 4, 51), |buf| {
            buf.extend_from_slice(b"{\"run\":51}");
            Ok::<(), ()>(())
        })
        .unwrap();
        for (id, pointer) in records.files.append(&one).unwrap() {
            records.ids.raw().insert(id, &pointer).unwrap();
        }
        for n in [0u8, 19, 20, 39] {
            let got = records
                .lookup()
                .get(&id_at(BASE + n as u64 / 2, n))
                .unwrap()
                .unwrap();
            assert_eq!(text(got), format!("{{\"run\":{n}}}"));
        }
        assert_eq!(
            text(
                records
                    .lookup()
                    .get(&id_at(BASE + 30, 50))
                    .unwrap()
                    .unwrap()
            ),
            "{\"run\":50}"
        );
        assert_eq!(
            text(records.lookup().get(&id_at(BASE + 4, 51)).unwrap().unwrap()),
            "{\"run\":51}"
        );
        assert!(records
            .lookup()
            .get(&id_at(BASE + 5, 99))
            .unwrap()
            .is_none());
        assert!(records.lookup().get(b"short").unwrap().is_none());

        let order: Vec<[u8; 16]> = records.iter().map(|e| e.unwrap().0).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "id order");
        assert_eq!(order.len(), 42);
        let newest: Vec<[u8; 16]> = records.range_rev(..).map(|e| e.unwrap().0).collect();
        assert_eq!(newest, sorted.iter().rev().copied().collect::<Vec<_>>());
        // A range inside a bucket, both ways.
        let from = id_at(BASE + 3, 6).to_vec();
        let to = id_at(BASE + 5, 11).to_vec();
        let ns = |it: Vec<[u8; 16]>| it.iter().map(|id| id[15]).collect::<Vec<u8>>();
        let forward = ns(records
            .range(from.clone()..to.clone())
            .map(|e| e.unwrap().0)
            .collect());
        assert_eq!(forward, [6, 7, 8, 9, 51, 10]);
        let back = ns(records.range_rev(from..=to).map(|e| e.unwrap().0).collect());
        assert_eq!(back, [11, 10, 51, 9, 8, 7, 6]);
        assert_eq!(records.first_id().unwrap(), Some(id_at(BASE, 0)));
        assert_eq!(records.last_id().unwrap(), Some(id_at(BASE + 30, 50)));
    }

    #[test]
    fn a_run_written_again_reads_as_its_later_write_and_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let records = records_in(dir.path());
        assert_eq!(store(&records, &[(BASE, 1), (BASE + 1, 2)]), (2, 18));
        // Run 1 again in a later batch (a record of 10 bytes, not 9), and run 3 twice in one.
        let mut batch = Appending::default();
        for (ms, n, body) in [
            (BASE, 1u8, "{\"run\":11}"),
            (BASE + 3, 3, "{\"run\":3}"),
            (BASE + 3, 3, "{\"run\":33}"),
        ] {
            batch
                .push(&id_at(ms, n), |buf| {
                    buf.extend_from_slice(body.as_bytes());
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        let pointers = records.files.append(&batch).unwrap();
        // Run 1 replaces its 9 bytes with 10; run 3 counts once, as its later 10 bytes.
        assert_eq!(records.insert(&pointers).unwrap(), (1, 1 + 10));
        let read = |ms: u64, n: u8| text(records.lookup().get(&id_at(ms, n)).unwrap().unwrap());
        assert_eq!(read(BASE, 1), "{\"run\":11}");
        assert_eq!(read(BASE + 3, 3), "{\"run\":33}");
        let all: Vec<String> = records.iter().map(|e| text(e.unwrap().1)).collect();
        assert_eq!(all, ["{\"run\":11}", "{\"run\":2}", "{\"run\":33}"]);
        // Deleted: every write of it goes.
        records
            .remove_many(&[id_at(BASE, 1), id_at(BASE + 3, 3)])
            .unwrap();
        assert!(records.lookup().get(&id_at(BASE, 1)).unwrap().is_none());
        let all: Vec<String> = records.iter().map(|e| text(e.unwrap().1)).collect();
        assert_eq!(all, ["{\"run\":2}"]);
    }

    #[test]
    fn an_earlier_releases_entries_move_to_the_pointers_tree_and_packs_never_go_to_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let files = RunFiles::open(&db, dir.path(), 1 << 20).unwrap();
        // As an earlier release left them: a pointer, a record, and a key of no run.
        let earlier = db.open_tree("runs").unwrap();
        let mut one = Appending::default();
        one.push(&id_at(BASE, 1), |buf| {
            buf.extend_from_slice(b"{\"run\":1}");
            Ok::<(), ()>(())
        })
        .unwrap();
        for (id, pointer) in files.append(&one).unwrap() {
            earlier.insert(id, &pointer).unwrap();
        }
        earlier
            .insert(id_at(BASE + 20, 2), &b"{\"run\":2}"[..])
            .unwrap();
        earlier.insert(b"junk", &b"x"[..]).unwrap();
        let records = RunRecords::open(&db, files).unwrap();
        assert!(earlier.is_empty(), "moved");
        let all: Vec<String> = records.iter().map(|e| text(e.unwrap().1)).collect();
        assert_eq!(all, ["{\"run\":1}", "{\"run\":2}"]);
        // New runs go to packs in `run_pointers`: `runs` stays empty, so that an earlier
        // release run again on this directory finds no key it would take for junk.
        store(&records, &[(BASE + 40, 3), (BASE + 41, 4)]);
        assert!(earlier.is_empty());
        assert_eq!(records.ids.stored_entries(), 3);
        let all: Vec<u8> = records.iter().map(|e| e.unwrap().0[15]).collect();
        assert_eq!(all, [1, 2, 3, 4]);
    }
}
