//! Quantized weights times activations rounded to int8: the integer dot products behind
//! int8 and nf4 matrices on the CPU.
//!
//! Before an int8 or nf4 matrix multiplies `x [t, in]`, every token's row is rounded to
//! int8 in blocks of 64 with one f32 scale, as the weights are ([`QActs`]). The products of
//! a block are then an exact integer sum, and a (row, token) pair is
//!
//! ```text
//! y = sum_b (ws[b] * xs[b]) * sum_{i in block b} wq[i] * xq[i]
//! ```
//!
//! with `wq` the int8 weight (nf4: its code in [`NF4_I8`]), `ws` the weight block scale and
//! `xs` the activation block scale (for nf4 divided by 127, the code book's unit). Rounding
//! the activations costs about as much precision as rounding the weights to int8 did (the
//! README's table); what it buys is four times the multiplies per instruction, so that a
//! quantized row is read at memory speed instead of being converted to f32 in registers.
//!
//! Kernels, each with the scalar twin [`dot_scalar`]:
//! - AVX-512 VNNI (`vpdpbusd`: 64 byte products a block in one instruction). It multiplies
//!   unsigned by signed bytes, so the weights are read with their sign bit flipped
//!   (`w + 128`) and the extra `128 * sum(xq)` is cancelled exactly by starting each block's
//!   integer sum at [`QActs::corr`];
//! - AVX2 (`vpmaddubsw`): `|w|` times `xq` carrying the sign of `w`, pairs of products in
//!   16 bits, which cannot overflow since `|wq|, |xq| <= 127`;
//! - everything else: [`dot_scalar`].
//!
//! Each kernel adds a block's integer lanes into f32 lanes with one FMA and reduces the lanes
//! at the end; the 4x4 tile does exactly the same for each of its sixteen pairs, so a token's
//! result does not depend on how many tokens share the call.

use super::Isa;
use crate::tensor::quant::{BLOCK, NF4_I8};

/// Lanes of a block's integer sum in the AVX-512 kernels: lane `l` sums bytes `4l..4l+4`.
pub const LANES: usize = 16;

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

/// One token's activations rounded to int8: `q [n]`, `scale [n / 64]`, `corr [n / 64, 16]`.
#[derive(Debug, Clone, Copy)]
pub struct QTok<'a> {
    pub q: &'a [i8],
    pub scale: &'a [f32],
    pub corr: &'a [i32],
}

/// Activations `x [t, n]` rounded to int8 in blocks of 64, reused between calls.
#[derive(Debug, Default)]
pub struct QActs {
    n: usize,
    /// `[t, n]`: `round(x / xs)`, in -127..=127.
    q: Vec<i8>,
    /// `[t, n / 64]`: the block scale `absmax / 127`, times the weight format's unit.
    scale: Vec<f32>,
    /// `[t, n / 64, 16]`: `-128 *` the sum of lane `l`'s four `q` (see the module doc).
    corr: Vec<i32>,
}

