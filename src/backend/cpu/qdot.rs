//! Quantized weights times activations rounded to integers: the integer dot products
//! behind int8 and nf4 matrices on the CPU.
//!
//! Before an int8 or nf4 matrix multiplies `x [t, in]`, every token's row is rounded to
//! integers in blocks of 64 with one f32 scale ([`QActs`]). The products of a block are then
//! an exact integer sum, and a (row, token) pair is
//!
//! ```text
//! y = sum_b (ws[b] * xs[b]) * sum_{i in block b} wq[i] * xq[i]
//! ```
//!
//! with `wq` the int8 weight (nf4: its code in [`NF4_I8`]), `ws` the weight block scale and
//! `xs` the activation block scale (for nf4 divided by 127, the code book's unit). What the
//! integers buy is that a quantized row is multiplied without converting it to f32.
//!
//! How finely the activations are rounded depends on the weights ([`Act`]), measured on the
//! fixtures (README table):
//! - int8 weights meet **int16** activations (`vpmaddwd`, 32 products an instruction). With
//!   int8 activations the random World model's logits moved four times as far (10.3 % of
//!   the largest logit instead of 2.4 %); int16 ones (250 times finer than the weights)
//!   leave the logits where the dequantized weights in f32 put them, to the digits the
//!   tests check.
//! - nf4 weights meet **int8** activations (`vpdpbusd`, 64 products an instruction, twice
//!   the rate). Next to nf4's own rounding they cost nothing measurable: bits per byte
//!   1.8088 against 1.8086 with int16, logit errors within 3 points either way (measured
//!   when the blocks were summed in another order).
//!
//! A block's integer sum is exact (int8: `64 * 127 * 32767 < 2^31`; nf4: `64 * 255 * 127`).
//! Every kernel sums a (row, token) pair in one order, the scalar twin's ([`dot_scalar`]):
//! block `b`'s sum, as f32, times `ws[b] * xs[b]`, is added to class `b % 16`, the blocks
//! of a class in turn, and the sixteen classes are reduced as a tree ([`tree16`]). So a
//! token's result does not depend on the kernel, nor on how many tokens share the call.
//! - One token (generation, bound by memory): sixteen blocks at a time, their integer
//!   lanes reduced together into one vector that holds a block a lane, which one multiply
//!   by the sixteen scales and one add put into the sixteen classes.
//!   - int8, a block at a time (`vpmaddwd`).
//!   - nf4, a pair of blocks at a time: one 64-byte load holds both blocks' nibbles, which
//!     two byte lookups turn into two vectors of codes; against activations stored in the
//!     matching order ([`q8_index`]) the first block's sums land in lanes 0..8 and the
//!     second's in lanes 8..16, so the pair is one vector to reduce. From L3, the product
//!     of a 2048-wide matrix and one token runs at 40-53 GB/s (2 threads).
//! - Four tokens or more (prompts, scoring; bound by arithmetic): [`Panel`], 32 rows packed
//!   a vector lane a row, so each `vpdpwssd` (int8) or `vpdpbusd` (nf4) does a block's
//!   products for sixteen rows, and one broadcast of a token's codes meets two vectors of
//!   weights. A block's sums are converted and scaled once for sixteen rows, where the 4x4
//!   tiles this replaced did it for each row: 340 GFLOP/s for int8 and 560 for nf4 (2
//!   threads, width 2048), where the tiles ran at 173 and 243. The instructions' peaks
//!   are 468 and 937 on this machine's two cores; eight tokens a call, since twelve left
//!   too few registers for the broadcasts (330 and 450).
//!
//! Kernels: AVX-512BW (with VNNI and VBMI for nf4, and VNNI for the panels), AVX2, and the scalar
//! twin everywhere else.
//!
//! The activations are rounded once a product ([`QActs::quantize`]: vectorised, and in
//! parallel over the tokens of a sequence). Rounded by scalar code, a token's activations
//! took 1.8 % of nf4 generation's CPU time while the other thread waited.

use super::Isa;
use crate::tensor::quant::{BLOCK, NF4_I8};
use crate::tensor::Plain;
use half::bf16;
use rayon::prelude::*;

/// A block scale as stored: f32 for int8 rows, bf16 for nf4 rows.
trait BlockScale: Copy {
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

/// One stored row of an int8 or nf4 matrix.
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
    fn nb(&self) -> usize {
        match self {
            QRow::Q8 { scales, .. } => scales.len(),
            QRow::Nf4 { scales, .. } => scales.len(),
        }
    }

    /// Block `b`'s scale.
    fn scale(&self, b: usize) -> f32 {
        match self {
            QRow::Q8 { scales, .. } => scales[b],
            QRow::Nf4 { scales, .. } => scales[b].to_f32(),
        }
    }

