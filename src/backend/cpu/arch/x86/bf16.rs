//! AVX-512 BF16: activations rounded to bf16 and multiplied by `vdpbf16ps`:
//! - `panel_kernel`: 32 weight rows packed into a panel, a lane a row, against up to
//!   [`BF16_PANEL_TOKENS`] tokens at a time (a prompt's sequence products);
//! - `dot_bf16x2`, `tile4x4_bf16x2`: bf16 rows as stored, lanes over columns, one token or
//!   four rows by four tokens, each pair summed in one order (generation, one stream or many).

use super::{hsum512, hsum512x16, lane_masks, store_bf16x16, transpose16};
use crate::backend::cpu::arch::{prefetch_ahead, prefetch_l2};
use crate::backend::cpu::tuning::{BF16_PANEL_TOKENS, PANEL_ROWS, PREFETCH_AHEAD};
use crate::tensor::panels::block_order;
use crate::tensor::quant::{BLOCK, NF4};
use half::bf16;
use std::arch::x86_64::*;

/// `x [n]` rounded to bf16 (to nearest, ties to even) into `out [n]`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn round_bf16_avx512(x: &[f32], out: &mut [bf16]) {
    let n = x.len();
    assert_eq!(out.len(), n, "round_bf16: lengths differ");
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(xp.add(i)));
        _mm256_storeu_si256(
            op.add(i) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(h),
        );
        i += 16;
    }
    for j in i..n {
        out[j] = bf16::from_f32(x[j]);
    }
}

/// An int8 row (`qs [n]`, `scales [n / 64]`) dequantized and rounded to bf16 into
/// `out [n]`: the bits [`crate::tensor::quant::dequantize_q8`] then
/// [`round_bf16_avx512`] give, in one pass.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn q8_row_bf16(qs: &[i8], scales: &[f32], out: &mut [bf16]) {
    assert!(qs.len() == out.len() && qs.len() == scales.len() * BLOCK);
    for (b, &s) in scales.iter().enumerate() {
        let s = _mm512_set1_ps(s);
        for k in 0..BLOCK / 16 {
            let i = b * BLOCK + 16 * k;
            let q = _mm_loadu_si128(qs.as_ptr().add(i) as *const __m128i);
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), s);
            store_bf16x16(out.as_mut_ptr().add(i), v);
        }
    }
}

/// A stored int8 panel ([`crate::tensor::panels`]: `codes [nb, 32 words, 2 halves, 16
/// rows, 2]`, `scales [nb, 32]`, blocks in [`block_order`]) dequantized and
/// rounded to bf16 straight into a bf16 panel (`panel [nb * 32 pairs, 32 rows]`, as
/// [`pack_panel_avx512`] lays out rows, the blocks back in column order): the bits
/// [`q8_row_bf16`] then [`pack_panel_avx512`] give the same rows. Both layouts pair a
/// row's weights `2k, 2k + 1`, so no transpose is needed.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn q8_panel_bf16(codes: &[i8], scales: &[f32], nb: usize, panel: &mut [u32]) {
    let words = BLOCK / 2;
    assert!(
        codes.len() >= nb * PANEL_ROWS * BLOCK
            && scales.len() >= nb * PANEL_ROWS
            && panel.len() >= nb * words * PANEL_ROWS
    );
    // each row's scale twice, for its two weights: rows 0..8 and 8..16 of a half
    let twice = [
        _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0),
        _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8),
    ];
    let out = panel.as_mut_ptr() as *mut bf16;
    for (pos, b) in block_order(nb).enumerate() {
        for half in 0..2 {
            let s = _mm512_loadu_ps(scales.as_ptr().add(pos * PANEL_ROWS + 16 * half));
            let s = twice.map(|i| _mm512_permutexvar_ps(i, s));
            for k in 0..words {
                let src = codes.as_ptr().add((pos * words + k) * 2 * 32 + half * 32);
                let dst = out.add(2 * ((b * words + k) * PANEL_ROWS + 16 * half));
                for (e, s) in s.iter().enumerate() {
                    let q = _mm_loadu_si128(src.add(16 * e) as *const __m128i);
                    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), *s);
                    store_bf16x16(dst.add(16 * e), v);
                }
            }
        }
    }
}

