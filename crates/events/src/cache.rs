//! Cache hints for the ordered steps, whose tables (open queue IDs, open recipients)
//! are far larger than the CPU's caches: fetching the entries of the next few lines
//! while the current one is worked on lets their memory loads overlap.

/// Ask the CPU to load the cache line holding `p` (a hint: it never faults and never
/// changes what the program computes; a no-op off x86_64).
#[inline]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of every x86_64 CPU, and a prefetch instruction neither faults
    // (even on an invalid address) nor reads into the program: it only warms the cache.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
