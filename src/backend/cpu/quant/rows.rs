//! The types every int8 and nf4 kernel shares, below them all: a stored row, a token's
//! integer activations and how they are laid out, and the portable (scalar) dot and
//! rounding that every vector kernel gives the bits of.

use super::super::shared::tree16;
use crate::tensor::quant::{BLOCK, NF4_I8};
use crate::tensor::{Data, Matrix};
use half::bf16;

/// A block scale as stored: f32 for int8 rows, bf16 for nf4 rows.
pub trait BlockScale: Copy {
    /// Whether it is a bf16 (else an f32).
    const BF16: bool;
    fn f32(self) -> f32;
}

impl BlockScale for f32 {
    const BF16: bool = false;
    fn f32(self) -> f32 {
        self
    }
}

impl BlockScale for bf16 {
    const BF16: bool = true;
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// One stored row of an int8 or nf4 matrix (or several, one after another).
#[derive(Debug, Clone, Copy)]
pub enum QRow<'a> {
    /// `qs [n]`, `scales [n / 64]`.
    Q8 { qs: &'a [i8], scales: &'a [f32] },
    /// `packed [n / 2]` (byte `j` of a block: weights `j` and `j + 32`), `scales [n / 64]`.
    Nf4 {
        packed: &'a [u8],
        scales: &'a [bf16],
    },
}

impl<'a> QRow<'a> {
    /// Row `k` of `n` rows stored one after another in `self`.
    pub fn row(self, k: usize, n: usize) -> QRow<'a> {
        let part = |len: usize| k * len / n..(k + 1) * len / n;
        match self {
            QRow::Q8 { qs, scales } => QRow::Q8 {
                qs: &qs[part(qs.len())],
                scales: &scales[part(scales.len())],
            },
            QRow::Nf4 { packed, scales } => QRow::Nf4 {
                packed: &packed[part(packed.len())],
                scales: &scales[part(scales.len())],
            },
        }
    }

    /// Blocks in the row.
    pub fn nb(&self) -> usize {
        match self {
            QRow::Q8 { scales, .. } => scales.len(),
            QRow::Nf4 { scales, .. } => scales.len(),
        }
    }

    /// Block `b`'s scale.
    pub fn scale(&self, b: usize) -> f32 {
        match self {
            QRow::Q8 { scales, .. } => scales[b],
            QRow::Nf4 { scales, .. } => scales[b].to_f32(),
        }
    }

    /// Weight `i` of block `b` as its integer code.
    #[inline]
    pub fn code(&self, b: usize, i: usize) -> i32 {
        match self {
            QRow::Q8 { qs, .. } => qs[b * BLOCK + i] as i32,
            QRow::Nf4 { packed, .. } => {
                let byte = packed[b * BLOCK / 2 + i % (BLOCK / 2)];
                let nib = if i < BLOCK / 2 { byte & 15 } else { byte >> 4 };
                NF4_I8[nib as usize] as i32
            }
        }
    }
}

/// How activations are rounded for a format's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    /// int16 codes, for int8 weights.
    #[default]
    I16,
    /// int8 codes, for nf4 weights.
    I8,
}

impl Act {
    /// The largest code.
    pub fn max(self) -> f32 {
        match self {
            Act::I16 => i16::MAX as f32,
            Act::I8 => i8::MAX as f32,
        }
    }
}

/// One token's activations rounded to integers: `scale [n / 64]`, and `q16 [n]` or, in
/// pair order ([`q8_index`]), `q8 [pairs, 128]` with `block_corr [n / 64]` (the others
/// empty; `pairs` is `ceil(n / 128)`).
#[derive(Debug, Clone, Copy)]
pub struct QTok<'a> {
    pub q16: &'a [i16],
    pub q8: &'a [i8],
    pub block_corr: &'a [i32],
    pub scale: &'a [f32],
}

/// Classes of blocks summed apart: block `b` goes to class `b % 16`, so that one token's
/// kernel adds sixteen blocks' sums at once and the panel kernel keeps one sum per class
/// and token.
pub use crate::tensor::panels::CLASSES;

/// Int8 activations of a pair of blocks.
pub const PAIR: usize = 2 * BLOCK;

/// Where activation `i` of block `b` sits in a token's int8 codes. Blocks `2p` and `2p + 1`
/// share 128 bytes, their halves interleaved: `[2p: 0..32, 2p+1: 0..32, 2p: 32..64, 2p+1:
/// 32..64]`. One 64-byte load of an nf4 pair (byte `j` of a block holds weights `j` and
/// `j + 32`) splits by nibble into two vectors that meet these 64 bytes each, with block
/// `2p` in lanes 0..8 and `2p + 1` in lanes 8..16 of the integer sums.
#[inline]
pub fn q8_index(b: usize, i: usize) -> usize {
    (b / 2) * PAIR + (i / 32) * BLOCK + (b % 2) * 32 + i % 32
}

