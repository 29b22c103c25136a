//! Block quantization of weight matrices: int8 and nf4, 64 weights a block, one scale per
//! block, f32 for int8 and bf16 for nf4 (1.0625 and 0.53125 bytes per weight).
//!
//! | type | block | element | dequantized weight |
//! |---|---|---|---|
//! | int8 | 64 | i8 `q` | `q * s`, `s = absmax / 127` |
//! | nf4 | 64 (32 bytes) | 4-bit index `i` | `NF4[i] * s`, `s = absmax` rounded to bf16 |
//!
//! In an nf4 block, byte `j` holds weight `j` in its low nibble and weight `j + 32` in its
//! high nibble, so that a kernel unpacks 32 weights with one mask and 32 with one shift.
//!
//! NF4 is the normal-float code book of QLoRA (the 16 quantiles of a standard normal,
//! scaled to [-1, 1], with an exact 0) on a grid of 1/127, so that a code is an int8 value.

pub use super::blocks::{Nf4, BLOCK, NF4, NF4_I8, Q8};
use super::buf::{Buf, Plain};
use super::{Data, Matrix};
use crate::isa::Isa;
use half::bf16;
use rayon::prelude::*;

/// A quantization format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Int8,
    Nf4,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Int8 => "int8",
            Quant::Nf4 => "nf4",
        }
    }

    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Quant::Int8 => 1.0 + 4.0 / BLOCK as f64,
            Quant::Nf4 => 0.5 + 2.0 / BLOCK as f64,
        }
    }
}

/// Whether a matrix of this width can be quantized.
pub fn fits(cols: usize) -> bool {
    cols > 0 && cols.is_multiple_of(BLOCK)
}

/// Midpoints between neighbouring codes: the decision boundaries.
const NF4_MID: [f32; 15] = {
    let mut m = [0.0; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (NF4[i] + NF4[i + 1]) * 0.5;
        i += 1;
    }
    m
};

/// Index of the code nearest `v` (in [-1, 1]): how many boundaries lie below it.
#[inline(always)]
fn nf4_index(v: f32) -> u8 {
    NF4_MID.iter().map(|&m| (v > m) as u8).sum()
}

/// Defines `$name(w, out, scales)`: the `#[inline(always)]` loop `$body` compiled for the
/// best instruction set this CPU has, which the compiler vectorises (built for SSE2 alone,
/// the quantizers took most of a quantized model's load). The same operations in the same
/// order whatever the instruction set, so the same bytes.
macro_rules! vectorised {
    ($name:ident, $body:ident, $out:ty) => {
        fn $name(isa: Isa, w: &[f32], out: &mut [$out], scales: &mut [f32]) {
            assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw")]
                unsafe fn avx512(w: &[f32], out: &mut [$out], scales: &mut [f32]) {
                    $body(w, out, scales)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2(w: &[f32], out: &mut [$out], scales: &mut [f32]) {
                    $body(w, out, scales)
                }
                // SAFETY: `isa` runs on this CPU (asserted).
                match isa {
                    Isa::Avx512 => return unsafe { avx512(w, out, scales) },
                    Isa::Avx2 => return unsafe { avx2(w, out, scales) },
                    Isa::Portable => {}
                }
            }
            let _ = isa;
            $body(w, out, scales)
        }
    };
}

vectorised!(quantize_row_q8, q8_body, i8);
vectorised!(quantize_row_nf4, nf4_body, u8);

