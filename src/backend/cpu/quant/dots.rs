//! One token's products with int8 or nf4 rows: the AVX-512 kernels where the CPU has
//! them (VNNI and VBMI for nf4), AVX2, else the scalar twin.

use super::rows::{quant_dot, QRow, QTok};
use crate::backend::cpu::caps::Caps;
use crate::isa::Isa;

/// Whether the AVX-512 kernels can run for `w` ([`Caps::dots`]).
fn avx512(isa: Isa, w: &QRow) -> bool {
    Caps::of(isa).dots(matches!(w, QRow::Nf4 { .. }))
}
/// `w . x` on `isa`.
#[inline]
pub fn dot(isa: Isa, w: QRow, x: QTok) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::backend::cpu::arch::x86::quant::*;
        // SAFETY: `isa` was detected on this CPU (Isa::detect), the AVX-512 extensions are
        // checked, and every AVX-512 CPU has AVX2 and FMA.
        unsafe {
            match (isa, w) {
                (Isa::Avx512, QRow::Q8 { qs, scales }) if avx512(isa, &w) => {
                    return dot_q8_avx512(qs, scales, x)
                }
                (Isa::Avx512, QRow::Nf4 { packed, scales }) if avx512(isa, &w) => {
                    return dot_nf4_vnni(packed, scales, x)
                }
                (Isa::Avx512 | Isa::Avx2, QRow::Q8 { qs, scales }) => {
                    return dot_q8_avx2(qs, scales, x)
                }
                (Isa::Avx512 | Isa::Avx2, QRow::Nf4 { packed, scales }) => {
                    return dot_nf4_avx2(packed, scales, x)
                }
                (Isa::Portable, _) => {}
            }
        }
    }
    quant_dot(w, x)
}

/// `out[k] = dot(isa, row k, x)` for the `n = out.len()` rows stored one after another in
/// `rows` ([`QRow::row`]), each the bits [`dot`] gives it: one call for a task's rows, so
/// that generation spends nothing a row on dispatch (the AVX-512 kernels loop inside).
pub fn dots(isa: Isa, rows: QRow, x: QTok, out: &mut [f32]) {
    let n = out.len();
    #[cfg(target_arch = "x86_64")]
    if avx512(isa, &rows) {
        use crate::backend::cpu::arch::x86::quant::*;
        // SAFETY: `isa` was detected on this CPU and the AVX-512 extensions are checked.
        unsafe {
            match rows {
                QRow::Q8 { qs, scales } => dots_q8_avx512(qs, scales, x, out),
                QRow::Nf4 { packed, scales } => dots_nf4_vnni(packed, scales, x, out),
            }
        }
        return;
    }
    for (k, o) in out.iter_mut().enumerate() {
        *o = dot(isa, rows.row(k, n), x);
    }
}

/// [`dots`] for up to four tokens at once (`x[t]` into `out[t]`), each output the bits
/// [`dots`] gives it: on AVX-512 each row is widened or decoded once for all the tokens
/// (a batch of streams); elsewhere, and for one token, a token at a time.
pub fn dots_tokens(isa: Isa, rows: QRow, x: &[QTok], out: &mut [&mut [f32]]) {
    assert!(
        x.len() == out.len() && x.len() <= 4,
        "dots_tokens: {} tokens",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    if avx512(isa, &rows) && x.len() > 1 {
        /// # Safety
        /// AVX-512 BW, and VNNI and VBMI for nf4, on this CPU.
        unsafe fn run<const T: usize>(rows: QRow, x: [QTok; T], out: [&mut [f32]; T]) {
            use crate::backend::cpu::arch::x86::quant::*;
            match rows {
                QRow::Q8 { qs, scales } => dots_q8_avx512_tokens::<T>(qs, scales, x, out),
                QRow::Nf4 { packed, scales } => dots_nf4_vnni_tokens::<T>(packed, scales, x, out),
            }
        }
        // SAFETY: `isa` was detected on this CPU and the AVX-512 extensions are checked.
        unsafe {
            match out {
                [a, b] => run::<2>(rows, [x[0], x[1]], [a, b]),
                [a, b, c] => run::<3>(rows, [x[0], x[1], x[2]], [a, b, c]),
                [a, b, c, d] => run::<4>(rows, [x[0], x[1], x[2], x[3]], [a, b, c, d]),
                _ => unreachable!("dots_tokens: {} tokens", x.len()),
            }
        }
        return;
    }
    for (x, o) in x.iter().zip(out.iter_mut()) {
        dots(isa, rows, *x, o);
    }
}
