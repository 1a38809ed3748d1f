//! The process's allocator: an inner allocator (mimalloc in the shipped build) for everything
//! but large blocks asked for *zeroed*, which are mapped from the kernel on their own while a
//! slot of a small table is free to remember them.
//!
//! Why: mimalloc 2.x zeroes with `memset` a block it cannot tell is zero, and so makes it
//! resident. sled allocates its process-wide metrics zeroed when the store opens (~40
//! histograms of 512 KiB, ~21 MB, which its default `no_metrics` never writes): flowgate
//! started at 43–46 MB of RSS with mimalloc 2.x against 20–22 with 3.x (`bench/memory.sh`,
//! stops 30–32; `perf record -e page-faults` put 57% of the start's faults in that `memset`).
//! A fresh anonymous mapping is zero and costs no memory until it is touched.
//!
//! Why only zeroed blocks: stop 31 mapped *every* block of 256 KiB and more, and the recorder's
//! per-batch serialization buffer (past 256 KiB under load, freed after each batch) then cost
//! ~400 `mmap`/`munmap` pairs and ~29,000 extra page faults per 5 s of load, 5–10% more CPU a
//! request (bench/README.md). A block's layout cannot say whether it was asked for zeroed, so
//! the mapped blocks' addresses are kept in a table, which `dealloc` and `realloc` of a large
//! layout look in; a block not found there is the inner allocator's.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Zeroed blocks of this size or more are mapped on their own.
pub const LARGE: usize = 256 * 1024;
/// The alignment a mapping is sure to have (the smallest page size).
const PAGE: usize = 4096;
/// A slot taken but holding no block's address (never a page's start).
const BUSY: usize = 1;
/// Slots of the shipped allocator's table: sled's metrics take ~40 at start.
pub const SLOTS: usize = 128;

/// Zeroed large blocks from the kernel while `N` slots hold them, the others from `A`.
pub struct ZeroedMapped<A, const N: usize = SLOTS> {
    inner: A,
    /// The start of each mapped block; 0 is a free slot, `BUSY` one claimed before its block
    /// is mapped or while `mremap` may move it.
    slots: [AtomicUsize; N],
}

impl<A, const N: usize> ZeroedMapped<A, N> {
    pub const fn new(inner: A) -> Self {
        ZeroedMapped {
            inner,
            slots: [const { AtomicUsize::new(0) }; N],
        }
    }

    /// The slot that holds `ptr`, a block of `layout`, if it is a mapped block (only a large
    /// layout can be: any other is the inner allocator's without a look at the table).
    fn slot_of(&self, ptr: *mut u8, layout: &Layout) -> Option<&AtomicUsize> {
        if !large(layout) {
            return None;
        }
        let addr = ptr as usize;
        self.slots
            .iter()
            .find(|slot| slot.load(Ordering::Acquire) == addr)
    }

