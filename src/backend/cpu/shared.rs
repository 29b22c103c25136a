//! What the kernels share below the scheduler: a pointer threads write disjoint parts
//! through, and each thread's reusable scratch.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Run `f` on this thread's reusable `key`, so that no token allocates; on a fresh value
/// if `key` is already in use further up this thread's stack.
pub fn with_scratch<T: Default + 'static, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut T::default()),
    })
}

/// A pointer that may be shared between threads writing disjoint elements.
#[derive(Clone, Copy)]
pub struct SharedMut(*mut f32);
// SAFETY: used only for writes to disjoint indices, one writer per index.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub fn new(s: &mut [f32]) -> SharedMut {
        SharedMut(s.as_mut_ptr())
    }

    pub fn ptr(self) -> *mut f32 {
        self.0
    }

    /// The pointer `i` elements on (the start of a part some tasks write disjoint pieces
    /// of).
    pub fn offset(self, i: usize) -> SharedMut {
        SharedMut(self.0.wrapping_add(i))
    }

    /// Write `v` at element `i`.
    ///
    /// # Safety
    /// `i` is in bounds and no other thread writes element `i`.
    #[inline]
    pub unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }

    /// Elements `i..i + n` as a slice.
    ///
    /// # Safety
    /// They are in bounds and no other thread touches them while the slice lives.
    #[inline]
    pub unsafe fn run<'a>(self, i: usize, n: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(i), n)
    }
}

/// Sixteen f32 sums reduced as a tree, by halves: lane `i` plus lane `i + 8`, then `i + 4`,
/// `i + 2` and `i + 1`, the order of the AVX-512 reduction.
pub fn tree16(mut v: [f32; 16]) -> f32 {
    for h in [8, 4, 2, 1] {
        for i in 0..h {
            v[i] += v[i + h];
        }
    }
    v[0]
}