/// An nf4 row (`packed [n / 2]`, `scales [n / 64]`) dequantized and rounded to bf16
/// into `out [n]`, as [`q8_row_bf16`]: codes looked up in the code book by `vpermps`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn nf4_row_bf16(packed: &[u8], scales: &[bf16], out: &mut [bf16]) {
    assert!(2 * packed.len() == out.len() && out.len() == scales.len() * BLOCK);
    let book = _mm512_loadu_ps(NF4.as_ptr());
    for (b, s) in scales.iter().enumerate() {
        let s = _mm512_set1_ps(s.to_f32());
        // byte j of a block holds weights j (low nibble) and j + 32 (high)
        for k in 0..2 {
            let p = packed.as_ptr().add(b * BLOCK / 2 + 16 * k) as *const __m128i;
            let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p));
            // `vpermps` reads the low four bits of an index
            let lo = _mm512_permutexvar_ps(bytes, book);
            let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(bytes), book);
            let o = out.as_mut_ptr().add(b * BLOCK + 16 * k);
            store_bf16x16(o, _mm512_mul_ps(lo, s));
            store_bf16x16(o.add(BLOCK / 2), _mm512_mul_ps(hi, s));
        }
    }
}

/// The sixteen sums of a tile's lanes ([`tile4x4_bf16x2`]'s `acc`): `out[4 * r + t]`,
/// each the bits [`hsum512`] gives its vector, reduced together by [`hsum512x16`].
///
/// # Safety
/// AVX-512F on this CPU.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_sums(acc: &[f32; 256]) -> [f32; 16] {
    let mut v = [_mm512_setzero_ps(); 16];
    for (k, v) in v.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(acc.as_ptr().add(16 * k));
    }
    let mut out = [0.0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), hsum512x16(v));
    out
}

/// Pack `n` (at most [`PANEL_ROWS`]) rows of bf16 weights for [`panel_kernel`]: row `r`
/// starts at `base + r * stride` (`stride` even) and holds `2 * pairs` weights; pair
/// `kk` (columns `2kk`, `2kk + 1`) of row `r` goes to `panel[kk * 32 + r]` as one u32,
/// rows past `n` are zero. Sixteen rows by sixteen pairs at a time, transposed in
/// registers.
#[target_feature(enable = "avx512f")]
pub unsafe fn pack_panel_avx512(
    base: *const bf16,
    stride: usize,
    n: usize,
    pairs: usize,
    panel: &mut [u32],
) {
    assert!(stride.is_multiple_of(2) && n <= PANEL_ROWS && panel.len() >= pairs * 32);
    let (words, s) = (base as *const i32, stride / 2);
    let out = panel.as_mut_ptr() as *mut __m512i;
    for k0 in (0..pairs).step_by(16) {
        let cols = (pairs - k0).min(16);
        let mask = ((1u32 << cols) - 1) as __mmask16;
        for half in 0..2 {
            let here = n.saturating_sub(16 * half).min(16);
            let rows: [__m512i; 16] = std::array::from_fn(|i| {
                if i < here {
                    _mm512_maskz_loadu_epi32(mask, words.add((16 * half + i) * s + k0))
                } else {
                    _mm512_setzero_si512()
                }
            });
            let t = transpose16(rows);
            for (c, v) in t.iter().enumerate().take(cols) {
                _mm512_storeu_si512(out.add(2 * (k0 + c) + half), *v);
            }
        }
    }
}

/// `y[j][r] = sum_kk panel[kk][r] . x[j][kk]` for `N` (at most [`BF16_PANEL_TOKENS`])
/// tokens and the first `n` rows of a panel ([`pack_panel_avx512`]): `x[j]` points at token
/// `j`'s bf16 activations as `pairs` u32 pairs, `y[j]` at its 32 outputs. Each output is
/// one f32 lane summing its pairs in order, so it does not depend on `N`, on the panel or
/// on the thread. `ahead`: `(p, lines)`, cache lines from `p` to ask for into L2 along
/// the way (the next panel's weights).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn panel_kernel<const N: usize>(
    panel: &[u32],
    pairs: usize,
    x: [*const u32; N],
    y: [*mut f32; N],
    n: usize,
    ahead: (*const u8, usize),
) {
    const { assert!(N <= BF16_PANEL_TOKENS) };
    assert!(panel.len() >= pairs * 32);
    let p = panel.as_ptr() as *const __m512i;
    let mut acc = [[_mm512_setzero_ps(); N]; 2];
    // `ahead`: cache lines to ask for, one every `every` pairs, spread over the call.
    let (pf, lines) = ahead;
    let every = (pairs / lines.max(1)).max(1);
    let (mut asked, mut at) = (0, 0);
    for kk in 0..pairs {
        if kk == at && asked < lines {
            prefetch_l2(pf.wrapping_add(64 * asked));
            (asked, at) = (asked + 1, at + every);
        }
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(2 * kk)));
        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(2 * kk + 1)));
        for j in 0..N {
            let xv = _mm512_set1_epi32(std::ptr::read_unaligned(x[j].add(kk)) as i32);
            let xv: __m512bh = std::mem::transmute(xv);
            acc[0][j] = _mm512_dpbf16_ps(acc[0][j], w0, xv);
            acc[1][j] = _mm512_dpbf16_ps(acc[1][j], w1, xv);
        }
    }
    let [m0, m1] = lane_masks(n);
    for j in 0..N {
        _mm512_mask_storeu_ps(y[j], m0, acc[0][j]);
        _mm512_mask_storeu_ps(y[j].add(16), m1, acc[1][j]);
    }
}