    /// Weight `i` of block `b` as its integer code.
    #[inline]
    fn code(&self, b: usize, i: usize) -> i32 {
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

/// How activations are rounded for a format's weights (see the module doc).
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
    fn max(self) -> f32 {
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

/// Classes of blocks summed apart: block `b` goes to class `b % 16` ([`dot_scalar`]), so
/// that one token's kernel adds sixteen blocks' sums at once and the sixteen-row kernel
/// keeps one sum per class and token.
const CLASSES: usize = 16;

/// Int8 activations of a pair of blocks.
const PAIR: usize = 2 * BLOCK;

/// Where activation `i` of block `b` sits in a token's int8 codes. Blocks `2p` and `2p + 1`
/// share 128 bytes, their halves interleaved: `[2p: 0..32, 2p+1: 0..32, 2p: 32..64, 2p+1:
/// 32..64]`. One 64-byte load of an nf4 pair (byte `j` of a block holds weights `j` and
/// `j + 32`) splits by nibble into two vectors that meet these 64 bytes each, with block
/// `2p` in lanes 0..8 and `2p + 1` in lanes 8..16 of the integer sums.
#[inline]
pub fn q8_index(b: usize, i: usize) -> usize {
    (b / 2) * PAIR + (i / 32) * BLOCK + (b % 2) * 32 + i % 32
}

/// A resizable buffer of plain numbers that starts on a cache line, so that the kernels'
/// 64-byte loads of it never straddle two lines. (A `Vec` need not start on one: glibc gave
/// 16 bytes past one, and one-token int8 and nf4 products ran 7 and 11 % slower in cache.)
#[derive(Debug, Default)]
struct Lines<T> {
    lines: Vec<Line>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Plain> Lines<T> {
    /// `n` elements; those past the old length are zeros.
    fn resize(&mut self, n: usize) {
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
    n: usize,
    act: Act,
    /// [`Act::I16`]: `[t, n]`, `round(x / (absmax / 32767))`.
    q16: Lines<i16>,
    /// [`Act::I8`]: `[t, pairs, 128]` in pair order ([`q8_index`]; zeros for the absent
    /// second block of an odd count), `round(x / (absmax / 127))`.
    q8: Lines<i8>,
    /// [`Act::I8`]: `[t, n / 64]`, `-128 *` the sum of a block's codes. `vpdpbusd`
    /// multiplies unsigned bytes by signed ones, so the kernels read an nf4 code as `code +
    /// 128`; adding this to a block's integer sum cancels the extra `128 * sum(xq)`.
    block_corr: Lines<i32>,
    /// `[t, n / 64]`: the block scale `absmax / max code`, times the weight format's unit.
    scale: Lines<f32>,
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
        let one = |x: &[f32], mut out: TokenCodes| {
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 && matches!(avx512_features(), (true, true, _)) {
                // SAFETY: AVX-512 BW and VNNI were detected on this CPU.
                unsafe { x86::quantize_token_avx512(x, act, unit, out.reborrow()) };
                return block_corrections(out);
            }
            let _ = isa;
            quantize_token(x, act, unit, out.reborrow());
            block_corrections(out)
        };
        if t * n < PARALLEL_FROM {
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

/// Activations from which [`QActs::quantize`] goes parallel over tokens.
const PARALLEL_FROM: usize = 64 * 1024;

/// One token's share of [`QActs`]: `scale [nb]`, and `q16 [n]` or `q8 [pairs, 128]` with
/// `block_corr [nb]` (the others empty).
struct TokenCodes<'a> {
    scale: &'a mut [f32],
    q16: &'a mut [i16],
    q8: &'a mut [i8],
    block_corr: &'a mut [i32],
}

impl TokenCodes<'_> {
    fn reborrow(&mut self) -> TokenCodes<'_> {
        TokenCodes {
            scale: self.scale,
            q16: self.q16,
            q8: self.q8,
            block_corr: self.block_corr,
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

/// One block's scale and the factor that turns its values into codes.
#[inline]
fn block_scale(amax: f32, act: Act, unit: f32) -> (f32, f32) {
    let max = act.max();
    let inv = if amax > 0.0 { max / amax } else { 0.0 };
    (amax / max * unit, inv)
}

/// Scalar twin of the AVX-512 quantizer: codes `round(x * inv)`, ties to even (what
/// `vcvtps2dq` does), then the correction sums.
fn quantize_token(x: &[f32], act: Act, unit: f32, out: TokenCodes) {
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

/// Sixteen f32 sums reduced as a tree, by halves: lane `i` plus lane `i + 8`, then `i + 4`,
/// `i + 2` and `i + 1`, the order of the AVX-512 reduction.
fn tree16(mut v: [f32; CLASSES]) -> f32 {
    for h in [8, 4, 2, 1] {
        for i in 0..h {
            v[i] += v[i + h];
        }
    }
    v[0]
}

/// Scalar twin of every kernel here, and the order they all sum in: block `b`'s exact
/// integer sum `s`, as f32, times `ws[b] * xs[b]` is added to class `b % 16`, then the
/// classes are reduced by [`tree16`].
pub fn dot_scalar(w: QRow, x: QTok) -> f32 {
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

/// Whether the AVX-512 kernels here can run: byte and word instructions, and for nf4 VNNI
/// and byte permutes.
fn avx512(w: &QRow) -> bool {
    let (bw, vnni, vbmi) = avx512_features();
    bw && (matches!(w, QRow::Q8 { .. }) || (vnni && vbmi))
}

/// Whether this CPU has AVX-512 BW, VNNI and VBMI.
fn avx512_features() -> (bool, bool, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<(bool, bool, bool)> = OnceLock::new();
        *HAS.get_or_init(|| {
            (
                is_x86_feature_detected!("avx512bw"),
                is_x86_feature_detected!("avx512vnni"),
                is_x86_feature_detected!("avx512vbmi"),
            )
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    (false, false, false)
}

/// `w . x` on `isa`.
#[inline]
pub fn dot(isa: Isa, w: QRow, x: QTok) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::*;
        // SAFETY: `isa` was detected on this CPU (Isa::detect), the AVX-512 extensions are
        // checked, and every AVX-512 CPU has AVX2 and FMA.
        unsafe {
            match (isa, w) {
                (Isa::Avx512, QRow::Q8 { qs, scales }) if avx512(&w) => {
                    return dot_q8_avx512(qs, scales, x)
                }
                (Isa::Avx512, QRow::Nf4 { packed, scales }) if avx512(&w) => {
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
    dot_scalar(w, x)
}

/// `out[k] = dot(isa, row k, x)` for the `n = out.len()` rows stored one after another in
/// `rows` ([`QRow::row`]), each the bits [`dot`] gives it: one call for a task's rows, so
/// that generation spends nothing a row on dispatch (the AVX-512 kernels loop inside).
pub fn dots(isa: Isa, rows: QRow, x: QTok, out: &mut [f32]) {
    let n = out.len();
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && avx512(&rows) {
        use x86::*;
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

/// Rows a [`Panel`] holds at most.
pub const PANEL_ROWS: usize = 32;

/// Tokens one [`Panel::multiply`] takes at most: two integer sums each in registers, beside
/// two vectors of weights.
pub const PANEL_TOKENS: usize = 8;

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
        let (bw, vnni, vbmi) = avx512_features();
        isa == Isa::Avx512 && bw && vnni && (vbmi || !nf4)
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
            self.words
                .resize(nb * x86::panel_words(nf4) * PANEL_ROWS, 0);
            self.scales.resize(nb * PANEL_ROWS, 0.0);
            // SAFETY: AVX-512 BW and VNNI, and for nf4 VBMI, were detected (Panel::runs);
            // the rows are of one format; the buffers are sized for `nb` blocks.
            unsafe {
                if nf4 {
                    x86::pack_nf4_panel(rows, &mut self.words, &mut self.scales)
                } else {
                    x86::pack_q8_panel(rows, &mut self.words, &mut self.scales)
                }
            };
        }
    }

    /// Row `r` dotted with token `t0 + j` of `x` into `*y(j).add(r)`, for the packed rows
    /// and the tokens `t0..t0 + nt` (`nt` at most [`PANEL_TOKENS`]): each equal to [`dot`],
    /// bit for bit.
    ///
    /// # Safety
    /// `y(j)` points at as many writable f32 as rows were packed, which no other thread
    /// reads or writes meanwhile.
    pub unsafe fn multiply(&self, x: &QActs, t0: usize, nt: usize, y: impl Fn(usize) -> *mut f32) {
        assert!(nt <= PANEL_TOKENS, "Panel::multiply: {nt} tokens");
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
            let tokens = x86::Tokens {
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
                        $(($n, false) => x86::panel_kernel::<$n, false>(
                            w, s, nb, &tokens, std::array::from_fn(&y), rows,
                        ),
                        ($n, true) => x86::panel_kernel::<$n, true>(
                            w, s, nb, &tokens, std::array::from_fn(&y), rows,
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::missing_safety_doc)]
    use super::super::simd::x86::{
        hsum512, lane_masks, sum_chunk_pairs, sum_chunks, sum_halves, transpose16, I32Lanes,
    };
    use super::super::simd::{prefetch_ahead, PREFETCH_AHEAD};
    use super::{bf16, BlockScale};
    use super::{block_scale, q8_index, Act, QRow, QTok, TokenCodes, BLOCK, CLASSES, NF4_I8, PAIR};
    use _mm512_castps_si512 as int;
    use _mm512_castsi512_ps as ps;
    use std::arch::x86_64::*;

    /// The 64 nf4 codes of the block at `p` (32 bytes), as signed bytes: weights 0..32 and
    /// 32..64. `table`: [`NF4_I8`] in both 128-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nf4_codes(p: *const u8, table: __m256i) -> [__m256i; 2] {
        let bytes = _mm256_loadu_si256(p as *const __m256i);
        let low = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(bytes, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
        [
            _mm256_shuffle_epi8(table, lo),
            _mm256_shuffle_epi8(table, hi),
        ]
    }

    /// [`NF4_I8`] in both 128-bit lanes, for `vpshufb`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nf4_table() -> __m256i {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_I8.as_ptr() as *const __m128i))
    }

    // ---- AVX-512: sixteen blocks' integer sums at once ----

    /// [`sum_halves`] of integer sums.
    #[inline(always)]
    unsafe fn halves(a: __m512i, b: __m512i) -> __m512i {
        int(sum_halves::<I32Lanes>(ps(a), ps(b)))
    }

    /// [`sum_chunk_pairs`] of integer sums.
    #[inline(always)]
    unsafe fn chunk_pairs(a: __m512i, b: __m512i) -> __m512i {
        int(sum_chunk_pairs::<I32Lanes>(ps(a), ps(b)))
    }

    /// [`sum_chunks`] of integer sums.
    #[inline(always)]
    unsafe fn chunks(u: [__m512i; 4]) -> __m512i {
        int(sum_chunks::<I32Lanes>([
            ps(u[0]),
            ps(u[1]),
            ps(u[2]),
            ps(u[3]),
        ]))
    }

    /// `acc +` the sixteen blocks from `g` (`m` of them; the sums past `m` are zero):
    /// integer sums `s`, as f32, times `ws[b] * xs[b]`, each in its class's lane.
    #[inline(always)]
    unsafe fn add_blocks<S: BlockScale>(
        acc: __m512,
        s: __m512i,
        ws: &[S],
        xs: &[f32],
        g: usize,
        m: usize,
    ) -> __m512 {
        let mask = (u32::MAX >> (32 - m)) as __mmask16;
        let w = load_scales(ws, g, mask);
        let x = _mm512_maskz_loadu_ps(mask, xs.as_ptr().add(g));
        _mm512_add_ps(
            acc,
            _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(w, x)),
        )
    }

    /// The scales `ws[g..]` in the lanes of `mask` as f32 (a bf16 is the top half of its
    /// f32); zeros elsewhere, read from nowhere.
    #[inline(always)]
    unsafe fn load_scales<S: BlockScale>(ws: &[S], g: usize, mask: __mmask16) -> __m512 {
        let p = ws.as_ptr().add(g);
        if S::BF16 {
            let h = _mm512_maskz_loadu_epi16(mask as __mmask32, p as *const i16);
            ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm512_castsi512_si256(h),
            )))
        } else {
            _mm512_maskz_loadu_ps(mask, p as *const f32)
        }
    }

    // ---- AVX-512, int8 weights and int16 activations ----

    /// Int8 block `b` of `qs` as two vectors of 32 words.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q8_words512(qs: &[i8], b: usize) -> [__m512i; 2] {
        let p = qs.as_ptr().add(b * BLOCK) as *const __m256i;
        [p, p.add(1)].map(|p| _mm512_cvtepi8_epi16(_mm256_loadu_si256(p)))
    }

    /// Block `b` of `x` against its weights `w`: sixteen integer lanes.
    #[inline(always)]
    unsafe fn q8_block512(w: [__m512i; 2], x: QTok, b: usize) -> __m512i {
        let p = x.q16.as_ptr().add(b * BLOCK) as *const __m512i;
        _mm512_add_epi32(
            _mm512_madd_epi16(w[0], _mm512_loadu_si512(p)),
            _mm512_madd_epi16(w[1], _mm512_loadu_si512(p.add(1))),
        )
    }

    /// Ask for the int8 weights ahead of blocks `b` and `b + 1`.
    #[inline(always)]
    fn q8_prefetch(qs: &[i8], b: usize) {
        prefetch_ahead(qs.as_ptr().wrapping_add(b * BLOCK), PREFETCH_AHEAD);
        prefetch_ahead(qs.as_ptr().wrapping_add(b * BLOCK + BLOCK), PREFETCH_AHEAD);
    }

    /// Blocks `g..g + m` (at most sixteen) of a row against `x`: lane `j` is block `g + j`'s
    /// integer sum (zero past `m`). Blocks are reduced in pairs as they come
    /// ([`sum_halves`], [`sum_chunk_pairs`], [`sum_chunks`]), so few vectors are live.
    #[inline(always)]
    unsafe fn q8_group(qs: &[i8], x: QTok, g: usize, m: usize) -> __m512i {
        let mut u = [_mm512_setzero_si512(); 4];
        for (k, u) in u.iter_mut().enumerate() {
            let mut h = [_mm512_setzero_si512(); 2];
            for (i, h) in h.iter_mut().enumerate() {
                let j = 4 * k + 2 * i;
                if j < m {
                    let b = g + j;
                    q8_prefetch(qs, b);
                    let a = q8_block512(q8_words512(qs, b), x, b);
                    let c = if j + 1 < m {
                        q8_block512(q8_words512(qs, b + 1), x, b + 1)
                    } else {
                        _mm512_setzero_si512()
                    };
                    *h = halves(a, c);
                }
            }
            *u = chunk_pairs(h[0], h[1]);
        }
        chunks(u)
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn dot_q8_avx512(qs: &[i8], scales: &[f32], x: QTok) -> f32 {
        let nb = scales.len();
        let mut acc = _mm512_setzero_ps();
        let whole = nb / CLASSES * CLASSES;
        for g in (0..whole).step_by(CLASSES) {
            acc = add_blocks(
                acc,
                q8_group(qs, x, g, CLASSES),
                scales,
                x.scale,
                g,
                CLASSES,
            );
        }
        if whole < nb {
            let m = nb - whole;
            acc = add_blocks(acc, q8_group(qs, x, whole, m), scales, x.scale, whole, m);
        }
        hsum512(acc)
    }

    /// [`dot_q8_avx512`] over `out.len()` rows stored one after another in `qs` and
    /// `scales`, each row's start asked for into L1 two rows ahead.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn dots_q8_avx512(qs: &[i8], scales: &[f32], x: QTok, out: &mut [f32]) {
        let nb = scales.len() / out.len().max(1);
        let n = nb * BLOCK;
        assert_eq!(qs.len(), out.len() * n, "dots: rows and outputs disagree");
        for (k, o) in out.iter_mut().enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(qs.as_ptr().wrapping_add((k + 2) * n));
            // in bounds: qs holds out.len() rows (asserted), scales at least as many
            let row = qs.get_unchecked(k * n..(k + 1) * n);
            *o = dot_q8_avx512(row, scales.get_unchecked(k * nb..(k + 1) * nb), x);
        }
    }

    // ---- AVX-512, nf4 weights and int8 activations: a pair of blocks at a time ----

    /// [`NF4_I8`] plus 128 (as unsigned bytes, for `vpdpbusd`) four times over, for
    /// `vpermb`, which reads six bits of an index: the two above a nibble do not matter.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn nf4_table_u8x4() -> __m512i {
        const TABLE: [u8; 64] = {
            let mut t = [0; 64];
            let mut i = 0;
            while i < 64 {
                t[i] = (NF4_I8[i % 16] as u8) ^ 0x80;
                i += 1;
            }
            t
        };
        _mm512_loadu_si512(TABLE.as_ptr() as *const __m512i)
    }

    /// Pair `p` of an nf4 row (blocks `2p` and `2p + 1`, 64 bytes) as two vectors of codes
    /// plus 128: the low nibbles `[2p: 0..32, 2p+1: 0..32]` and the high ones `[2p: 32..64,
    /// 2p+1: 32..64]`, the order of [`super::q8_index`]. `HALF`: the last pair of an odd
    /// count, whose second block is not read (its codes are those of zero bytes, and meet
    /// zero activations).
    #[inline(always)]
    unsafe fn nf4_pair<const HALF: bool>(packed: &[u8], p: usize, table: __m512i) -> [__m512i; 2] {
        let ptr = packed.as_ptr().add(p * BLOCK);
        let v = if HALF {
            _mm512_maskz_loadu_epi8(0xFFFF_FFFF, ptr as *const i8)
        } else {
            _mm512_loadu_si512(ptr as *const __m512i)
        };
        [
            _mm512_permutexvar_epi8(v, table),
            _mm512_permutexvar_epi8(_mm512_srli_epi16::<4>(v), table),
        ]
    }

    /// Pair `p` of `x` against its weights `w` (codes plus 128, [`nf4_pair`]): block `2p`'s
    /// sums in lanes 0..8, block `2p + 1`'s in lanes 8..16, each 128 times its activations
    /// too high (the block's correction takes that off).
    #[inline(always)]
    unsafe fn nf4_pair_lanes(w: [__m512i; 2], x: QTok, p: usize) -> __m512i {
        let xp = x.q8.as_ptr().add(p * PAIR) as *const __m512i;
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], _mm512_loadu_si512(xp));
        _mm512_dpbusd_epi32(s, w[1], _mm512_loadu_si512(xp.add(1)))
    }

    /// Pair `p` of `packed` against `x`, its weights asked for ahead.
    #[inline(always)]
    unsafe fn nf4_dot_pair<const HALF: bool>(
        packed: &[u8],
        x: QTok,
        p: usize,
        table: __m512i,
    ) -> __m512i {
        prefetch_ahead(packed.as_ptr().wrapping_add(p * BLOCK), PREFETCH_AHEAD);
        nf4_pair_lanes(nf4_pair::<HALF>(packed, p, table), x, p)
    }

    /// Blocks `g..g + m` (`g` even, `m` at most sixteen) of an nf4 row against `x`: lane `j`
    /// is block `g + j`'s integer sum with its correction (zero past `m`). A pair's two
    /// blocks share a vector, so one step fewer reduces them ([`sum_chunk_pairs`],
    /// [`sum_chunks`]).
    #[inline(always)]
    unsafe fn nf4_group(packed: &[u8], x: QTok, g: usize, m: usize, table: __m512i) -> __m512i {
        let mut v = [_mm512_setzero_si512(); CLASSES / 2];
        for (k, v) in v.iter_mut().enumerate() {
            let p = g / 2 + k;
            if 2 * k + 1 < m {
                *v = nf4_dot_pair::<false>(packed, x, p, table);
            } else if 2 * k < m {
                *v = nf4_dot_pair::<true>(packed, x, p, table);
            }
        }
        let mut u = [_mm512_setzero_si512(); 4];
        for (k, u) in u.iter_mut().enumerate() {
            *u = chunk_pairs(v[2 * k], v[2 * k + 1]);
        }
        let mask = (u32::MAX >> (32 - m)) as __mmask16;
        let corr = _mm512_maskz_loadu_epi32(mask, x.block_corr.as_ptr().add(g));
        _mm512_add_epi32(chunks(u), corr)
    }

    /// Sixteen blocks at a time ([`nf4_group`]): whole groups, then the last, shorter one,
    /// so that the loop over whole ones tests no bounds. The corrections are added once a
    /// group, to its sixteen sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    pub unsafe fn dot_nf4_vnni(packed: &[u8], scales: &[bf16], x: QTok) -> f32 {
        nf4_row_vnni(packed, scales, x, nf4_table_u8x4())
    }

    /// [`dot_nf4_vnni`] over `out.len()` rows stored one after another in `packed` and
    /// `scales`, the table loaded once, each row's start asked for into L1 two rows ahead
    /// (without that, generation lost two points of the bandwidth limit).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    pub unsafe fn dots_nf4_vnni(packed: &[u8], scales: &[bf16], x: QTok, out: &mut [f32]) {
        let table = nf4_table_u8x4();
        let nb = scales.len() / out.len().max(1);
        let bytes = nb * BLOCK / 2;
        assert_eq!(
            packed.len(),
            out.len() * bytes,
            "dots: rows and outputs disagree"
        );
        for (k, o) in out.iter_mut().enumerate() {
            let ahead = packed.as_ptr().wrapping_add((k + 2) * bytes) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            // in bounds: packed holds out.len() rows (asserted), scales at least as many
            let row = packed.get_unchecked(k * bytes..(k + 1) * bytes);
            *o = nf4_row_vnni(row, scales.get_unchecked(k * nb..(k + 1) * nb), x, table);
        }
    }

    /// The body of [`dot_nf4_vnni`].
    #[inline(always)]
    unsafe fn nf4_row_vnni(packed: &[u8], scales: &[bf16], x: QTok, table: __m512i) -> f32 {
        let nb = scales.len();
        let mut acc = _mm512_setzero_ps();
        let whole = nb / CLASSES * CLASSES;
        for g in (0..whole).step_by(CLASSES) {
            let s = nf4_group(packed, x, g, CLASSES, table);
            acc = add_blocks(acc, s, scales, x.scale, g, CLASSES);
        }
        if whole < nb {
            let m = nb - whole;
            let s = nf4_group(packed, x, whole, m, table);
            acc = add_blocks(acc, s, scales, x.scale, whole, m);
        }
        hsum512(acc)
    }

    // ---- AVX-512 VNNI: 32 rows against up to eight tokens ----

    /// 32-bit words a block takes in a panel row: int8 pairs of words, nf4 quads of bytes.
    pub const fn panel_words(nf4: bool) -> usize {
        if nf4 {
            BLOCK / 4
        } else {
            BLOCK / 2
        }
    }

    /// Pack `rows` (at most 32, of one format) into `words [nb, panel_words, 2, 16]` (lane
    /// `r % 16` of half `r / 16` of word `k` of block `b`: row `r`'s weights `2k, 2k + 1` of
    /// the block as two words (int8) or `4k..4k + 4` as codes plus 128 (nf4)) and `scales
    /// [nb, 32]`; lanes past the rows are zero. Sixteen rows by sixteen words at a time,
    /// transposed in registers. int8 rows need AVX-512 BW ([`pack_q8_panel`]), nf4 rows
    /// VBMI too ([`pack_nf4_panel`]).
    #[inline(always)]
    unsafe fn pack_panel<const NF4: bool>(rows: &[QRow], words: &mut [u32], scales: &mut [f32]) {
        let nb = rows[0].nb();
        let per = panel_words(NF4);
        assert!(rows.len() <= 32 && words.len() >= nb * per * 32 && scales.len() >= nb * 32);
        let table = if NF4 {
            nf4_table_u8x4()
        } else {
            _mm512_setzero_si512()
        };
        let out = words.as_mut_ptr() as *mut __m512i;
        scales[..nb * 32].fill(0.0);
        for (r, row) in rows.iter().enumerate() {
            for b in 0..nb {
                scales[b * 32 + r] = row.scale(b);
            }
        }
        for b in 0..nb {
            for rh in 0..rows.len().div_ceil(16) {
                for half in 0..per / 16 {
                    let mut v = [_mm512_setzero_si512(); 16];
                    for (v, row) in v.iter_mut().zip(&rows[16 * rh..]) {
                        *v = match row {
                            QRow::Nf4 { packed, .. } if NF4 => {
                                let p = packed.as_ptr().add(b * BLOCK / 2) as *const __m256i;
                                let v = _mm512_castsi256_si512(_mm256_loadu_si256(p));
                                let lo = _mm512_permutexvar_epi8(v, table);
                                let hi = _mm512_permutexvar_epi8(_mm512_srli_epi16::<4>(v), table);
                                _mm512_inserti64x4::<1>(lo, _mm512_castsi512_si256(hi))
                            }
                            QRow::Q8 { qs, .. } if !NF4 => {
                                let p = qs.as_ptr().add(b * BLOCK + 32 * half) as *const __m256i;
                                _mm512_cvtepi8_epi16(_mm256_loadu_si256(p))
                            }
                            _ => unreachable!("pack_panel: rows of two formats"),
                        };
                    }
                    for (k, t) in transpose16(v).into_iter().enumerate() {
                        _mm512_storeu_si512(out.add((b * per + 16 * half + k) * 2 + rh), t);
                    }
                }
            }
            if rows.len() <= 16 {
                for k in 0..per {
                    _mm512_storeu_si512(out.add((b * per + k) * 2 + 1), _mm512_setzero_si512());
                }
            }
        }
    }

    /// [`pack_panel`] for int8 rows.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn pack_q8_panel(rows: &[QRow], words: &mut [u32], scales: &mut [f32]) {
        pack_panel::<false>(rows, words, scales)
    }

    /// [`pack_panel`] for nf4 rows (`vpermb` looks up the codes).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn pack_nf4_panel(rows: &[QRow], words: &mut [u32], scales: &mut [f32]) {
        pack_panel::<true>(rows, words, scales)
    }