impl QActs {
    /// Round `x [t, n]` (`n` a multiple of 64); `unit` multiplies every scale (1 for int8
    /// weights, 1/127 for nf4 codes).
    pub fn quantize(&mut self, x: &[f32], n: usize, unit: f32) {
        debug_assert!(n.is_multiple_of(BLOCK) && x.len().is_multiple_of(n));
        let blocks = x.len() / BLOCK;
        self.n = n;
        self.q.resize(x.len(), 0);
        self.scale.resize(blocks, 0.0);
        self.corr.resize(blocks * LANES, 0);
        for (((xb, qb), s), cb) in x
            .chunks_exact(BLOCK)
            .zip(self.q.chunks_exact_mut(BLOCK))
            .zip(self.scale.iter_mut())
            .zip(self.corr.chunks_exact_mut(LANES))
        {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            *s = amax / 127.0 * unit;
            for (o, v) in qb.iter_mut().zip(xb) {
                *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            for (c, lane) in cb.iter_mut().zip(qb.chunks_exact(4)) {
                *c = -128 * lane.iter().map(|&v| v as i32).sum::<i32>();
            }
        }
    }

    /// Token `ti`.
    pub fn token(&self, ti: usize) -> QTok<'_> {
        let nb = self.n / BLOCK;
        QTok {
            q: &self.q[ti * self.n..(ti + 1) * self.n],
            scale: &self.scale[ti * nb..(ti + 1) * nb],
            corr: &self.corr[ti * nb * LANES..(ti + 1) * nb * LANES],
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

/// Whether the AVX-512 kernels here can run (they need VNNI and byte shuffles as well).
fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `w . x` on `isa`.
#[inline]
pub fn dot(isa: Isa, w: QRow, x: QTok) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::*;
        // SAFETY: `isa` was detected on this CPU (Isa::detect); VNNI is checked.
        unsafe {
            match (isa, w) {
                (Isa::Avx512, _) if vnni() => return dot_vnni(w, x),
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

/// `out[r][t] = w[r] . x[t]` for four rows and four tokens on `isa`, each pair equal to
/// [`dot`].
#[inline]
pub fn tile4x4(isa: Isa, w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && vnni() {
        // SAFETY: AVX-512 was detected on this CPU (Isa::detect); VNNI is checked.
        return unsafe { x86::tile_vnni(w, x, out) };
    }
    for (r, row) in out.iter_mut().enumerate() {
        for (t, o) in row.iter_mut().enumerate() {
            *o = dot(isa, w[r], x[t]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::missing_safety_doc)]
    use super::{QRow, QTok, BLOCK, LANES, NF4_I8};
    use std::arch::x86_64::*;

    // ---- AVX-512 VNNI ----

    /// The nf4 code book as bytes with the sign bit flipped (`code + 128`), in all four
    /// 128-bit lanes, for `vpshufb`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn nf4_table_u8() -> __m512i {
        let t = _mm_xor_si128(
            _mm_loadu_si128(NF4_I8.as_ptr() as *const __m128i),
            _mm_set1_epi8(-128),
        );
        _mm512_broadcast_i32x4(t)
    }

    /// 64 int8 weights at `p` as `w + 128`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q8_u8(p: *const i8) -> __m512i {
        _mm512_xor_si512(
            _mm512_loadu_si512(p as *const __m512i),
            _mm512_set1_epi8(-128),
        )
    }

    /// The 64 nf4 weights of the block at `p` (32 bytes) as `code + 128`, in order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn nf4_u8(p: *const u8, table: __m512i) -> __m512i {
        let bytes = _mm256_loadu_si256(p as *const __m256i);
        let low = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(bytes, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
        let idx = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        _mm512_shuffle_epi8(table, idx)
    }

    /// The integer lanes of block `b` of `x` against weights `wu` (`w + 128`), as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block_vnni(wu: __m512i, x: QTok, b: usize) -> __m512 {
        let xq = _mm512_loadu_si512(x.q.as_ptr().add(b * BLOCK) as *const __m512i);
        let corr = _mm512_loadu_si512(x.corr.as_ptr().add(b * LANES) as *const __m512i);
        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, wu, xq))
    }

    /// Blocks `b` and `b + 1` (`wu` their weights, `s` their scales) added into `acc`:
    /// `acc + (l0 * s0 + l1 * s1)`, so that the chain through `acc` is one add per two
    /// blocks. Without a block `b + 1` (an odd count), `acc + l0 * s0`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pair_vnni(
        wu: [__m512i; 2],
        x: QTok,
        b: usize,
        s: [f32; 2],
        two: bool,
        acc: __m512,
    ) -> __m512 {
        let p = _mm512_mul_ps(block_vnni(wu[0], x, b), _mm512_set1_ps(s[0]));
        let p = if two {
            _mm512_fmadd_ps(block_vnni(wu[1], x, b + 1), _mm512_set1_ps(s[1]), p)
        } else {
            p
        };
        _mm512_add_ps(acc, p)
    }

