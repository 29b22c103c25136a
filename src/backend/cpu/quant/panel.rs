//! The integer panel kernel's callers: 32 rows of an int8 or nf4 matrix a vector lane a
//! row, so that one load of weights meets every token and each `vpdpwssd` (int8) or
//! `vpdpbusd` (nf4) multiplies two or four columns of sixteen rows at once; rows packed so
//! for a product ([`Panel`]), or panels stored so at load ([`multiply_stored`]).

use super::acts::QActs;
use super::rows::{Act, QRow, PAIR};
use crate::backend::cpu::caps::Caps;
use crate::backend::cpu::tuning::{PANEL_ROWS, QUANT_PANEL_TOKENS};
use crate::isa::Isa;
use crate::tensor::panels::panel_bytes;
use crate::tensor::quant::{Nf4, BLOCK, Q8};

/// Up to 32 rows of an int8 or nf4 matrix packed for the sequence kernel: a vector lane a
/// row, so that one load of weights meets every token and each `vpdpwssd` (int8) or
/// `vpdpbusd` (nf4) multiplies two or four columns of sixteen rows at once. AVX-512 with BW
/// and VNNI only, and VBMI for nf4 ([`Panel::runs`]); reused between calls.
#[derive(Debug, Default)]
pub struct Panel {
    /// `[nb, words a block, 32]`: see `x86::pack_panel`.
    words: Vec<u32>,
    /// `[nb, 32]`: the rows' block scales side by side.
    scales: Vec<f32>,
    nb: usize,
    /// Rows packed.
    rows: usize,
    nf4: bool,
}

impl Panel {
    /// Whether the panel kernel runs for int8 (`nf4` false) or nf4 rows on `isa` on this
    /// CPU: AVX-512 BW and VNNI, and VBMI to unpack nf4.
    pub fn runs(isa: Isa, nf4: bool) -> bool {
        Caps::of(isa).panels(nf4)
    }

    /// Pack `rows` (1 to 32, of one format and width).
    pub fn pack(&mut self, isa: Isa, rows: &[QRow]) {
        assert!(
            !rows.is_empty() && rows.len() <= PANEL_ROWS,
            "Panel::pack: {} rows",
            rows.len()
        );
        let nf4 = matches!(rows[0], QRow::Nf4 { .. });
        assert!(
            Self::runs(isa, nf4),
            "Panel::pack: no panel kernel for these rows on {isa:?} here"
        );
        let nb = rows[0].nb();
        for r in rows {
            assert!(
                matches!(r, QRow::Nf4 { .. }) == nf4 && r.nb() == nb,
                "Panel::pack: rows of different formats or widths"
            );
        }
        (self.nb, self.rows, self.nf4) = (nb, rows.len(), nf4);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::backend::cpu::arch::x86::quant as x86q;
            self.words
                .resize(nb * x86q::panel_words(nf4) * PANEL_ROWS, 0);
            self.scales.resize(nb * PANEL_ROWS, 0.0);
            // SAFETY: AVX-512 BW and VNNI, and for nf4 VBMI, were detected (Panel::runs);
            // the rows are of one format; the buffers are sized for `nb` blocks.
            unsafe {
                if nf4 {
                    x86q::pack_nf4_panel(rows, &mut self.words, &mut self.scales)
                } else {
                    x86q::pack_q8_panel(rows, &mut self.words, &mut self.scales)
                }
            };
        }
    }

    /// Row `r` dotted with token `t0 + j` of `x` into `*y(j).add(r)`, for the packed rows
    /// and the tokens `t0..t0 + nt` (`nt` at most [`QUANT_PANEL_TOKENS`]): each equal to [`super::dots::dot`],
    /// bit for bit.
    ///
    /// `ahead`: `(p, lines)`, cache lines from `p` to ask for into L2 meanwhile.
    ///
    /// # Safety
    /// `y(j)` points at as many writable f32 as rows were packed, which no other thread
    /// reads or writes meanwhile.
    pub unsafe fn multiply(
        &self,
        x: &QActs,
        t0: usize,
        nt: usize,
        y: impl Fn(usize) -> *mut f32,
        ahead: (*const u8, usize),
    ) {
        assert!(self.nb > 0, "Panel::multiply before Panel::pack");
        check(x, t0, nt, self.nb, self.nf4);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::backend::cpu::arch::x86::quant::panel_words;
            assert!(self.words.len() >= self.nb * panel_words(self.nf4) * PANEL_ROWS);
            assert!(self.scales.len() >= self.nb * PANEL_ROWS);
            let (w, s) = (
                self.words.as_ptr() as *const u8,
                self.scales.as_ptr() as *const u8,
            );
            run_kernel(
                w, s, false, self.nf4, self.nb, x, t0, nt, y, self.rows, ahead,
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "Panel::multiply without a panel kernel ({:?})",
            (self.rows, y(0), ahead)
        )
    }
}

