//! The process's allocator: an inner allocator (mimalloc in the shipped build) for everything
//! but blocks of [`LARGE`] bytes or more, which are mapped from the kernel on their own and
//! unmapped when freed, as glibc's malloc does past its mmap threshold.
//!
//! Why: mimalloc 2.x zeroes with `memset` a block it cannot tell is zero, and so makes it
//! resident. sled allocates its process-wide metrics zeroed when the store opens (~40
//! histograms of 512 KiB, ~21 MB, which its default `no_metrics` never writes), and flowgate
//! started at 43–46 MB of RSS with mimalloc 2.x against 20–22 with 3.x (`bench/memory.sh`,
//! stops 30 and 31; `perf record -e page-faults` put 57% of the start's faults in that
//! `memset`). A fresh anonymous mapping is zero and costs no memory until it is touched. A
//! large block freed also goes back to the kernel at once instead of staying in the inner
//! allocator's segments. Large blocks are rare on the request path (a big request body, a
//! long answer's buffers): a mapping costs a system call or two, which they amortise.

use std::alloc::{GlobalAlloc, Layout};

/// Blocks of this size or more are mapped on their own.
pub const LARGE: usize = 256 * 1024;
/// The alignment a mapping is sure to have (the smallest page size).
#[cfg(target_os = "linux")]
const PAGE: usize = 4096;

/// Large blocks from the kernel, the others from `A`.
pub struct LargeMapped<A>(pub A);

/// Whether a block of `layout` is mapped. A function of the layout alone, so that `dealloc`
/// and `realloc` send a block back where `alloc` took it from.
#[cfg(target_os = "linux")]
fn mapped(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

#[cfg(not(target_os = "linux"))]
fn mapped(_: &Layout) -> bool {
    false
}

/// The length of the mapping of a `size`-byte block: whole pages.
#[cfg(target_os = "linux")]
fn map_len(size: usize) -> Option<usize> {
    size.checked_next_multiple_of(PAGE)
}

#[cfg(target_os = "linux")]
mod os {
    use super::map_len;
    use std::ptr::null_mut;

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
    // Never called: `mapped` is false off Linux.
    pub(super) fn map(_: usize) -> *mut u8 {
        std::ptr::null_mut()
    }
    pub(super) unsafe fn unmap(_: *mut u8, _: usize) {}
    pub(super) unsafe fn remap(_: *mut u8, _: usize, _: usize) -> *mut u8 {
        std::ptr::null_mut()
    }
}

// SAFETY: each block is returned to where it came from: `mapped` decides from the layout,
// which `dealloc` and `realloc` receive unchanged from `alloc`. Mappings are page-aligned,
// and only layouts aligned to a page or less are mapped; they are zero when fresh.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LargeMapped<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            os::map(layout.size())
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            os::map(layout.size())
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: a mapped layout's block came from `os::map` or `os::remap`.
            unsafe { os::unmap(ptr, layout.size()) }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded to the alignment, does not
        // overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(&layout), mapped(&new_layout)) {
            // SAFETY: the caller's contract, passed on.
            (false, false) => unsafe { self.0.realloc(ptr, layout, new_size) },
            // SAFETY: a mapped block of `layout.size()` bytes.
            (true, true) => unsafe { os::remap(ptr, layout.size(), new_size) },
            _ => {
                // Across the threshold: a block from the other side, the bytes copied.
                // SAFETY: a valid, non-zero layout (`new_size` > 0 per the caller).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks hold at least the bytes copied and are distinct.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::alloc::System;

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

    #[test]
    fn a_large_zeroed_block_is_mapped_untouched() {
        let a = LargeMapped(System);
        let size = 4 * 1024 * 1024;
        unsafe {
            let p = a.alloc_zeroed(layout(size));
            assert!(!p.is_null());
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
        }
    }

    #[test]
    fn the_shipped_allocator_leaves_a_large_zeroed_block_untouched() {
        // What sled's metrics are: many zeroed blocks of 512 KiB, never written.
        let a = LargeMapped(mimalloc::MiMalloc);
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
    fn small_and_over_aligned_blocks_go_to_the_inner_allocator() {
        assert!(!mapped(&layout(LARGE - 1)));
        assert!(mapped(&layout(LARGE)));
        assert!(!mapped(&Layout::from_size_align(LARGE, 2 * PAGE).unwrap()));
        let a = LargeMapped(System);
        unsafe {
            let big = Layout::from_size_align(LARGE * 2, 2 * PAGE).unwrap();
            let p = a.alloc(big);
            assert!(!p.is_null());
            assert_eq!(p as usize % (2 * PAGE), 0);
            a.dealloc(p, big);
        }
    }

    /// A byte that differs from its neighbours and from the bytes 256 and 65,536 away, so that
    /// a shifted copy shows.
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
    fn realloc_keeps_the_bytes_across_the_threshold_both_ways() {
        let a = LargeMapped(System);
        unsafe {
            // Small, then large (copied into a mapping), larger (remapped), then small again.
            let mut size = 1000;
            let mut p = a.alloc(layout(size));
            assert!(!p.is_null());
            fill(p, size, 1);
            for next in [LARGE + 10, 3 * LARGE + 5, LARGE + 20, 500] {
                let q = a.realloc(p, layout(size), next);
                assert!(!q.is_null());
                let kept = size.min(next);
                assert!(
                    holds(q, kept, 1),
                    "{size} -> {next}: the first {kept} bytes kept"
                );
                if next > size {
                    fill(q, next, 1);
                }
                p = q;
                size = next;
            }
            a.dealloc(p, layout(size));
        }
    }

    #[test]
    fn a_resize_within_the_same_pages_keeps_the_mapping() {
        let a = LargeMapped(System);
        unsafe {
            let p = a.alloc(layout(LARGE + 10));
            assert!(!p.is_null());
            fill(p, LARGE + 10, 3);
            let q = a.realloc(p, layout(LARGE + 10), LARGE + 20);
            assert_eq!(q, p, "the same number of pages: not moved");
            assert!(holds(q, LARGE + 10, 3));
            a.dealloc(q, layout(LARGE + 20));
        }
    }

    #[test]
    fn a_mapping_the_kernel_refuses_is_null() {
        let a = LargeMapped(System);
        unsafe {
            // Far past the address space: the kernel refuses, the allocator says null.
            let huge = Layout::from_size_align(isize::MAX as usize / 2, 8).unwrap();
            assert!(a.alloc(huge).is_null());
        }
    }
}
