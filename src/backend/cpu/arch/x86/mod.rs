//! x86-64 kernels in `std::arch`: AVX-512 (F, and BW, VNNI, VBMI, BF16 where named) and
//! AVX2 + FMA + F16C. This file holds what they share: the horizontal reductions, which fix
//! the order every AVX-512 kernel sums in, and the 16 x 16 transpose the panels pack with.

#![allow(clippy::missing_safety_doc)]

pub mod bf16;
pub mod dense;
pub mod quant;
pub mod wkv7;

use std::arch::x86_64::*;

/// `v`'s lanes summed as a tree, by halves: lane `i` plus lane `i + 8`, then `i + 4`,
/// `i + 2` and `i + 1`. Every AVX-512 f32 product reduces its sums so, and
/// [`hsum512x16`] reduces sixteen at once in the same order.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn hsum512(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let a = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps::<1>(c, c)))
}

/// How the levels of a sixteen-vector reduction ([`sum_halves`], [`sum_chunk_pairs`],
/// [`sum_chunks`]) add lanes: as f32 ([`F32Lanes`], the sums of the f32 kernels) or as
/// the i32 the same bits hold ([`I32Lanes`], the integer sums of the quantized kernels).
pub trait Lanes {
    unsafe fn add(a: __m512, b: __m512) -> __m512;
}

pub struct F32Lanes;
pub struct I32Lanes;

impl Lanes for F32Lanes {
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
}

impl Lanes for I32Lanes {
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        let (a, b) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
        _mm512_castsi512_ps(_mm512_add_epi32(a, b))
    }
}

/// The first level, `i + 8`: `[a0 + a2, a1 + a3, b0 + b2, b1 + b3]` in 128-bit chunks,
/// each vector's eight sums side by side.
#[inline(always)]
pub unsafe fn sum_halves<L: Lanes>(a: __m512, b: __m512) -> __m512 {
    let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
    let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
    L::add(lo, hi)
}

/// The second level, `i + 4`: `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]` in 128-bit chunks.
#[inline(always)]
pub unsafe fn sum_chunk_pairs<L: Lanes>(a: __m512, b: __m512) -> __m512 {
    let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
    let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
    L::add(lo, hi)
}

/// The last levels, `i + 2` and `i + 1`, of sixteen sums whose four partial lanes sit in
/// chunk `c` of `u[k]` (sum `4k + c`): lane `r` of the result is sum `r`.
#[inline(always)]
pub unsafe fn sum_chunks<L: Lanes>(u: [__m512; 4]) -> __m512 {
    // lane j of s[k]'s chunk c: sums 8k + c (j < 2) and 8k + 4 + c, two lanes each
    let mut s = [_mm512_setzero_ps(); 2];
    for k in 0..2 {
        let (a, b) = (u[2 * k], u[2 * k + 1]);
        s[k] = L::add(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        );
    }
    // lane 4c + m holds sum 4m + c; put sum r in lane r
    let f = L::add(
        _mm512_shuffle_ps::<0x88>(s[0], s[1]),
        _mm512_shuffle_ps::<0xDD>(s[0], s[1]),
    );
    let idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    _mm512_permutexvar_ps(idx, f)
}

/// Lane `r` of the result is `hsum512(v[r])`, bit for bit: the same tree for sixteen
/// vectors at once, each level adding halves of two vectors' lanes side by side (45
/// instructions where sixteen reductions take about 140).
#[inline(always)]
pub unsafe fn hsum512x16(v: [__m512; 16]) -> __m512 {
    let mut w = [_mm512_setzero_ps(); 8];
    for k in 0..8 {
        w[k] = sum_halves::<F32Lanes>(v[2 * k], v[2 * k + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 4];
    for k in 0..4 {
        u[k] = sum_chunk_pairs::<F32Lanes>(w[2 * k], w[2 * k + 1]);
    }
    sum_chunks::<F32Lanes>(u)
}

/// Masks of the first `n` of 32 lanes, as two halves.
#[inline(always)]
pub fn lane_masks(n: usize) -> [__mmask16; 2] {
    let m = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    [m as __mmask16, (m >> 16) as __mmask16]
}

/// The 16 x 16 transpose of 32-bit words: `out[c]` holds word `c` of every `r[i]`.
#[inline(always)]
pub unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // 4 x 4 transposes within each 128-bit lane: c[g][m], lane l, is word 4l + m of
    // rows 4g..4g + 4.
    let mut c = [[_mm512_setzero_si512(); 4]; 4];
    for g in 0..4 {
        let t0 = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
        let t1 = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
        let t2 = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
        let t3 = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
        c[g] = [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ];
    }
    // Then the 4 x 4 transpose of the lanes: word 4l + m is lane l of c[0..4][m].
    let mut out = [_mm512_setzero_si512(); 16];
    for m in 0..4 {
        let u0 = _mm512_shuffle_i32x4::<0x44>(c[0][m], c[1][m]);
        let u1 = _mm512_shuffle_i32x4::<0xEE>(c[0][m], c[1][m]);
        let u2 = _mm512_shuffle_i32x4::<0x44>(c[2][m], c[3][m]);
        let u3 = _mm512_shuffle_i32x4::<0xEE>(c[2][m], c[3][m]);
        out[m] = _mm512_shuffle_i32x4::<0x88>(u0, u2);
        out[4 + m] = _mm512_shuffle_i32x4::<0xDD>(u0, u2);
        out[8 + m] = _mm512_shuffle_i32x4::<0x88>(u1, u3);
        out[12 + m] = _mm512_shuffle_i32x4::<0xDD>(u1, u3);
    }
    out
}

/// Sixteen f32 rounded to bf16 (to nearest, ties to even) and stored at `o`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn store_bf16x16(o: *mut half::bf16, v: __m512) {
    let h = _mm512_cvtneps_pbh(v);
    _mm256_storeu_si256(
        o as *mut __m256i,
        std::mem::transmute::<__m256bh, __m256i>(h),
    );
}
