//! Quantized weights times activations rounded to integers: the products of int8 and nf4
//! matrices on the CPU.
//!
//! Before an int8 or nf4 matrix multiplies `x [t, in]`, every token's row is rounded to
//! integers in blocks of 64 with one f32 scale ([`acts::QActs`]). A (row, token) pair is
//!
//! ```text
//! y = sum_b (ws[b] * xs[b]) * sum_{i in block b} wq[i] * xq[i]
//! ```
//!
//! with `wq` the int8 weight (nf4: its code in [`NF4_I8`]), `ws` the weight block scale and
//! `xs` the activation block scale (for nf4 divided by 127, the code book's unit), so a
//! quantized row is multiplied without converting it to f32.
//!
//! How finely the activations are rounded depends on the weights ([`Act`]): int8 weights
//! meet int16 activations, which leave the logits where the dequantized weights put them;
//! nf4 weights meet int8 activations, twice the instruction rate and no measurable cost
//! next to nf4's own rounding (`docs/QUANTIZATION.md`).
//!
//! A block's integer sum is exact (int8: `64 * 127 * 32767 < 2^31`; nf4: `64 * 255 * 127`).
//! Every kernel sums a (row, token) pair in one order, the scalar twin's
//! ([`super::scalar::quant_dot`]): block `b`'s sum, as f32, times `ws[b] * xs[b]`, is added
//! to class `b % 16`, the blocks of a class in turn, and the sixteen classes are reduced as
//! a tree. So a token's result does not depend on the kernel, nor on how many tokens share
//! the call: one token ([`dots`]) and panels of 32 rows ([`panel::Panel`]) agree bit for bit.

pub mod acts;
pub mod dots;
pub mod panel;
#[cfg(test)]
mod tests;

use super::schedule::{with_scratch, SharedMut};
use super::tuning::{PANEL_ROWS, QUANT_PANEL_TOKENS};
use crate::isa::Isa;
use crate::tensor::quant::{BLOCK, NF4_I8};
use crate::tensor::{Data, Matrix};
use acts::QActs;
use half::bf16;
use panel::Panel;
use std::cell::RefCell;

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

thread_local! {
    /// Rows of an int8 or nf4 matrix packed for the panel kernel.
    static PANEL: RefCell<Panel> = RefCell::default();
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` for an int8 or nf4 `W`, with `x` already
/// rounded: stored panels as stored, eight tokens at a time; rows dotted with up to four
/// tokens at a time ([`dots::dots_tokens`]), or packed 32 at a time against up to eight
/// tokens ([`Panel`]) when `panels`. All give the same sums.
pub fn matmul_rows(
    isa: Isa,
    w: &Matrix,
    rows: std::ops::Range<usize>,
    x: &QActs,
    t: usize,
    panels: bool,
    y: SharedMut,
) {
    let out = w.rows;
    match &w.data {
        Data::Q8Panels(q) => return stored_rows(w, panel::Stored::Q8(q), rows, x, t, y),
        Data::Nf4Panels(q) => return stored_rows(w, panel::Stored::Nf4(q), rows, x, t, y),
        _ => {}
    }
    if !panels {
        for t0 in (0..t).step_by(4) {
            let n = (t - t0).min(4);
            let xs: [QTok; 4] = std::array::from_fn(|j| x.token(t0 + j.min(n - 1)));
            let mut runs: [&mut [f32]; 4] = std::array::from_fn(|j| match j < n {
                // SAFETY: elements (t0 + j, rows) are written by the task owning the rows
                // only.
                true => unsafe { y.run((t0 + j) * out + rows.start, rows.len()) },
                false => Default::default(),
            });
            dots::dots_tokens(isa, qrows(w, rows.clone()), &xs[..n], &mut runs[..n]);
        }
        return;
    }
    with_scratch(&PANEL, |panel| {
        for r0 in rows.clone().step_by(PANEL_ROWS) {
            let n = (rows.end - r0).min(PANEL_ROWS);
            let stored: [QRow; PANEL_ROWS] = std::array::from_fn(|k| qrow(w, r0 + k.min(n - 1)));
            panel.pack(isa, &stored[..n]);
            // The next panel's stored rows are asked for while the tokens keep the core
            // busy, a share every call.
            let (next, len) = super::dense::stored_span(w, r0 + PANEL_ROWS, r0 + 2 * PANEL_ROWS);
            let (lines, calls) = (len.div_ceil(64), t.div_ceil(QUANT_PANEL_TOKENS));
            let share = lines.div_ceil(calls);
            for (c, t0) in (0..t).step_by(QUANT_PANEL_TOKENS).enumerate() {
                let nt = (t - t0).min(QUANT_PANEL_TOKENS);
                let from = (c * share).min(lines);
                let ahead = (next.wrapping_add(64 * from), share.min(lines - from));
                // SAFETY: elements (t0 + j, r0..r0 + n) are written by the task owning
                // rows r0..r0 + n only.
                unsafe { panel.multiply(x, t0, nt, |j| y.ptr().add((t0 + j) * out + r0), ahead) };
            }
        }
    })
}

/// Rows `rows` (whole panels, but for the matrix's last) of `y [t, out] = x [t, in] . W^T`
/// for an int8 or nf4 `W` stored in panels: each panel against eight tokens at a time as
/// stored, the next panel asked for along the way.
fn stored_rows(
    w: &Matrix,
    stored: panel::Stored,
    rows: std::ops::Range<usize>,
    x: &QActs,
    t: usize,
    y: SharedMut,
) {
    use super::plan::SEQUENCE_FROM;
    use super::tuning::PREFETCH_AHEAD;
    use crate::tensor::panels::panel_bytes;
    assert!(
        rows.start.is_multiple_of(PANEL_ROWS),
        "stored panels: rows from {}",
        rows.start
    );
    let (codes, nf4) = match stored {
        panel::Stored::Q8(q) => (q.qs.as_ptr() as *const u8, false),
        panel::Stored::Nf4(q) => (q.packed.as_ptr(), true),
    };
    let (out, bytes) = (w.rows, panel_bytes(w.cols, nf4));
    for r0 in rows.clone().step_by(PANEL_ROWS) {
        let (p, n) = (r0 / PANEL_ROWS, (w.rows - r0).min(PANEL_ROWS));
        // One token streams the panels, asking a little ahead of its reads (memory bound);
        // more ask for the whole next panel while the tokens keep the core busy.
        let ahead_by = if t < SEQUENCE_FROM {
            4 * PREFETCH_AHEAD
        } else {
            bytes
        };
        let next = codes.wrapping_add(p * bytes + ahead_by);
        let lines = if r0 + PANEL_ROWS < w.rows {
            bytes / 64
        } else {
            0
        };
        let share = lines.div_ceil(t.div_ceil(QUANT_PANEL_TOKENS));
        for (c, t0) in (0..t).step_by(QUANT_PANEL_TOKENS).enumerate() {
            let nt = (t - t0).min(QUANT_PANEL_TOKENS);
            let from = (c * share).min(lines);
            let ahead = (next.wrapping_add(64 * from), share.min(lines - from));
            // SAFETY: the plan stores panels only where their kernel runs; elements
            // (t0 + j, r0..r0 + n) are written by the task owning rows r0..r0 + n only.
            unsafe {
                let ys = |j: usize| y.ptr().add((t0 + j) * out + r0);
                panel::multiply_stored(stored, w.cols, p, n, x, t0, nt, ys, ahead)
            };
        }
    }
}