// ---- lanes over columns: one token, and four rows by four tokens ----

/// Columns `i..i + 32` of a bf16 row as a `vdpbf16ps` operand.
#[inline(always)]
unsafe fn load_pairs(p: *const bf16, i: usize) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.add(i) as *const __m512i))
}

/// Columns `i..n` (fewer than 32) of a bf16 row as a `vdpbf16ps` operand, zeros past `n`.
#[inline(always)]
unsafe fn load_pairs_tail(p: *const bf16, i: usize, n: usize) -> __m512bh {
    let mask = ((1u64 << (n - i)) - 1) as __mmask32;
    std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p.add(i) as *const i16))
}

/// `w . x` for a bf16 row and activations rounded to bf16 (`[n]` each): lane `l` sums the
/// column pairs `32s + 2l, 32s + 2l + 1` over the steps `s` with `vdpbf16ps` (the last
/// step's columns past `n` read as zeros), then [`hsum512`]. [`tile4x4_bf16x2`] sums every
/// pair in the same order, so a token's result does not depend on the token count.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn dot_bf16x2(w: &[bf16], x: &[bf16]) -> f32 {
    let n = w.len();
    assert!(
        x.len() >= n,
        "dot_bf16x2: {} activations for {n} weights",
        x.len()
    );
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        prefetch_ahead(wp.add(i), PREFETCH_AHEAD);
        acc = _mm512_dpbf16_ps(acc, load_pairs(wp, i), load_pairs(xp, i));
        i += 32;
    }
    if i < n {
        acc = _mm512_dpbf16_ps(acc, load_pairs_tail(wp, i, n), load_pairs_tail(xp, i, n));
    }
    hsum512(acc)
}

/// `acc[r][t] += w[r] . x[t]` for four bf16 rows and four tokens rounded to bf16 (`[n]`
/// each, a block of columns), lane by lane: `acc` holds sixteen vectors of sums
/// (`[4 rows][4 tokens][16 lanes]`), to be reduced by [`hsum512`] once every block has
/// run. Blocks of a multiple of 32 columns, one after the other, leave each lane summing
/// the pairs [`dot_bf16x2`] sums into it, in its order. Every load meets four `vdpbf16ps`.
/// `ahead`: `(p, lines)`, cache lines from `p` to ask for into L2 along the way (the next
/// rows' weights, which would otherwise keep the first tokens of those rows waiting).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn tile4x4_bf16x2(
    w: [&[bf16]; 4],
    x: [&[bf16]; 4],
    acc: &mut [f32; 256],
    ahead: (*const u8, usize),
) {
    let n = w[0].len();
    assert!(
        w.iter().all(|r| r.len() == n) && x.iter().all(|r| r.len() >= n),
        "tile4x4_bf16x2: rows of different widths"
    );
    let [w0, w1, w2, w3] = w.map(|r| r.as_ptr());
    let [x0, x1, x2, x3] = x.map(|r| r.as_ptr());
    let sums = acc.as_mut_ptr();
    let mut acc: [[__m512; 4]; 4] = std::array::from_fn(|r| {
        std::array::from_fn(|t| _mm512_loadu_ps(sums.add(64 * r + 16 * t)))
    });
    let mut i = 0;
    // one 32-column step of the sixteen sums (a macro, not a closure: a closure's
    // accumulators went through memory)
    macro_rules! step {
        ($load:ident $(, $n:expr)?) => {{
            let wv = [$load(w0, i $(, $n)?), $load(w1, i $(, $n)?), $load(w2, i $(, $n)?), $load(w3, i $(, $n)?)];
            let xv = [$load(x0, i $(, $n)?), $load(x1, i $(, $n)?), $load(x2, i $(, $n)?), $load(x3, i $(, $n)?)];
            for t in 0..4 {
                for r in 0..4 {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], xv[t]);
                }
            }
        }};
    }
    // the lines to ask for, spread over the steps: `every` steps apart, `burst` at a time
    let (pf, lines) = ahead;
    let steps = (n / 32).max(1);
    let burst = lines.div_ceil(steps).max(1);
    let mut next = pf;
    let end = pf.wrapping_add(64 * lines);
    while i + 32 <= n {
        for _ in 0..burst {
            if next < end {
                prefetch_l2(next);
                next = next.wrapping_add(64);
            }
        }
        step!(load_pairs);
        i += 32;
    }
    if i < n {
        step!(load_pairs_tail, n);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(sums.add(64 * r + 16 * t), a);
        }
    }
}
