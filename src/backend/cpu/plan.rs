//! Which kernel runs a product: decided here, once, from the instruction set, the
//! precision, the weights' format and shape and the token count.

use super::bf16::bf16_dot_on;
use super::quant::panel::Panel;
use super::tuning::{
    MIN_TASKS, MIN_TASK_ROWS, NARROW, ONE_TOKEN_TASK_WEIGHTS, PANEL_ROWS, QUANT_PANELS_FROM,
    SEQUENCE_FROM, SEQUENCE_TASK_WEIGHTS,
};
use crate::backend::Precision;
use crate::isa::Isa;
use crate::tensor::{Data, Matrix};

/// A product's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// f32, f16 or bf16 rows, one to three tokens: each stored row dotted with each token,
    /// widened in registers.
    Dots,
    /// As [`Kernel::Dots`], sixteen narrow rows at a time (AVX-512): the LoRA factors.
    Narrow16,
    /// f32, f16 or bf16 rows converted to f32, then four rows by four tokens at a time.
    Tiles,
    /// AVX-512: four rows by four tokens, the 16-bit rows widened in registers.
    StoredTiles,
    /// Activations rounded to bf16, 32 rows packed into a panel, `vdpbf16ps`
    /// ([`Precision::Bf16`] on AVX-512 BF16).
    Bf16Panels,
    /// bf16 rows as stored against activations rounded to bf16, a lane a column pair
    /// (`vdpbf16ps`): each stored row dotted with each token (one to three tokens at
    /// [`Precision::Bf16`] or [`Precision::Bf16Streams`]).
    Bf16Dots,
    /// As [`Kernel::Bf16Dots`], four rows by four tokens at a time, each pair summed as
    /// there ([`Precision::Bf16Streams`], four streams or more).
    Bf16Tiles,
    /// int8 or nf4 rows against integer activations, a token at a time (under
    /// [`QUANT_PANELS_FROM`] tokens: a batch of streams, a short chunk).
    QuantDots,
    /// int8 or nf4 rows packed 32 at a time, against eight tokens at a time.
    QuantPanels,
}

/// The kernel for `w [out, in]` times `t` tokens at `prec` on `isa`. bf16 panels take the
/// sequence products of 16-bit and int8 weights (rows or stored panels alike) at bf16
/// precision; nf4 weights stay in integers where their panel runs, since `vpdpbusd` does
/// twice the products of `vdpbf16ps`.
pub fn kernel(isa: Isa, prec: Precision, w: &Matrix, t: usize) -> Kernel {
    let sequence = t >= SEQUENCE_FROM;
    let nf4 = matches!(w.data, Data::Nf4(_) | Data::Nf4Panels(_));
    let quant = nf4 || matches!(w.data, Data::Q8(_) | Data::Q8Panels(_));
    // stored panels: the integer panel kernel but for int8's bf16 prompts, as rows
    let bf16_sequence = prec == Precision::Bf16 && sequence && bf16_dot_on(isa);
    match w.data {
        Data::Q8Panels(_) if !bf16_sequence => return Kernel::QuantPanels,
        Data::Nf4Panels(_) => return Kernel::QuantPanels,
        _ => {}
    }
    let int_panels = Panel::runs(isa, nf4);
    // bf16 rows as stored, wider than the LoRA factors (whose rows are too short for
    // a reduction each), at either bf16 precision
    let bf16_rows = matches!(w.data, Data::BF16(_)) && w.cols > NARROW && bf16_dot_on(isa);
    match prec {
        Precision::Bf16 | Precision::Bf16Streams if !sequence && bf16_rows => {
            return Kernel::Bf16Dots
        }
        Precision::Bf16Streams if bf16_rows => return Kernel::Bf16Tiles,
        _ => {}
    }
    if bf16_sequence && !matches!(w.data, Data::F32(_)) && !(nf4 && int_panels) {
        return Kernel::Bf16Panels;
    }
    if quant {
        return if t >= QUANT_PANELS_FROM && int_panels {
            Kernel::QuantPanels
        } else {
            Kernel::QuantDots
        };
    }
    let avx512 = isa == Isa::Avx512;
    match (sequence, &w.data) {
        (true, Data::BF16(_) | Data::F16(_)) if avx512 => Kernel::StoredTiles,
        (true, _) => Kernel::Tiles,
        (false, _) if avx512 && w.cols <= NARROW && w.cols.is_multiple_of(16) => Kernel::Narrow16,
        (false, _) => Kernel::Dots,
    }
}

impl Kernel {
    /// Rows the kernel packs together (a task takes whole groups of them).
    pub fn panel_rows(self) -> usize {
        match self {
            Kernel::Bf16Panels | Kernel::QuantPanels => PANEL_ROWS,
            _ => 1,
        }
    }
}

/// Rows of `W [rows, cols]` one task multiplies: as many as make
/// [`ONE_TOKEN_TASK_WEIGHTS`] (one token) or [`SEQUENCE_TASK_WEIGHTS`] (several), at most an
/// eighth of the rows ([`MIN_TASKS`]) and at least [`MIN_TASK_ROWS`], in whole panels.
pub fn rows_per_task(rows: usize, cols: usize, t: usize, panel: usize) -> usize {
    let weights = if t < SEQUENCE_FROM {
        ONE_TOKEN_TASK_WEIGHTS
    } else {
        SEQUENCE_TASK_WEIGHTS
    };
    let per = (weights / cols.max(1)).min(rows.div_ceil(MIN_TASKS));
    per.max(MIN_TASK_ROWS).next_multiple_of(panel)
}
