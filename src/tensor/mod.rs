//! Weight storage. Matrices stay in the memory-mapped checkpoint in their stored dtype
//! (f32, f16 or bf16) and are converted to f32 only inside the kernels, a row at a time, so
//! a bf16 model is resident at about its file size. Small vectors (norms, mixes, decays) are
//! converted to f32 once at load. Large matrices can be quantized at load ([`quant`]).

pub mod panels;
pub mod quant;

use half::{bf16, f16};
use memmap2::{Mmap, MmapMut};
use std::sync::Arc;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// int8 blocks ([`quant`]).
    Int8,
    /// nf4 blocks ([`quant`]).
    Nf4,
}

impl DType {
    /// Bytes per stored element (per packed byte for nf4).
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Int8 | DType::Nf4 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Int8 => "int8",
            DType::Nf4 => "nf4",
        }
    }
}

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

/// The elements of a matrix in their stored type.
pub enum Data {
    F32(Buf<f32>),
    F16(Buf<f16>),
    BF16(Buf<bf16>),
    Q8(quant::Q8),
    /// int8 stored 32 rows at a time for the CPU's integer kernels ([`panels`]).
    Q8Panels(quant::Q8),
    Nf4(quant::Nf4),
    /// nf4 stored 32 rows at a time for the CPU's integer kernels ([`panels`]).
    Nf4Panels(quant::Nf4),
}

/// A weight matrix `[rows, cols]` in `Linear` orientation: `y = W x` means
/// `y[r] = sum_c W[r, c] x[c]`.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Data,
}

impl Matrix {
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::Q8(_) | Data::Q8Panels(_) => DType::Int8,
            Data::Nf4(_) | Data::Nf4Panels(_) => DType::Nf4,
        }
    }

    /// Bytes the elements (and scales) take.
    pub fn byte_len(&self) -> usize {
        let n = self.rows * self.cols;
        match &self.data {
            Data::Q8(_) => n + n / quant::BLOCK * 4,
            Data::Q8Panels(q) => q.qs.len() + q.scales.len() * 4,
            Data::Nf4(_) => n / 2 + n / quant::BLOCK * 2,
            Data::Nf4Panels(q) => q.packed.len() + q.scales.len() * 2,
            _ => n * self.dtype().size(),
        }
    }

    /// Row `r` converted to f32 into `out` (`[cols]`).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let range = r * c..(r + 1) * c;
        match &self.data {
            Data::F32(b) => out.copy_from_slice(&b[range]),
            Data::F16(b) => f16_to_f32(&b[range], out),
            Data::BF16(b) => bf16_to_f32(&b[range], out),
            Data::Q8(q) => quant::dequantize_q8(q, c, r, out),
            Data::Q8Panels(q) => panels::q8_dequantize_row(q, c, r, out),
            Data::Nf4(q) => quant::dequantize_nf4(q, c, r, out),
            Data::Nf4Panels(q) => panels::nf4_dequantize_row(q, c, r, out),
        }
    }

    /// The whole matrix as f32, `[rows * cols]`. For tests and small matrices only.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            self.row_f32(r, row);
        }
        out
    }

    /// An owned f32 matrix (tests, synthetic weights).
    pub fn from_f32(rows: usize, cols: usize, v: Vec<f32>) -> Self {
        assert_eq!(v.len(), rows * cols);
        Matrix {
            rows,
            cols,
            data: Data::F32(Buf::Owned(v)),
        }
    }

    /// Rows `r0 .. r0 + n` as an owned matrix in the same dtype (slices of the small
    /// `[5, M, D]` LoRA tensor).
    pub fn row_block(&self, r0: usize, n: usize) -> Matrix {
        let range = r0 * self.cols..(r0 + n) * self.cols;
        let data = match &self.data {
            Data::F32(b) => Data::F32(Buf::Owned(b[range].to_vec())),
            Data::F16(b) => Data::F16(Buf::Owned(b[range].to_vec())),
            Data::BF16(b) => Data::BF16(Buf::Owned(b[range].to_vec())),
            Data::Q8(_) | Data::Q8Panels(_) | Data::Nf4(_) | Data::Nf4Panels(_) => {
                unreachable!("LoRA matrices are never quantized")
            }
        };
        Matrix {
            rows: n,
            cols: self.cols,
            data,
        }
    }

    /// The transpose, in the same dtype, owned. Used once at load for the small LoRA
    /// matrices that checkpoints store as `[in, out]`.
    pub fn transposed(&self) -> Matrix {
        fn tr<T: Copy>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(src.len());
            for c in 0..cols {
                out.extend((0..rows).map(|r| src[r * cols + c]));
            }
            out
        }
        let (r, c) = (self.rows, self.cols);
        let data = match &self.data {
            Data::F32(b) => Data::F32(Buf::Owned(tr(b, r, c))),
            Data::F16(b) => Data::F16(Buf::Owned(tr(b, r, c))),
            Data::BF16(b) => Data::BF16(Buf::Owned(tr(b, r, c))),
            Data::Q8(_) | Data::Q8Panels(_) | Data::Nf4(_) | Data::Nf4Panels(_) => {
                unreachable!("LoRA matrices are never quantized")
            }
        };
        Matrix {
            rows: c,
            cols: r,
            data,
        }
    }
}

/// f16 -> f32 for a slice (`half` uses F16C where the CPU has it).
pub fn f16_to_f32(src: &[f16], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(out);
}

/// bf16 -> f32 for a slice: the bf16 bits are the high half of the f32.
pub fn bf16_to_f32(src: &[bf16], out: &mut [f32]) {
    for (o, s) in out.iter_mut().zip(src) {
        *o = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_keeps_dtype_and_values() {
        let v: Vec<bf16> = (0..6).map(|i| bf16::from_f32(i as f32)).collect();
        let m = Matrix {
            rows: 2,
            cols: 3,
            data: Data::BF16(Buf::Owned(v)),
        };
        let t = m.transposed();
        assert_eq!((t.rows, t.cols, t.dtype()), (3, 2, DType::BF16));
        assert_eq!(t.to_f32(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn bf16_conversion_is_exact() {
        let src = [bf16::from_f32(1.5), bf16::from_f32(-0.0078125), bf16::MAX];
        let mut out = [0.0; 3];
        bf16_to_f32(&src, &mut out);
        assert_eq!(out, [1.5, -0.0078125, bf16::MAX.to_f32()]);
    }
}
