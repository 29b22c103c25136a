//! The int8 and nf4 block formats as stored: 64 weights a block, the NF4 code book, and
//! a row decoded to f32. [`super::quant`] makes them; the kernels read them.

use super::buf::Buf;
use half::bf16;

/// Weights per block.
pub const BLOCK: usize = 64;

/// The normal-float-4 code book as integers: the QLoRA values (the 16 quantiles of a
/// standard normal, scaled to [-1, 1], with an exact 0) times 127, rounded. Integer codes
/// let the CPU kernels multiply nf4 weights with int8 instructions; rounding moves no code
/// by more than 0.004 of the block's largest weight.
pub const NF4_I8: [i8; 16] = [
    -127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127,
];

/// The code book as the values a weight takes: `NF4_I8 / 127`.
pub const NF4: [f32; 16] = {
    let mut v = [0.0; 16];
    let mut i = 0;
    while i < 16 {
        v[i] = NF4_I8[i] as f32 / 127.0;
        i += 1;
    }
    v
};

/// int8 blocks: `qs [rows, cols]`, `scales [rows, cols / 64]`.
pub struct Q8 {
    pub qs: Buf<i8>,
    pub scales: Buf<f32>,
}

/// nf4 blocks: `packed [rows, cols / 2]` (byte `j` of a block: weights `j` and `j + 32`),
/// `scales [rows, cols / 64]` in bf16: 0.53125 bytes a weight instead of 0.5625 with f32
/// scales, 5.6 % fewer bytes for a token to read. A bf16 scale is within 2^-9 of the
/// block's absolute maximum (equal to it for bf16 weights), and the codes are chosen for
/// the rounded scale; the code book's own steps are 40 to 150 times coarser.
pub struct Nf4 {
    pub packed: Buf<u8>,
    pub scales: Buf<bf16>,
}

/// Row `r` of an int8 matrix, dequantized into `out [cols]`.
pub fn dequantize_q8(q: &Q8, cols: usize, r: usize, out: &mut [f32]) {
    let qs = &q.qs[r * cols..(r + 1) * cols];
    let sc = &q.scales[r * cols / BLOCK..(r + 1) * cols / BLOCK];
    for ((ob, qb), &s) in out.chunks_mut(BLOCK).zip(qs.chunks(BLOCK)).zip(sc) {
        for (o, &v) in ob.iter_mut().zip(qb) {
            *o = v as f32 * s;
        }
    }
}

/// Row `r` of an nf4 matrix, dequantized into `out [cols]`.
pub fn dequantize_nf4(q: &Nf4, cols: usize, r: usize, out: &mut [f32]) {
    let pk = &q.packed[r * cols / 2..(r + 1) * cols / 2];
    let sc = &q.scales[r * cols / BLOCK..(r + 1) * cols / BLOCK];
    for ((ob, pb), s) in out.chunks_mut(BLOCK).zip(pk.chunks(BLOCK / 2)).zip(sc) {
        let (half, s) = (BLOCK / 2, s.to_f32());
        for (j, &b) in pb.iter().enumerate() {
            ob[j] = NF4[(b & 15) as usize] * s;
            ob[j + half] = NF4[(b >> 4) as usize] * s;
        }
    }
}