/// Panel `p` of an int8 or nf4 matrix stored in panels (`codes` and `scales` as in
/// [`crate::tensor::panels`], `cols` wide, `rows` of its rows real), its rows dotted with
/// tokens `t0..t0 + nt` of `x` as [`Panel::multiply`] dots them, bit for bit, with no
/// packing.
///
/// # Safety
/// As [`Panel::multiply`]'s; the CPU runs the panel kernel for the format
/// ([`Panel::runs`]).
#[allow(clippy::too_many_arguments)]
pub unsafe fn multiply_stored(
    stored: Stored,
    cols: usize,
    p: usize,
    rows: usize,
    x: &QActs,
    t0: usize,
    nt: usize,
    y: impl Fn(usize) -> *mut f32,
    ahead: (*const u8, usize),
) {
    let nb = cols / BLOCK;
    let nf4 = matches!(stored, Stored::Nf4(_));
    check(x, t0, nt, nb, nf4);
    let (codes, scales) = (panel_bytes(cols, nf4), nb * PANEL_ROWS);
    let (w, s) = match stored {
        Stored::Q8(q) => {
            assert!(q.qs.len() >= (p + 1) * codes && q.scales.len() >= (p + 1) * scales);
            (
                q.qs.as_ptr().add(p * codes) as *const u8,
                q.scales.as_ptr().add(p * scales) as *const u8,
            )
        }
        Stored::Nf4(q) => {
            assert!(q.packed.len() >= (p + 1) * codes && q.scales.len() >= (p + 1) * scales);
            (
                q.packed.as_ptr().add(p * codes),
                q.scales.as_ptr().add(p * scales) as *const u8,
            )
        }
    };
    #[cfg(target_arch = "x86_64")]
    run_kernel(w, s, true, nf4, nb, x, t0, nt, y, rows, ahead);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "stored panels without a panel kernel ({:?})",
        (w, s, rows, y(0), ahead)
    )
}

/// A matrix stored in panels ([`crate::tensor::panels`]).
#[derive(Clone, Copy)]
pub enum Stored<'a> {
    Q8(&'a Q8),
    Nf4(&'a Nf4),
}

/// The activations a panel call reads: tokens `t0..t0 + nt`, `nb` blocks of the rounding
/// the weights meet.
fn check(x: &QActs, t0: usize, nt: usize, nb: usize, nf4: bool) {
    assert!(nt <= QUANT_PANEL_TOKENS, "panel kernel: {nt} tokens");
    assert!(
        x.n == nb * BLOCK && (x.act == Act::I8) == nf4,
        "panel kernel: activations of another width or rounding"
    );
    assert!(
        t0 + nt <= x.scale.len() / nb.max(1),
        "panel kernel: tokens past the end"
    );
}

/// The panel kernel for `nt` tokens of `x` from `t0` (checked by the caller) over the
/// weights at `w` and scales at `s`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_kernel(
    w: *const u8,
    s: *const u8,
    stored: bool,
    nf4: bool,
    nb: usize,
    x: &QActs,
    t0: usize,
    nt: usize,
    y: impl Fn(usize) -> *mut f32,
    rows: usize,
    ahead: (*const u8, usize),
) {
    use crate::backend::cpu::arch::x86::quant as x86q;
    // where token t0 + j's codes, scales and corrections start (read for j < nt only)
    let per_token = if nf4 { nb.div_ceil(2) * PAIR } else { 2 * x.n };
    let codes = if nf4 {
        x.q8.as_ptr() as *const u8
    } else {
        x.q16.as_ptr() as *const u8
    };
    let tokens = x86q::Tokens {
        codes: std::array::from_fn(|j| codes.wrapping_add((t0 + j) * per_token)),
        scale: std::array::from_fn(|j| x.scale.as_ptr().wrapping_add((t0 + j) * nb)),
        corr: std::array::from_fn(|j| x.block_corr.as_ptr().wrapping_add((t0 + j) * nb)),
    };
    macro_rules! k {
        ($($n:literal)*) => {
            match (nt, nf4, stored) {
                (0, _, _) => {}
                // SAFETY: the callers checked the weights' and the tokens' extents and
                // that the CPU runs the kernel; they vouch for `y`.
                $(($n, false, false) => x86q::panel_kernel::<$n, false>(
                    w, s, nb, &tokens, std::array::from_fn(&y), rows, ahead,
                ),
                ($n, false, true) => x86q::panel_kernel::<$n, true>(
                    w, s, nb, &tokens, std::array::from_fn(&y), rows, ahead,
                ),
                ($n, true, false) => x86q::panel_kernel_nf4::<$n, false>(
                    w, s, nb, &tokens, std::array::from_fn(&y), rows, ahead,
                ),
                ($n, true, true) => x86q::panel_kernel_nf4::<$n, true>(
                    w, s, nb, &tokens, std::array::from_fn(&y), rows, ahead,
                ),)*
                _ => unreachable!("panel kernel: {nt} tokens, nf4 {nf4}, stored {stored}"),
            }
        };
    }
    k!(1 2 3 4 5 6 7 8)
}
