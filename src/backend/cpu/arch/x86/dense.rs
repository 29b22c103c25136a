//! f32, f16 and bf16 weights against f32 activations:
//! - `dot_*`: one stored row `[n]` against one token `[n]`, widening the weights in
//!   registers (the one-token path, bound by memory);
//! - `rows16_avx512`: sixteen narrow rows against one token (the LoRA factors);
//! - `tile4x4_*`: four rows against four tokens, sixteen sums, every load feeding four FMAs
//!   (the f32 sequence path, bound by arithmetic).
//!
//! Within one instruction set every kernel sums a (row, token) pair in the same order (one
//! lane-wise accumulator, [`super::hsum512`], then the scalar tail), and widening bf16 or
//! f16 is exact, so a token's result does not depend on which kernel computed it.

use super::{hsum512, hsum512x16};
use crate::backend::cpu::arch::prefetch_ahead;
use crate::backend::cpu::tuning::PREFETCH_AHEAD;
use half::{bf16, f16};
use std::arch::x86_64::*;

/// A stored weight type that the AVX-512 kernels widen to f32 in registers, so that the
/// sequence path reads 16-bit rows as stored, not converted copies of twice the size.
pub trait Wide512: Copy {
    /// 16 weights at `p` as f32.
    unsafe fn load16(p: *const Self) -> __m512;
    fn f32(self) -> f32;
}

impl Wide512 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Wide512 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> __m512 {
        load_bf16x16(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

impl Wide512 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// 16 bf16 at `p` as f32: the bf16 bits are the high half of the f32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_bf16x16(p: *const bf16) -> __m512 {
    let h = _mm256_loadu_si256(p as *const __m256i);
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
}

/// Sixteen rows of `n` weights (`n` a multiple of 16; row `r` at `w[r * n..]`) against
/// `x [n]`: `out[r]` is the one-token dot of the row type (`dot_*_avx512`), bit for bit.
/// For narrow matrices (the LoRA factors, 32 or 64 wide), whose rows are a cache line
/// or two: reducing sixteen sums at once halves a row's instructions.
#[target_feature(enable = "avx512f")]
pub unsafe fn rows16_avx512<W: Wide512>(w: &[W], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    assert!(n.is_multiple_of(16) && w.len() == 16 * n && out.len() == 16);
    let mut acc = [_mm512_setzero_ps(); 16];
    for i in (0..n).step_by(16) {
        let xv = _mm512_loadu_ps(x.as_ptr().add(i));
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(W::load16(w.as_ptr().add(r * n + i)), xv, *acc);
        }
    }
    _mm512_storeu_ps(out.as_mut_ptr(), hsum512x16(acc));
}

#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f32_avx512(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc);
        i += 16;
    }
    let mut s = hsum512(acc);
    for j in i..n {
        s += w[j] * x[j];
    }
    s
}

#[target_feature(enable = "avx512f")]
pub unsafe fn dot_bf16_avx512(w: &[bf16], x: &[f32]) -> f32 {
    let n = w.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        if i % 32 == 0 {
            prefetch_ahead(wp.add(i), PREFETCH_AHEAD);
        }
        acc = _mm512_fmadd_ps(load_bf16x16(wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc);
        i += 16;
    }
    let mut s = hsum512(acc);
    for j in i..n {
        s += w[j].to_f32() * x[j];
    }
    s
}

#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f16_avx512(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        if i % 32 == 0 {
            prefetch_ahead(wp.add(i), PREFETCH_AHEAD);
        }
        acc = _mm512_fmadd_ps(
            _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(i) as *const __m256i)),
            _mm512_loadu_ps(xp.add(i)),
            acc,
        );
        i += 16;
    }
    let mut s = hsum512(acc);
    for j in i..n {
        s += w[j].to_f32() * x[j];
    }
    s
}

/// `out[r][t] = w[r] . x[t]` for four rows and four tokens of length `n`: each pair
/// summed exactly as the one-token dots of the same row type sum it.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile4x4_avx512<W: Wide512>(w: [&[W]; 4], x: [&[f32]; 4], out: &mut [[f32; 4]; 4]) {
    let n = w[0].len();
    let wp = w.map(|r| r.as_ptr());
    let xp = x.map(|r| r.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut i = 0;
    while i + 16 <= n {
        let wv = [
            W::load16(wp[0].add(i)),
            W::load16(wp[1].add(i)),
            W::load16(wp[2].add(i)),
            W::load16(wp[3].add(i)),
        ];
        for t in 0..4 {
            let xv = _mm512_loadu_ps(xp[t].add(i));
            for r in 0..4 {
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        i += 16;
    }
    for r in 0..4 {
        for t in 0..4 {
            let mut s = hsum512(acc[r][t]);
            for j in i..n {
                s += w[r][j].f32() * x[t][j];
            }
            out[r][t] = s;
        }
    }
}

// ---- AVX2 + FMA + F16C ----

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_avx2(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc);
        i += 8;
    }
    let mut s = hsum256(acc);
    for j in i..n {
        s += w[j] * x[j];
    }
    s
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16x8(p: *const bf16) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bf16_avx2(w: &[bf16], x: &[f32]) -> f32 {
    let n = w.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        if i % 32 == 0 {
            prefetch_ahead(wp.add(i), PREFETCH_AHEAD);
        }
        acc = _mm256_fmadd_ps(load_bf16x8(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc);
        i += 8;
    }
    let mut s = hsum256(acc);
    for j in i..n {
        s += w[j].to_f32() * x[j];
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_avx2(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        acc = _mm256_fmadd_ps(
            _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i)),
            _mm256_loadu_ps(xp.add(i)),
            acc,
        );
        i += 8;
    }
    let mut s = hsum256(acc);
    for j in i..n {
        s += w[j].to_f32() * x[j];
    }
    s
}

/// As [`tile4x4_avx512`], eight lanes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile4x4_avx2(w: [&[f32]; 4], x: [&[f32]; 4], out: &mut [[f32; 4]; 4]) {
    let n = w[0].len();
    let wp = w.map(|r| r.as_ptr());
    let xp = x.map(|r| r.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    let mut i = 0;
    while i + 8 <= n {
        let wv = [
            _mm256_loadu_ps(wp[0].add(i)),
            _mm256_loadu_ps(wp[1].add(i)),
            _mm256_loadu_ps(wp[2].add(i)),
            _mm256_loadu_ps(wp[3].add(i)),
        ];
        for t in 0..4 {
            let xv = _mm256_loadu_ps(xp[t].add(i));
            for r in 0..4 {
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        i += 8;
    }
    for r in 0..4 {
        for t in 0..4 {
            let mut s = hsum256(acc[r][t]);
            for j in i..n {
                s += w[r][j] * x[t][j];
            }
            out[r][t] = s;
        }
    }
}
