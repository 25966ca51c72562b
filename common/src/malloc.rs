//! glibc's heap behaviour for processes that briefly hold large buffers.
//!
//! glibc serves allocations of at least `M_MMAP_THRESHOLD` (128 KiB) with their own mapping,
//! unmapped when freed, but each such free raises the threshold to that size (up to 32 MiB).
//! After one discovery answer or one big page, buffers of that size come from arenas, one
//! per thread that allocated them, and freed arena memory is kept: the adapter's RSS
//! stepped from 27 MB to 75 MB over a soak, and stayed there. Fixing the threshold at its
//! default keeps large buffers mapped, so their memory goes back when they are dropped.

/// glibc's default threshold, which [`keep_large_buffers_mapped`] fixes.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// What [`keep_large_buffers_mapped`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmapThreshold {
    /// Fixed at [`MMAP_THRESHOLD`].
    Fixed,
    /// Left alone: `MALLOC_MMAP_THRESHOLD_` in the environment says what the operator wants.
    FromEnvironment,
    /// Not glibc, or glibc refused.
    Unchanged,
}

/// Fixes glibc's mmap threshold at its default (which also stops it from moving the trim
/// threshold), unless the environment sets one. Call it first thing in `main`.
pub fn keep_large_buffers_mapped() -> MmapThreshold {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return MmapThreshold::FromEnvironment;
    }
    if set_mmap_threshold(MMAP_THRESHOLD) {
        MmapThreshold::Fixed
    } else {
        MmapThreshold::Unchanged
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_mmap_threshold(bytes: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    // SAFETY: mallopt only sets a malloc parameter under glibc's own lock, so any thread may
    // call it at any time with any value (it returns 0 for one it refuses).
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(set_mmap_threshold(MMAP_THRESHOLD));
    }
}
