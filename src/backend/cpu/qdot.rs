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
//!   1.8088 against 1.8086 with int16, logit errors within 3 points either way.
//!
//! A block's integer sum lives in vector lanes (at most four products a lane,
//! `4 * 127 * 32767 < 2^24`, so converting a lane to f32 is exact). Blocks are scaled and
//! added in pairs (`acc + (l0 * s0 + l1 * s1)`, which keeps the chain through the
//! accumulator short) and the lanes reduced at the end. The 4x4 tiles do exactly the same
//! for each of their sixteen pairs, so a token's result does not depend on how many tokens
//! share the call. Kernels: AVX-512BW (with VNNI and VBMI for nf4), AVX2, and the scalar twin
//! [`dot_scalar`] everywhere else.

use super::Isa;
use crate::tensor::quant::{BLOCK, NF4_I8};

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

/// One token's activations rounded to integers: `scale [n / 64]`, and `q16 [n]` or `q8 [n]`
/// with `corr [n / 64, 16]` (the other empty).
#[derive(Debug, Clone, Copy)]
pub struct QTok<'a> {
    pub q16: &'a [i16],
    pub q8: &'a [i8],
    pub corr: &'a [i32],
    pub scale: &'a [f32],
}

/// Lanes of a block's sum in the AVX-512 int8 kernel: lane `l` sums bytes `4l..4l+4`.
const LANES: usize = 16;

/// Activations `x [t, n]` rounded to integers in blocks of 64, reused between calls.
#[derive(Debug, Default)]
pub struct QActs {
    n: usize,
    act: Act,
    /// [`Act::I16`]: `[t, n]`, `round(x / (absmax / 32767))`.
    q16: Vec<i16>,
    /// [`Act::I8`]: `[t, n]`, `round(x / (absmax / 127))`.
    q8: Vec<i8>,
    /// [`Act::I8`]: `[t, n / 64, 16]`, `-128 *` the sum of lane `l`'s four codes. `vpdpbusd`
    /// multiplies unsigned bytes by signed ones, so the kernel reads an nf4 code as
    /// `code + 128`; starting each block's sum here cancels the extra `128 * sum(xq)`.
    corr: Vec<i32>,
    /// `[t, n / 64]`: the block scale `absmax / max code`, times the weight format's unit.
    scale: Vec<f32>,
}

impl QActs {
    /// Round `x [t, n]` (`n` a multiple of 64) as `act`; `unit` multiplies every scale (1
    /// for int8 weights, 1/127 for nf4 codes).
    pub fn quantize(&mut self, x: &[f32], n: usize, unit: f32, act: Act) {
        debug_assert!(n.is_multiple_of(BLOCK) && x.len().is_multiple_of(n));
        let blocks = x.len() / BLOCK;
        (self.n, self.act) = (n, act);
        self.scale.resize(blocks, 0.0);
        let (q16, q8) = match act {
            Act::I16 => (x.len(), 0),
            Act::I8 => (0, x.len()),
        };
        self.q16.resize(q16, 0);
        self.q8.resize(q8, 0);
        self.corr.resize(q8 / BLOCK * LANES, 0);
        let max = act.max();
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let inv = if amax > 0.0 { max / amax } else { 0.0 };
            self.scale[b] = amax / max * unit;
            let code = |v: &f32| (v * inv).round().clamp(-max, max);
            let range = b * BLOCK..(b + 1) * BLOCK;
            match act {
                Act::I16 => {
                    for (o, v) in self.q16[range].iter_mut().zip(xb) {
                        *o = code(v) as i16;
                    }
                }
                Act::I8 => {
                    for (o, v) in self.q8[range.clone()].iter_mut().zip(xb) {
                        *o = code(v) as i8;
                    }
                    let lanes = self.q8[range].chunks_exact(4);
                    for (c, lane) in self.corr[b * LANES..(b + 1) * LANES].iter_mut().zip(lanes) {
                        *c = -128 * lane.iter().map(|&v| v as i32).sum::<i32>();
                    }
                }
            }
        }
    }

    /// Token `ti`.
    pub fn token(&self, ti: usize) -> QTok<'_> {
        let (n, nb) = (self.n, self.n / BLOCK);
        let span = |len: usize, per: usize| {
            if len == 0 {
                0..0
            } else {
                ti * per..(ti + 1) * per
            }
        };
        QTok {
            q16: &self.q16[span(self.q16.len(), n)],
            q8: &self.q8[span(self.q8.len(), n)],
            corr: &self.corr[span(self.corr.len(), nb * LANES)],
            scale: &self.scale[ti * nb..(ti + 1) * nb],
        }
    }
}

