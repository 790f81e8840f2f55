//! Measured (not virtual) resource use of in-process participants: peak resident
//! memory of this process, per participant, on Linux.
//!
//! `reset_peak_rss` writes `5` to `/proc/self/clear_refs`, which resets the kernel's
//! high-water mark `VmHWM` to the current RSS; `peak_rss_bytes` reads `VmHWM` from
//! `/proc/self/status`. Elsewhere (or without permission) both are no-ops and the
//! peak is `None`.

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
