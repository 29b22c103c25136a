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
pub mod rows;
#[cfg(test)]
mod tests;

use super::shared::{with_scratch, SharedMut};
use super::tuning::{PANEL_ROWS, QUANT_PANEL_TOKENS};
use crate::isa::Isa;
use crate::tensor::{Data, Matrix};
use acts::QActs;
use panel::Panel;
use rows::{qrow, qrows, QRow, QTok};
use std::cell::RefCell;

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
    use super::tuning::PREFETCH_AHEAD;
    use super::tuning::SEQUENCE_FROM;
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
