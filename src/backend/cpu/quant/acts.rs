//! Activations rounded to integers in blocks of 64, once a product, for the int8 and nf4
//! kernels: vectorised on AVX-512, and in parallel over the tokens of a long sequence.

use super::rows::{quantize_token, Act, QTok, TokenCodes, PAIR};
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::arch::x86::quant::quantize_token_avx512;
use crate::backend::cpu::caps::Caps;
use crate::backend::cpu::tuning::QUANT_PARALLEL_FROM;
use crate::isa::Isa;
use crate::tensor::quant::BLOCK;
use crate::tensor::Plain;
use rayon::prelude::*;

/// A resizable buffer of plain numbers that starts on a cache line, so that the kernels'
/// 64-byte loads of it never straddle two lines (a `Vec` need not start on one).
#[derive(Debug, Default)]
pub struct Lines<T> {
    lines: Vec<Line>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Plain> Lines<T> {
    /// `n` elements; those past the old length are zeros.
    pub fn resize(&mut self, n: usize) {
        let bytes = n * std::mem::size_of::<T>();
        self.lines.resize(bytes.div_ceil(64), Line([0; 64]));
        let tail = (self.len * std::mem::size_of::<T>()).min(bytes);
        // SAFETY: `lines` holds at least `bytes` bytes.
        unsafe {
            std::ptr::write_bytes(
                (self.lines.as_mut_ptr() as *mut u8).add(tail),
                0,
                bytes - tail,
            )
        };
        self.len = n;
    }
}

impl<T: Plain> std::ops::Deref for Lines<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds `len` elements of T, aligned (64 bytes), any bits valid.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Lines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

/// Activations `x [t, n]` rounded to integers in blocks of 64, reused between calls.
#[derive(Debug, Default)]
pub struct QActs {
    pub(super) n: usize,
    pub(super) act: Act,
    /// [`Act::I16`]: `[t, n]`, `round(x / (absmax / 32767))`.
    pub(super) q16: Lines<i16>,
    /// [`Act::I8`]: `[t, pairs, 128]` in pair order ([`q8_index`]; zeros for the absent
    /// second block of an odd count), `round(x / (absmax / 127))`.
    pub(super) q8: Lines<i8>,
    /// [`Act::I8`]: `[t, n / 64]`, `-128 *` the sum of a block's codes. `vpdpbusd`
    /// multiplies unsigned bytes by signed ones, so the kernels read an nf4 code as `code +
    /// 128`; adding this to a block's integer sum cancels the extra `128 * sum(xq)`.
    pub(super) block_corr: Lines<i32>,
    /// `[t, n / 64]`: the block scale `absmax / max code`, times the weight format's unit.
    pub(super) scale: Lines<f32>,
}

impl QActs {
    /// Round `x [t, n]` (`n` a multiple of 64) as `act` on `isa` (every one gives the same
    /// codes); `unit` multiplies every scale (1 for int8 weights, 1/127 for nf4 codes).
    /// Tokens in parallel.
    pub fn quantize(&mut self, isa: Isa, x: &[f32], n: usize, unit: f32, act: Act) {
        assert!(n.is_multiple_of(BLOCK) && x.len().is_multiple_of(n));
        let (nb, t) = (n / BLOCK, x.len() / n);
        let pairs = nb.div_ceil(2);
        (self.n, self.act) = (n, act);
        let (q16, q8) = match act {
            Act::I16 => (n, 0),
            Act::I8 => (0, pairs * PAIR),
        };
        self.scale.resize(t * nb);
        self.q16.resize(t * q16);
        self.q8.resize(t * q8);
        let bc = if act == Act::I8 { nb } else { 0 };
        self.block_corr.resize(t * bc);
        let avx512 = Caps::of(isa).quantize;
        let one = |x: &[f32], mut out: TokenCodes| {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: AVX-512 BW and VNNI were detected on this CPU.
                unsafe { quantize_token_avx512(x, act, unit, out.reborrow()) };
                return block_corrections(out);
            }
            let _ = avx512;
            quantize_token(x, act, unit, out.reborrow());
            block_corrections(out)
        };
        if t * n < QUANT_PARALLEL_FROM {
            for ti in 0..t {
                let out = TokenCodes {
                    scale: &mut self.scale[ti * nb..(ti + 1) * nb],
                    q16: &mut self.q16[ti * q16..(ti + 1) * q16],
                    q8: &mut self.q8[ti * q8..(ti + 1) * q8],
                    block_corr: &mut self.block_corr[ti * bc..(ti + 1) * bc],
                };
                one(&x[ti * n..(ti + 1) * n], out);
            }
            return;
        }
        let tokens = x.par_chunks(n).zip(self.scale.par_chunks_mut(nb));
        match act {
            Act::I16 => tokens
                .zip(self.q16.par_chunks_mut(n))
                .for_each(|((x, scale), q16)| {
                    let (q8, block_corr) = (&mut [][..], &mut [][..]);
                    one(
                        x,
                        TokenCodes {
                            scale,
                            q16,
                            q8,
                            block_corr,
                        },
                    )
                }),
            Act::I8 => (tokens.zip(self.q8.par_chunks_mut(q8)))
                .zip(self.block_corr.par_chunks_mut(nb))
                .for_each(|(((x, scale), q8), block_corr)| {
                    one(
                        x,
                        TokenCodes {
                            scale,
                            q16: &mut [],
                            q8,
                            block_corr,
                        },
                    )
                }),
        }
    }

    /// Token `ti`.
    pub fn token(&self, ti: usize) -> QTok<'_> {
        let (n, nb) = (self.n, self.n / BLOCK);
        let pairs = nb.div_ceil(2);
        let span = |len: usize, per: usize| {
            if len == 0 {
                0..0
            } else {
                ti * per..(ti + 1) * per
            }
        };
        QTok {
            q16: &self.q16[span(self.q16.len(), n)],
            q8: &self.q8[span(self.q8.len(), pairs * PAIR)],
            block_corr: &self.block_corr[span(self.block_corr.len(), nb)],
            scale: &self.scale[ti * nb..(ti + 1) * nb],
        }
    }
}

/// `block_corr` from `q8`: block `2p`'s codes are bytes `0..32` and `64..96` of pair `p`,
/// block `2p + 1`'s bytes `32..64` and `96..128`.
fn block_corrections(out: TokenCodes) {
    for (b, c) in out.block_corr.iter_mut().enumerate() {
        let at = (b / 2) * PAIR + (b % 2) * 32;
        let half = |h: usize| out.q8[h..h + 32].iter().map(|&v| v as i32).sum::<i32>();
        *c = -128 * (half(at) + half(at + BLOCK));
    }
}
