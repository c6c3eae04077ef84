//! The process's allocator: mimalloc, entered by its plain functions where they suffice.
//!
//! `mimalloc::MiMalloc` passes every request to `mi_malloc_aligned`, whose checks made each
//! allocation about twice the instructions of `mi_malloc` (callgrind: 67 per call, and a click
//! costs the HTTP thread 13 allocations). Every mimalloc block is aligned to at least 8 bytes
//! (its size classes are whole words), so requests aligned to 8 or less take the plain
//! functions; anything stricter still takes the aligned ones.
//!
//! The one place outside tests where the workspace allows `unsafe`: a `GlobalAlloc` cannot be
//! written without it, and each function only forwards to mimalloc's matching entry point.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every mimalloc block has, whatever its size.
const PLAIN_ALIGN: usize = 8;

/// mimalloc as the global allocator; see the module docs.
#[derive(Debug)]
pub struct Allocator;

unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to a few pages, at every alignment from 1 to 4096: the block is aligned
    /// as asked, writable across its length, and survives growing and shrinking.
    #[test]
    fn blocks_are_aligned_as_asked_and_usable() {
        let a = Allocator;
        for align_log in 0..=12 {
            let align = 1usize << align_log;
            for size in (1..64).chain([100, 255, 256, 1000, 4096, 10_000, 70_000]) {
                let Ok(layout) = Layout::from_size_align(size, align) else { continue };
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed { a.alloc_zeroed(layout) } else { a.alloc(layout) };
                        assert!(!p.is_null(), "size {size} align {align}");
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                        }
                        std::ptr::write_bytes(p, 0xAB, size);
                        let grown = a.realloc(p, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "grown: size {size} align {align}");
                        assert!(std::slice::from_raw_parts(grown, size).iter().all(|&b| b == 0xAB));
                        let grown_layout = Layout::from_size_align_unchecked(size * 3, align);
                        let shrunk = a.realloc(grown, grown_layout, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0, "shrunk: size {size} align {align}");
                        assert!(std::slice::from_raw_parts(shrunk, size.div_ceil(2)).iter().all(|&b| b == 0xAB));
                        a.dealloc(shrunk, Layout::from_size_align_unchecked(size.div_ceil(2), align));
                    }
                }
            }
        }
    }
}
