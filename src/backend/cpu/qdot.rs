//! Quantized weights times activations rounded to int16: the integer dot products behind
//! int8 and nf4 matrices on the CPU.
//!
//! Before an int8 or nf4 matrix multiplies `x [t, in]`, every token's row is rounded to
//! int16 in blocks of 64 with one f32 scale ([`QActs`]). The products of a block are then
//! an exact integer sum, and a (row, token) pair is
//!
//! ```text
//! y = sum_b (ws[b] * xs[b]) * sum_{i in block b} wq[i] * xq[i]
//! ```
//!
//! with `wq` the int8 weight (nf4: its code in [`NF4_I8`]), `ws` the weight block scale and
//! `xs` the activation block scale (for nf4 divided by 127, the code book's unit). Rounding
//! to int16 moves an activation by at most 1/65534 of its block's largest, 250 times less
//! than int8 weights move, so the logits match those of the dequantized weights in f32 to
//! the digits the tests check; int8 activations (as other engines round them) were measured
//! to move the logits four times as far as int8 weights do (on `rand-rwkv6-world-d64`).
//! What the integers buy is that a quantized row is multiplied without converting it to
//! f32: `vpmaddwd` does 32 products an instruction and sign-extending a byte is one.
//!
//! A block is two `vpmaddwd`s; lane `l` of a block's sum holds four products (weights
//! `2l, 2l+1, 32+2l, 33+2l`), at most `4 * 127 * 32767 < 2^24`, so converting it to f32 is
//! exact. Blocks are scaled and added in pairs (`acc + (l0 * s0 + l1 * s1)`, which keeps the
//! chain through the accumulator short) and the lanes reduced at the end. The 4x4 tile does
//! exactly the same for each of its sixteen pairs, so a token's result does not depend on
//! how many tokens share the call. Kernels: AVX-512BW (16 lanes), AVX2 (8 lanes), and the
//! scalar twin [`dot_scalar`] everywhere else.

use super::Isa;
use crate::tensor::quant::{BLOCK, NF4_I8};

/// The largest activation code.
const XMAX: f32 = i16::MAX as f32;

/// One stored row of an int8 or nf4 matrix.
#[derive(Debug, Clone, Copy)]
pub enum QRow<'a> {
    /// `qs [n]`, `scales [n / 64]`.
    Q8 { qs: &'a [i8], scales: &'a [f32] },
    /// `packed [n / 2]` (byte `j` of a block: weights `j` and `j + 32`), `scales [n / 64]`.
    Nf4 { packed: &'a [u8], scales: &'a [f32] },
}

impl QRow<'_> {
    fn scales(&self) -> &[f32] {
        match self {
            QRow::Q8 { scales, .. } | QRow::Nf4 { scales, .. } => scales,
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

/// One token's activations rounded to int16: `q [n]`, `scale [n / 64]`.
#[derive(Debug, Clone, Copy)]
pub struct QTok<'a> {
    pub q: &'a [i16],
    pub scale: &'a [f32],
}

/// Activations `x [t, n]` rounded to int16 in blocks of 64, reused between calls.
#[derive(Debug, Default)]
pub struct QActs {
    n: usize,
    /// `[t, n]`: `round(x / (absmax / 32767))`.
    q: Vec<i16>,
    /// `[t, n / 64]`: the block scale `absmax / 32767`, times the weight format's unit.
    scale: Vec<f32>,
}

impl QActs {
    /// Round `x [t, n]` (`n` a multiple of 64); `unit` multiplies every scale (1 for int8
    /// weights, 1/127 for nf4 codes).
    pub fn quantize(&mut self, x: &[f32], n: usize, unit: f32) {
        debug_assert!(n.is_multiple_of(BLOCK) && x.len().is_multiple_of(n));
        self.n = n;
        self.q.resize(x.len(), 0);
        self.scale.resize(x.len() / BLOCK, 0.0);
        for ((xb, qb), s) in x
            .chunks_exact(BLOCK)
            .zip(self.q.chunks_exact_mut(BLOCK))
            .zip(self.scale.iter_mut())
        {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let inv = if amax > 0.0 { XMAX / amax } else { 0.0 };
            *s = amax / XMAX * unit;
            for (o, v) in qb.iter_mut().zip(xb) {
                *o = (v * inv).round().clamp(-XMAX, XMAX) as i16;
            }
        }
    }

    /// Token `ti`.
    pub fn token(&self, ti: usize) -> QTok<'_> {
        let nb = self.n / BLOCK;
        QTok {
            q: &self.q[ti * self.n..(ti + 1) * self.n],
            scale: &self.scale[ti * nb..(ti + 1) * nb],
        }
    }
}