/// For a quantized matrix: the value of one unit of its integer codes (int8 weights are
/// `q * s`, nf4 weights `NF4_I8[i] / 127 * s`), and how its activations are rounded.
pub fn code_unit(w: &Matrix) -> Option<(f32, Act)> {
    match w.data {
        Data::Q8(_) | Data::Q8Panels(_) => Some((1.0, Act::I16)),
        Data::Nf4(_) | Data::Nf4Panels(_) => Some((1.0 / NF4_I8[15] as f32, Act::I8)),
        _ => None,
    }
}

/// Stored row `r` of an int8 or nf4 matrix.
pub fn qrow(w: &Matrix, r: usize) -> QRow<'_> {
    qrows(w, r..r + 1)
}

/// Stored rows `rows` of an int8 or nf4 matrix, one after another.
pub fn qrows(w: &Matrix, rows: std::ops::Range<usize>) -> QRow<'_> {
    let nb = w.cols / BLOCK;
    let scales = rows.start * nb..rows.end * nb;
    match &w.data {
        Data::Q8(q) => QRow::Q8 {
            qs: &q.qs[rows.start * w.cols..rows.end * w.cols],
            scales: &q.scales[scales],
        },
        Data::Nf4(q) => QRow::Nf4 {
            packed: &q.packed[rows.start * w.cols / 2..rows.end * w.cols / 2],
            scales: &q.scales[scales],
        },
        _ => unreachable!("qrows: {:?} is not quantized", w.dtype()),
    }
}

/// One token's share of [`super::acts::QActs`]: `scale [nb]`, and `q16 [n]` or `q8 [pairs, 128]` with
/// `block_corr [nb]` (the others empty).
pub struct TokenCodes<'a> {
    pub scale: &'a mut [f32],
    pub q16: &'a mut [i16],
    pub q8: &'a mut [i8],
    pub block_corr: &'a mut [i32],
}

impl TokenCodes<'_> {
    pub fn reborrow(&mut self) -> TokenCodes<'_> {
        TokenCodes {
            scale: self.scale,
            q16: self.q16,
            q8: self.q8,
            block_corr: self.block_corr,
        }
    }
}

/// One block's scale and the factor that turns its values into codes.
#[inline]
pub fn block_scale(amax: f32, act: Act, unit: f32) -> (f32, f32) {
    let max = act.max();
    let inv = if amax > 0.0 { max / amax } else { 0.0 };
    (amax / max * unit, inv)
}

/// One int8 or nf4 row against one token's integer activations, in the order every
/// quantized kernel sums: block `b`'s exact integer sum `s`, as f32, times `ws[b] * xs[b]`
/// is added to class `b % 16`, then the classes are reduced by [`tree16`].
pub fn quant_dot(w: QRow, x: QTok) -> f32 {
    let mut class = [0.0f32; CLASSES];
    for (b, &xs) in x.scale.iter().enumerate().take(w.nb()) {
        let ws = w.scale(b);
        let xq = |i: usize| match w {
            QRow::Q8 { .. } => x.q16[b * BLOCK + i] as i32,
            QRow::Nf4 { .. } => x.q8[q8_index(b, i)] as i32,
        };
        let s: i32 = (0..BLOCK).map(|i| w.code(b, i) * xq(i)).sum();
        class[b % CLASSES] += s as f32 * (ws * xs);
    }
    tree16(class)
}

/// One token's activations rounded to integer codes `round(x * inv)`, ties to even (what
/// `vcvtps2dq` does), in blocks of 64 (the block corrections are added by the caller).
pub fn quantize_token(x: &[f32], act: Act, unit: f32, out: TokenCodes) {
    let max = act.max();
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let inv;
        (out.scale[b], inv) = block_scale(amax, act, unit);
        let code = |v: &f32| (v * inv).clamp(-max, max).round_ties_even();
        match act {
            Act::I16 => {
                for (o, v) in out.q16[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xb) {
                    *o = code(v) as i16;
                }
            }
            Act::I8 => {
                for (i, v) in xb.iter().enumerate() {
                    out.q8[q8_index(b, i)] = code(v) as i8;
                }
            }
        }
    }
    if act == Act::I8 && x.len() / BLOCK % 2 == 1 {
        // the absent second block of the last pair multiplies as zeros
        let nb = x.len() / BLOCK;
        (0..BLOCK).for_each(|i| out.q8[q8_index(nb, i)] = 0);
    }
}
