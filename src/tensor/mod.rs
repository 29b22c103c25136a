//! Weight storage. Matrices stay in the memory-mapped checkpoint in their stored dtype
//! (f32, f16 or bf16) and are converted to f32 only inside the kernels, a row at a time, so
//! a bf16 model is resident at about its file size. Small vectors (norms, mixes, decays) are
//! converted to f32 once at load. Large matrices can be quantized at load ([`quant`]).

pub mod blocks;
pub mod buf;
pub mod ggml;
pub mod panels;
pub mod quant;

pub use buf::{Buf, Plain};
use half::{bf16, f16};

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

/// The elements of a matrix in their stored type.
pub enum Data {
    F32(Buf<f32>),
    F16(Buf<f16>),
    BF16(Buf<bf16>),
    Q8(blocks::Q8),
    /// int8 stored 32 rows at a time for the CPU's integer kernels ([`panels`]).
    Q8Panels(blocks::Q8),
    Nf4(blocks::Nf4),
    /// nf4 stored 32 rows at a time for the CPU's integer kernels ([`panels`]).
    Nf4Panels(blocks::Nf4),
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
            Data::Q8(_) => n + n / blocks::BLOCK * 4,
            Data::Q8Panels(q) => q.qs.len() + q.scales.len() * 4,
            Data::Nf4(_) => n / 2 + n / blocks::BLOCK * 2,
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
            Data::Q8(q) => blocks::dequantize_q8(q, c, r, out),
            Data::Q8Panels(q) => panels::q8_dequantize_row(q, c, r, out),
            Data::Nf4(q) => blocks::dequantize_nf4(q, c, r, out),
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

impl Matrix {
    /// Every weight times `g` (a power of two: GGUF's undone rescaling), owned, in the same
    /// float type where every product fits it, else in f32.
    pub fn scaled(self, g: f32) -> Matrix {
        let v: Vec<f32> = self.to_f32().into_iter().map(|x| x * g).collect();
        let fits = |back: fn(f32) -> f32| v.iter().all(|&y| back(y) == y);
        let data = match self.data {
            Data::F16(_) if fits(|y| f16::from_f32(y).to_f32()) => {
                Data::F16(Buf::Owned(v.iter().map(|&y| f16::from_f32(y)).collect()))
            }
            Data::BF16(_) if fits(|y| bf16::from_f32(y).to_f32()) => {
                Data::BF16(Buf::Owned(v.iter().map(|&y| bf16::from_f32(y)).collect()))
            }
            _ => Data::F32(Buf::Owned(v)),
        };
        Matrix { data, ..self }
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
    fn scaling_keeps_the_type_where_exact() {
        let h = |v: &[f32]| Matrix {
            rows: 1,
            cols: v.len(),
            data: Data::F16(Buf::Owned(v.iter().map(|&x| f16::from_f32(x)).collect())),
        };
        let m = h(&[0.5, -3.0]).scaled(8.0);
        assert_eq!((m.dtype(), m.to_f32()), (DType::F16, vec![4.0, -24.0]));
        // past f16's range: f32
        let m = h(&[60000.0, 1.0]).scaled(4.0);
        assert_eq!((m.dtype(), m.to_f32()), (DType::F32, vec![240000.0, 4.0]));
    }

    #[test]
    fn bf16_conversion_is_exact() {
        let src = [bf16::from_f32(1.5), bf16::from_f32(-0.0078125), bf16::MAX];
        let mut out = [0.0; 3];
        bf16_to_f32(&src, &mut out);
        assert_eq!(out, [1.5, -0.0078125, bf16::MAX.to_f32()]);
    }
}
