//! Typed read-only buffers over a memory map, owned memory or fresh pages: what every
//! stored tensor's elements lie in.

use memmap2::{Mmap, MmapMut};
use std::sync::Arc;

/// A typed, read-only buffer: a window into a shared memory map (zero copy), owned, or
/// owned in fresh pages ([`Buf::pages`]).
pub enum Buf<T: 'static> {
    Mapped {
        map: Arc<Mmap>,
        /// Byte offset of element 0 in `map`; aligned for `T`.
        offset: usize,
        len: usize,
    },
    Owned(Vec<T>),
    /// `len` elements at the start of an anonymous mapping.
    Pages {
        map: MmapMut,
        len: usize,
    },
}

/// Plain numbers, valid for any bits (zeros included): the element types of
/// [`Buf::pages`] and of the kernels' cache-line buffers.
///
/// # Safety
/// Every bit pattern of the type's size must be a valid value.
pub unsafe trait Plain: Copy + Default + Send + Sync + 'static {}
// SAFETY: integers and floats take any bits.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for i16 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}

impl<T: Plain> Buf<T> {
    /// `n` elements written by `fill` (given zeros) into fresh anonymous pages: they start on a
    /// page, so rows of whole cache lines start on one (a 64-byte load then never straddles
    /// two lines), and Linux is asked to back them with 2 MiB pages (a token streams every
    /// quantized weight; huge pages spare it the page walks of 4 KiB ones). The pages are
    /// untouched until `fill` writes them, so the advice holds, and parallel writers place
    /// them near their own cores. Owned zeros where no mapping can be made.
    pub fn pages(n: usize, fill: impl FnOnce(&mut [T])) -> Self {
        match MmapMut::map_anon((n * std::mem::size_of::<T>()).max(1)) {
            Ok(mut map) => {
                // only a hint: the kernel may keep 4 KiB pages
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                // SAFETY: the mapping holds `n` elements of T (zeros, valid for a Plain T) and
                // starts on a page, which is aligned for T.
                fill(unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut T, n) });
                Buf::Pages { map, len: n }
            }
            Err(_) => {
                let mut v = vec![T::default(); n];
                fill(&mut v);
                Buf::Owned(v)
            }
        }
    }
}

impl<T: Copy + 'static> Buf<T> {
    /// A window of `len` elements at byte `offset` of `map`, or an owned copy when the offset
    /// is not aligned for `T` (safetensors does not promise alignment); `None` when the
    /// window does not lie inside the map.
    pub fn from_map(map: &Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let end = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|n| n.checked_add(offset))?;
        let bytes = map.get(offset..end)?;
        if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Some(Buf::Mapped {
                map: Arc::clone(map),
                offset,
                len,
            });
        }
        let mut v = Vec::<T>::with_capacity(len);
        // SAFETY: `v` has capacity for `len` elements; the bytes are plain little-endian
        // numbers of T's size, and every bit pattern of f32/u16 is a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len());
            v.set_len(len);
        }
        Some(Buf::Owned(v))
    }
}

impl<T: 'static> std::ops::Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Buf::Mapped { map, offset, len } => {
                // SAFETY: checked in `from_map`: in bounds and aligned; the map is read-only
                // and lives as long as `self` through the Arc. T is f32, f16 or bf16, for
                // which any bit pattern is valid.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const T, *len) }
            }
            Buf::Owned(v) => v,
            // SAFETY: written as `len` elements of T by `Buf::pages`; only read since.
            Buf::Pages { map, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const T, *len)
            },
        }
    }
}