    /// The weights of block `b` of `w` as `w + 128` (a zero block past the end).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unpack(w: QRow, b: usize, table: __m512i) -> __m512i {
        match w {
            QRow::Q8 { qs, scales } if b < scales.len() => q8_u8(qs.as_ptr().add(b * BLOCK)),
            QRow::Nf4 { packed, scales } if b < scales.len() => {
                nf4_u8(packed.as_ptr().add(b * BLOCK / 2), table)
            }
            _ => _mm512_setzero_si512(),
        }
    }

    /// The scales of blocks `b` and `b + 1` of the pair `(w, x)`.
    #[inline]
    fn pair_scales(w: QRow, x: QTok, b: usize, two: bool) -> [f32; 2] {
        let (ws, xs) = (w.scales(), x.scale);
        [ws[b] * xs[b], if two { ws[b + 1] * xs[b + 1] } else { 0.0 }]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_vnni(w: QRow, x: QTok) -> f32 {
        let table = nf4_table_u8();
        let nb = w.scales().len();
        let mut acc = _mm512_setzero_ps();
        for b in (0..nb).step_by(2) {
            let two = b + 1 < nb;
            let wu = [unpack(w, b, table), unpack(w, b + 1, table)];
            acc = pair_vnni(wu, x, b, pair_scales(w, x, b, two), two, acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Four rows against four tokens, each pair summed exactly as [`dot_vnni`] sums it;
    /// each block of a row is unpacked once and used four times.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_vnni(w: [QRow; 4], x: [QTok; 4], out: &mut [[f32; 4]; 4]) {
        let table = nf4_table_u8();
        let nb = w[0].scales().len();
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        for b in (0..nb).step_by(2) {
            let two = b + 1 < nb;
            let wu: [[__m512i; 2]; 4] =
                std::array::from_fn(|r| [unpack(w[r], b, table), unpack(w[r], b + 1, table)]);
            for (t, xt) in x.iter().enumerate() {
                for r in 0..4 {
                    let s = pair_scales(w[r], *xt, b, two);
                    acc[r][t] = pair_vnni(wu[r], *xt, b, s, two, acc[r][t]);
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

    /// `sum(|w| * (x with the sign of w))` over 32 bytes, as eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn madd_i8(w: __m256i, x: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    /// Block `b` of `x` against weights `w0` (0..32) and `w1` (32..64), added into `acc`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(
        w0: __m256i,
        w1: __m256i,
        x: QTok,
        b: usize,
        scale: f32,
        acc: __m256,
    ) -> __m256 {
        let xp = x.q.as_ptr().add(b * BLOCK);
        let x0 = _mm256_loadu_si256(xp as *const __m256i);
        let x1 = _mm256_loadu_si256(xp.add(32) as *const __m256i);
        let s = _mm256_add_epi32(madd_i8(w0, x0), madd_i8(w1, x1));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale), acc)
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
        let mut acc = _mm256_setzero_ps();
        for (b, (&ws, &xs)) in scales.iter().zip(x.scale).enumerate() {
            let p = qs.as_ptr().add(b * BLOCK);
            let w0 = _mm256_loadu_si256(p as *const __m256i);
            let w1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
            acc = block_avx2(w0, w1, x, b, ws * xs, acc);
        }
        hsum256(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_nf4_avx2(packed: &[u8], scales: &[f32], x: QTok) -> f32 {
        let t = _mm_loadu_si128(NF4_I8.as_ptr() as *const __m128i);
        let table = _mm256_broadcastsi128_si256(t);
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        for (b, (&ws, &xs)) in scales.iter().zip(x.scale).enumerate() {
            let bytes = _mm256_loadu_si256(packed.as_ptr().add(b * BLOCK / 2) as *const __m256i);
            let w0 = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, low));
            let w1 =
                _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low));
            acc = block_avx2(w0, w1, x, b, ws * xs, acc);
        }
        hsum256(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quant::{quantize, Quant};
    use crate::tensor::{Data, Matrix};

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn row(m: &Matrix, r: usize) -> QRow<'_> {
        let nb = m.cols / BLOCK;
        match &m.data {
            Data::Q8(q) => QRow::Q8 {
                qs: &q.qs[r * m.cols..(r + 1) * m.cols],
                scales: &q.scales[r * nb..(r + 1) * nb],
            },
            Data::Nf4(q) => QRow::Nf4 {
                packed: &q.packed[r * m.cols / 2..(r + 1) * m.cols / 2],
                scales: &q.scales[r * nb..(r + 1) * nb],
            },
            _ => unreachable!(),
        }
    }

    #[test]
    fn activations_round_to_int8_within_half_a_step() {
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
                    (tok.q[i] as f32 * s - v).abs() <= s * 0.5 + 1e-7,
                    "{ti} {i}"
                );
            }
            for (b, c) in tok.corr.chunks(LANES).enumerate() {
                for (l, &c) in c.iter().enumerate() {
                    let lane = &tok.q[b * BLOCK + 4 * l..b * BLOCK + 4 * l + 4];
                    assert_eq!(c, -128 * lane.iter().map(|&v| v as i32).sum::<i32>());
                }
            }
        }
        assert_eq!(a.token(0).q[70], 127);
        assert_eq!(a.token(0).scale[2], 0.0);
        assert!(a.token(0).q[128..192].iter().all(|&v| v == 0));
    }

    /// Every kernel against the scalar twin, including the extreme codes (-127 * -127 in
    /// every product), and the scalar twin against the f32 product it approximates.
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
                            let exact: f32 = deq[r * n..(r + 1) * n]
                                .iter()
                                .zip(&xv[ti * n..(ti + 1) * n])
                                .map(|(a, b)| a * b)
                                .sum();
                            assert!(
                                (want - exact).abs() <= 0.02 * (n as f32).sqrt(),
                                "{q:?} {r} {ti}: {want} vs {exact}"
                            );
                        }
                    }
                    let mut out = [[0.0; 4]; 4];
                    let w = std::array::from_fn(|r| row(&m, r));
                    tile4x4(isa, w, std::array::from_fn(|t| acts.token(t)), &mut out);
                    for r in 0..4 {
                        for t in 0..4 {
                            assert_eq!(
                                out[r][t],
                                dot(isa, w[r], acts.token(t)),
                                "{q:?} {isa:?} tile"
                            );
                        }
                    }
                }
            }
        }
    }
}