    /// Where the tokens of one [`panel_kernel`] call start: their codes (int16, or int8 in
    /// pair order), block scales and (nf4) block corrections; the first `N` are read.
    pub struct Tokens {
        pub codes: [*const u8; super::PANEL_TOKENS],
        pub scale: [*const f32; super::PANEL_TOKENS],
        pub corr: [*const i32; super::PANEL_TOKENS],
    }

    /// The class the `k`-th pass of [`panel_kernel`] sums: `k`'s four bits reversed, so
    /// that the classes arrive in pairs of [`super::tree16`]'s tree.
    const fn class_order(k: usize) -> usize {
        (k & 1) << 3 | (k & 2) << 1 | (k & 4) >> 1 | (k & 8) >> 3
    }

    /// `out[j][r]` = row `r` of a packed panel ([`pack_panel`]) dotted with token `x[j]`,
    /// each summed in [`super::dot_scalar`]'s order: a block's integer sum in a lane of
    /// `vpdpwssd` (int8) or `vpdpbusd` (nf4, started at the block's correction), then, as
    /// f32, times the scales, into its class's sum; the blocks of a class one after the
    /// other. The classes come in bit-reversed order, so each finished class completes a
    /// subtree of [`super::tree16`] with the ones before it and only four partial sums a
    /// token wait. One broadcast of a token's codes meets two vectors of weights (32 rows).
    /// The first `N` of `x` must hold `nb` blocks of codes of the panel's kind
    /// ([`super::Panel`] checks them); row `r < rows` of token `j` is stored at `y[j] + r`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn panel_kernel<const N: usize, const NF4: bool>(
        words: &[u32],
        scales: &[f32],
        nb: usize,
        x: &Tokens,
        y: [*mut f32; N],
        rows: usize,
    ) {
        let per = panel_words(NF4);
        assert!(words.len() >= nb * per * 32 && scales.len() >= nb * 32);
        let wp = words.as_ptr() as *const __m512i;
        let xq = &x.codes;
        // partial sums of the tree, by level: [token][half]
        let mut tree = [[[_mm512_setzero_ps(); 2]; N]; 4];
        for k in 0..CLASSES {
            let c = class_order(k);
            let mut acc = [[_mm512_setzero_ps(); 2]; N];
            for b in (c..nb).step_by(CLASSES) {
                let mut s = [[_mm512_setzero_si512(); 2]; N];
                if NF4 {
                    for (s, corr) in s.iter_mut().zip(x.corr) {
                        let corr = _mm512_set1_epi32(*corr.add(b));
                        *s = [corr, corr];
                    }
                }
                // the block's codes: nf4 in pair order, words 8..16 64 bytes on
                let base = if NF4 { q8_index(b, 0) } else { 2 * b * BLOCK };
                let wb = wp.add(2 * b * per);
                for w in 0..per {
                    let w0 = _mm512_loadu_si512(wb.add(2 * w));
                    let w1 = _mm512_loadu_si512(wb.add(2 * w + 1));
                    let at = base + 4 * if NF4 && w >= 8 { w + 8 } else { w };
                    for j in 0..N {
                        let xv = std::ptr::read_unaligned(xq[j].add(at) as *const i32);
                        let xv = _mm512_set1_epi32(xv);
                        s[j] = if NF4 {
                            [
                                _mm512_dpbusd_epi32(s[j][0], w0, xv),
                                _mm512_dpbusd_epi32(s[j][1], w1, xv),
                            ]
                        } else {
                            [
                                _mm512_dpwssd_epi32(s[j][0], w0, xv),
                                _mm512_dpwssd_epi32(s[j][1], w1, xv),
                            ]
                        };
                    }
                }
                let ws = [0, 16].map(|h| _mm512_loadu_ps(scales.as_ptr().add(b * 32 + h)));
                for j in 0..N {
                    let xs = _mm512_set1_ps(*x.scale[j].add(b));
                    for h in 0..2 {
                        let p =
                            _mm512_mul_ps(_mm512_cvtepi32_ps(s[j][h]), _mm512_mul_ps(ws[h], xs));
                        acc[j][h] = _mm512_add_ps(acc[j][h], p);
                    }
                }
            }
            // a binary counter over the passes: merge while the level is taken
            let (mut level, mut kk) = (0, k);
            while kk & 1 == 1 {
                for j in 0..N {
                    for h in 0..2 {
                        acc[j][h] = _mm512_add_ps(tree[level][j][h], acc[j][h]);
                    }
                }
                (level, kk) = (level + 1, kk >> 1);
            }
            if level < 4 {
                tree[level] = acc;
            } else {
                let [m0, m1] = lane_masks(rows);
                for j in 0..N {
                    _mm512_mask_storeu_ps(y[j], m0, acc[j][0]);
                    _mm512_mask_storeu_ps(y[j].add(16), m1, acc[j][1]);
                }
            }
        }
    }

    // ---- rounding activations ----

    /// [`super::quantize_token`] on AVX-512: the same codes (for finite `x`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn quantize_token_avx512(x: &[f32], act: Act, unit: f32, out: TokenCodes) {
        let max = _mm512_set1_ps(act.max());
        let nb = x.len() / BLOCK;
        for b in 0..nb {
            let p = x.as_ptr().add(b * BLOCK);
            let mut v = [_mm512_setzero_ps(); 4];
            let mut amax = _mm512_setzero_ps();
            for (k, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(p.add(16 * k));
                amax = _mm512_max_ps(amax, _mm512_abs_ps(*v));
            }
            let (scale, inv) = block_scale(_mm512_reduce_max_ps(amax), act, unit);
            out.scale[b] = scale;
            let inv = _mm512_set1_ps(inv);
            for (k, v) in v.into_iter().enumerate() {
                let c = _mm512_max_ps(
                    _mm512_mul_ps(v, inv),
                    _mm512_sub_ps(_mm512_setzero_ps(), max),
                );
                let c = _mm512_cvtps_epi32(_mm512_min_ps(c, max));
                match act {
                    Act::I16 => {
                        let o = out.q16.as_mut_ptr().add(b * BLOCK + 16 * k);
                        _mm256_storeu_si256(o as *mut __m256i, _mm512_cvtsepi32_epi16(c));
                    }
                    Act::I8 => {
                        let o = out.q8.as_mut_ptr().add(q8_index(b, 16 * k));
                        _mm_storeu_si128(o as *mut __m128i, _mm512_cvtsepi32_epi8(c));
                    }
                }
            }
        }
        if act == Act::I8 && nb % 2 == 1 {
            // the absent second block of the last pair multiplies as zeros
            let o = out.q8.as_mut_ptr().add(q8_index(nb, 0));
            _mm256_storeu_si256(o as *mut __m256i, _mm256_setzero_si256());
            _mm256_storeu_si256(o.add(BLOCK) as *mut __m256i, _mm256_setzero_si256());
        }
    }

    // ---- AVX2: eight blocks' integer sums at once ----

    /// Lane `r` of the result is the sum of `v[r]`'s lanes (integers, so any order).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sum8(v: [__m256i; 8]) -> __m256i {
        let h = |a, b| _mm256_hadd_epi32(a, b);
        let (a, b) = (
            h(h(v[0], v[1]), h(v[2], v[3])),
            h(h(v[4], v[5]), h(v[6], v[7])),
        );
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(a, b),
            _mm256_permute2x128_si256::<0x31>(a, b),
        )
    }

    /// The sum of 16 lanes in [`hsum512`]'s order: `lo` holds lanes 0..8, `hi` 8..16.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum256x2(lo: __m256, hi: __m256) -> f32 {
        let v = _mm256_add_ps(lo, hi);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// `acc +` the eight blocks from `g` (`m` of them; the sums past `m` are zero) in
    /// [`super::dot_scalar`]'s order: integer sums `v`, as f32, times `ws[b] * xs[b]`,
    /// classes 0..8 in `acc[0]` and 8..16 in `acc[1]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn add_blocks256<S: BlockScale>(
        acc: &mut [__m256; 2],
        v: [__m256i; 8],
        x: QTok,
        ws: &[S],
        g: usize,
    ) {
        let m = (ws.len() - g).min(8);
        let mut s = [0.0f32; 8];
        for (j, s) in s.iter_mut().enumerate().take(m) {
            *s = ws[g + j].f32() * x.scale[g + j];
        }
        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(sum8(v)), _mm256_loadu_ps(s.as_ptr()));
        let a = &mut acc[g / 8 % 2];
        *a = _mm256_add_ps(*a, p);
    }

    /// Int8 block `b` of `qs` against `x`: eight integer lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q8_block256(qs: &[i8], x: QTok, b: usize) -> __m256i {
        let wp = qs.as_ptr().add(b * BLOCK) as *const __m128i;
        let xp = x.q16.as_ptr().add(b * BLOCK) as *const __m256i;
        let m = |k: usize| {
            let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(k)));
            _mm256_madd_epi16(w, _mm256_loadu_si256(xp.add(k)))
        };
        _mm256_add_epi32(_mm256_add_epi32(m(0), m(1)), _mm256_add_epi32(m(2), m(3)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_avx2(qs: &[i8], scales: &[f32], x: QTok) -> f32 {
        let nb = scales.len();
        let mut acc = [_mm256_setzero_ps(); 2];
        for g in (0..nb).step_by(8) {
            let mut v = [_mm256_setzero_si256(); 8];
            for (j, v) in v.iter_mut().enumerate().take(nb - g) {
                if j % 2 == 0 {
                    q8_prefetch(qs, g + j);
                }
                *v = q8_block256(qs, x, g + j);
            }
            add_blocks256(&mut acc, v, x, scales, g);
        }
        hsum256x2(acc[0], acc[1])
    }

    /// `sum(|w| * (x with the sign of w))` over 32 bytes, as eight i32 lanes: pairs of
    /// products in 16 bits, which cannot overflow since `|w|, |x| <= 127`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn madd_i8(w: __m256i, x: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    /// nf4 block `b` of `packed` against `x`: eight integer lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nf4_block256(packed: &[u8], x: QTok, b: usize, table: __m256i) -> __m256i {
        let [w0, w1] = nf4_codes(packed.as_ptr().add(b * BLOCK / 2), table);
        let xp = |i: usize| x.q8.as_ptr().add(q8_index(b, i)) as *const __m256i;
        _mm256_add_epi32(
            madd_i8(w0, _mm256_loadu_si256(xp(0))),
            madd_i8(w1, _mm256_loadu_si256(xp(32))),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_nf4_avx2(packed: &[u8], scales: &[bf16], x: QTok) -> f32 {
        let table = nf4_table();
        let nb = scales.len();
        let mut acc = [_mm256_setzero_ps(); 2];
        for g in (0..nb).step_by(8) {
            let mut v = [_mm256_setzero_si256(); 8];
            for (j, v) in v.iter_mut().enumerate().take(nb - g) {
                let b = g + j;
                if b % 2 == 0 {
                    prefetch_ahead(packed.as_ptr().wrapping_add(b * BLOCK / 2), PREFETCH_AHEAD);
                }
                *v = nf4_block256(packed, x, b, table);
            }
            add_blocks256(&mut acc, v, x, scales, g);
        }
        hsum256x2(acc[0], acc[1])
    }
}

#[cfg(test)]
mod tests {
    use super::super::qrow as row;
    use super::super::tests::vals;
    use super::*;
    use crate::tensor::quant::{quantize, Quant};
    use crate::tensor::Matrix;

    /// Every token's codes start on a cache line (whole lines a token), and growing the
    /// buffer again gives zeros past the old length.
    #[test]
    fn activation_codes_start_on_cache_lines() {
        let x = vals(3 * 192, 2);
        for act in [Act::I16, Act::I8] {
            let mut a = QActs::default();
            a.quantize(Isa::detect(), &x, 192, 1.0, act);
            for ti in 0..3 {
                let tok = a.token(ti);
                let p = match act {
                    Act::I16 => tok.q16.as_ptr() as usize,
                    Act::I8 => tok.q8.as_ptr() as usize,
                };
                assert_eq!(p % 64, 0, "{act:?} token {ti}");
            }
        }
        let mut l = Lines::<i16>::default();
        l.resize(40);
        l.fill(7);
        l.resize(3);
        l.resize(40);
        assert_eq!((l[2], l[3], l[39]), (7, 0, 0));
    }

    #[test]
    fn activations_round_within_half_a_step() {
        let n = 192;
        let mut x = vals(2 * n, 1);
        x[70] = 9.0; // one block with an outlier
        x[128..192].iter_mut().for_each(|v| *v = 0.0); // and one of zeros
        for act in [Act::I16, Act::I8] {
            let mut a = QActs::default();
            a.quantize(Isa::Portable, &x, n, 1.0, act);
            for ti in 0..2 {
                let tok = a.token(ti);
                let q = |i: usize| match act {
                    Act::I16 => tok.q16[i] as i32,
                    Act::I8 => tok.q8[q8_index(i / BLOCK, i % BLOCK)] as i32,
                };
                for (i, &v) in x[ti * n..(ti + 1) * n].iter().enumerate() {
                    let s = tok.scale[i / BLOCK];
                    let err = (q(i) as f32 * s - v).abs();
                    assert!(err <= s * 0.5 + 1e-9, "{act:?} {ti} {i}");
                }
                if act == Act::I8 {
                    // n = 192: a whole pair, then block 2 with zeros beside it
                    assert_eq!((tok.q8.len(), tok.block_corr.len()), (256, 3));
                    assert!((0..BLOCK).all(|i| tok.q8[q8_index(3, i)] == 0));
                    for (b, &c) in tok.block_corr.iter().enumerate() {
                        let sum: i32 = (0..BLOCK).map(|i| q(b * BLOCK + i)).sum();
                        assert_eq!(c, -128 * sum, "block {b}");
                    }
                    // pair order: block 0's first half, block 1's, block 0's second half
                    let v = |b: usize, i: usize| q(b * BLOCK + i);
                    assert_eq!(
                        tok.q8[..3].iter().map(|&c| c as i32).collect::<Vec<_>>(),
                        [v(0, 0), v(0, 1), v(0, 2)]
                    );
                    assert_eq!(tok.q8[32] as i32, v(1, 0));
                    assert_eq!(tok.q8[64] as i32, v(0, 32));
                    assert_eq!(tok.q8[127] as i32, v(1, 63));
                    assert_eq!(tok.q8[128] as i32, v(2, 0));
                }
                assert!((128..192).all(|i| ti == 1 || q(i) == 0));
            }
            let tok = a.token(0);
            assert_eq!(tok.scale[1], 9.0 / act.max());
            assert_eq!(tok.scale[2], 0.0);
        }
        let mut a = QActs::default();
        a.quantize(Isa::Portable, &x, n, 1.0, Act::I8);
        assert_eq!(a.token(0).q8[q8_index(1, 6)], 127);
        a.quantize(Isa::Portable, &x, n, 1.0, Act::I16);
        assert_eq!(a.token(0).q16[70], i16::MAX);
        assert!(a.token(1).q8.is_empty() && a.token(1).block_corr.is_empty());
    }

    /// The AVX-512 quantizer gives the scalar twin's codes, serial and in parallel (70
    /// tokens of 17 blocks are over [`PARALLEL_FROM`]), odd block counts included; ties
    /// go to even.
    #[test]
    fn every_isa_rounds_activations_alike() {
        for (n, t) in [(192, 3), (17 * BLOCK, 70)] {
            assert_eq!(t * n >= PARALLEL_FROM, t == 70);
            let mut x = vals(t * n, 4);
            x[..4].copy_from_slice(&[127.0, 2.5, -3.5, 0.5]); // a step of exactly 1
            for act in [Act::I16, Act::I8] {
                let mut want = QActs::default();
                want.quantize(Isa::Portable, &x, n, 0.5, act);
                if act == Act::I8 {
                    let q = |i| want.token(0).q8[q8_index(0, i)];
                    assert_eq!([q(0), q(1), q(2), q(3)], [127, 2, -4, 0]);
                }
                for isa in Isa::available() {
                    let mut got = QActs::default();
                    got.quantize(isa, &x, n, 0.5, act);
                    assert_eq!(got.scale[..], want.scale[..], "{isa:?} {act:?} {n}");
                    assert_eq!(got.q16[..], want.q16[..], "{isa:?} {act:?} {n}");
                    assert_eq!(got.q8[..], want.q8[..], "{isa:?} {act:?} {n}");
                    assert_eq!(
                        got.block_corr[..],
                        want.block_corr[..],
                        "{isa:?} {act:?} {n}"
                    );
                }
            }
        }
    }

    /// `W [rows, n]` and `x [t, n]` from `seed`, the first block of the last row and of the
    /// last token all -1: the extreme codes, -127 times the largest activation code.
    fn case(rows: usize, n: usize, t: usize, seed: u32) -> (Matrix, Vec<f32>) {
        let mut wv = vals(rows * n, seed);
        let mut xv = vals(t * n, seed + 1);
        for (v, len) in [(&mut wv, rows), (&mut xv, t)] {
            v[(len - 1) * n..(len - 1) * n + BLOCK].fill(-1.0);
        }
        (Matrix::from_f32(rows, n, wv), xv)
    }

    /// The unit of a format's codes and how its activations are rounded (the backend's
    /// `code_unit`).
    fn rounding(q: Quant) -> (f32, Act) {
        match q {
            Quant::Int8 => (1.0, Act::I16),
            Quant::Nf4 => (1.0 / 127.0, Act::I8),
        }
    }

    /// Every kernel against the scalar twin, bit for bit, including the extreme codes
    /// ([`case`]) and block counts that end a class early (3, 17 and 33 blocks), one row at
    /// a time ([`dot`]) and all of them in one call ([`dots`]); and the scalar twin against
    /// the product of the dequantized weights: apart from f32 rounding, it differs by the
    /// activations' rounding, at most half a step (`absmax / max code`) times each `|w|`.
    #[test]
    fn kernels_match_the_scalar_twin() {
        for (rows, n) in [
            (4, 64),
            (5, 192),
            (8, 1024),
            (3, 17 * BLOCK),
            (2, 33 * BLOCK),
        ] {
            let (base, xv) = case(rows, n, 4, 2);
            for q in [Quant::Int8, Quant::Nf4] {
                let m = quantize(&base, q);
                let (unit, act) = rounding(q);
                let mut acts = QActs::default();
                acts.quantize(Isa::Portable, &xv, n, unit, act);
                let deq = m.to_f32();
                for ti in 0..4 {
                    let want: Vec<f32> = (0..rows)
                        .map(|r| dot_scalar(row(&m, r), acts.token(ti)))
                        .collect();
                    for isa in Isa::available() {
                        let mut got = vec![f32::NAN; rows];
                        dots(
                            isa,
                            super::super::qrows(&m, 0..rows),
                            acts.token(ti),
                            &mut got,
                        );
                        assert_eq!(got, want, "dots: {q:?} {isa:?} {n} {ti}");
                    }
                }
                for r in 0..rows {
                    for ti in 0..4 {
                        let want = dot_scalar(row(&m, r), acts.token(ti));
                        for isa in Isa::available() {
                            let got = dot(isa, row(&m, r), acts.token(ti));
                            assert_eq!(got, want, "{q:?} {isa:?} {n} {r} {ti}");
                        }
                        let (wr, xr) = (&deq[r * n..(r + 1) * n], &xv[ti * n..(ti + 1) * n]);
                        let exact: f64 =
                            wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mut bound = 0.0;
                        for (wb, xb) in wr.chunks(BLOCK).zip(xr.chunks(BLOCK)) {
                            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                            let step = (amax / act.max()) as f64;
                            bound += wb.iter().map(|w| w.abs() as f64 * step / 2.0).sum::<f64>();
                        }
                        let mag: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        assert!(
                            (want as f64 - exact).abs() <= bound + 1e-6 * mag,
                            "{q:?} {r} {ti}: {want} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    /// The panel kernel gives every (row, token) pair exactly what the one-token kernel
    /// gives it: 1 to 32 rows, 1 to 8 tokens, block counts that end a class early, and
    /// rows of extreme codes.
    #[test]
    fn panels_match_the_one_token_kernel() {
        let isa = Isa::detect();
        if !Panel::runs(isa, true) {
            eprintln!("no panel kernel on this CPU: nothing to compare");
            return;
        }
        for (rows, n, t) in [
            (32, 1024, 8),
            (7, 192, 5),
            (23, 17 * BLOCK, 7),
            (16, 64, 3),
            (1, 33 * BLOCK, 1),
        ] {
            let (base, xv) = case(rows, n, t, 5);
            for q in [Quant::Int8, Quant::Nf4] {
                let m = quantize(&base, q);
                let (unit, act) = rounding(q);
                let mut acts = QActs::default();
                acts.quantize(isa, &xv, n, unit, act);
                let stored: Vec<QRow> = (0..rows).map(|r| row(&m, r)).collect();
                let mut panel = Panel::default();
                panel.pack(isa, &stored);
                let tokens: Vec<QTok> = (0..t).map(|j| acts.token(j)).collect();
                let mut out = [[f32::NAN; PANEL_ROWS]; PANEL_TOKENS];
                let base = out.as_mut_ptr() as *mut f32;
                // SAFETY: row j of `out` holds 32 f32, as many as a panel's rows.
                unsafe { panel.multiply(&acts, 0, t, |j| base.add(j * PANEL_ROWS)) };
                for (j, got) in out[..t].iter().enumerate() {
                    for (r, &v) in got[..rows].iter().enumerate() {
                        let want = dot(isa, stored[r], tokens[j]);
                        assert_eq!(v, want, "{q:?} {n}: row {r} token {j}");
                    }
                }
            }
        }
    }
}
