//! Per-ISA kernels (`x86`: AVX-512 and AVX2 in `std::arch`) and the prefetch hints every
//! kernel uses. Callers reach a kernel only through an [`crate::isa::Isa`] detected on this
//! CPU; each kernel has a scalar twin in [`super::scalar`] that the tests hold it to.

#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Ask for the cache line `ahead` bytes past `p` into L2. Only a hint: the address may lie
/// past the end of the weights.
#[inline(always)]
pub fn prefetch_ahead<T>(p: *const T, ahead: usize) {
    prefetch_l2((p as *const i8).wrapping_add(ahead));
}

/// Ask for the cache line at `p` into L2. Only a hint: `p` may be any address.
#[inline(always)]
pub fn prefetch_l2<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Ask for the cache line at `p` into L1. Only a hint: `p` may be any address.
#[inline(always)]
pub fn prefetch_l1<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
