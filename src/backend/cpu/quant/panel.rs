//! Up to 32 rows of an int8 or nf4 matrix packed for the sequence kernel: a vector lane a
//! row, so that one load of weights meets every token and each `vpdpwssd` (int8) or
//! `vpdpbusd` (nf4) multiplies two or four columns of sixteen rows at once.

use super::acts::QActs;
use super::{Act, QRow, PAIR};
use crate::backend::cpu::tuning::{PANEL_ROWS, QUANT_PANEL_TOKENS};
use crate::isa::{features, Isa};
use crate::tensor::quant::BLOCK;

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
        let f = features();
        isa == Isa::Avx512 && f.avx512bw && f.avx512vnni && (f.avx512vbmi || !nf4)
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
        assert!(nt <= QUANT_PANEL_TOKENS, "Panel::multiply: {nt} tokens");
        assert!(self.nb > 0, "Panel::multiply before Panel::pack");
        assert!(
            x.n == self.nb * BLOCK && (x.act == Act::I8) == self.nf4,
            "Panel::multiply: activations of another width or rounding"
        );
        assert!(
            t0 + nt <= x.scale.len() / self.nb,
            "Panel::multiply: tokens past the end"
        );
        #[cfg(target_arch = "x86_64")]
        {
            use crate::backend::cpu::arch::x86::quant as x86q;
            let (w, s, nb, rows) = (&self.words[..], &self.scales[..], self.nb, self.rows);
            // where token t0 + j's codes, scales and corrections start (read for j < nt only)
            let per_token = if self.nf4 {
                nb.div_ceil(2) * PAIR
            } else {
                2 * x.n
            };
            let codes = if self.nf4 {
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
                    match (nt, self.nf4) {
                        (0, _) => {}
                        // SAFETY: packed (nb > 0), so Panel::pack found what the kernel
                        // needs on this CPU; tokens t0..t0 + nt hold `nb` blocks of the
                        // panel's codes (checked above); the caller vouches for `y`.
                        $(($n, false) => x86q::panel_kernel::<$n, false>(
                            w, s, nb, &tokens, std::array::from_fn(&y), rows, ahead,
                        ),
                        ($n, true) => x86q::panel_kernel::<$n, true>(
                            w, s, nb, &tokens, std::array::from_fn(&y), rows, ahead,
                        ),)*
                        _ => unreachable!(),
                    }
                };
            }
            k!(1 2 3 4 5 6 7 8)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "Panel::multiply without a panel kernel ({} rows)",
            self.rows
        )
    }
}