/// Scalar twin of every kernel here: exact integer block sums, then f32.
pub fn dot_scalar(w: QRow, x: QTok) -> f32 {
    let mut acc = 0.0f32;
    for (b, (&ws, &xs)) in w.scales().iter().zip(x.scale).enumerate() {
        let s: i32 = (0..BLOCK)
            .map(|i| w.code(b, i) * x.q[b * BLOCK + i] as i32)
            .sum();
        acc += ws * xs * s as f32;
    }
    acc
}

/// Whether the AVX-512 kernels here can run (they need byte and word instructions).
fn avx512bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static BW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *BW.get_or_init(|| is_x86_feature_detected!("avx512bw"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `w . x` on `isa`.
#[inline]
pub fn dot(isa: Isa, w: QRow, x: QTok) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU (Isa::detect), AVX-512BW is checked, and
        // every AVX-512 CPU has AVX2 and FMA.
        match isa {
            Isa::Avx512 if avx512bw() => return unsafe { x86::dot_avx512(w, x) },
            Isa::Avx512 | Isa::Avx2 => return unsafe { x86::dot_avx2(w, x) },
            Isa::Portable => {}
        }
    }
    dot_scalar(w, x)
}

/// `out[r][t] = w[r] . x[t]` for four rows and four tokens on `isa`, each pair equal to
/// [`dot`].
#[inline]
pub fn tile4x4(isa: Isa, w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && avx512bw() {
        // SAFETY: AVX-512 was detected on this CPU (Isa::detect); AVX-512BW is checked.
        return unsafe { x86::tile_avx512(w, x, out) };
    }
    for (r, row) in out.iter_mut().enumerate() {
        for (t, o) in row.iter_mut().enumerate() {
            *o = dot(isa, w[r], x[t]);
        }
    }
}