/// Scalar twin of every kernel here: exact integer block sums, then f32.
pub fn dot_scalar(w: QRow, x: QTok) -> f32 {
    let mut acc = 0.0f32;
    for (b, (&ws, &xs)) in w.scales().iter().zip(x.scale).enumerate() {
        let xq = |i: usize| match w {
            QRow::Q8 { .. } => x.q16[b * BLOCK + i] as i32,
            QRow::Nf4 { .. } => x.q8[b * BLOCK + i] as i32,
        };
        let s: i32 = (0..BLOCK).map(|i| w.code(b, i) * xq(i)).sum();
        acc += ws * xs * s as f32;
    }
    acc
}

/// Whether the AVX-512 kernels here can run: byte and word instructions, and for nf4 VNNI
/// and byte permutes.
fn avx512(w: &QRow) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static BW: OnceLock<bool> = OnceLock::new();
        static VNNI: OnceLock<bool> = OnceLock::new();
        let bw = *BW.get_or_init(|| is_x86_feature_detected!("avx512bw"));
        let vnni = *VNNI.get_or_init(|| {
            is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vbmi")
        });
        bw && (vnni || matches!(w, QRow::Q8 { .. }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = w;
        false
    }
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

/// `out[r][t] = w[r] . x[t]` for four rows (all of one format) and four tokens on `isa`,
/// each pair equal to [`dot`].
#[inline]
pub fn tile4x4(isa: Isa, w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && avx512(&w[0]) {
        // SAFETY: AVX-512 was detected on this CPU (Isa::detect); its extensions are checked.
        return unsafe {
            match w[0] {
                QRow::Q8 { .. } => x86::tile_q8_avx512(w, x, out),
                QRow::Nf4 { .. } => x86::tile_nf4_vnni(w, x, out),
            }
        };
    }
    for (r, row) in out.iter_mut().enumerate() {
        for (t, o) in row.iter_mut().enumerate() {
            *o = dot(isa, w[r], x[t]);
        }
    }
}

/// The products of the scales of blocks `b` and `b + 1` (0 past the end).
#[inline]
fn pair_scales(ws: &[f32], xs: &[f32], b: usize) -> [f32; 2] {
    let two = b + 1 < ws.len();
    [ws[b] * xs[b], if two { ws[b + 1] * xs[b + 1] } else { 0.0 }]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::missing_safety_doc)]
    use super::super::simd::{prefetch_ahead, PREFETCH_AHEAD, PREFETCH_AHEAD_NF4};
    use super::{pair_scales, QRow, QTok, BLOCK, LANES, NF4_I8};
    use std::arch::x86_64::*;

    /// Rows must be all int8 or all nf4.
    const MIXED: &str = "a tile of rows in two formats";

    /// `acc + (l0 * s0 + l1 * s1)`, or `acc + l0 * s0` without a second block.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_pair512(l0: __m512, l1: Option<__m512>, s: [f32; 2], acc: __m512) -> __m512 {
        let p = _mm512_mul_ps(l0, _mm512_set1_ps(s[0]));
        let p = match l1 {
            Some(l1) => _mm512_fmadd_ps(l1, _mm512_set1_ps(s[1]), p),
            None => p,
        };
        _mm512_add_ps(acc, p)
    }

    /// As [`add_pair512`], eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add_pair256(l0: __m256, l1: Option<__m256>, s: [f32; 2], acc: __m256) -> __m256 {
        let p = _mm256_mul_ps(l0, _mm256_set1_ps(s[0]));
        let p = match l1 {
            Some(l1) => _mm256_fmadd_ps(l1, _mm256_set1_ps(s[1]), p),
            None => p,
        };
        _mm256_add_ps(acc, p)
    }

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

    // ---- AVX-512: one pair loop, a block kernel per format ----

    /// A row's AVX-512 block kernel: a block is unpacked once ([`Rows512::unpack`]), then
    /// its integer lanes computed against any token ([`Rows512::lanes`]). The functions
    /// here are inlined into `#[target_feature]` entry points, which supply the features.
    trait Rows512: Copy {
        type W: Copy;
        /// Ask for the weights ahead of blocks `b` and `b + 1`.
        fn prefetch(self, b: usize);
        unsafe fn unpack(self, b: usize) -> Self::W;
        unsafe fn lanes(w: Self::W, x: QTok, b: usize) -> __m512;
    }

    /// An int8 row: blocks widen to 2 x 32 words against int16 activations.
    #[derive(Clone, Copy)]
    struct Q8Row<'a>(&'a [i8]);

    impl Rows512 for Q8Row<'_> {
        type W = [__m512i; 2];

        #[inline(always)]
        fn prefetch(self, b: usize) {
            prefetch_ahead(self.0.as_ptr().wrapping_add(b * BLOCK), PREFETCH_AHEAD);
            prefetch_ahead(
                self.0.as_ptr().wrapping_add(b * BLOCK + BLOCK),
                PREFETCH_AHEAD,
            );
        }

        #[inline(always)]
        unsafe fn unpack(self, b: usize) -> Self::W {
            q8_words512(self.0, b)
        }

        #[inline(always)]
        unsafe fn lanes(w: Self::W, x: QTok, b: usize) -> __m512 {
            q8_block512(w, x, b)
        }
    }

    /// An nf4 row: blocks unpack to 64 codes plus 128 against int8 activations.
    #[derive(Clone, Copy)]
    struct Nf4Row<'a> {
        packed: &'a [u8],
        table: __m512i,
    }

    impl Rows512 for Nf4Row<'_> {
        type W = __m512i;

        #[inline(always)]
        fn prefetch(self, b: usize) {
            prefetch_ahead(
                self.packed.as_ptr().wrapping_add(b * BLOCK / 2),
                PREFETCH_AHEAD_NF4,
            );
        }

        #[inline(always)]
        unsafe fn unpack(self, b: usize) -> Self::W {
            nf4_u8(self.packed, b, self.table)
        }

        #[inline(always)]
        unsafe fn lanes(w: Self::W, x: QTok, b: usize) -> __m512 {
            nf4_block_vnni(w, x, b)
        }
    }

    /// `row . x`, blocks scaled and added in pairs.
    #[inline(always)]
    unsafe fn dot512<R: Rows512>(row: R, scales: &[f32], x: QTok) -> f32 {
        let nb = scales.len();
        let mut acc = _mm512_setzero_ps();
        // Whole pairs as arrays: no bounds checks in the loop (the same sums as
        // `pair_scales` gives the tile).
        let (ws, _) = scales.as_chunks::<2>();
        let (xs, _) = x.scale[..nb].as_chunks::<2>();
        for (p, (w2, x2)) in ws.iter().zip(xs).enumerate() {
            let b = 2 * p;
            row.prefetch(b);
            let l0 = R::lanes(row.unpack(b), x, b);
            let l1 = R::lanes(row.unpack(b + 1), x, b + 1);
            acc = add_pair512(l0, Some(l1), [w2[0] * x2[0], w2[1] * x2[1]], acc);
        }
        if nb % 2 == 1 {
            let b = nb - 1;
            row.prefetch(b);
            let l0 = R::lanes(row.unpack(b), x, b);
            acc = add_pair512(l0, None, pair_scales(scales, x.scale, b), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Four rows against four tokens, each pair summed exactly as [`dot512`] sums it; each
    /// block of a row is unpacked once and used four times.
    #[inline(always)]
    #[allow(clippy::manual_map)] // `Option::map` takes a closure: see below
    unsafe fn tile512<R: Rows512>(rows: [(R, &[f32]); 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
        // No closures here: they would not inherit the entry point's target features.
        let nb = rows[0].1.len();
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        for b in (0..nb).step_by(2) {
            let two = b + 1 < nb;
            let [r0, r1, r2, r3] = rows.map(|(row, _)| row);
            let w0 = [r0.unpack(b), r1.unpack(b), r2.unpack(b), r3.unpack(b)];
            let w1 = if two {
                let next = b + 1;
                Some([
                    r0.unpack(next),
                    r1.unpack(next),
                    r2.unpack(next),
                    r3.unpack(next),
                ])
            } else {
                None
            };
            for (t, xt) in x.iter().enumerate() {
                for r in 0..4 {
                    let l0 = R::lanes(w0[r], *xt, b);
                    let l1 = match w1 {
                        Some(w1) => Some(R::lanes(w1[r], *xt, b + 1)),
                        None => None,
                    };
                    let s = pair_scales(rows[r].1, xt.scale, b);
                    acc[r][t] = add_pair512(l0, l1, s, acc[r][t]);
                }
            }
        }
        for r in 0..4 {
            for t in 0..4 {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn dot_q8_avx512(qs: &[i8], scales: &[f32], x: QTok) -> f32 {
        dot512(Q8Row(qs), scales, x)
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn tile_q8_avx512(w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
        let rows = w.map(|r| match r {
            QRow::Q8 { qs, scales } => (Q8Row(qs), scales),
            QRow::Nf4 { .. } => unreachable!("{MIXED}"),
        });
        tile512(rows, x, out)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    pub unsafe fn dot_nf4_vnni(packed: &[u8], scales: &[f32], x: QTok) -> f32 {
        let table = nf4_table_u8x4();
        dot512(Nf4Row { packed, table }, scales, x)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    pub unsafe fn tile_nf4_vnni(w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
        let table = nf4_table_u8x4();
        let rows = w.map(|r| match r {
            QRow::Nf4 { packed, scales } => (Nf4Row { packed, table }, scales),
            QRow::Q8 { .. } => unreachable!("{MIXED}"),
        });
        tile512(rows, x, out)
    }

    // ---- int8 weights, int16 activations ----

    /// Int8 block `b` of `qs` as two vectors of 32 words.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q8_words512(qs: &[i8], b: usize) -> [__m512i; 2] {
        let p = qs.as_ptr().add(b * BLOCK) as *const __m256i;
        [p, p.add(1)].map(|p| _mm512_cvtepi8_epi16(_mm256_loadu_si256(p)))
    }

    /// Block `b` of `x` against its weights `w`: the sixteen integer lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q8_block512(w: [__m512i; 2], x: QTok, b: usize) -> __m512 {
        let p = x.q16.as_ptr().add(b * BLOCK) as *const __m512i;
        let s = _mm512_add_epi32(
            _mm512_madd_epi16(w[0], _mm512_loadu_si512(p)),
            _mm512_madd_epi16(w[1], _mm512_loadu_si512(p.add(1))),
        );
        _mm512_cvtepi32_ps(s)
    }

    /// Int8 block `b` of `qs` against `x`: eight integer lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q8_block256(qs: &[i8], x: QTok, b: usize) -> __m256 {
        let wp = qs.as_ptr().add(b * BLOCK) as *const __m128i;
        let xp = x.q16.as_ptr().add(b * BLOCK) as *const __m256i;
        let m = |k: usize| {
            let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(k)));
            _mm256_madd_epi16(w, _mm256_loadu_si256(xp.add(k)))
        };
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
    pub unsafe fn dot_q8_avx2(qs: &[i8], scales: &[f32], x: QTok) -> f32 {
        let nb = scales.len();
        let mut acc = _mm256_setzero_ps();
        for b in (0..nb).step_by(2) {
            prefetch_ahead(qs.as_ptr().add(b * BLOCK), PREFETCH_AHEAD);
            prefetch_ahead(qs.as_ptr().add(b * BLOCK + BLOCK), PREFETCH_AHEAD);
            let l0 = q8_block256(qs, x, b);
            let l1 = if b + 1 < nb {
                Some(q8_block256(qs, x, b + 1))
            } else {
                None
            };
            acc = add_pair256(l0, l1, pair_scales(scales, x.scale, b), acc);
        }
        hsum256(acc)
    }

    // ---- nf4 weights, int8 activations ----

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

    /// The 64 codes of nf4 block `b` of `packed`, each plus 128, in order: the block's 32
    /// bytes in both halves, the upper half shifted down a nibble, then one lookup.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn nf4_u8(packed: &[u8], b: usize, table: __m512i) -> __m512i {
        let p = packed.as_ptr().add(b * BLOCK / 2) as *const __m256i;
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(p));
        let v = _mm512_mask_srli_epi16::<4>(v, 0xFFFF_0000, v);
        _mm512_permutexvar_epi8(v, table)
    }

    /// Block `b` of `x` against its weights `wu` (codes plus 128): the sixteen integer
    /// lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    unsafe fn nf4_block_vnni(wu: __m512i, x: QTok, b: usize) -> __m512 {
        let xq = _mm512_loadu_si512(x.q8.as_ptr().add(b * BLOCK) as *const __m512i);
        let corr = _mm512_loadu_si512(x.corr.as_ptr().add(b * LANES) as *const __m512i);
        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, wu, xq))
    }

    /// `sum(|w| * (x with the sign of w))` over 32 bytes, as eight i32 lanes: pairs of
    /// products in 16 bits, which cannot overflow since `|w|, |x| <= 127`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn madd_i8(w: __m256i, x: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    /// nf4 block `b` of `packed` against `x`: eight integer lanes, as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nf4_block256(packed: &[u8], x: QTok, b: usize, table: __m256i) -> __m256 {
        let [w0, w1] = nf4_codes(packed.as_ptr().add(b * BLOCK / 2), table);
        let xp = x.q8.as_ptr().add(b * BLOCK) as *const __m256i;
        let s = _mm256_add_epi32(
            madd_i8(w0, _mm256_loadu_si256(xp)),
            madd_i8(w1, _mm256_loadu_si256(xp.add(1))),
        );
        _mm256_cvtepi32_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_nf4_avx2(packed: &[u8], scales: &[f32], x: QTok) -> f32 {
        let table = nf4_table();
        let nb = scales.len();
        let mut acc = _mm256_setzero_ps();
        for b in (0..nb).step_by(2) {
            prefetch_ahead(packed.as_ptr().add(b * BLOCK / 2), PREFETCH_AHEAD_NF4);
            let l0 = nf4_block256(packed, x, b, table);
            let l1 = if b + 1 < nb {
                Some(nf4_block256(packed, x, b + 1, table))
            } else {
                None
            };
            acc = add_pair256(l0, l1, pair_scales(scales, x.scale, b), acc);
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
        for act in [Act::I16, Act::I8] {
            let mut a = QActs::default();
            a.quantize(&x, n, 1.0, act);
            for ti in 0..2 {
                let tok = a.token(ti);
                let q = |i: usize| match act {
                    Act::I16 => tok.q16[i] as i32,
                    Act::I8 => tok.q8[i] as i32,
                };
                for (i, &v) in x[ti * n..(ti + 1) * n].iter().enumerate() {
                    let s = tok.scale[i / BLOCK];
                    let err = (q(i) as f32 * s - v).abs();
                    assert!(err <= s * 0.5 + 1e-9, "{act:?} {ti} {i}");
                }
                if act == Act::I8 {
                    for (l, &c) in tok.corr.iter().enumerate() {
                        let lane: i32 = (4 * l..4 * l + 4).map(q).sum();
                        assert_eq!(c, -128 * lane, "lane {l}");
                    }
                }
                assert!((128..192).all(|i| ti == 1 || q(i) == 0));
            }
            let tok = a.token(0);
            assert_eq!(tok.scale[1], 9.0 / act.max());
            assert_eq!(tok.scale[2], 0.0);
        }
        let mut a = QActs::default();
        a.quantize(&x, n, 1.0, Act::I8);
        assert_eq!(a.token(0).q8[70], 127);
        a.quantize(&x, n, 1.0, Act::I16);
        assert_eq!(a.token(0).q16[70], i16::MAX);
        assert!(a.token(1).q8.is_empty() && a.token(1).corr.is_empty());
    }

    /// Every kernel against the scalar twin, including the extreme codes (-127 times the
    /// largest activation code in every product of a block), and the scalar twin against
    /// the product of the dequantized weights: apart from f32 rounding, it differs by the
    /// activations' rounding, at most half a step (`absmax / max code`) times each `|w|`.
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
                let (unit, act) = match q {
                    Quant::Int8 => (1.0, Act::I16),
                    Quant::Nf4 => (1.0 / 127.0, Act::I8),
                };
                let mut acts = QActs::default();
                acts.quantize(&xv, n, unit, act);
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
                                let step = (amax / act.max()) as f64;
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
