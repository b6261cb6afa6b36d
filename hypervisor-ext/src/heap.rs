//! The monitor's allocator: the C library's `malloc` until a forked pVM's monitor starts, then a
//! fresh region of its own (a `talc` heap in a new mapping).
//!
//! A forked child's monitor shares its parent's pages copy-on-write. With one heap, every
//! `malloc` in the child that lands in a free chunk of an inherited page, and every `free` of
//! an inherited object, which writes the chunk's header and the arena's lists, copies a 4 KiB
//! page: the child's few allocations dirtied ~40-56 KiB of inherited heap. From
//! [`ForkHeap::fresh_region`] on, the child allocates from pages of its own, packed together,
//! and lets go of inherited objects without writing them (their memory is the parent's; it
//! stays shared, and is freed with the process).
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use talc::{ErrOnOom, Span, Talc};

use crate::sys;

/// Address space reserved for a child's heap; only the pages it uses cost memory.
const REGION_SIZE: usize = 1 << 30;

/// The allocator state: the C library's until [`ForkHeap::fresh_region`], a region's after.
pub struct ForkHeap {
    /// The region's base (0: none yet, the C library's heap).
    base: AtomicUsize,
    talc: Mutex<Talc<ErrOnOom>>,
    /// Whether a program allocates through it (`MonitorAlloc` is its global allocator).
    used: AtomicBool,
}

/// The process's [`ForkHeap`]; programs that run monitors make [`MonitorAlloc`] their global
/// allocator, and a forked pVM's monitor switches it to a fresh region.
pub static HEAP: ForkHeap = ForkHeap::new();

/// The global allocator of programs that run monitors (pvmctl): [`HEAP`].
pub struct MonitorAlloc;

impl ForkHeap {
    /// A heap that allocates from the C library's until switched.
    pub const fn new() -> ForkHeap {
        ForkHeap {
            base: AtomicUsize::new(0),
            talc: Mutex::new(Talc::new(ErrOnOom)),
            used: AtomicBool::new(false),
        }
    }

    /// From now on allocates from a fresh region; objects allocated before are never written
    /// again by this allocator (freeing one leaves it be). Call in a forked child, while it is
    /// single-threaded. Does nothing if the process does not allocate through it, or switched
    /// already.
    pub fn fresh_region(&self) {
        if !self.used.load(Ordering::SeqCst) || self.base.load(Ordering::SeqCst) != 0 {
            return;
        }
        let Ok(base) = sys::map_private(REGION_SIZE) else {
            // No address space: the C library's heap still works, only shares less.
            return;
        };
        let mut talc = self
            .talc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let span = Span::from_base_size(base.as_ptr(), REGION_SIZE);
        // SAFETY: the mapping is new, readable and writable, and given to the allocator alone
        // for the life of the process.
        if unsafe { talc.claim(span) }.is_ok() {
            self.base.store(base.as_ptr() as usize, Ordering::SeqCst);
        }
    }

    /// Whether `ptr` is in the fresh region.
    fn owns(&self, ptr: *mut u8) -> bool {
        let base = self.base.load(Ordering::SeqCst);
        base != 0 && (base..base + REGION_SIZE).contains(&(ptr as usize))
    }

    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.base.load(Ordering::SeqCst) == 0 {
            self.used.store(true, Ordering::Relaxed);
            // SAFETY: as the caller promised.
            return unsafe { System.alloc(layout) };
        }
        let mut talc = self
            .talc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: `GlobalAlloc` callers never ask for zero bytes.
        unsafe { talc.malloc(layout) }.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }

    /// # Safety
    /// As [`GlobalAlloc::dealloc`].
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.owns(ptr) {
            let mut talc = self
                .talc
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // SAFETY: allocated from the region with `layout` (the caller's promise).
            unsafe { talc.free(NonNull::new_unchecked(ptr), layout) };
        } else if self.base.load(Ordering::SeqCst) == 0 {
            // SAFETY: allocated by the C library with `layout` (the caller's promise).
            unsafe { System.dealloc(ptr, layout) };
        }
        // Else an object of the C library's heap, allocated before the switch: left as it is,
        // so its page stays shared with the parent.
    }

    /// # Safety
    /// As [`GlobalAlloc::realloc`].
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.base.load(Ordering::SeqCst) == 0 {
            // SAFETY: as the caller promised.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` with `layout`'s alignment is a valid layout (the caller's promise).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size (the caller's promise).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new
            // one is fresh); the old one is released (or left) as `dealloc` says.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

impl Default for ForkHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to `HEAP`, which meets `GlobalAlloc`'s contract: the C
// library's allocator, or the region's, each block returned at most once until released.
unsafe impl GlobalAlloc for MonitorAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised.
        unsafe { HEAP.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller promised.
        unsafe { HEAP.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller promised.
        unsafe { HEAP.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_switch_blocks_come_from_the_region_and_old_ones_are_left_alone() {
        let heap = ForkHeap::new();
        let small = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: non-zero sizes; every block is released with its layout below.
        unsafe {
            let before = heap.alloc(small);
            assert!(!before.is_null() && !heap.owns(before));
            before.write_bytes(0xaa, 24);
            heap.fresh_region();
            assert_ne!(heap.base.load(Ordering::SeqCst), 0, "switched");
            let after = heap.alloc(small);
            assert!(heap.owns(after));
            // An old block grown moves into the region with its bytes; the old one is untouched.
            let grown = heap.realloc(before, small, 4096);
            assert!(heap.owns(grown));
            assert_eq!(std::slice::from_raw_parts(grown, 24), [0xaa; 24]);
            assert_eq!(std::slice::from_raw_parts(before, 24), [0xaa; 24]);
            // Freed region blocks are reused.
            heap.dealloc(after, small);
            let again = heap.alloc(small);
            assert!(heap.owns(again));
            let big = Layout::from_size_align(1 << 20, 4096).unwrap();
            let block = heap.alloc(big);
            assert!(heap.owns(block) && (block as usize).is_multiple_of(4096));
            block.write_bytes(1, 1 << 20);
            heap.dealloc(block, big);
            heap.dealloc(again, small);
            heap.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
            // The old block is left (never freed: it stands for the parent's pages).
        }
    }
}