/// The scales of blocks `b` and `b + 1` (0 past the end) of the pair `(w, x)`.
#[inline]
fn pair_scales(w: QRow, x: QTok, b: usize) -> [f32; 2] {
    let (ws, xs) = (w.scales(), x.scale);
    let two = b + 1 < ws.len();
    [ws[b] * xs[b], if two { ws[b + 1] * xs[b + 1] } else { 0.0 }]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::missing_safety_doc)]
    use super::{pair_scales, QRow, QTok, BLOCK, NF4_I8};
    use std::arch::x86_64::*;

    /// The nf4 code book in both 128-bit lanes, for `vpshufb`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nf4_table() -> __m256i {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_I8.as_ptr() as *const __m128i))
    }

    /// The 64 nf4 codes of the block at `p` (32 bytes) as bytes: weights 0..32, 32..64.
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

    /// Ask for the weights [`PREFETCH_AHEAD`](super::super::simd::PREFETCH_AHEAD) bytes
    /// past blocks `b` and `b + 1` (two cache lines of int8, one of nf4).
    #[inline(always)]
    fn prefetch_pair(w: QRow, b: usize) {
        use super::super::simd::prefetch_ahead;
        match w {
            QRow::Q8 { qs, .. } => {
                let p = qs.as_ptr().wrapping_add(b * BLOCK);
                prefetch_ahead(p);
                prefetch_ahead(p.wrapping_add(BLOCK));
            }
            QRow::Nf4 { packed, .. } => prefetch_ahead(packed.as_ptr().wrapping_add(b * BLOCK / 2)),
        }
    }

    // ---- AVX-512BW ----

    /// The nf4 code book as 32 words, twice over, for `vpermw`, which reads five bits of an
    /// index: the fifth, the next nibble's low bit, then picks the same code.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn nf4_words_table() -> __m512i {
        const WORDS: [i16; 32] = {
            let mut t = [0; 32];
            let mut i = 0;
            while i < 32 {
                t[i] = NF4_I8[i % 16] as i16;
                i += 1;
            }
            t
        };
        _mm512_loadu_si512(WORDS.as_ptr() as *const __m512i)
    }

    /// Block `b` of `w` as two vectors of 32 words, weights 0..32 and 32..64 (zeros past
    /// the end). An nf4 block's 32 bytes widen to words, whose low nibble (weight `j`) and,
    /// shifted, high nibble (weight `j + 32`) index the code book: four instructions.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn words512(w: QRow, b: usize, table: __m512i) -> [__m512i; 2] {
        match w {
            QRow::Q8 { qs, scales } if b < scales.len() => {
                let p = qs.as_ptr().add(b * BLOCK) as *const __m256i;
                [p, p.add(1)].map(|p| _mm512_cvtepi8_epi16(_mm256_loadu_si256(p)))
            }
            QRow::Nf4 { packed, scales } if b < scales.len() => {
                let p = packed.as_ptr().add(b * BLOCK / 2) as *const __m256i;
                let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(p));
                [
                    _mm512_permutexvar_epi16(v, table),
                    _mm512_permutexvar_epi16(_mm512_srli_epi16::<4>(v), table),
                ]
            }
            _ => [_mm512_setzero_si512(); 2],
        }
    }

    /// Block `b` of `x` against its weights `w`: the sixteen integer lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn block512(w: [__m512i; 2], x: QTok, b: usize) -> __m512 {
        let p = x.q.as_ptr().add(b * BLOCK) as *const __m512i;
        let s = _mm512_add_epi32(
            _mm512_madd_epi16(w[0], _mm512_loadu_si512(p)),
            _mm512_madd_epi16(w[1], _mm512_loadu_si512(p.add(1))),
        );
        _mm512_cvtepi32_ps(s)
    }

    /// Blocks `b` and `b + 1` (`w` their weights, `s` their scales) added into `acc`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pair512(
        w: &[[__m512i; 2]; 2],
        x: QTok,
        b: usize,
        s: [f32; 2],
        acc: __m512,
    ) -> __m512 {
        let p = _mm512_mul_ps(block512(w[0], x, b), _mm512_set1_ps(s[0]));
        let p = if b + 1 < x.scale.len() {
            _mm512_fmadd_ps(block512(w[1], x, b + 1), _mm512_set1_ps(s[1]), p)
        } else {
            p
        };
        _mm512_add_ps(acc, p)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub unsafe fn dot_avx512(w: QRow, x: QTok) -> f32 {
        let table = nf4_words_table();
        let mut acc = _mm512_setzero_ps();
        for b in (0..x.scale.len()).step_by(2) {
            prefetch_pair(w, b);
            let wv = [words512(w, b, table), words512(w, b + 1, table)];
            acc = pair512(&wv, x, b, pair_scales(w, x, b), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Four rows against four tokens, each pair summed exactly as [`dot_avx512`] sums it;
    /// each block of a row is widened once and used four times.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub unsafe fn tile_avx512(w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
        let table = nf4_words_table();
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        for b in (0..x[0].scale.len()).step_by(2) {
            let wv: [[[__m512i; 2]; 2]; 4] =
                std::array::from_fn(|r| [words512(w[r], b, table), words512(w[r], b + 1, table)]);
            for (t, xt) in x.iter().enumerate() {
                for r in 0..4 {
                    acc[r][t] = pair512(&wv[r], *xt, b, pair_scales(w[r], *xt, b), acc[r][t]);
                }
            }
        }
        for r in 0..4 {
            for t in 0..4 {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }

    // ---- AVX2 ----

    /// Block `b` of `w` as four vectors of 16 words.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn words256(w: QRow, b: usize, table: __m256i) -> [__m256i; 4] {
        let [a, c] = match w {
            QRow::Q8 { qs, .. } => {
                let p = qs.as_ptr().add(b * BLOCK) as *const __m256i;
                [_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))]
            }
            QRow::Nf4 { packed, .. } => nf4_codes(packed.as_ptr().add(b * BLOCK / 2), table),
        };
        let widen = |v: __m128i| _mm256_cvtepi8_epi16(v);
        [
            widen(_mm256_castsi256_si128(a)),
            widen(_mm256_extracti128_si256::<1>(a)),
            widen(_mm256_castsi256_si128(c)),
            widen(_mm256_extracti128_si256::<1>(c)),
        ]
    }

    /// Block `b` of `x` against its weights `w`: eight integer lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block256(w: [__m256i; 4], x: QTok, b: usize) -> __m256 {
        let p = x.q.as_ptr().add(b * BLOCK) as *const __m256i;
        let m = |k: usize| _mm256_madd_epi16(w[k], _mm256_loadu_si256(p.add(k)));
        let s = _mm256_add_epi32(_mm256_add_epi32(m(0), m(1)), _mm256_add_epi32(m(2), m(3)));
        _mm256_cvtepi32_ps(s)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(w: QRow, x: QTok) -> f32 {
        let table = nf4_table();
        let nb = x.scale.len();
        let mut acc = _mm256_setzero_ps();
        for b in (0..nb).step_by(2) {
            prefetch_pair(w, b);
            let s = pair_scales(w, x, b);
            let p = _mm256_mul_ps(block256(words256(w, b, table), x, b), _mm256_set1_ps(s[0]));
            let p = if b + 1 < nb {
                let l1 = block256(words256(w, b + 1, table), x, b + 1);
                _mm256_fmadd_ps(l1, _mm256_set1_ps(s[1]), p)
            } else {
                p
            };
            acc = _mm256_add_ps(acc, p);
        }
        hsum256(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::super::qrow as row;
    use super::super::tests::vals;
    use super::*;
    use crate::tensor::quant::{quantize, Quant};
    use crate::tensor::Matrix;

    #[test]
    fn activations_round_within_half_a_step() {
        let n = 192;
        let mut x = vals(2 * n, 1);
        x[70] = 9.0; // one block with an outlier
        x[128..192].iter_mut().for_each(|v| *v = 0.0); // and one of zeros
        let mut a = QActs::default();
        a.quantize(&x, n, 1.0);
        for ti in 0..2 {
            let tok = a.token(ti);
            for (i, &v) in x[ti * n..(ti + 1) * n].iter().enumerate() {
                let s = tok.scale[i / BLOCK];
                assert!(
                    (tok.q[i] as f32 * s - v).abs() <= s * 0.5 + 1e-9,
                    "{ti} {i}"
                );
            }
        }
        assert_eq!(a.token(0).q[70], i16::MAX);
        assert_eq!(a.token(0).scale[1], 9.0 / 32767.0);
        assert_eq!(a.token(0).scale[2], 0.0);
        assert!(a.token(0).q[128..192].iter().all(|&v| v == 0));
    }

    /// Every kernel against the scalar twin, including the extreme codes (-127 * -32767 in
    /// every product of a block), and the scalar twin against the product of the
    /// dequantized weights: apart from f32 rounding, it differs by the activations'
    /// rounding, at most half a step (`absmax / 32767`) times each `|w|`.
    #[test]
    fn kernels_match_the_scalar_twin() {
        for (rows, n) in [(4, 64), (5, 192), (8, 1024)] {
            let mut wv = vals(rows * n, 2);
            wv[..64].iter_mut().for_each(|v| *v = -1.0);
            let base = Matrix::from_f32(rows, n, wv);
            let mut xv = vals(4 * n, 3);
            xv[..64].iter_mut().for_each(|v| *v = -1.0);
            for q in [Quant::Int8, Quant::Nf4] {
                let m = quantize(&base, q);
                let unit = if q == Quant::Nf4 { 1.0 / 127.0 } else { 1.0 };
                let mut acts = QActs::default();
                acts.quantize(&xv, n, unit);
                let deq = m.to_f32();
                for isa in Isa::available() {
                    for r in 0..rows {
                        for ti in 0..4 {
                            let (got, want) = (
                                dot(isa, row(&m, r), acts.token(ti)),
                                dot_scalar(row(&m, r), acts.token(ti)),
                            );
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{q:?} {isa:?} {r} {ti}: {got} vs {want}"
                            );
                            let (wr, xr) = (&deq[r * n..(r + 1) * n], &xv[ti * n..(ti + 1) * n]);
                            let exact: f64 =
                                wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let mut bound = 0.0;
                            for (wb, xb) in wr.chunks(BLOCK).zip(xr.chunks(BLOCK)) {
                                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                                let step = amax as f64 / 32767.0;
                                bound +=
                                    wb.iter().map(|w| w.abs() as f64 * step / 2.0).sum::<f64>();
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
                    let mut out = [[0.0; 4]; 4];
                    let w = std::array::from_fn(|r| row(&m, r));
                    tile4x4(isa, w, std::array::from_fn(|t| acts.token(t)), &mut out);
                    for (r, got) in out.iter().enumerate() {
                        for (t, &v) in got.iter().enumerate() {
                            let want = dot(isa, w[r], acts.token(t));
                            assert_eq!(v, want, "{q:?} {isa:?} tile");
                        }
                    }
                }
            }
        }
    }
}