/// Quantize one row `w [cols]` into `q` and `scales`.
#[inline(always)]
fn q8_body(w: &[f32], q: &mut [i8], scales: &mut [f32]) {
    for ((wb, qb), s) in w
        .chunks(BLOCK)
        .zip(q.chunks_mut(BLOCK))
        .zip(scales.iter_mut())
    {
        let amax = wb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *s = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (o, v) in qb.iter_mut().zip(wb) {
            *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Quantize one row `w [cols]` into `packed` and `scales`.
#[inline(always)]
fn nf4_body(w: &[f32], packed: &mut [u8], scales: &mut [f32]) {
    for ((wb, pb), s) in w
        .chunks(BLOCK)
        .zip(packed.chunks_mut(BLOCK / 2))
        .zip(scales.iter_mut())
    {
        let amax = wb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *s = bf16::from_f32(amax).to_f32();
        let inv = if *s > 0.0 { 1.0 / *s } else { 0.0 };
        // The block's codes in order first (a loop the compiler vectorises), then packed.
        let mut codes = [0u8; BLOCK];
        for (c, v) in codes.iter_mut().zip(wb) {
            *c = nf4_index(v * inv);
        }
        let (lo, hi) = codes.split_at(BLOCK / 2);
        for ((o, l), h) in pb.iter_mut().zip(lo).zip(hi) {
            *o = l | (h << 4);
        }
    }
}

/// Quantize `m` (rows in parallel). `m.cols` must be a multiple of [`BLOCK`].
pub fn quantize(m: &Matrix, q: Quant) -> Matrix {
    quantize_from(m.rows, m.cols, q, |r, buf| m.row_f32(r, buf))
}

/// Quantize the `[rows, cols]` matrix whose row `r` `row(r, buf)` writes in f32 (rows in
/// parallel, so that no f32 copy of the whole matrix is made). `cols` must be a multiple
/// of [`BLOCK`].
pub fn quantize_from(
    rows: usize,
    cols: usize,
    q: Quant,
    row: impl Fn(usize, &mut [f32]) + Sync,
) -> Matrix {
    assert!(
        fits(cols),
        "quantize: width {cols} is not a multiple of {BLOCK}"
    );
    let isa = Isa::detect();
    let m = (rows, cols, &row);
    let data = match q {
        Quant::Int8 => {
            let (qs, scales) = quantize_rows(m, cols, |x, q, s| quantize_row_q8(isa, x, q, s));
            Data::Q8(Q8 {
                qs,
                scales: Buf::Owned(scales),
            })
        }
        Quant::Nf4 => {
            let (packed, scales) =
                quantize_rows(m, cols / 2, |x, p, s| quantize_row_nf4(isa, x, p, s));
            // bf16 already: the quantizer rounded them
            let scales = Buf::Owned(scales.iter().map(|&s| bf16::from_f32(s)).collect());
            Data::Nf4(Nf4 { packed, scales })
        }
    };
    Matrix { rows, cols, data }
}

/// The rows of `(rows, cols, source)`, each written in f32 by `source` and quantized by
/// `row` (into `width` codes and `cols / 64` scales), in parallel: the codes
/// `[rows, width]` in fresh pages ([`Buf::pages`]) and the scales `[rows, cols / 64]`.
fn quantize_rows<T: Plain>(
    (rows, cols, source): (usize, usize, &(impl Fn(usize, &mut [f32]) + Sync)),
    width: usize,
    row: impl Fn(&[f32], &mut [T], &mut [f32]) + Sync,
) -> (Buf<T>, Vec<f32>) {
    let nb = cols / BLOCK;
    let mut scales = vec![0.0f32; rows * nb];
    let codes = Buf::pages(rows * width, |codes: &mut [T]| {
        codes
            .par_chunks_mut(width)
            .zip(scales.par_chunks_mut(nb))
            .enumerate()
            .for_each_init(
                || vec![0.0f32; cols],
                |buf, (r, (cr, sr))| {
                    source(r, buf);
                    row(buf, cr, sr);
                },
            )
    });
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(rows: usize, cols: usize) -> Matrix {
        let v = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / cols) as f32))
            .collect();
        Matrix::from_f32(rows, cols, v)
    }

    /// The quantizers, vectorised per instruction set, give the same bytes on every one
    /// (ties, zeros and a zero block included).
    #[test]
    fn quantizers_give_the_same_bytes_on_every_isa() {
        let mut w: Vec<f32> = ramp(1, 256).to_f32();
        w[..64].iter_mut().for_each(|v| *v = 0.0);
        w[64] = 0.5;
        w[65] = -0.5;
        w[66] = NF4_MID[7];
        let run = |isa| {
            let (mut q, mut s8) = (vec![0i8; 256], vec![0.0; 4]);
            let (mut p, mut s4) = (vec![0u8; 128], vec![0.0; 4]);
            quantize_row_q8(isa, &w, &mut q, &mut s8);
            quantize_row_nf4(isa, &w, &mut p, &mut s4);
            (q, p, s8, s4)
        };
        let want = run(Isa::Portable);
        assert!(want.1.iter().any(|&b| b != 0x77) && want.0.iter().any(|&q| q != 0));
        for isa in Isa::available() {
            assert!(run(isa) == want, "{isa:?}");
        }
    }

    /// Quantized rows of whole cache lines start on one, so the kernels' 64-byte loads never
    /// straddle two lines.
    #[test]
    fn quantized_rows_start_on_cache_lines() {
        let m = ramp(3, 128);
        let line = |p: *const u8| p as usize % 64;
        match quantize(&m, Quant::Int8).data {
            Data::Q8(q) => assert_eq!(line(q.qs.as_ptr() as *const u8), 0),
            _ => panic!("int8 quantization gave another format"),
        }
        match quantize(&m, Quant::Nf4).data {
            Data::Nf4(q) => assert_eq!(line(q.packed.as_ptr()), 0),
            _ => panic!("nf4 quantization gave another format"),
        }
    }

    #[test]
    fn int8_round_trip_error_is_within_half_a_step() {
        let m = ramp(3, 128);
        let q = quantize(&m, Quant::Int8);
        let (orig, back) = (m.to_f32(), q.to_f32());
        for (r, (o, b)) in orig.chunks(128).zip(back.chunks(128)).enumerate() {
            for (blk, (ob, bb)) in o.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
                let amax = ob.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                for (x, y) in ob.iter().zip(bb) {
                    assert!(
                        (x - y).abs() <= amax / 127.0 * 0.5 + 1e-6,
                        "row {r} block {blk}"
                    );
                }
            }
        }
    }

    #[test]
    fn nf4_picks_the_nearest_code() {
        for (i, &c) in NF4.iter().enumerate() {
            assert_eq!(nf4_index(c) as usize, i);
        }
        assert_eq!(nf4_index(0.03), 7);
        assert_eq!(nf4_index(0.05), 8);
        let m = Matrix::from_f32(
            1,
            64,
            (0..64).map(|i| if i == 5 { -2.0 } else { 1.0 }).collect(),
        );
        let back = quantize(&m, Quant::Nf4).to_f32();
        assert_eq!(back[5], -2.0);
        assert_eq!(back[0], NF4[nf4_index(0.5) as usize] * 2.0);
    }

    /// An nf4 scale is the block's absolute maximum rounded to bf16 (exact for bf16
    /// weights), and the codes are chosen for the rounded scale.
    #[test]
    fn nf4_scales_are_bf16_and_the_codes_fit_them() {
        let amax = 1.0 + 3.0 / 1024.0; // between the bf16 neighbours 1 and 1 + 2^-7
        let s = bf16::from_f32(amax);
        assert_ne!(s.to_f32(), amax);
        let mut w: Vec<f32> = (0..64)
            .map(|i| [amax, -0.3 * amax, 0.6 * amax][i % 3])
            .collect();
        // a weight between a boundary times the rounded scale and the same times amax: its
        // code tells which scale chose it
        let split = NF4_MID[12] * (s.to_f32() + amax) / 2.0;
        assert_ne!(nf4_index(split / amax), nf4_index(split / s.to_f32()));
        w[7] = split;
        let q = quantize(&Matrix::from_f32(1, 64, w.clone()), Quant::Nf4);
        let Data::Nf4(n) = &q.data else {
            panic!("nf4 quantization gave another format")
        };
        assert_eq!(n.scales[0], s);
        for (x, y) in w.iter().zip(q.to_f32()) {
            let code = nf4_index(x / s.to_f32()) as usize;
            assert_eq!(y, NF4[code] * s.to_f32(), "{x}");
        }
        let m = Matrix::from_f32(
            1,
            64,
            w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        );
        let Data::Nf4(n) = quantize(&m, Quant::Nf4).data else {
            panic!("nf4 quantization gave another format")
        };
        let top = m.to_f32().iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert_eq!(n.scales[0].to_f32(), top);
    }
}
