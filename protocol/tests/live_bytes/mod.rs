//! A global allocator counting the live bytes of the current thread, for the tests that
//! measure what idle connections keep on the heap (protocol and transport-ws). Each test
//! crate installs it with `#[global_allocator]`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes allocated minus the bytes freed by the current thread (the test harness
/// runs other threads).
pub(crate) struct LiveBytes;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

fn add(n: usize) {
    // `try_with`: thread-local storage may already be gone while a thread exits.
    let _ = LIVE.try_with(|l| l.set(l.get() + n as i64));
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + n as u64));
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get() - n as i64));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        sub(layout.size());
        add(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Bytes allocated and not yet freed by the current thread.
pub(crate) fn live() -> i64 {
    LIVE.with(Cell::get)
}

/// Bytes the current thread has allocated so far, freed or not (a reallocation counts its
/// new size).
#[allow(dead_code)]
pub(crate) fn allocated() -> u64 {
    ALLOCATED.with(Cell::get)
}