    /// Takes a free slot (marked busy until the caller stores an address or 0 in it).
    fn claim(&self) -> Option<&AtomicUsize> {
        self.slots.iter().find(|slot| {
            slot.compare_exchange(0, BUSY, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// How many blocks are mapped now.
    #[cfg(all(test, target_os = "linux"))]
    fn mapped_blocks(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.load(Ordering::Acquire) != 0)
            .count()
    }
}

/// Whether a block of `layout` may be mapped (and so may be found in the table).
fn large(layout: &Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= LARGE && layout.align() <= PAGE
}

#[cfg(target_os = "linux")]
mod os {
    use super::PAGE;
    use std::ptr::null_mut;

    /// The length of the mapping of a `size`-byte block: whole pages.
    pub(super) fn map_len(size: usize) -> Option<usize> {
        size.checked_next_multiple_of(PAGE)
    }

    /// A fresh, zeroed, private mapping of `size` bytes; null if the kernel refuses.
    pub(super) fn map(size: usize) -> *mut u8 {
        let Some(len) = map_len(size) else {
            return null_mut();
        };
        // SAFETY: an anonymous private mapping at an address the kernel picks touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            null_mut()
        } else {
            p.cast()
        }
    }

    /// Unmaps a block [`map`] made for `size` bytes.
    ///
    /// # Safety
    /// `ptr` is a live block [`map`] or [`remap`] returned for `size` bytes.
    pub(super) unsafe fn unmap(ptr: *mut u8, size: usize) {
        if let Some(len) = map_len(size) {
            // SAFETY: the caller's: the whole mapping of that block, not used again.
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    }

    /// Resizes a mapped block, moving it if the kernel must; null (the block untouched) if
    /// it refuses.
    ///
    /// # Safety
    /// `ptr` is a live block [`map`] or [`remap`] returned for `old` bytes.
    pub(super) unsafe fn remap(ptr: *mut u8, old: usize, new: usize) -> *mut u8 {
        let (Some(old_len), Some(new_len)) = (map_len(old), map_len(new)) else {
            return null_mut();
        };
        if old_len == new_len {
            return ptr;
        }
        // SAFETY: the caller's: `ptr` starts a mapping of `old_len` bytes; on failure the
        // mapping is left as it was.
        let p = unsafe { libc::mremap(ptr.cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
        if p == libc::MAP_FAILED {
            null_mut()
        } else {
            p.cast()
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    // Never called: `large` is false off Linux.
    pub(super) fn map(_: usize) -> *mut u8 {
        std::ptr::null_mut()
    }
    pub(super) unsafe fn unmap(_: *mut u8, _: usize) {}
    pub(super) unsafe fn remap(_: *mut u8, _: usize, _: usize) -> *mut u8 {
        std::ptr::null_mut()
    }
}

// SAFETY: a slot holds 0, `BUSY` (never a page's start) or the start of a live mapping: it is
// claimed (`BUSY`) before a block is mapped and names the block before it is handed out; it is
// cleared before the block is unmapped; and it is `BUSY` while `mremap` may move the block,
// since the old address can be handed out again as soon as the kernel moved it. So no two
// slots hold the same address, and no live block of the inner allocator has an address a slot
// holds: `dealloc` and `realloc` send a block back to the mapping side only if a slot holds its
// address. Mappings are page-aligned, only layouts aligned to a page or less are mapped, and
// fresh mappings are zero.
unsafe impl<A: GlobalAlloc, const N: usize> GlobalAlloc for ZeroedMapped<A, N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if large(&layout) {
            // A slot first: with every slot taken, no mapping is made (and unmade) for nothing.
            if let Some(slot) = self.claim() {
                let p = os::map(layout.size());
                if !p.is_null() {
                    slot.store(p as usize, Ordering::Release);
                    return p;
                }
                slot.store(0, Ordering::Relaxed);
            }
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(slot) = self.slot_of(ptr, &layout) {
            slot.store(0, Ordering::Release);
            // SAFETY: a slot held it: a block `os::map` or `os::remap` made, of this size.
            unsafe { os::unmap(ptr, layout.size()) };
            return;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(slot) = self.slot_of(ptr, &layout) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        };
        // SAFETY: the caller guarantees `new_size`, rounded to the alignment, does not
        // overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if large(&new_layout) {
            // Out of the table while the kernel may move it: once mremap returns, the old
            // address can be handed out again (to `map` or to the inner allocator).
            slot.store(BUSY, Ordering::Relaxed);
            // SAFETY: a slot held it: a mapped block of `layout.size()` bytes.
            let q = unsafe { os::remap(ptr, layout.size(), new_size) };
            slot.store(
                if q.is_null() { ptr } else { q } as usize,
                Ordering::Release,
            );
            return q;
        }
        // Shrunk below the threshold: the inner allocator's from now on, the bytes copied.
        // SAFETY: a valid, non-zero layout (`new_size` > 0 per the caller).
        let q = unsafe { self.inner.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least `new_size` bytes and are distinct; the mapped
            // block is unmapped after its slot is freed.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, q, new_size);
                slot.store(0, Ordering::Release);
                os::unmap(ptr, layout.size());
            }
        }
        q
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::sync::atomic::AtomicUsize;

    /// How many of the pages of `len` bytes at `ptr` are resident (`mincore`).
    fn resident_pages(ptr: *mut u8, len: usize) -> usize {
        let pages = len.div_ceil(PAGE);
        let mut flags = vec![0u8; pages];
        // SAFETY: `ptr` is page-aligned (a mapping) and spans `len` bytes; `flags` has a byte
        // per page.
        let rc = unsafe { libc::mincore(ptr.cast(), len, flags.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        flags.iter().filter(|f| *f & 1 == 1).count()
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    /// The system allocator, counting the blocks it holds.
    #[derive(Default)]
    struct Counting {
        live: AtomicUsize,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.live.fetch_add(1, Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            self.live.fetch_add(1, Ordering::Relaxed);
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.live.fetch_sub(1, Ordering::Relaxed);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn counting<const N: usize>() -> ZeroedMapped<Counting, N> {
        ZeroedMapped::new(Counting::default())
    }

    #[test]
    fn a_large_zeroed_block_is_mapped_untouched() {
        let a = counting::<4>();
        let size = 4 * 1024 * 1024;
        unsafe {
            let p = a.alloc_zeroed(layout(size));
            assert!(!p.is_null());
            assert_eq!(a.mapped_blocks(), 1);
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
            assert_eq!(p as usize % PAGE, 0, "a mapping starts a page");
            assert_eq!(
                resident_pages(p, size),
                0,
                "nothing written, nothing resident"
            );
            // One page per write, whatever the host's transparent huge pages setting.
            libc::madvise(p.cast(), size, libc::MADV_NOHUGEPAGE);
            p.add(PAGE * 3).write(7);
            assert_eq!(resident_pages(p, size), 1);
            assert_eq!(*p.add(size - 1), 0);
            assert_eq!(*p.add(PAGE * 3), 7);
            a.dealloc(p, layout(size));
            assert_eq!(a.mapped_blocks(), 0, "its slot is free again");
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn the_shipped_allocator_leaves_a_large_zeroed_block_untouched() {
        // What sled's metrics are: many zeroed blocks of 512 KiB, never written.
        let a: ZeroedMapped<_> = ZeroedMapped::new(mimalloc::MiMalloc);
        let size = 512 * 1024;
        let blocks: Vec<*mut u8> = (0..8)
            .map(|_| unsafe { a.alloc_zeroed(layout(size)) })
            .collect();
        for p in &blocks {
            assert!(!p.is_null());
            assert_eq!(resident_pages(*p, size), 0);
        }
        for p in blocks {
            unsafe { a.dealloc(p, layout(size)) };
        }
    }

    #[test]
    fn other_blocks_go_to_the_inner_allocator() {
        let a = counting::<4>();
        unsafe {
            // Large but not zeroed (the recorder's buffers), small zeroed, over-aligned zeroed.
            let plain = layout(LARGE * 2);
            let small = layout(LARGE - 1);
            let aligned = Layout::from_size_align(LARGE * 2, 2 * PAGE).unwrap();
            let p = a.alloc(plain);
            let s = a.alloc_zeroed(small);
            let o = a.alloc_zeroed(aligned);
            assert!(!p.is_null() && !s.is_null() && !o.is_null());
            assert_eq!(o as usize % (2 * PAGE), 0);
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 3);
            assert_eq!(a.mapped_blocks(), 0);
            // A large block of the inner allocator grows and is freed there.
            let p = a.realloc(p, plain, LARGE * 4);
            assert!(!p.is_null());
            a.dealloc(p, layout(LARGE * 4));
            a.dealloc(s, small);
            a.dealloc(o, aligned);
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn with_every_slot_taken_a_zeroed_block_is_the_inner_allocators() {
        let a = counting::<2>();
        let l = layout(LARGE);
        unsafe {
            let blocks: Vec<*mut u8> = (0..3).map(|_| a.alloc_zeroed(l)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            assert_eq!(a.mapped_blocks(), 2);
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 1);
            assert!(
                (0..LARGE).all(|i| *blocks[2].add(i) == 0),
                "zeroed all the same"
            );
            for p in blocks {
                a.dealloc(p, l);
            }
            assert_eq!(a.mapped_blocks(), 0);
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
            // A slot freed is taken again.
            let p = a.alloc_zeroed(l);
            assert_eq!(a.mapped_blocks(), 1);
            a.dealloc(p, l);
        }
    }

    /// A byte pattern that changes with the position (within 256 bytes and across 256- and
    /// 65,536-byte steps), so that a shifted or truncated copy shows.
    fn pattern(i: usize, seed: u8) -> u8 {
        ((i ^ (i >> 8) ^ (i >> 16)) as u8).wrapping_add(seed)
    }

    /// Fills `len` bytes with a pattern of `seed`.
    unsafe fn fill(p: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            unsafe { p.add(i).write(pattern(i, seed)) };
        }
    }

    unsafe fn holds(p: *const u8, len: usize, seed: u8) -> bool {
        (0..len).all(|i| unsafe { *p.add(i) } == pattern(i, seed))
    }

    #[test]
    fn realloc_of_a_mapped_block_keeps_the_bytes_and_its_slot() {
        let a = counting::<4>();
        unsafe {
            // Mapped, larger (remapped), smaller but still large, then small (copied out).
            let mut size = LARGE + 10;
            let mut p = a.alloc_zeroed(layout(size));
            assert!(!p.is_null());
            fill(p, size, 1);
            for next in [3 * LARGE + 5, LARGE + 20, 500] {
                let q = a.realloc(p, layout(size), next);
                assert!(!q.is_null());
                let kept = size.min(next);
                assert!(
                    holds(q, kept, 1),
                    "{size} -> {next}: the first {kept} bytes kept"
                );
                let mapped = usize::from(next >= LARGE);
                assert_eq!(a.mapped_blocks(), mapped, "{size} -> {next}");
                assert_eq!(a.inner.live.load(Ordering::Relaxed), 1 - mapped);
                if next > size {
                    fill(q, next, 1);
                }
                p = q;
                size = next;
            }
            a.dealloc(p, layout(size));
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_mapping_the_kernel_moves_is_found_at_its_new_address() {
        let a = counting::<4>();
        unsafe {
            let size = LARGE + 10;
            let p = a.alloc_zeroed(layout(size));
            assert!(!p.is_null());
            fill(p, size, 5);
            // The page right after the mapping taken, so that growing it must move it.
            let end = p.add(os::map_len(size).unwrap());
            let guard = libc::mmap(
                end.cast(),
                PAGE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            // Taken by us, or by an earlier mapping (EEXIST): growing in place cannot work.
            let ours = guard != libc::MAP_FAILED;
            if ours {
                assert_eq!(guard, end.cast(), "a fixed mapping, where it was asked");
            } else {
                let errno = std::io::Error::last_os_error().raw_os_error();
                assert_eq!(
                    errno,
                    Some(libc::EEXIST),
                    "the page after is mapped already"
                );
            }
            let q = a.realloc(p, layout(size), 3 * LARGE);
            assert!(!q.is_null());
            assert_ne!(q, p, "moved: the page after it was taken");
            assert!(holds(q, size, 5));
            let grown = layout(3 * LARGE);
            assert!(
                a.slot_of(q, &grown).is_some(),
                "its slot names the new address"
            );
            assert!(a.slot_of(p, &grown).is_none(), "and no slot the old one");
            a.dealloc(q, layout(3 * LARGE));
            assert_eq!(a.mapped_blocks(), 0);
            assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
            if ours {
                libc::munmap(guard, PAGE);
            }
        }
    }

    #[test]
    fn a_resize_within_the_same_pages_keeps_the_mapping() {
        let a = counting::<4>();
        unsafe {
            let p = a.alloc_zeroed(layout(LARGE + 10));
            assert!(!p.is_null());
            fill(p, LARGE + 10, 3);
            let q = a.realloc(p, layout(LARGE + 10), LARGE + 20);
            assert_eq!(q, p, "the same number of pages: not moved");
            assert!(holds(q, LARGE + 10, 3));
            a.dealloc(q, layout(LARGE + 20));
            assert_eq!(a.mapped_blocks(), 0);
        }
    }

    #[test]
    fn a_mapping_the_kernel_refuses_falls_to_the_inner_allocator() {
        let a = counting::<4>();
        unsafe {
            // Far past the address space: the kernel refuses, and so does the system allocator.
            let huge = Layout::from_size_align(isize::MAX as usize / 2, 8).unwrap();
            assert!(a.alloc_zeroed(huge).is_null());
            assert_eq!(a.mapped_blocks(), 0);
            assert_eq!(
                a.inner.live.load(Ordering::Relaxed),
                1,
                "the inner allocator was asked"
            );
        }
    }
    #[test]
    fn threads_allocating_resizing_and_freeing_keep_the_table_right() {
        use std::sync::Arc;
        let a: Arc<ZeroedMapped<Counting, 8>> = Arc::new(ZeroedMapped::new(Counting::default()));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let a = Arc::clone(&a);
                std::thread::spawn(move || unsafe {
                    let mut held: Vec<(usize, usize, u8)> = Vec::new();
                    let mut x = 0x9e37_79b9_u32.wrapping_mul(u32::from(t) + 1);
                    for i in 0..3000u32 {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let seed = (i as u8).wrapping_add(t);
                        match x % 4 {
                            0 | 1 if held.len() < 6 => {
                                let size = LARGE + (x as usize % (3 * LARGE));
                                let p = a.alloc_zeroed(layout(size));
                                assert!(!p.is_null());
                                assert!(*p == 0 && *p.add(size - 1) == 0);
                                *p = seed;
                                *p.add(size - 1) = seed;
                                held.push((p as usize, size, seed));
                            }
                            2 if !held.is_empty() => {
                                let (p, size, seed) = held.swap_remove(x as usize % held.len());
                                let next = if x & 64 == 0 {
                                    100 + x as usize % LARGE
                                } else {
                                    LARGE + x as usize % (4 * LARGE)
                                };
                                let q = a.realloc(p as *mut u8, layout(size), next);
                                assert!(!q.is_null());
                                assert_eq!(*q, seed);
                                if next >= size {
                                    assert_eq!(*q.add(size - 1), seed);
                                }
                                *q.add(next - 1) = seed;
                                held.push((q as usize, next, seed));
                            }
                            _ => {
                                if let Some((p, size, seed)) = held.pop() {
                                    assert_eq!(*(p as *mut u8), seed);
                                    assert_eq!(*(p as *mut u8).add(size - 1), seed);
                                    a.dealloc(p as *mut u8, layout(size));
                                }
                            }
                        }
                    }
                    for (p, size, _) in held {
                        a.dealloc(p as *mut u8, layout(size));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(a.mapped_blocks(), 0);
        assert_eq!(a.inner.live.load(Ordering::Relaxed), 0);
    }
}
