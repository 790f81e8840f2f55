//! Measured (not virtual) resource use of in-process participants, per participant.
//!
//! Two measures:
//! - **Resident memory** of this process on Linux. `reset_peak_rss` writes `5` to
//!   `/proc/self/clear_refs`, which resets the kernel's high-water mark `VmHWM` to the
//!   current RSS; `peak_rss_bytes` reads `VmHWM` from `/proc/self/status`. Elsewhere
//!   (or without permission) both are no-ops and the peak is `None`. Memory a previous
//!   participant freed stays resident (the allocator keeps it), so a later
//!   participant's growth over its start understates what it used.
//! - **Live heap bytes**, counted by [`CountingAlloc`] when a binary installs it as its
//!   `#[global_allocator]` (the `fluxmoe` binary does): every allocation and free of
//!   every thread, so the peak over a participant's training call minus the live bytes
//!   at its start is exactly what that call held at most, whatever the allocator
//!   keeps. Without it installed the heap measures are `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live heap bytes and their peak (see the module docs).
pub struct CountingAlloc;

impl CountingAlloc {
    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    fn shrank(by: usize) {
        LIVE.fetch_sub(by, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; the counters
// are atomics and allocate nothing.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            INSTALLED.store(true, Ordering::Relaxed);
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            INSTALLED.store(true, Ordering::Relaxed);
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                Self::shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Live heap bytes now; `None` unless [`CountingAlloc`] is the global allocator.
pub fn heap_live_bytes() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| LIVE.load(Ordering::Relaxed) as u64)
}

/// Start a new heap-peak window at the live bytes now.
pub fn reset_heap_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Peak live heap bytes since the last [`reset_heap_peak`]; `None` unless
/// [`CountingAlloc`] is the global allocator.
pub fn heap_peak_bytes() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| PEAK.load(Ordering::Relaxed) as u64)
}

/// Start a new peak-memory window.
pub fn reset_peak_rss() {
    #[cfg(target_os = "linux")]
    {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

/// Peak resident memory of this process since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resident memory of this process now, in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = field;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_tracks_a_large_allocation_and_resets() {
        if peak_rss_bytes().is_none() {
            eprintln!("skipped: no /proc/self/status here");
            return;
        }
        reset_peak_rss();
        let before = peak_rss_bytes().unwrap();
        {
            let big = vec![1u8; 256 << 20];
            std::hint::black_box(&big);
        }
        let during = peak_rss_bytes().unwrap();
        assert!(during >= before + (200 << 20), "{before} -> {during}");
        reset_peak_rss();
        let after = peak_rss_bytes().unwrap();
        assert!(after < during, "reset: {during} -> {after}");
    }
}
