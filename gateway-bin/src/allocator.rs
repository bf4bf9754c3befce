//! The binary's global allocator: mimalloc, called the way C calls it.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`,
//! alignment 1 to 16 included. mimalloc's aligned entry takes its fast path only for a
//! block of at most 1 KiB when the next free block happens to be aligned; otherwise
//! (larger blocks, an exhausted free list, sizes that are not a power of two) it goes
//! to a generic path that over-allocates by `align - 1` and hands out an interior
//! pointer, which every later `mi_free` of that page has to undo. In the gateway that
//! was ~27 of a request's allocations (callgrind, docs/benchmarks.md).
//!
//! Every block plain `mi_malloc` returns is already aligned to 8, and to 16 when its
//! size is a multiple of 16: size classes are multiples of 8 (of 16 from 16 bytes up,
//! for sizes that are multiples of 16), and a page's first block is 16-aligned
//! (`MI_PAGE_MIN_START_BLOCK_ALIGN`). Such requests go to the plain calls here; only
//! larger alignments (tokio's 128-byte task cells, for one) take the aligned ones. The
//! same rule as the Rust standard library's `System` allocator (`MIN_ALIGN`), with
//! mimalloc's guarantees.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc behind the global allocator interface, plain calls where alignment allows.
pub struct MiMalloc;

/// Whether every block plain `mi_malloc(size)` returns is aligned to `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= 8 || (align == 16 && size.is_multiple_of(16))
}

// SAFETY: every pointer handed out comes from mimalloc, aligned as `plain` explains or
// by mimalloc's aligned calls, and goes back to mimalloc (`mi_free` and `mi_realloc`
// take any pointer mimalloc returned, aligned or not).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls take any size and a power-of-two alignment.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a block this allocator returned with `layout`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment the rule sends to the plain calls comes back aligned,
    /// over enough blocks of each size to walk through several pages of its class, and
    /// the contents survive growing and shrinking.
    #[test]
    fn plain_calls_return_aligned_blocks() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in (1..=300).chain([1000, 1024, 1500, 4096, 5000, 70_000, 1 << 21]) {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                let blocks: Vec<*mut u8> = (0..if size > 5000 { 4 } else { 300 })
                    .map(|i| {
                        // SAFETY: the layout has a non-zero size.
                        let p = unsafe {
                            if i % 2 == 0 {
                                a.alloc(layout)
                            } else {
                                a.alloc_zeroed(layout)
                            }
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        p
                    })
                    .collect();
                for p in blocks {
                    // SAFETY: `p` is a live block of `layout`; the sizes are non-zero.
                    unsafe {
                        p.write_bytes(0xa5, size);
                        let grown = a.realloc(p, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                        assert_eq!(*grown.add(size - 1), 0xa5);
                        let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                        let shrunk = a.realloc(grown, grown_layout, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0, "shrunk {size} align {align}");
                        assert_eq!(*shrunk, 0xa5);
                        let last = Layout::from_size_align(size.div_ceil(2), align).unwrap();
                        a.dealloc(shrunk, last);
                    }
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_after_reuse() {
        let a = MiMalloc;
        let layout = Layout::from_size_align(200, 8).unwrap();
        for _ in 0..1000 {
            // SAFETY: the layout has a non-zero size; each block is freed once.
            unsafe {
                let p = a.alloc(layout);
                p.write_bytes(0xff, 200);
                a.dealloc(p, layout);
                let z = a.alloc_zeroed(layout);
                assert!((0..200).all(|i| *z.add(i) == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
